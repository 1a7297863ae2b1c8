"""CheckpointScorer: one set of compiled functions serves several parameter sets."""

import numpy as np

from sft_jax.data.collections import synthetic, synthetic_vocab
from sft_jax.evaluation import evaluator
from sft_jax.models import t5
from sft_jax.train import partitioning
from sft_jax.train import state as state_lib

TINY = t5.EncoderDecoderModel(t5.T5Config(vocab_size=synthetic_vocab.VOCAB_SIZE, d_model=32, num_heads=2,
                                          head_dim=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1))


def test_with_params_scores_exactly_like_a_scorer_built_for_those_params():
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  examples = evaluator.load_examples(synthetic.TASK_PREFIX + "pick_largest_number", "test", 6)
  vocab = synthetic_vocab.vocabulary()
  with state_lib.mesh_context(mesh, rules):
    graphdef, params_a = state_lib.init_params(TINY, 0, mesh, rules)
    _, params_b = state_lib.init_params(TINY, 1, mesh, rules)
    scorer_a = evaluator.CheckpointScorer(TINY, graphdef, params_a, mesh, 8, 64, 8)
    shared_b = scorer_a.with_params(params_b)
    fresh_b = evaluator.CheckpointScorer(TINY, graphdef, params_b, mesh, 8, 64, 8)
    pairs = [(ex.inputs, np.array(vocab.encode(ex.target) + [1], np.int32)) for ex in examples]
    a = scorer_a._run(scorer_a._score, pairs)
    b_shared, b_fresh = shared_b._run(shared_b._score, pairs), fresh_b._run(fresh_b._score, pairs)
    assert shared_b._score is scorer_a._score  # compiled once
    np.testing.assert_array_equal(b_shared, b_fresh)
    assert not np.allclose(a, b_shared)  # the other parameters were really used
    assert shared_b.generate(examples, vocab) == fresh_b.generate(examples, vocab)
