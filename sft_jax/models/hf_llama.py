"""Hugging Face LLaMA, Mistral and Qwen2 causal LMs <-> sft_jax's decoder: config and tensors.

Layouts: HF `nn.Linear` weights are [out, in]; sft_jax `DenseGeneral` kernels are [in, out]
with heads split, e.g. q_proj.weight [H*D_head, D] -> query.kernel [D, H, D_head] and
k_proj.weight [G*D_head, D] -> key.kernel [D, G, D_head] (G kv heads). Hugging Face stores the
query/key rows already permuted for its "rotate half" RoPE, which `decoder.apply_rope` uses, so
no permutation is needed. A tied head is the embedding table: the file's `lm_head.weight`, if
any, is ignored, as transformers does.

config.json: transformers 5 writes RoPE as `rope_parameters` {"rope_type", "rope_theta", ...};
older files have `rope_theta` and `rope_scaling`. Both are read; export writes both.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

from sft_jax.models import decoder
from sft_jax.models import hf_tensors
from sft_jax.models import layers
from sft_jax.models.hf_tensors import TensorMap

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
MODEL_TYPES = ("llama", "mistral", "qwen2")
GIN_CLASSES = ("DecoderConfig", "DecoderOnlyModel")  # (config class, model interface class)
_MODEL_TYPE = dict(zip(ARCHITECTURES, MODEL_TYPES))
_ARCHITECTURE = dict(zip(MODEL_TYPES, ARCHITECTURES))
# transformers' defaults per model type, for keys a config.json leaves out.
_DEFAULTS = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, rms_norm_eps=1e-6, eos_token_id=2, max_position_embeddings=2048),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-6, eos_token_id=2,
                    sliding_window=4096, max_position_embeddings=4096 * 32),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-6, eos_token_id=None,
                  max_position_embeddings=32768),
}


# ---- config.json <-> DecoderConfig ----------------------------------------------------------

def _model_type(hf: Mapping[str, Any], path: str) -> str:
  architectures = hf.get("architectures") or []
  model_type = _MODEL_TYPE.get(architectures[0]) if architectures else hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{path}: architecture {architectures or hf.get('model_type')!r} is not supported; "
                     f"supported: {', '.join(ARCHITECTURES)}")
  return model_type


def _rope(hf: Mapping[str, Any], max_positions: int, path: str) -> tuple[float, dict | None]:
  """(rope_theta, rope_scaling) of either config.json spelling."""
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  theta = float(params.pop("rope_theta", None) or hf.get("rope_theta") or 10_000.0)
  if float(params.pop("partial_rotary_factor", 1.0)) != 1.0:
    raise ValueError(f"{path}: partial_rotary_factor is not supported")
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type == "llama3":  # transformers' default for files that leave it out
    params.setdefault("original_max_position_embeddings", max_positions)
  return theta, (params if rope_type != "default" else None)


def decoder_config_from_hf(hf: Mapping[str, Any], *, path: str = "config.json",
                           **overrides: Any) -> tuple[decoder.DecoderConfig, tuple[int, ...]]:
  """(DecoderConfig, EOS ids) of a transformers LLaMA/Mistral/Qwen2 config."""
  model_type = _model_type(hf, path)
  defaults = _DEFAULTS[model_type]
  get = lambda key: hf.get(key, defaults.get(key))  # noqa: E731
  if get("hidden_act") not in (None, "silu") and get("hidden_act") not in layers.MLP_ACTIVATIONS:
    raise ValueError(f"{path}: hidden_act={get('hidden_act')!r} is not supported")
  if hf.get("mlp_bias"):
    raise ValueError(f"{path}: mlp_bias=true is not supported")
  # LLaMA's attention_bias also puts a bias on o_proj; Qwen2 always has q/k/v biases and none on o_proj.
  if model_type == "llama" and hf.get("attention_bias"):
    raise ValueError(f"{path}: attention_bias=true (biases on q/k/v/o_proj) is not supported")
  sliding_window = None
  if model_type == "mistral":
    sliding_window = get("sliding_window")
  elif model_type == "qwen2" and hf.get("use_sliding_window"):
    raise ValueError(f"{path}: use_sliding_window=true is not supported")
  heads = get("num_attention_heads")
  theta, scaling = _rope(hf, get("max_position_embeddings"), path)
  fields = dict(
      vocab_size=get("vocab_size"), d_model=get("hidden_size"), num_layers=get("num_hidden_layers"),
      num_heads=heads, num_kv_heads=get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or get("hidden_size") // heads, d_ff=get("intermediate_size"),
      rms_norm_eps=float(get("rms_norm_eps")), rope_theta=theta, rope_scaling=scaling,
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      attention_bias=model_type == "qwen2", mlp_activation=get("hidden_act") or "silu",
      sliding_window=sliding_window)
  fields.update(overrides)
  eos = get("eos_token_id")
  eos_ids = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
  try:
    return decoder.DecoderConfig(**fields), eos_ids
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e


def start_token_from_hf(hf: Mapping[str, Any], *, path: str = "config.json") -> int | None:
  """`DecoderOnlyModel.bos_id` of a transformers config: the start token HF's tokenizer puts first.

  LLaMA and Mistral tokenizers prepend BOS (config.json's bos_token_id, e.g. Llama 3's 128000),
  so rows start with it as in pretraining. Qwen2's tokenizer adds no BOS (whatever bos_token_id
  says), so rows start with the prompt's first token (None), as `concat(prompt, target)` in
  transformers; likewise a LLaMA/Mistral config without bos_token_id.
  """
  if _model_type(hf, path) == "qwen2":
    return None
  bos = hf.get("bos_token_id")
  return int(bos) if isinstance(bos, int) else None


def _architecture(config: decoder.DecoderConfig, base: Mapping[str, Any]) -> str:
  for name in base.get("architectures") or []:
    if name in ARCHITECTURES:
      return name
  if config.attention_bias:
    return "Qwen2ForCausalLM"
  return "MistralForCausalLM" if config.sliding_window is not None else "LlamaForCausalLM"


def hf_config(config: decoder.DecoderConfig, base: Mapping[str, Any] | None = None,
              dtype: str = "float32") -> dict:
  """A transformers config.json for `config`, keeping the other entries of `base`."""
  out = dict(base or {})
  architecture = _architecture(config, out)
  model_type = _MODEL_TYPE[architecture]
  if config.attention_bias != (model_type == "qwen2"):
    raise ValueError(f"DecoderConfig.attention_bias={config.attention_bias} has no {architecture} equivalent")
  scaling = dict(config.rope_scaling or ())
  rope_type = scaling.pop("rope_type", "default")
  out.update(
      architectures=[architecture], model_type=model_type, vocab_size=config.vocab_size,
      hidden_size=config.d_model, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
      head_dim=config.head_dim, intermediate_size=config.d_ff, rms_norm_eps=config.rms_norm_eps,
      hidden_act=config.mlp_activation, tie_word_embeddings=config.tie_word_embeddings,
      # transformers 5 reads rope_parameters; older versions rope_theta and rope_scaling.
      rope_parameters={"rope_type": rope_type, "rope_theta": config.rope_theta, **scaling},
      rope_theta=config.rope_theta, rope_scaling={"rope_type": rope_type, **scaling} if scaling else None,
      dtype=dtype)
  if model_type == "llama":
    out.update(attention_bias=False, mlp_bias=False)
  elif model_type == "mistral":
    out["sliding_window"] = config.sliding_window
  else:
    out.update(use_sliding_window=False)
  out.setdefault("max_position_embeddings", int(
      scaling.get("original_max_position_embeddings", 2048) * scaling.get("factor", 1)))
  out.pop("torch_dtype", None)
  return out


# ---- the parameter table --------------------------------------------------------------------

def tensor_maps(config: decoder.DecoderConfig) -> list[TensorMap]:
  """Every parameter of `config`'s network with its HF name and layout, in HF order."""
  d, h, g, k = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
  f, v = config.d_ff, config.vocab_size
  maps = [TensorMap("model.embed_tokens.weight", ("token_embedder", "embedding"), (v, d), (v, d), (0, 1))]
  for i in range(config.num_layers):
    prefix, path = f"model.layers.{i}", ("layers", i)
    attn = path + ("self_attention",)
    maps.append(hf_tensors.vector(f"{prefix}.input_layernorm.weight",
                                  path + ("pre_self_attention_layer_norm", "scale"), d))
    for hf_name, ours, heads in (("q_proj", "query", h), ("k_proj", "key", g), ("v_proj", "value", g)):
      maps.append(hf_tensors.heads_in(f"{prefix}.self_attn.{hf_name}.weight", attn + (ours, "kernel"), heads, k, d))
      if config.attention_bias:
        maps.append(TensorMap(f"{prefix}.self_attn.{hf_name}.bias", attn + (ours, "bias"),
                              (heads * k,), (heads, k), (0, 1)))
    maps.append(hf_tensors.heads_out(f"{prefix}.self_attn.o_proj.weight", attn + ("out", "kernel"), h, k, d))
    maps.append(hf_tensors.vector(f"{prefix}.post_attention_layernorm.weight",
                                  path + ("pre_mlp_layer_norm", "scale"), d))
    for hf_name, ours in (("gate_proj", "wi_0"), ("up_proj", "wi_1")):
      maps.append(hf_tensors.linear(f"{prefix}.mlp.{hf_name}.weight", path + ("mlp", ours, "kernel"), f, d))
    maps.append(hf_tensors.linear(f"{prefix}.mlp.down_proj.weight", path + ("mlp", "wo", "kernel"), d, f))
  maps.append(hf_tensors.vector("model.norm.weight", ("decoder_norm", "scale"), d))
  if not config.tie_word_embeddings:
    maps.append(hf_tensors.linear("lm_head.weight", ("logits_dense", "kernel"), v, d))
  return maps


