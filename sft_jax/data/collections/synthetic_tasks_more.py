"""Synthetic task clusters: comparison, classification, extraction, format conversion.

Also the two held-out clusters, `option_selection` and `multiple_choice_math`: multiple-choice
versions of trained skills (max/min, last item, membership, addition, counting, word problems),
so rank classification rewards a model that carries a trained skill over to a new answer format.
The registry and split logic live in `synthetic_tasks`.
"""

from __future__ import annotations

import random
from typing import Callable

from sft_jax.data.collections import synthetic_base as sb

# =============================================================================================
# comparison
# =============================================================================================

COMPARE = "comparison"


def _max_number(rng: random.Random) -> sb.Instance:
  numbers = sb.sample_numbers(rng, 2, 5)
  return sb.gen_instance(sb.join_items(numbers), max(numbers))


def _min_number(rng: random.Random) -> sb.Instance:
  numbers = sb.sample_numbers(rng, 2, 5)
  return sb.gen_instance(sb.join_items(numbers), min(numbers))


def _first_greater(rng: random.Random) -> sb.Instance:
  a, b = sb.sample_numbers(rng, 2, 2)
  return sb.cls_instance(f"{a}, {b}", sb.yes_no(a > b), sb.YES_NO)


def _longer_word(rng: random.Random) -> sb.Instance:
  while True:
    a, b = rng.sample(sb.WORDS, 2)
    if len(a) != len(b):
      return sb.cls_instance(f"{a}, {b}", max(a, b, key=len), [a, b])


def _same_or_different(rng: random.Random) -> sb.Instance:
  a = sb.pseudo_word(rng, 3, 4)
  if rng.random() < 0.5:
    b = a
  else:
    # Half the different pairs differ in one letter, so the rule is equality, not similarity.
    while True:
      if rng.random() < 0.5:
        i = rng.randrange(len(a))
        b = a[:i] + rng.choice(sb.LETTERS) + a[i + 1:]
      else:
        b = sb.pseudo_word(rng, 3, 4)
      if b != a:
        break
  label = "same" if a == b else "different"
  return sb.cls_instance(f"{sb.spell(a)}, {sb.spell(b)}", label, ["same", "different"])


def _first_larger_than_last(rng: random.Random) -> sb.Instance:
  numbers = sb.sample_numbers(rng, 3, 4)
  return sb.cls_instance(sb.join_items(numbers), sb.yes_no(numbers[0] > numbers[-1]), sb.YES_NO)


COMPARE_TASKS = (
    sb.make_task(
        "max_number", COMPARE, "Given a list of numbers, output the largest one.", _max_number,
        ["What is the largest number in the list?\n{input}",
         "{input}\nReturn the biggest number.",
         "Numbers: {input}\nMaximum:"],
        ["Find the highest value among these numbers: {input}"]),
    sb.make_task(
        "min_number", COMPARE, "Given a list of numbers, output the smallest one.", _min_number,
        ["What is the smallest number in the list?\n{input}",
         "{input}\nReturn the lowest number.",
         "Numbers: {input}\nMinimum:"],
        ["Find the least value among these numbers: {input}"]),
    sb.make_task(
        "first_greater", COMPARE,
        "Given two numbers, answer yes if the first is greater than the second, otherwise no.",
        _first_greater,
        ["Is the first number greater than the second?\n{input}\n{options}",
         "{input}\nIs the first of these numbers bigger than the second one?\n{options}",
         "Numbers: {input}\nFirst > second?\n{options}"],
        ["Compare the two numbers. Does the first one exceed the second? {input}\n{options}"]),
    sb.make_task(
        "longer_word", COMPARE, "Given two words, pick the one with more letters.", _longer_word,
        ["Which of the two words is longer?\n{input}\n{options}",
         "{input}\nPick the word with more letters.\n{options}",
         "Words: {input}\nLonger word:\n{options}"],
        ["Choose the word that has the greater number of letters: {input}\n{options}"]),
    sb.make_task(
        "same_or_different", COMPARE, "Given two words, say whether they are exactly the same.",
        _same_or_different,
        ["Are the two words the same or different?\n{input}\n{options}",
         "{input}\nDo these two words match letter for letter?\n{options}",
         "Words: {input}\nSame or different?\n{options}"],
        ["Check whether both words are spelled identically: {input}\n{options}"]),
    sb.make_task(
        "first_larger_than_last", COMPARE,
        "Given a list of numbers, answer yes if its first number is larger than its last.",
        _first_larger_than_last,
        ["Is the first number in the list larger than the last one?\n{input}\n{options}",
         "{input}\nDoes the list start with a bigger number than it ends with?\n{options}",
         "Numbers: {input}\nFirst > last?\n{options}"],
        ["Compare the opening and closing numbers. Is the opening one greater? {input}\n{options}"],
        heldout=True),
)

