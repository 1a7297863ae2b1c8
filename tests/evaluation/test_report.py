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
    "reverse_words": {"exact_match": 1.0, "rougeL": 0.2},
    "sort_letters": {"exact_match": 0.5, "rougeL": 0.9},
}
BASELINE_SCORES = {
    "anli_r1": {"accuracy": 0.25},
    "rte": {"accuracy": 0.5},
    "copa": {"accuracy": 0.5},
    "reverse_words": {"exact_match": 0.0, "rougeL": 0.1},
    "sort_letters": {"exact_match": 0.0, "rougeL": 0.3},
}


def _report():
  return report_lib.build_report(
      step=300, model_dir="runs/qs", task_scores=TASK_SCORES, task_info=TASK_INFO,
      baseline_step=0, baseline_task_scores=BASELINE_SCORES)


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
