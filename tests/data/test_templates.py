"""Templates: hand-written expected strings for every template kind."""

from __future__ import annotations

import textwrap

import jinja2
import pytest

from sft_jax.data import promptsource
from sft_jax.data import templates as tp

# ---------------------------------------------------------------------------------------------
# Template, options and no-options.
# ---------------------------------------------------------------------------------------------

CLS = {"input": "2 + 2 = 5", "target": "no", "answer_choices": ["yes", "no"]}


def test_render_is_unchanged():
  template = tp.Template("t", "{definition}\n{input}\n{options}")
  assert template.render(CLS, definition="Check.") == "Check.\n2 + 2 = 5\nOPTIONS:\n- yes\n- no"
  with pytest.raises(ValueError, match="needs answer_choices"):
    template.render({"input": "x"})


def test_apply_reads_raw_and_canonical_fields():
  template = tp.Template("t", "Q: {input}\n{options}")
  expected = ("Q: 2 + 2 = 5\nOPTIONS:\n- yes\n- no", "no")
  assert template.apply(CLS) == expected
  canonical = {"inputs": "2 + 2 = 5", "targets": "no", "answer_choices": ("yes", "no")}
  assert template.apply(canonical) == expected
  assert template.answer_choices(canonical) == ["yes", "no"]
  assert tp.Template("g", "{input}").answer_choices({"input": "a", "target": "b"}) is None
  assert tp.Template("d", "{definition} {input}").apply(
      {"input": "a", "target": "b", "definition": "Do it."}) == ("Do it. a", "b")
  with pytest.raises(KeyError, match=r"template 'g': example has no field 'target' \(or 'targets'\)"):
    tp.Template("g", "{input}").apply({"input": "a"})


def test_options_variants():
  template = tp.Template("rte", "{input}\n\nIs it true?\n\n{options}")
  bare = template.without_options()
  assert bare == tp.Template("rte_no_options", "{input}\n\nIs it true?")
  assert bare.apply(CLS) == ("2 + 2 = 5\n\nIs it true?", "no")
  # The no-options form needs no choices but still reports them for rank classification.
  assert bare.apply({"input": "x", "target": "y"}) == ("x\n\nIs it true?", "y")
  assert bare.answer_choices(CLS) == ["yes", "no"]
  assert bare.without_options() is bare and template.with_options() is template
  assert bare.with_options().apply(CLS) == ("2 + 2 = 5\n\nIs it true?\n\nOPTIONS:\n- yes\n- no", "no")

  middle = tp.Template("m", "{input}\n{options}\nAnswer:").without_options()
  assert middle.pattern == "{input}\nAnswer:"
  first = tp.Template("f", "{options}\n\n{input}").without_options()
  assert first.pattern == "{input}"


# ---------------------------------------------------------------------------------------------
# Few-shot.
# ---------------------------------------------------------------------------------------------

BASE = tp.Template("q", "Q: {input}")
POOL = [{"input": f"q{i}", "target": f"a{i}"} for i in range(10)]


def test_few_shot_exact_string():
  pool = POOL[:3]
  few = tp.FewShotTemplate(BASE, pool, k=2, seed=0)
  inputs, targets = few.apply({"input": "new", "target": "ans"})
  shots = inputs.split("\n\n")
  assert len(shots) == 3 and shots[-1] == "Q: new" and targets == "ans"
  rendered = {f"Q: q{i} a{i}" for i in range(3)}
  assert set(shots[:2]) <= rendered and shots[0] != shots[1]
  # Pinned: the draw hashes with sha256, so it is the same on every run and machine.
  assert inputs == "Q: q1 a1\n\nQ: q0 a0\n\nQ: new"
  # The exact prompt for one pinned draw, with a custom joiner and separator.
  one = tp.FewShotTemplate(BASE, pool[:1], k=1, exemplar_separator="\n###\n", joiner="\nA: ")
  assert one.apply({"input": "new", "target": "ans"}) == ("Q: q0\nA: a0\n###\nQ: new", "ans")
  assert few.name == "q_2shot"


