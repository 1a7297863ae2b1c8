"""Held-out evaluation report: per-cluster aggregation, `report.{json,md,png}` and predictions.

A report compares a trained checkpoint with a baseline checkpoint (normally step 0)
on the same tasks, split into held-out tasks (never trained on: the zero-shot
generalization the run is about) and seen tasks (new instances of training tasks).
Averages are macro averages over tasks of each task's primary metric.

Tasks whose examples name their prompt template are also scored per template:
`"templates": {task: {template: {metric: float}}}`, and aggregated over a task's templates
(prompts) both ways the literature reports: `"template_mean": {task: float}` (FLAN: mean over
templates) and `"template_median": {task: float}` (T0: median over prompts), each of the
primary metric. The baseline carries the same fields.

A report may carry the run's learning curve, one row per (step, source), steps ascending:

  "learning_curve": [{"step": int, "source": str, "heldout_mean": float, "seen_mean": float,
                      "train_loss": float (optional)}, ...],
  "learning_curve_png": str (optional; the plot's file name, next to report.json)

`source` says where a row was scored: "evaluated" rows come from this evaluation (the baseline
and the scored checkpoints, on `max_examples_per_task` examples per task), "periodic" rows from
the scalars the trainer logged (its own, usually smaller, sample of examples).

`predictions.jsonl`, written next to report.json, holds one JSON object per evaluated example
of the trained checkpoint, tasks in the order the mixture's held-out split declares them
and examples in their split order:

  {"task": str, "template": str | null, "index": int, "inputs": str, "targets": str,
   "prediction": str, "answer_choices": [str, ...]}

`index` is the example's position among the task's evaluated examples (the first
`max_examples_per_task` of the split, in its fixed order), so (task, index) names the same
example in the predictions of any checkpoint evaluated with the same settings. `inputs` is
the rendered prompt text, `template` its template's name (null when the task does not say),
and `answer_choices` is present only for rank-classification tasks, where `prediction` is
one of them.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from typing import Any, Callable, IO, Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sft_jax.evaluation import metrics

TASK_KINDS = ("generation", "classification")
_SUMMARY_FIELDS = ("clusters", "seen_clusters", "heldout_mean", "seen_mean")
TEMPLATE_FIELDS = ("templates", "template_mean", "template_median")
PREDICTIONS_FILE = "predictions.jsonl"
CURVE_SOURCES = ("evaluated", "periodic")
PREDICTION_FIELDS = ("task", "template", "index", "inputs", "targets", "prediction", "answer_choices")


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


TemplateScores = Mapping[str, Mapping[str, Mapping[str, float]]]  # task -> template -> metric -> value


def aggregate_templates(template_scores: TemplateScores) -> dict[str, dict[str, float]]:
  """Each task's primary metric over its templates: FLAN's mean and T0's median."""
  out: dict[str, dict[str, float]] = {"template_mean": {}, "template_median": {}}
  for task, by_template in sorted(template_scores.items()):
    if not by_template:
      raise ValueError(f"templates.{task}: no templates")
    values = [metrics.primary_metric(s) for _, s in sorted(by_template.items())]
    out["template_mean"][task] = _mean(values)
    out["template_median"][task] = float(statistics.median(values))
  return out


