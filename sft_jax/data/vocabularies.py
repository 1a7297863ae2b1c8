"""Vocabularies as seqio.Vocabulary objects, chosen by gin.

The quickstart uses bytes: the synthetic tasks are character-level operations
(reverse, count letters, change case), a byte vocabulary needs no training step
and no file, and its 259-entry softmax keeps a from-scratch CPU model cheap.
"""

from __future__ import annotations

import gin
import seqio

PAD_ID = 0
EOS_ID = 1


@gin.configurable
def get_vocabulary(kind: str = "byte") -> seqio.Vocabulary:
  """Returns the vocabulary named by `kind` (only "byte" for now)."""
  if kind == "byte":
    return seqio.ByteVocabulary()
  raise ValueError(f"get_vocabulary: unknown vocabulary kind {kind!r}; expected 'byte'")
