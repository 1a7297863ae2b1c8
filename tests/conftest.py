"""Test-wide JAX settings."""

import os
import tempfile

# Many tests compile the same tiny programs (a train step, a decoder, a scorer), in this process,
# in the other pytest worker and in the child processes some tests start: XLA's persistent
# compilation cache compiles each once. Set through the environment, before JAX is imported, so
# that child processes inherit it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "sft_jax_tests_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

import jax  # noqa: E402

# Implicit rank promotion hides shape bugs; library code must broadcast explicitly.
jax.config.update("jax_numpy_rank_promotion", "raise")
