"""Reward accuracy of a DPO run on held-back synthetic preference pairs, next to its SFT reference.

  python benchmarks/dpo_pairs.py --policy=runs/qs_dpo --reference=runs/qs [--pairs_per_task=24]

The pairs are the first --pairs_per_task test pairs of every `synthetic_preferences.<task>` task
(the seen synthetic tasks' right answers against near misses, rendered with their training
templates from the test split's seed, so no training batch holds them). Both models score every
chosen and rejected answer (summed log-likelihood, EOS included, as `tools/score.py`). Per pair:
the reference prefers the chosen answer when its log-likelihood is higher under the reference
(the SFT model's own ranking, the baseline); the DPO reward of an answer is
beta * (log pi(answer) - log ref(answer)), and the pair counts for reward accuracy when the
chosen answer's reward is higher (beta > 0 does not change which). The policy ranks the pair
right when its own log-likelihood of the chosen answer is higher. The table gives, per task and
overall, the three accuracies; ratio = policy ranking / reference ranking.
Prints a table and, last, one JSON line.
"""

import argparse
import itertools
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from sft_jax import config  # noqa: E402
from sft_jax.data.collections import synthetic, synthetic_preferences, synthetic_tasks  # noqa: E402
from sft_jax.evaluation import score_file  # noqa: E402
from sft_jax.models import hf_io  # noqa: E402
from sft_jax.train import partitioning  # noqa: E402


def pairs_from_test_split(pairs_per_task: int) -> list[dict]:
  """The first `pairs_per_task` test pairs of every seen synthetic task, each tagged with its task."""
  pairs = []
  for task in synthetic_tasks.TASKS:
    if task.heldout:
      continue
    rendered = synthetic_preferences.render_pairs(task, task.templates, "test", synthetic.EVAL_SEED)
    pairs += [dict(pair, task=task.name) for pair in itertools.islice(rendered, pairs_per_task)]
  return pairs


def log_likelihoods(model_dir: str, pairs: list[dict], mesh, rules) -> tuple[np.ndarray, np.ndarray]:
  """Summed log-likelihoods [N] of the chosen and of the rejected answers under `model_dir`'s model."""
  loaded = hf_io.load_model_dir(model_dir, mesh=mesh, rules=rules)
  result = []
  for side in ("chosen", "rejected"):
    examples = [(i + 1, {"inputs": p["inputs"], "targets": p[side]}) for i, p in enumerate(pairs)]
    tokenized = score_file.tokenize(examples, loaded.vocabulary, f"{model_dir}:{side}", loaded.model.config.vocab_size)
    result.append(np.asarray(score_file.score_pairs(loaded, tokenized, mesh=mesh, rules=rules, batch_size=64)))
  return result[0], result[1]


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--policy", required=True, help="model directory of the DPO run")
  parser.add_argument("--reference", required=True, help="model directory of the SFT run it started from")
  parser.add_argument("--pairs_per_task", type=int, default=24)
  args = parser.parse_args(argv)
  config.setup_logging()
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  pairs = pairs_from_test_split(args.pairs_per_task)
  ref_chosen, ref_rejected = log_likelihoods(args.reference, pairs, mesh, rules)
  pol_chosen, pol_rejected = log_likelihoods(args.policy, pairs, mesh, rules)
  columns = {
      "reference ranks chosen": ref_chosen > ref_rejected,
      "policy ranks chosen": pol_chosen > pol_rejected,
      "reward accuracy": (pol_chosen - ref_chosen) > (pol_rejected - ref_rejected),
  }
  tasks = np.array([p["task"] for p in pairs])
  print(f"{'task':<28}" + "".join(f"{name:>24}" for name in columns))
  for task in dict.fromkeys(tasks):
    rows = tasks == task
    print(f"{task:<28}" + "".join(f"{float(np.mean(v[rows])):>24.3f}" for v in columns.values()))
  overall = {name.replace(" ", "_"): float(np.mean(v)) for name, v in columns.items()}
  print(f"{'all ' + str(len(pairs)) + ' pairs':<28}" + "".join(f"{v:>24.3f}" for v in overall.values()))
  result = dict(overall, pairs=len(pairs), tasks=int(len(set(tasks))),
                ratio=overall["policy_ranks_chosen"] / overall["reference_ranks_chosen"])
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
