"""Log-likelihoods of target strings given input strings, for a JSONL file (`tools/score.py`).

Each line `{"inputs": str, "targets": str, ...}` is written back with `"loglik"`, the sum of the
natural-log probabilities of the target tokens, and `"num_tokens"`, their count. Strings are
tokenized without special tokens. The target gets the model's EOS appended and that EOS is
scored too (ending there is part of what the model predicts), so `num_tokens` is the target's
token count plus one.

Encoder-decoder (T5): the input gets EOS too, as seqio's T5 tasks and transformers' T5 tokenizer
do, and `loglik` equals transformers' `-CrossEntropy(sum)` of the model called with `labels` =
target tokens + EOS. Decoder-only (LLaMA, Mistral, Qwen2): the row is the model's start token
(`DecoderOnlyModel.bos_id`), the prompt, then target + EOS, so `loglik` equals transformers'
on `[BOS] + prompt + target + [EOS]` for a LLaMA/Mistral import (its tokenizer adds BOS) and
on `prompt + target + [EOS]` for Qwen2 (no BOS; an empty prompt is then an error, since the
first target token would have nothing to be predicted from).

Rows are never truncated: the fixed batch shapes are sized from the file's longest example.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from flax import nnx
import jax
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np
import seqio

from sft_jax.data import packing
from sft_jax.data import vocabularies
from sft_jax.inference import batching
from sft_jax.models import hf_io

EOS_ID = vocabularies.EOS_ID
FIELDS = ("inputs", "targets")


def read_examples(path: str) -> list[tuple[int, dict]]:
  """(line number, record) of each non-blank line; a malformed line fails with `path:line`."""
  examples = []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number}: not valid JSON ({e.msg})") from e
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
      for field in FIELDS:
        if field not in record:
          raise ValueError(f"{path}:{line_number}: field {field!r} is missing")
        if not isinstance(record[field], str):
          raise ValueError(f"{path}:{line_number}: field {field!r} must be a string, got "
                           f"{type(record[field]).__name__}")
      examples.append((line_number, record))
  if not examples:
    raise ValueError(f"{path}: no examples")
  return examples


def resolve_vocabulary(spec: str | seqio.Vocabulary) -> seqio.Vocabulary:
  """A vocabulary from a name or path: "byte", a SentencePiece .model, a tokenizer.json, or a model directory."""
  if isinstance(spec, seqio.Vocabulary):
    return spec
  if spec == "byte":
    return vocabularies.get_vocabulary("byte")
  if os.path.isdir(spec):
    found = hf_io.load_vocabulary(spec)
    if found is None:
      raise FileNotFoundError(f"{spec}: no spiece.model or tokenizer.json")
    return found
  if spec.endswith(".json"):
    return vocabularies.get_vocabulary("hf", spec)
  return vocabularies.get_vocabulary("sentencepiece", spec)


def tokenize(examples: Sequence[tuple[int, dict]], vocabulary: seqio.Vocabulary, path: str,
             vocab_size: int, *, eos_id: int | None = EOS_ID, input_eos: bool = True) -> list[batching.Pair]:
  """(inputs [+ EOS], targets + EOS) token ids per example; ids the model cannot embed are an error.

  `eos_id=None` appends nothing; `input_eos=False` leaves the inputs without EOS (decoder-only).
  """
  eos = [] if eos_id is None else [eos_id]
  pairs = []
  for line_number, record in examples:
    pair = tuple(np.array(vocabulary.encode(record[f]) + (eos if f == "targets" or input_eos else []), np.int32)
                 for f in FIELDS)
    for field, ids in zip(FIELDS, pair):
      if len(ids) and ids.max() >= vocab_size:
        raise ValueError(f"{path}:{line_number}: field {field!r} encodes to id {int(ids.max())}, outside the "
                         f"model's vocabulary of {vocab_size}; is the vocabulary the model's?")
    pairs.append(pair)
  return pairs


def _decoder_only(model: Any) -> bool:
  return getattr(model, "feature_layout", "encoder_decoder") == "decoder_only"


def _check_length(examples, pairs, path, side, limit):
  if limit is None:
    return
  for (line_number, _), pair in zip(examples, pairs):
    n = len(pair[side])
    if n > limit:
      raise ValueError(f"{path}:{line_number}: field {FIELDS[side]!r} has {n} tokens with EOS, more than "
                       f"max_{FIELDS[side][:-1]}_length={limit}")


def score_pairs(loaded: hf_io.LoadedModel, pairs: Sequence[batching.Pair], *, mesh: jax.sharding.Mesh,
                rules: Sequence[tuple[str, Any]], batch_size: int = 16) -> np.ndarray:
  """Summed target log-likelihood of each (inputs, targets) pair, [N] float32, none truncated."""
  model, graphdef = loaded.model, loaded.graphdef
  layout, bos_id = "encoder_decoder", None
  longest_input = max(len(p[0]) for p in pairs)
  if _decoder_only(model):  # rows as the trainer packs them: start token, prompt, targets
    layout, bos_id = "decoder_only", packing.packer_bos_id(getattr(model, "bos_id", 0))
    longest_input += 1  # the start token's slot (unused without one)
  input_length = batching.input_bucket(longest_input, 1 << 30)
  target_length = -(-max(len(p[1]) for p in pairs) // 16) * 16
  score = jax.jit(lambda params, batch: model.score_batch(nnx.merge(graphdef, params), batch))
  # Rows over the batch mesh axes, as the trainer's batches (train.partitioning.batch_sharding).
  sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    return batching.run_in_batches(
        lambda batch: score(loaded.params, batch), pairs, batch_size=batch_size,
        input_length=input_length, target_length=target_length, sharding=sharding, layout=layout,
        bos_id=bos_id)


def score_file(checkpoint: str, inputs_path: str, out_path: str, *, mesh: jax.sharding.Mesh,
               rules: Sequence[tuple[str, Any]], batch_size: int = 16,
               vocabulary: str | seqio.Vocabulary | None = None, step: int | None = None,
               max_input_length: int | None = None, max_target_length: int | None = None) -> dict:
  """Scores every line of `inputs_path` under the model in `checkpoint` and writes `out_path`.

  `checkpoint` is a Hugging Face directory (it has config.json) or an sft_jax model directory
  (latest step unless `step`). The vocabulary is the model directory's own tokenizer unless
  `vocabulary` names one. Returns a summary: examples, tokens and total log-likelihood.
  """
  examples = read_examples(inputs_path)
  loaded = hf_io.load_model_dir(checkpoint, mesh=mesh, rules=rules, step=step)
  if vocabulary is None and loaded.vocabulary is None:
    raise ValueError(f"{checkpoint}: no tokenizer files (spiece.model, tokenizer.json); pass a vocabulary")
  vocab = resolve_vocabulary(vocabulary) if vocabulary is not None else loaded.vocabulary
  model = loaded.model
  if _decoder_only(model):
    eos_ids = getattr(model, "eos_ids", ())
    pairs = tokenize(examples, vocab, inputs_path, model.config.vocab_size,
                     eos_id=eos_ids[0] if eos_ids else None, input_eos=False)
    if getattr(model, "bos_id", 0) is None:
      for (line_number, _), (inputs, _) in zip(examples, pairs):
        if not len(inputs):
          raise ValueError(f"{inputs_path}:{line_number}: field 'inputs' is empty, and the model has no start "
                           f"token (bos_id=None) to predict the first target token from")
  else:
    pairs = tokenize(examples, vocab, inputs_path, model.config.vocab_size)
  _check_length(examples, pairs, inputs_path, 0, max_input_length)
  _check_length(examples, pairs, inputs_path, 1, max_target_length)
  loglik = score_pairs(loaded, pairs, mesh=mesh, rules=rules, batch_size=batch_size)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    partial = out_path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
      for (_, record), ll, (_, targets) in zip(examples, loglik, pairs):
        out = dict(record, loglik=float(ll), num_tokens=int(len(targets)))
        f.write(json.dumps(out, ensure_ascii=False) + "\n")
    os.replace(partial, out_path)  # a reader never sees a half-written file
  return {"examples": len(pairs), "target_tokens": int(sum(len(t) for _, t in pairs)),
          "total_loglik": float(np.sum(loglik)), "out": out_path}
