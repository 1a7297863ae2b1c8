"""The FLAN 2021 instruction templates, one family per task format, written in FLAN's style.

A family holds the forward templates of a task format (the prompt asks the task, the
target is the answer) and its inverted templates (FLAN's "turning the task around": the
prompt is built from the answer, the target is one of the original input fields, e.g.
"Write a question whose answer is X"). Several datasets share a family when their
examples have the same fields (the NLI family serves ANLI, CB, MNLI, RTE, SNLI and WNLI).

Forward templates are `FlanTemplate`s: format strings over an example's named fields,
with `{options}` expanding to the `OPTIONS:` block of its `answer_choices` for
classification formats; `without_options()` gives the no-options variant. Inverted
templates are `templates.InvertedTemplate`s. Every field a family's templates name is a
key of the canonical examples its datasets' feature mappings produce (flan2021.py).
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Any, Mapping

from sft_jax.data import templates

# `{options}` with the whitespace before it, removed whole by `without_options`.
_OPTIONS_BEFORE = re.compile(r"\s*\{options\}")


def _fields(pattern: str) -> set[str]:
  return {f for _, f, _, _ in string.Formatter().parse(pattern) if f}


class _Fields(dict):
  """An example's fields for `str.format_map`, with a KeyError that names the template."""

  def __init__(self, example: Mapping[str, Any], template_name: str, options: str):
    super().__init__(example, options=options)
    self._example, self._template_name = example, template_name

  def __missing__(self, key: str) -> Any:
    return templates.get_field(self._example, key, self._template_name)


@dataclasses.dataclass(frozen=True)
class FlanTemplate:
  """A forward template over named fields: `inputs` and `targets` are format strings.

  `{options}` in `inputs` is the FLAN options block of the example's `answer_choices`.
  When `targets` is `{answer}` the target is one of those choices, so the template
  reports them for rank classification.
  """

  name: str
  inputs: str
  targets: str = "{answer}"

  def __post_init__(self):
    if not _fields(self.inputs) - {"options"}:
      raise ValueError(f"template {self.name!r}: inputs use no example field: {self.inputs!r}")
    if not _fields(self.targets) or "options" in _fields(self.targets):
      raise ValueError(f"template {self.name!r}: targets must name example fields, not options: "
                       f"{self.targets!r}")

  @property
  def uses_options(self) -> bool:
    return "options" in _fields(self.inputs)

  def apply(self, example: Mapping[str, Any]) -> tuple[str, str]:
    """Returns (inputs, targets) for `example`."""
    choices = self.answer_choices(example) if self.targets == "{answer}" else None
    if self.uses_options and not choices:
      raise ValueError(f"template {self.name!r} needs answer_choices; example has none: {sorted(example)}")
    fields = _Fields(example, self.name, templates.format_options(choices) if choices else "")
    return self.inputs.format_map(fields), self.targets.format_map(fields)

  def answer_choices(self, example: Mapping[str, Any]) -> list[str] | None:
    """The example's `answer_choices` when the target is the answer, else None."""
    choices = example.get("answer_choices")
    if self.targets != "{answer}" or choices is None or not len(choices):
      return None
    return [str(c) for c in choices]

  def without_options(self) -> FlanTemplate:
    """The no-options variant: the options block and the whitespace before it removed."""
    if not self.uses_options:
      return self
    return FlanTemplate(f"{self.name}_noopt", _OPTIONS_BEFORE.sub("", self.inputs), self.targets)


@dataclasses.dataclass(frozen=True)
class Family:
  """The templates of one task format."""

  name: str
  forward: tuple[FlanTemplate, ...]
  inverted: tuple[templates.InvertedTemplate, ...] = ()

  @property
  def uses_options(self) -> bool:
    return any(t.uses_options for t in self.forward)


FAMILIES: dict[str, Family] = {}


def _family(name: str, forward: list[str | tuple[str, str]], inverted: list[tuple[str, str]] = ()) -> Family:
  """Registers a family: forward items are `inputs` or (inputs, targets); inverted are (pattern, field)."""
  built = []
  for i, item in enumerate(forward):
    inputs, targets = (item, "{answer}") if isinstance(item, str) else item
    built.append(FlanTemplate(f"{name}_{i}", inputs, targets))
  flipped = tuple(templates.InvertedTemplate(f"{name}_inverted_{i}", pattern, target_field=field)
                  for i, (pattern, field) in enumerate(inverted))
  FAMILIES[name] = Family(name, tuple(built), flipped)
  return FAMILIES[name]


# ----- Natural language inference -----

