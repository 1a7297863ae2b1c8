"""The FLAN 2021 datasets: TFDS sources, splits, sizes, and feature mappings to canonical examples.

Each `FlanDataset` reads a few TFDS features (by path, e.g. `answers/text`) and maps them,
as Python values, to the canonical example its template family renders: named text fields,
`answer`, and for classification `answer_choices` (the label set, in FLAN's wording) with
`answer` one of them. A mapping returns None for a record that has no gold answer (test
splits with hidden labels, SNLI's unannotated pairs, neutral Sentiment140 tweets), which
the task then skips. Feature names and configs are those of TFDS 4.9's builders.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

CLUSTERS = ("nli", "reading_comprehension", "closed_book_qa", "commonsense", "coreference", "sentiment",
            "paraphrase", "struct_to_text", "translation", "summarization",
            "reading_comprehension_with_commonsense", "misc")

# FLAN 2021 datasets whose TFDS builder needs files placed by hand in
# ~/tensorflow_datasets/downloads/manual before `tfds.load` can prepare them (the builders'
# MANUAL_DOWNLOAD_INSTRUCTIONS say where each file comes from).
MANUAL_DOWNLOAD = {
    "story_cloze": "cloze_test_val__spring2016.csv and cloze_test_test__spring2016.csv, by request "
                   "from cs.rochester.edu/nlp/rocstories",
    "newsroom": "train.jsonl, dev.jsonl and test.jsonl, after registering at summari.es/download",
    "samsum": "train.json, val.json and test.json from arxiv.org/src/1911.12237v2/anc/corpus.7z",
    "xsum": "xsum-extracts-from-downloads.tar.gz, made by the scripts of github.com/EdinburghNLP/XSum",
    "wmt16_csen": "czeng16pre.deduped-ignoring-sections.txt.gz (CzEng 1.6pre, by registration at ufal.mff.cuni.cz)",
}

FEWSHOT_K = 3
NUM_TRAIN = 30_000
NUM_VALIDATION = 200

Example = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class FlanDataset:
  """One FLAN dataset: where it lives in TFDS and how its records become canonical examples."""

  name: str
  cluster: str
  tfds_name: str  # name[/config]:version
  splits: Mapping[str, str]  # seqio split -> TFDS split or slice
  fields: tuple[str, ...]  # TFDS feature paths handed to `convert`
  convert: Callable[[dict[str, Any]], Example | None]
  family: str  # flan2021_templates.FAMILIES key
  train_examples: int = 0  # training examples after slicing (mixing rates); 0: evaluation only
  metric: str = "accuracy"  # "accuracy" (rank classification), "exact_match" or "rouge"
  fewshot_k: int = FEWSHOT_K
  exemplars_from: str | None = "train"  # the TFDS split few-shot exemplars come from; None: no few-shot

  @property
  def kind(self) -> str:
    return "classification" if self.metric == "accuracy" else "generation"

  @property
  def trainable(self) -> bool:
    return "train" in self.splits


# ----- Splits (FLAN's: at most 30,000 training and 200 validation examples) -----


def _held_back(test: str = "validation", held: int = NUM_VALIDATION, base: str = "train") -> dict[str, str]:
  """Train on `base` minus its last `held` examples, validate on those, test on `test`."""
  return {"train": f"{base}[:-{held}]", "validation": f"{base}[-{held}:]", "test": test}


def _head(test: str = "validation", base: str = "train") -> dict[str, str]:
  """Train on the first 30,000 examples of `base` (which holds more than 30,200), validate on its last 200."""
  return {"train": f"{base}[:{NUM_TRAIN}]", "validation": f"{base}[-{NUM_VALIDATION}:]", "test": test}


def _standard(test: str = "test") -> dict[str, str]:
  """Train on the first 30,000 training examples, validate on 200 validation examples."""
  return {"train": f"train[:{NUM_TRAIN}]", "validation": f"validation[:{NUM_VALIDATION}]", "test": test}


# ----- Feature mappings -----


def _labelled(index: Any, options: Sequence[str], **fields: Any) -> Example | None:
  """`fields` with `answer` = options[index] and the options as `answer_choices`; None when unlabelled."""
  if not isinstance(index, int) or not 0 <= index < len(options):
    return None
  return {**fields, "answer": options[index], "answer_choices": list(options)}


def _numbered(items: Sequence[str]) -> str:
  return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


def _unique(items: Sequence[str]) -> list[str]:
  return list(dict.fromkeys(items))


def _pair(first: str, second: str, options: Sequence[str]) -> Callable[[dict], Example | None]:
  """An NLI mapping: TFDS fields `first` and `second` become `premise` and `hypothesis`."""
  def convert(ex: dict) -> Example | None:
    return _labelled(ex["label"], options, premise=ex[first], hypothesis=ex[second])
  return convert


NLI3_ANLI = ("Yes", "It's impossible to say", "No")  # anli labels: entailment, neutral, contradiction
NLI3_CB = ("Yes", "No", "It's impossible to say")  # cb labels: entailment, contradiction, neutral
NLI3_GLUE = ("yes", "it is not possible to tell", "no")  # mnli/snli: entailment, neutral, contradiction
YES_NO = ("yes", "no")  # label 0 is entailment
NO_YES = ("no", "yes")  # label 1 is the positive class
SENTIMENT = ("negative", "positive")


def _qnli(ex: dict) -> Example | None:
  return _labelled(ex["label"], YES_NO, question=ex["question"], sentence=ex["sentence"])


def _bool_q(ex: dict) -> Example | None:
  return _labelled(int(ex["answer"]), NO_YES, title=ex["title"], passage=ex["passage"],
                   question=ex["question"])


def _multirc(ex: dict) -> Example | None:
  return _labelled(ex["label"], NO_YES, paragraph=ex["paragraph"], question=ex["question"], response=ex["answer"])


def _squad(ex: dict) -> Example | None:
  answers = ex["answers/text"]
  if ex.get("is_impossible"):
    answers = ["unanswerable"]
  if not answers:
    return None
  return {"context": ex["context"], "question": ex["question"], "answer": answers[0]}


def _drop(ex: dict) -> Example | None:
  return {"context": ex["passage"], "question": ex["question"], "answer": ex["answer"]}


def _openbookqa(ex: dict) -> Example | None:
  choices = [ex[f"question/choice_{c}"] for c in "ABCD"]
  return _labelled(ex["answerKey"], choices, fact=ex["fact1"], question=ex["question/stem"])


def _trivia_qa(ex: dict) -> Example | None:
  return {"question": ex["question"], "answer": ex["answer/value"]}


def _natural_questions(ex: dict) -> Example | None:
  if not ex["answer"]:
    return None
  return {"question": ex["question"] + "?", "answer": ex["answer"][0]}


def _arc(ex: dict) -> Example | None:
  labels, texts = ex["choices/label"], ex["choices/text"]
  index = labels.index(ex["answerKey"]) if ex["answerKey"] in labels else None
  return _labelled(index, texts, question=ex["question"])


def _copa(ex: dict) -> Example | None:
  if ex["question"] not in ("cause", "effect"):
    return None
  cause = ex["question"] == "cause"
  return _labelled(ex["label"], [ex["choice1"], ex["choice2"]], premise=ex["premise"], question=ex["question"],
                   question_text="What was the cause of this?" if cause else "What happened as a result?",
                   premise_connected=ex["premise"].rstrip(". ") + (" because" if cause else " so"))


def _hellaswag(ex: dict) -> Example | None:
  # The WikiHow contexts mark sections as "[header] ...", "[title] ...": the model should not learn them.
  context = re.sub(r"\[header\]\s", "", ex["context"])
  context = re.sub(r"\[.*?\]\s", "\n", context)
  endings = [re.sub(r"\[.*?\]\s", "", e) for e in ex["endings"]]
  return _labelled(ex["label"], endings, context=context)


def _story_cloze(ex: dict) -> Example | None:
  return _labelled(ex["label"] - 1, ex["endings"], context=ex["context"])  # labels are 1 and 2


def _piqa(ex: dict) -> Example | None:
  return _labelled(ex["label"], [ex["sol1"], ex["sol2"]], goal=ex["goal"])


def _winogrande(ex: dict) -> Example | None:
  if "_" not in ex["sentence"]:
    return None
  context, rest = ex["sentence"].split("_", 1)
  return _labelled(ex["label"], [ex["option1"] + rest, ex["option2"] + rest], context=context.strip())


def _wsc273(ex: dict) -> Example | None:
  text, start, end = ex["text"], ex["pronoun_start"], ex["pronoun_end"]
  suffix = text[end:].strip()
  options = [f"{ex['option1_normalized']} {suffix}".strip(), f"{ex['option2_normalized']} {suffix}".strip()]
  return _labelled(ex["label"], options, context=text[:start].strip())


def _dpr(ex: dict) -> Example | None:
  return _labelled(ex["label"], ex["candidates"], sentence=ex["sentence"], pronoun=ex["pronoun"])


def _wsc(ex: dict) -> Example | None:
  return _labelled(ex["label"], NO_YES, context=ex["text"], noun=ex["span1_text"], pronoun=ex["span2_text"])


def _sentiment(text_field: str, kind: str, clean: Callable[[str], str] = str.strip) -> Callable[[dict], Example | None]:
  def convert(ex: dict) -> Example | None:
    return _labelled(ex["label"], SENTIMENT, text=clean(ex[text_field]), kind=kind,
                     kind_title=kind[0].upper() + kind[1:])
  return convert


def _sentiment140(ex: dict) -> Example | None:
  # Polarity 0 is negative, 4 positive; the test set's neutral (2) tweets have no binary label.
  index = {0: 0, 4: 1}.get(ex["polarity"])
  return _labelled(index, SENTIMENT, text=ex["text"], kind="tweet", kind_title="Tweet")


def _paraphrase(first: str, second: str, unit: str) -> Callable[[dict], Example | None]:
  def convert(ex: dict) -> Example | None:
    relation = "means the same as" if ex["label"] == 1 else "does not mean the same as"
    return _labelled(ex["label"], NO_YES, sentence1=ex[first], sentence2=ex[second], unit=unit,
                     unit_title=unit.title(), relation=relation)
  return convert


def _stsb(ex: dict) -> Example | None:
  score = min(5, max(0, int(float(ex["label"]) + 0.5)))  # FLAN rounds the 0-5 similarity to an integer
  return _labelled(score, [str(i) for i in range(6)], sentence1=ex["sentence1"], sentence2=ex["sentence2"])


def _cola(ex: dict) -> Example | None:
  return _labelled(ex["label"], ("unacceptable", "acceptable"), sentence=ex["sentence"])


def _wic(ex: dict) -> Example | None:
  relation = "the same meaning as" if ex["label"] == 1 else "a different meaning than"
  return _labelled(ex["label"], ("different meanings", "the same meaning"), sentence1=ex["sentence1"],
                   sentence2=ex["sentence2"], word=ex["word"], relation=relation)


def _trec(ex: dict) -> Example | None:
  # TFDS's coarse labels: DESC, ENTY, ABBR, HUM, NUM, LOC.
  options = ("description", "entity", "abbreviation", "human", "numeric", "location")
  return _labelled(ex["label-coarse"], options, text=ex["text"])


def _ag_news(ex: dict) -> Example | None:
  return _labelled(ex["label"], ("World", "Sports", "Business", "Science/Tech"), title=ex["title"],
                   text=ex["description"])


def _common_gen(ex: dict) -> Example | None:
  return {"concepts": ", ".join(ex["concepts"]), "target": ex["target"]}


def _dart(ex: dict) -> Example | None:
  # Drops the table markers ("[TABLECONTEXT]", "[TITLE]") a model could not sensibly produce.
  data = re.sub(r"\[(.*?)\]", "", "; ".join(ex["tripleset"]))
  return {"data": " ".join(data.split()), "target": ex["target"]}


def _e2e(ex: dict) -> Example | None:
  data = ex["meaning_representation"].replace("[", " = ").replace("]", "")
  return {"data": data, "target": ex["target"]}


def _web_nlg(ex: dict) -> Example | None:
  data = "; ".join(ex["input"]).replace("_", " ").replace(" | ", ", ")
  return {"data": data, "target": ex["target"]}


def _translation(lang: str, language: str) -> Callable[[dict], Example | None]:
  def convert(ex: dict) -> Example | None:
    return {"lang1": "English", "lang2": language, "sent1": ex["en"], "sent2": ex[lang]}
  return convert


def _fix_punct(ex: dict) -> Example | None:
  no_punct = re.sub(r"[^\w\s]", "", ex["en"])
  return None if no_punct == ex["en"] else {"no_punct": no_punct, "answer": ex["en"]}


def _summary(text_field: str, summary_field: str, clean: Callable[[str], str] = str.strip
             ) -> Callable[[dict], Example | None]:
  def convert(ex: dict) -> Example | None:
    return {"text": clean(ex[text_field]), "summary": ex[summary_field].strip()}
  return convert


def _strip_dateline(article: str) -> str:
  """Drops a CNN/Daily Mail byline prefix ("LONDON, England (CNN) -- ", "PUBLISHED: ... 2013 . ")."""
  head = article[:300]
  cut = max((head.rfind(sep) + len(sep) for sep in (") -- ", "2012 . ", "2013 . ", "2014 . ") if sep in head),
            default=0)
  return article[cut:].strip()


def _gigaword(ex: dict) -> Example | None:
  # FLAN drops the pairs with <UNK> tokens or "#" digit masks: their targets cannot be learned.
  if any(mark in ex["document"] + ex["summary"] for mark in ("UNK", "#")):
    return None
  return {"text": ex["document"], "summary": ex["summary"]}


def _samsum(ex: dict) -> Example | None:
  dialogue = re.sub(r"<[^>]*>", " ", ex["dialogue"].replace("\r\n", "\n"))  # drops <file_photo> markers
  return {"dialogue": dialogue, "summary": ex["summary"]}


def _aeslc(ex: dict) -> Example | None:
  return {"body": ex["email_body"].replace("\n", " "), "subject": ex["subject_line"].replace("\n", "")}


def _rotten_tomatoes(ex: dict) -> Example | None:
  reviews = ex["_critics/value"][:10]
  if not reviews:
    return None
  return {"consensus": ex["_critic_consensus"], "movie": ex["_movie_name"].replace("_", " ").title(),
          "numbered_reviews": _numbered(reviews), "first_review": reviews[0]}


def _idebate(ex: dict) -> Example | None:
  arguments = ex["_argument_sentences/value"][:10]
  if not arguments:
    return None
  return {"claim": ex["_claim"], "debate": ex["_debate_name"], "numbered_arguments": _numbered(arguments)}


def _record(ex: dict) -> Example | None:
  if "@placeholder" not in ex["query"] or not ex["answers"]:
    return None
  left, right = ex["query"].split("@placeholder", 1)
  answer = ex["answers"][0] + right
  options = _unique([e + right for e in ex["entities"]] + [answer])
  passage = ex["passage"].split("\n@highlight")[0]
  return _labelled(options.index(answer), options, passage=passage, query=left.strip(),
                   full_sentence=left + answer)


def _cosmos_qa(ex: dict) -> Example | None:
  return _labelled(ex["label"], [ex[f"answer{i}"] for i in range(4)], context=ex["context"], question=ex["question"])


def _coqa(ex: dict) -> Example | None:
  questions, answers = ex["questions"], ex["answers/input_text"]
  n = min(len(questions), len(answers))
  if not n:
    return None
  return {"text": ex["story"], "numbered_questions": _numbered(questions[:n]),
          "numbered_answers": _numbered(answers[:n])}


def _quac(ex: dict) -> Example | None:
  return {"title": ex["title"], "background": ex["background"], "context": ex["context"],
          "question": ex["question"], "answer": ex["orig_answer/text"]}


def _math(ex: dict) -> Example | None:
  return {"question": ex["question"], "answer": ex["answer"]}


# ----- The datasets, by FLAN cluster -----

_NLI = ("premise", "hypothesis", "label")
_WMT16 = {"cs": "Czech", "de": "German", "fi": "Finnish", "ro": "Romanian", "ru": "Russian", "tr": "Turkish"}
_PARA_CRAWL = {"de": "German", "es": "Spanish", "fr": "French"}
_D = FlanDataset

DATASETS: tuple[FlanDataset, ...] = (
    # Natural language inference.
    *(_D(f"anli_{r}", "nli", f"anli/{r}:0.1.0",
         {**_standard(), "train": "train" if r == "r1" else f"train[:{NUM_TRAIN}]"},
         ("context", "hypothesis", "label"), _pair("context", "hypothesis", NLI3_ANLI), "nli",
         16_946 if r == "r1" else NUM_TRAIN) for r in ("r1", "r2", "r3")),
    _D("cb", "nli", "super_glue/cb:1.0.2", _held_back(held=50), _NLI, _pair("premise", "hypothesis", NLI3_CB),
       "nli", 200),
    _D("rte", "nli", "super_glue/rte:1.0.2", _held_back(), _NLI, _pair("premise", "hypothesis", YES_NO), "nli",
       2_290),
    _D("mnli_matched", "nli", "glue/mnli:2.0.0", _head("validation_matched"), _NLI,
       _pair("premise", "hypothesis", NLI3_GLUE), "nli", NUM_TRAIN),
    # Shares MNLI's training data, so it is evaluated but not trained on twice.
    _D("mnli_mismatched", "nli", "glue/mnli:2.0.0", {"test": "validation_mismatched"}, _NLI,
       _pair("premise", "hypothesis", NLI3_GLUE), "nli"),
    _D("qnli", "nli", "glue/qnli:2.0.0", _head(), ("question", "sentence", "label"), _qnli, "qnli", NUM_TRAIN),
    _D("snli", "nli", "snli:1.1.0", _standard(), _NLI, _pair("premise", "hypothesis", NLI3_GLUE), "nli",
       NUM_TRAIN),
    _D("wnli", "nli", "glue/wnli:2.0.0", _held_back(held=30), ("sentence1", "sentence2", "label"),
       _pair("sentence1", "sentence2", NO_YES), "nli", 605),
    # Reading comprehension.
    _D("bool_q", "reading_comprehension", "bool_q:1.0.0", _held_back(), ("title", "passage", "question", "answer"),
       _bool_q, "boolq", 9_227, fewshot_k=1),
    _D("drop", "reading_comprehension", "drop:2.0.0", _head("dev"), ("passage", "question", "answer"), _drop,
       "extractive_qa", NUM_TRAIN, "exact_match", fewshot_k=1),
    _D("multirc", "reading_comprehension", "super_glue/multirc:1.0.2", _held_back(),
       ("paragraph", "question", "answer", "label"), _multirc, "multirc", 27_043, fewshot_k=1),
    _D("openbookqa", "reading_comprehension", "openbookqa:0.1.0", _standard(),
       ("fact1", "question/stem", "question/choice_A", "question/choice_B", "question/choice_C",
        "question/choice_D", "answerKey"), _openbookqa, "openbookqa", 4_957),
    _D("squad_v1", "reading_comprehension", "squad/v1.1:3.0.0", _head(), ("context", "question", "answers/text"),
       _squad, "extractive_qa", NUM_TRAIN, "exact_match", fewshot_k=1),
    _D("squad_v2", "reading_comprehension", "squad/v2.0:3.0.0", _head(),
       ("context", "question", "answers/text", "is_impossible"), _squad, "extractive_qa_unanswerable", NUM_TRAIN,
       "exact_match", fewshot_k=1),
    # Closed-book QA.
    _D("arc_challenge", "closed_book_qa", "ai2_arc/ARC-Challenge:1.0.0", _held_back("test"),
       ("question", "choices/text", "choices/label", "answerKey"), _arc, "multiple_choice_qa", 919),
    _D("arc_easy", "closed_book_qa", "ai2_arc/ARC-Easy:1.0.0", _held_back("test"),
       ("question", "choices/text", "choices/label", "answerKey"), _arc, "multiple_choice_qa", 2_051),
    _D("natural_questions", "closed_book_qa", "natural_questions_open:1.0.0", _head(), ("question", "answer"),
       _natural_questions, "closed_book_qa", NUM_TRAIN, "exact_match"),
    # The no-context config holds the same questions without megabytes of evidence documents.
    _D("trivia_qa", "closed_book_qa", "trivia_qa/rc.nocontext:1.1.0", _head(), ("question", "answer/value"),
       _trivia_qa, "closed_book_qa", NUM_TRAIN, "exact_match"),
    # Commonsense.
    _D("copa", "commonsense", "super_glue/copa:1.0.2", _held_back(held=50),
       ("premise", "question", "choice1", "choice2", "label"), _copa, "copa", 350),
    _D("hellaswag", "commonsense", "hellaswag:1.1.0", _head(), ("context", "endings", "label"), _hellaswag,
       "sentence_completion", NUM_TRAIN),
    _D("piqa", "commonsense", "piqa:1.0.0", _held_back(held=100), ("goal", "sol1", "sol2", "label"), _piqa,
       "piqa", 16_013),
    # Story Cloze has no training split: FLAN trains on most of its validation set.
    _D("story_cloze", "commonsense", "story_cloze/2016:1.0.0", _held_back("test", base="validation"),
       ("context", "endings", "label"), _story_cloze, "sentence_completion", 1_671, exemplars_from="validation"),
    # Coreference.
    _D("definite_pronoun_resolution", "coreference", "definite_pronoun_resolution:1.1.0", _held_back("test"),
       ("sentence", "pronoun", "candidates", "label"), _dpr, "pronoun_resolution", 1_122),
    _D("winogrande", "coreference", "winogrande:1.2.0", _head(base="train_xl"),
       ("sentence", "option1", "option2", "label"), _winogrande, "coref_completion", NUM_TRAIN,
       exemplars_from="train_xl"),
    _D("wsc", "coreference", "super_glue/wsc.fixed:1.0.2", _held_back(held=50),
       ("text", "span1_text", "span2_text", "label"), _wsc, "wsc", 504),
    # WSC273 is a test set only.
    _D("wsc273", "coreference", "wsc273:1.0.0", {"test": "test"},
       ("text", "pronoun_start", "pronoun_end", "option1_normalized", "option2_normalized", "label"), _wsc273,
       "coref_completion", exemplars_from=None),
    # Sentiment.
    _D("imdb_reviews", "sentiment", "imdb_reviews/plain_text:1.0.0", _held_back("test"), ("text", "label"),
       _sentiment("text", "movie review", lambda t: t.replace("<br />", "\n").strip()), "sentiment", 24_800,
       fewshot_k=1),
    _D("sentiment140", "sentiment", "sentiment140:1.0.0", _head("test"), ("text", "polarity"), _sentiment140,
       "sentiment", NUM_TRAIN),
    _D("sst2", "sentiment", "glue/sst2:2.0.0", _head(), ("sentence", "label"), _sentiment("sentence", "movie review"),
       "sentiment", NUM_TRAIN),
    _D("yelp_polarity_reviews", "sentiment", "yelp_polarity_reviews:0.2.0", _head("test"), ("text", "label"),
       _sentiment("text", "Yelp review", lambda t: t.replace("\\n", " ").replace('\\""', '"').strip()),
       "sentiment", NUM_TRAIN, fewshot_k=1),
    # Paraphrase.
    _D("glue_mrpc", "paraphrase", "glue/mrpc:2.0.0", _held_back(), ("sentence1", "sentence2", "label"),
       _paraphrase("sentence1", "sentence2", "sentence"), "paraphrase", 3_468),
    _D("glue_qqp", "paraphrase", "glue/qqp:2.0.0", _head(), ("question1", "question2", "label"),
       _paraphrase("question1", "question2", "question"), "paraphrase", NUM_TRAIN),
    _D("paws_wiki", "paraphrase", "paws_wiki/labeled_final_raw:1.1.0", _standard(),
       ("sentence1", "sentence2", "label"), _paraphrase("sentence1", "sentence2", "sentence"), "paraphrase",
       NUM_TRAIN),
    _D("stsb", "paraphrase", "glue/stsb:2.0.0", _held_back(held=100), ("sentence1", "sentence2", "label"), _stsb,
       "stsb", 5_649),
    # Struct to text.
    _D("common_gen", "struct_to_text", "gem/common_gen:1.1.0", _head(), ("concepts", "target"), _common_gen,
       "common_gen", NUM_TRAIN, "rouge"),
    _D("dart", "struct_to_text", "gem/dart:1.1.0", _head(), ("tripleset", "target"), _dart, "data_to_text",
       NUM_TRAIN, "rouge"),
    _D("e2e_nlg", "struct_to_text", "gem/e2e_nlg:1.1.0", _head(), ("meaning_representation", "target"), _e2e,
       "data_to_text", NUM_TRAIN, "rouge"),
    _D("web_nlg_en", "struct_to_text", "gem/web_nlg_en:1.1.0", _head(), ("input", "target"), _web_nlg,
       "data_to_text", NUM_TRAIN, "rouge"),
    # Translation (scored by exact match: no BLEU in sft_jax.evaluation.metrics).
    _D("wmt14_enfr", "translation", "wmt14_translate/fr-en:1.0.0", _standard(), ("en", "fr"),
       _translation("fr", "French"), "translation", NUM_TRAIN, "exact_match"),
    *(_D(f"wmt16_{lang}en", "translation", f"wmt16_translate/{lang}-en:1.0.0", _standard(), ("en", lang),
         _translation(lang, language), "translation", NUM_TRAIN, "exact_match")
      for lang, language in _WMT16.items()),
    # ParaCrawl has only a train split: FLAN takes validation and test from its end.
    *(_D(f"para_crawl_en{lang}", "translation", f"para_crawl/en{lang}:1.2.0",
         {"train": f"train[:{NUM_TRAIN}]", "validation": "train[-1200:-1000]", "test": "train[-1000:]"},
         ("en", lang), _translation(lang, language), "translation", NUM_TRAIN, "exact_match")
      for lang, language in _PARA_CRAWL.items()),
    # Summarization (ROUGE-L). Long documents get a single few-shot exemplar.
    _D("aeslc", "summarization", "aeslc:1.0.0", {**_standard(), "train": "train"}, ("email_body", "subject_line"),
       _aeslc, "email_subject", 14_436, "rouge", fewshot_k=1),
    _D("ag_news_subset", "summarization", "ag_news_subset:1.0.0", _head("test"), ("title", "description", "label"),
       _ag_news, "topic_classification", NUM_TRAIN),
    _D("cnn_dailymail", "summarization", "cnn_dailymail:3.4.0", _standard(), ("article", "highlights"),
       _summary("article", "highlights", _strip_dateline), "news_summary", NUM_TRAIN, "rouge", fewshot_k=1),
    _D("gigaword", "summarization", "gigaword:1.2.0", _standard(), ("document", "summary"), _gigaword, "headline",
       NUM_TRAIN, "rouge"),
    _D("multi_news", "summarization", "multi_news:2.1.0", _standard(), ("document", "summary"),
       _summary("document", "summary", lambda t: t.replace(" ||||| ", "\n\n").strip()), "news_summary", NUM_TRAIN,
       "rouge", fewshot_k=1),
    _D("newsroom", "summarization", "newsroom:1.0.0", _standard(), ("text", "summary"), _summary("text", "summary"),
       "news_summary", NUM_TRAIN, "rouge", fewshot_k=1),
    _D("opinion_abstracts_idebate", "summarization", "opinion_abstracts/idebate:1.0.0",
       {"train": "train[:-600]", "validation": "train[-600:-500]", "test": "train[-500:]"},
       ("_claim", "_debate_name", "_argument_sentences/value"), _idebate, "argument_claim", 1_659, "rouge",
       fewshot_k=1),
    _D("opinion_abstracts_rotten_tomatoes", "summarization", "opinion_abstracts/rotten_tomatoes:1.0.0",
       {"train": "train[:-600]", "validation": "train[-600:-500]", "test": "train[-500:]"},
       ("_critic_consensus", "_movie_name", "_critics/value"), _rotten_tomatoes, "movie_consensus", 3_131, "rouge",
       fewshot_k=1),
    _D("samsum", "summarization", "samsum:1.0.0", {**_standard(), "train": "train"}, ("dialogue", "summary"),
       _samsum, "dialogue_summary", 14_732, "rouge", fewshot_k=1),
    _D("wiki_lingua_english_en", "summarization", "gem/wiki_lingua_english_en:1.1.0", _standard(),
       ("source", "target"), _summary("source", "target"), "news_summary", NUM_TRAIN, "rouge", fewshot_k=1),
    _D("xsum", "summarization", "xsum:1.1.0", _standard(), ("document", "summary"), _summary("document", "summary"),
       "news_summary", NUM_TRAIN, "rouge", fewshot_k=1),
    # Reading comprehension with commonsense.
    _D("cosmos_qa", "reading_comprehension_with_commonsense", "cosmos_qa:1.0.0", _held_back(),
       ("context", "question", "answer0", "answer1", "answer2", "answer3", "label"), _cosmos_qa, "cosmos_qa",
       25_062),
    _D("record", "reading_comprehension_with_commonsense", "super_glue/record:1.0.2", _head(),
       ("passage", "query", "entities", "answers"), _record, "record", NUM_TRAIN, fewshot_k=1),
    # Miscellaneous.
    _D("coqa", "misc", "coqa:1.0.0", _held_back("test", held=100), ("story", "questions", "answers/input_text"),
       _coqa, "coqa", 7_099, "rouge", fewshot_k=1),
    _D("quac", "misc", "quac:1.0.0", _head(),
       ("title", "background", "context", "question", "orig_answer/text"), _quac, "quac", NUM_TRAIN, "exact_match",
       fewshot_k=1),
    _D("trec", "misc", "trec:1.0.0", _held_back("test"), ("text", "label-coarse"), _trec, "trec", 5_252),
    _D("cola", "misc", "glue/cola:2.0.0", _held_back(), ("sentence", "label"), _cola, "cola", 8_351),
    _D("wic", "misc", "super_glue/wic:1.0.2", _held_back(), ("sentence1", "sentence2", "word", "label"), _wic,
       "wic", 5_228),
    _D("math_dataset", "misc", "math_dataset/algebra__linear_1d:1.0.0", _head("test"), ("question", "answer"),
       _math, "math", NUM_TRAIN, "exact_match"),
    # Built from ParaCrawl's English side, after the rows the translation tasks use (as FLAN did).
    _D("fix_punct", "misc", "para_crawl/enda:1.2.0",
       {"train": "train[30200:60200]", "validation": "train[60200:60400]", "test": "train[-3000:]"}, ("en",),
       _fix_punct, "fix_punct", NUM_TRAIN, "rouge"),
)
