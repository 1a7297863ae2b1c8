"""Attention throughput and memory: sft_jax's Pallas flash kernel vs jax.nn.dot_product_attention.

  python benchmarks/attention.py                 # GPU: lengths 1k-16k, head dims 64 and 128
  python benchmarks/attention.py --cpu_smoke     # tiny sizes; checks the script runs anywhere

Each cell times the jitted forward and forward+backward (gradients of q, k, v and, for the T5
cases, of the bias table) of one attention call over 16k tokens per batch (batch = 16384 / length,
heads = 2048 / head_dim), for these implementations side by side:

  sft_pallas  sft_jax.kernels.flash_attention (segment ids and the T5 table go into the kernel)
  jax_cudnn   jax.nn.dot_product_attention(implementation="cudnn"), GPU only
  jax_xla     jax.nn.dot_product_attention(implementation="xla")

jax.nn has no segment ids or T5 buckets: it gets the segment mask as a dense [B, 1, L, L] boolean
mask and the T5 bias materialized as [1, H, L, L] from the table (as the xla attention path
does). FLOPs: forward 4 * B * H * L^2 * D (two matmuls), halved when causal; forward+backward is
3.5x the forward (FlashAttention-2's convention: the backward's five matmuls, the recomputation of
q k^T included, count 2.5x). Peak memory
is XLA's compiled memory analysis of the forward and of the forward+backward program:
arguments + outputs + temporaries. Cells that fail (unsupported, out of memory) print the reason.
On CPU the kernel runs in Pallas interpret mode, so CPU figures say nothing about speed. Prints a
table and, last, one JSON line.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sft_jax.kernels import relative_position  # noqa: E402
from sft_jax.kernels.flash_attention import flash_attention  # noqa: E402

IMPLS = ("sft_pallas", "jax_cudnn", "jax_xla")
# (name, causal, segment ids, T5 bias table, T5 buckets bidirectional)
CASES = (("causal", True, False, False, False),
         ("causal+seg", True, True, False, False),
         ("causal+seg+t5", True, True, True, False),
         ("full+seg+t5", False, True, True, True))
NUM_BUCKETS, MAX_DISTANCE = 32, 128


def _segment_ids(batch: int, length: int) -> jax.Array:
  """Packed rows: examples of 1/8 to 1/2 of the row, then about 5% padding."""
  rng = np.random.default_rng(0)
  ids = np.zeros((batch, length), np.int32)
  for row in range(batch):
    start, segment, real = 0, 1, int(length * 0.95)
    while start < real:
      size = int(rng.integers(max(1, length // 8), max(2, length // 2)))
      ids[row, start:min(start + size, real)] = segment
      start, segment = start + size, segment + 1
  return jnp.asarray(ids)


def _attention_fn(impl: str, causal: bool, bidirectional: bool, block_q: int, block_k: int):
  """f(q, k, v, segment_ids, table) -> out for one implementation."""
  if impl == "sft_pallas":
    def pallas(q, k, v, seg, table):
      return flash_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal,
                             relative_bias_table=table, num_buckets=NUM_BUCKETS,
                             max_distance=MAX_DISTANCE, bidirectional=bidirectional,
                             block_q=block_q, block_k=block_k)
    return pallas

  def jax_nn(q, k, v, seg, table):
    mask = None if seg is None else ((seg[:, :, None] == seg[:, None, :])
                                     & (seg[:, None, :] != 0))[:, None]
    bias = None
    if table is not None:
      length = q.shape[1]
      bias = relative_position.relative_bias_from_table(
          table, length, length, bidirectional=bidirectional, num_buckets=NUM_BUCKETS,
          max_distance=MAX_DISTANCE)[None].astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal,
                                        implementation=impl.removeprefix("jax_"))
  return jax_nn


def _compile(fn, args):
  return jax.jit(fn).lower(*args).compile()


def _time(compiled, args, iters: int) -> float:
  """Median seconds per call after one warm-up call."""
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _peak_bytes(compiled) -> int:
  stats = compiled.memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def _measure(impl, case, length, head_dim, tokens, model_width, args):
  """One cell: TFLOP/s and peak bytes of forward and forward+backward, or {error}."""
  _, causal, segments, t5_bias, bidirectional = case
  batch, heads = max(1, tokens // length), max(1, model_width // head_dim)
  if impl == "jax_cudnn" and jax.default_backend() != "gpu":
    return {"error": "needs a GPU"}
  keys = jax.random.split(jax.random.key(0), 4)
  dtype = jnp.dtype(args.dtype)
  q, k, v = (jax.random.normal(key, (batch, length, heads, head_dim), dtype) for key in keys[:3])
  seg = _segment_ids(batch, length) if segments else None
  table = jax.random.normal(keys[3], (NUM_BUCKETS, heads), jnp.float32) if t5_bias else None
  attend = _attention_fn(impl, causal, bidirectional, args.block_q, args.block_k)
  wrt = (0, 1, 2, 3) if t5_bias else (0, 1, 2)
  inputs = (q, k, v, table)
  flops = 4 * batch * heads * length * length * head_dim * (0.5 if causal else 1.0)
  try:
    forward = _compile(lambda q, k, v, table: attend(q, k, v, seg, table), inputs)
    forward_backward = _compile(jax.grad(
        lambda q, k, v, table: jnp.sum(attend(q, k, v, seg, table).astype(jnp.float32)), wrt),
        inputs)
    fwd_s = _time(forward, inputs, args.iters)
    fwd_bwd_s = _time(forward_backward, inputs, args.iters)
  except Exception as e:  # pylint: disable=broad-except
    # One unsupported or out-of-memory cell must not end the sweep.
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"}
  return {"fwd_tflops": flops / fwd_s / 1e12, "fwd_bwd_tflops": 3.5 * flops / fwd_bwd_s / 1e12,
          "fwd_peak_bytes": _peak_bytes(forward),
          "fwd_bwd_peak_bytes": _peak_bytes(forward_backward), "batch": batch, "heads": heads}


def main(argv: list[str]) -> list[dict]:
  """Runs the sweep, prints the table and the JSON line; returns the result rows."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--cpu_smoke", action="store_true",
                      help="tiny sizes (lengths 64,128, head dim 32) that run on CPU")
  parser.add_argument("--seq_lens", help="comma-separated; default 1024,...,16384")
  parser.add_argument("--head_dims", help="comma-separated; default 64,128")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--block_q", type=int, default=128)
  parser.add_argument("--block_k", type=int, default=128)
  parser.add_argument("--iters", type=int, default=10)
  args = parser.parse_args(argv)
  tokens, model_width = 16384, 2048
  seq_lens, head_dims = "1024,2048,4096,8192,16384", "64,128"
  if args.cpu_smoke:
    seq_lens, head_dims, args.iters = "64,128", "32", 2
    args.block_q = args.block_k = 32
    tokens, model_width = 256, 64
  seq_lens = [int(x) for x in (args.seq_lens or seq_lens).split(",")]
  head_dims = [int(x) for x in (args.head_dims or head_dims).split(",")]

  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}); dtype {args.dtype}; "
        f"{tokens} tokens per batch, model width {model_width}; blocks "
        f"{args.block_q}x{args.block_k}")
  header = (f"{'case':<15}{'L':>6}{'D':>5}  {'impl':<11}{'fwd TF/s':>10}{'f+b TF/s':>10}"
            f"{'fwd MiB':>10}{'f+b MiB':>10}")
  print(header)
  print("-" * len(header))
  results = []
  for case in CASES:
    for length in seq_lens:
      for head_dim in head_dims:
        for impl in IMPLS:
          cell = _measure(impl, case, length, head_dim, tokens, model_width, args)
          results.append({"case": case[0], "seq_len": length, "head_dim": head_dim,
                          "impl": impl, **cell})
          prefix = f"{case[0]:<15}{length:>6}{head_dim:>5}  {impl:<11}"
          if "error" in cell:
            print(f"{prefix}  n/a ({cell['error']})")
          else:
            print(f"{prefix}{cell['fwd_tflops']:>10.3f}{cell['fwd_bwd_tflops']:>10.3f}"
                  f"{cell['fwd_peak_bytes'] / 2**20:>10.1f}"
                  f"{cell['fwd_bwd_peak_bytes'] / 2**20:>10.1f}")
  print(json.dumps({"benchmark": "attention", "device": device.device_kind,
                    "platform": device.platform, "dtype": args.dtype, "results": results}))
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
