"""Human-readable dumps of what a mixture feeds the model."""

from __future__ import annotations

from sft_jax.data import pipeline


def format_examples(mixture_or_task_name: str, split: str, n: int, seed: int = 0) -> str:
  """The first `n` examples of a mixture/task split: prompt, target and token counts."""
  dataset = pipeline.get_dataset(mixture_or_task_name, sequence_length=None, split=split,
                                 shuffle=split == "train", seed=seed, num_epochs=1, trim_output_features=False)
  blocks = []
  for k, ex in enumerate(dataset.take(n).as_numpy_iterator()):
    blocks.append(
        f"--- example {k} ({len(ex['inputs'])} input tokens, {len(ex['targets'])} target tokens)\n"
        f"[inputs]\n{ex['inputs_pretokenized'].decode()}\n[targets]\n{ex['targets_pretokenized'].decode()}")
  return "\n".join(blocks)