_family("nli", [
    "Premise: {premise}\nHypothesis: {hypothesis}\n\nDoes the premise entail the hypothesis?\n\n{options}",
    "{premise}\n\nBased on the paragraph above can we conclude that \"{hypothesis}\"?\n\n{options}",
    "{premise}\n\nCan we draw the following conclusion?\n{hypothesis}\n\n{options}",
    "Read the text and determine if the sentence is true:\n\n{premise}\n\nSentence: {hypothesis}\n\n{options}",
    "Here is a premise:\n{premise}\n\nHere is a hypothesis:\n{hypothesis}\n\nIf the premise is true, is the "
    "hypothesis true as well?\n\n{options}",
    "Can we conclude that \"{hypothesis}\" if \"{premise}\"?\n\n{options}",
    "{premise}\nDoes this next sentence follow, given the preceding text?\n{hypothesis}\n\n{options}",
    "Suppose that \"{premise}\" Can we infer that \"{hypothesis}\"?\n\n{options}",
], [
    ("Premise: {premise}\n\nWrite a hypothesis such that the answer to \"Does the premise entail the "
     "hypothesis?\" is \"{answer}\".", "hypothesis"),
    ("Hypothesis: {hypothesis}\n\nWrite a premise such that the answer to \"Does the premise entail the "
     "hypothesis?\" is \"{answer}\".", "premise"),
])

_family("qnli", [
    "Does the sentence \"{sentence}\" answer the question \"{question}\"?\n\n{options}",
    "Question: {question}\nAnswer: {sentence}\nIs the question answered in a satisfactory fashion?\n\n{options}",
    "Does \"{sentence}\" contain the correct answer to \"{question}\"?\n\n{options}",
    "Is \"{sentence}\" a good answer to the question \"{question}\"?\n\n{options}",
    "Q: {question}\nA: {sentence}\nDoes the answer correctly answer the question?\n\n{options}",
    "Sentence: {sentence}\n\nQuestion: {question}\n\nDoes the sentence provide a valid answer to the "
    "question?\n\n{options}",
    "Determine if the sentence \"{sentence}\" answers the question below.\n\n{question}\n\n{options}",
    "{question}\nIs \"{sentence}\" the correct answer?\n\n{options}",
], [
    ("Sentence: {sentence}\n\nWrite a question such that the answer to \"Does the sentence answer the "
     "question?\" is \"{answer}\".", "question"),
])

# ----- Reading comprehension -----

_family("boolq", [
    "{passage}\n\nCan we conclude that {question}?\n\n{options}",
    "{passage}\n\nIs it true that {question}?\n\n{options}",
    "{passage}\n\n{question}?\n\n{options}",
    "Text: {passage}\n\nQuestion: {question}?\n\n{options}",
    "{passage}\n\nWhat's the best answer to this question: {question}?\n\n{options}",
    "{passage}\nBased on the above text, what's the best answer to this question: {question}?\n\n{options}",
    "{passage}\nAnswer this question, making sure that the answer is supported by the text: {question}?"
    "\n\n{options}",
    "{title}\n\n{passage}\n\nIs the following statement correct based on the text?\n\n{question}\n\n{options}",
], [
    ("{passage}\n\nWrite a yes/no question about the passage above whose answer is \"{answer}\".", "question"),
    ("{passage}\n\nWhat is the title of this passage?", "title"),
])

_family("multirc", [
    "{paragraph}\n\nQuestion: \"{question}\"\n\nResponse: \"{response}\"\n\nDoes the response correctly answer "
    "the question?\n\n{options}",
    "{paragraph}\n\nQuestion: \"{question}\"\n\nAnswer: \"{response}\"\n\nIs this answer to the question "
    "correct?\n\n{options}",
    "{paragraph}\n\nAfter reading the above, is \"{response}\" the correct answer to the question "
    "\"{question}\"?\n\n{options}",
    "{paragraph}\n\nQuestion: {question}\n\nIs the correct answer {response}?\n\n{options}",
    "Paragraph: {paragraph}\nQuestion: {question}\nAnswer: {response}\nBased on the paragraph, is the answer "
    "correct?\n\n{options}",
    "{paragraph}\n\nBased on the paragraph, does the response \"{response}\" correctly answer the question "
    "\"{question}\"?\n\n{options}",
    "{paragraph}\n\nAccording to the above paragraph, is the correct answer to the question \"{question}\" "
    "\"{response}\"?\n\n{options}",
    "Read the paragraph and judge the response.\n\n{paragraph}\n\nQuestion: {question}\nResponse: {response}"
    "\n\n{options}",
], [
    ("{paragraph}\n\nWrite a question about the paragraph above.", "question"),
    ("{paragraph}\n\nQuestion: {question}\n\nWrite a response such that the answer to \"Is the response "
     "correct?\" is \"{answer}\".", "response"),
])

