"""Tests for sft_jax.evaluation.report: aggregation, validation and the three files."""

import copy
import json
import os

import matplotlib.image
import pytest

from sft_jax.evaluation import report as report_lib

# Five tasks: three held-out in two clusters, two seen in one cluster. Generation tasks
# carry extra metrics to check that the primary one (exact_match) is the one averaged.
TASK_INFO = {
    "anli_r1": {"cluster": "nli", "heldout": True, "kind": "classification", "num_examples": 40},
    "rte": {"cluster": "nli", "heldout": True, "kind": "classification", "num_examples": 20},
    "copa": {"cluster": "commonsense", "heldout": True, "kind": "classification",
             "num_examples": 10},
    "reverse_words": {"cluster": "string_ops", "heldout": False, "kind": "generation",
                      "num_examples": 16},
    "sort_letters": {"cluster": "string_ops", "heldout": False, "kind": "generation",
                     "num_examples": 16},
}
TASK_SCORES = {
    "anli_r1": {"accuracy": 0.5},
    "rte": {"accuracy": 0.75},
    "copa": {"accuracy": 0.25},
    "reverse_words": {"exact_match": 1.0, "bleu": 0.2},
    "sort_letters": {"exact_match": 0.5, "bleu": 0.9},
}
BASELINE_SCORES = {
    "anli_r1": {"accuracy": 0.25},
    "rte": {"accuracy": 0.5},
    "copa": {"accuracy": 0.5},
    "reverse_words": {"exact_match": 0.0, "bleu": 0.1},
    "sort_letters": {"exact_match": 0.0, "bleu": 0.3},
}


# Per-template scores of three tasks; "anli_r1" and "sort_letters" name no templates.
# rte: three templates, mean (1 + 0.25 + 0) / 3, median 0.25. copa: four, mean 1.75 / 4 = 0.4375,
# median (0.25 + 0.5) / 2 = 0.375. reverse_words: two, mean = median = 0.75 (exact_match, not bleu).
TEMPLATE_SCORES = {
    "rte": {"t_a": {"accuracy": 1.0}, "t_b": {"accuracy": 0.25}, "t_c": {"accuracy": 0.0}},
    "copa": {"p0": {"accuracy": 0.0}, "p1": {"accuracy": 0.25}, "p2": {"accuracy": 0.5},
             "p3": {"accuracy": 1.0}},
    "reverse_words": {"x": {"exact_match": 1.0, "bleu": 0.0}, "y": {"exact_match": 0.5, "bleu": 0.0}},
}
BASELINE_TEMPLATE_SCORES = {
    "rte": {"t_a": {"accuracy": 0.5}, "t_b": {"accuracy": 0.5}, "t_c": {"accuracy": 0.5}},
    "copa": {"p0": {"accuracy": 0.5}, "p1": {"accuracy": 0.5}, "p2": {"accuracy": 0.5},
             "p3": {"accuracy": 0.5}},
    "reverse_words": {"x": {"exact_match": 0.0, "bleu": 0.1}, "y": {"exact_match": 0.0, "bleu": 0.1}},
}
PREDICTIONS = [
    {"task": "copa", "template": "p0", "index": 0, "inputs": "The man fell. Why?\nOPTIONS:\n- tripped\n- ate",
     "targets": "tripped", "prediction": "ate", "answer_choices": ["tripped", "ate"]},
    {"task": "reverse_words", "template": "x", "index": 0, "inputs": "Reverse: ab cd", "targets": "cd ab",
     "prediction": "cd ab"},
    {"task": "sort_letters", "template": None, "index": 3, "inputs": "Sort: cba — ünïcode",
     "targets": "abc", "prediction": "abc"},
]


def _report(templates=False):
  return report_lib.build_report(
      step=300, model_dir="runs/qs", task_scores=TASK_SCORES, task_info=TASK_INFO,
      baseline_step=0, baseline_task_scores=BASELINE_SCORES,
      template_scores=TEMPLATE_SCORES if templates else None,
      baseline_template_scores=BASELINE_TEMPLATE_SCORES if templates else None)


