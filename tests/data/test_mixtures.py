"""Mixing rates against hand-computed values and seqio's own, and held-out splits as data."""

import pytest
import seqio

from sft_jax.data import mixtures

SIZES = {"test_mixtures.a": 100, "test_mixtures.b": 10_000, "test_mixtures.c": 500}
A, B, C = SIZES


def _register_fake_task(name: str, num_examples: int) -> None:
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["train"],
                                              num_input_examples={"train": num_examples}),
        output_features={"targets": seqio.Feature(seqio.PassThroughVocabulary(10))})


for _name, _size in SIZES.items():
  _register_fake_task(_name, _size)
for _name in ("test_mixtures.nli1", "test_mixtures.nli2", "test_mixtures.qa1", "test_mixtures.qa2"):
  _register_fake_task(_name, 10)


@pytest.fixture(autouse=True)
def _forget_test_mixtures():
  """Each test registers its mixtures and splits afresh."""
  splits, definitions = dict(mixtures._HELDOUT_SPLITS), dict(mixtures._DEFINITIONS)
  yield
  for name in list(seqio.MixtureRegistry.names()):
    if name.startswith("test_mixtures."):
      seqio.MixtureRegistry.remove(name)
  mixtures._HELDOUT_SPLITS.clear()
  mixtures._HELDOUT_SPLITS.update(splits)
  mixtures._DEFINITIONS.clear()
  mixtures._DEFINITIONS.update(definitions)


def _seqio_shares(mixture: seqio.Mixture) -> dict[str, float]:
  return {t.name: mixture.get_rate(t) / mixture.total_rate for t in mixture.tasks}


# ----- mixing_rates -----


def test_cap_gives_examples_proportional_rates_of_the_capped_counts():
  # Capped counts 100, 3000, 500: total 3600.
  rates = mixtures.mixing_rates(SIZES, cap=3000)
  assert rates == pytest.approx({A: 100 / 3600, B: 3000 / 3600, C: 500 / 3600}, rel=1e-12)
  assert list(rates) == list(SIZES)
  # No cap: plain examples-proportional.
  assert mixtures.mixing_rates(SIZES) == pytest.approx({A: 100 / 10_600, B: 10_000 / 10_600, C: 500 / 10_600})


def test_temperature_takes_the_root_of_the_capped_counts():
  # T=2: sqrt(100) = 10, sqrt(3000) = 54.7722557505, sqrt(500) = 22.3606797750; sum 87.1329355255.
  rates = mixtures.mixing_rates(SIZES, cap=3000, temperature=2.0)
  assert rates == pytest.approx({A: 0.1147671651, B: 0.6286056520, C: 0.2566271828}, abs=1e-9)


def test_weights_multiply_the_capped_count_before_the_temperature():
  # Capped counts 100, 3000, 500 times weights 3, 0.5, 0.2: 300, 1500, 100; total 1900. The weight
  # of the capped task counts: applied before the cap (seqio's `scale`) it would give 3000.
  weights = {A: 3.0, B: 0.5, C: 0.2}
  rates = mixtures.mixing_rates(SIZES, cap=3000, weights=weights)
  assert rates == pytest.approx({A: 300 / 1900, B: 1500 / 1900, C: 100 / 1900}, rel=1e-12)
  # With T=2: sqrt(300) = 17.3205080757, sqrt(1500) = 38.7298334621, sqrt(100) = 10; sum 66.0503415378.
  rates = mixtures.mixing_rates(SIZES, cap=3000, temperature=2.0, weights=weights)
  assert rates == pytest.approx({A: 0.2622319230, B: 0.5863684057, C: 0.1513996713}, abs=1e-9)
  # A task the weights leave out weighs 1.
  assert mixtures.mixing_rates(SIZES, cap=3000, weights={A: 3.0}) == pytest.approx(
      {A: 300 / 3800, B: 3000 / 3800, C: 500 / 3800}, rel=1e-12)
  with pytest.raises(ValueError, match="test_mixtures.z"):
    mixtures.mixing_rates(SIZES, weights={"test_mixtures.z": 2.0})


