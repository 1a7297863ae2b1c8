"""Building blocks of the synthetic instruction tasks: task type, vocabulary, operations, samplers.

Operations are pure functions on lists and strings, so tests can check them on hand-written
cases. Samplers draw from a caller-owned `random.Random`, never the global one, so every
stream of instances is reproducible from its seed.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Sequence

from sft_jax.data.templates import Template

Instance = dict

# ---------------------------------------------------------------------------------------------
# Task type.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
  """A generated instruction task: definition, templates and an instance generator."""

  name: str
  cluster: str
  definition: str
  templates: tuple[Template, ...]
  heldout_templates: tuple[Template, ...]
  generate: Callable[[random.Random], Instance]
  heldout: bool = False

  @property
  def is_classification(self) -> bool:
    """True when instances carry `answer_choices` (scored by rank classification)."""
    return "answer_choices" in self.generate(random.Random("probe"))


def make_task(
    name: str,
    cluster: str,
    definition: str,
    generate: Callable[[random.Random], Instance],
    train: Sequence[str],
    heldout_phrasings: Sequence[str],
    heldout: bool = False,
) -> SyntheticTask:
  """Builds a task; `train` patterns are trained on, `heldout_phrasings` only evaluated."""
  return SyntheticTask(
      name=name,
      cluster=cluster,
      definition=definition,
      templates=tuple(Template(f"train_{i}", p) for i, p in enumerate(train)),
      heldout_templates=tuple(Template(f"heldout_{i}", p) for i, p in enumerate(heldout_phrasings)),
      generate=generate,
      heldout=heldout,
  )


# ---------------------------------------------------------------------------------------------
# Instances.
# ---------------------------------------------------------------------------------------------


def gen_instance(input_text: str, target: object) -> Instance:
  """A generation instance."""
  return {"input": input_text, "target": str(target)}


def cls_instance(input_text: str, target: object, choices: Sequence[object]) -> Instance:
  """A classification instance; `target` must be one of `choices`."""
  choices = [str(c) for c in choices]
  if str(target) not in choices:
    raise ValueError(f"target {target!r} not among answer choices {choices}")
  return {"input": input_text, "target": str(target), "answer_choices": choices}


YES_NO = ("yes", "no")


def yes_no(flag: bool) -> str:
  """Maps a truth value to the `yes`/`no` label."""
  return "yes" if flag else "no"


# ---------------------------------------------------------------------------------------------
# Vocabulary.
# ---------------------------------------------------------------------------------------------

# A small fixed lexicon keeps the model's job about the operation, not the words.
WORDS: tuple[str, ...] = (
    "apple", "bird", "book", "box", "bus", "cake", "car", "cat", "chair", "cloud",
    "cup", "desk", "dog", "door", "duck", "egg", "fish", "frog", "hat", "horse",
    "house", "key", "lamp", "lion", "milk", "moon", "mouse", "pen", "pig", "rain",
    "ring", "road", "rose", "ship", "shoe", "sock", "star", "sun", "table", "tree",
    "train", "wolf",
)
NAMES: tuple[str, ...] = (
    "Tom", "Ann", "Bob", "Eva", "Max", "Sam", "Lily", "Ben", "Mia", "Leo",
    "Zoe", "Dan", "Amy", "Jack", "Kim", "Ned", "Rosa", "Ivan", "Nora", "Paul",
)
# Regular plurals only, so sentences stay grammatical without an inflection table.
PLURALS: tuple[str, ...] = (
    "apples", "pens", "books", "cups", "hats", "cards", "eggs", "keys", "rocks", "toys",
    "coins", "shells",
)
DIGIT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)
VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnprstvwz"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------------------------------------
# Pure operations.
# ---------------------------------------------------------------------------------------------


def join_items(items: Sequence[object], sep: str = ", ") -> str:
  """Joins items into a list string, e.g. `cat, dog, sun`."""
  return sep.join(str(item) for item in items)


def reverse_items(items: Sequence[object]) -> list:
  """Returns the items in reverse order."""
  return list(items)[::-1]


def remove_item(items: Sequence[str], item: str) -> list[str]:
  """Returns the items with every occurrence of `item` removed, order kept."""
  return [x for x in items if x != item]


def first_and_last(items: Sequence[object]) -> list:
  """Returns the first and the last item."""
  return [items[0], items[-1]]


def capitalize_words(text: str) -> str:
  """Uppercases the first letter of every space-separated word."""
  return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))


def remove_vowels(text: str) -> str:
  """Deletes the letters a, e, i, o, u (either case)."""
  return "".join(ch for ch in text if ch.lower() not in VOWELS)


def count_letter(text: str, letter: str) -> int:
  """Counts occurrences of `letter` in `text`."""
  return text.count(letter)


def initials(words: Sequence[str]) -> str:
  """Concatenates the first letter of each word."""
  return "".join(word[0] for word in words)


def spell(word: str) -> str:
  """Writes a word letter by letter with spaces, e.g. `cat` -> `c a t`.

  Letter-level tasks show words spelled out: the synthetic vocabulary keeps whole words as
  single pieces, and spelling makes every letter its own token.
  """
  return " ".join(word)


def spell_digits(digits: Sequence[int]) -> str:
  """Spells each digit as an English word, e.g. [3, 1] -> `three one`."""
  return " ".join(DIGIT_WORDS[d] for d in digits)


def to_json_list(numbers: Sequence[int]) -> str:
  """Formats numbers as a JSON array with spaces inside the brackets, e.g. `[ 3, 1, 2 ]`.

  The spaces keep each number the same token as in a plain list.
  """
  return "[ " + join_items(numbers) + " ]"


# ---------------------------------------------------------------------------------------------
# Samplers.
# ---------------------------------------------------------------------------------------------


def sample_words(rng: random.Random, lo: int, hi: int, max_chars: int = 20) -> list[str]:
  """Draws lo..hi distinct words whose comma-joined form fits in `max_chars`."""
  while True:
    words = rng.sample(WORDS, rng.randint(lo, hi))
    if len(join_items(words)) <= max_chars:
      return words


def sample_numbers(rng: random.Random, lo: int, hi: int, high: int = 99) -> list[int]:
  """Draws lo..hi distinct numbers in [0, high]."""
  return rng.sample(range(high + 1), rng.randint(lo, hi))


def sample_items(rng: random.Random, lo: int, hi: int, max_chars: int = 20) -> list[str]:
  """Draws words or numbers (as strings), so list skills do not tie to one item type."""
  if rng.random() < 0.5:
    return sample_words(rng, lo, hi, max_chars)
  return [str(n) for n in sample_numbers(rng, lo, hi)]


def pseudo_word(rng: random.Random, lo: int, hi: int, start_with_vowel: bool | None = None) -> str:
  """Draws a pronounceable made-up word of lo..hi letters (alternating consonants and vowels)."""
  length = rng.randint(lo, hi)
  vowel = rng.random() < 0.3 if start_with_vowel is None else start_with_vowel
  letters = []
  for _ in range(length):
    letters.append(rng.choice(VOWELS if vowel else CONSONANTS))
    # Mostly alternate, sometimes double up, so words are not all strictly CVCV.
    if rng.random() < 0.8:
      vowel = not vowel
  return "".join(letters)


def word_or_pseudo(rng: random.Random, lo: int = 3, hi: int = 6) -> str:
  """Draws a vocabulary word or a made-up one, so letter tasks are about letters, not words."""
  return rng.choice(WORDS) if rng.random() < 0.5 else pseudo_word(rng, lo, hi)


def digits(n: int) -> str:
  """Writes a number digit by digit, e.g. 472 -> `4 7 2`.

  Arithmetic and parity tasks write numbers this way: in the synthetic vocabulary a whole
  number is one piece, and a rule over the pieces of numbers a task never showed cannot be
  learned, while a rule over digits carries over to any number.
  """
  return spell(str(n))


def addition_problem(rng: random.Random) -> tuple[str, int]:
  """Draws `a + b` (written in digits) and its sum; one operand is a single digit."""
  # One small operand keeps carries within what a tiny model learns in minutes.
  a, b = rng.randint(0, 89), rng.randint(0, 9)
  if rng.random() < 0.5:
    a, b = b, a
  return f"{digits(a)} + {digits(b)}", a + b


def subtraction_problem(rng: random.Random) -> tuple[str, int]:
  """Draws `a - b` (written in digits) with a single-digit `b`, and the difference."""
  a, b = rng.randint(10, 99), rng.randint(0, 9)
  return f"{digits(a)} - {digits(b)}", a - b


def word_problem(rng: random.Random) -> tuple[str, int]:
  """Draws `<Name> has a <things> and gets b more.` and the total."""
  a, b = rng.randint(1, 9), rng.randint(1, 9)
  return f"{rng.choice(NAMES)} has {a} {rng.choice(PLURALS)} and gets {b} more.", a + b


def number_options(rng: random.Random, answer: int, n: int = 3, spread: int = 3,
                   write: Callable[[int], str] = str) -> list[str]:
  """Returns `n` distinct non-negative numbers near `answer` (including it), written by `write`, shuffled."""
  options = {answer}
  while len(options) < n:
    candidate = answer + rng.choice([d for d in range(-spread, spread + 1) if d])
    if candidate >= 0:
      options.add(candidate)
  result = [write(x) for x in sorted(options)]
  rng.shuffle(result)
  return result