# =============================================================================================
# classification: the rule is stated in the instruction, the labels in the options
# =============================================================================================

CLASSIFY = "classification"


def _even_or_odd(rng: random.Random) -> sb.Instance:
  n = rng.randint(0, 999)
  return sb.cls_instance(sb.digits(n), "even" if n % 2 == 0 else "odd", ["even", "odd"])


def _positive_or_negative(rng: random.Random) -> sb.Instance:
  n = rng.choice([-1, 1]) * rng.randint(1, 99)
  return sb.cls_instance(str(n), "positive" if n > 0 else "negative", ["positive", "negative"])


def _letter_query(rng: random.Random, matches: Callable[[str, str], bool]) -> sb.Instance:
  # Balanced labels: decide the answer first, then draw a letter that gives it.
  word = sb.word_or_pseudo(rng, 3, 5)
  want = rng.random() < 0.5
  letters = [c for c in sb.LETTERS if matches(word, c) == want]
  letter = rng.choice(letters)
  return sb.cls_instance(f"word: {sb.spell(word)}; letter: {letter}", sb.yes_no(want), sb.YES_NO)


def _starts_with_letter(rng: random.Random) -> sb.Instance:
  return _letter_query(rng, lambda word, c: word.startswith(c))


def _word_contains_letter(rng: random.Random) -> sb.Instance:
  return _letter_query(rng, lambda word, c: c in word)


def _list_contains_word(rng: random.Random) -> sb.Instance:
  words = sb.sample_words(rng, 2, 4)
  present = rng.random() < 0.5
  word = rng.choice(words) if present else rng.choice([w for w in sb.WORDS if w not in words])
  text = f"list: {sb.join_items(words)}; word: {word}"
  return sb.cls_instance(text, sb.yes_no(present), sb.YES_NO)


def _starts_with_vowel(rng: random.Random) -> sb.Instance:
  vowel = rng.random() < 0.5
  word = sb.pseudo_word(rng, 3, 5, start_with_vowel=vowel)
  return sb.cls_instance(sb.spell(word), "vowel" if vowel else "consonant", ["vowel", "consonant"])


