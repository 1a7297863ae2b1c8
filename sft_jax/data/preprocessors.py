"""seqio preprocessors shared by the task collections."""

from __future__ import annotations

import seqio

from sft_jax.data import vocabularies


def text_to_text_features() -> dict[str, seqio.Feature]:
  """Output features of a text-to-text task: `inputs` and `targets`, both ending in EOS."""
  vocab = vocabularies.get_vocabulary()
  return {
      "inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
  }


# Tokenize the rendered strings (keeping `*_pretokenized` copies for evaluation),
# then append EOS. Trimming to the sequence length happens in the packer, which
# counts truncations instead of hiding them.
TOKENIZE_AND_APPEND_EOS = (
    seqio.preprocessors.tokenize,
    seqio.preprocessors.append_eos_after_trim,
)
