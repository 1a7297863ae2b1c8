"""Procedural instruction tasks in the style of Super-NaturalInstructions: the offline default data.

Each task has a definition, several instruction templates and a generator of fresh instances.
Tasks are sized for a tiny model trained on CPU in minutes: short inputs over a small
fixed vocabulary, short targets, operations a small seq2seq model learns quickly. This module
holds the list, string, counting, arithmetic and reasoning clusters and the registry; the other
clusters live in `synthetic_tasks_more`, the shared building blocks in `synthetic_base`.

Held-out evaluation has three layers:
  * whole clusters never trained on (`HELDOUT_CLUSTERS`): multiple-choice versions of trained
    skills, so a model that follows the instruction ranks the right option first;
  * held-out tasks inside trained clusters: compositions of trained operations, or a
    classification rule over trained concepts stated in the instruction;
  * held-out phrasings (`heldout_templates`) of every trained task.
Instances are assigned to train/validation/test by a stable hash of their input, so a test
input never appears in training.
"""

from __future__ import annotations

import hashlib
import random
from typing import Iterator

from sft_jax.data.collections import synthetic_base as sb
from sft_jax.data.collections import synthetic_tasks_more as more

SyntheticTask = sb.SyntheticTask

# =============================================================================================
# list_manipulation
# =============================================================================================

LIST = "list_manipulation"


def _reverse_list(rng: random.Random) -> sb.Instance:
  items = sb.sample_items(rng, 2, 4)
  return sb.gen_instance(sb.join_items(items), sb.join_items(sb.reverse_items(items)))


def _first_item(rng: random.Random) -> sb.Instance:
  items = sb.sample_items(rng, 2, 5, max_chars=30)
  return sb.gen_instance(sb.join_items(items), items[0])


def _last_item(rng: random.Random) -> sb.Instance:
  items = sb.sample_items(rng, 2, 5, max_chars=30)
  return sb.gen_instance(sb.join_items(items), items[-1])


def _remove_item(rng: random.Random) -> sb.Instance:
  items = sb.sample_items(rng, 2, 4, max_chars=18)
  item = rng.choice(items)
  rest = sb.join_items(sb.remove_item(items, item))
  return sb.gen_instance(f"list: {sb.join_items(items)}; remove: {item}", rest)


def _item_at_position(rng: random.Random) -> sb.Instance:
  items = sb.sample_items(rng, 2, 4)
  pos = rng.randint(1, len(items))
  return sb.gen_instance(f"list: {sb.join_items(items)}; position: {pos}", items[pos - 1])


def _reverse_then_join_with_dash(rng: random.Random) -> sb.Instance:
  words = sb.sample_words(rng, 2, 4)
  return sb.gen_instance(sb.join_items(words), sb.join_items(sb.reverse_items(words), " - "))


def _first_and_last(rng: random.Random) -> sb.Instance:
  items = sb.sample_items(rng, 3, 5, max_chars=30)
  return sb.gen_instance(sb.join_items(items), sb.join_items(sb.first_and_last(items)))


