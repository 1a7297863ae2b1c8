"""lm-eval-harness (0.4.x) model backend "sft_jax": any sft_jax or Hugging Face model directory.

  lm_eval.simple_evaluate(model="sft_jax", model_args="checkpoint=DIR", tasks=[...])
  python tools/run_lm_eval.py --model sft_jax --model_args checkpoint=DIR --tasks hellaswag

Importing this module registers the backend (lm-eval has no plugin entry point for models).
Requests become the rows the project's scorer and evaluator build (`batching.run_in_batches`:
sorted by length, fixed batch size, inputs padded to 64-token buckets, targets to a power of
two), so each jitted function compiles once per bucket.

Tokens follow lm-eval's Hugging Face backends (`HFLM`), with the start token as the project's
decoder rows place it (`DecoderOnlyModel.bos_id`: Llama's BOS, none for Qwen2, 0 for a model
trained from scratch):
  - decoder-only: one row per request, start token + context + continuation, scored on the
    continuation only. Context and continuation are encoded together and split after the
    context's tokens (trailing spaces of the context move to the continuation). A model with
    no start token conditions an empty context on its first EOS id, as `HFLM` does with its
    `prefix_token_id`.
  - encoder-decoder (T5): the context + EOS goes to the encoder (T5's tokenizer appends EOS),
    the continuation, without EOS, to the decoder.
Continuations carry no EOS, so a log-likelihood here is `tools/score.py`'s for the same tokens
minus the EOS term that tool appends to every target. Over-long requests keep their last
tokens: the context is cut from the left so that a decoder row fits `max_length` (HFLM's
rule), an encoder input and a decoder continuation each hold at most `max_length`.

Multi-host: lm-eval sees one process (rank 0 of 1) on every host, so every process builds the
same requests and runs the same batches (the batch is one SPMD computation over the whole
mesh), and results come back fully replicated. `tools/run_lm_eval.py` lets only process 0
write results.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from typing import Any, Iterable, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
import lm_eval.utils
import numpy as np

from sft_jax.data import chat
from sft_jax.data import packing
from sft_jax.evaluation import score_file
from sft_jax.inference import batching
from sft_jax.inference import scoring
from sft_jax.models import hf_io
from sft_jax.models import losses
from sft_jax.train import partitioning

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_LENGTH = 2048  # lm-eval's HFLM default when the config names none
DEFAULT_MAX_GEN_TOKS = 256  # HFLM's default
_MIN_TARGET_BUCKET = 16
# lm-eval's generation options that greedy decoding makes meaningless (HF ignores them too).
_SAMPLING_ONLY_KWARGS = ("temperature", "top_p", "top_k", "min_p", "typical_p")


def _target_bucket(longest: int) -> int:
  """Padded continuation length: the next power of two, at least 16, so calls share compilations."""
  return max(_MIN_TARGET_BUCKET, 1 << max(0, longest - 1).bit_length())


def _parse_batch_size(value: int | str | None) -> int:
  if value is None:
    return DEFAULT_BATCH_SIZE
  if isinstance(value, str) and value.startswith("auto"):
    logging.warning("sft_jax: batch_size=%r is not supported (shapes are fixed); using %d", value,
                    DEFAULT_BATCH_SIZE)
    return DEFAULT_BATCH_SIZE
  size = int(value)
  if size < 1:
    raise ValueError(f"sft_jax: batch_size={value!r}; expected a positive integer")
  return size


def _model_max_length(loaded: hf_io.LoadedModel) -> int:
  """The context length the model was built for (config.json), as HFLM reads it."""
  for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
    value = (loaded.hf_config or {}).get(key)
    if isinstance(value, int) and value > 0:
      return value
  return DEFAULT_MAX_LENGTH


def _token_scores(model: Any, module: Any, batch: dict[str, jax.Array]) -> jax.Array:
  """[B, 2] float32: each row's summed target log-likelihood and 1.0 if every target is the argmax.

  The sum is `model.score_batch`'s computation (logits -> weighted target log-probs); the
  logits are read once more for the argmax test lm-eval's `is_greedy` needs.
  """
  # `_logits` is the models' shared logits entry point (score_batch and loss_fn use it); the
  # model interface has no public per-token scores yet.
  logits_BxTxV = model._logits(module, batch)  # pylint: disable=protected-access
  targets_BxT = batch["decoder_target_tokens"]
  weights_BxT = losses.target_weights(batch)
  loglik_B = scoring.sequence_log_likelihood(logits_BxTxV, targets_BxT, weights_BxT)
  hit_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT) | (weights_BxT == 0)
  return jnp.stack([loglik_B, jnp.all(hit_BxT, axis=-1).astype(jnp.float32)], axis=-1)


@register_model("sft_jax")
class SftJaxLM(LM):
  """An lm-eval `LM` over an sft_jax model directory or a Hugging Face model directory.

  Model args: `checkpoint` (required; or `pretrained`, lm-eval's usual name), `batch_size` (rows
  per jitted call, rounded up to a multiple of the local batch shards), `max_length` (tokens per
  row; default the config's max_position_embeddings/n_positions, else 2048), `max_gen_toks`
  (default 256), `step` (of an sft_jax directory; default latest), `vocabulary` (default the
  directory's tokenizer files; see `score_file.resolve_vocabulary`), `chat_template` ("chatml",
  "llama3" or a tokenizer_config.json/model directory; default the directory's own), `fsdp` and
  `tensor` (mesh axes; the rest of the devices is `data`).
  """

  def __init__(self, checkpoint: str | None = None, batch_size: int | str | None = None,
               max_length: int | None = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, step: int | None = None,
               vocabulary: str | None = None, chat_template: str | None = None, fsdp: int = 1, tensor: int = 1,
               pretrained: str | None = None, device: str | None = None, max_batch_size: int | None = None,
               trust_remote_code: bool | None = None):
    super().__init__()
    del max_batch_size, trust_remote_code  # lm-eval passes them to every backend; nothing to do here
    if (checkpoint is None) == (pretrained is None):
      raise ValueError("sft_jax: pass model_args checkpoint=DIR (or its alias pretrained=DIR, which lm-eval "
                       "also uses to name the results' directory)")
    checkpoint = checkpoint if checkpoint is not None else pretrained
    if device:  # lm-eval's command line always passes one (default cuda:0)
      logging.info("sft_jax: device=%r is not used; the model is sharded over all of JAX's devices", device)
    self.checkpoint = checkpoint
    self._mesh = partitioning.create_mesh(data=-1, fsdp=int(fsdp), tensor=int(tensor))
    self._rules = partitioning.logical_axis_rules()
    self._loaded = hf_io.load_model_dir(checkpoint, mesh=self._mesh, rules=self._rules,
                                        step=None if step is None else int(step))
    if vocabulary is None and self._loaded.vocabulary is None:
      raise ValueError(f"sft_jax: {checkpoint} has no tokenizer files (spiece.model, tokenizer.json); "
                       "pass model_args vocabulary=byte|PATH")
    self.vocabulary = (score_file.resolve_vocabulary(vocabulary) if vocabulary is not None
                       else self._loaded.vocabulary)
    model = self.model = self._loaded.model
    self.decoder_only = getattr(model, "feature_layout", "encoder_decoder") == "decoder_only"
    if self.decoder_only:
      self.eos_ids = tuple(model.eos_ids)
      # The rows' start token, as the trainer packs them (None: seqio's 0; NO_BOS: none).
      self._bos_id = packing.packer_bos_id(getattr(model, "bos_id", 0))
      self._start_slots = 0 if self._bos_id == packing.NO_BOS else 1
    else:
      self.eos_ids = (int(model.eos_id),)
      self._bos_id, self._start_slots = None, 0
    self._max_length = int(max_length) if max_length is not None else _model_max_length(self._loaded)
    self._max_gen_toks = int(max_gen_toks)
    if self._max_length < 2:
      raise ValueError(f"sft_jax: max_length={self._max_length}; expected at least 2 tokens")

    # Every process feeds the whole batch (lm-eval gives each the same requests): rows must split
    # evenly over this process's devices on the batch axes.
    local_shards = max(1, self._mesh.shape["data"] * self._mesh.shape["fsdp"] // jax.process_count())
    self.batch_size = -(-_parse_batch_size(batch_size) // local_shards) * local_shards
    self._batch_sharding = partitioning.batch_sharding(self._mesh)
    replicated = NamedSharding(self._mesh, PartitionSpec())
    graphdef = self._loaded.graphdef
    self._score = jax.jit(lambda params, batch: _token_scores(model, nnx.merge(graphdef, params), batch),
                          out_shardings=replicated)
    self._predict_fns: dict[int, Any] = {}
    self._replicated = replicated
    self._chat_template_arg = chat_template
    self._chat_template = None

  # ---- lm-eval properties ------------------------------------------------------------------

  @property
  def max_length(self) -> int:
    """Most tokens of one decoder row (or of one encoder input / decoder continuation for T5)."""
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    """Generated tokens per request unless the task's `max_gen_toks` says otherwise."""
    return self._max_gen_toks

  @property
  def eot_token_id(self) -> int:
    """The first end token of the model (HFLM's EOT)."""
    return self.eos_ids[0]

  @property
  def tokenizer_name(self) -> str:
    """A file-name-safe name of the vocabulary, keying lm-eval's request caches."""
    name = os.path.basename(os.path.normpath(self.checkpoint)) or "model"
    return "sft_jax__" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)

  def get_model_info(self) -> dict[str, Any]:
    """What lm-eval records under results["config"]."""
    leaves = jax.tree.leaves(self._loaded.params)
    return {"checkpoint": os.path.abspath(self.checkpoint), "architecture": type(self.model.config).__name__,
            "model_num_parameters": int(sum(x.size for x in leaves)),
            "model_dtype": str(leaves[0].dtype) if leaves else None,
            "max_length": self._max_length, "batch_size": self.batch_size}

  # ---- tokens -------------------------------------------------------------------------------

  def tok_encode(self, text: str) -> list[int]:
    """Token ids of `text`, without special tokens; ids the model cannot embed are an error."""
    ids = [int(i) for i in self.vocabulary.encode(text)]
    vocab_size = self.model.config.vocab_size
    if ids and max(ids) >= vocab_size:
      raise ValueError(f"sft_jax: {text[:40]!r}... encodes to id {max(ids)}, outside the model's vocabulary "
                       f"of {vocab_size}; is the vocabulary the model's?")
    return ids

  def tok_decode(self, ids: Sequence[int]) -> str:
    """Text of generated token ids."""
    return self.vocabulary.decode([int(i) for i in ids])

  def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of one loglikelihood request, as lm-eval's TemplateLM splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:  # the continuation's leading whitespace belongs to its first word
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not self.decoder_only:
      return self.tok_encode(context) + [self.eot_token_id], self.tok_encode(continuation)
    if not context:
      continuation_ids = self.tok_encode(continuation)
      if self._start_slots or not continuation_ids:
        return [], continuation_ids
      # No start token to predict the first token from: HFLM's prefix token (EOT) is the context.
      if continuation_ids[0] == self.eot_token_id:
        return continuation_ids[:1], continuation_ids[1:]
      return [self.eot_token_id], continuation_ids
    context_ids = self.tok_encode(context)
    # Encoded together, then split, so a word is tokenized as in running text.
    return context_ids, self.tok_encode(context + continuation)[len(context_ids):]

  def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
    """The pair cut to `max_length`, keeping the last tokens (see the module docstring)."""
    limit = self._max_length
    if not self.decoder_only:
      return context[-limit:], continuation[-limit:]
    # A row feeds start + context + continuation[:-1] to the model: at most max_length tokens.
    budget = limit + 1 - self._start_slots
    min_context = 0 if self._start_slots else 1
    if len(continuation) > budget - min_context:
      continuation = continuation[len(continuation) - (budget - min_context):]
    keep = budget - len(continuation)
    return context[max(0, len(context) - keep):], continuation

  # ---- batched scoring and decoding -------------------------------------------------------------

  def _run(self, fn: Any, pairs: Sequence[batching.Pair], *, input_length: int, target_length: int,
           prompt_only: bool = False) -> np.ndarray:
    """`fn(params, batch)` over the pairs in fixed-shape batches (rows as the trainer lays them out)."""
    with jax.set_mesh(self._mesh), nnx.logical_axis_rules(self._rules):
      return batching.run_in_batches(
          lambda batch: fn(self._loaded.params, batch), pairs, batch_size=self.batch_size,
          input_length=input_length, target_length=target_length, sharding=self._batch_sharding,
          layout="decoder_only" if self.decoder_only else "encoder_decoder", prompt_only=prompt_only,
          bos_id=self._bos_id if self.decoder_only else None)

  def _input_cap(self, pairs: Sequence[batching.Pair]) -> int:
    """`run_in_batches`' input_length: never cuts a pair, and is the same for every call that fits max_length.

    Batches are padded to 64-token buckets below it, so calls share compilations.
    """
    longest = max(self._max_length, max(len(inputs) for inputs, _ in pairs))
    # A decoder row's prompt side holds the start slot (or nothing) plus the context.
    return longest + 1 if self.decoder_only else longest

  def score_token_pairs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of each continuation given its context, both as token ids.

    Pairs are used as given (no truncation): decoder-only rows are start token + context +
    continuation, encoder-decoder rows context -> continuation. An empty continuation scores
    (0.0, True).
    """
    out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    todo = [k for k, (_, continuation) in enumerate(pairs) if len(continuation)]
    if not todo:
      return out
    arrays = [(np.asarray(pairs[k][0], np.int32), np.asarray(pairs[k][1], np.int32)) for k in todo]
    scores = self._run(self._score, arrays, input_length=self._input_cap(arrays),
                       target_length=_target_bucket(max(len(t) for _, t in arrays)))
    for k, (loglik, greedy) in zip(todo, scores):
      out[k] = (float(loglik), bool(greedy > 0.5))
    return out

  def _predict_fn(self, decode_length: int) -> Any:
    if decode_length not in self._predict_fns:
      model, graphdef = self.model, self._loaded.graphdef
      self._predict_fns[decode_length] = jax.jit(
          lambda params, batch: model.predict_batch(nnx.merge(graphdef, params), batch, decode_length),
          out_shardings=self._replicated)
    return self._predict_fns[decode_length]

  def generate_token_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations of token-id prompts, each cut before its first end token."""
    arrays = [(np.asarray(p, np.int32), np.asarray(self.eos_ids[:1], np.int32)) for p in prompts]
    rows = self._run(self._predict_fn(max_new_tokens), arrays, input_length=self._input_cap(arrays), target_length=1,
                     prompt_only=True)
    out = []
    for row in rows:
      ends = np.flatnonzero(np.isin(row, self.eos_ids))
      out.append([int(t) for t in (row[:ends[0]] if len(ends) else row)])
    return out

  # ---- the LM API --------------------------------------------------------------------------------

  def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    """(log p(continuation | context), whether greedy decoding yields the continuation) per request."""
    del disable_tqdm
    pairs = [self._fit(*self._encode_pair(context, continuation)) for context, continuation in
             (req.args for req in requests)]
    return self.score_token_pairs(pairs)

  def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
    """Log-likelihood of each whole text, scored in disjoint windows of up to `max_length` tokens.

    Windows are lm-eval's (`get_rolling_token_windows` with one token of context): every token
    is predicted once, after as much of the text before it as a window holds. Decoder rows
    start with the model's start token (without one, the first window is conditioned on EOT).
    T5 scores each window on the decoder, its encoder reading the token before the window (EOS
    for the first), and the text ends with EOS as T5's tokenizer writes it, like HFLM's seq2seq.
    """
    del disable_tqdm
    windows, owners = [], []
    for k, req in enumerate(requests):
      (text,) = req.args
      tokens = self.tok_encode(text)
      if not self.decoder_only:
        tokens = tokens + [self.eot_token_id]
      # The start slot takes one of max_length, so windows hold one token less.
      window_length = self._max_length - self._start_slots
      for n, pair in enumerate(lm_eval.utils.get_rolling_token_windows(
          token_list=tokens, prefix_token=self.eot_token_id, max_seq_len=window_length, context_len=1)):
        context, continuation = lm_eval.utils.make_disjoint_window(pair)
        if n == 0 and self._start_slots:
          context = []  # the start token conditions the first window
        windows.append((context, continuation))
        owners.append(k)
    totals = [0.0] * len(requests)
    for k, (loglik, _) in zip(owners, self.score_token_pairs(windows)):
      totals[k] += loglik
    return totals

  def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
    """Greedy continuation of each context, cut at the first of its `until` strings (and at EOS)."""
    del disable_tqdm
    groups: dict[int, list[tuple[int, list[int], list[str]]]] = collections.defaultdict(list)
    for k, req in enumerate(requests):
      context, gen_kwargs = req.args
      kwargs = dict(gen_kwargs or {})
      until = kwargs.pop("until", None) or []
      until = [until] if isinstance(until, str) else list(until)
      max_new = int(kwargs.pop("max_gen_toks", self._max_gen_toks))
      self._check_greedy(kwargs)
      prompt = self.tok_encode(context)
      if self.decoder_only:
        # HFLM's rule: the prompt leaves room for the generated tokens within max_length.
        keep = max(1, self._max_length - max_new - self._start_slots)
        prompt = prompt[max(0, len(prompt) - keep):]
        if not prompt and not self._start_slots:
          prompt = [self.eot_token_id]  # something to predict the first token from
      else:
        prompt = prompt[max(0, len(prompt) - (self._max_length - 1)):] + [self.eot_token_id]
      groups[max_new].append((k, prompt, until))
    out = [""] * len(requests)
    # One decode length per group: a short task never waits on a long one's loop.
    for max_new, items in groups.items():
      generated = self.generate_token_ids([prompt for _, prompt, _ in items], max_new)
      for (k, _, until), ids in zip(items, generated):
        out[k] = cut_at_stop_strings(self.tok_decode(ids), until)
    return out

  @staticmethod
  def _check_greedy(kwargs: dict[str, Any]) -> None:
    """Refuses sampling: decoding here is greedy (HF's default, `do_sample=False`)."""
    do_sample = kwargs.pop("do_sample", False)
    temperature = kwargs.get("temperature", 1.0 if do_sample else 0.0)
    if do_sample and float(temperature) != 0.0:
      raise NotImplementedError(
          f"sft_jax: sampling (do_sample=True, temperature={temperature}) is not supported; decoding is "
          "greedy. Drop do_sample or pass --gen_kwargs do_sample=False (or temperature=0).")
    unknown = sorted(set(kwargs) - set(_SAMPLING_ONLY_KWARGS))
    if unknown:
      logging.warning("sft_jax: generation options %s are ignored (greedy decoding)", unknown)

  # ---- chat templates --------------------------------------------------------------------------

  def _select_chat_template(self, name: str | None) -> chat.ChatTemplate:
    """A built-in template, a tokenizer_config.json/model directory's, or the checkpoint's own."""
    source = name or self._chat_template_arg or self._loaded.assets_dir
    if source is None:
      raise ValueError(f"sft_jax: {self.checkpoint} has no tokenizer_config.json with a chat template; pass "
                       "model_args chat_template=chatml|llama3|PATH or --apply_chat_template NAME")
    return chat.get_chat_template(source)

  def chat_template(self, chat_template: bool | str = False) -> str | None:
    """The template lm-eval will apply: its Jinja source, or a built-in template's name."""
    if chat_template is False or chat_template is None:
      return None
    self._chat_template = self._select_chat_template(chat_template if isinstance(chat_template, str) else None)
    return getattr(self._chat_template, "source", self._chat_template.name)

  def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The conversation rendered as text by the model's chat template (`sft_jax.data.chat`)."""
    if self._chat_template is None:
      self._chat_template = self._select_chat_template(None)
    template = self._chat_template

    def render(messages: list[dict[str, str]], generation_prompt: bool) -> str:
      if isinstance(template, chat.JinjaChatTemplate):
        return template.render_text(messages, generation_prompt)
      return "".join(piece.text for piece in template.pieces(messages, generation_prompt))

    if not add_generation_prompt and chat_history and chat_history[-1]["role"] == "assistant":
      # lm-eval's assistant prefill (a task's gen_prefix): the reply stays open, as HFLM's
      # `continue_final_message=True` leaves it, so the model continues it.
      text = render(chat_history[:-1], True) + chat_history[-1]["content"]
    else:
      text = render(chat_history, add_generation_prompt)
    for token in template.special_tokens:
      # A turn marker the tokenizer splits into pieces would silently become plain text.
      if token in text and len(self.vocabulary.encode(token)) != 1:
        raise ValueError(f"sft_jax: chat template {template.name!r} writes special token {token!r}, which is "
                         "not one token of the model's vocabulary")
    return text


def cut_at_stop_strings(text: str, until: Iterable[str]) -> str:
  """`text` up to the earliest occurrence of any non-empty stop string (lm-eval's rule)."""
  for stop in until:
    if stop:
      text = text.split(stop)[0]
  return text
