"""Held-out evaluation report: per-cluster aggregation and `report.{json,md,png}`.

A report compares a trained checkpoint with a baseline checkpoint (normally step 0)
on the same tasks, split into held-out tasks (never trained on: the zero-shot
generalization the run is about) and seen tasks (new instances of training tasks).
Averages are macro averages over tasks of each task's primary metric.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Callable, IO, Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sft_jax.evaluation import metrics

TASK_KINDS = ("generation", "classification")
_SUMMARY_FIELDS = ("clusters", "seen_clusters", "heldout_mean", "seen_mean")


# ---------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------


def _check_task_info(task_scores: Mapping[str, Mapping[str, float]],
                     task_info: Mapping[str, Mapping]) -> None:
  # A task scored but not described (or described but not scored) would silently
  # drop out of the averages, so the two must name exactly the same tasks.
  missing_info = sorted(set(task_scores) - set(task_info))
  if missing_info:
    raise ValueError(f"tasks without task_info: {missing_info}")
  missing_scores = sorted(set(task_info) - set(task_scores))
  if missing_scores:
    raise ValueError(f"tasks in task_info without scores: {missing_scores}")
  for task, info in task_info.items():
    _validate_task_info_entry(info, f"task_info.{task}")


def _mean(values: list[float]) -> float:
  return sum(values) / len(values)


def summarize(task_scores: Mapping[str, Mapping[str, float]],
              task_info: Mapping[str, Mapping]) -> dict[str, Any]:
  """Macro-averages each task's primary metric per cluster and over seen / held-out tasks."""
  _check_task_info(task_scores, task_info)
  by_cluster: dict[bool, dict[str, list[float]]] = {True: {}, False: {}}
  for task in sorted(task_scores):
    info = task_info[task]
    score = metrics.primary_metric(task_scores[task])
    by_cluster[info["heldout"]].setdefault(info["cluster"], []).append(score)

  def side_mean(heldout: bool) -> float:
    scores = [s for cluster in by_cluster[heldout].values() for s in cluster]
    if not scores:
      raise ValueError(f"task_info has no {'held-out' if heldout else 'seen'} tasks")
    return _mean(scores)

  return {
      "clusters": {c: _mean(s) for c, s in sorted(by_cluster[True].items())},
      "seen_clusters": {c: _mean(s) for c, s in sorted(by_cluster[False].items())},
      "heldout_mean": side_mean(True),
      "seen_mean": side_mean(False),
  }