LIST_TASKS = (
    sb.make_task(
        "reverse_list", LIST,
        "Given a comma-separated list of items, output the same items in reverse order.",
        _reverse_list,
        ["Reverse the order of the items in this list.\n{input}",
         "{input}\nWrite these items backwards, starting from the last one.",
         "List: {input}\nWhat is this list in reverse order?"],
        ["Flip the list so that it ends with its first item: {input}"]),
    sb.make_task(
        "first_item", LIST, "Given a comma-separated list, output its first item.", _first_item,
        ["What is the first item in the list?\n{input}",
         "{input}\nReturn the item that comes first.",
         "List: {input}\nFirst element:"],
        ["Which item opens this list? {input}"]),
    sb.make_task(
        "last_item", LIST, "Given a comma-separated list, output its last item.", _last_item,
        ["What is the last item in the list?\n{input}",
         "{input}\nReturn the item that comes last.",
         "List: {input}\nFinal element:"],
        ["Which item closes this list? {input}"]),
    sb.make_task(
        "remove_item", LIST,
        "Given a list and one of its items, output the list without that item, keeping the order.",
        _remove_item,
        ["Delete the given item from the list and write the rest.\n{input}",
         "{input}\nWhat is left after removing that item?",
         "Remove the requested item, keeping the others in order. {input}"],
        ["Drop the named item and give the remaining list: {input}"]),
    sb.make_task(
        "item_at_position", LIST,
        "Given a list and a position counted from 1, output the item at that position.",
        _item_at_position,
        ["Return the item found at the given position (counting from 1).\n{input}",
         "{input}\nWhich item is at that position?",
         "Pick the item at the requested position. {input}"],
        ["Count from the start and tell me the item at that place: {input}"]),
    sb.make_task(
        "reverse_then_join_with_dash", LIST,
        "Reverse the order of the list, then join the items with dashes.",
        _reverse_then_join_with_dash,
        ["Reverse the list, then join the words with dashes.\n{input}",
         "{input}\nWrite the items in reverse order, joined by dashes.",
         "List: {input}\nReversed and dashed:"],
        ["Put this list backwards and connect the words with dashes: {input}"],
        heldout=True),
    sb.make_task(
        "first_and_last", LIST, "Given a list, output its first item and its last item.",
        _first_and_last,
        ["Write the first item and the last item of the list.\n{input}",
         "{input}\nWhat are the first and last items?",
         "List: {input}\nFirst and last items:"],
        ["Keep only the items at both ends of this list: {input}"],
        heldout=True),
)

# =============================================================================================
# string_editing
# =============================================================================================

STRING = "string_editing"


# String edits act on spelled-out words (`c a t`), one token per letter.


def _word(rng: random.Random) -> str:
  return sb.word_or_pseudo(rng, 3, 5)


def _uppercase_words(rng: random.Random) -> sb.Instance:
  word = _word(rng)
  return sb.gen_instance(sb.spell(word), sb.spell(word.upper()))


def _lowercase_words(rng: random.Random) -> sb.Instance:
  word = _word(rng)
  return sb.gen_instance(sb.spell(word.upper()), sb.spell(word))


def _capitalize_words(rng: random.Random) -> sb.Instance:
  word = _word(rng)
  return sb.gen_instance(sb.spell(word), sb.spell(sb.capitalize_words(word)))


def _reverse_letters(rng: random.Random) -> sb.Instance:
  word = _word(rng)
  return sb.gen_instance(sb.spell(word), sb.spell(word[::-1]))


def _remove_vowels(rng: random.Random) -> sb.Instance:
  while True:
    word = _word(rng)
    if sb.remove_vowels(word):
      return sb.gen_instance(sb.spell(word), sb.spell(sb.remove_vowels(word)))


def _uppercase_reversed_word(rng: random.Random) -> sb.Instance:
  word = _word(rng)
  return sb.gen_instance(sb.spell(word), sb.spell(word[::-1].upper()))


STRING_TASKS = (
    sb.make_task(
        "uppercase_words", STRING, "Rewrite the given text using only uppercase letters.",
        _uppercase_words,
        ["Convert the text to uppercase.\n{input}",
         "{input}\nRewrite this in capital letters.",
         "Text: {input}\nUppercase version:"],
        ["Make every letter of this text a capital letter: {input}"]),
    sb.make_task(
        "lowercase_words", STRING, "Rewrite the given text using only lowercase letters.",
        _lowercase_words,
        ["Convert the text to lowercase.\n{input}",
         "{input}\nRewrite this in small letters.",
         "Text: {input}\nLowercase version:"],
        ["Turn every capital letter in this text into a small letter: {input}"]),
    sb.make_task(
        "capitalize_words", STRING, "Capitalize the first letter of every word in the text.",
        _capitalize_words,
        ["Capitalize the first letter of each word.\n{input}",
         "{input}\nStart every word with a capital letter.",
         "Text: {input}\nTitle case:"],
        ["Rewrite the words so each one begins with an uppercase letter: {input}"]),
    sb.make_task(
        "reverse_letters", STRING, "Given a word, output its letters in reverse order.",
        _reverse_letters,
        ["Reverse the letters of the word.\n{input}",
         "{input}\nSpell this word backwards.",
         "Word: {input}\nReversed:"],
        ["Write this word from its last letter to its first: {input}"]),
    sb.make_task(
        "remove_vowels", STRING,
        "Delete every vowel (a, e, i, o, u) from the text and output the rest.",
        _remove_vowels,
        ["Remove all vowels (a, e, i, o, u) from the text.\n{input}",
         "{input}\nDelete every vowel and write what is left.",
         "Text: {input}\nWithout vowels:"],
        ["Strip out the letters a, e, i, o and u: {input}"]),
    sb.make_task(
        "uppercase_reversed_word", STRING,
        "Given a word, output its letters in reverse order, written in uppercase.",
        _uppercase_reversed_word,
        ["Reverse the letters of the word and write it in uppercase.\n{input}",
         "{input}\nSpell this word backwards in capital letters.",
         "Word: {input}\nReversed and uppercased:"],
        ["Write this word from its last letter to its first, using capitals: {input}"],
        heldout=True),
)