def test_summarize_hand_computed():
  summary = report_lib.summarize(TASK_SCORES, TASK_INFO)
  assert summary["clusters"] == {"commonsense": 0.25, "nli": pytest.approx(0.625)}
  assert summary["seen_clusters"] == {"string_ops": 0.75}
  # Macro over held-out tasks, not over clusters: (0.5 + 0.75 + 0.25) / 3.
  assert summary["heldout_mean"] == pytest.approx(0.5)
  assert summary["seen_mean"] == pytest.approx(0.75)


def test_summarize_requires_both_sides():
  seen_only = {t: i for t, i in TASK_INFO.items() if not i["heldout"]}
  with pytest.raises(ValueError, match="no held-out tasks"):
    report_lib.summarize({t: TASK_SCORES[t] for t in seen_only}, seen_only)
  heldout_only = {t: i for t, i in TASK_INFO.items() if i["heldout"]}
  with pytest.raises(ValueError, match="no seen tasks"):
    report_lib.summarize({t: TASK_SCORES[t] for t in heldout_only}, heldout_only)


def test_summarize_rejects_unscored_or_undescribed_tasks():
  with pytest.raises(ValueError, match="without scores: \\['copa'\\]"):
    report_lib.summarize({t: s for t, s in TASK_SCORES.items() if t != "copa"}, TASK_INFO)
  with pytest.raises(ValueError, match="without task_info: \\['extra'\\]"):
    report_lib.summarize({**TASK_SCORES, "extra": {"accuracy": 1.0}}, TASK_INFO)


def test_build_report_schema_and_baseline():
  report = _report()
  assert report["step"] == 300 and report["model_dir"] == "runs/qs"
  assert report["tasks"] == TASK_SCORES and report["task_info"] == TASK_INFO
  assert report["heldout_mean"] == pytest.approx(0.5)
  base = report["baseline"]
  assert base["step"] == 0
  assert base["clusters"] == {"commonsense": 0.5, "nli": pytest.approx(0.375)}
  assert base["seen_clusters"] == {"string_ops": 0.0}
  assert base["heldout_mean"] == pytest.approx(1.25 / 3)
  assert base["seen_mean"] == 0.0
  report_lib.validate_report(report)


def test_build_report_rejects_mismatched_baseline():
  with pytest.raises(ValueError, match="only trained: \\['copa'\\]"):
    report_lib.build_report(300, "runs/qs", TASK_SCORES, TASK_INFO, 0,
                            {t: s for t, s in BASELINE_SCORES.items() if t != "copa"})


def test_validate_report_names_missing_field():
  report = _report()
  del report["baseline"]["seen_mean"]
  with pytest.raises(ValueError, match="report\\.baseline\\.seen_mean: missing"):
    report_lib.validate_report(report)


@pytest.mark.parametrize("path, value, message", [
    (("baseline", "heldout_mean"), "0.4", "report.baseline.heldout_mean: expected float, got str"),
    (("step",), 3.0, "report.step: expected int, got float"),
    (("tasks", "rte", "accuracy"), True, "report.tasks.rte.accuracy: expected float, got bool"),
    (("task_info", "copa", "kind"), "ranking", "report.task_info.copa.kind: expected one of"),
    (("clusters", "nli"), float("nan"), "report.clusters.nli: expected a finite float"),
])
def test_validate_report_names_ill_typed_field(path, value, message):
  report = copy.deepcopy(_report())
  node = report
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = value
  with pytest.raises(ValueError, match=message.replace(".", "\\.")):
    report_lib.validate_report(report)