CLASSIFY_TASKS = (
    sb.make_task(
        "even_or_odd", CLASSIFY, "Classify the given whole number as even or odd.", _even_or_odd,
        ["Is the number even or odd?\n{input}\n{options}",
         "{input}\nCan this number be split into two equal whole halves?\n{options}",
         "Number: {input}\nParity:\n{options}"],
        ["Decide whether this number is divisible by 2: {input}\n{options}"]),
    sb.make_task(
        "positive_or_negative", CLASSIFY, "Classify the given number as positive or negative.",
        _positive_or_negative,
        ["Is the number positive or negative?\n{input}\n{options}",
         "{input}\nIs this number above or below zero?\n{options}",
         "Number: {input}\nSign:\n{options}"],
        ["Tell whether this value is greater or less than zero: {input}\n{options}"]),
    sb.make_task(
        "starts_with_letter", CLASSIFY,
        "Given a word and a letter, answer yes if the word starts with that letter, otherwise no.",
        _starts_with_letter,
        ["Does the word start with the given letter?\n{input}\n{options}",
         "{input}\nIs that letter the first letter of the word?\n{options}",
         "Answer yes if the word begins with the letter, otherwise no. {input}\n{options}"],
        ["Check the opening letter of the word. Is it the given letter? {input}\n{options}"]),
    sb.make_task(
        "list_contains_word", CLASSIFY,
        "Given a list and a word, answer yes if the word is one of the list items, otherwise no.",
        _list_contains_word,
        ["Does the word appear in the list?\n{input}\n{options}",
         "{input}\nIs that word one of the list items?\n{options}",
         "Answer yes if the word is in the list, otherwise no. {input}\n{options}"],
        ["Can the given word be found among the items? {input}\n{options}"]),
    sb.make_task(
        "starts_with_vowel", CLASSIFY,
        "Say whether the word starts with a vowel (a, e, i, o, u) or a consonant.",
        _starts_with_vowel,
        ["Does the word start with a vowel or a consonant?\n{input}\n{options}",
         "{input}\nIs the first letter of this word one of a, e, i, o, u?\n{options}",
         "Word: {input}\nFirst letter type:\n{options}"],
        ["Classify the opening letter of this word: {input}\n{options}"]),
    sb.make_task(
        "word_contains_letter", CLASSIFY,
        "Given a word and a letter, answer yes if the letter occurs anywhere in the word.",
        _word_contains_letter,
        ["Does the word contain the given letter?\n{input}\n{options}",
         "{input}\nCan that letter be found somewhere in the word?\n{options}",
         "Answer yes if the letter is in the word, otherwise no. {input}\n{options}"],
        ["Look through the word for the given letter. Is it there? {input}\n{options}"],
        heldout=True),
)

# =============================================================================================
# extraction
# =============================================================================================

EXTRACT = "extraction"


def _extract_numbers(rng: random.Random) -> sb.Instance:
  name = rng.choice(sb.NAMES)
  p, q = rng.sample(sb.PLURALS, 2)
  a, b = rng.randint(0, 99), rng.randint(0, 99)
  frame = rng.randrange(4)
  if frame == 0:
    return sb.gen_instance(f"{name} has {a} {p} and {b} {q}.", f"{a}, {b}")
  if frame == 1:
    return sb.gen_instance(f"I saw {a} {p} and {b} {q}.", f"{a}, {b}")
  if frame == 2:
    return sb.gen_instance(f"There are {a} {p} and {b} {q}.", f"{a}, {b}")
  return sb.gen_instance(f"{name} bought {a} {p} today.", a)


_NAME_FRAMES = (
    "{name} has a {noun}.",
    "The {noun} is near {name}.",
    "I gave {name} a {noun}.",
    "A {noun} and {name} ran.",
    "We saw {name} by the {noun}.",
)


def _extract_name(rng: random.Random) -> sb.Instance:
  name = rng.choice(sb.NAMES)
  sentence = rng.choice(_NAME_FRAMES).format(name=name, noun=rng.choice(sb.WORDS))
  return sb.gen_instance(sentence, name)


def _initials(rng: random.Random) -> sb.Instance:
  words = sb.sample_words(rng, 2, 4, max_chars=32)
  return sb.gen_instance(" ".join(words), sb.spell(sb.initials(words)))


def _lookup_value(rng: random.Random) -> sb.Instance:
  keys = rng.sample(sb.LETTERS, rng.randint(2, 4))
  values = [rng.randint(0, 99) for _ in keys]
  pairs = sb.join_items(f"{k}: {v}" for k, v in zip(keys, values))
  i = rng.randrange(len(keys))
  return sb.gen_instance(f"{pairs}; key: {keys[i]}", values[i])


def _word_with_letter(rng: random.Random) -> sb.Instance:
  while True:
    words = rng.sample([w for w in sb.WORDS if len(w) <= 4], 3)
    # A letter found in exactly one word makes a single right answer.
    unique = sorted(c for c in set("".join(words)) if sum(c in w for w in words) == 1)
    if unique:
      letter = rng.choice(unique)
      answer = next(w for w in words if letter in w)
      spelled = [sb.spell(w) for w in words]
      return sb.cls_instance(f"{sb.join_items(spelled)}; letter: {letter}", sb.spell(answer), spelled)


