"""Instruction collections: each module registers its seqio tasks and mixtures when imported."""

from __future__ import annotations

# The module that registers the tasks and mixtures whose names start with each prefix, so a tool
# given only a name can import what registers it. Super-NI registers from SUPERNI_DIR when gin
# is finalized, so importing its module alone registers nothing.
REGISTERING_MODULES = {
    "synthetic": "sft_jax.data.collections.synthetic",
    "synthetic_preferences": "sft_jax.data.collections.synthetic_preferences",
    "flan2021": "sft_jax.data.collections.flan2021",
    "flan2022": "sft_jax.data.collections.flan2021",
    "t0": "sft_jax.data.collections.t0",
    "superni": "sft_jax.data.collections.superni",
}


def registering_module(name: str) -> str | None:
  """The module that registers the collection task or mixture `name` (longest matching prefix), or None."""
  prefixes = [prefix for prefix in REGISTERING_MODULES if name.startswith(prefix)]
  return REGISTERING_MODULES[max(prefixes, key=len)] if prefixes else None