def test_write_report_files(tmp_path):
  report = _report()
  out_dir = tmp_path / "eval" / "step_300"  # does not exist yet
  paths = report_lib.write_report(report, str(out_dir))
  assert paths == {"json": str(out_dir / "report.json"), "md": str(out_dir / "report.md"),
                   "png": str(out_dir / "report.png")}
  # No temp files left behind.
  assert sorted(os.listdir(out_dir)) == ["report.json", "report.md", "report.png"]

  with open(paths["json"]) as f:
    assert json.load(f) == report

  with open(paths["md"]) as f:
    md = f.read()
  assert "# Evaluation report: step 300" in md
  assert "| held-out tasks mean | 0.500 | 0.417 | +0.083 |" in md
  assert "| seen tasks mean (new instances) | 0.750 | 0.000 | +0.750 |" in md
  assert "| nli | 2 | 0.625 | 0.375 | +0.250 |" in md
  assert "| string_ops | 2 | 0.750 | 0.000 | +0.750 |" in md
  assert "| rte | nli | held-out | classification | accuracy | 0.750 | 0.500 | 20 |" in md
  assert ("| reverse_words | string_ops | seen | generation | exact_match | 1.000 | 0.000 | 16 |"
          in md)
  assert sum(line.startswith("| ") for line in md.splitlines()) == (
      3 + 3 + 2 + 6)  # summary, held-out clusters, seen clusters, tasks (headers included)

  with open(paths["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  image = matplotlib.image.imread(paths["png"])
  assert image.shape[0] >= 300 and image.shape[1] >= 600
  assert image.std() > 0.05  # not a blank canvas


def test_write_report_rejects_invalid_report_and_keeps_previous(tmp_path):
  report = _report()
  paths = report_lib.write_report(report, str(tmp_path))
  with open(paths["json"]) as f:
    before = f.read()
  bad = copy.deepcopy(report)
  bad["step"] = 301
  del bad["baseline"]["seen_mean"]
  with pytest.raises(ValueError, match="report\\.baseline\\.seen_mean"):
    report_lib.write_report(bad, str(tmp_path))
  with open(paths["json"]) as f:
    assert f.read() == before
  assert sorted(os.listdir(tmp_path)) == ["report.json", "report.md", "report.png"]


def test_write_report_failure_while_plotting_leaves_previous_report(tmp_path, monkeypatch):
  report = _report()
  paths = report_lib.write_report(report, str(tmp_path))
  with open(paths["json"]) as f:
    before = f.read()

  def broken_render(report, f):
    f.write(b"\x89PNG partial")
    raise RuntimeError("plotting crashed")

  monkeypatch.setattr(report_lib, "render_png", broken_render)
  newer = report_lib.build_report(400, "runs/qs", TASK_SCORES, TASK_INFO, 0, BASELINE_SCORES)
  with pytest.raises(RuntimeError, match="plotting crashed"):
    report_lib.write_report(newer, str(tmp_path))
  with open(paths["json"]) as f:
    assert f.read() == before
  assert sorted(os.listdir(tmp_path)) == ["report.json", "report.md", "report.png"]


# ---- per-template scores ----------------------------------------------------------------------


def test_aggregate_templates_flan_mean_and_t0_median_hand_computed():
  agg = report_lib.aggregate_templates(TEMPLATE_SCORES)
  assert agg["template_mean"] == {"copa": 0.4375, "reverse_words": 0.75, "rte": pytest.approx(1.25 / 3)}
  assert agg["template_median"] == {"copa": 0.375, "reverse_words": 0.75, "rte": 0.25}


def test_build_report_with_templates_schema():
  report = _report(templates=True)
  assert report["templates"] == TEMPLATE_SCORES
  assert report["template_median"] == {"copa": 0.375, "reverse_words": 0.75, "rte": 0.25}
  base = report["baseline"]
  assert base["templates"] == BASELINE_TEMPLATE_SCORES
  assert base["template_mean"] == {"copa": 0.5, "reverse_words": 0.0, "rte": 0.5}
  assert base["template_median"] == base["template_mean"]
  # The per-task scores and the task-level means are those of the report without templates.
  plain = _report()
  for key in ("tasks", "clusters", "seen_clusters", "heldout_mean", "seen_mean"):
    assert report[key] == plain[key]
  assert json.loads(json.dumps(report)) == report
  with pytest.raises(ValueError, match="template scores for tasks that have no task scores: \\['boolq'\\]"):
    report_lib.build_report(300, "runs/qs", TASK_SCORES, TASK_INFO, 0, BASELINE_SCORES,
                            {**TEMPLATE_SCORES, "boolq": {"t": {"accuracy": 1.0}}})


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("template_median"), "report.template_median: missing"),
    (lambda r: r["baseline"].pop("templates"), "report.baseline.templates: missing"),
    (lambda r: r["templates"].update(boolq={"t": {"accuracy": 1.0}}), "report.templates.boolq: not a task"),
    (lambda r: r["templates"]["rte"].update(t_d={"bleu": 1.0}), "report.templates.rte.t_d: no primary metric"),
    (lambda r: r["templates"]["rte"]["t_a"].update(accuracy="1"),
     "report.templates.rte.t_a.accuracy: expected float, got str"),
    (lambda r: r["template_mean"].pop("rte"), "report.template_mean: names tasks \\['copa', 'reverse_words'\\]"),
])
def test_validate_report_checks_template_fields(edit, message):
  report = copy.deepcopy(_report(templates=True))
  edit(report)
  with pytest.raises(ValueError, match=message):
    report_lib.validate_report(report)