def _plain_scores(scores: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
  # Plain dicts of floats, so the report equals its own JSON round trip.
  return {t: {m: float(v) for m, v in s.items()} for t, s in sorted(scores.items())}


def _scored_side(task_scores: Mapping[str, Mapping[str, float]], task_info: Mapping[str, Mapping],
                 template_scores: TemplateScores | None) -> dict[str, Any]:
  """The score fields one checkpoint contributes to a report (trained or baseline)."""
  side = {"tasks": _plain_scores(task_scores), **summarize(task_scores, task_info)}
  if template_scores is not None:
    unknown = sorted(set(template_scores) - set(task_scores))
    if unknown:
      raise ValueError(f"template scores for tasks that have no task scores: {unknown}")
    side["templates"] = {t: _plain_scores(s) for t, s in sorted(template_scores.items())}
    side.update(aggregate_templates(template_scores))
  return side


def build_report(step: int,
                 model_dir: str,
                 task_scores: Mapping[str, Mapping[str, float]],
                 task_info: Mapping[str, Mapping],
                 baseline_step: int,
                 baseline_task_scores: Mapping[str, Mapping[str, float]],
                 template_scores: TemplateScores | None = None,
                 baseline_template_scores: TemplateScores | None = None) -> dict[str, Any]:
  """Builds the report dict for a checkpoint and its baseline, scored on the same tasks.

  `template_scores` (task -> template -> metrics) adds the per-template fields; tasks
  without template names are left out of them.
  """
  if set(baseline_task_scores) != set(task_scores):
    raise ValueError(
        "baseline and trained checkpoint must be scored on the same tasks; only trained: "
        f"{sorted(set(task_scores) - set(baseline_task_scores))}, only baseline: "
        f"{sorted(set(baseline_task_scores) - set(task_scores))}")
  report = {
      "step": int(step),
      "model_dir": str(model_dir),
      "task_info": {t: dict(info) for t, info in sorted(task_info.items())},
      **_scored_side(task_scores, task_info, template_scores),
      "baseline": {"step": int(baseline_step),
                   **_scored_side(baseline_task_scores, task_info, baseline_template_scores)},
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
  _check_templates(report, path)


def _check_templates(report: Mapping, path: str) -> None:
  # Optional as a group: reports written before per-template scoring have none of them.
  present = [f for f in TEMPLATE_FIELDS if f in report]
  if not present:
    return
  for field in TEMPLATE_FIELDS:
    _require(report, field, path)
  templates = report["templates"]
  if not isinstance(templates, Mapping):
    raise ValueError(f"{path}.templates: expected mapping, got {_type_name(templates)}")
  for task, by_template in templates.items():
    if task not in report["tasks"]:
      raise ValueError(f"{path}.templates.{task}: not a task of {path}.tasks")
    _check_task_scores(by_template, f"{path}.templates.{task}")
  for field in ("template_mean", "template_median"):
    _check_float_map(report[field], f"{path}.{field}")
    if set(report[field]) != set(templates):
      raise ValueError(f"{path}.{field}: names tasks {sorted(report[field])} "
                       f"but {path}.templates has {sorted(templates)}")


def _check_learning_curve(report: Mapping) -> None:
  if "learning_curve_png" in report:
    _check_str(report["learning_curve_png"], "report.learning_curve_png")
  if "learning_curve" not in report:
    return
  rows = report["learning_curve"]
  if not isinstance(rows, Sequence) or isinstance(rows, str):
    raise ValueError(f"report.learning_curve: expected list, got {_type_name(rows)}")
  for i, row in enumerate(rows):
    path = f"report.learning_curve[{i}]"
    if not isinstance(row, Mapping):
      raise ValueError(f"{path}: expected mapping, got {_type_name(row)}")
    _check_int(_require(row, "step", path), f"{path}.step")
    if _require(row, "source", path) not in CURVE_SOURCES:
      raise ValueError(f"{path}.source: expected one of {CURVE_SOURCES}, got {row['source']!r}")
    for field in ("heldout_mean", "seen_mean", *(("train_loss",) if "train_loss" in row else ())):
      _check_float(_require(row, field, path), f"{path}.{field}")


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
  _check_learning_curve(report)


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


def md_table(header: list[str], rows: list[list[object]]) -> list[str]:
  """Lines of a Markdown table; `|` inside a cell is escaped."""
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


def _task_order(report: Mapping) -> list[tuple[str, Mapping]]:
  # Held-out tasks first: they are what the report is about.
  return sorted(report["task_info"].items(),
                key=lambda kv: (not kv[1]["heldout"], kv[1]["cluster"], kv[0]))


def _split_name(heldout: bool) -> str:
  return "held-out" if heldout else "seen"


def _fmt_opt(x: float | None) -> str:
  return "—" if x is None else _fmt(x)


def _prompt_tables(report: Mapping, trained_col: str, base_col: str) -> list[str]:
  """Markdown for the over-prompts aggregates: per cluster, then per task."""
  base = report["baseline"]
  templated = [(t, info) for t, info in _task_order(report) if t in report["templates"]]
  groups: dict[tuple[bool, str], list[str]] = {}
  for task, info in templated:
    groups.setdefault((not info["heldout"], info["cluster"]), []).append(task)

  def cluster_mean(side: Mapping, field: str, tasks: list[str]) -> float | None:
    values = side.get(field, {})
    return _mean([values[t] for t in tasks]) if all(t in values for t in tasks) else None

  cluster_rows = []
  for (seen, cluster), tasks in sorted(groups.items()):
    cluster_rows.append([cluster, _split_name(not seen), len(tasks)] + [
        _fmt_opt(cluster_mean(side, field, tasks))
        for side in (report, base) for field in ("template_mean", "template_median")])
  task_rows = []
  for task, info in templated:
    task_rows.append([task, info["cluster"], _split_name(info["heldout"]), len(report["templates"][task])] + [
        _fmt_opt(side.get(field, {}).get(task))
        for side in (report, base) for field in ("template_mean", "template_median")])
  value_cols = [f"mean {trained_col}", f"median {trained_col}", f"mean {base_col}", f"median {base_col}"]
  lines = ["", "## Over prompts", "",
           "Each task's primary metric per template, aggregated over its templates: the mean "
           "(as FLAN reports) and the median (as T0 reports). Cluster rows average those over "
           "the cluster's tasks.", "", "### Clusters", ""]
  lines += md_table(["cluster", "split", "tasks"] + value_cols, cluster_rows)
  lines += ["", "### Tasks", ""]
  lines += md_table(["task", "cluster", "split", "templates"] + value_cols, task_rows)
  return lines


def _template_tables(report: Mapping, trained_col: str, base_col: str) -> list[str]:
  """Markdown with one table per cluster: every template of its tasks, trained vs baseline."""
  base_templates = report["baseline"].get("templates", {})
  lines = ["", "## Templates", ""]
  groups: dict[tuple[bool, str], list[list[object]]] = {}
  for task, info in _task_order(report):
    for template, scores in sorted(report["templates"].get(task, {}).items()):
      metric = metrics.primary_metric_name(scores)
      base_score = base_templates.get(task, {}).get(template, {}).get(metric)
      delta = "—" if base_score is None else _fmt_delta(scores[metric] - base_score)
      groups.setdefault((not info["heldout"], info["cluster"]), []).append(
          [task, template, metric, _fmt(scores[metric]), _fmt_opt(base_score), delta])
  for (seen, cluster), rows in sorted(groups.items()):
    lines += [f"### {cluster} ({_split_name(not seen)})", ""]
    lines += md_table(["task", "template", "metric", trained_col, base_col, "delta"], rows)
    lines += [""]
  return lines[:-1]


def render_markdown(report: Mapping) -> str:
  """Renders a validated report as Markdown: summary, cluster, task and per-template tables."""
  base = report["baseline"]
  trained_col, base_col = f"step {report['step']}", f"baseline (step {base['step']})"
  lines = [f"# Evaluation report: step {report['step']}", "",
           f"Checkpoint: `{report['model_dir']}`", "",
           "Means are macro averages over tasks of each task's primary metric "
           f"({' / '.join(metrics.PRIMARY_METRICS)}; ROUGE-L, reported in percent, enters means "
           "divided by 100).", "", "## Summary", ""]
  lines += md_table(["", trained_col, base_col, "delta"], [
      ["held-out tasks mean", _fmt(report["heldout_mean"]), _fmt(base["heldout_mean"]),
       _fmt_delta(report["heldout_mean"] - base["heldout_mean"])],
      ["seen tasks mean (new instances)", _fmt(report["seen_mean"]), _fmt(base["seen_mean"]),
       _fmt_delta(report["seen_mean"] - base["seen_mean"])],
  ])
  cluster_header = ["cluster", "tasks", trained_col, base_col, "delta"]
  lines += ["", "## Held-out clusters", ""]
  lines += md_table(cluster_header, _cluster_rows(report, "clusters", heldout=True))
  lines += ["", "## Seen clusters (new instances)", ""]
  lines += md_table(cluster_header, _cluster_rows(report, "seen_clusters", heldout=False))

  task_rows = []
  for task, info in _task_order(report):
    scores, base_scores = report["tasks"][task], base["tasks"][task]
    metric = metrics.primary_metric_name(scores)
    base_score = base_scores.get(metric, math.nan)
    task_rows.append([task, info["cluster"], _split_name(info["heldout"]),
                      info["kind"], metric, _fmt(scores[metric]), _fmt(base_score),
                      info["num_examples"]])
  lines += ["", "## Tasks", ""]
  lines += md_table(["task", "cluster", "split", "kind", "metric", trained_col, base_col, "n"],
                     task_rows)
  if report.get("templates"):
    lines += _prompt_tables(report, trained_col, base_col)
    lines += _template_tables(report, trained_col, base_col)
  if report.get("learning_curve"):
    lines += _learning_curve_section(report)
  return "\n".join(lines) + "\n"


def _learning_curve_section(report: Mapping) -> list[str]:
  lines = ["", "## Learning curve", "",
           "`evaluated`: scored by this evaluation; `periodic`: logged by the trainer's periodic "
           "evaluation on its own sample of examples per task.", ""]
  if report.get("learning_curve_png"):
    lines += [f"![learning curve]({report['learning_curve_png']})", ""]
  rows = [[row["step"], row["source"], _fmt(row["heldout_mean"]), _fmt(row["seen_mean"]),
           _fmt(row["train_loss"]) if "train_loss" in row else ""] for row in report["learning_curve"]]
  return lines + md_table(["step", "source", "held-out mean", "seen mean", "train loss"], rows)


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
# Predictions
# ---------------------------------------------------------------------------


def validate_prediction(record: object, path: str) -> None:
  """Raises ValueError naming the first missing, ill-typed or unknown field of a prediction record."""
  if not isinstance(record, Mapping):
    raise ValueError(f"{path}: expected a JSON object, got {_type_name(record)}")
  unknown = sorted(set(record) - set(PREDICTION_FIELDS))
  if unknown:
    raise ValueError(f"{path}: unknown fields {unknown}; expected {list(PREDICTION_FIELDS)}")
  for field in ("task", "inputs", "targets", "prediction"):
    _check_str(_require(record, field, path), f"{path}.{field}")
  template = _require(record, "template", path)
  if template is not None:
    _check_str(template, f"{path}.template")
  index = _require(record, "index", path)
  _check_int(index, f"{path}.index")
  if index < 0:
    raise ValueError(f"{path}.index: expected >= 0, got {index}")
  if "answer_choices" in record:
    choices = record["answer_choices"]
    if not isinstance(choices, list) or not choices:
      raise ValueError(f"{path}.answer_choices: expected a non-empty list of str")
    for k, choice in enumerate(choices):
      _check_str(choice, f"{path}.answer_choices[{k}]")


def _check_predictions(records: Sequence[Mapping], tasks: Iterable[str]) -> None:
  known, seen = set(tasks), set()
  for k, record in enumerate(records):
    path = f"predictions[{k}]"
    validate_prediction(record, path)
    if record["task"] not in known:
      raise ValueError(f"{path}.task: {record['task']!r} is not a task of the report")
    key = (record["task"], record["index"])
    if key in seen:
      raise ValueError(f"{path}: a second prediction for task {key[0]!r}, index {key[1]}")
    seen.add(key)


def read_predictions(path: str) -> list[dict]:
  """The records of a predictions.jsonl file; a malformed line fails with `path:line`."""
  records = []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number}: not valid JSON ({e.msg})") from e
      try:
        validate_prediction(record, "record")
      except ValueError as e:
        raise ValueError(f"{path}:{line_number}: {e}") from None
      records.append(record)
  return records


def _predictions_text(records: Sequence[Mapping]) -> str:
  # Fields in the documented order; non-ASCII prompts stay readable.
  lines = [json.dumps({f: r[f] for f in PREDICTION_FIELDS if f in r}, ensure_ascii=False)
           for r in records]
  return "".join(line + "\n" for line in lines)


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


def write_atomically(out_dir: str, writers: Mapping[str, Callable[[IO[bytes]], None]]) -> dict[str, str]:
  """Writes each file name of `writers` in `out_dir`; returns {name: path}.

  Everything is rendered before anything is replaced, so a failure (say, in plotting)
  leaves the previous files whole rather than a new JSON next to an old plot.
  """
  os.makedirs(out_dir, exist_ok=True)
  temps: dict[str, str] = {}
  try:
    for name, write in writers.items():
      temps[name] = _write_temp(out_dir, name, write)
  except BaseException:
    for tmp_path in temps.values():
      os.unlink(tmp_path)
    raise
  paths = {}
  for name in writers:
    paths[name] = os.path.join(out_dir, name)
    os.replace(temps[name], paths[name])
  return paths


def write_report(report: Mapping, out_dir: str,
                 predictions: Sequence[Mapping] | None = None) -> dict[str, str]:
  """Validates `report` (and `predictions`), then atomically writes report.json, .md, .png
  (and predictions.jsonl) into `out_dir`; returns their paths by kind."""
  validate_report(report)
  json_text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"
  md_text = render_markdown(report)
  files: dict[str, tuple[str, Callable[[IO[bytes]], None]]] = {
      "json": ("report.json", lambda f: f.write(json_text.encode("utf-8"))),
      "md": ("report.md", lambda f: f.write(md_text.encode("utf-8"))),
      "png": ("report.png", lambda f: render_png(report, f)),
  }
  if predictions is not None:
    _check_predictions(predictions, report["tasks"])
    predictions_text = _predictions_text(predictions)
    files["predictions"] = (PREDICTIONS_FILE, lambda f: f.write(predictions_text.encode("utf-8")))
  paths = write_atomically(out_dir, {name: write for name, write in files.values()})
  return {key: paths[name] for key, (name, _) in files.items()}