def test_few_shot_is_deterministic_and_varies():
  few = tp.FewShotTemplate(BASE, POOL, k=3, seed=7)
  example = {"input": "new", "target": "ans"}
  assert few.apply(example) == few.apply(dict(example))
  assert tp.FewShotTemplate(BASE, list(POOL), k=3, seed=7).apply(example) == few.apply(example)
  prompts = {few.apply({"input": f"x{i}", "target": "t"})[0].rsplit("\n\n", 1)[0] for i in range(20)}
  assert len(prompts) > 10  # different examples get different exemplars
  seeds = {tp.FewShotTemplate(BASE, POOL, k=3, seed=s).apply(example)[0] for s in range(10)}
  assert len(seeds) > 5


def test_few_shot_never_shows_the_example_itself():
  few = tp.FewShotTemplate(BASE, POOL[:4], k=3)
  for example in POOL[:4]:
    inputs, _ = few.apply(example)
    shots = inputs.split("\n\n")[:-1]
    assert len(shots) == 3
    assert f"Q: {example['input']} {example['target']}" not in shots


def test_few_shot_zero_and_errors():
  example = {"input": "new", "target": "ans"}
  assert tp.FewShotTemplate(BASE, POOL, k=0).apply(example) == BASE.apply(example)
  with pytest.raises(ValueError, match="pool has 2"):
    tp.FewShotTemplate(BASE, POOL[:2], k=3)
  with pytest.raises(ValueError, match="other than the example itself, pool has 1"):
    tp.FewShotTemplate(BASE, POOL[:2], k=2).apply(POOL[0])
  with pytest.raises(ValueError, match="exemplar 1 does not render"):
    tp.FewShotTemplate(BASE, [POOL[0], {"input": "no target"}], k=1)


def test_few_shot_keeps_answer_choices():
  pool = [CLS, {**CLS, "input": "1 + 1 = 2"}]
  few = tp.FewShotTemplate(tp.Template("c", "{input} {options}"), pool, k=1)
  assert few.answer_choices(CLS) == ["yes", "no"]
  assert few.apply(CLS)[0] == ("1 + 1 = 2 OPTIONS:\n- yes\n- no no\n\n"
                               "2 + 2 = 5 OPTIONS:\n- yes\n- no")


# ---------------------------------------------------------------------------------------------
# Chain of thought and inversion.
# ---------------------------------------------------------------------------------------------


def test_chain_of_thought():
  cot = tp.ChainOfThoughtTemplate(tp.Template("sum", "What is {input}?"))
  example = {"input": "2 + 3", "target": "5", "rationale": " 2 plus 3 makes 5. "}
  assert cot.apply(example) == ("What is 2 + 3?", "2 plus 3 makes 5. So the answer is 5.")
  assert cot.name == "sum_cot" and cot.answer_choices(CLS) is None
  custom = tp.ChainOfThoughtTemplate(BASE, "Reasoning: {rationale}\nAnswer: {target}", "why")
  assert custom.apply({"input": "x", "target": "y", "why": "z"}) == ("Q: x", "Reasoning: z\nAnswer: y")
  with pytest.raises(KeyError, match=r"template 'sum_cot' needs a non-empty 'rationale' field"):
    cot.apply({"input": "2 + 3", "target": "5"})
  with pytest.raises(ValueError, match="exactly"):
    tp.ChainOfThoughtTemplate(BASE, "{target}")


def test_inverted():
  inverted = tp.InvertedTemplate("inv", "Write a question whose answer is: {target}")
  assert inverted.apply({"input": "Capital of France?", "target": "Paris"}) == (
      "Write a question whose answer is: Paris", "Capital of France?")
  assert inverted.apply({"inputs": "Capital of France?", "targets": "Paris"}) == (
      "Write a question whose answer is: Paris", "Capital of France?")
  assert inverted.answer_choices(CLS) is None
  context = tp.InvertedTemplate("ctx", "Topic: {topic}. Answer: {target}", target_field="question")
  assert context.apply({"topic": "maps", "target": "Paris", "question": "Where?"}) == (
      "Topic: maps. Answer: Paris", "Where?")
  with pytest.raises(KeyError, match="template 'ctx': example has no field 'topic'"):
    context.apply({"target": "Paris", "question": "Where?"})
  with pytest.raises(ValueError, match="new target field"):
    tp.InvertedTemplate("leak", "{target} {inputs}")