def test_markdown_per_template_and_per_cluster_tables():
  md = report_lib.render_markdown(_report(templates=True))
  value_cols = "mean step 300 | median step 300 | mean baseline (step 0) | median baseline (step 0)"
  assert f"| cluster | split | tasks | {value_cols} |" in md
  # Cluster rows average the tasks' template means and medians: nli holds rte alone.
  assert "| commonsense | held-out | 1 | 0.438 | 0.375 | 0.500 | 0.500 |" in md
  assert "| nli | held-out | 1 | 0.417 | 0.250 | 0.500 | 0.500 |" in md
  assert "| string_ops | seen | 1 | 0.750 | 0.750 | 0.000 | 0.000 |" in md
  assert f"| task | cluster | split | templates | {value_cols} |" in md
  assert "| copa | commonsense | held-out | 4 | 0.438 | 0.375 | 0.500 | 0.500 |" in md
  # One table per cluster, every template of its tasks with its primary metric.
  assert "### nli (held-out)" in md and "### string_ops (seen)" in md
  assert "| rte | t_b | accuracy | 0.250 | 0.500 | -0.250 |" in md
  assert "| reverse_words | y | exact_match | 0.500 | 0.000 | +0.500 |" in md
  template_rows = [line for line in md.split("## Templates")[1].splitlines() if line.startswith("| ")
                   and not line.startswith("| task")]
  assert len(template_rows) == 3 + 4 + 2
  # A report without templates has none of these sections.
  assert "## Templates" not in report_lib.render_markdown(_report())


# ---- learning curve ----------------------------------------------------------------------------

CURVE = [{"step": 0, "source": "evaluated", "heldout_mean": 0.125, "seen_mean": 0.25},
         {"step": 100, "source": "periodic", "heldout_mean": 0.25, "seen_mean": 0.5, "train_loss": 1.5},
         {"step": 300, "source": "evaluated", "heldout_mean": 0.5, "seen_mean": 0.75, "train_loss": 0.75}]


