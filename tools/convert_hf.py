"""Converts checkpoints between Hugging Face directories and sft_jax model directories.

T5ForConditionalGeneration (T5 v1.0, v1.1, Flan-T5) and LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM, chosen by config.json's `architectures`.

  python tools/convert_hf.py --from_hf=path/to/flan-t5-base --to=runs/flan_t5_base
  python tools/convert_hf.py --from=runs/flan_t5_base --to_hf=path/to/hf_dir

Import writes config.gin (the model: `--gin_file=runs/flan_t5_base/config.gin`), an orbax
checkpoint at step 0 and hf/ (config.json and tokenizer files). Export writes config.json,
model.safetensors (sharded past --max_shard_gb) and the tokenizer files.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sft_jax import config  # noqa: E402
from sft_jax.models import hf_io  # noqa: E402
from sft_jax.train import partitioning  # noqa: E402


def main(argv: list[str]) -> str | list[str]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--from_hf", help="Hugging Face model directory to import (with --to)")
  parser.add_argument("--to", help="sft_jax model directory to write")
  parser.add_argument("--from", dest="from_dir", help="sft_jax model directory to export (with --to_hf)")
  parser.add_argument("--to_hf", help="Hugging Face directory to write")
  parser.add_argument("--step", type=int, help="checkpoint step to export (default: latest)")
  parser.add_argument("--param_dtype", default="float32", help="dtype of imported parameters")
  parser.add_argument("--dtype", help="dtype of exported tensors (default: the parameters')")
  parser.add_argument("--max_shard_gb", type=float, default=5.0, help="largest exported safetensors file")
  args = parser.parse_args(argv)
  importing, exporting = bool(args.from_hf and args.to), bool(args.from_dir and args.to_hf)
  if importing == exporting or (importing and (args.from_dir or args.to_hf)) or (
      exporting and (args.from_hf or args.to)):
    parser.error("give either --from_hf=HF_DIR --to=MODEL_DIR (import) or --from=MODEL_DIR --to_hf=HF_DIR (export)")
  config.setup_logging()
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  if exporting:
    result = hf_io.export_checkpoint(args.from_dir, args.to_hf, mesh=mesh, rules=rules, step=args.step,
                                     dtype=args.dtype, max_shard_bytes=int(args.max_shard_gb * (1 << 30)))
  else:
    result = hf_io.convert_to_checkpoint(args.from_hf, args.to, mesh=mesh, rules=rules,
                                         param_dtype=args.param_dtype)
  print(result)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