# =============================================================================================
# counting
# =============================================================================================

COUNT = "counting"


def _count_items(rng: random.Random) -> sb.Instance:
  items = sb.sample_items(rng, 1, 6, max_chars=30)
  return sb.gen_instance(sb.join_items(items), len(items))


def _count_letter(rng: random.Random) -> sb.Instance:
  # Pick the answer first: in short texts most letters occur once, which would swamp other counts.
  want = rng.choice([0, 1, 2, 3])
  while True:
    text = sb.pseudo_word(rng, 3, 6)
    letters = [c for c in sb.LETTERS if sb.count_letter(text, c) == want]
    if letters:
      return sb.gen_instance(f"letter: {rng.choice(letters)}; word: {sb.spell(text)}", want)


def _count_word(rng: random.Random) -> sb.Instance:
  while True:
    pool = rng.sample([w for w in sb.WORDS if len(w) <= 4], 2)
    items = [rng.choice(pool) for _ in range(rng.randint(2, 4))]
    word = rng.choice(pool) if rng.random() < 0.85 else rng.choice(sb.WORDS)
    text = f"list: {sb.join_items(items)}; word: {word}"
    if len(text) <= 40:
      return sb.gen_instance(text, items.count(word))


def _word_length(rng: random.Random) -> sb.Instance:
  word = sb.pseudo_word(rng, 2, 6)
  return sb.gen_instance(sb.spell(word), len(word))


COUNT_TASKS = (
    sb.make_task(
        "count_items", COUNT, "Given a comma-separated list, output how many items it has.",
        _count_items,
        ["How many items are in the list?\n{input}",
         "{input}\nCount the items in this list.",
         "List: {input}\nNumber of items:"],
        ["Tell me the length of this list: {input}"]),
    sb.make_task(
        "count_letter", COUNT, "Count how many times the given letter occurs in the text.",
        _count_letter,
        ["Count how many times the letter appears in the text.\n{input}",
         "{input}\nHow many times does that letter occur?",
         "Give the number of occurrences of the letter. {input}"],
        ["How often can you find the given letter in the text? {input}"]),
    sb.make_task(
        "count_word", COUNT, "Count how many times the given word occurs in the list.", _count_word,
        ["Count how many times the word appears in the list.\n{input}",
         "{input}\nHow many times does that word occur?",
         "Give the number of occurrences of the word. {input}"],
        ["How often is the given word repeated in the list? {input}"]),
    sb.make_task(
        "word_length", COUNT, "Given a word, output the number of letters in it.", _word_length,
        ["How many letters does the word have?\n{input}",
         "{input}\nCount the letters in this word.",
         "Word: {input}\nNumber of letters:"],
        ["What is the length of this word in letters? {input}"]),
)

# =============================================================================================
# arithmetic
# =============================================================================================

ARITH = "arithmetic"


def _add_numbers(rng: random.Random) -> sb.Instance:
  text, answer = sb.addition_problem(rng)
  return sb.gen_instance(text, sb.digits(answer))


def _subtract_numbers(rng: random.Random) -> sb.Instance:
  text, answer = sb.subtraction_problem(rng)
  return sb.gen_instance(text, sb.digits(answer))