def export_maps(config: decoder.DecoderConfig) -> list[TensorMap]:
  """What export writes: the parameter table (transformers ties a missing head to the embedding)."""
  return tensor_maps(config)


# ---- import ---------------------------------------------------------------------------------

def resolve_name(files: hf_tensors.SafetensorsDir, hf_name: str) -> str | None:
  """The name under which `hf_name` is stored (always its own)."""
  return hf_name if hf_name in set(files.names()) else None


def is_ignored(name: str, config: decoder.DecoderConfig) -> bool:
  """A tied head's copy and RoPE frequency buffers that older files saved are not parameters."""
  return (config.tie_word_embeddings and name == "lm_head.weight") or name.endswith("rotary_emb.inv_freq")


def model_from_hf(hf: Mapping[str, Any], files: hf_tensors.SafetensorsDir, *, path: str,
                  **overrides: Any) -> decoder.DecoderOnlyModel:
  """The model interface of a transformers LLaMA/Mistral/Qwen2 directory."""
  config, eos_ids = decoder_config_from_hf(hf, path=path, **overrides)
  if config.sliding_window is not None:
    logging.warning("%s: sliding_window=%d; sequences longer than the window are refused", path,
                    config.sliding_window)
  return decoder.DecoderOnlyModel(config, eos_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids,
                                  bos_id=start_token_from_hf(hf, path=path))


# ---- gin --------------------------------------------------------------------------------------

def model_gin(model: decoder.DecoderOnlyModel) -> list[str]:
  """Gin lines that rebuild `model`."""
  lines = ["import sft_jax.models.decoder", "", "MODEL = @decoder.DecoderOnlyModel()",
           "decoder.DecoderOnlyModel.config = @decoder.DecoderConfig()",
           f"decoder.DecoderOnlyModel.eos_id = {model.eos_id!r}",
           f"decoder.DecoderOnlyModel.bos_id = {model.bos_id!r}"]
  return lines + [f"decoder.DecoderConfig.{f.name} = {getattr(model.config, f.name)!r}"
                  for f in dataclasses.fields(model.config)]


def model_from_bindings(config_fields: dict[str, Any], model_fields: dict[str, Any]) -> decoder.DecoderOnlyModel:
  """The model of literal `DecoderConfig.*` and `DecoderOnlyModel.eos_id`/`bos_id` gin bindings."""
  return decoder.DecoderOnlyModel(decoder.DecoderConfig(**config_fields), eos_id=model_fields.get("eos_id", 1),
                                  bos_id=model_fields.get("bos_id", 0))