def test_bad_rate_arguments_raise():
  with pytest.raises(ValueError, match="temperature"):
    mixtures.mixing_rates(SIZES, temperature=0.0)
  with pytest.raises(ValueError, match="cap"):
    mixtures.mixing_rates(SIZES, cap=0)
  with pytest.raises(ValueError, match="sum to zero"):
    mixtures.mixing_rates({A: 0, B: 0})


@pytest.mark.parametrize("cap,temperature", [(None, 1.0), (3000, 1.0), (3000, 2.0), (None, 3.0), (200, 0.5)])
def test_rates_equal_seqio_mixing_rate_num_examples(cap, temperature):
  tasks = {name: seqio.get_mixture_or_task(name) for name in SIZES}
  seqio_rates = {name: seqio.mixing_rate_num_examples(task, maximum=cap, temperature=temperature)
                 for name, task in tasks.items()}
  total = sum(seqio_rates.values())
  expected = {name: rate / total for name, rate in seqio_rates.items()}
  assert mixtures.mixing_rates(SIZES, cap=cap, temperature=temperature) == pytest.approx(expected, rel=1e-12)

  # rate_fn reads the sizes through seqio when the mixture is read; the shares are the same.
  fn = mixtures.rate_fn(cap, temperature)
  assert {name: fn(task) for name, task in tasks.items()} == pytest.approx(seqio_rates, rel=1e-12)
  mixture = mixtures.register_mixture("test_mixtures.lazy", list(SIZES), rate=fn)
  assert _seqio_shares(mixture) == pytest.approx(expected, rel=1e-12)


def test_rate_fn_weight_matches_mixing_rates_weights():
  weights = {A: 3.0, B: 0.5, C: 0.2}
  for temperature in (1.0, 2.0):
    fns = {name: mixtures.rate_fn(3000, temperature, weights[name]) for name in SIZES}
    raw = {name: fns[name](seqio.get_mixture_or_task(name)) for name in SIZES}
    shares = {name: rate / sum(raw.values()) for name, rate in raw.items()}
    expected = mixtures.mixing_rates(SIZES, cap=3000, temperature=temperature, weights=weights)
    assert shares == pytest.approx(expected, rel=1e-12)


def test_registered_mixture_samples_at_the_computed_rates():
  mixture = mixtures.register_mixture("test_mixtures.capped", list(SIZES), num_examples=SIZES, cap=3000)
  assert seqio.get_mixture_or_task("test_mixtures.capped") is mixture
  assert _seqio_shares(mixture) == pytest.approx({A: 100 / 3600, B: 3000 / 3600, C: 500 / 3600}, rel=1e-12)
  uniform = mixtures.register_mixture("test_mixtures.uniform", [A, B])
  assert _seqio_shares(uniform) == {A: 0.5, B: 0.5}
  with pytest.raises(ValueError, match=r"missing \['test_mixtures.c'\]"):
    mixtures.register_mixture("test_mixtures.partial", list(SIZES), num_examples={A: 1, B: 2})
  with pytest.raises(ValueError, match="need num_examples"):
    mixtures.register_mixture("test_mixtures.nosizes", list(SIZES), cap=3000)


def test_registration_is_idempotent_for_the_same_definition_only():
  first = mixtures.register_mixture("test_mixtures.twice", list(SIZES), num_examples=SIZES, cap=3000)
  assert mixtures.register_mixture("test_mixtures.twice", list(SIZES), num_examples=SIZES, cap=3000) is first
  with pytest.raises(ValueError, match="already registered with a different definition"):
    mixtures.register_mixture("test_mixtures.twice", list(SIZES), num_examples=SIZES, cap=2000)
  lazy = mixtures.register_mixture("test_mixtures.lazy_twice", [A, B], rate=mixtures.rate_fn(300))
  assert mixtures.register_mixture("test_mixtures.lazy_twice", [A, B], rate=mixtures.rate_fn(300)) is lazy
  with pytest.raises(ValueError, match="already registered"):
    mixtures.register_mixture("test_mixtures.lazy_twice", [A, B], rate=mixtures.rate_fn(300),
                              heldout_tasks=["test_mixtures.nli1"])


# ----- Held-out splits -----