def test_every_template_has_the_common_interface():
  kinds = [BASE, tp.FewShotTemplate(BASE, POOL, k=1), tp.ChainOfThoughtTemplate(BASE),
           tp.InvertedTemplate("i", "{target}"), tp.SuperNITemplate(),
           promptsource.PromptsourceTemplate("p", "{{a}} ||| {{b}}")]
  assert all(isinstance(kind, tp.ExampleTemplate) for kind in kinds)


# ---------------------------------------------------------------------------------------------
# Super-NaturalInstructions.
# ---------------------------------------------------------------------------------------------

SUPERNI = {
    "task_name": "task999_animals",
    "definition": ["  Given a sentence, answer whether it mentions an animal "],
    "positive_examples": [
        {"input": "The cat sat on the mat", "output": "yes", "explanation": "A cat is an animal"},
        {"input": "Is the sky blue?", "output": "no", "explanation": "The sky is not an animal."},
        {"input": "A third one", "output": "no", "explanation": "never shown"},
    ],
    "negative_examples": [
        {"input": "A dog barked.", "output": "no", "explanation": "Dogs are animals, so: yes"},
        {"input": "unused", "output": "unused", "explanation": "unused"},
    ],
    "inputs": " The horse ran ",
    "targets": "yes",
}


def test_superni_exact_encoding():
  template = tp.SuperNITemplate(num_positive=2, num_negative=1, add_explanation=True)
  expected = (
      "Definition: Given a sentence, answer whether it mentions an animal.\n"
      "\n"
      " Positive Example 1 -\n"
      "Input: The cat sat on the mat.\n"
      " Output: yes.\n"
      " Explanation: A cat is an animal.\n"
      "\n"
      " Positive Example 2 -\n"
      "Input: Is the sky blue?\n"
      " Output: no.\n"
      " Explanation: The sky is not an animal.\n"
      "\n"
      " Negative Example 1 -\n"
      "Input: A dog barked.\n"
      " Output: no.\n"
      " Explanation: Dogs are animals, so: yes.\n"
      "\n"
      "Now complete the following example -\n"
      "Input: The horse ran.\n"
      "Output: ")
  assert template.apply(SUPERNI) == (expected, "yes")


def test_superni_variants():
  definition_only = tp.SuperNITemplate(num_positive=0)
  assert definition_only.apply(SUPERNI)[0] == (
      "Definition: Given a sentence, answer whether it mentions an animal.\n\n"
      "Now complete the following example -\nInput: The horse ran.\nOutput: ")
  default = tp.SuperNITemplate()  # 2 positives, no explanations, no negatives
  assert default.apply(SUPERNI)[0] == (
      "Definition: Given a sentence, answer whether it mentions an animal.\n\n"
      " Positive Example 1 -\nInput: The cat sat on the mat.\n Output: yes.\n\n"
      " Positive Example 2 -\nInput: Is the sky blue?\n Output: no.\n\n"
      "Now complete the following example -\nInput: The horse ran.\nOutput: ")
  named = tp.SuperNITemplate(num_positive=0, add_definition=False, add_task_name=True)
  assert named.apply({**SUPERNI, "inputs": "Why?"})[0] == (
      "task999_animals. Now complete the following example -\nInput: Why?\nOutput: ")
  references = {**SUPERNI, "targets": ["yes", "yeah", "yep"]}
  assert default.apply(references) == default.apply(references)
  assert default.apply(references)[1] in {"yes", "yeah", "yep"}
  assert default.name == "superni_def_pos2_neg0"
  with pytest.raises(KeyError, match="'definition'"):
    default.apply({"inputs": "x", "targets": "y", "positive_examples": []})


