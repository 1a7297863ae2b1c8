"""Tokens/s of a run's jitted train step on real batches: best-fit packed vs unpacked,
against a `transformers` + torch train step of the same network on the same batches, and the
packing density of best-fit vs seqio's next-fit packer (EncDecFeatureConverter).

  python benchmarks/train_step.py --gin_file=gin_configs/runs/quickstart.gin [--steps=20] [--rounds=3]

Both rows time the same jitted step on batches of the run's mixture: best-fit
packed rows, and one example per row padded to the same lengths (what a trainer
without packing feeds). "target tokens/s" counts real (non-padding) tokens.
seqio's packer is measured by density only (examples and real tokens per row on the same
stream): at a fixed row shape the step time does not depend on the contents.

sft_jax vs torch: the run's T5 is rebuilt without absolute positions (Hugging Face T5 has
none), its step-0 parameters are exported with hf_io.save_hf and loaded into a
transformers T5ForConditionalGeneration given its own lm_head (transformers 5 ties the head to
the embedding whatever tie_word_embeddings says; sft_jax's v1.1 head is separate), and both
take AdamW steps (the run's b1, b2, eps, weight decay on matrices only, global-norm clipping;
torch at the schedule's peak learning rate throughout, which does not change a step's cost)
on the same unpacked batches: input_ids/attention_mask from the encoder tokens,
decoder_input_ids, labels with -100 on padding. The first step's loss and gradient norm of the
two must agree (same math). Then `--rounds` rounds of `--steps` steps alternate between the
systems (the order flips every round); the table gives the median seconds per step of each and
target (non-padding decoder) tokens/s from it; ratio = sft_jax / torch.
Kernel gradients: the same packed step compiled twice, once as the models run it (every
projection through `layers.contract`, whose backward pass computes a kernel's gradient as
x^T dy) and once with `layers.contract` swapped for a plain `jnp.tensordot` left to autodiff
(which XLA:CPU computes as (dy^T x)^T, transposing the larger gradient); `--rounds` rounds of
`--steps` steps alternate between the two; ratio = contract / autodiff tokens per second.
Prints a table and, last, one JSON line. Needs torch and transformers (the [test] extra).
"""

import argparse
import contextlib
import dataclasses
import inspect
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import safetensors.torch  # noqa: E402
import seqio  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from sft_jax import config  # noqa: E402
from sft_jax.data import packing, pipeline  # noqa: E402
from sft_jax.models import hf_io, layers, t5  # noqa: E402
from sft_jax.train import optimizers, partitioning  # noqa: E402
from sft_jax.train import state as state_lib  # noqa: E402
from sft_jax.train.step import StepConfig, train_step  # noqa: E402


def _time_steps(step_fn, state, batches, mesh):
  """Seconds per step over `batches` after one warm-up (compile) step."""
  state, metrics = step_fn(state, partitioning.global_batch(batches[0], mesh))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for batch in batches[1:]:
    state, metrics = step_fn(state, partitioning.global_batch(batch, mesh))
  jax.block_until_ready(metrics)
  return state, (time.perf_counter() - start) / (len(batches) - 1)


@contextlib.contextmanager
def _autodiff_projections():
  """Traces every projection as a plain `jnp.tensordot`, gradients left to autodiff."""
  contract = layers.contract
  layers.contract = lambda x, kernel, num_in: jnp.tensordot(x, kernel, axes=num_in)
  try:
    yield
  finally:
    layers.contract = contract


def _compare_kernel_gradients(step_fn, make_step, state, batches, mesh, steps, rounds):
  """Median s/step of `step_fn` and of `make_step()` traced with projections left to autodiff."""
  step_fns = {"contract": step_fn}
  with _autodiff_projections():
    step_fns["autodiff"] = make_step()
    state, _ = _time_steps(step_fns["autodiff"], state, batches[:2], mesh)  # compiles while patched
  seconds = {name: [] for name in step_fns}
  for r in range(rounds):  # alternate, flipping the order every round
    for name in (("contract", "autodiff") if r % 2 == 0 else ("autodiff", "contract")):
      state, per_step = _time_steps(step_fns[name], state, batches[:steps + 1], mesh)
      seconds[name].append(per_step)
  real = float(np.mean([packing.batch_counts(b)["tokens"] for b in batches[1:steps + 1]]))
  out = {name: {"seconds_per_step": statistics.median(s), "seconds_per_step_rounds": s,
                "real_tokens_per_second": real / statistics.median(s)} for name, s in seconds.items()}
  out["ratio"] = out["contract"]["real_tokens_per_second"] / out["autodiff"]["real_tokens_per_second"]
  return state, out


