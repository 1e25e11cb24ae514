"""fastnn.tune.pruners: the median rule and successive halving."""

from __future__ import annotations

import json

import pytest

from fastnn.tune.pruners import (
    MedianPruner,
    NopPruner,
    Pruner,
    SuccessiveHalvingPruner,
    get_pruner,
    pruner_from_config,
)

NAN = float("nan")


# ---------------------------------------------------------------------------- median rule

def test_median_prunes_below_and_not_above():
    peers = {4: [0.1, 0.3, 0.5, 0.7, 0.9]}  # median 0.5
    p = MedianPruner(n_startup_trials=5)
    assert p.should_prune(4, 0.2, peers)
    assert p.should_prune(4, 0.49, peers)
    assert not p.should_prune(4, 0.5, peers)   # at the median: keep
    assert not p.should_prune(4, 0.8, peers)


def test_median_of_an_even_count_is_the_midpoint():
    peers = {1: [4.0, 1.0, 3.0, 2.0]}  # median 2.5
    p = MedianPruner(n_startup_trials=0)
    assert p.should_prune(1, 2.4, peers)
    assert not p.should_prune(1, 2.6, peers)


def test_median_compares_at_the_same_step_only():
    peers = {1: [0.1, 0.2, 0.3, 0.4, 0.5], 2: [0.6, 0.7, 0.8, 0.9, 1.0]}
    p = MedianPruner()
    assert not p.should_prune(1, 0.35, peers)  # above step 1's median 0.3
    assert p.should_prune(2, 0.35, peers)      # below step 2's median 0.8
    assert not p.should_prune(3, -100.0, peers)  # nobody reported step 3


def test_median_respects_n_startup_trials():
    peers = {2: [0.5, 0.6, 0.7, 0.8]}
    assert not MedianPruner(n_startup_trials=5).should_prune(2, -1e9, peers)
    assert MedianPruner(n_startup_trials=4).should_prune(2, -1e9, peers)
    assert not MedianPruner(n_startup_trials=0).should_prune(2, 1.0, {})


def test_median_respects_n_warmup_steps():
    peers = {s: [0.5] * 6 for s in range(6)}
    p = MedianPruner(n_startup_trials=1, n_warmup_steps=3)
    assert [p.should_prune(s, 0.0, peers) for s in range(6)] == [False] * 3 + [True] * 3


def test_median_ignores_nan_peers_and_prunes_a_nan_value():
    peers = {0: [NAN, 0.2, 0.4, NAN, 0.6]}  # finite: 0.2, 0.4, 0.6
    assert MedianPruner(n_startup_trials=3).should_prune(0, 0.3, peers)
    assert not MedianPruner(n_startup_trials=4).should_prune(0, 0.3, peers)
    assert MedianPruner(n_startup_trials=1).should_prune(0, NAN, peers)


def test_peers_with_json_string_steps():
    peers = json.loads(json.dumps({3: [0.5, 0.6, 0.7, 0.8, 0.9]}))
    assert MedianPruner().should_prune(3, 0.1, peers)
    assert SuccessiveHalvingPruner().should_prune(3, 0.1, peers)


def test_nop_never_prunes():
    assert not NopPruner().should_prune(1, NAN, {1: [1.0] * 100})
    assert not Pruner().should_prune(1, -1e9, {1: [1.0] * 100})


# ---------------------------------------------------------------------------- successive halving

@pytest.mark.parametrize("min_resource, eta, rungs", [
    (1, 3, [1, 3, 9, 27, 81]),
    (2, 2, [2, 4, 8, 16, 32, 64]),
    (5, 3, [5, 15, 45]),
])
def test_halving_rungs(min_resource, eta, rungs):
    p = SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=eta)
    assert [s for s in range(100) if p.is_rung(s)] == rungs


def test_halving_never_prunes_between_rungs():
    p = SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    peers = {s: [1.0] * 10 for s in range(12)}
    assert [s for s in range(12) if p.should_prune(s, 0.0, peers)] == [1, 3, 9]


def test_halving_keeps_exactly_the_top_third_of_a_full_rung():
    # 27 trials all reach rung 9; each, seeing the other 26 as peers, continues only if it is
    # among the best 9 of the 27.
    values = [((7 * i) % 27) / 27 for i in range(27)]  # a permutation of 0/27 .. 26/27
    assert sorted(values) == [i / 27 for i in range(27)]
    p = SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    survivors = [v for i, v in enumerate(values)
                 if not p.should_prune(9, v, {9: values[:i] + values[i + 1:]})]
    assert sorted(survivors) == sorted(values)[-9:]


def test_halving_with_few_peers_only_the_best_continues():
    p = SuccessiveHalvingPruner(reduction_factor=3)
    assert not p.should_prune(1, 0.1, {})                 # the first trial
    assert not p.should_prune(1, 0.6, {1: [0.5]})          # best of 2
    assert p.should_prune(1, 0.4, {1: [0.5]})
    assert not p.should_prune(1, 0.7, {1: [0.5, 0.6]})     # best of 3
    assert p.should_prune(1, 0.55, {1: [0.5, 0.6]})
    # with 6 values, the top 2 continue
    assert not p.should_prune(1, 0.75, {1: [0.5, 0.6, 0.7, 0.8, 0.4]})
    assert p.should_prune(1, 0.65, {1: [0.5, 0.6, 0.7, 0.8, 0.4]})


def test_halving_reduction_factor_two_keeps_half():
    values = [0.1 * i for i in range(10)]
    p = SuccessiveHalvingPruner(min_resource=2, reduction_factor=2)
    kept = [v for i, v in enumerate(values)
            if not p.should_prune(4, v, {4: values[:i] + values[i + 1:]})]
    assert sorted(kept) == values[5:]


def test_halving_prunes_nan_at_a_rung():
    assert SuccessiveHalvingPruner().should_prune(1, NAN, {})
    assert not SuccessiveHalvingPruner().should_prune(2, NAN, {})


# ---------------------------------------------------------------------------- factories

@pytest.mark.parametrize("pruner", [NopPruner(), MedianPruner(3, 2),
                                    SuccessiveHalvingPruner(2, 4)], ids=repr)
def test_config_round_trip(pruner):
    config = json.loads(json.dumps(pruner.to_config()))
    assert pruner_from_config(config) == pruner
    assert get_pruner(config) == pruner


def test_get_pruner():
    assert isinstance(get_pruner(None), NopPruner)
    assert isinstance(get_pruner("none"), NopPruner)
    assert get_pruner("median") == MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    assert get_pruner("halving") == SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    assert get_pruner("successive-halving", reduction_factor=2).reduction_factor == 2
    p = MedianPruner()
    assert get_pruner(p) is p
    assert pruner_from_config(None) == NopPruner()
    with pytest.raises(ValueError, match="median"):
        get_pruner("hyperband")
    with pytest.raises(TypeError, match="options"):
        get_pruner(p, n_warmup_steps=2)
    with pytest.raises(TypeError, match="pruner"):
        get_pruner(3)


@pytest.mark.parametrize("make, match", [
    (lambda: MedianPruner(n_startup_trials=-1), "n_startup_trials"),
    (lambda: MedianPruner(n_warmup_steps=-2), "n_warmup_steps"),
    (lambda: SuccessiveHalvingPruner(min_resource=0), "min_resource"),
    (lambda: SuccessiveHalvingPruner(reduction_factor=1), "reduction_factor"),
])
def test_bad_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_non_integer_options_are_type_errors():
    with pytest.raises(TypeError, match="reduction_factor"):
        SuccessiveHalvingPruner(reduction_factor=2.5)