def _add_one(rng: random.Random) -> sb.Instance:
  n = rng.randint(0, 998)
  return sb.gen_instance(sb.digits(n), sb.digits(n + 1))


ARITH_TASKS = (
    sb.make_task(
        "add_numbers", ARITH, "Add the two given numbers and output the sum.", _add_numbers,
        ["Add the two numbers.\n{input}",
         "{input}\nWhat is the sum?",
         "Compute: {input} ="],
        ["Work out the total of these numbers: {input}"]),
    sb.make_task(
        "subtract_numbers", ARITH,
        "Subtract the second number from the first and output the result.",
        _subtract_numbers,
        ["Subtract the second number from the first.\n{input}",
         "{input}\nWhat is the difference?",
         "Calculate: {input} ="],
        ["Take away the second number from the first one: {input}"]),
    sb.make_task(
        "add_one", ARITH, "Given a number, output the number that is one larger.", _add_one,
        ["Add one to the number.\n{input}",
         "{input}\nWhat number comes next?",
         "Number: {input}\nNext number:"],
        ["Increase this number by 1: {input}"]),
)

# =============================================================================================
# simple_reasoning
# =============================================================================================

REASON = "simple_reasoning"


def _word_problem_add(rng: random.Random) -> sb.Instance:
  return sb.gen_instance(*sb.word_problem(rng))


def _word_problem_subtract(rng: random.Random) -> sb.Instance:
  # Drawing the answer and the loss uniformly keeps small answers from dominating.
  left, lost = rng.randint(1, 9), rng.randint(1, 9)
  name, things = rng.choice(sb.NAMES), rng.choice(sb.PLURALS)
  return sb.gen_instance(f"{name} had {left + lost} {things} and lost {lost}.", left)


def _who_is_taller(rng: random.Random) -> sb.Instance:
  # Made-up names: with a small name list every test sentence has training sentences over the
  # same two names with the opposite answer, which rewards memorizing pairs over reading.
  while True:
    a, b = (sb.pseudo_word(rng, 3, 5).capitalize() for _ in range(2))
    if a != b:
      break
  if rng.random() < 0.5:
    text, taller = f"{a} is taller than {b}.", a
  else:
    text, taller = f"{a} is shorter than {b}.", b
  return sb.cls_instance(text, taller, sorted([a, b]))


def _who_has_more(rng: random.Random) -> sb.Instance:
  a, b = rng.sample(sb.NAMES, 2)
  x, y = rng.sample(range(1, 10), 2)
  text = f"{a} has {x} {rng.choice(sb.PLURALS)}. {b} has {y}."
  return sb.cls_instance(text, a if x > y else b, sorted([a, b]))


def _who_has_more_after(rng: random.Random) -> sb.Instance:
  a, b = rng.sample(sb.NAMES, 2)
  while True:
    x, y, gift = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 5)
    if x != y + gift:
      break
  text = f"{a} has {x}. {b} has {y} and gets {gift}."
  return sb.cls_instance(text, a if x > y + gift else b, sorted([a, b]))


REASON_TASKS = (
    sb.make_task(
        "word_problem_add", REASON, "Solve a one-step addition word problem; answer with a number.",
        _word_problem_add,
        ["Solve the word problem. Answer with a number.\n{input}",
         "{input}\nHow many does this person have now?",
         "Problem: {input}\nAnswer:"],
        ["Read the story and give the final count: {input}"]),
    sb.make_task(
        "word_problem_subtract", REASON,
        "Solve a one-step subtraction word problem; answer with a number.", _word_problem_subtract,
        ["Work out the answer and reply with a number.\n{input}",
         "{input}\nHow many are left?",
         "Problem: {input}\nRemaining:"],
        ["Read the story and tell how many remain: {input}"]),
    sb.make_task(
        "who_is_taller", REASON,
        "Given a height comparison between two people, name the taller one.",
        _who_is_taller,
        ["Who is taller?\n{input}\n{options}",
         "{input}\nWhich person is the taller one?\n{options}",
         "Statement: {input}\nTaller person:\n{options}"],
        ["Based on the sentence, name the person with greater height. {input}\n{options}"]),
    sb.make_task(
        "who_has_more", REASON, "Given how many things two people have, name the one who has more.",
        _who_has_more,
        ["Who has more?\n{input}\n{options}",
         "{input}\nWhich person owns the larger number of things?\n{options}",
         "Story: {input}\nPerson with more:\n{options}"],
        ["Name the person holding the bigger amount. {input}\n{options}"]),
    sb.make_task(
        "who_has_more_after", REASON,
        "Two people have some things and one of them gets more; name who has more in the end.",
        _who_has_more_after,
        ["Who has more in the end?\n{input}\n{options}",
         "{input}\nAfter the gift, which person owns more things?\n{options}",
         "Story: {input}\nPerson with more at the end:\n{options}"],
        ["Add up what each person ends with; who has the bigger amount? {input}\n{options}"],
        heldout=True),
)

