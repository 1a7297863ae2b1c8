"""Greedy and beam search of imported models equal `transformers`' `generate`, token for token.

Tiny random T5 and Llama models are built in transformers with weights large enough that the
next-token distributions are neither flat nor one-hot, saved as safetensors and imported with
`hf_io`. Some ordinary token ids serve as EOS so that rows and beams end at different steps
(`test_cases_end_early_and_beams_differ_from_greedy` checks that the cases exercise that).
"""

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sft_jax.inference import decoding  # noqa: E402
from sft_jax.models import hf_io  # noqa: E402
from sft_jax.train import partitioning  # noqa: E402

VOCAB = 64
STEPS = 10


def _randomize(model, embed_name: str, scale: float, norm_names: tuple[str, ...]):
  """Matrices with std scale / sqrt(fan_in) (embeddings std scale), norm scales jittered."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      if param.ndim == 2:
        std = scale if embed_name in name else scale / param.shape[1] ** 0.5
        param.copy_(torch.randn_like(param) * std)
      if any(n in name for n in norm_names):
        param.add_(0.2 * torch.randn_like(param))
  return model


def build_t5():
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=2,
      relative_attention_num_buckets=16, relative_attention_max_distance=16, dropout_rate=0.0,
      decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, feed_forward_proj="gated-gelu",
      tie_word_embeddings=False)
  model = _randomize(transformers.T5ForConditionalGeneration(config).eval(), "shared", 4.0, ("layer_norm",))
  with torch.no_grad():  # a softer head: several continuations stay plausible
    model.lm_head.weight.mul_(0.3)
  return model


def build_llama():
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, head_dim=8, bos_token_id=2, eos_token_id=1, pad_token_id=0,
      tie_word_embeddings=False)
  return _randomize(transformers.LlamaForCausalLM(config).eval(), "embed_tokens", 1.0, ("norm",))


def _load(hf_model, path):
  hf_model.save_pretrained(path)
  loaded = hf_io.import_hf(path, mesh=partitioning.create_mesh(), rules=partitioning.logical_axis_rules())
  return hf_model, loaded, nnx.merge(loaded.graphdef, loaded.params)


@pytest.fixture(scope="module")
def t5_models(tmp_path_factory):
  return _load(build_t5(), str(tmp_path_factory.mktemp("t5")))


@pytest.fixture(scope="module")
def llama_models(tmp_path_factory):
  return _load(build_llama(), str(tmp_path_factory.mktemp("llama")))


def _t5_inputs():
  tokens = np.random.default_rng(0).integers(3, VOCAB, (4, 12))
  tokens[1, 7:] = 0
  tokens[3, 4:] = 0
  return tokens


def _llama_prompts():
  """Left-padded prompts of 12, 5, 9 and 2 tokens (transformers wants left padding)."""
  rng = np.random.default_rng(1)
  left = np.zeros((4, 12), np.int64)
  for row, length in enumerate([12, 5, 9, 2]):
    left[row, 12 - length:] = rng.integers(3, VOCAB, length)
  return left


# generate() kwargs: greedy, and beam search in each early_stopping mode with length penalties
# below, at and above 1.
CASES = {
    "greedy": dict(num_beams=1),
    "beam4": dict(num_beams=4),
    "beam3_lp0.5": dict(num_beams=3, length_penalty=0.5),
    "beam4_lp2_early": dict(num_beams=4, length_penalty=2.0, early_stopping=True),
    "beam4_lp1.5_never": dict(num_beams=4, length_penalty=1.5, early_stopping="never"),
}
# EOS ids per case (one or two: beam search keeps (1 + #eos) * num_beams candidates).
T5_EOS = {"default": (22, 35), "beam4_lp2_early": (6,)}
LLAMA_EOS = {"default": (4,), "beam4_lp1.5_never": (18, 33)}


def _decode_config(kwargs: dict, eos_ids: tuple[int, ...], **extra) -> decoding.DecodeConfig:
  beams = kwargs["num_beams"]
  return decoding.DecodeConfig(
      method="beam" if beams > 1 else "greedy", num_beams=beams, max_new_tokens=STEPS,
      length_penalty=kwargs.get("length_penalty", 1.0), early_stopping=kwargs.get("early_stopping", False),
      eos_ids=eos_ids, **extra)


def _hf_generate(hf_model, input_ids, kwargs, eos_ids, **extra):
  with torch.no_grad():
    return hf_model.generate(input_ids=torch.tensor(input_ids),
                             attention_mask=torch.tensor((input_ids != 0).astype(np.int64)),
                             max_new_tokens=STEPS, do_sample=False, eos_token_id=list(eos_ids),
                             pad_token_id=0, **kwargs, **extra).numpy()


def _assert_same_until_end(got, want, eos_ids):
  """Rows agree up to transformers' end token; sft_jax has 0 after it (transformers pads)."""
  assert got.shape == (want.shape[0], STEPS)
  for row in range(want.shape[0]):
    ends = np.flatnonzero(np.isin(want[row], eos_ids))
    stop = ends[0] + 1 if len(ends) else STEPS
    assert want.shape[1] >= stop
    np.testing.assert_array_equal(got[row, :stop], want[row, :stop], err_msg=f"row {row}")
    assert not got[row, stop:].any(), got[row]


