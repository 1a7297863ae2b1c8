"""lm-eval-harness with the sft_jax model backend: every flag is lm-eval's own.

  python tools/run_lm_eval.py --model sft_jax --model_args checkpoint=path/to/model_dir \
      --tasks hellaswag,arc_easy --batch_size 32 --log_samples --output_path out/

`checkpoint` is an sft_jax model directory (tools/convert_hf.py, tools/train.py) or a Hugging
Face model directory; other model args: max_length, max_gen_toks, step, vocabulary,
chat_template, fsdp, tensor (see sft_jax.evaluation.lm_eval_adapter). lm-eval has no plugin
entry point for model backends, so this script imports the adapter (which registers
"sft_jax") and then runs lm-eval's command line on the same arguments. Needs `pip install
-e .[lm_eval]`.

Multi-host: run it on every host (jax.distributed starts from the environment, as in
tools/train.py). Every process evaluates every request; only process 0 writes results.
"""

import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sft_jax.train import distributed  # noqa: E402


def main(argv: list[str]) -> None:
  distributed.initialize()
  import jax  # noqa: PLC0415
  if jax.process_count() > 1:
    # lm-eval sees one process per host (each runs all requests); like a tensor-parallel
    # launch, only LOCAL_RANK 0 builds and writes results, and each process gets its own cache.
    os.environ["LOCAL_RANK"] = str(jax.process_index())
  # lm-eval is imported only here, so the rest of sft_jax never needs it; importing the adapter
  # registers the "sft_jax" backend.
  importlib.import_module("sft_jax.evaluation.lm_eval_adapter")
  from lm_eval.__main__ import cli_evaluate  # noqa: PLC0415
  # lm-eval's command line reads sys.argv.
  sys.argv = [sys.argv[0] if sys.argv else "run_lm_eval.py", *argv]
  cli_evaluate()


if __name__ == "__main__":
  main(sys.argv[1:])
