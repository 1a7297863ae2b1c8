"""LoRA and QLoRA: low-rank adapters on chosen projections of a frozen (optionally NF4) base.

`LoRAModel` wraps a model interface (t5.EncoderDecoderModel, decoder.DecoderOnlyModel) and keeps
its interface (init / loss_fn / score_batch / predict_batch). Its network is the base network
with every targeted `layers.DenseGeneral` replaced by a `LoRADense`:

  y = x W + (alpha / r) * dropout(x) A B      W: in x out (frozen), A: in x r, B: r x out

(the transpose of PyTorch's W + (alpha/r) B A). A starts kaiming-uniform as in PEFT, B at zero,
so the step-0 network is the base network. Variable types say who trains:

  LoRAParam   (an nnx.Param)    the adapters A and B: differentiated and in the optimizer state;
  FrozenParam (an nnx.Variable) every base parameter, and NF4Param (a FrozenParam) the
                                 quantized storage of a base kernel; carried, never updated.

Logical axes: A is (kernel in-axes..., "lora_rank"), B is ("lora_rank", kernel out-axes...);
a base kernel keeps its own path and axes, so a base checkpoint maps onto it one to one.

The trainer (train/state.py) keeps the adapters in `TrainState.params` (the only variables
differentiated and in the optimizer state) and the base in `TrainState.frozen`; checkpoints hold
the adapters and their optimizer state only, at their module paths (".../query/lora_a"), and the
base is re-read from the run's `init_checkpoint` (recorded in MODEL_DIR/lora_base.json) on resume
and evaluation. `merged_params` folds the adapters into a plain base-model state for export.

QLoRA (`quantize_base="nf4"`, after Dettmers et al. 2023): each targeted base kernel is stored as
4-bit NormalFloat codes, blockwise over 64 consecutive weights of a row with a float32 absmax per
block, and those absmax scales double-quantized: their mean is subtracted and the rest stored as
int8 with one float32 absmax per 256 scales. The kernel is dequantized on the fly in each matmul.
Memory: 4 + 8/64 + 32/(64*256) ~= 4.127 bits per weight (plus row padding to a multiple of 64).
Only targeted kernels are quantized (QLoRA targets every projection); embeddings, norms and
untargeted projections stay frozen in their dtype. The storage is sharded by the kernel's first
logical axis (rows), the rest replicated; `nf4_layout` falls back to one flat row otherwise.

Reconstruction bound (per weight w of a block with absmax s, scale block absmax s2):
  encoding rounds w/s in [-1, 1] to the nearest NF4 code, both ends of which are codes, so
  |w/s - code| <= g/2 with g = NF4_MAX_GAP (the largest gap between adjacent codes, 0.3038);
  the stored scale s' = q/127 * s2 + mean has |s - s'| <= s2/254 (round to nearest);
  w' = code * s' with |code| <= 1, so |w - w'| <= s*|w/s - code| + |code|*|s - s'|
                                          <= s * g/2 + s2/254   (+ float32 rounding).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

from flax import nnx
import gin
import jax
import jax.numpy as jnp
import numpy as np

from sft_jax.models import layers


class LoRAParam(nnx.Param):
  """A trainable low-rank adapter matrix (A or B)."""


class FrozenParam(nnx.Variable):
  """A base-model parameter under LoRA: used by the forward pass, never differentiated or updated."""


class NF4Param(FrozenParam):
  """Part of the NF4 storage of a frozen base kernel (packed codes or quantized scales)."""


class LoRADropoutKey(nnx.Variable):
  """The dropout key of one LoRADense for one forward pass, set by `LoRAModel.loss_fn`."""


# ---- NF4 -----------------------------------------------------------------------------------------

# The 16 NormalFloat-4 values of the QLoRA paper (bitsandbytes' `create_normal_map`): quantiles
# of N(0, 1) (8 positive incl. 1, 7 negative, plus an exact 0), normalized to [-1, 1].
NF4_CODES = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], np.float32)
NF4_MAX_GAP = float(np.max(np.diff(NF4_CODES)))
_NF4_MIDPOINTS = (NF4_CODES[1:] + NF4_CODES[:-1]) / 2
NF4_BLOCKSIZE = 64
SCALE_BLOCKSIZE = 256
QUANTIZATIONS = (None, "nf4")


def nf4_quantize_blocks(x_NxB: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(uint8 codes [N, B] of the NF4 value nearest each x / absmax, float32 absmax [N]) of each row."""
  x_NxB = x_NxB.astype(jnp.float32)
  absmax_N = jnp.max(jnp.abs(x_NxB), axis=1)
  safe_N = jnp.where(absmax_N > 0, absmax_N, 1.0)
  normalized_NxB = x_NxB / safe_N[:, None]
  codes_NxB = jnp.searchsorted(jnp.asarray(_NF4_MIDPOINTS), normalized_NxB, side="left")
  return codes_NxB.astype(jnp.uint8), absmax_N


