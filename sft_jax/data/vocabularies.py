"""Vocabularies as seqio.Vocabulary objects, chosen by gin.

The default kind is bytes (no file, nothing to train). The embedded synthetic
tasks bring their own SentencePiece model, trained on their text
(`sft_jax.data.collections.synthetic_vocab`). Pretrained models bring their own
tokenizer: a SentencePiece model (T5, Flan-T5) or a Hugging Face `tokenizer.json`
(LLaMA family, Qwen, ...).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

PAD_ID = 0
EOS_ID = 1

# Special-token names of a Hugging Face tokenizer_config.json / special_tokens_map.json.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                       "mask_token")


def _token_content(value: object) -> str | None:
  """The token string of a config entry: a plain string or a serialized AddedToken dict."""
  if isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"]
  return None


def _read_json(path: str) -> dict:
  with tf.io.gfile.GFile(path, "r") as f:
    return json.load(f)


def read_special_tokens(path: str) -> dict[str, str]:
  """Special tokens (`eos_token`, `pad_token`, ...) named by a Hugging Face model directory or config file."""
  if tf.io.gfile.isdir(path):
    # tokenizer_config.json wins over the older special_tokens_map.json, which
    # only fills in names the config leaves out.
    files = [os.path.join(path, name) for name in ("special_tokens_map.json", "tokenizer_config.json")]
  else:
    files = [path]
  tokens: dict[str, str] = {}
  for file in files:
    if not tf.io.gfile.exists(file):
      continue
    config = _read_json(file)
    for name in SPECIAL_TOKEN_NAMES:
      content = _token_content(config.get(name))
      if content is not None:
        tokens[name] = content
  return tokens


class HFTokenizerVocabulary(seqio.Vocabulary):
  """A seqio Vocabulary over a Hugging Face `tokenizers` JSON file.

  `path` is a tokenizer.json file or a model directory holding one; a directory
  also supplies the EOS/PAD/BOS/UNK tokens from its tokenizer_config.json or
  special_tokens_map.json. `eos_id`/`pad_id`/`bos_id` override those.

  Encoding never adds special tokens (BOS, EOS or a post-processor template):
  seqio features append EOS and chat templates place BOS and turn tokens, so a
  tokenizer-side BOS would be added twice.

  When the tokenizer has no pad token, `pad_id` is the EOS id. That is safe
  here because sft_jax never derives loss masks from pad ids: loss weights come
  from segment ids (packing.py), so an EOS stays a learned target even when
  pad_id == eos_id.
  """

  def __init__(self, path: str, *, eos_id: int | None = None, pad_id: int | None = None,
               bos_id: int | None = None, decode_special_tokens: bool = False):
    # Imported here so that sft_jax.data imports without the `tokenizers` package.
    import tokenizers  # pylint: disable=g-import-not-at-top

    if tf.io.gfile.isdir(path):
      tokenizer_file = os.path.join(path, "tokenizer.json")
      named = read_special_tokens(path)
    else:
      tokenizer_file, named = path, {}
    if not tf.io.gfile.exists(tokenizer_file):
      raise FileNotFoundError(f"HFTokenizerVocabulary: no tokenizer.json at {tokenizer_file}")
    with tf.io.gfile.GFile(tokenizer_file, "r") as f:
      tokenizer_json = f.read()
    self._path = path
    self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    self._fingerprint = hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()
    self._decode_special_tokens = decode_special_tokens
    # Added tokens may sit above the model's own vocabulary with gaps between
    # them, so the size is one past the largest id, not a count of entries.
    self._size = max(self._tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    def named_id(name: str) -> int | None:
      token = named.get(name)
      if token is None:
        return None
      token_id = self._tokenizer.token_to_id(token)
      if token_id is None:
        raise ValueError(f"HFTokenizerVocabulary({path!r}): {name} {token!r} from the tokenizer config "
                         "is not in tokenizer.json")
      return token_id

    model_unk = getattr(self._tokenizer.model, "unk_token", None)
    self._unk_id = named_id("unk_token")
    if self._unk_id is None and isinstance(model_unk, str):
      self._unk_id = self._tokenizer.token_to_id(model_unk)
    self._bos_id = bos_id if bos_id is not None else named_id("bos_token")
    self._eos_id = eos_id if eos_id is not None else named_id("eos_token")
    if self._eos_id is None:
      raise ValueError(f"HFTokenizerVocabulary({path!r}): no EOS token; pass a model directory whose "
                       "tokenizer_config.json names eos_token, or eos_id=")
    pad = pad_id if pad_id is not None else named_id("pad_token")
    self._pad_id = self._eos_id if pad is None else pad
    for name, value in (("eos_id", self._eos_id), ("pad_id", self._pad_id), ("bos_id", self._bos_id)):
      if value is not None and not 0 <= value < self._size:
        raise ValueError(f"HFTokenizerVocabulary({path!r}): {name}={value} is outside [0, {self._size})")
    super().__init__(extra_ids=0)

  @property
  def tokenizer(self):
    """The underlying `tokenizers.Tokenizer`."""
    return self._tokenizer

  def token_to_id(self, token: str) -> int | None:
    """Id of one token string (e.g. a special token such as "<|im_end|>"), or None."""
    return self._tokenizer.token_to_id(token)

  @property
  def bos_id(self) -> int | None:
    return self._bos_id

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def unk_id(self) -> int | None:
    return self._unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  # -- Python --------------------------------------------------------------------------------

  def _encode(self, s: str | bytes) -> list[int]:
    s = s.decode("utf-8") if isinstance(s, bytes) else s
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Sequence[int]) -> str:
    # seqio's decode keeps the first EOS and decode_tf pads after it: neither is text.
    ids = [int(i) for i in ids if int(i) not in (self._eos_id, self._pad_id)]
    return self._tokenizer.decode(ids, skip_special_tokens=not self._decode_special_tokens)

  # -- TensorFlow ----------------------------------------------------------------------------

  def _encode_rows(self, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    texts = [s.decode("utf-8") for s in strings.tolist()]
    encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
    values = np.array([i for e in encodings for i in e.ids], dtype=np.int32)
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    return values, lengths

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
    """A scalar string gives a 1-D int32 tensor; a 1-D batch a RaggedTensor [batch, None]."""
    s = tf.convert_to_tensor(s, dtype=tf.string)
    if s.shape.rank not in (0, 1):
      raise ValueError(f"HFTokenizerVocabulary.encode_tf: expected a scalar or 1-D string tensor, got "
                       f"shape {s.shape}")
    values, lengths = tf.numpy_function(self._encode_rows, [tf.reshape(s, [-1])], [tf.int32, tf.int64],
                                        stateful=False)
    values.set_shape([None])
    if s.shape.rank == 0:
      return values
    lengths.set_shape(s.shape)
    return tf.RaggedTensor.from_row_lengths(values, lengths)

  def _decode_rows(self, ids: np.ndarray) -> np.ndarray:
    rows = ids.reshape(int(np.prod(ids.shape[:-1])), ids.shape[-1])
    out = np.empty(len(rows), dtype=object)
    out[:] = [self._decode(row).encode("utf-8") for row in rows]
    return out.reshape(ids.shape[:-1])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """Decodes along the last axis: [..., length] int ids give [...] strings."""
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank is None or ids.shape.rank == 0:
      raise ValueError(f"HFTokenizerVocabulary.decode_tf: expected ids of rank >= 1, got shape {ids.shape}")
    text = tf.numpy_function(self._decode_rows, [ids], tf.string, stateful=False)
    text.set_shape(ids.shape[:-1])
    return text

  # -- identity ------------------------------------------------------------------------------

  def _key(self) -> tuple:
    return (self._fingerprint, self._eos_id, self._pad_id, self._bos_id, self._unk_id,
            self._decode_special_tokens)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, HFTokenizerVocabulary) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  @property
  def path(self) -> str:
    """The tokenizer.json file or model directory this vocabulary was read from."""
    return self._path

  def __str__(self) -> str:
    return (f"HFTokenizerVocabulary(path={self._path!r}, size={self._size}, eos_id={self._eos_id}, "
            f"pad_id={self._pad_id}, sha256={self._fingerprint[:12]})")


@functools.lru_cache(maxsize=None)
def _load_hf_vocabulary(path: str, eos_id: int | None, pad_id: int | None) -> HFTokenizerVocabulary:
  # Every task asks for its features' vocabulary; parse a 100k-entry tokenizer.json once.
  return HFTokenizerVocabulary(path, eos_id=eos_id, pad_id=pad_id)


@gin.configurable
def get_vocabulary(kind: str = "byte", path: str | None = None, eos_id: int | None = None,
                   pad_id: int | None = None) -> seqio.Vocabulary:
  """Returns the vocabulary named by `kind`: "byte", "sentencepiece" (a .model file) or "hf".

  "hf" reads a tokenizer.json file or a Hugging Face model directory; `eos_id`
  and `pad_id` override the ids it names (see HFTokenizerVocabulary).
  """
  if kind != "hf" and (eos_id is not None or pad_id is not None):
    raise ValueError(f"get_vocabulary: eos_id/pad_id overrides apply to kind 'hf' only, not {kind!r}")
  if kind == "byte":
    if path is not None:
      raise ValueError(f"get_vocabulary: kind 'byte' takes no path, got {path!r}")
    return seqio.ByteVocabulary()
  if kind in ("sentencepiece", "hf") and not path:
    raise ValueError(f"get_vocabulary: kind {kind!r} needs path=")
  if kind == "sentencepiece":
    return seqio.SentencePieceVocabulary(path)
  if kind == "hf":
    return _load_hf_vocabulary(path, eos_id, pad_id)
  raise ValueError(f"get_vocabulary: unknown vocabulary kind {kind!r}; expected 'byte', 'sentencepiece' "
                   "or 'hf'")
