"""Learning curves: held-out and seen means of a run against the training step.

`learning_curve.json` maps each step (a decimal string, steps ascending) to its summary:

  {"<step>": {"heldout_mean": float, "seen_mean": float,
              "clusters": {name: float}, "seen_clusters": {name: float}}}

with the fields of report.json (`clusters` are the held-out clusters). A curve comes from
evaluation reports (`tools/eval_heldout.py --all_steps`; step 0 is the baseline they share)
or from the periodic-evaluation scalars a run logged to metrics.jsonl, without evaluating
anything again. That second curve is scored on the trainer's own sample of examples
(`PeriodicEvaluator.max_examples_per_task`), and the trainer never scores its step-0
model, so it starts at the first evaluated step; it is written as
`learning_curve_logged.{json,png}` to stay apart from the evaluated curve.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, IO, Mapping, Sequence

import gin
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sft_jax.evaluation import report as report_lib
from sft_jax.train import metrics as train_metrics

CURVE_FILE = "learning_curve"
LOGGED_CURVE_FILE = "learning_curve_logged"
MEANS = ("heldout_mean", "seen_mean")
CLUSTER_FIELDS = ("clusters", "seen_clusters")
# metrics.jsonl names of the PeriodicEvaluator scalars behind each curve field.
_LOGGED_MEANS = {"heldout_mean": "eval/heldout_mean", "seen_mean": "eval/seen_mean"}
_LOGGED_CLUSTERS = {"clusters": "eval/heldout_cluster/", "seen_clusters": "eval/seen_cluster/"}

Curve = dict[int, dict[str, Any]]


def curve_point(summary: Mapping[str, Any]) -> dict[str, Any]:
  """The curve fields of a report (or of its baseline)."""
  return {**{m: float(summary[m]) for m in MEANS},
          **{c: {k: float(v) for k, v in sorted(summary[c].items())} for c in CLUSTER_FIELDS}}


def curve_from_reports(reports: Sequence[Mapping[str, Any]]) -> Curve:
  """{step: summary} of evaluation reports of one run, their shared baseline included."""
  if not reports:
    raise ValueError("no reports to draw a learning curve from")
  baseline = reports[0]["baseline"]
  curve = {int(baseline["step"]): curve_point(baseline)}
  for report in reports:
    if report["baseline"]["step"] != baseline["step"]:
      raise ValueError(f"reports of steps {reports[0]['step']} and {report['step']} have different baselines")
    curve[int(report["step"])] = curve_point(report)  # a real checkpoint at the baseline's step wins
  return dict(sorted(curve.items()))


def curve_from_metrics(scalars: Mapping[str, Mapping[int, float]]) -> Curve:
  """{step: summary} of the periodic-evaluation scalars in `train.metrics.read_metrics` form."""
  logged = [set(scalars.get(name, {})) for name in _LOGGED_MEANS.values()]
  steps = sorted(set.intersection(*logged))
  if not steps:
    raise ValueError(f"no periodic-evaluation scalars ({', '.join(_LOGGED_MEANS.values())}) in the metrics")
  curve: Curve = {}
  for step in steps:
    point: dict[str, Any] = {field: float(scalars[name][step]) for field, name in _LOGGED_MEANS.items()}
    for field, prefix in _LOGGED_CLUSTERS.items():
      point[field] = {name[len(prefix):]: float(values[step]) for name, values in sorted(scalars.items())
                      if name.startswith(prefix) and step in values}
    curve[int(step)] = point
  return curve


def _check_number(value: object, path: str) -> None:
  # bool is an int subclass, and NaN is no JSON: both would corrupt the plot silently.
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"{path}: expected a finite float, got {value!r}")


def validate_curve(curve: Mapping[int, Mapping[str, Any]]) -> None:
  """Raises ValueError naming the first missing or ill-typed field of a curve."""
  if not curve:
    raise ValueError("learning curve: no steps")
  for step, point in curve.items():
    if isinstance(step, bool) or not isinstance(step, int):
      raise ValueError(f"learning curve step {step!r}: expected int")
    if not isinstance(point, Mapping):
      raise ValueError(f"curve.{step}: expected mapping, got {type(point).__name__}")
    for field in MEANS + CLUSTER_FIELDS:
      if field not in point:
        raise ValueError(f"curve.{step}.{field}: missing")
    for mean in MEANS:
      _check_number(point[mean], f"curve.{step}.{mean}")
    for field in CLUSTER_FIELDS:
      if not isinstance(point[field], Mapping):
        raise ValueError(f"curve.{step}.{field}: expected mapping, got {type(point[field]).__name__}")
      for name, value in point[field].items():
        _check_number(value, f"curve.{step}.{field}.{name}")


def load_curve(path: str) -> Curve:
  """A learning_curve.json back as {step: summary}, validated."""
  with open(path, encoding="utf-8") as f:
    raw = json.load(f)
  try:
    curve = {int(step): point for step, point in raw.items()}
  except ValueError as e:
    raise ValueError(f"{path}: steps must be integers ({e})") from None
  try:
    validate_curve(curve)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  return dict(sorted(curve.items()))


def render_curve_png(curve: Curve, f: IO[bytes], title: str = "") -> None:
  """Draws the held-out and seen means (bold) and their clusters (thin) against the step."""
  steps = sorted(curve)
  fig = Figure(figsize=(9.0, 5.2), layout="constrained")
  FigureCanvasAgg(fig)  # Agg renders off-screen: no display, no pyplot global state.
  ax = fig.subplots()
  for mean, clusters, label, color in (("heldout_mean", "clusters", "held-out tasks", "#1f77b4"),
                                       ("seen_mean", "seen_clusters", "seen tasks (new instances)", "#ff7f0e")):
    names = sorted({name for s in steps for name in curve[s][clusters]})
    for name in names:
      xs = [s for s in steps if name in curve[s][clusters]]
      ax.plot(xs, [curve[s][clusters][name] for s in xs], color=color, alpha=0.25, linewidth=0.8)
    values = [curve[s][mean] for s in steps]
    ax.plot(steps, values, color=color, marker="o", linewidth=2.2, label=f"{label} mean")
    ax.annotate(f"{values[-1]:.3f}", (steps[-1], values[-1]), textcoords="offset points", xytext=(6, 0),
                va="center", fontsize=9, color=color)
  top = max([1.0] + [curve[s][m] for s in steps for m in MEANS])
  ax.set_ylim(0.0, top * 1.05)
  ax.margins(x=0.07)  # room for the last values' labels
  ax.set_xlabel("training step")
  ax.set_ylabel("mean primary metric")
  ax.grid(alpha=0.3)
  ax.legend(loc="upper left", frameon=False, title="thin lines: clusters", title_fontsize=8)
  if title:
    ax.set_title(title, fontsize=10)
  fig.savefig(f, format="png", dpi=120)


def write_learning_curve(curve: Curve, out_dir: str, name: str = CURVE_FILE, title: str = "") -> dict[str, str]:
  """Validates `curve`, then atomically writes `name`.json and `name`.png into `out_dir`."""
  validate_curve(curve)
  ordered = {str(step): curve[step] for step in sorted(curve)}  # numeric order; JSON keys are strings
  text = json.dumps(ordered, indent=2, allow_nan=False) + "\n"
  paths = report_lib.write_atomically(out_dir, {
      f"{name}.json": lambda f: f.write(text.encode("utf-8")),
      f"{name}.png": lambda f: render_curve_png(curve, f, title),
  })
  return {"json": paths[f"{name}.json"], "png": paths[f"{name}.png"]}


def summary_lines(curve: Curve) -> str:
  """One console line per step: both means."""
  return "\n".join(f"step {step}: seen_mean {p['seen_mean']:.3f}, heldout_mean {p['heldout_mean']:.3f}"
                   for step, p in sorted(curve.items()))


def read_run_scalars(model_dir: str) -> dict[str, dict[int, float]]:
  """A run's logged scalars ({name: {step: value}}), empty when it has no metrics file."""
  if not os.path.exists(os.path.join(model_dir, train_metrics.METRICS_FILE)):
    return {}
  return train_metrics.read_metrics(model_dir)