def nf4_dequantize_blocks(codes_NxB: jax.Array, absmax_N: jax.Array) -> jax.Array:
  """float32 [N, B]: each code's NF4 value times its row's absmax."""
  return jnp.take(jnp.asarray(NF4_CODES), codes_NxB.astype(jnp.int32), axis=0) * absmax_N[:, None]


def double_quantize(scales_M: jax.Array,
                    blocksize: int = SCALE_BLOCKSIZE) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(int8 [M], float32 absmax per `blocksize` scales, float32 mean) of float32 `scales_M`.

  q = round(127 * (s - mean) / absmax2); blocks run over the flat order of the scales.
  """
  mean = jnp.mean(scales_M)
  centered_M = scales_M - mean
  num_blocks = -(-scales_M.shape[0] // blocksize)
  padded_KxS = jnp.pad(centered_M, (0, num_blocks * blocksize - scales_M.shape[0])).reshape(num_blocks, blocksize)
  absmax2_K = jnp.max(jnp.abs(padded_KxS), axis=1)
  safe_K = jnp.where(absmax2_K > 0, absmax2_K, 1.0)
  q_KxS = jnp.round(padded_KxS / safe_K[:, None] * 127.0)
  return q_KxS.reshape(-1)[:scales_M.shape[0]].astype(jnp.int8), absmax2_K, mean


def double_dequantize(q: jax.Array, absmax2_K: jax.Array, mean: jax.Array,
                      blocksize: int = SCALE_BLOCKSIZE) -> jax.Array:
  """float32 scales of `double_quantize`'s output; `q` may have any shape (flat order counts)."""
  flat_index = jnp.arange(q.size, dtype=jnp.int32).reshape(q.shape)
  return q.astype(jnp.float32) / 127.0 * jnp.take(absmax2_K, flat_index // blocksize, axis=0) + mean


class NF4Tensor(NamedTuple):
  """NF4 storage of a kernel: rows of `rows_padded` weights in blocks of 64 (see `nf4_layout`)."""
  codes: jax.Array  # uint8 [R, P / 2], two 4-bit codes per byte (high nibble first)
  absmax_q: jax.Array  # int8 [R, P / 64]: double-quantized block absmax
  absmax_scale: jax.Array  # float32 [ceil(R * P / 64 / 256)]: absmax of each 256 block scales
  absmax_mean: jax.Array  # float32 []: the scales' mean, subtracted before quantizing them


def nf4_layout(shape: Sequence[int], blocksize: int = NF4_BLOCKSIZE) -> tuple[int, int, int]:
  """(rows, weights per row, padded weights per row) of a kernel's NF4 storage.

  Rows follow the kernel's first axis when the rest of it fills whole blocks, so the storage
  shards like the kernel's first logical axis; otherwise the kernel is one flat row.
  """
  numel = int(np.prod(shape))
  rest = numel // shape[0] if len(shape) >= 2 and shape[0] else numel
  rows, row_len = (shape[0], rest) if len(shape) >= 2 and rest % blocksize == 0 else (1, numel)
  return rows, row_len, -(-row_len // blocksize) * blocksize


def nf4_quantize(w: jax.Array, blocksize: int = NF4_BLOCKSIZE) -> NF4Tensor:
  """NF4 storage of kernel `w` (blockwise absmax, double-quantized scales)."""
  rows, row_len, padded = nf4_layout(w.shape, blocksize)
  w_RxP = jnp.pad(w.astype(jnp.float32).reshape(rows, row_len), ((0, 0), (0, padded - row_len)))
  codes_NxB, absmax_N = nf4_quantize_blocks(w_RxP.reshape(-1, blocksize))
  codes_RxP = codes_NxB.reshape(rows, padded)
  packed_RxH = (codes_RxP[:, 0::2] << 4) | codes_RxP[:, 1::2]
  absmax_q, absmax_scale, absmax_mean = double_quantize(absmax_N)
  return NF4Tensor(packed_RxH, absmax_q.reshape(rows, padded // blocksize), absmax_scale, absmax_mean)


def nf4_dequantize(q: NF4Tensor, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """The kernel of shape `shape` that `q` stores, in `dtype`."""
  blocksize = q.codes.shape[1] * 2 // q.absmax_q.shape[1]
  rows, row_len, padded = nf4_layout(shape, blocksize)
  codes_RxP = jnp.stack([q.codes >> 4, q.codes & 0xF], axis=-1).reshape(rows, padded)
  absmax_RxK = double_dequantize(q.absmax_q, q.absmax_scale, q.absmax_mean)
  values_NxB = nf4_dequantize_blocks(codes_RxP.reshape(-1, blocksize), absmax_RxK.reshape(-1))
  return values_NxB.reshape(rows, padded)[:, :row_len].reshape(tuple(shape)).astype(dtype)


# ---- the adapted projection ------------------------------------------------------------------------

def _frozen(variable: nnx.Variable) -> FrozenParam:
  return FrozenParam(variable.get_value(), **variable.get_metadata())


class LoRADense(nnx.Module):
  """A `layers.DenseGeneral` (or one with a bias) with a frozen kernel and a low-rank adapter."""

  def __init__(self, dense: layers.DenseGeneral, *, rank: int, alpha: float, dropout_rate: float = 0.0,
               quantize: str | None = None, rngs: nnx.Rngs):
    kernel = dense.kernel
    names = tuple(kernel.get_metadata().get("out_sharding") or (None,) * kernel.ndim)
    self.num_in, self.dtype = dense.num_in, dense.dtype
    self.kernel_shape, self.kernel_dtype = tuple(kernel.shape), kernel.dtype
    self.rank, self.scaling, self.dropout_rate = rank, alpha / rank, dropout_rate
    self.quantize, self.merged = quantize, False
    if quantize is None:
      self.kernel = _frozen(kernel)
    elif quantize == "nf4":
      q = nf4_quantize(kernel.get_value())
      row_name = names[0] if q.codes.shape[0] == self.kernel_shape[0] and len(names) >= 2 else None
      self.kernel_codes = layers.logical_variable(NF4Param, q.codes, (row_name, None))
      self.kernel_absmax_q = layers.logical_variable(NF4Param, q.absmax_q, (row_name, None))
      self.kernel_absmax_scale = layers.logical_variable(NF4Param, q.absmax_scale, (None,))
      self.kernel_absmax_mean = layers.logical_variable(NF4Param, q.absmax_mean, ())
    else:
      raise ValueError(f"LoRA quantize_base={quantize!r}; expected one of {QUANTIZATIONS}")
    if hasattr(dense, "bias"):
      self.bias = _frozen(dense.bias)
    in_shape, out_shape = self.kernel_shape[:self.num_in], self.kernel_shape[self.num_in:]
    # PEFT's kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), variance 1/(3 fan_in).
    init_a = layers.variance_scaling_init(1.0 / 3.0, self.num_in, "uniform")
    self.lora_a = layers.logical_variable(
        LoRAParam, init_a(rngs.lora(), in_shape + (rank,), jnp.float32), names[:self.num_in] + ("lora_rank",))
    self.lora_b = layers.logical_variable(
        LoRAParam, jnp.zeros((rank,) + out_shape, jnp.float32), ("lora_rank",) + names[self.num_in:])

  def base_kernel(self) -> jax.Array:
    """The frozen kernel (dequantized from NF4 if so stored), in the base parameter dtype."""
    if self.quantize == "nf4":
      q = NF4Tensor(self.kernel_codes[...], self.kernel_absmax_q[...], self.kernel_absmax_scale[...],
                    self.kernel_absmax_mean[...])
      return nf4_dequantize(q, self.kernel_shape, self.kernel_dtype)
    return self.kernel[...]

  def delta(self) -> jax.Array:
    """(alpha / r) * A B in the kernel's shape, float32."""
    return self.scaling * jnp.tensordot(self.lora_a[...], self.lora_b[...], axes=1)

  def merged_kernel(self) -> jax.Array:
    """The kernel with the adapter folded in (once), in the base parameter dtype."""
    kernel = self.base_kernel()
    if self.merged:
      return kernel
    return (kernel.astype(jnp.float32) + self.delta()).astype(self.kernel_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    y = jnp.tensordot(x, self.base_kernel().astype(self.dtype), axes=self.num_in)
    if not self.merged:
      key = getattr(self, "dropout_key", None)
      h = layers.dropout(x, self.dropout_rate, None if key is None else key[...])
      h = jnp.tensordot(h, self.lora_a[...].astype(self.dtype), axes=self.num_in)
      h = jnp.tensordot(h, self.lora_b[...].astype(self.dtype), axes=1)
      y = y + h * jnp.asarray(self.scaling, self.dtype)
    if hasattr(self, "bias"):
      bias = self.bias[...].astype(self.dtype)
      y = y + bias.reshape((1,) * (y.ndim - bias.ndim) + bias.shape)
    return y


def lora_layers(module: nnx.Module) -> list[tuple[tuple, LoRADense]]:
  """(path, layer) of every LoRADense in `module`."""
  return [(path, m) for path, m in nnx.iter_modules(module) if isinstance(m, LoRADense)]


def merge(module: nnx.Module) -> None:
  """Folds every adapter into its frozen kernel in place (W += (alpha/r) A B); the forward
  pass then skips the adapter. Undo with `unmerge`. NF4 kernels cannot be merged in place."""
  for path, layer in lora_layers(module):
    if layer.quantize is not None:
      raise ValueError(f"merge: {'/'.join(map(str, path))} has a {layer.quantize} kernel; use merged_params")
    if not layer.merged:
      layer.kernel.set_value(layer.merged_kernel())
      layer.merged = True


def unmerge(module: nnx.Module) -> None:
  """Takes merged adapters back out of their kernels (W -= (alpha/r) A B)."""
  for _, layer in lora_layers(module):
    if layer.merged:
      kernel = layer.kernel[...].astype(jnp.float32) - layer.delta()
      layer.kernel.set_value(kernel.astype(layer.kernel_dtype))
      layer.merged = False


# ---- the model interface --------------------------------------------------------------------------

def _path_name(path: Sequence[Any]) -> str:
  return "/".join(str(p) for p in path)


def _matches(path: Sequence[Any], targets: Sequence[str]) -> bool:
  """A target names a projection attribute ("query") or the end of its path ("self_attention/query")."""
  name = _path_name(path)
  return any(name == t or name.endswith("/" + t) for t in targets)


@gin.configurable
class LoRAModel:
  """A base model interface with LoRA adapters on the projections named by `targets`.

  Every base parameter is frozen; only the adapters train. `quantize_base="nf4"` stores the
  targeted kernels in NF4 (QLoRA). `base_checkpoint` (a model directory) is where the base
  weights come from when the model is built outside the trainer (evaluation, export); the
  trainer takes them from its `init_checkpoint`. Without either the base is freshly initialized.
  """

  trainable = LoRAParam
  frozen = FrozenParam

  def __init__(self, base: Any = gin.REQUIRED, targets: Sequence[str] = ("query", "value"), rank: int = 8,
               alpha: float = 16.0, dropout: float = 0.0, quantize_base: str | None = None,
               base_checkpoint: str | None = None):
    if rank < 1:
      raise ValueError(f"LoRAModel: rank={rank}; expected a positive integer")
    if quantize_base not in QUANTIZATIONS:
      raise ValueError(f"LoRAModel: quantize_base={quantize_base!r}; expected one of {QUANTIZATIONS}")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"LoRAModel: dropout={dropout}; expected a rate in [0, 1)")
    if isinstance(targets, str):
      targets = (targets,)
    self.base, self.targets, self.rank, self.alpha = base, tuple(targets), rank, float(alpha)
    self.dropout, self.quantize_base, self.base_checkpoint = dropout, quantize_base, base_checkpoint

  @property
  def config(self) -> Any:
    return self.base.config

  @config.setter
  def config(self, value: Any) -> None:
    self.base.config = value

  @property
  def eos_id(self) -> Any:
    return self.base.eos_id

  @property
  def feature_layout(self) -> str:
    return getattr(self.base, "feature_layout", "encoder_decoder")

  def wrap(self, module: nnx.Module, seed: int) -> nnx.Module:
    """Turns a base network into the adapted one in place: targeted projections become
    LoRADense (adapters drawn from `seed`), every other base parameter a FrozenParam."""
    rngs = nnx.Rngs(lora=jax.random.fold_in(jax.random.key(seed), 0x10AA))
    found, projections = 0, []
    for path, parent in list(nnx.iter_modules(module)):
      for name, child in list(vars(parent).items()):
        if isinstance(child, layers.DenseGeneral):
          projections.append(_path_name(tuple(path) + (name,)))
          if _matches(tuple(path) + (name,), self.targets):
            setattr(parent, name, LoRADense(child, rank=self.rank, alpha=self.alpha, dropout_rate=self.dropout,
                                            quantize=self.quantize_base, rngs=rngs))
            found += 1
    if not found:
      raise ValueError(f"LoRAModel: targets {self.targets} match no projection; the projections are "
                       f"{sorted({p.rsplit('/', 1)[-1] for p in projections})} (or a path ending, "
                       f"e.g. {projections[0]!r})")
    for _, parent in list(nnx.iter_modules(module)):
      for name, child in list(vars(parent).items()):
        if isinstance(child, nnx.Param) and not isinstance(child, LoRAParam):
          setattr(parent, name, _frozen(child))
    *_, rest = nnx.split(module, LoRAParam, FrozenParam, ...)
    if jax.tree.leaves(rest):
      raise ValueError(f"LoRAModel: the base holds state LoRA does not handle: "
                       f"{[_path_name(p) for p, _ in nnx.to_flat_state(rest)][:5]}")
    return module

  def init(self, rng_seed: int) -> nnx.Module:
    """The base network drawn from `rng_seed` with adapters (B = 0: it computes the base function)."""
    return self.wrap(self.base.init(rng_seed), rng_seed)

  def loss_fn(self, module: nnx.Module, batch: Any, *, dropout_rng: jax.Array | None = None,
              **kwargs) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """The base model's loss; with `dropout_rng` and `dropout > 0` the adapters' inputs drop out."""
    if dropout_rng is not None and self.dropout > 0.0:
      dropout_rng, lora_rng = jax.random.split(dropout_rng)
      for i, (_, layer) in enumerate(lora_layers(module)):
        layer.dropout_key = LoRADropoutKey(jax.random.fold_in(lora_rng, i))
    return self.base.loss_fn(module, batch, dropout_rng=dropout_rng, **kwargs)

  def score_batch(self, module: nnx.Module, batch: Any) -> jax.Array:
    return self.base.score_batch(module, batch)

  def score_pairs(self, module: nnx.Module, prompts: Any, first: Any, second: Any) -> tuple[jax.Array, jax.Array]:
    return self.base.score_pairs(module, prompts, first, second)

  def score_choices(self, module: nnx.Module, batch: Any) -> jax.Array:
    return self.base.score_choices(module, batch)

  def predict_batch(self, module: nnx.Module, batch: Any, max_decode_length: int,
                    decode_config: Any = None, rng: jax.Array | None = None) -> jax.Array:
    """The base model's decoding (greedy unless `decode_config` says otherwise) through the adapters."""
    return self.base.predict_batch(module, batch, max_decode_length, decode_config, rng)


def is_lora(model: Any) -> bool:
  """Whether `model` is a LoRAModel (its state splits into trainable adapters and a frozen base)."""
  return isinstance(model, LoRAModel)


def merged_params(model: LoRAModel, module: nnx.Module) -> tuple[Any, nnx.State]:
  """(graphdef, params) of the base network with every adapter folded in (NF4 kernels dequantized).

  The result is a plain base-model state of nnx.Param, so `hf_io.save_hf(out, model.config,
  params)` and the base model's own interface use it unchanged.
  """
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: model.base.init(0)), nnx.Param)
  values = {tuple(path) + ("kernel",): layer.merged_kernel() for path, layer in lora_layers(module)}
  for path, variable in nnx.to_flat_state(nnx.state(module, FrozenParam)):
    values.setdefault(tuple(path), variable.get_value())
  flat = list(nnx.to_flat_state(abstract))
  missing = [_path_name(p) for p, _ in flat if tuple(p) not in values]
  if missing:
    raise ValueError(f"merged_params: the adapted network lacks base parameters {missing[:5]}")
  return graphdef, nnx.from_flat_state([(p, v.replace(values[tuple(p)])) for p, v in flat])


def num_bits(tree: Any) -> int:
  """Bits held by the arrays of `tree` (as stored: packed NF4 codes count 4 bits per weight)."""
  return sum(8 * int(math.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
