"""Parity of imported Hugging Face models with `transformers`: logits, scores, export round trip.

  python benchmarks/hf_parity.py [--seq_len=300] [--num_scores=16]

For each variant a tiny random `transformers` model is built (seeded), saved as safetensors and
imported with sft_jax.models.hf_io:
  v1_1        T5 v1.1 / Flan-T5: gated-GELU (tanh), own lm_head, outputs unscaled;
  v1_1_tied   what transformers 5 builds for tie_word_embeddings=False: head tied, unscaled;
  v1_0        original T5: ReLU, tied head, outputs scaled by d_model**-0.5;
  llama_gqa   LlamaForCausalLM: 4 query heads sharing 2 kv heads, Llama 3.1 RoPE scaling with
              original_max_position_embeddings = seq_len / 4 (all three frequency bands hit), own head;
  qwen2_bias  Qwen2ForCausalLM: q/k/v biases, 1 kv head, tied head.
Logits are compared in float32 on random batches: T5 with padded rows and inputs longer than
relative_attention_max_distance (so the log-spaced buckets and the shared last bucket are hit),
decoders on full rows of seq_len tokens. Scores are summed target log-likelihoods (EOS included)
of random (inputs, targets) pairs, sft_jax's batched `score_pairs` against log-softmax of
transformers' logits (decoders read the model's BOS for LLaMA, the input, then the target as
one sequence). Export writes the imported parameters back and reloads them with transformers; `export_equal` says every tensor is
bitwise equal. Prints a table and, last, one JSON line. Needs torch (the [test] extra).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from flax import nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from sft_jax.evaluation import score_file  # noqa: E402
from sft_jax.models import hf_io  # noqa: E402
from sft_jax.train import partitioning  # noqa: E402

DECODERS = ("llama_gqa", "qwen2_bias")
VARIANTS = {
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, own_head=True),
    "v1_1_tied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, own_head=False),
    "v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True, own_head=False),
}


def build(variant: str, args: argparse.Namespace) -> transformers.T5ForConditionalGeneration:
  """A seeded random transformers T5 of `variant` with non-trivial layer norm scales."""
  kw = dict(VARIANTS[variant])
  own_head = kw.pop("own_head")
  config = transformers.T5Config(
      vocab_size=args.vocab_size, d_model=args.d_model, d_kv=args.d_model // 4, num_heads=4,
      d_ff=2 * args.d_model, num_layers=2, num_decoder_layers=2,
      relative_attention_num_buckets=args.num_buckets,
      relative_attention_max_distance=args.max_distance, dropout_rate=0.0, decoder_start_token_id=0, **kw)
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    if own_head:
      model.lm_head.weight = torch.nn.Parameter(torch.randn(args.vocab_size, args.d_model))
    for name, param in model.named_parameters():
      if "layer_norm" in name:
        param.add_(0.2 * torch.randn_like(param))
  return model


def build_decoder(variant: str, args: argparse.Namespace) -> transformers.PreTrainedModel:
  """A seeded random transformers causal LM of `variant` with non-trivial norm scales and biases."""
  common = dict(vocab_size=args.vocab_size, hidden_size=args.d_model, intermediate_size=2 * args.d_model,
                num_hidden_layers=2, num_attention_heads=4, head_dim=args.d_model // 4, rms_norm_eps=1e-5,
                bos_token_id=2, eos_token_id=1, pad_token_id=0)
  torch.manual_seed(0)
  if variant == "llama_gqa":
    rope = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=max(8, args.seq_len // 4), rope_theta=10000.0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **common, num_key_value_heads=2, rope_parameters=rope, tie_word_embeddings=False))
  else:
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **common, num_key_value_heads=1, tie_word_embeddings=True))
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name or name.endswith(".bias"):
        param.add_(0.3 * torch.randn_like(param))
  return model.eval()


def decoder_logit_diff(model, loaded, args: argparse.Namespace) -> float:
  """Max |sft_jax - transformers| over the logits of a random [4, seq_len] batch."""
  tokens = np.random.default_rng(1).integers(3, args.vocab_size, (4, args.seq_len))
  with torch.no_grad():
    want = model(input_ids=torch.tensor(tokens)).logits.numpy()
  module = nnx.merge(loaded.graphdef, loaded.params)
  got = nnx.jit(lambda m, t: m(t))(module, jnp.asarray(tokens, jnp.int32))
  return float(np.abs(np.asarray(got) - want).max())


def logit_diff(model, loaded, args: argparse.Namespace) -> float:
  """Max |sft_jax - transformers| over the non-padding logits of a random batch."""
  rng = np.random.default_rng(1)
  enc = rng.integers(2, args.vocab_size, (4, args.seq_len))
  enc[1, args.seq_len // 3:] = 0
  targets = rng.integers(2, args.vocab_size, (4, args.seq_len // 2))
  dec_mask = np.ones_like(targets)
  dec_mask[2, args.seq_len // 5:] = 0
  dec_in = np.concatenate([np.zeros((4, 1), np.int64), targets[:, :-1]], 1)
  with torch.no_grad():
    want = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor((enc != 0).astype(np.int64)),
                 decoder_input_ids=torch.tensor(dec_in), decoder_attention_mask=torch.tensor(dec_mask)).logits
  module = nnx.merge(loaded.graphdef, loaded.params)
  got = nnx.jit(lambda m, e, d, s: m(e, d, decoder_segment_ids=s))(
      module, jnp.asarray(enc, jnp.int32), jnp.asarray(dec_in, jnp.int32), jnp.asarray(dec_mask, jnp.int32))
  return float(np.abs(np.asarray(got) - want.numpy())[dec_mask.astype(bool)].max())


def score_diff(model, loaded, args: argparse.Namespace, mesh, rules) -> tuple[float, float]:
  """(max |score difference|, mean |transformers score|) over random (inputs, targets + EOS) pairs."""
  rng = np.random.default_rng(2)
  pairs = []
  for _ in range(args.num_scores):
    inputs = np.append(rng.integers(2, args.vocab_size, rng.integers(1, args.seq_len)), 1).astype(np.int32)
    targets = np.append(rng.integers(2, args.vocab_size, rng.integers(0, 32)), 1).astype(np.int32)
    pairs.append((inputs, targets))
  got = score_file.score_pairs(loaded, pairs, mesh=mesh, rules=rules, batch_size=8)
  want = []
  for inputs, targets in pairs:
    labels = torch.tensor(targets[None].astype(np.int64))
    with torch.no_grad():
      if model.config.is_encoder_decoder:
        logits = model(input_ids=torch.tensor(inputs[None].astype(np.int64)), labels=labels).logits
      else:  # the logits that predict each target token, after the model's BOS as its tokenizer adds it
        bos = getattr(loaded.model, "bos_id", None)
        inputs = inputs if bos is None else np.concatenate([[bos], inputs])
        sequence = torch.tensor(np.concatenate([inputs, targets])[None].astype(np.int64))
        logits = model(input_ids=sequence).logits[:, len(inputs) - 1:-1]
    want.append(float(torch.log_softmax(logits.double(), -1).gather(-1, labels[..., None]).sum()))
  return float(np.max(np.abs(got - np.array(want)))), float(np.mean(np.abs(want)))


def export_equal(model, loaded, directory: str) -> bool:
  """Whether export -> transformers reload gives back every tensor bitwise."""
  hf_io.save_hf(directory, loaded.model.config, loaded.params, base_config=loaded.hf_config)
  reloaded = type(model).from_pretrained(directory).state_dict()
  original = model.state_dict()
  return set(original) == set(reloaded) and all(torch.equal(v, reloaded[k]) for k, v in original.items())


def main(argv: list[str]) -> list[dict]:
  parser = argparse.ArgumentParser()
  parser.add_argument("--seq_len", type=int, default=300, help="T5 encoder length (> max_distance), decoder length")
  parser.add_argument("--max_distance", type=int, default=128)
  parser.add_argument("--num_buckets", type=int, default=32)
  parser.add_argument("--d_model", type=int, default=64)
  parser.add_argument("--vocab_size", type=int, default=512)
  parser.add_argument("--num_scores", type=int, default=16)
  args = parser.parse_args(argv)
  transformers.logging.set_verbosity_error()
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  print(f"transformers {transformers.__version__}, torch {torch.__version__}, jax {jax.__version__} "
        f"({jax.devices()[0].device_kind}); float32; d_model {args.d_model}, encoder (T5) or decoder length "
        f"{args.seq_len}, {args.num_buckets} buckets, max_distance {args.max_distance}")
  header = f"{'variant':<11}{'max |dlogit|':>14}{'max |dscore|':>14}{'mean |score|':>14}{'export equal':>14}"
  print(header)
  print("-" * len(header))
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for variant in list(VARIANTS) + list(DECODERS):
      decoder_only = variant in DECODERS
      model = build_decoder(variant, args) if decoder_only else build(variant, args)
      model.save_pretrained(os.path.join(tmp, variant))
      loaded = hf_io.import_hf(os.path.join(tmp, variant), mesh=mesh, rules=rules)
      dscore, mean_score = score_diff(model, loaded, args, mesh, rules)
      dlogit = (decoder_logit_diff if decoder_only else logit_diff)(model, loaded, args)
      row = {"variant": variant, "max_abs_logit_diff": dlogit,
             "max_abs_score_diff": dscore, "mean_abs_score": mean_score,
             "export_equal": export_equal(model, loaded, os.path.join(tmp, variant + "_export"))}
      results.append(row)
      print(f"{variant:<11}{row['max_abs_logit_diff']:>14.2e}{dscore:>14.2e}{mean_score:>14.2f}"
            f"{str(row['export_equal']):>14}")
  print(json.dumps({"benchmark": "hf_parity", "seq_len": args.seq_len, "max_distance": args.max_distance,
                    "num_buckets": args.num_buckets, "d_model": args.d_model, "results": results}))
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
