"""Side-by-side comparison of two evaluation reports (`tools/compare_reports.py`).

Deltas are B - A of each task's primary metric, of each cluster's mean and of the
held-out and seen means, as the reports store them. Tasks are grouped held-out first,
then by cluster; a task present in only one report is listed apart and has no delta.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from sft_jax.evaluation import metrics
from sft_jax.evaluation import report as report_lib

MEAN_ROWS = (("held-out tasks mean", "heldout_mean"), ("seen tasks mean", "seen_mean"))


def load_report(path: str) -> dict:
  """A report.json, validated; errors name the file and the field."""
  try:
    with open(path, encoding="utf-8") as f:
      report = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
  try:
    report_lib.validate_report(report)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  return report


def _delta(a: float | None, b: float | None) -> float | None:
  return None if a is None or b is None else b - a


def compare_reports(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
  """Rows of means, clusters and tasks with A's value, B's value and B - A."""
  common = sorted(set(a["tasks"]) & set(b["tasks"]))
  tasks = []
  for task in common:
    metric_a, metric_b = metrics.primary_metric_name(a["tasks"][task]), metrics.primary_metric_name(b["tasks"][task])
    if metric_a != metric_b:
      raise ValueError(f"task {task!r}: primary metric is {metric_a} in A but {metric_b} in B")
    info = a["task_info"][task]
    va, vb = a["tasks"][task][metric_a], b["tasks"][task][metric_b]
    tasks.append({"task": task, "cluster": info["cluster"], "heldout": info["heldout"], "metric": metric_a,
                  "a": va, "b": vb, "delta": vb - va})
  # Held-out tasks first (what a comparison of instruction-tuned models is about), then by cluster.
  tasks.sort(key=lambda r: (not r["heldout"], r["cluster"], r["task"]))

  clusters = []
  for heldout, field in ((True, "clusters"), (False, "seen_clusters")):
    for cluster in sorted(set(a[field]) | set(b[field])):
      va, vb = a[field].get(cluster), b[field].get(cluster)
      clusters.append({"cluster": cluster, "heldout": heldout, "a": va, "b": vb, "delta": _delta(va, vb)})

  means = [{"name": name, "a": a[field], "b": b[field], "delta": b[field] - a[field]}
           for name, field in MEAN_ROWS]
  return {"a_step": a["step"], "b_step": b["step"], "means": means, "clusters": clusters, "tasks": tasks,
          "only_a": sorted(set(a["tasks"]) - set(b["tasks"])),
          "only_b": sorted(set(b["tasks"]) - set(a["tasks"]))}


def _fmt(x: float | None) -> str:
  return "—" if x is None else f"{x:.3f}"


def _fmt_delta(x: float | None) -> str:
  return "—" if x is None else f"{x:+.3f}"


def _split(heldout: bool) -> str:
  return "held-out" if heldout else "seen"


def _tables(comparison: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
  """(title, header, rows) of each table of the comparison."""
  cols = [f"A (step {comparison['a_step']})", f"B (step {comparison['b_step']})", "B - A"]
  values = lambda r: [_fmt(r["a"]), _fmt(r["b"]), _fmt_delta(r["delta"])]
  return [
      ("Means", [""] + cols, [[r["name"]] + values(r) for r in comparison["means"]]),
      ("Clusters", ["cluster", "split"] + cols,
       [[r["cluster"], _split(r["heldout"])] + values(r) for r in comparison["clusters"]]),
      ("Tasks", ["task", "cluster", "split", "metric"] + cols,
       [[r["task"], r["cluster"], _split(r["heldout"]), r["metric"]] + values(r) for r in comparison["tasks"]]),
  ]


def _only_lines(comparison: Mapping[str, Any], a_name: str, b_name: str, bullet: str) -> list[str]:
  lines = []
  for key, name in (("only_a", a_name), ("only_b", b_name)):
    if comparison[key]:
      lines += ["", f"Only in {name}:"] + [f"{bullet}{task}" for task in comparison[key]]
  return lines


def render_text(comparison: Mapping[str, Any], a_name: str = "A", b_name: str = "B") -> str:
  """The comparison as aligned plain-text tables, for the console."""
  lines = [f"A: {a_name}", f"B: {b_name}"]
  for title, header, rows in _tables(comparison):
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    # Names left-aligned, numbers right-aligned so their decimal points line up.
    numeric = [i >= len(header) - 3 for i in range(len(header))]
    row_text = lambda row: "  ".join(c.rjust(w) if num else c.ljust(w)
                                     for c, w, num in zip(row, widths, numeric)).rstrip()
    lines += ["", title, row_text(header), "  ".join("-" * w for w in widths)]
    lines += [row_text(row) for row in rows]
  lines += _only_lines(comparison, a_name, b_name, "  ")
  return "\n".join(lines) + "\n"


def render_markdown(comparison: Mapping[str, Any], a_name: str = "A", b_name: str = "B") -> str:
  """The same tables as Markdown."""
  lines = ["# Report comparison", "", f"- A: `{a_name}`", f"- B: `{b_name}`", "",
           "Deltas are B - A of each task's primary metric and of the stored means."]
  for title, header, rows in _tables(comparison):
    lines += ["", f"## {title}", ""] + report_lib.md_table(header, rows)
  lines += _only_lines(comparison, f"`{a_name}`", f"`{b_name}`", "- ")
  return "\n".join(lines) + "\n"