def test_learning_curve_validates_and_renders_one_row_per_point():
  report = dict(_report(), learning_curve=copy.deepcopy(CURVE), learning_curve_png="learning_curve.png")
  report_lib.validate_report(report)
  md = report_lib.render_markdown(report)
  section = md.split("## Learning curve")[1]
  assert "![learning curve](learning_curve.png)" in section
  assert "| step | source | held-out mean | seen mean | train loss |" in section
  assert "| 0 | evaluated | 0.125 | 0.250 |  |" in section
  assert "| 100 | periodic | 0.250 | 0.500 | 1.500 |" in section
  assert "| 300 | evaluated | 0.500 | 0.750 | 0.750 |" in section
  assert "## Learning curve" not in report_lib.render_markdown(_report())


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(learning_curve={"step": 0}), "report.learning_curve: expected list, got dict"),
    (lambda c: c["learning_curve"][1].update(source="logged"),
     "report.learning_curve\\[1\\].source: expected one of \\('evaluated', 'periodic'\\), got 'logged'"),
    (lambda c: c["learning_curve"][2].pop("seen_mean"), "report.learning_curve\\[2\\].seen_mean: missing"),
    (lambda c: c["learning_curve"][2].update(train_loss="0.7"),
     "report.learning_curve\\[2\\].train_loss: expected float, got str"),
    (lambda c: c["learning_curve"][0].update(step=1.0), "report.learning_curve\\[0\\].step: expected int, got float"),
    (lambda c: c.update(learning_curve_png=3), "report.learning_curve_png: expected str, got int"),
])
def test_validate_report_checks_learning_curve_rows(edit, message):
  report = dict(_report(), learning_curve=copy.deepcopy(CURVE))
  edit(report)
  with pytest.raises(ValueError, match=message):
    report_lib.validate_report(report)


# ---- predictions ------------------------------------------------------------------------------


def test_write_report_with_predictions(tmp_path):
  report = _report(templates=True)
  paths = report_lib.write_report(report, str(tmp_path), PREDICTIONS)
  assert paths["predictions"] == str(tmp_path / "predictions.jsonl")
  assert sorted(os.listdir(tmp_path)) == ["predictions.jsonl", "report.json", "report.md", "report.png"]
  with open(paths["predictions"], encoding="utf-8") as f:
    lines = f.read().splitlines()
  # One object per line, fields in the documented order, text unescaped.
  assert lines[1] == ('{"task": "reverse_words", "template": "x", "index": 0, "inputs": "Reverse: ab cd", '
                      '"targets": "cd ab", "prediction": "cd ab"}')
  assert '"template": null' in lines[2] and "ünïcode" in lines[2]
  assert [list(json.loads(line)) for line in lines][0] == list(report_lib.PREDICTION_FIELDS)
  assert report_lib.read_predictions(paths["predictions"]) == PREDICTIONS
  with open(paths["json"]) as f:
    assert json.load(f) == report


@pytest.mark.parametrize("edit, message", [
    (lambda p: p[0].pop("index"), "predictions\\[0\\].index: missing"),
    (lambda p: p[1].update(task="boolq"), "predictions\\[1\\].task: 'boolq' is not a task of the report"),
    (lambda p: p[2].update(task="reverse_words", index=0), "a second prediction for task 'reverse_words', index 0"),
    (lambda p: p[0].update(answer_choices=[]), "predictions\\[0\\].answer_choices: expected a non-empty list"),
    (lambda p: p[1].update(score=1.0), "predictions\\[1\\]: unknown fields \\['score'\\]"),
    (lambda p: p[1].update(index=True), "predictions\\[1\\].index: expected int, got bool"),
])
def test_write_report_rejects_bad_predictions_and_writes_nothing(tmp_path, edit, message):
  predictions = copy.deepcopy(PREDICTIONS)
  edit(predictions)
  with pytest.raises(ValueError, match=message):
    report_lib.write_report(_report(), str(tmp_path), predictions)
  assert os.listdir(tmp_path) == []


def test_read_predictions_names_file_and_line(tmp_path):
  path = tmp_path / "predictions.jsonl"
  path.write_text(json.dumps(PREDICTIONS[1]) + "\n" + '{"task": "copa", "template": null}\n')
  with pytest.raises(ValueError, match="predictions\\.jsonl:2: record\\.inputs: missing"):
    report_lib.read_predictions(str(path))