def _seqio_next_fit_density(name, batch_size, input_length, target_length, num_batches):
  """(examples per batch, real-token fraction) of seqio's EncDecFeatureConverter(pack=True)."""
  lengths = {"inputs": input_length, "targets": target_length}
  dataset = pipeline.get_dataset(name, sequence_length=lengths, split="train", shuffle=True, seed=0,
                                 num_epochs=None)
  packed = seqio.EncDecFeatureConverter(pack=True)(dataset, lengths).batch(batch_size)
  stats = [packing.batch_counts(b) for b in packed.take(num_batches).as_numpy_iterator()]
  return (float(np.mean([s["examples"] for s in stats])),
          float(np.mean([s["tokens"] / s["slots"] for s in stats])))


def _bound(selector, function, name):
  """The gin-bound value of `function`'s parameter `name`, else its default."""
  try:
    return config.query_bound_value(selector)
  except ValueError:
    return inspect.signature(function).parameters[name].default


def _torch_t5(t5_config, params):
  """A transformers T5ForConditionalGeneration of `t5_config` holding sft_jax's `params`."""
  hf_config = transformers.T5Config(
      vocab_size=t5_config.vocab_size, d_model=t5_config.d_model, d_kv=t5_config.head_dim,
      d_ff=t5_config.d_ff, num_layers=t5_config.num_encoder_layers,
      num_decoder_layers=t5_config.num_decoder_layers, num_heads=t5_config.num_heads,
      feed_forward_proj=t5_config.feed_forward_proj,
      # transformers 5 reads False as "unscaled decoder outputs" and ties the head anyway.
      tie_word_embeddings=t5_config.scale_decoder_outputs, dropout_rate=t5_config.dropout_rate,
      relative_attention_num_buckets=t5_config.relative_attention_num_buckets,
      relative_attention_max_distance=t5_config.relative_attention_max_distance,
      layer_norm_epsilon=t5_config.layer_norm_epsilon, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(hf_config)
  if not t5_config.tie_word_embeddings:  # sft_jax's v1.1 head is its own kernel
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
  with tempfile.TemporaryDirectory() as directory:
    tensors = {}
    for file in hf_io.save_hf(directory, t5_config, params):
      tensors.update(safetensors.torch.load_file(file))
  missing, unexpected = model.load_state_dict(tensors, strict=False)
  # The embed_tokens tables are `shared` itself.
  if unexpected or set(missing) - {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}:
    raise RuntimeError(f"exported parameters do not fit transformers' T5: missing {missing}, "
                       f"unexpected {unexpected}")
  return model


def _torch_batch(batch):
  """transformers' T5 inputs for an unpacked sft_jax batch: labels -100 off the loss weights."""
  long = lambda x: torch.from_numpy(np.asarray(x, np.int64))  # noqa: E731
  weights = batch.get("decoder_loss_weights", batch["decoder_target_tokens"] != 0)
  return {"input_ids": long(batch["encoder_input_tokens"]),
          "attention_mask": long(batch["encoder_segment_ids"] > 0),
          "decoder_input_ids": long(batch["decoder_input_tokens"]),
          "labels": long(np.where(weights > 0, batch["decoder_target_tokens"], -100))}


def _compare_with_torch(model, schedule, batches, mesh, rules, steps, rounds):
  """Median s/step of sft_jax's jitted step and a transformers + torch step, alternated."""
  if not isinstance(model, t5.EncoderDecoderModel):
    raise SystemExit("the torch comparison builds a transformers T5: the run's model must be a T5")
  cmp_model = t5.EncoderDecoderModel(dataclasses.replace(model.config, absolute_positions=False))
  optimizer = optimizers.create_optimizer(schedule, name="adamw")
  graphdef, state = state_lib.init_train_state(cmp_model, optimizer, 0, mesh, rules)
  shardings = state_lib.shardings_of(state)
  step_fn = jax.jit(lambda s, b: train_step(StepConfig(graphdef, cmp_model, optimizer, schedule), s, b),
                    in_shardings=(shardings, partitioning.batch_sharding(mesh)),
                    out_shardings=(shardings, None), donate_argnums=0)

  torch_model = _torch_t5(cmp_model.config, state.params)
  torch_model.train()
  get = lambda name: _bound(f"create_optimizer.{name}", optimizers.create_optimizer, name)  # noqa: E731
  params = list(torch_model.parameters())  # tied tables once
  torch_opt = torch.optim.AdamW(  # weight decay on matrices only, as optimizers._decay_mask
      [{"params": [p for p in params if p.ndim >= 2]},
       {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
      lr=_bound("learning_rate_schedule.peak", optimizers.learning_rate_schedule, "peak"),
      betas=(get("b1"), get("b2")), eps=get("eps"), weight_decay=get("weight_decay"))
  clip = get("clip_global_norm")

  jax_batches = [partitioning.global_batch(b, mesh) for b in batches]
  torch_batches = [_torch_batch(b) for b in batches]
  holder = {"state": state}

  def sft_steps(indices):
    state = holder["state"]
    for i in indices:
      state, metrics = step_fn(state, jax_batches[i])
    jax.block_until_ready(metrics)
    holder["state"] = state
    return float(metrics["loss"]), float(metrics["grad_norm"])

  def torch_steps(indices):
    for i in indices:
      loss = torch_model(**torch_batches[i]).loss
      loss.backward()
      norm = (torch.nn.utils.clip_grad_norm_(params, clip) if clip else
              torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
      torch_opt.step()
      torch_opt.zero_grad(set_to_none=True)
    return float(loss.detach()), float(norm)

  # Step 0 (compiles sft_jax's step) on the same parameters and batch: loss and grad norm agree.
  (sft_loss, sft_norm), (torch_loss, torch_norm) = sft_steps([0]), torch_steps([0])
  first = {"sft_jax": {"loss": sft_loss, "grad_norm": sft_norm},
           "torch": {"loss": torch_loss, "grad_norm": torch_norm}}
  if not (np.isclose(sft_loss, torch_loss, rtol=1e-3) and np.isclose(sft_norm, torch_norm, rtol=1e-3)):
    raise RuntimeError(f"first step differs: loss {sft_loss} (sft_jax) vs {torch_loss} (torch), "
                       f"grad norm {sft_norm} vs {torch_norm}")
  sft_steps([1 % len(batches)])  # one more warm-up step each
  torch_steps([1 % len(batches)])

  timed = list(range(1, len(batches))) or [0]
  indices = [timed[i % len(timed)] for i in range(steps)]
  runners = {"sft_jax": sft_steps, "torch": torch_steps}
  seconds = {name: [] for name in runners}
  for r in range(rounds):  # alternate, flipping the order every round
    for name in (("sft_jax", "torch") if r % 2 == 0 else ("torch", "sft_jax")):
      start = time.perf_counter()
      runners[name](indices)
      seconds[name].append((time.perf_counter() - start) / steps)

  counts = [packing.batch_counts(batches[i]) for i in indices]
  weights = [np.asarray(batches[i].get("decoder_loss_weights", batches[i]["decoder_target_tokens"] != 0))
             for i in indices]
  target = float(np.mean([w.sum() for w in weights]))
  real = float(np.mean([c["tokens"] for c in counts]))
  out = {"params": int(sum(x.size for x in jax.tree.leaves(holder["state"].params))),
         "torch_params": int(sum(p.numel() for p in params)), "torch_threads": torch.get_num_threads(),
         "steps_per_round": steps, "rounds": rounds, "target_tokens_per_step": target,
         "real_tokens_per_step": real, "first_step": first, "optimizer_clip_global_norm": clip}
  for name, per_round in seconds.items():
    median = statistics.median(per_round)
    out[name] = {"seconds_per_step": median, "seconds_per_step_rounds": per_round,
                 "target_tokens_per_second": target / median, "real_tokens_per_second": real / median}
  out["ratio"] = out["sft_jax"]["target_tokens_per_second"] / out["torch"]["target_tokens_per_second"]
  return out


def _print_rounds_table(title, result, rows, columns):
  """One line per (label, key) of `result`: the (header, field, format) columns, then each round's s/step."""
  print(f"{title:<28}" + "".join(f"{header:>14}" for header, _, _ in columns) + "  s/step per round")
  for label, key in rows:
    r = result[key]
    print(f"{label:<28}" + "".join(f"{format(r[field], fmt):>14}" for _, field, fmt in columns)
          + "  " + " ".join(f"{x:.3f}" for x in r["seconds_per_step_rounds"]))


def main(argv):
  config.setup_logging()
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=20, help="timed steps per row (and per round)")
  parser.add_argument("--rounds", type=int, default=3, help="alternating sft_jax/torch rounds")
  args, rest = parser.parse_known_args(config.parse_gin_flags(
      [a for a in argv if a.startswith("--gin")] + ["--gin.MODEL_DIR='unused'"]) + [
          a for a in argv if not a.startswith("--gin")])
  config.reject_unknown_flags(rest)
  bind = lambda name: config.query_bound_value(f"train.{name}")
  model, batch_size = bind("model"), bind("batch_size")
  input_length, target_length = bind("input_length"), bind("target_length")
  name = config.query_bound_value("%MIXTURE_OR_TASK_NAME")

  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  schedule = optimizers.learning_rate_schedule(total_steps=1000)
  optimizer = optimizers.create_optimizer(schedule)
  graphdef, state = state_lib.init_train_state(model, optimizer, 0, mesh, rules)
  shardings = state_lib.shardings_of(state)

  def make_step():
    return jax.jit(lambda s, b: train_step(StepConfig(graphdef, model, optimizer, schedule), s, b),
                   in_shardings=(shardings, partitioning.batch_sharding(mesh)),
                   out_shardings=(shardings, None), donate_argnums=0)

  step_fn = make_step()
  packed_input = pipeline.TrainInput(pipeline.InputConfig(name, batch_size, input_length, target_length))
  packed = [next(packed_input) for _ in range(args.steps + 1)]
  stream = pipeline.get_dataset(name, sequence_length=None, split="train", shuffle=True, seed=0,
                                num_epochs=None, trim_output_features=False).as_numpy_iterator()
  unpacked = [packing.pad_unpacked([next(stream) for _ in range(batch_size)], input_length, target_length)
              for _ in range(args.steps + 1)]

  rows = {}
  for label, batches in (("packed (best-fit)", packed), ("unpacked (padded)", unpacked)):
    state, seconds = _time_steps(step_fn, state, batches, mesh)
    real = np.mean([packing.batch_counts(b)["tokens"] for b in batches[1:]])
    examples = np.mean([packing.batch_counts(b)["examples"] for b in batches[1:]])
    rows[label] = {"seconds_per_step": seconds, "real_tokens_per_second": real / seconds,
                   "examples_per_second": examples / seconds,
                   "slots_per_second": batch_size * (input_length + target_length) / seconds}
  print(f"model: {sum(x.size for x in jax.tree.leaves(state.params)):,} params; batch {batch_size} x "
        f"({input_length} + {target_length}); {jax.device_count()} {jax.devices()[0].platform} device(s)")
  print(f"{'batches':<20}{'s/step':>10}{'real tok/s':>14}{'examples/s':>14}{'slots/s':>12}")
  for label, r in rows.items():
    print(f"{label:<20}{r['seconds_per_step']:>10.3f}{r['real_tokens_per_second']:>14.0f}"
          f"{r['examples_per_second']:>14.1f}{r['slots_per_second']:>12.0f}")
  ratio = rows["packed (best-fit)"]["examples_per_second"] / rows["unpacked (padded)"]["examples_per_second"]
  print(f"packed / unpacked examples per second: {ratio:.2f}x")

  state, gradients = _compare_kernel_gradients(step_fn, make_step, state, packed, mesh, args.steps, args.rounds)
  print(f"\nkernel gradients, packed batches (median of {args.rounds} alternating rounds x {args.steps} steps)")
  _print_rounds_table("projections", gradients, (("layers.contract (x^T dy)", "contract"),
                                                  ("tensordot + autodiff", "autodiff")),
                      (("s/step", "seconds_per_step", ".3f"), ("real tok/s", "real_tokens_per_second", ".0f")))
  print(f"contract / autodiff tokens per second: {gradients['ratio']:.2f}x")

  versus = _compare_with_torch(model, schedule, unpacked, mesh, rules, args.steps, args.rounds)
  first = versus["first_step"]
  print(f"\nsft_jax vs transformers {transformers.__version__} + torch {torch.__version__} "
        f"(eager, torch.get_num_threads() = {versus['torch_threads']}): the same T5 with "
        f"absolute_positions=False ({versus['params']:,} params in sft_jax, {versus['torch_params']:,} in torch), "
        f"same initial weights, the unpacked batches above, AdamW (clip {versus['optimizer_clip_global_norm']}); "
        f"first step loss {first['sft_jax']['loss']:.5f} vs {first['torch']['loss']:.5f}, grad norm "
        f"{first['sft_jax']['grad_norm']:.4f} vs {first['torch']['grad_norm']:.4f}")
  print(f"median of {args.rounds} alternating rounds x {args.steps} steps; target tok = non-padding decoder "
        f"tokens ({versus['target_tokens_per_step']:.0f}/step), real tok = encoder + decoder non-padding "
        f"({versus['real_tokens_per_step']:.0f}/step)")
  _print_rounds_table("train step", versus, (("sft_jax (jit)", "sft_jax"), ("transformers+torch", "torch")),
                      (("s/step", "seconds_per_step", ".3f"), ("target tok/s", "target_tokens_per_second", ".0f"),
                       ("real tok/s", "real_tokens_per_second", ".0f")))
  print(f"sft_jax / torch target tokens per second: {versus['ratio']:.2f}x")

  ours_examples = float(np.mean([packing.batch_counts(b)["examples"] for b in packed]))
  ours_density = float(np.mean([packing.batch_counts(b)["tokens"] / packing.batch_counts(b)["slots"] for b in packed]))
  seqio_examples, seqio_density = _seqio_next_fit_density(name, batch_size, input_length, target_length, len(packed))
  print(f"\n{'packer':<28}{'examples/batch':>16}{'real-token fraction':>22}")
  print(f"{'sft_jax best-fit':<28}{ours_examples:>16.1f}{ours_density:>22.3f}")
  print(f"{'seqio next-fit (trim_and_pack)':<28}{seqio_examples:>16.1f}{seqio_density:>22.3f}")
  print(f"best-fit / next-fit examples per batch: {ours_examples / seqio_examples:.2f}x")
  print(json.dumps({"benchmark": "train_step", "packed": rows["packed (best-fit)"],
                    "unpacked": rows["unpacked (padded)"], "packed_over_unpacked_examples": ratio,
                    "best_fit_examples_per_batch": ours_examples, "best_fit_token_fraction": ours_density,
                    "seqio_next_fit_examples_per_batch": seqio_examples,
                    "seqio_next_fit_token_fraction": seqio_density,
                    "best_fit_over_next_fit_examples": ours_examples / seqio_examples,
                    "kernel_gradients": gradients,
                    "sft_jax_tokens_per_s": versus["sft_jax"]["target_tokens_per_second"],
                    "torch_tokens_per_s": versus["torch"]["target_tokens_per_second"],
                    "ratio": versus["ratio"], "tokens_counted": "target (non-padding decoder) tokens",
                    "torch_comparison": versus}))


if __name__ == "__main__":
  main(sys.argv[1:])