_EXTRACTIVE_QA = [
    "Read this and answer the question.\n\n{context}\n\n{question}",
    "{context}\n{question}",
    "Answer a question about this article:\n{context}\n{question}",
    "Here is a question about this article: {context}\nWhat is the answer to this question: {question}",
    "Article: {context}\n\nQuestion: {question}",
    "Article: {context}\n\nNow answer this question: {question}",
    "{context}\n\nAnswer this question based on the article: {question}",
    "{context}\n\nQ: {question}",
]
_EXTRACTIVE_QA_INVERTED = [
    ("Write a question about the following article whose answer is \"{answer}\".\n\n{context}", "question"),
    ("{context}\n\nAsk a question about this article.", "question"),
]
_family("extractive_qa", _EXTRACTIVE_QA, _EXTRACTIVE_QA_INVERTED)
_family("extractive_qa_unanswerable",
        [t + " (If the question is unanswerable, say \"unanswerable\")" for t in _EXTRACTIVE_QA],
        _EXTRACTIVE_QA_INVERTED)

_family("openbookqa", [
    "{fact}\n{question}\n\n{options}",
    "Read this fact: \"{fact}\"\n\nNow answer this question: \"{question}\"\n\n{options}",
    "Given the fact \"{fact}\", what is the answer to the question or completion \"{question}\"?\n\n{options}",
    "Fact: {fact}\nQuestion: {question}\n\n{options}\nAnswer:",
    "Use this fact to answer the question: {fact}\n\n{question}\n\n{options}",
    "Knowing that \"{fact}\", how would one answer \"{question}\"?\n\n{options}",
    "{fact}\n\nBased on the fact above, answer or complete: {question}\n\n{options}",
    "Fact: {fact}\n\nComplete or answer: {question}\n\n{options}",
], [
    ("Write a fact that helps answer the question \"{question}\" with \"{answer}\".", "fact"),
])

# ----- Closed-book QA -----

_family("closed_book_qa", [
    "{question}",
    "Answer the following question. {question}",
    "Answer this question.\n\n{question}",
    "Please answer this question: {question}",
    "Answer the question... {question}",
    "What is the answer to this question? {question}",
    "Write the answer: {question}",
    "Q: {question}\nA:",
], [
    ("Write a trivia question whose answer is {answer}.", "question"),
    ("What is a question for which the answer is \"{answer}\"?", "question"),
])

_family("multiple_choice_qa", [
    "{question}\n\n{options}",
    "Question: {question}\n\n{options}\nAnswer:",
    "Answer the following question.\n\n{question}\n\n{options}",
    "Here is a question from a science exam: {question}\n\n{options}",
    "Choose the correct answer to this question: {question}\n\n{options}",
    "{question}\nWhat is the correct answer to the question above?\n\n{options}",
    "Q: {question}\n\n{options}\nA:",
    "Pick the right answer to this science question. {question}\n\n{options}",
], [
    ("Write a science exam question whose answer is \"{answer}\".", "question"),
])

# ----- Commonsense -----

_family("copa", [
    "{premise} What is the {question}?\n\n{options}",
    "Premise: {premise}\nWhat is the {question}?\n\n{options}",
    "Pick the more plausible {question} of this event: \"{premise}\"\n\n{options}",
    "{premise} {question_text}\n\n{options}",
    "Complete the following sentence.\n\n{premise_connected}\n\n{options}",
    "Here is a premise: \"{premise}\"\n\n{question_text}\n\n{options}",
    "{premise}\n\nQuestion: {question_text}\n\n{options}",
    "Choose the {question} of the following event.\n\n{premise}\n\n{options}",
], [
    ("Write a sentence describing an event whose {question} is \"{answer}\".", "premise"),
])

_family("sentence_completion", [
    "{context}\n\nWhat happens next?\n\n{options}",
    "Continue writing the following text.\n\n{context}\n\n{options}",
    "{context}\n\nHow does the text continue?\n\n{options}",
    "Write the next sentence.\n\n{context}\n\n{options}",
    "What is the most logical next event?\n\n{context}\n\n{options}",
    "{context}\n\nChoose the most plausible continuation.\n\n{options}",
    "Complete the text: {context}\n\n{options}",
    "Here is the beginning of a text:\n{context}\n\nWhich ending fits best?\n\n{options}",
], [
    ("Write a text that could come right before this ending: {answer}", "context"),
])

_family("piqa", [
    "{goal}\n\n{options}",
    "How do I do this: {goal}\n\n{options}",
    "Goal: {goal}\n\nWhich of the following methods is more reasonable for accomplishing this goal?\n\n{options}",
    "What is the most logical way to complete this task: {goal}\n\n{options}",
    "How would someone go about accomplishing this goal?\n{goal}\n\n{options}",
    "Choose the best solution for the goal \"{goal}\".\n\n{options}",
    "{goal}\nWhich solution works?\n\n{options}",
    "Here is a goal: {goal}\n\nHow would you accomplish this goal?\n\n{options}",
], [
    ("Write a goal that the following solution accomplishes: {answer}", "goal"),
])

