"""Test-wide JAX settings."""

import jax

# Implicit rank promotion hides shape bugs; library code must broadcast explicitly.
jax.config.update("jax_numpy_rank_promotion", "raise")