# =============================================================================================
# Registry and splits
# =============================================================================================

TASKS: tuple[SyntheticTask, ...] = (
    LIST_TASKS + STRING_TASKS + COUNT_TASKS + ARITH_TASKS + REASON_TASKS + more.MORE_TASKS
)
HELDOUT_CLUSTERS: tuple[str, ...] = more.HELDOUT_CLUSTERS

_TASKS_BY_NAME = {task.name: task for task in TASKS}

# Ten hash buckets per task: 80% train, 10% validation, 10% test.
_SPLIT_BUCKETS = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}
# Each split owns >= 10% of a task's hundreds-to-thousands of inputs, so a long run of misses
# means a task whose input space is broken, not bad luck.
_MAX_CONSECUTIVE_MISSES = 10_000


def get_task(name: str) -> SyntheticTask:
  """Returns the task called `name`."""
  try:
    return _TASKS_BY_NAME[name]
  except KeyError:
    raise KeyError(f"unknown synthetic task {name!r}; known: {sorted(_TASKS_BY_NAME)}") from None


def split_of(task_name: str, input_text: str) -> str:
  """Returns the split that owns `input_text` for the task, by a hash stable across processes."""
  digest = hashlib.sha1(f"{task_name}\n{input_text}".encode("utf-8")).digest()
  bucket = int.from_bytes(digest[:8], "big") % 10
  return next(split for split, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def instances(task: SyntheticTask, split: str, seed: int) -> Iterator[sb.Instance]:
  """Yields an unlimited deterministic stream of `task` instances that belong to `split`."""
  if split not in _SPLIT_BUCKETS:
    raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_BUCKETS)}")
  # A string seed is hashed with SHA-512 by `random`, so streams match across processes.
  rng = random.Random(f"{seed}/{task.name}/{split}")
  misses = 0
  while True:
    instance = task.generate(rng)
    if split_of(task.name, instance["input"]) == split:
      misses = 0
      yield instance
    else:
      misses += 1
      if misses > _MAX_CONSECUTIVE_MISSES:
        raise RuntimeError(
            f"task {task.name!r}: no {split} instance in {misses} draws; input space too small")


def _check_tasks(tasks: tuple[SyntheticTask, ...]) -> None:
  """Fails at import on a malformed task, before anything trains on it."""
  names = [task.name for task in tasks]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"duplicate synthetic task names: {duplicates}")
  for task in tasks:
    all_templates = task.templates + task.heldout_templates
    if len(task.templates) < 3 or not task.heldout_templates:
      raise ValueError(
          f"task {task.name!r}: needs >= 3 training templates and >= 1 held-out template")
    if len({t.name for t in all_templates}) != len(all_templates):
      raise ValueError(f"task {task.name!r}: template names are not unique")
    if {t.pattern for t in task.heldout_templates} & {t.pattern for t in task.templates}:
      raise ValueError(f"task {task.name!r}: a held-out template repeats a training template")
    if any(t.uses_options != task.is_classification for t in all_templates):
      raise ValueError(
          f"task {task.name!r}: classification templates (and only those) must use {{options}}")
  for cluster in HELDOUT_CLUSTERS:
    members = [task for task in tasks if task.cluster == cluster]
    if not members or not all(task.heldout for task in members):
      raise ValueError(f"held-out cluster {cluster!r} must be non-empty with every task held out")


_check_tasks(TASKS)
