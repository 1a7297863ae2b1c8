"""gin flag handling of the tools."""

import pytest

from sft_jax import config


def test_split_gin_args_rewrites_dotted_flags():
  files, bindings, paths, rest = config.split_gin_args(
      ["--gin_file=a.gin", "--gin.MODEL_DIR='runs/x'", "--gin.train.batch_size=8",
       "--gin_search_paths=p1,p2", "--other=1"])
  assert files == ["a.gin"]
  assert bindings == ["MODEL_DIR = 'runs/x'", "train.batch_size = 8"]
  assert paths == ["p1", "p2"] and rest == ["--other=1"]


def test_gin_flag_without_value_is_an_error():
  with pytest.raises(ValueError, match="--gin.MODEL_DIR"):
    config.split_gin_args(["--gin.MODEL_DIR"])


@pytest.mark.parametrize("run_file,required", [
    ("gin_configs/runs/quickstart.gin", "--gin.MODEL_DIR='runs/qs'"),
    ("gin_configs/runs/quickstart_eval.gin", "--gin.CHECKPOINT='runs/qs'"),
    ("gin_configs/runs/quickstart_8k.gin", "--gin.MODEL_DIR='runs/qs8k'"),
    ("gin_configs/runs/quickstart_adamw.gin", "--gin.MODEL_DIR='runs/qs_adamw'"),
])
def test_readme_run_files_parse(run_file, required):
  """The run files the README's quickstart commands name are in the tree and bind cleanly."""
  import os

  import gin

  from sft_jax.train import optimizers  # noqa: F401  (registers the configurables they bind)

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  gin.clear_config()
  try:
    config.parse_gin_flags([f"--gin_file={os.path.join(repo, run_file)}", required])
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "synthetic_instructions"
    if run_file.endswith("_8k.gin"):
      assert gin.query_parameter("%TRAIN_STEPS") == 8000
    # The quickstart trains with Muon; the recipes whose README figures came from AdamW keep it.
    optimizer = "muon" if run_file.endswith("quickstart.gin") else "adamw"
    if "_eval" not in run_file:
      assert gin.query_parameter("create_optimizer.name") == optimizer
  finally:
    gin.clear_config()
