"""Tuning quality (``bench/tune_quality.py``) in a tiny configuration, as a CI test.

The full table comes from ``python bench/tune_quality.py --seeds 10``; here each sampler
runs a few short searches on Branin, Hartmann-6 and the mixed (log, integer, choice)
problem, and the checks are on sanity, not on speed: the proposals are legal, the regret
never negative and never increasing, fastnn's bayes (one at a time and in batches of two)
ends closer to the minimum than random search, and the fastnn figures do not depend on
the run. The Optuna comparison runs only where Optuna is installed (a bench-only
dependency). One timed benchmark, the proposal time of a 30-trial bayes search, checks
its result too.
"""

from __future__ import annotations

import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import tune_quality as tq  # noqa: E402

from fastnn.tune.space import Choice, IntLogUniform, IntUniform  # noqa: E402

SEEDS = (0, 1)
BUDGET = 20
PROBLEMS = ("branin", "hartmann6", "mixed")


def _check_legal(space: dict, params: dict) -> None:
    for name, dist in space.items():
        v = params[name]
        if isinstance(dist, Choice):
            assert v in dist.options
        else:
            assert dist.low <= v <= dist.high, (name, v)
            if isinstance(dist, IntUniform | IntLogUniform):
                assert isinstance(v, int)


def _checked(problem: str):
    """The problem's objective wrapped to check every proposal it is given."""
    make, space, minimum, _ = tq.problems([problem])[problem]
    f = make(0)

    def objective(params):
        _check_legal(space, params)
        value = f(params)
        assert math.isfinite(value) and value >= minimum - 1e-9
        return value

    return objective, space, minimum


@pytest.mark.parametrize("problem", PROBLEMS)
def test_bayes_beats_random_and_is_reproducible(problem):
    f, space, minimum = _checked(problem)
    final = {}
    for sampler in ("bayes", "bayes-b2", "random"):
        regrets = []
        for seed in SEEDS:
            values, overhead = tq.run(sampler, space, f, BUDGET, seed)
            best = np.minimum.accumulate(values) - minimum
            assert len(values) == BUDGET and overhead >= 0
            assert np.all(best >= -1e-9) and np.all(np.diff(best) <= 0)
            regrets.append(best[-1])
        final[sampler] = float(np.median(regrets))
    assert final["bayes"] < final["random"] and final["bayes-b2"] < final["random"]
    again, _ = tq.run("bayes-b2", space, f, BUDGET, SEEDS[0])
    first, _ = tq.run("bayes-b2", space, f, BUDGET, SEEDS[0])
    assert again == first


def test_optuna_comparison_runs():
    pytest.importorskip("optuna")
    f, space, minimum = _checked("mixed")
    for sampler in ("tpe", "gp"):
        values, overhead = tq.run(sampler, space, f, 12, 0)
        assert len(values) == 12 and overhead > 0 and min(values) >= minimum


def test_table_has_every_sampler_and_checkpoint():
    results = tq.benchmark(["branin"], ["bayes", "random"], seeds=1)
    text = tq.table(results, markdown=True)
    lines = text.splitlines()
    assert lines[0].startswith("| problem | sampler | regret@10 | regret@20 | regret@30 |")
    assert [line.split(" | ")[1] for line in lines[2:]] == ["bayes", "random"]
    entry = results["branin"]["bayes"][0]
    assert set(entry["regret"]) == {10, 20, 30, 60}
    assert 1 <= entry["to_target"] <= 61


def test_first_seed_runs_the_seeds_that_follow_it():
    make, space, minimum, _ = tq.problems(["branin"])["branin"]
    results = tq.benchmark(["branin"], ["random"], seeds=1, first_seed=3)
    values, _ = tq.run("random", space, make(3), 60, 3)
    assert results["branin"]["random"][0]["regret"] == tq.summarise(values, minimum, 0.0)["regret"]


def test_bayes_proposal_time(benchmark):
    f, space, minimum = _checked("hartmann6")
    values, _ = benchmark.pedantic(tq.run, args=("bayes", space, f, 30, 0), rounds=1,
                                   iterations=1)
    assert min(values) - minimum < 2.0