# ----- Coreference -----

_family("coref_completion", [
    "How does the sentence end?\n\n{context}\n\n{options}",
    "Write the next word(s) of this sentence.\n\n{context}\n\n{options}",
    "{context}\n\nHow does this sentence end?\n\n{options}",
    "Complete the following sentence.\n\n{context}\n\n{options}",
    "Choose the most logical continuation of the sentence: {context}\n\n{options}",
    "Finish the sentence: {context}\n\n{options}",
    "{context}\n\nWhich completion makes sense?\n\n{options}",
    "Continue writing the following text: {context}\n\n{options}",
], [
    ("Write the beginning of a sentence that ends with \"{answer}\".", "context"),
])

_family("pronoun_resolution", [
    "{sentence}\n\nWho is \"{pronoun}\" in this prior sentence?\n\n{options}",
    "{sentence}\nWho is {pronoun} referring to in this sentence?\n\n{options}",
    "In the sentence \"{sentence}\", what does \"{pronoun}\" refer to?\n\n{options}",
    "{sentence}\nTell me who {pronoun} is.\n\n{options}",
    "Sentence: {sentence}\n\nWhich entity does the pronoun \"{pronoun}\" refer to?\n\n{options}",
    "Who does \"{pronoun}\" refer to in the following sentence?\n\n{sentence}\n\n{options}",
    "{sentence}\n\nResolve the pronoun \"{pronoun}\".\n\n{options}",
    "{sentence}\n\nIn the sentence above, whom or what does \"{pronoun}\" stand for?\n\n{options}",
], [
    ("Write a sentence in which the pronoun \"{pronoun}\" refers to {answer}.", "sentence"),
])

_family("wsc", [
    "{context}\n\nIn the sentence above, does \"{pronoun}\" refer to \"{noun}\"?\n\n{options}",
    "{context}\nIs the pronoun \"{pronoun}\" referring to {noun}?\n\n{options}",
    "Sentence: {context}\nDoes \"{pronoun}\" refer to \"{noun}\" here?\n\n{options}",
    "In the passage below, does the pronoun \"{pronoun}\" refer to \"{noun}\"?\n\nPassage: {context}\n\n{options}",
    "{context}\n\nDo \"{pronoun}\" and \"{noun}\" refer to the same thing in the sentence above?\n\n{options}",
    "Here is a sentence: {context}\n\nIs \"{noun}\" what \"{pronoun}\" stands for?\n\n{options}",
    "{context}\nQuestion: Does \"{pronoun}\" mean \"{noun}\"?\n\n{options}",
    "Read the sentence and answer the question.\n\n{context}\n\nIs \"{pronoun}\" the same as \"{noun}\"?\n\n{options}",
], [
    ("Write a sentence that mentions \"{noun}\" and uses the pronoun \"{pronoun}\", such that the answer to "
     "\"Does the pronoun refer to {noun}?\" is \"{answer}\".", "context"),
])

# ----- Sentiment -----

_family("sentiment", [
    "{text}\nWhat is the sentiment of this {kind}?\n\n{options}",
    "{text}\n\nIs this {kind} positive or negative?\n\n{options}",
    "Is the sentiment of the following {kind} positive or negative?\n{text}\n\n{options}",
    "{kind_title}: {text}\nIs this {kind} positive or negative?\n\n{options}",
    "How would one describe the sentiment of this {kind}?\n{text}\n\n{options}",
    "Determine the sentiment:\n\n{text}\n\n{options}",
    "{text}\nHow would you describe the sentiment of this {kind}?\n\n{options}",
    "Classify the sentiment of this {kind}:\n\n{text}\n\n{options}",
], [
    ("Write a {answer} {kind}.", "text"),
    ("Generate a {kind} with {answer} sentiment.", "text"),
])

# ----- Paraphrase -----

_family("paraphrase", [
    "Here are two {unit}s:\n{sentence1}\n{sentence2}\nDo they have the same meaning?\n\n{options}",
    "{sentence1}\n{sentence2}\n\nDo these {unit}s mean the same thing?\n\n{options}",
    "{unit_title} 1: {sentence1}\n{unit_title} 2: {sentence2}\n\nAre these two {unit}s paraphrases of each "
    "other?\n\n{options}",
    "Do the following two {unit}s have the same meaning?\n{sentence1}\n{sentence2}\n\n{options}",
    "Are these two {unit}s paraphrases of each other?\n{sentence1}\n{sentence2}\n\n{options}",
    "Is \"{sentence1}\" a paraphrase of \"{sentence2}\"?\n\n{options}",
    "Please tell me if the {unit}s \"{sentence1}\" and \"{sentence2}\" are equivalent.\n\n{options}",
    "{sentence1}\n\nIs that the same as saying \"{sentence2}\"?\n\n{options}",
], [
    ("{unit_title}: {sentence1}\n\nWrite another {unit} such that the answer to \"Do the two {unit}s mean the "
     "same thing?\" is \"{answer}\".", "sentence2"),
    ("Write a {unit} that {relation} this one: {sentence2}", "sentence1"),
])