def logged_curve(scalars: Mapping[str, Mapping[int, float]]) -> Curve | None:
  """The curve of the periodic-evaluation scalars among `scalars`, or None when there are none."""
  try:
    return curve_from_metrics(scalars)
  except ValueError:
    return None


def report_rows(evaluated: Curve, logged: Curve | None = None,
                train_loss: Mapping[int, float] | None = None) -> list[dict[str, Any]]:
  """The rows of a report's `learning_curve` (see sft_jax.evaluation.report): the evaluated and the
  logged points by step (evaluated first at a shared step), with the training loss logged at that step."""
  train_loss = train_loss or {}
  rows = []
  for source, curve in (("evaluated", evaluated), ("periodic", logged or {})):
    for step, point in curve.items():
      row = {"step": int(step), "source": source, **{m: float(point[m]) for m in MEANS}}
      if step in train_loss:
        row["train_loss"] = float(train_loss[step])
      rows.append(row)
  return sorted(rows, key=lambda row: (row["step"], report_lib.CURVE_SOURCES.index(row["source"])))


@gin.configurable
def logged_learning_curve(model_dir: str = gin.REQUIRED, out_dir: str | None = None) -> Curve:
  """Draws the curve of a run's logged periodic-evaluation scalars (no re-evaluation) into
  `out_dir` (default `model_dir/eval`) as learning_curve_logged.{json,png}."""
  path = os.path.join(model_dir, train_metrics.METRICS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no metrics file; was {model_dir} trained by sft_jax?")
  curve = logged_curve(train_metrics.read_metrics(model_dir))
  if curve is None:
    raise ValueError(f"{path}: no periodic-evaluation scalars ({', '.join(_LOGGED_MEANS.values())}); "
                     "train with gin_configs/runs/periodic_eval.gin to log them")
  write_logged_curve(curve, model_dir, out_dir or os.path.join(model_dir, "eval"))
  return curve


def write_logged_curve(curve: Curve, model_dir: str, out_dir: str) -> dict[str, str]:
  """Writes a logged curve as learning_curve_logged.{json,png} into `out_dir`."""
  return write_learning_curve(curve, out_dir, LOGGED_CURVE_FILE,
                              title=f"{os.path.abspath(model_dir)}: periodic evaluation")
