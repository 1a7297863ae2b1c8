"""Learning curves: from reports, from logged metrics, and `tools/eval_heldout.py --all_steps` end to end."""

import importlib.util
import json
import os
import pathlib

import gin
import matplotlib.image
import pytest

from sft_jax.data import mixtures
from sft_jax.data.collections import synthetic, synthetic_vocab
from sft_jax.evaluation import curves, report
from sft_jax.models import t5
from sft_jax.train import checkpoints, partitioning
from sft_jax.train import state as state_lib

_ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY_CONFIG = dict(vocab_size=synthetic_vocab.VOCAB_SIZE, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                   num_encoder_layers=1, num_decoder_layers=1)
# Two tasks the synthetic mixture already holds out or trains on, so no training mixture conflicts.
TINY_SPLIT = mixtures.declare_heldout_split(mixtures.HeldoutSplit("test_curves.tiny", (
    mixtures.EvalTask(synthetic.TASK_PREFIX + "pick_largest_number", "option_selection", True, "classification"),
    mixtures.EvalTask(synthetic.TASK_PREFIX + "add_one", "arithmetic", False, "generation"),
)))


def _summary(heldout, seen, clusters, seen_clusters):
  return {"heldout_mean": heldout, "seen_mean": seen, "clusters": clusters, "seen_clusters": seen_clusters}


def _report(step, summary, baseline_step=0, baseline=None):
  return {"step": step, **summary, "baseline": {"step": baseline_step, **(baseline or _summary(0.1, 0.2, {}, {}))}}


def _load_tool():
  spec = importlib.util.spec_from_file_location("eval_heldout", _ROOT / "tools" / "eval_heldout.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run_tool(args):
  gin.clear_config()
  try:
    _load_tool().main(args)
  finally:
    gin.clear_config()


def test_curve_from_reports_puts_the_baseline_at_its_step():
  base = _summary(0.125, 0.25, {"nli": 0.125}, {"qa": 0.25})
  reports = [_report(20, _summary(0.5, 0.75, {"nli": 0.5}, {"qa": 0.75}), baseline=base),
             _report(100, _summary(0.625, 1.0, {"nli": 0.625}, {"qa": 1.0}), baseline=base)]
  curve = curves.curve_from_reports(reports)
  assert list(curve) == [0, 20, 100]
  assert curve[0] == base and curve[100] == _summary(0.625, 1.0, {"nli": 0.625}, {"qa": 1.0})
  with pytest.raises(ValueError, match="different baselines"):
    curves.curve_from_reports(reports + [_report(200, base, baseline_step=5)])


def test_write_and_load_curve_keep_numeric_step_order(tmp_path):
  curve = {step: _summary(step / 1000, 1 - step / 1000, {"c": 0.5}, {}) for step in (100, 0, 20)}
  paths = curves.write_learning_curve(curve, str(tmp_path), title="run")
  assert paths == {"json": str(tmp_path / "learning_curve.json"), "png": str(tmp_path / "learning_curve.png")}
  assert list(json.loads((tmp_path / "learning_curve.json").read_text())) == ["0", "20", "100"]
  assert curves.load_curve(paths["json"]) == dict(sorted(curve.items()))
  image = matplotlib.image.imread(paths["png"])
  assert image.shape[0] >= 300 and image.std() > 0.05
  with pytest.raises(ValueError, match="curve.20.seen_clusters: missing"):
    curves.validate_curve({20: {"heldout_mean": 0.1, "seen_mean": 0.2, "clusters": {}}})
  with pytest.raises(ValueError, match="curve.20.clusters.c: expected a finite float"):
    curves.validate_curve({20: _summary(0.1, 0.2, {"c": float("nan")}, {})})


def _write_metrics(model_dir, lines):
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(line) + "\n" for line in lines))


