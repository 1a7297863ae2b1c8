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