# ---------------------------------------------------------------------------------------------
# promptsource YAML.
# ---------------------------------------------------------------------------------------------

# The published format: ids as keys, `!Template` / `!TemplateMetadata` tags, folded Jinja.
RTE_YAML = textwrap.dedent("""\
    dataset: super_glue
    subset: rte
    templates:
      2b52a83c-0021-41fe-b44c-5aaa076d71a2: !Template
        answer_choices: Yes ||| No
        id: 2b52a83c-0021-41fe-b44c-5aaa076d71a2
        jinja: '{{premise}} Question: Does this imply that "{{hypothesis}}"? {{"yes or
          no"}} ||| {{answer_choices[label]}}'
        metadata: !TemplateMetadata
          choices_in_prompt: true
          languages:
          - en
          metrics:
          - Accuracy
          original_task: true
        name: does this imply
        reference: Sanh et al. 2021
      8fb1c6aa-20e9-438c-bece-c6af1c746449: !Template
        answer_choices: null
        id: 8fb1c6aa-20e9-438c-bece-c6af1c746449
        jinja: "{% if label == 0 %}\\nWrite a sentence that follows from: {{premise | trim}}\\n\\
          |||\\n{{hypothesis}}\\n{% endif %}"
        metadata: !TemplateMetadata
          choices_in_prompt: false
          languages:
          - en
          metrics:
          - ROUGE
          original_task: false
        name: generate entailed
        reference: ''
      c7f4e0a3-0000-4000-8000-000000000001: !Template
        answer_choices: '{{ options | join(" ||| ") }}'
        id: c7f4e0a3-0000-4000-8000-000000000001
        jinja: 'Pick one of {% for o in answer_choices %}[{{ o }}]{% endfor %} for
          {{ premise }} ||| {{ answer_choices[label] }} {{ options | choice }}'
        metadata: !TemplateMetadata
          choices_in_prompt: true
          languages:
          - en
          metrics:
          - Accuracy
          original_task: false
        name: "pick\\u2026 "
        reference: ''
    """)

RTE = {"premise": "A cat sat on the mat.", "hypothesis": "An animal sat.", "label": 0, "idx": 3,
       "options": ["first", "second"]}


def _write(tmp_path, text: str):
  path = tmp_path / "templates.yaml"
  path.write_text(text, encoding="utf-8")
  return path


def test_promptsource_load_and_apply(tmp_path):
  loaded = promptsource.load_promptsource_templates(_write(tmp_path, RTE_YAML))
  assert sorted(loaded) == ["does this imply", "generate entailed", "pick\u2026 "]

  imply = loaded["does this imply"]
  assert imply.id == "2b52a83c-0021-41fe-b44c-5aaa076d71a2" and imply.dataset == "super_glue"
  assert imply.subset == "rte" and imply.reference == "Sanh et al. 2021"
  assert imply.metadata == promptsource.TemplateMetadata(
      original_task=True, choices_in_prompt=True, metrics=("Accuracy",), languages=("en",))
  assert imply.apply(RTE) == (
      'A cat sat on the mat. Question: Does this imply that "An animal sat."? yes or no', "Yes")
  assert imply.apply({**RTE, "label": 1})[1] == "No"
  assert imply.answer_choices(RTE) == ["Yes", "No"]

  generate = loaded["generate entailed"]
  assert generate.answer_choices(RTE) is None
  padded = {**RTE, "premise": "  A cat sat on the mat.\n"}
  assert generate.apply(padded) == ("Write a sentence that follows from: A cat sat on the mat.",
                                    "An animal sat.")

  pick = loaded["pick\u2026 "]
  assert pick.answer_choices(RTE) == ["first", "second"]
  inputs, targets = pick.apply(RTE)
  assert inputs == "Pick one of [first][second] for A cat sat on the mat."
  assert targets in {"first first", "first second"}
  assert all(pick.apply(RTE) == (inputs, targets) for _ in range(5))  # `choice` is seeded