EXTRACT_TASKS = (
    sb.make_task(
        "extract_numbers", EXTRACT,
        "List every number that appears in the sentence, in order, separated by commas.",
        _extract_numbers,
        ["List the numbers that appear in the sentence.\n{input}",
         "{input}\nWrite down every number in this sentence.",
         "Sentence: {input}\nNumbers:"],
        ["Pull out the numerals mentioned here, separated by commas: {input}"]),
    sb.make_task(
        "extract_name", EXTRACT, "Output the name of the person mentioned in the sentence.",
        _extract_name,
        ["What name appears in the sentence?\n{input}",
         "{input}\nWrite the person's name from this sentence.",
         "Sentence: {input}\nName:"],
        ["Who is mentioned in this sentence? {input}"]),
    sb.make_task(
        "initials", EXTRACT, "Output the first letter of each word, joined together.", _initials,
        ["Write the first letter of each word.\n{input}",
         "{input}\nJoin the initial letters of these words.",
         "Words: {input}\nInitials:"],
        ["Form an acronym from the starting letters of the words: {input}"]),
    sb.make_task(
        "lookup_value", EXTRACT,
        "Given key: value pairs and a key, output the value stored under that key.", _lookup_value,
        ["Return the value stored under the given key.\n{input}",
         "{input}\nWhat is the value of that key?",
         "Look up the key and give its number. {input}"],
        ["Find the number assigned to the requested key: {input}"]),
    sb.make_task(
        "word_with_letter", EXTRACT,
        "Given three words and a letter, pick the only word that contains that letter.",
        _word_with_letter,
        ["Which word contains the given letter?\n{input}\n{options}",
         "{input}\nPick the word that has that letter in it.\n{options}",
         "Find the word that includes the letter. {input}\n{options}"],
        ["Only one word uses the given letter. Which is it? {input}\n{options}"]),
)

# =============================================================================================
# format_conversion
# =============================================================================================

FORMAT = "format_conversion"


def _comma_to_space(rng: random.Random) -> sb.Instance:
  items = sb.sample_items(rng, 2, 4)
  return sb.gen_instance(sb.join_items(items), sb.join_items(items, " "))


def _space_to_comma(rng: random.Random) -> sb.Instance:
  items = sb.sample_items(rng, 2, 4)
  return sb.gen_instance(sb.join_items(items, " "), sb.join_items(items))


def _list_to_json(rng: random.Random) -> sb.Instance:
  numbers = sb.sample_numbers(rng, 2, 4)
  return sb.gen_instance(sb.join_items(numbers), sb.to_json_list(numbers))


def _json_to_list(rng: random.Random) -> sb.Instance:
  numbers = sb.sample_numbers(rng, 2, 4)
  return sb.gen_instance(sb.to_json_list(numbers), sb.join_items(numbers))


def _json_to_space(rng: random.Random) -> sb.Instance:
  numbers = sb.sample_numbers(rng, 2, 4)
  return sb.gen_instance(sb.to_json_list(numbers), sb.join_items(numbers, " "))


def _spell_digits(rng: random.Random) -> sb.Instance:
  digits = [rng.randint(0, 9) for _ in range(rng.randint(2, 3))]
  return sb.gen_instance(sb.join_items(digits, " "), sb.spell_digits(digits))


def _join_with_dash(rng: random.Random) -> sb.Instance:
  words = sb.sample_words(rng, 2, 4)
  return sb.gen_instance(" ".join(words), sb.join_items(words, " - "))