def _sft_t5(loaded, module, inputs, config):
  predict = nnx.jit(lambda m, e: loaded.model.predict_batch(m, {"encoder_input_tokens": e}, STEPS, config))
  return np.asarray(predict(module, jnp.asarray(inputs, jnp.int32)))


def _sft_llama(loaded, module, prompts, config):
  predict = nnx.jit(lambda m, p: loaded.model.predict_batch(
      m, {"decoder_input_tokens": p, "decoder_segment_ids": (p != 0).astype(jnp.int32)}, STEPS, config))
  return np.asarray(predict(module, jnp.asarray(prompts, jnp.int32)))


@pytest.mark.parametrize("case", list(CASES))
def test_t5_matches_transformers_generate(case, t5_models):
  hf_model, loaded, module = t5_models
  kwargs = CASES[case]
  eos_ids = T5_EOS.get(case, T5_EOS["default"])
  inputs = _t5_inputs()
  want = _hf_generate(hf_model, inputs, kwargs, eos_ids)[:, 1:]  # after the decoder start token
  got = _sft_t5(loaded, module, inputs, _decode_config(kwargs, eos_ids))
  _assert_same_until_end(got, want, eos_ids)


@pytest.mark.parametrize("case", list(CASES))
def test_llama_left_padded_matches_transformers_generate(case, llama_models):
  hf_model, loaded, module = llama_models
  kwargs = CASES[case]
  eos_ids = LLAMA_EOS.get(case, LLAMA_EOS["default"])
  prompts = _llama_prompts()
  want = _hf_generate(hf_model, prompts, kwargs, eos_ids)[:, prompts.shape[1]:]
  got = _sft_llama(loaded, module, prompts, _decode_config(kwargs, eos_ids))
  _assert_same_until_end(got, want, eos_ids)


class _GeneratedSuffix(transformers.StoppingCriteria):
  """transformers' reference for stop sequences: the generated tokens end with `sequence`."""

  def __init__(self, prompt_length: int, sequence: tuple[int, ...]):
    self.prompt_length, self.sequence = prompt_length, torch.tensor(sequence)

  def __call__(self, input_ids, scores, **kwargs):
    generated = input_ids[:, self.prompt_length:]
    if generated.shape[1] < len(self.sequence):
      return torch.zeros(input_ids.shape[0], dtype=torch.bool)
    return torch.all(generated[:, -len(self.sequence):] == self.sequence[None, :], dim=1)


@pytest.mark.parametrize("case", ["greedy", "beam3_lp0.5"])
def test_llama_stop_sequences_match_transformers_stopping_criteria(case, llama_models):
  hf_model, loaded, module = llama_models
  kwargs = CASES[case]
  prompts = _llama_prompts()
  eos_ids = (1,)
  free = _hf_generate(hf_model, prompts, kwargs, eos_ids)[:, 12:]
  # Two tokens the unconstrained output of row 2 emits at steps 3 and 4, and a one-token stop.
  stops = ((int(free[2, 3]), int(free[2, 4])), (int(free[0, 6]),))
  criteria = transformers.StoppingCriteriaList([_GeneratedSuffix(12, s) for s in stops])
  want = _hf_generate(hf_model, prompts, kwargs, eos_ids, stopping_criteria=criteria)[:, 12:]
  got = _sft_llama(loaded, module, prompts, _decode_config(kwargs, eos_ids, stop_sequences=stops))
  stopped_by = []
  for row in range(4):
    ends = [(i + 1, s) for i in range(want.shape[1]) for s in stops
            if i + 1 >= len(s) and tuple(want[row, i + 1 - len(s):i + 1]) == s]
    stop = ends[0][0] if ends else min(STEPS, want.shape[1])
    np.testing.assert_array_equal(got[row, :stop], want[row, :stop], err_msg=f"row {row}")
    assert not got[row, stop:].any()
    if ends and ends[0][0] < STEPS:
      stopped_by.append(ends[0][1])
  # Rows did end early on stop sequences, each kept in the output.
  assert stopped_by


def test_cases_end_early_and_beams_differ_from_greedy(t5_models, llama_models):
  """The reference outputs above are informative: some hypotheses end early, beams beat greedy."""
  for hf_model, inputs, eos_table, cut in ((t5_models[0], _t5_inputs(), T5_EOS, 1),
                                           (llama_models[0], _llama_prompts(), LLAMA_EOS, 12)):
    outputs = {}
    for case, kwargs in CASES.items():
      eos_ids = eos_table.get(case, eos_table["default"])
      outputs[case] = _hf_generate(hf_model, inputs, kwargs, eos_ids)[:, cut:]
      if case in ("beam4", "beam3_lp0.5"):
        ended = [np.isin(row[:STEPS - 1], eos_ids).any() for row in outputs[case]]
        assert any(ended) and not all(ended), case
    greedy = outputs["greedy"]
    assert any(out.shape != greedy.shape or (out != greedy).any()
               for case, out in outputs.items() if case != "greedy")