def test_logged_curve_from_metrics_jsonl_through_the_tool(tmp_path, capsys):
  model_dir = str(tmp_path / "run")
  _write_metrics(model_dir, [
      {"step": 500, "loss": 2.0},
      {"step": 500, "eval/seen_mean": 0.5, "eval/heldout_mean": 0.25, "eval/heldout_cluster/nli": 0.25,
       "eval/seen_cluster/qa": 0.5, "eval/task/rte": 0.25},
      {"step": 1000, "eval/seen_mean": 0.125, "eval/heldout_mean": 0.125, "eval/heldout_cluster/nli": 0.125,
       "eval/seen_cluster/qa": 0.125},
      # The run resumed from step 500 and logged step 1000 again: the later line wins.
      {"step": 1000, "eval/seen_mean": 0.75, "eval/heldout_mean": 0.375, "eval/heldout_cluster/nli": 0.375,
       "eval/seen_cluster/qa": 0.75},
  ])
  gin_file = tmp_path / "curve.gin"
  gin_file.write_text(f"import sft_jax.evaluation.curves\nlogged_learning_curve.model_dir = {model_dir!r}\n")
  _run_tool([f"--gin_file={gin_file}", "--from_metrics"])
  assert capsys.readouterr().out.splitlines() == ["step 500: seen_mean 0.500, heldout_mean 0.250",
                                                  "step 1000: seen_mean 0.750, heldout_mean 0.375"]
  curve = curves.load_curve(os.path.join(model_dir, "eval", "learning_curve_logged.json"))
  assert curve == {500: _summary(0.25, 0.5, {"nli": 0.25}, {"qa": 0.5}),
                   1000: _summary(0.375, 0.75, {"nli": 0.375}, {"qa": 0.75})}
  assert os.path.exists(os.path.join(model_dir, "eval", "learning_curve_logged.png"))

  _write_metrics(model_dir, [{"step": 500, "loss": 2.0}])
  with pytest.raises(ValueError, match="no periodic-evaluation scalars.*periodic_eval.gin"):
    curves.logged_learning_curve(model_dir=model_dir)


def test_report_rows_interleave_evaluated_and_logged_points_with_the_training_loss():
  evaluated = {0: _summary(0.1, 0.2, {}, {}), 1000: _summary(0.5, 0.75, {}, {})}
  logged = {1000: _summary(0.375, 0.625, {}, {}), 500: _summary(0.25, 0.5, {}, {})}
  rows = curves.report_rows(evaluated, logged, {500: 2.0, 1000: 1.25, 7: 9.0})
  assert rows == [
      {"step": 0, "source": "evaluated", "heldout_mean": 0.1, "seen_mean": 0.2},
      {"step": 500, "source": "periodic", "heldout_mean": 0.25, "seen_mean": 0.5, "train_loss": 2.0},
      {"step": 1000, "source": "evaluated", "heldout_mean": 0.5, "seen_mean": 0.75, "train_loss": 1.25},
      {"step": 1000, "source": "periodic", "heldout_mean": 0.375, "seen_mean": 0.625, "train_loss": 1.25},
  ]
  assert curves.report_rows(evaluated) == rows[:1] + [{k: v for k, v in rows[2].items() if k != "train_loss"}]