def test_promptsource_skips_examples_without_target(tmp_path):
  generate = promptsource.load_promptsource_templates(_write(tmp_path, RTE_YAML))["generate entailed"]
  not_entailed = {**RTE, "label": 1}
  assert generate.applies_to(RTE) and not generate.applies_to(not_entailed)
  assert generate.try_apply(not_entailed) is None
  with pytest.raises(promptsource.TemplateNotApplicableError,
                     match=r"'generate entailed' \(super_glue/rte, id 8fb1c6aa"):
    generate.apply(not_entailed)


def test_promptsource_rendering_rules():
  template = promptsource.PromptsourceTemplate("t", "{{ first_name }}: {{ text }} ||| {{ missing }}x")
  # `|||` in a value does not split; hyphenated fields are renamed; undefined renders empty.
  assert template.apply({"first-name": "Ann", "text": "a ||| b"}) == ("Ann: a ||| b", "x")
  with pytest.raises(ValueError, match="reserved field 'answer_choices'"):
    template.apply({"first-name": "Ann", "text": "a", "answer_choices": ["x"]})
  short = promptsource.PromptsourceTemplate("s", "{{ text }} ||| y", max_var_chars=10)
  assert short.apply({"text": "one two three four"}) == ("one...", "y")
  assert short.apply({"text": "one two three"}) == ("one two three", "y")  # within Jinja's leeway
  unlimited = promptsource.PromptsourceTemplate("u", "{{ text }} ||| y", max_var_chars=None)
  assert unlimited.apply({"text": "w " * 2000})[0] == ("w " * 2000).strip()
  unsafe = promptsource.PromptsourceTemplate("x", "{{ text.__class__.__mro__ }} ||| y")
  with pytest.raises(jinja2.exceptions.SecurityError):
    unsafe.apply({"text": "a"})


def test_promptsource_older_list_choices_and_extra_metadata(tmp_path):
  old = textwrap.dedent("""\
      dataset: super_glue
      subset: rte
      templates:
        0583671e-b717-4353-a0d4-ea1e4ac56429: !Template
          answer_choices:
          - 'Yes'
          - 'No'
          id: 0583671e-b717-4353-a0d4-ea1e4ac56429
          jinja: Given that {{premise}} Does it follow that "{{hypothesis}}"? ||| {{ answer_choices[label]
            }}
          metadata: !TemplateMetadata
            _do_eval: true
            choices_in_prompt: false
            metric: null
          name: given
          reference: ''
      """)
  given = promptsource.load_promptsource_templates(_write(tmp_path, old))["given"]
  assert given.answer_choices(RTE) == ["Yes", "No"]
  assert given.metadata.extra == {"_do_eval": True, "metric": None}
  assert given.apply(RTE)[1] == "Yes"


@pytest.mark.parametrize("text, message", [
    ("templates: [unclosed", r"templates.yaml: malformed promptsource YAML"),
    ("dataset: x\n", r"templates.yaml: expected a mapping"),
    ("templates:\n  abc: !Template\n    name: n\n    id: abc\n",
     r"templates.yaml: template abc \('n'\): missing 'jinja'"),
    ("templates:\n  abc: !Template\n    jinja: '{{ a }} ||| b'\n", r"template abc: missing 'name'"),
    ("templates:\n  abc: !Template\n    name: n\n    jinja: '{% if %}'\n",
     r"templates.yaml: template 'n' \(id abc\): Jinja syntax error on line 1"),
    ("templates:\n  a: !Template {name: n, jinja: x}\n  b: !Template {name: n, jinja: y}\n",
     r"templates a and b share the name 'n'"),
    ("templates:\n  a: !!python/object/apply:os.system ['true']\n", r"malformed promptsource YAML"),
    ("templates:\n  a: !TemplateMetadata {name: n}\n",
     r"expected a !Template mapping, got !TemplateMetadata"),
])
def test_promptsource_bad_files(tmp_path, text, message):
  with pytest.raises(ValueError, match=message):
    promptsource.load_promptsource_templates(_write(tmp_path, text))