_STS_SCALE = "on a scale from 0 to 5, where 0 is \"no meaning overlap\" and 5 is \"means the same thing\""
_family("stsb", [
    "{sentence1}\n{sentence2}\n\nRate the textual similarity of these two sentences " + _STS_SCALE
    + ".\n\n{options}",
    "{sentence1}\n{sentence2}\n\nHow closely does the first sentence resemble the second one, " + _STS_SCALE
    + "?\n\n{options}",
    "Sentence 1: {sentence1}\n\nSentence 2: {sentence2}\n\nHow similar are the two sentences, " + _STS_SCALE
    + "?\n\n{options}",
    "How similar are the following two sentences?\n\n{sentence1}\n{sentence2}\n\nGive the answer " + _STS_SCALE
    + ".\n\n{options}",
    "Do the following sentences say the same thing?\n\n{sentence1}\n{sentence2}\n\nAnswer " + _STS_SCALE
    + ".\n\n{options}",
    "Rate the similarity of the following two sentences " + _STS_SCALE + ".\n\n{sentence1}\n{sentence2}"
    "\n\n{options}",
    "How similar is the sentence \"{sentence1}\" to the sentence \"{sentence2}\", " + _STS_SCALE
    + "?\n\n{options}",
    "Score the semantic similarity of these sentences " + _STS_SCALE + ".\n{sentence1}\n{sentence2}\n\n{options}",
], [
    ("Sentence: {sentence1}\n\nWrite a sentence whose similarity to this one is {answer} " + _STS_SCALE + ".",
     "sentence2"),
])

# ----- Struct to text -----

_family("common_gen", [
    ("Concepts: {concepts}\n\nWrite a sentence that includes all these words.", "{target}"),
    ("Keywords: {concepts}\n\nWhat is a sentence that includes all these keywords?", "{target}"),
    ("Here are some concepts: {concepts}\n\nWhat is a sentence about these concepts?", "{target}"),
    ("Produce a sentence which mentions all of these concepts: {concepts}", "{target}"),
    ("Write a sentence about the following things:\n\n{concepts}", "{target}"),
    ("Generate a sentence that includes all the following words: {concepts}", "{target}"),
    ("Make a sentence using these words: {concepts}", "{target}"),
    ("Create a short sentence with the words {concepts}.", "{target}"),
], [
    ("What are the keywords in the following sentence:\n\n{target}", "concepts"),
    ("Extract the most important words from this sentence: {target}", "concepts"),
])

_family("data_to_text", [
    ("Data: {data}\n\nWhat would a sentence about this data be like?", "{target}"),
    ("Generate an approximately fifteen-word sentence that describes all this data: {data}", "{target}"),
    ("Here is some data: {data}.\n\nWrite a sentence that describes this data.", "{target}"),
    ("This is some data: {data}.\n\nGenerate a detailed description of this data.", "{target}"),
    ("Generate a sentence about this data: {data}", "{target}"),
    ("Produce a sentence which mentions all of these facts: {data}", "{target}"),
    ("Facts: {data}\n\nWrite a short text describing these facts.", "{target}"),
    ("Turn this data into a sentence: {data}", "{target}"),
], [
    ("Sentence: {target}\n\nWhat data can be extracted from this sentence?", "data"),
    ("Extract the structured data from this sentence: {target}", "data"),
])

# ----- Translation: both directions are forward templates, as in FLAN -----

_family("translation", [
    ("{sent1}\n\nTranslate to {lang2}.", "{sent2}"),
    ("Translate the following sentence to {lang2}:\n{sent1}", "{sent2}"),
    ("How is \"{sent1}\" said in {lang2}?", "{sent2}"),
    ("Translate \"{sent1}\" to {lang2}.", "{sent2}"),
    ("Translate to {lang2}:\n\n{sent1}", "{sent2}"),
    ("{sent2}\n\nTranslate to {lang1}.", "{sent1}"),
    ("Translate the following sentence to {lang1}:\n{sent2}", "{sent1}"),
    ("How is \"{sent2}\" said in {lang1}?", "{sent1}"),
    ("Translate \"{sent2}\" from {lang2} to {lang1}.", "{sent1}"),
    ("{sent2}\n\nCould you please translate this to {lang1}?", "{sent1}"),
])

# ----- Summarization -----