FORMAT_TASKS = (
    sb.make_task(
        "comma_to_space", FORMAT,
        "Rewrite a comma-separated list with single spaces between items.",
        _comma_to_space,
        ["Rewrite the list with spaces instead of commas.\n{input}",
         "{input}\nSeparate these items with single spaces.",
         "Comma list: {input}\nSpace list:"],
        ["Remove the commas between the items: {input}"]),
    sb.make_task(
        "space_to_comma", FORMAT, "Rewrite a space-separated list as a comma-separated list.",
        _space_to_comma,
        ["Rewrite the items as a comma-separated list.\n{input}",
         "{input}\nPut a comma between the items.",
         "Space list: {input}\nComma list:"],
        ["Separate each of these items with a comma and a space: {input}"]),
    sb.make_task(
        "list_to_json", FORMAT, "Convert a comma-separated list of numbers to a JSON array.",
        _list_to_json,
        ["Convert the list to JSON array format.\n{input}",
         "{input}\nWrap this list in square brackets.",
         "List: {input}\nJSON:"],
        ["Write these numbers as a bracketed array: {input}"]),
    sb.make_task(
        "json_to_list", FORMAT, "Convert a JSON array of numbers to a plain comma-separated list.",
        _json_to_list,
        ["Convert the JSON array to a plain comma-separated list.\n{input}",
         "{input}\nRemove the square brackets.",
         "JSON: {input}\nList:"],
        ["Unwrap this bracketed array into a simple list: {input}"]),
    sb.make_task(
        "spell_digits", FORMAT, "Write each digit of the input as an English word.", _spell_digits,
        ["Write each digit as an English word.\n{input}",
         "{input}\nSpell out these digits in words.",
         "Digits: {input}\nIn words:"],
        ["Replace every digit with its name: {input}"]),
    sb.make_task(
        "join_with_dash", FORMAT, "Join the given words with dashes instead of spaces.",
        _join_with_dash,
        ["Join the words with dashes.\n{input}",
         "{input}\nConnect these words using hyphens.",
         "Words: {input}\nDashed:"],
        ["Put a - between each pair of words: {input}"]),
    sb.make_task(
        "json_to_space", FORMAT, "Convert a JSON array of numbers to a space-separated list.",
        _json_to_space,
        ["Convert the JSON array to a space-separated list.\n{input}",
         "{input}\nRemove the brackets and commas, leaving spaces.",
         "JSON: {input}\nSpace list:"],
        ["Unwrap this bracketed array and separate the items with spaces: {input}"],
        heldout=True),
)

# =============================================================================================
# option_selection (held-out cluster): pick the listed option that a trained list skill yields
# =============================================================================================

SELECT = "option_selection"


def _pick_largest_number(rng: random.Random) -> sb.Instance:
  numbers = sb.sample_numbers(rng, 3, 4)
  return sb.cls_instance(sb.join_items(numbers), max(numbers), numbers)


def _pick_smallest_number(rng: random.Random) -> sb.Instance:
  numbers = sb.sample_numbers(rng, 3, 4)
  return sb.cls_instance(sb.join_items(numbers), min(numbers), numbers)


def _pick_last_item(rng: random.Random) -> sb.Instance:
  items = sb.sample_items(rng, 3, 4, max_chars=24)
  choices = list(items)
  rng.shuffle(choices)
  return sb.cls_instance(sb.join_items(items), items[-1], choices)


def _pick_member_word(rng: random.Random) -> sb.Instance:
  words = sb.sample_words(rng, 2, 4)
  answer = rng.choice(words)
  choices = [answer] + rng.sample([w for w in sb.WORDS if w not in words], 2)
  rng.shuffle(choices)
  return sb.cls_instance(sb.join_items(words), answer, choices)