def build_report(step: int,
                 model_dir: str,
                 task_scores: Mapping[str, Mapping[str, float]],
                 task_info: Mapping[str, Mapping],
                 baseline_step: int,
                 baseline_task_scores: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
  """Builds the report dict for a checkpoint and its baseline, scored on the same tasks."""
  if set(baseline_task_scores) != set(task_scores):
    raise ValueError(
        "baseline and trained checkpoint must be scored on the same tasks; only trained: "
        f"{sorted(set(task_scores) - set(baseline_task_scores))}, only baseline: "
        f"{sorted(set(baseline_task_scores) - set(task_scores))}")

  def plain_scores(scores: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    # Plain dicts of floats, so the report equals its own JSON round trip.
    return {t: {m: float(v) for m, v in s.items()} for t, s in sorted(scores.items())}

  report = {
      "step": int(step),
      "model_dir": str(model_dir),
      "tasks": plain_scores(task_scores),
      "task_info": {t: dict(info) for t, info in sorted(task_info.items())},
      **summarize(task_scores, task_info),
      "baseline": {
          "step": int(baseline_step),
          "tasks": plain_scores(baseline_task_scores),
          **summarize(baseline_task_scores, task_info),
      },
  }
  validate_report(report)
  return report


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _type_name(value: object) -> str:
  return type(value).__name__


def _require(mapping: Mapping, key: str, path: str) -> Any:
  if not isinstance(mapping, Mapping):
    raise ValueError(f"{path}: expected mapping, got {_type_name(mapping)}")
  if key not in mapping:
    raise ValueError(f"{path}.{key}: missing")
  return mapping[key]


def _check_float(value: object, path: str) -> None:
  # bool is an int subclass; True as a score is a bug, not 1.0.
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{path}: expected float, got {_type_name(value)}")
  # NaN/inf are not valid JSON and would make every average downstream meaningless.
  if not math.isfinite(value):
    raise ValueError(f"{path}: expected a finite float, got {value}")


def _check_int(value: object, path: str) -> None:
  if isinstance(value, bool) or not isinstance(value, int):
    raise ValueError(f"{path}: expected int, got {_type_name(value)}")


def _check_str(value: object, path: str) -> None:
  if not isinstance(value, str):
    raise ValueError(f"{path}: expected str, got {_type_name(value)}")


def _check_float_map(value: object, path: str) -> None:
  if not isinstance(value, Mapping):
    raise ValueError(f"{path}: expected mapping, got {_type_name(value)}")
  for key, v in value.items():
    _check_str(key, f"{path} key")
    _check_float(v, f"{path}.{key}")


def _check_task_scores(value: object, path: str) -> None:
  if not isinstance(value, Mapping):
    raise ValueError(f"{path}: expected mapping, got {_type_name(value)}")
  for task, scores in value.items():
    _check_float_map(scores, f"{path}.{task}")
    try:
      metrics.primary_metric(scores)
    except ValueError as e:
      raise ValueError(f"{path}.{task}: {e}") from None


def _validate_task_info_entry(info: object, path: str) -> None:
  _check_str(_require(info, "cluster", path), f"{path}.cluster")
  heldout = _require(info, "heldout", path)
  if not isinstance(heldout, bool):
    raise ValueError(f"{path}.heldout: expected bool, got {_type_name(heldout)}")
  kind = _require(info, "kind", path)
  if kind not in TASK_KINDS:
    raise ValueError(f"{path}.kind: expected one of {list(TASK_KINDS)}, got {kind!r}")
  num_examples = _require(info, "num_examples", path)
  _check_int(num_examples, f"{path}.num_examples")
  if num_examples < 0:
    raise ValueError(f"{path}.num_examples: expected >= 0, got {num_examples}")


def _check_summary(report: Mapping, path: str) -> None:
  _check_float_map(_require(report, "clusters", path), f"{path}.clusters")
  _check_float_map(_require(report, "seen_clusters", path), f"{path}.seen_clusters")
  _check_float(_require(report, "heldout_mean", path), f"{path}.heldout_mean")
  _check_float(_require(report, "seen_mean", path), f"{path}.seen_mean")


def validate_report(report: Mapping) -> None:
  """Raises ValueError naming the first missing or ill-typed field of `report`."""
  path = "report"
  _check_int(_require(report, "step", path), "report.step")
  _check_str(_require(report, "model_dir", path), "report.model_dir")
  tasks = _require(report, "tasks", path)
  _check_task_scores(tasks, "report.tasks")
  task_info = _require(report, "task_info", path)
  if not isinstance(task_info, Mapping):
    raise ValueError(f"report.task_info: expected mapping, got {_type_name(task_info)}")
  for task, info in task_info.items():
    _validate_task_info_entry(info, f"report.task_info.{task}")
  if set(tasks) != set(task_info):
    raise ValueError(
        f"report.task_info: names tasks {sorted(task_info)} but report.tasks has {sorted(tasks)}")
  _check_summary(report, path)

  baseline = _require(report, "baseline", path)
  _check_int(_require(baseline, "step", "report.baseline"), "report.baseline.step")
  baseline_tasks = _require(baseline, "tasks", "report.baseline")
  _check_task_scores(baseline_tasks, "report.baseline.tasks")
  if set(baseline_tasks) != set(tasks):
    raise ValueError(f"report.baseline.tasks: names tasks {sorted(baseline_tasks)} "
                     f"but report.tasks has {sorted(tasks)}")
  _check_summary(baseline, "report.baseline")


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _fmt(x: float) -> str:
  return f"{x:.3f}"


def _fmt_delta(x: float) -> str:
  return f"{x:+.3f}"


def _md_cell(text: object) -> str:
  # A `|` inside a task or cluster name would split the table cell.
  return str(text).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[object]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
  lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
  return lines


def _cluster_rows(report: Mapping, key: str, heldout: bool) -> list[list[object]]:
  counts: dict[str, int] = {}
  for info in report["task_info"].values():
    if info["heldout"] == heldout:
      counts[info["cluster"]] = counts.get(info["cluster"], 0) + 1
  rows = []
  for cluster, score in sorted(report[key].items()):
    base = report["baseline"][key].get(cluster, math.nan)
    rows.append([cluster, counts.get(cluster, 0), _fmt(score), _fmt(base),
                 _fmt_delta(score - base)])
  return rows


def render_markdown(report: Mapping) -> str:
  """Renders a validated report as Markdown: summary, cluster tables and per-task table."""
  base = report["baseline"]
  trained_col, base_col = f"step {report['step']}", f"baseline (step {base['step']})"
  lines = [f"# Evaluation report: step {report['step']}", "",
           f"Checkpoint: `{report['model_dir']}`", "",
           "Means are macro averages over tasks of each task's primary metric "
           f"({' / '.join(metrics.PRIMARY_METRICS)}).", "", "## Summary", ""]
  lines += _md_table(["", trained_col, base_col, "delta"], [
      ["held-out tasks mean", _fmt(report["heldout_mean"]), _fmt(base["heldout_mean"]),
       _fmt_delta(report["heldout_mean"] - base["heldout_mean"])],
      ["seen tasks mean (new instances)", _fmt(report["seen_mean"]), _fmt(base["seen_mean"]),
       _fmt_delta(report["seen_mean"] - base["seen_mean"])],
  ])
  cluster_header = ["cluster", "tasks", trained_col, base_col, "delta"]
  lines += ["", "## Held-out clusters", ""]
  lines += _md_table(cluster_header, _cluster_rows(report, "clusters", heldout=True))
  lines += ["", "## Seen clusters (new instances)", ""]
  lines += _md_table(cluster_header, _cluster_rows(report, "seen_clusters", heldout=False))

  task_rows = []
  # Held-out tasks first: they are what the report is about.
  order = sorted(report["task_info"].items(),
                 key=lambda kv: (not kv[1]["heldout"], kv[1]["cluster"], kv[0]))
  for task, info in order:
    scores, base_scores = report["tasks"][task], base["tasks"][task]
    metric = next(m for m in metrics.PRIMARY_METRICS if m in scores)
    base_score = base_scores.get(metric, math.nan)
    task_rows.append([task, info["cluster"], "held-out" if info["heldout"] else "seen",
                      info["kind"], metric, _fmt(scores[metric]), _fmt(base_score),
                      info["num_examples"]])
  lines += ["", "## Tasks", ""]
  lines += _md_table(["task", "cluster", "split", "kind", "metric", trained_col, base_col, "n"],
                     task_rows)
  return "\n".join(lines) + "\n"


def _draw_clusters(ax, title: str, trained: Mapping[str, float], baseline: Mapping[str, float],
                   step: int, baseline_step: int) -> None:
  names = sorted(trained)
  ax.set_title(title)
  ax.set_ylim(0.0, 1.12)  # headroom so value labels above a bar at 1.0 stay inside the panel
  ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
  ax.set_ylabel("mean primary metric")
  ax.grid(axis="y", alpha=0.3)
  ax.set_axisbelow(True)
  if not names:
    ax.set_xticks([])
    ax.text(0.5, 0.5, "no tasks", ha="center", va="center", transform=ax.transAxes)
    return
  width = 0.38
  xs = list(range(len(names)))
  bars_base = ax.bar([x - width / 2 for x in xs], [baseline.get(n, math.nan) for n in names],
                     width, label=f"step {baseline_step} (baseline)", color="#b0b0b0")
  bars_trained = ax.bar([x + width / 2 for x in xs], [trained[n] for n in names], width,
                        label=f"step {step}", color="#1f77b4")
  for bars in (bars_base, bars_trained):
    ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
  ax.set_xticks(xs)
  # Cluster names are long (e.g. "natural_language_inference"); tilt them when crowded.
  rotate = len(names) > 3 or max(len(n) for n in names) > 12
  ax.set_xticklabels(names, rotation=30 if rotate else 0, ha="right" if rotate else "center")


def render_png(report: Mapping, f: IO[bytes]) -> None:
  """Draws the held-out and seen cluster bar charts (trained vs baseline) as PNG into `f`."""
  base = report["baseline"]
  n_bars = max(len(report["clusters"]), len(report["seen_clusters"]), 1)
  fig = Figure(figsize=(max(10.0, 2.0 + 1.6 * n_bars), 5.2), layout="constrained")
  FigureCanvasAgg(fig)  # Agg renders off-screen: no display, no pyplot global state.
  ax_heldout, ax_seen = fig.subplots(1, 2, sharey=True)
  _draw_clusters(ax_heldout, "Held-out clusters", report["clusters"], base["clusters"],
                 report["step"], base["step"])
  _draw_clusters(ax_seen, "Seen clusters (new instances)", report["seen_clusters"],
                 base["seen_clusters"], report["step"], base["step"])
  ax_seen.set_ylabel("")
  handles, labels = ax_heldout.get_legend_handles_labels()
  if not handles:
    handles, labels = ax_seen.get_legend_handles_labels()
  if handles:
    fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
  fig.suptitle(
      f"Step {report['step']} vs step {base['step']}: held-out mean "
      f"{report['heldout_mean']:.3f} (was {base['heldout_mean']:.3f}), seen mean "
      f"{report['seen_mean']:.3f} (was {base['seen_mean']:.3f})")
  fig.savefig(f, format="png", dpi=120)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _write_temp(out_dir: str, name: str, write: Callable[[IO[bytes]], None]) -> str:
  fd, tmp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    os.unlink(tmp_path)
    raise
  return tmp_path


def write_report(report: Mapping, out_dir: str) -> dict[str, str]:
  """Validates `report`, then atomically writes report.json, .md and .png into `out_dir`."""
  validate_report(report)
  os.makedirs(out_dir, exist_ok=True)
  json_text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"
  md_text = render_markdown(report)
  writers: dict[str, tuple[str, Callable[[IO[bytes]], None]]] = {
      "json": ("report.json", lambda f: f.write(json_text.encode("utf-8"))),
      "md": ("report.md", lambda f: f.write(md_text.encode("utf-8"))),
      "png": ("report.png", lambda f: render_png(report, f)),
  }
  # Render everything before replacing anything, so a failure (say, in plotting) leaves
  # the previous report whole rather than a new JSON next to an old plot.
  temps: dict[str, str] = {}
  try:
    for key, (name, write) in writers.items():
      temps[key] = _write_temp(out_dir, name, write)
  except BaseException:
    for tmp_path in temps.values():
      os.unlink(tmp_path)
    raise
  paths = {}
  for key, (name, _) in writers.items():
    paths[key] = os.path.join(out_dir, name)
    os.replace(temps[key], paths[key])
  return paths