def test_all_steps_evaluates_every_checkpoint_and_draws_the_curve(tmp_path, capsys):
  model_dir, out_dir = str(tmp_path / "run"), tmp_path / "eval_out"
  model = t5.EncoderDecoderModel(t5.T5Config(**TINY_CONFIG))
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  checkpointer = checkpoints.Checkpointer(model_dir, async_save=False)
  for step, seed in ((2, 1), (10, 2)):  # two "trained" states, neither the seed-0 baseline
    _, params = state_lib.init_params(model, seed, mesh, rules)
    checkpointer.save(step, {"params": params}, {"step": step})
  checkpointer.close()
  # The trainer's log: a periodic evaluation at step 5 and the loss at steps 5 and 10.
  _write_metrics(model_dir, [{"step": 5, "loss": 3.0},
                             {"step": 5, "eval/seen_mean": 0.5, "eval/heldout_mean": 0.25,
                              "eval/heldout_cluster/option_selection": 0.25, "eval/seen_cluster/arithmetic": 0.5},
                             {"step": 10, "loss": 2.5}])

  gin_file = tmp_path / "eval.gin"
  gin_file.write_text("\n".join([
      "include 'runs/eval.gin'",
      "MODEL = @t5.EncoderDecoderModel()",
      "t5.EncoderDecoderModel.config = @t5.T5Config()",
      *[f"t5.T5Config.{k} = {v}" for k, v in TINY_CONFIG.items()],
      f"MIXTURE_OR_TASK_NAME = '{TINY_SPLIT.mixture_name}'",
      f"CHECKPOINT = '{model_dir}'",
      f"evaluate_heldout.out_dir = '{out_dir}'",
      "evaluate_heldout.max_examples_per_task = 3",
      "evaluate_heldout.batch_size = 8",
      "evaluate_heldout.input_length = 128",
      "evaluate_heldout.target_length = 4",
  ]) + "\n")
  _run_tool([f"--gin_file={gin_file}", "--all_steps"])
  assert capsys.readouterr().out.startswith("step 10: seen_mean")

  files = ["predictions.jsonl", "report.json", "report.md", "report.png"]
  assert sorted(os.listdir(out_dir)) == sorted(files + ["learning_curve.json", "learning_curve.png",
                                                        "learning_curve_logged.json", "learning_curve_logged.png",
                                                        "step_10", "step_2"])
  reports = {}
  for step in (2, 10):
    assert sorted(os.listdir(out_dir / f"step_{step}")) == files
    reports[step] = json.loads((out_dir / f"step_{step}" / "report.json").read_text())
    report.validate_report(reports[step])
    assert reports[step]["step"] == step
    assert len(report.read_predictions(str(out_dir / f"step_{step}" / "predictions.jsonl"))) == 2 * 3
  # The latest step is also the report in out_dir; the baseline was scored once for all steps.
  # ... with the learning curve of every evaluated step, and the plot named in it.
  final = json.loads((out_dir / "report.json").read_text())
  report.validate_report(final)
  assert {k: v for k, v in final.items() if not k.startswith("learning_curve")} == reports[10]
  assert final["learning_curve_png"] == "learning_curve.png"
  assert final["learning_curve"] == [
      {"step": 0, "source": "evaluated", "heldout_mean": reports[10]["baseline"]["heldout_mean"],
       "seen_mean": reports[10]["baseline"]["seen_mean"]},
      {"step": 2, "source": "evaluated", "heldout_mean": reports[2]["heldout_mean"],
       "seen_mean": reports[2]["seen_mean"]},
      {"step": 5, "source": "periodic", "heldout_mean": 0.25, "seen_mean": 0.5, "train_loss": 3.0},
      {"step": 10, "source": "evaluated", "heldout_mean": reports[10]["heldout_mean"],
       "seen_mean": reports[10]["seen_mean"], "train_loss": 2.5}]
  assert "## Learning curve" in (out_dir / "report.md").read_text()
  assert (out_dir / "predictions.jsonl").read_text() == (out_dir / "step_10" / "predictions.jsonl").read_text()
  assert reports[2]["baseline"] == reports[10]["baseline"]
  # Each step was scored with its own parameters.
  assert ((out_dir / "step_2" / "predictions.jsonl").read_text()
          != (out_dir / "step_10" / "predictions.jsonl").read_text())

  curve = curves.load_curve(str(out_dir / "learning_curve.json"))
  assert list(curve) == [0, 2, 10]
  assert curve[0] == curves.curve_point(reports[10]["baseline"])
  for step in (2, 10):
    assert curve[step] == curves.curve_point(reports[step])
    assert set(curve[step]["clusters"]) == {"option_selection"} and set(curve[step]["seen_clusters"]) == {
        "arithmetic"}