SELECT_TASKS = (
    sb.make_task(
        "pick_largest_number", SELECT,
        "Given a list of numbers, choose the largest one from the options.",
        _pick_largest_number,
        ["Which option is the largest number in the list?\n{input}\n{options}",
         "{input}\nSelect the biggest of these numbers.\n{options}",
         "Numbers: {input}\nLargest:\n{options}"],
        ["Choose the highest value: {input}\n{options}"],
        heldout=True),
    sb.make_task(
        "pick_smallest_number", SELECT,
        "Given a list of numbers, choose the smallest one from the options.", _pick_smallest_number,
        ["Which option is the smallest number in the list?\n{input}\n{options}",
         "{input}\nSelect the lowest of these numbers.\n{options}",
         "Numbers: {input}\nSmallest:\n{options}"],
        ["Choose the least value: {input}\n{options}"],
        heldout=True),
    sb.make_task(
        "pick_last_item", SELECT, "Given a list, choose its last item from the options.",
        _pick_last_item,
        ["Which option is the last item of the list?\n{input}\n{options}",
         "{input}\nSelect the item that comes last.\n{options}",
         "List: {input}\nLast item:\n{options}"],
        ["Choose the item that closes the list: {input}\n{options}"],
        heldout=True),
    sb.make_task(
        "pick_member_word", SELECT, "Given a list, choose the option that is one of its items.",
        _pick_member_word,
        ["Which option appears in the list?\n{input}\n{options}",
         "{input}\nSelect the word that is one of these items.\n{options}",
         "List: {input}\nWord found in the list:\n{options}"],
        ["Choose the option that can be found among the items: {input}\n{options}"],
        heldout=True),
)

# =============================================================================================
# multiple_choice_math (held-out cluster): trained arithmetic and counting, answered from options
# =============================================================================================

MC_MATH = "multiple_choice_math"


def _add_with_options(rng: random.Random) -> sb.Instance:
  text, answer = sb.addition_problem(rng)
  return sb.cls_instance(text, sb.digits(answer), sb.number_options(rng, answer, write=sb.digits))


def _subtract_with_options(rng: random.Random) -> sb.Instance:
  text, answer = sb.subtraction_problem(rng)
  return sb.cls_instance(text, sb.digits(answer), sb.number_options(rng, answer, write=sb.digits))


def _count_items_with_options(rng: random.Random) -> sb.Instance:
  items = sb.sample_items(rng, 1, 6, max_chars=30)
  options = sb.number_options(rng, len(items), spread=2)
  return sb.cls_instance(sb.join_items(items), len(items), options)


def _word_problem_with_options(rng: random.Random) -> sb.Instance:
  text, answer = sb.word_problem(rng)
  return sb.cls_instance(text, answer, sb.number_options(rng, answer))


MC_MATH_TASKS = (
    sb.make_task(
        "add_with_options", MC_MATH, "Add the two numbers and choose the sum from the options.",
        _add_with_options,
        ["Add the two numbers and pick the correct sum.\n{input}\n{options}",
         "{input}\nWhich option is the sum?\n{options}",
         "Compute: {input} =\n{options}"],
        ["Choose the total of these numbers: {input}\n{options}"],
        heldout=True),
    sb.make_task(
        "subtract_with_options", MC_MATH,
        "Subtract the second number from the first and choose the result from the options.",
        _subtract_with_options,
        ["Subtract the second number from the first and pick the result.\n{input}\n{options}",
         "{input}\nWhich option is the difference?\n{options}",
         "Calculate: {input} =\n{options}"],
        ["Choose what remains after taking away the second number: {input}\n{options}"],
        heldout=True),
    sb.make_task(
        "count_items_with_options", MC_MATH,
        "Count the items in the list and choose the count from the options.",
        _count_items_with_options,
        ["How many items are in the list? Pick one.\n{input}\n{options}",
         "{input}\nWhich option is the number of items?\n{options}",
         "List: {input}\nNumber of items:\n{options}"],
        ["Choose the length of this list: {input}\n{options}"],
        heldout=True),
    sb.make_task(
        "word_problem_with_options", MC_MATH,
        "Solve the addition word problem and choose the answer from the options.",
        _word_problem_with_options,
        ["Solve the word problem and pick the right number.\n{input}\n{options}",
         "{input}\nHow many does this person have now?\n{options}",
         "Problem: {input}\nAnswer:\n{options}"],
        ["Read the story and choose the final count: {input}\n{options}"],
        heldout=True),
)

MORE_TASKS: tuple[sb.SyntheticTask, ...] = (
    COMPARE_TASKS + CLASSIFY_TASKS + EXTRACT_TASKS + FORMAT_TASKS + SELECT_TASKS + MC_MATH_TASKS
)
HELDOUT_CLUSTERS: tuple[str, ...] = (SELECT, MC_MATH)
