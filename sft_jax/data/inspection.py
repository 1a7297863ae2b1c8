"""Human-readable dumps of what a mixture feeds the model."""

from __future__ import annotations

import seqio


def format_examples(mixture_or_task_name: str, split: str, n: int, seed: int = 0) -> str:
  """The first `n` examples of a mixture/task split: prompt, target and token counts."""
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  dataset = provider.get_dataset(sequence_length=None, split=split, shuffle=split == "train", seed=seed,
                                 num_epochs=1, trim_output_features=False)
  blocks = []
  for k, ex in enumerate(dataset.take(n).as_numpy_iterator()):
    blocks.append(
        f"--- example {k} ({len(ex['inputs'])} input tokens, {len(ex['targets'])} target tokens)\n"
        f"[inputs]\n{ex['inputs_pretokenized'].decode()}\n[targets]\n{ex['targets_pretokenized'].decode()}")
  return "\n".join(blocks)