EVAL_TASKS = [mixtures.EvalTask("test_mixtures.nli1", "nli", False, "classification"),
              mixtures.EvalTask("test_mixtures.nli2", "nli", False, "classification"),
              mixtures.EvalTask("test_mixtures.qa1", "qa", False, "generation"),
              mixtures.EvalTask("test_mixtures.qa2", "qa", False, "generation")]


def test_heldout_clusters_and_tasks_are_declared_as_data():
  mixtures.register_mixture("test_mixtures.no_nli", ["test_mixtures.qa1", A], eval_tasks=EVAL_TASKS,
                            heldout_clusters=["nli"], heldout_tasks=["test_mixtures.qa2", C])
  split = mixtures.get_heldout_split("test_mixtures.no_nli")
  assert [(t.task_name, t.heldout) for t in split.eval_tasks] == [
      ("test_mixtures.nli1", True), ("test_mixtures.nli2", True), ("test_mixtures.qa1", False),
      ("test_mixtures.qa2", True)]
  # C is held out without being evaluated.
  assert split.heldout_task_names == {"test_mixtures.nli1", "test_mixtures.nli2", "test_mixtures.qa2", C}
  assert split.heldout_clusters == ("nli",)
  mixtures.check_no_heldout_in_training("test_mixtures.no_nli")  # does not raise


def test_a_mixture_that_trains_on_its_own_heldout_task_is_refused():
  with pytest.raises(ValueError, match=r"'test_mixtures.nli2' \(cluster 'nli'\)"):
    mixtures.register_mixture("test_mixtures.leaky", ["test_mixtures.qa1", "test_mixtures.nli2"],
                              eval_tasks=EVAL_TASKS, heldout_clusters=["nli"])
  with pytest.raises(ValueError, match=f"'{C}'"):
    mixtures.register_mixture("test_mixtures.leaky", [A, C], heldout_tasks=[C])
  assert "test_mixtures.leaky" not in seqio.MixtureRegistry.names()
  with pytest.raises(ValueError, match=r"held-out clusters \['nlii'\] contain no evaluation task"):
    mixtures.register_mixture("test_mixtures.typo", [A], eval_tasks=EVAL_TASKS, heldout_clusters=["nlii"])


def test_training_on_a_heldout_task_of_an_evaluation_suite_raises_naming_task_and_split():
  mixtures.register_mixture("test_mixtures.no_nli", ["test_mixtures.qa1", "test_mixtures.qa2"],
                            eval_tasks=EVAL_TASKS, heldout_clusters=["nli"])
  mixtures.register_mixture("test_mixtures.no_qa", ["test_mixtures.nli1", "test_mixtures.nli2"],
                            eval_tasks=EVAL_TASKS, heldout_clusters=["qa"])
  # Leave-one-cluster-out siblings each train on what the other holds out: each is fine on its own.
  mixtures.check_no_heldout_in_training("test_mixtures.no_nli")
  mixtures.check_no_heldout_in_training("test_mixtures.no_qa")
  # Evaluated on the sibling's suite, it is not.
  with pytest.raises(ValueError, match=r"split of mixture 'test_mixtures.no_qa' holds out: "
                                       r"'test_mixtures.qa1' \(cluster 'qa'\), 'test_mixtures.qa2'"):
    mixtures.check_no_heldout_in_training("test_mixtures.no_nli", eval_mixtures=["test_mixtures.no_qa"])
  # A mixture with no split of its own, but nesting one, is checked against the nested split.
  seqio.MixtureRegistry.add("test_mixtures.nested", [("test_mixtures.no_nli", 1.0), ("test_mixtures.nli1", 1.0)])
  with pytest.raises(ValueError, match=r"'test_mixtures.nli1' \(cluster 'nli'\)"):
    mixtures.check_no_heldout_in_training("test_mixtures.nested")
  # A single held-out task, or a mixture that declares nothing, is checked against every split.
  with pytest.raises(ValueError, match="split of mixture 'test_mixtures.no_nli'.*test_mixtures.nli1"):
    mixtures.check_no_heldout_in_training("test_mixtures.nli1")
  with pytest.raises(ValueError, match="no held-out split declared"):
    mixtures.check_no_heldout_in_training("test_mixtures.qa1", eval_mixtures=["test_mixtures.nope"])
