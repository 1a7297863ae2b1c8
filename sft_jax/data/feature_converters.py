"""seqio FeatureConverters that pack best-fit, for `seqio.get_dataset(..., feature_converter=...)`.

They run the host packer of packing.py over the task's examples inside
`tf.data.Dataset.from_generator` and produce packed rows (not batches) with the
same feature names as seqio's EncDecFeatureConverter and LM converters.
Over-long examples reach the packer untrimmed only with
`get_dataset(..., trim_output_features=False)`; with seqio's default trimming
they arrive already cut by the Task (a plain slice, which can lose EOS).
"""

from __future__ import annotations

import copy
from typing import Mapping

import seqio
import tensorflow as tf

from sft_jax.data import packing
from sft_jax.data.vocabularies import EOS_ID

_INT = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)


class _BestFitConverter(seqio.FeatureConverter):
  """Shared plumbing: packing options, the generator dataset, untrimmed inputs."""

  def __init__(self, *, buffer_size: int = packing.DEFAULT_BUFFER_SIZE, overlong: str = "truncate",
               eos_id: int = EOS_ID, bos_id: int | None = None, apply_length_check: bool = True):
    super().__init__(pack=True, apply_length_check=apply_length_check, bos_id=bos_id)
    self._options = dict(buffer_size=buffer_size, overlong=overlong, eos_id=eos_id)
    # Shared with the per-call copies that BestFitDecoderFeatureConverter makes.
    self._latest_counts = [packing.PackingCounts()]

  @property
  def counts(self) -> packing.PackingCounts:
    """What the packer did in the latest pass over a converted dataset."""
    return self._latest_counts[0]

  def _validate_dataset(self, ds, expected_features, expected_lengths, strict, error_label):
    if not strict:
      # Input validation: over-long examples are the packer's to truncate or drop, and count.
      expected_lengths = {}
    return super()._validate_dataset(ds, expected_features, expected_lengths, strict, error_label)

  def _packed(self, ds: tf.data.Dataset, task_features: tuple[str, ...], input_length: int | None,
              target_length: int, bos_id: int | None, prompt_length: int | None = None) -> tf.data.Dataset:
    """The rows of the host packer over `ds`, as a dataset."""
    ds = ds.map(lambda ex: {k: ex[k] for k in task_features})
    options, latest_counts = self._options, self._latest_counts

    def rows():
      packer = packing.BestFitRowPacker(ds.as_numpy_iterator(), input_length, target_length,
                                        bos_id=bos_id, prompt_length=prompt_length, **options)
      latest_counts[0] = packer.counts
      yield from packer

    lengths = {name: input_length if name.startswith("encoder") else target_length
               for name in (packing.FEATURES if input_length is not None else packing.DECODER_FEATURES)}
    return tf.data.Dataset.from_generator(
        rows, output_signature={k: tf.TensorSpec([n], tf.int32) for k, n in lengths.items()})


class BestFitEncDecFeatureConverter(_BestFitConverter):
  """EncDecFeatureConverter(pack=True) with best-fit-decreasing packing.

  Task features "inputs" and "targets"; model features and lengths as seqio's
  EncDecFeatureConverter: the encoder side has the "inputs" length and the
  decoder side the "targets" length.
  """

  TASK_FEATURES = {"inputs": _INT, "targets": _INT}
  MODEL_FEATURES = {k: _INT for k in ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                                      "decoder_loss_weights")}
  PACKING_FEATURE_DTYPES = {k: tf.int32 for k in ("encoder_segment_ids", "decoder_segment_ids",
                                                  "encoder_positions", "decoder_positions")}

  def __init__(self, *, buffer_size: int = packing.DEFAULT_BUFFER_SIZE, overlong: str = "truncate",
               eos_id: int = EOS_ID, apply_length_check: bool = True):
    super().__init__(buffer_size=buffer_size, overlong=overlong, eos_id=eos_id,
                     apply_length_check=apply_length_check)

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    """Packs {"inputs", "targets"} examples into encoder-decoder rows."""
    return self._packed(ds, ("inputs", "targets"), task_feature_lengths["inputs"],
                        task_feature_lengths["targets"], None)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    """Encoder features get the "inputs" length, decoder features the "targets" length."""
    return {k: task_feature_lengths["inputs"] if k.startswith("encoder") else task_feature_lengths["targets"]
            for k in packing.FEATURES}


class BestFitDecoderFeatureConverter(_BestFitConverter):
  """A decoder-only packing converter (seqio's DecoderFeatureConverter, best-fit, no causal-attention mask).

  The example kind follows the keys of `task_feature_lengths`, as in seqio:
  {"inputs", "targets"} concatenates them into rows of inputs + targets length
  with loss on the targets (an over-long prompt is cut from its start, down to
  the "inputs" length when the targets need the rest); {"targets", "loss_weights"} takes per-token weights
  (a rendered chat); {"targets"} alone puts loss everywhere. `bos_id=None` keeps
  seqio's shift-right decoder inputs; `bos_id=k` prefixes k and predicts token
  t+1 from tokens up to t (Hugging Face LLaMA convention).
  """

  TASK_FEATURES = {"targets": _INT}  # plus "inputs" or "loss_weights", chosen per call
  MODEL_FEATURES = {k: _INT for k in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights")}
  PACKING_FEATURE_DTYPES = {"decoder_segment_ids": tf.int32, "decoder_positions": tf.int32}

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    """seqio's checks and conversion, for the example kind named by `task_feature_lengths`."""
    if {"inputs", "loss_weights"} <= set(task_feature_lengths):
      raise ValueError("task_feature_lengths names both 'inputs' and 'loss_weights'; a decoder example has "
                       "either a prompt or per-token loss weights")
    # A copy with this call's TASK_FEATURES, so seqio's exact-match check sees the right set
    # and concurrent calls with other kinds do not interfere.
    converter = copy.copy(self)
    converter.TASK_FEATURES = {k: _INT for k in task_feature_lengths}
    return super(BestFitDecoderFeatureConverter, converter).__call__(ds, task_feature_lengths)

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    """Packs decoder-only examples into rows of the decoder length."""
    features = tuple(k for k in ("inputs", "targets", "loss_weights") if k in task_feature_lengths)
    length = self.get_model_feature_lengths(task_feature_lengths)["decoder_target_tokens"]
    return self._packed(ds, features, None, length, self.bos_id, task_feature_lengths.get("inputs"))

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    """Every feature has the decoder length: "inputs" + "targets", or "targets" alone."""
    length = task_feature_lengths["targets"] + task_feature_lengths.get("inputs", 0)
    return {k: length for k in packing.DECODER_FEATURES}