_family("news_summary", [
    ("Summarize this article:\n\n{text}", "{summary}"),
    ("Write a summary based on this article:\n\n{text}", "{summary}"),
    ("{text}\n\nWhat is a short summary of the above article?", "{summary}"),
    ("Article: {text}\n\nA summary of this article is?", "{summary}"),
    ("{text}\nSummarize the highlights of this article.", "{summary}"),
    ("{text}\n\nWrite a brief summary of the text above.", "{summary}"),
    ("Summarize the following:\n\n{text}", "{summary}"),
    ("What are the most important parts of this text?\n\n{text}", "{summary}"),
], [
    ("Write an article based on this summary:\n\n{summary}", "text"),
    ("Here is a summary:\n{summary}\n\nWrite the text it summarizes.", "text"),
])

_family("headline", [
    ("{text}\n\nWrite a brief summary in a sentence or less.", "{summary}"),
    ("Generate a short summary: {text}", "{summary}"),
    ("Write a headline for this sentence: {text}", "{summary}"),
    ("{text}\n\nWhat is a very short summary of the above text?", "{summary}"),
    ("Summarize this sentence: {text}", "{summary}"),
    ("What is a one-line summary of this text?\n\n{text}", "{summary}"),
    ("Briefly summarize this sentence: {text}", "{summary}"),
    ("{text}\n\nWrite a headline for the text above.", "{summary}"),
], [
    ("Write a sentence based on this summary: {summary}", "text"),
    ("Write a news sentence with the headline \"{summary}\".", "text"),
])

_family("dialogue_summary", [
    ("{dialogue}\n\nBriefly summarize that dialogue.", "{summary}"),
    ("Here is a dialogue:\n{dialogue}\n\nWrite a short summary!", "{summary}"),
    ("Dialogue:\n{dialogue}\n\nWhat is a summary of this dialogue?", "{summary}"),
    ("{dialogue}\n\nWhat was that dialogue about, in two sentences or less?", "{summary}"),
    ("Summarize this dialogue:\n{dialogue}", "{summary}"),
    ("Here is a dialogue:\n{dialogue}\n\nWhat were they talking about?", "{summary}"),
    ("Dialogue:\n{dialogue}\nWhat were the main points in that conversation?", "{summary}"),
    ("{dialogue}\n\nWrite a summary of the conversation above.", "{summary}"),
], [
    ("Write a dialogue that matches this summary: {summary}", "dialogue"),
    ("Summary: {summary}\n\nWrite a conversation that this summarizes.", "dialogue"),
])

_family("email_subject", [
    ("{body}\n\nWrite a subject line for this email.", "{subject}"),
    ("{body}\n\nWhat is a potential title for this email?", "{subject}"),
    ("{body}\nPropose a subject line for this email.", "{subject}"),
    ("This is the content of an email: {body}\nWhat was the subject line for this email?", "{subject}"),
    ("This is an email\n{body}\n\nWhat is the subject of this email?", "{subject}"),
    ("Write a subject line for this message:\n\n{body}", "{subject}"),
    ("Email: {body}\n\nWhat is a good subject line for this email?", "{subject}"),
    ("Generate a subject line for this email:\n\n{body}", "{subject}"),
], [
    ("Write an email with the subject line \"{subject}\".", "body"),
    ("Subject: {subject}\n\nWrite the body of this email.", "body"),
])

_family("movie_consensus", [
    ("{numbered_reviews}\nWrite a one sentence summary of the reviews above.", "{consensus}"),
    ("Movie: {movie}\n\nReviews:\n{numbered_reviews}\n\nWhat is the critics' consensus?", "{consensus}"),
    ("Based on these individual reviews, what is the critic consensus?\n\n{numbered_reviews}", "{consensus}"),
    ("{numbered_reviews}\n\nWhat is the consensus?", "{consensus}"),
    ("Here are some reviews for a movie: {numbered_reviews}\n\nWhat was the overall consensus about the movie?",
     "{consensus}"),
    ("Summarize the following movie reviews of {movie}:\n\n{numbered_reviews}", "{consensus}"),
    ("Write a critics' consensus for the movie {movie} given these reviews:\n{numbered_reviews}", "{consensus}"),
    ("Reviews of {movie}:\n{numbered_reviews}\n\nIn one sentence, what do the critics think?", "{consensus}"),
], [
    ("Write a review of the movie {movie} in line with this critics' consensus: {consensus}", "first_review"),
])

_family("argument_claim", [
    ("Summarize the argument implied by these sentences:\n\n{numbered_arguments}", "{claim}"),
    ("Sentences: {numbered_arguments}\n\nWhat claim can be made from these sentences?", "{claim}"),
    ("{numbered_arguments}\nWhat is the general argument implied by these sentences?", "{claim}"),
    ("Debate: {debate}\n\nArguments:\n{numbered_arguments}\n\nWhat is the claim?", "{claim}"),
    ("Here are some sentences from a debate about \"{debate}\":\n{numbered_arguments}\n\nWhat claim do they "
     "support?", "{claim}"),
    ("What argument do these sentences make?\n{numbered_arguments}", "{claim}"),
    ("{numbered_arguments}\n\nWrite a one-sentence claim that summarizes the argument above.", "{claim}"),
    ("Topic: {debate}\n{numbered_arguments}\nWhat is the main point?", "{claim}"),
], [
    ("Claim: {claim}\n\nWhat is the topic of the debate this claim comes from?", "debate"),
])

