"""Everything tf.data lives in this package; nothing else in sft_jax imports TensorFlow."""

import tensorflow as tf

# tf.data runs on the host; keep TensorFlow off accelerators that JAX owns.
tf.config.set_visible_devices([], "GPU")
if tf.config.list_physical_devices("TPU"):
  tf.config.set_visible_devices([], "TPU")
