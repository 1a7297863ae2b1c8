"""Tests for sft_jax.evaluation.compare and tools/compare_reports.py on two hand-written reports."""

import importlib.util
import json
import pathlib

import pytest

from sft_jax.evaluation import compare

_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _info(cluster, heldout, kind="classification"):
  return {"cluster": cluster, "heldout": heldout, "kind": kind, "num_examples": 4}


# A: "old" only here; B: "new" only there. Values are exact in binary, so deltas compare with ==.
REPORT_A = {
    "step": 1000, "model_dir": "runs/a",
    "tasks": {"nli_1": {"accuracy": 0.5}, "nli_2": {"accuracy": 0.25}, "cs": {"accuracy": 0.75},
              "reverse": {"exact_match": 0.5, "bleu": 0.9}, "old": {"exact_match": 0.0}},
    "task_info": {"nli_1": _info("nli", True), "nli_2": _info("nli", True), "cs": _info("commonsense", True),
                  "reverse": _info("string_ops", False, "generation"),
                  "old": _info("legacy", False, "generation")},
    "clusters": {"commonsense": 0.75, "nli": 0.375}, "seen_clusters": {"legacy": 0.0, "string_ops": 0.5},
    "heldout_mean": 0.5, "seen_mean": 0.25,
}
REPORT_B = {
    "step": 2000, "model_dir": "runs/b",
    "tasks": {"nli_1": {"accuracy": 0.75}, "nli_2": {"accuracy": 0.25}, "cs": {"accuracy": 0.5},
              "reverse": {"exact_match": 1.0, "bleu": 0.1}, "new": {"accuracy": 0.25}},
    "task_info": {"nli_1": _info("nli", True), "nli_2": _info("nli", True), "cs": _info("commonsense", True),
                  "reverse": _info("string_ops", False, "generation"), "new": _info("qa", True)},
    "clusters": {"commonsense": 0.5, "nli": 0.5, "qa": 0.25}, "seen_clusters": {"string_ops": 1.0},
    "heldout_mean": 0.4375, "seen_mean": 1.0,
}


def _with_baseline(report):
  keys = ("tasks", "clusters", "seen_clusters", "heldout_mean", "seen_mean")
  return {**report, "baseline": {"step": 0, **{k: report[k] for k in keys}}}


def _write(tmp_path, name, report):
  path = tmp_path / name
  path.write_text(json.dumps(report))
  return str(path)


def _load_tool():
  spec = importlib.util.spec_from_file_location("compare_reports", _ROOT / "tools" / "compare_reports.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_compare_reports_exact_deltas():
  result = compare.compare_reports(_with_baseline(REPORT_A), _with_baseline(REPORT_B))
  assert [(r["name"], r["a"], r["b"], r["delta"]) for r in result["means"]] == [
      ("held-out tasks mean", 0.5, 0.4375, -0.0625), ("seen tasks mean", 0.25, 1.0, 0.75)]
  # Held-out clusters, then seen ones, each by name; a cluster missing on one side has no delta.
  assert [(r["cluster"], r["heldout"], r["a"], r["b"], r["delta"]) for r in result["clusters"]] == [
      ("commonsense", True, 0.75, 0.5, -0.25), ("nli", True, 0.375, 0.5, 0.125), ("qa", True, None, 0.25, None),
      ("legacy", False, 0.0, None, None), ("string_ops", False, 0.5, 1.0, 0.5)]
  # Tasks in both reports, grouped held-out first and by cluster; the primary metric only.
  assert [(r["task"], r["cluster"], r["metric"], r["delta"]) for r in result["tasks"]] == [
      ("cs", "commonsense", "accuracy", -0.25), ("nli_1", "nli", "accuracy", 0.25),
      ("nli_2", "nli", "accuracy", 0.0), ("reverse", "string_ops", "exact_match", 0.5)]
  assert result["only_a"] == ["old"] and result["only_b"] == ["new"]


def test_tool_prints_table_and_writes_markdown(tmp_path, capsys):
  a, b = _write(tmp_path, "a.json", _with_baseline(REPORT_A)), _write(tmp_path, "b.json", _with_baseline(REPORT_B))
  out_md = tmp_path / "cmp.md"
  _load_tool().main([a, b, "--markdown", str(out_md)])
  lines = capsys.readouterr().out.splitlines()
  assert lines[:2] == [f"A: {a}", f"B: {b}"]
  words = [" ".join(line.split()) for line in lines]
  assert "held-out tasks mean 0.500 0.438 -0.062" in words  # 0.4375 and -0.0625 to three places
  assert "seen tasks mean 0.250 1.000 +0.750" in words
  assert "nli held-out 0.375 0.500 +0.125" in words
  assert "qa held-out — 0.250 —" in words
  assert "legacy seen 0.000 — —" in words
  assert "nli_2 nli held-out accuracy 0.250 0.250 +0.000" in words
  assert "reverse string_ops seen exact_match 0.500 1.000 +0.500" in words
  # Columns line up: every line of the task table is as wide as its header.
  header = next(line for line in lines if line.startswith("task "))
  table = lines[lines.index(header):lines.index(header) + 6]
  assert len({len(line) for line in table}) == 1 and table[-1].startswith("reverse ")
  assert lines[-5:] == [f"Only in {a}:", "  old", "", f"Only in {b}:", "  new"]

  md = out_md.read_text()
  assert "| task | cluster | split | metric | A (step 1000) | B (step 2000) | B - A |" in md
  assert "| cs | commonsense | held-out | accuracy | 0.750 | 0.500 | -0.250 |" in md
  assert "| legacy | seen | 0.000 | — | — |" in md
  assert "| held-out tasks mean | 0.500 | 0.438 | -0.062 |" in md
  assert md.endswith(f"Only in `{b}`:\n- new\n")


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["baseline"].pop("seen_mean"), r"a\.json: report\.baseline\.seen_mean: missing"),
    (lambda r: r["tasks"]["cs"].update(accuracy="high"), r"a\.json: report\.tasks\.cs\.accuracy: expected float"),
])
def test_malformed_report_names_file_and_field(tmp_path, edit, message):
  report = json.loads(json.dumps(_with_baseline(REPORT_A)))
  edit(report)
  a, b = _write(tmp_path, "a.json", report), _write(tmp_path, "b.json", _with_baseline(REPORT_B))
  with pytest.raises(ValueError, match=message):
    compare.load_report(a)
  with pytest.raises(SystemExit, match=message):
    _load_tool().main([a, b])


def test_not_json_names_file(tmp_path):
  path = tmp_path / "broken.json"
  path.write_text('{"step": 1,')
  with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
    compare.load_report(str(path))


def test_different_primary_metrics_are_refused():
  b = _with_baseline({**REPORT_B, "tasks": {**REPORT_B["tasks"], "cs": {"exact_match": 0.5}}})
  with pytest.raises(ValueError, match="task 'cs': primary metric is accuracy in A but exact_match in B"):
    compare.compare_reports(_with_baseline(REPORT_A), b)