_family("topic_classification", [
    "{title}\n\n{text}\n\nWhat is this text about?\n\n{options}",
    "{text}\n\nWhich topic is this article about?\n\n{options}",
    "{title}\n{text}\nWhich is the best summary of this article?\n\n{options}",
    "Select the topic that this is about:\n\n{text}\n\n{options}",
    "{text}\nWhat is this text about?\n\n{options}",
    "Classify this news article: {title}\n\n{text}\n\n{options}",
    "Article: {text}\n\nWhat is the topic of this article?\n\n{options}",
    "Choose the best topic for this news story.\n\n{title}: {text}\n\n{options}",
], [
    ("Write a title for this article:\n\n{text}", "title"),
    ("Title: {title}\n\nWrite a short news article with this title about {answer}.", "text"),
])

# ----- Reading comprehension with commonsense -----

_family("record", [
    "Complete the following text.\n\n{passage}\n\n{query}\n\n{options}",
    "{passage}\n\nWrite the next sentence.\n\n{query}\n\n{options}",
    "Write the last sentence in this story.\n\n{passage}\n\n{query}\n\n{options}",
    "Choose the next sentence.\n{passage}\n\n{query}\n\n{options}",
    "What's the most logical way to complete this passage?\n\n{passage}\n\n{query}\n\n{options}",
    "{passage}\n\nWhat is the next sentence?\n\n{query}\n\n{options}",
    "Passage: {passage}\n\nHow does the following sentence end?\n{query}\n\n{options}",
    "{passage}\n\nFinish the sentence: {query}\n\n{options}",
], [
    ("Write a news passage that could be followed by this sentence: {full_sentence}", "passage"),
])

_family("cosmos_qa", [
    "{context}\n\nQuestion: {question}\n\n{options}",
    "{context}\n\n{question}\n\n{options}",
    "{context}\n\nAnswer the following question: {question}\n\n{options}",
    "{context}\n\nBased on the preceding passage, answer the following question: {question}\n\n{options}",
    "{context}\n\nAnswer the following question using evidence from the above passage: {question}\n\n{options}",
    "Context: {context}\n\nQuestion: {question}\n\n{options}\nAnswer:",
    "Read the following article and answer the question.\n\n{context}\n\n{question}\n\n{options}",
    "Answer the question about the text:\n\n{context}\n\n{question}\n\n{options}",
], [
    ("{context}\n\nWrite a question about the passage above whose answer is \"{answer}\".", "question"),
])

# ----- Miscellaneous -----

_family("coqa", [
    ("{text}\n\nAnswer the following questions:\n{numbered_questions}", "{numbered_answers}"),
    ("{text}\n\nAnswer these questions:\n{numbered_questions}", "{numbered_answers}"),
    ("{text}\n\nWhat are the answers to this following set of questions:\n{numbered_questions}",
     "{numbered_answers}"),
    ("{text}\n\nNow, provide a numbered list of answers to these questions:\n{numbered_questions}",
     "{numbered_answers}"),
    ("{text}\n\n{numbered_questions}\n\nProvide a numbered list of answers.", "{numbered_answers}"),
    ("Make use of the article to answer the questions.\n\n{text}\n\n{numbered_questions}", "{numbered_answers}"),
    ("Read the text and answer the questions.\n\n{text}\n\n{numbered_questions}", "{numbered_answers}"),
    ("{text}\n\nQuestions:\n{numbered_questions}\n\nAnswers:", "{numbered_answers}"),
], [
    ("{text}\n\nBased on the article and the following list of answers, write a list of questions.\n\n"
     "{numbered_answers}", "numbered_questions"),
])

_family("quac", [
    ("{background}\n\n{context}\n\nAnswer the following question by taking a quote from the article: {question}",
     "{answer}"),
    ("{background}\n\n{context}\n\nUsing a quote from the above article, answer the following question: "
     "{question}", "{answer}"),
    ("Answer by taking a quote from the following article:\n\n{background}\n\n{context}\n\n{question}", "{answer}"),
    ("{title}\n\n{background}\n\n{context}\n\nQ: {question}", "{answer}"),
    ("Background: {background}\nContext: {context}\nQuestion: {question}. What's the answer?", "{answer}"),
    ("{context}\n\nAnswer this question \"{question}\" by extracting the answer from the text above.", "{answer}"),
    ("Article about {title}:\n\n{context}\n\n{question}", "{answer}"),
    ("{background}\n\n{context}\n\nQuestion: {question}\n\nAnswer with a quote from the text.", "{answer}"),
], [
    ("{title}\n\n{context}\n\nWrite a question about the article whose answer is \"{answer}\".", "question"),
])

_family("trec", [
    "What type of thing is the question \"{text}\" asking about?\n\n{options}\nAnswer:",
    "Is the question \"{text}\" asking about an entity, an abbreviation, a description, a human, a location, "
    "or a numeric value?\n\n{options}",
    "What kind of answer does the question \"{text}\" ask for?\n\n{options}",
    "{text}\n\nWhat kind of thing would answer this question?\n\n{options}",
    "What type of answer does the question \"{text}\" expect?\n\n{options}",
    "Classify the question \"{text}\" by the kind of answer it asks for.\n\n{options}",
    "{text}\n\nWhat category does this question belong to?\n\n{options}",
    "Which category best describes the question: {text}\n\n{options}",
], [
    ("Write a question asking about something in the category \"{answer}\".", "text"),
])

_family("cola", [
    "Sentence: \"{sentence}\"\nWould a linguist rate this sentence to be acceptable linguistically?\n\n{options}",
    "{sentence}\n\nHow would you consider the linguistic integrity of the preceding sentence?\n\n{options}",
    "Test sentence: \"{sentence}\"\nIs this test sentence a correct grammatical English sentence?\n\n{options}",
    "Sentence: \"{sentence}\"\nWould a linguist find this sentence to be grammatically acceptable?\n\n{options}",
    "Is the following sentence linguistically acceptable?\n{sentence}\n\n{options}",
    "Would the following sentence, by the strictest standards, be considered correct by a linguist?\n\n"
    "{sentence}\n\n{options}",
    "Is the next sentence syntactically and semantically acceptable?\n\n{sentence}\n\n{options}",
    "Would a linguist find the following sentence to be a valid English sentence grammatically?\n\n{sentence}"
    "\n\n{options}",
], [
    ("Generate a linguistically {answer} sentence.", "sentence"),
])

_family("wic", [
    "Here is one sentence: {sentence1}\nHere is another sentence: {sentence2}\nDoes the term {word} mean the "
    "same thing in both these sentences?\n\n{options}",
    "In these two sentences (1) {sentence1} (2) {sentence2}, does the word {word} mean the same thing?\n\n{options}",
    "Determine if the word '{word}' means the same thing in the following sentences.\n\n{sentence1}\n{sentence2}"
    "\n\n{options}",
    "\"{sentence1}\" and \"{sentence2}\": does the word \"{word}\" have the same meaning in both sentences?"
    "\n\n{options}",
    "Does the word \"{word}\" have the same definition in the next two sentences?\n\n{sentence1}\n{sentence2}"
    "\n\n{options}",
    "Is the word \"{word}\" used in the same way in the following two sentences?\n\n{sentence1}\n{sentence2}"
    "\n\n{options}",
    "Does the word \"{word}\" mean the same thing in \"{sentence1}\" and \"{sentence2}\"?\n\n{options}",
    "Sentence 1: {sentence1}\nSentence 2: {sentence2}\n\nDoes {word} mean the same thing in these two "
    "sentences?\n\n{options}",
], [
    ("Write a sentence in which the word \"{word}\" has {relation} in this sentence: {sentence1}", "sentence2"),
])

_family("math", [
    ("Math problem: {question}\nWhat is the solution?", "{answer}"),
    ("Solve this math problem.\n\n{question}", "{answer}"),
    ("{question}\nSolve this problem.", "{answer}"),
    ("What is the solution?\n\n{question}", "{answer}"),
    ("Write down the solution for this math problem: {question}", "{answer}"),
    ("Solve:\n{question}", "{answer}"),
    ("Problem: {question}\nAnd the answer is...", "{answer}"),
    ("{question}\n\nWhat is the answer?", "{answer}"),
], [
    ("Write a math problem whose answer is {answer}.", "question"),
])

_family("fix_punct", [
    ("{no_punct}\n\nCan you repeat this sentence, but add in punctuation?", "{answer}"),
    ("{no_punct}\n\nAdd punctuation.", "{answer}"),
    ("Add punctuation to the following sentence: {no_punct}", "{answer}"),
    ("Generate a correctly punctuated version of the following text: {no_punct}", "{answer}"),
    ("{no_punct}\n\nWhat is the correctly punctuated version of this sentence?", "{answer}"),
    ("{no_punct}\n\nPlease fix the punctuation.", "{answer}"),
    ("{no_punct}\nCould you correct the punctuation please?", "{answer}"),
    ("Please add punctuation to this: {no_punct}", "{answer}"),
], [
    ("{answer}\n\nRemove the punctuation from the sentence above.", "no_punct"),
])
