"""fastnn.tune studies, inline: search, storage, resume, ask/tell, failures, pruning, errors."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
import tune_objectives as objectives

from fastnn import tune
from fastnn.tune.storage import FORMAT_NAME

SPACE = {"x": tune.Uniform(0.0, 1.0), "lr": tune.LogUniform(1e-4, 1e-1)}


def _key(trial) -> tuple:
    return trial.number, trial.state, trial.params, trial.seed, trial.value


# ------------------------------------------------------------------------------------------
# Searching
# ------------------------------------------------------------------------------------------

def test_search_random_inline():
    study = tune.search(objectives.quadratic, {**SPACE, "epochs": 3}, "random", n_trials=12,
                        seed=7)
    trials = study.trials
    assert [t.number for t in trials] == list(range(12))
    assert all(t.state == "complete" for t in trials)
    for t in trials:
        assert 0.0 <= t.params["x"] <= 1.0 and 1e-4 <= t.params["lr"] <= 1e-1
        assert t.params["epochs"] == 3
        assert t.seed == tune.trial_seed(7, t.number)
        assert t.value == pytest.approx(objectives.quadratic(t.params, t), abs=0)
        assert t.datetime_start <= t.datetime_complete and t.duration >= 0
    assert len({t.params["x"] for t in trials}) == 12
    assert study.best_value == max(t.value for t in trials)
    assert study.best_params == study.best_trial.params
    # the same seed gives the same study; another seed another one
    again = tune.search(objectives.quadratic, {**SPACE, "epochs": 3}, "random", n_trials=12,
                        seed=7)
    assert [_key(t) for t in again.trials] == [_key(t) for t in trials]
    other = tune.search(objectives.quadratic, {**SPACE, "epochs": 3}, "random", n_trials=12,
                        seed=8)
    assert [t.params for t in other.trials] != [t.params for t in trials]


def test_search_grid_inline_takes_its_size():
    space = {"x": tune.Uniform(0.0, 1.0), "lr": tune.LogUniform(1e-4, 1e-2)}
    study = tune.search(objectives.quadratic, space, "grid", points=3, seed=0)
    params = [(t.params["x"], t.params["lr"]) for t in study.trials]
    assert len(params) == 9  # n_trials defaults to the grid's size
    assert sorted({p[0] for p in params}) == [0.0, 0.5, 1.0]
    assert sorted({round(p[1], 12) for p in params}) == [1e-4, 1e-3, 1e-2]
    assert len(set(params)) == 9
    with pytest.raises(ValueError, match="more than the grid's 9 points"):
        tune.search(objectives.quadratic, space, "grid", n_trials=10, points=3)


def test_search_accepts_closures_inline():
    offset = 0.25
    study = tune.search(lambda params, trial: -abs(params["x"] - offset), SPACE, n_trials=5,
                        seed=1)
    assert all(t.state == "complete" for t in study.trials)


def test_minimize_direction_reaches_the_strategy():
    # Coarse-to-fine zooms around the best points: when minimizing, around x = 0.3.
    study = tune.search(lambda p, t: (p["x"] - 0.3) ** 2, {"x": tune.Uniform(0.0, 1.0)},
                        "coarse_to_fine", n_trials=30, seed=3, direction="minimize", rounds=3)
    values = [t.value for t in study.trials]
    assert study.direction == "minimize"
    assert study.best_value == min(values)
    assert abs(study.best_params["x"] - 0.3) < 0.05
    last_box = study.strategy_state["boxes"][-1]["box"]["x"]
    assert last_box[0] < 0.3 < last_box[1] and last_box[1] - last_box[0] <= 0.5
    assert study.ranked()[0].value == min(values)


def test_failed_and_nan_trials_are_recorded_and_the_search_goes_on():
    seen = []
    study = tune.search(objectives.failing, {"x": tune.Uniform(0.0, 1.0)}, n_trials=20,
                        seed=2, callbacks=[lambda s, t: seen.append(t.number)])
    states = {t.number: t.state for t in study.trials}
    assert sorted(seen) == list(range(20)) and len(states) == 20
    for t in study.trials:
        if t.params["x"] > 0.7:
            assert t.state == "failed" and t.value is None
            assert t.error.startswith("ValueError: x too large")
            assert "Traceback" in t.error and "tune_objectives.py" in t.error
        elif t.params["x"] < 0.2:
            assert t.state == "failed" and "nan" in t.error
        else:
            assert t.state == "complete" and t.value == t.params["x"]
    assert {"failed", "complete"} <= set(states.values())
    assert study.best_value == max(t.value for t in study.trials if t.state == "complete")


@pytest.mark.parametrize("returned, message", [
    ("abc", "TypeError: the objective returned str"),
    (None, "TypeError: the objective returned NoneType"),
    (True, "TypeError: the objective returned bool"),
    (float("inf"), "ValueError: the objective returned inf"),
])
def test_non_float_returns_fail_the_trial(returned, message):
    study = tune.search(lambda p, t: returned, SPACE, n_trials=2, seed=0)
    assert [t.state for t in study.trials] == ["failed", "failed"]
    assert study.trials[0].error.startswith(message)
    with pytest.raises(ValueError, match="no complete trial"):
        _ = study.best_trial


def test_numpy_scalar_return_is_a_float():
    study = tune.search(lambda p, t: np.float32(p["x"]), SPACE, n_trials=2, seed=0)
    assert all(t.state == "complete" and isinstance(t.value, float) for t in study.trials)


def test_median_pruning_records_pruned_trials_with_their_reports():
    pruner = tune.MedianPruner(n_startup_trials=3)
    study = tune.search(objectives.learning_curve, {"x": tune.Uniform(0.0, 1.0)},
                        n_trials=25, seed=4, pruner=pruner)
    pruned = [t for t in study.trials if t.state == "pruned"]
    complete = [t for t in study.trials if t.state == "complete"]
    assert pruned and complete
    for t in complete:
        assert sorted(t.reports) == list(range(1, 9))
        assert t.value == t.reports[8]
    for t in pruned:
        assert t.value is None and 1 <= len(t.reports) < 8
        step = max(t.reports)
        # the rule: below the median of what the trials finished before it reported there
        peers = [p.reports[step] for p in study.trials
                 if p.number < t.number and p.state in ("complete", "pruned")
                 and step in p.reports]
        assert len(peers) >= 3 and t.reports[step] < float(np.median(peers))
    assert study.pruner == pruner
    assert tune.load_study  # the pruner is stored too (see the round trip test)


def test_halving_pruner_by_name():
    study = tune.search(objectives.learning_curve, {"x": tune.Uniform(0.0, 1.0)},
                        n_trials=15, seed=4, pruner="halving")
    assert isinstance(study.pruner, tune.SuccessiveHalvingPruner)
    assert any(t.state == "pruned" for t in study.trials)


def test_timeout_stops_the_search_and_the_trial_in_flight_stays_running(tmp_path):
    import time

    def slow(params, trial):
        time.sleep(0.05)
        return params["x"]

    path = tmp_path / "study.db"
    study = tune.search(slow, SPACE, n_trials=1000, seed=0, timeout=0.3, storage=path)
    states = [t.state for t in study.trials]
    assert 2 <= len(states) < 50
    # every trial but the one the deadline interrupted is complete; that one runs again
    assert set(states[:-1]) == {"complete"} and states[-1] in ("complete", "running")
    if states[-1] == "running":
        last = study.trials[-1]
        resumed = tune.search(slow, SPACE, n_trials=len(states), storage=path)
        again = resumed.trials[-1]
        assert again.state == "complete" and again.attempts == 2
        assert (again.params, again.seed) == (last.params, last.seed)


def test_verbose_prints_one_line_per_trial(capsys):
    tune.search(objectives.quadratic, SPACE, n_trials=3, seed=0, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("trial ") for line in lines)
    assert "best" in lines[-1] and "lr=" in lines[-1]


# ------------------------------------------------------------------------------------------
# Storage and resuming
# ------------------------------------------------------------------------------------------

def test_storage_round_trip_with_load_study(tmp_path):
    path = tmp_path / "study.db"
    study = tune.search(objectives.learning_curve, {"x": tune.Uniform(0.0, 1.0), "c": "a"},
                        "coarse_to_fine", n_trials=12, seed=11, storage=path,
                        pruner=tune.MedianPruner(n_startup_trials=2), rounds=2)
    loaded = tune.load_study(path)
    assert loaded.storage == str(path)
    assert loaded.seed == 11 and loaded.direction == "maximize"
    assert loaded.space == {"x": tune.Uniform(0.0, 1.0), "c": "a"}
    assert loaded.strategy.to_config() == study.strategy.to_config()
    assert loaded.pruner == tune.MedianPruner(n_startup_trials=2)
    assert loaded.n_trials == 12
    assert loaded.strategy_state["boxes"] == study.strategy_state["boxes"]
    assert [(*_key(t), t.reports, t.error, t.datetime_start, t.duration)
            for t in loaded.trials] == [
        (*_key(t), t.reports, t.error, t.datetime_start, t.duration) for t in study.trials]
    assert {t.state for t in loaded.trials} == {"complete", "pruned"}
    with sqlite3.connect(path) as conn:
        meta = conn.execute("SELECT format, seed, fastnn_version FROM study").fetchone()
    assert meta[0] == FORMAT_NAME and meta[1] == "11" and meta[2] == tune.study.__version__
    loaded.close()


def test_seed_none_draws_entropy_and_stores_it(tmp_path):
    path = tmp_path / "study.db"
    first = tune.search(objectives.quadratic, SPACE, n_trials=3, storage=path)
    assert isinstance(first.seed, int) and first.seed > 2**32  # fresh 128-bit entropy
    resumed = tune.search(objectives.quadratic, SPACE, n_trials=5, storage=path)
    assert resumed.seed == first.seed
    replay = tune.search(objectives.quadratic, SPACE, n_trials=5, seed=first.seed)
    assert [_key(t) for t in resumed.trials] == [_key(t) for t in replay.trials]


def test_resume_after_keyboard_interrupt(tmp_path):
    path = tmp_path / "study.db"
    stop = {"at": 5}

    def objective(params, trial):
        if trial.number == stop["at"]:
            raise KeyboardInterrupt
        return objectives.quadratic(params, trial)

    with pytest.raises(KeyboardInterrupt):
        tune.search(objective, SPACE, "coarse_to_fine", n_trials=9, seed=5, storage=path,
                    rounds=3)
    before = tune.load_study(path).trials
    assert [t.state for t in before] == ["complete"] * 5 + ["running"]
    stop["at"] = None
    study = tune.search(objective, SPACE, "coarse_to_fine", n_trials=9, seed=5, storage=path,
                        rounds=3)
    after = study.trials
    assert [t.number for t in after] == list(range(9))
    assert all(t.state == "complete" for t in after)
    assert [_key(t) + (t.datetime_complete,) for t in after[:5]] == [
        _key(t) + (t.datetime_complete,) for t in before[:5]]
    assert after[5].params == before[5].params and after[5].seed == before[5].seed
    assert after[5].attempts == 2 and after[4].attempts == 1
    straight = tune.search(objectives.quadratic, SPACE, "coarse_to_fine", n_trials=9, seed=5,
                           rounds=3)
    assert [_key(t) for t in after] == [_key(t) for t in straight.trials]


def test_n_trials_is_the_total(tmp_path):
    path = tmp_path / "study.db"
    tune.search(objectives.quadratic, SPACE, n_trials=4, seed=0, storage=path)
    calls = []
    study = tune.search(objectives.quadratic, SPACE, n_trials=4, seed=0, storage=path,
                        callbacks=[lambda s, t: calls.append(t.number)])
    assert calls == [] and len(study.trials) == 4
    study = tune.search(objectives.quadratic, SPACE, n_trials=7, storage=path,
                        callbacks=[lambda s, t: calls.append(t.number)])
    assert calls == [4, 5, 6] and study.n_trials == 7
    assert tune.load_study(path).n_trials == 7
    # resuming without n_trials: the stored total
    assert len(tune.search(objectives.quadratic, SPACE, storage=path).trials) == 7


@pytest.mark.parametrize("change, message", [
    ({"space": {"x": tune.Uniform(0.0, 2.0), "lr": tune.LogUniform(1e-4, 1e-1)}},
     "different space"),
    ({"space": {"lr": tune.LogUniform(1e-4, 1e-1), "x": tune.Uniform(0.0, 1.0)}},
     "different space"),
    ({"direction": "minimize"}, "different direction"),
    ({"strategy": "grid"}, "different strategy"),
    ({"strategy": "coarse_to_fine"}, "different strategy"),
    ({"seed": 99}, "different seed"),
    ({"pruner": "median"}, "different pruner"),
])
def test_resume_with_another_study_is_refused(tmp_path, change, message):
    path = tmp_path / "study.db"
    tune.search(objectives.quadratic, SPACE, "random", n_trials=2, seed=0, storage=path)
    kwargs = {"space": SPACE, "n_trials": 3, "storage": path, **change}
    with pytest.raises(ValueError, match=message):
        tune.search(objectives.quadratic, **kwargs)
    assert len(tune.load_study(path).trials) == 2


def test_one_coordinator_at_a_time(tmp_path):
    path = tmp_path / "study.db"
    study = tune.create_study(SPACE, storage=path, seed=0, n_trials=3)
    with study.lock():
        with pytest.raises(RuntimeError, match="another process .* is running a search"):
            tune.search(objectives.quadratic, SPACE, n_trials=3, storage=path)
    assert len(tune.search(objectives.quadratic, SPACE, n_trials=3, storage=path).trials) == 3


def test_load_study_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such study file"):
        tune.load_study(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all, just bytes" * 100)
    with pytest.raises(ValueError, match="not a fastnn study"):
        tune.load_study(junk)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE things (a INTEGER)")
    with pytest.raises(ValueError, match="not a fastnn study"):
        tune.search(objectives.quadratic, SPACE, n_trials=1, storage=other)


# ------------------------------------------------------------------------------------------
# ask / tell
# ------------------------------------------------------------------------------------------

def test_ask_tell_by_hand(tmp_path):
    path = tmp_path / "study.db"
    study = tune.create_study(SPACE, "random", storage=path, seed=3)
    trial = study.ask()
    reference = tune.search(objectives.quadratic, SPACE, n_trials=1, seed=3).trials[0]
    assert trial.number == 0 and trial.params == reference.params
    assert trial.seed == reference.seed
    assert tune.load_study(path).trials[0].state == "running"
    for step in (1, 2):
        trial.report(0.1 * step, step)
    frozen = study.tell(trial, 0.5)
    assert frozen.state == "complete" and frozen.value == 0.5
    assert frozen.reports == {1: 0.1, 2: 0.2}
    hand = study.ask({"x": 0.25, "lr": 1e-3})
    assert hand.number == 1 and hand.params == {"x": 0.25, "lr": 1e-3}
    assert study.tell(hand.number, float("nan")).state == "failed"
    third = study.ask({"x": 1, "lr": np.float64(0.01)})
    assert third.params == {"x": 1.0, "lr": 0.01}
    assert study.tell(third, state="pruned").state == "pruned"
    with pytest.raises(ValueError, match="told already"):
        study.tell(third, 1.0)
    assert [t.state for t in tune.load_study(path).trials] == ["complete", "failed", "pruned"]
    assert study.best_trial.number == 0
    # optimize continues after the hand-made trials
    study.optimize(objectives.quadratic, 5)
    assert [t.number for t in study.trials] == list(range(5))


@pytest.mark.parametrize("params, error, message", [
    ({"x": 0.5}, ValueError, r"missing \['lr'\]"),
    ({"x": 0.5, "lr": 1e-3, "y": 1}, ValueError, "not in the space"),
    ({"x": 1.5, "lr": 1e-3}, ValueError, "outside Uniform"),
    ({"x": "a", "lr": 1e-3}, ValueError, "must be a finite number"),
    ([0.5, 1e-3], TypeError, "params must be a dict"),
])
def test_ask_checks_hand_given_params(params, error, message):
    study = tune.create_study(SPACE, seed=0)
    with pytest.raises(error, match=message):
        study.ask(params)
    assert study.trials == []


def test_ask_choice_and_constants():
    space = {"act": tune.Choice(["relu", "tanh"]), "n": tune.IntUniform(1, 4), "epochs": 5}
    study = tune.create_study(space, seed=0)
    trial = study.ask({"act": "tanh", "n": 3.0})
    assert trial.params == {"act": "tanh", "n": 3, "epochs": 5}
    with pytest.raises(ValueError, match="fixes 'epochs'"):
        study.ask({"act": "tanh", "n": 3, "epochs": 6})
    with pytest.raises(ValueError, match="must be one of"):
        study.ask({"act": "gelu", "n": 3})
    with pytest.raises(ValueError, match="must be an integer"):
        study.ask({"act": "relu", "n": 2.5})


def test_ask_waits_for_the_strategy_barrier():
    study = tune.create_study(SPACE, "coarse_to_fine", seed=0, rounds=2, trials_per_round=2)
    first, second = study.ask(), study.ask()
    with pytest.raises(RuntimeError, match=r"trials \[0, 1\] are still running"):
        study.ask()
    study.tell(first, 1.0)
    study.tell(second, 0.5)
    assert study.ask().number == 2
    with pytest.raises(RuntimeError, match="asked and not told"):
        study.optimize(objectives.quadratic, 4)


def test_trial_report_checks_its_arguments():
    trial = tune.Trial(0, {}, seed=1)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        trial.report(0.5, -1)
    with pytest.raises(ValueError, match="finite number"):
        trial.report(math.nan, 1)
    assert trial.should_prune() is False  # no pruner
    trial.report(0.5, 1)
    assert trial.reports == {1: 0.5}


# ------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    ({"n_jobs": 0}, ValueError, "n_jobs must be an integer >= 1; got 0"),
    ({"n_jobs": 1.5}, TypeError, r"n_jobs must be an integer >= 1; got 1\.5 \(float\)"),
    ({"n_trials": -1}, ValueError, "n_trials must be an integer >= 0"),
    ({"strategy": "annealing"}, ValueError, "strategy must be one of"),
    ({"direction": "max"}, ValueError, "direction must be 'maximize' or 'minimize'"),
    ({"space": [("x", 1)]}, TypeError, "space must be a dict"),
    ({"storage": "/no/such/dir/study.db"}, FileNotFoundError,
     "storage directory '/no/such/dir' does not exist"),
    ({"seed": -3}, ValueError, "seed must be an integer >= 0; got -3"),
    ({"seed": 1.0}, TypeError, "seed must be an integer >= 0; got 1.0"),
    ({"timeout": 0}, ValueError, r"timeout must be in \(0.0, inf\); got 0"),
    ({"executor": object()}, TypeError, "executor must be a concurrent.futures.Executor"),
    ({"callbacks": print}, TypeError, "callbacks must be a list"),
    ({"strategy": None, "rounds": 3}, TypeError, "without a strategy"),
])
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, error, message):
    args = {"space": SPACE, "n_trials": 2, "seed": 0, **kwargs}
    with pytest.raises(error, match=message):
        tune.search(objectives.quadratic, **args)


def test_random_without_n_trials_asks_for_it():
    with pytest.raises(ValueError, match="n_trials is required"):
        tune.search(objectives.quadratic, SPACE)


def test_objective_must_be_callable():
    with pytest.raises(TypeError, match="objective must be callable"):
        tune.search("quadratic", SPACE, n_trials=1)


def test_lambda_with_a_process_pool_is_refused_before_any_trial(tmp_path):
    path = tmp_path / "study.db"
    with pytest.raises(TypeError, match="must be picklable"):
        tune.search(lambda p, t: 0.0, SPACE, n_trials=2, n_jobs=2, storage=path, seed=0)
    assert tune.load_study(path).trials == []


def test_storage_that_is_a_directory(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        tune.search(objectives.quadratic, SPACE, n_trials=1, storage=tmp_path)


def test_a_failed_new_study_leaves_no_file(tmp_path):
    path = tmp_path / "study.db"
    with pytest.raises(ValueError):
        tune.search(objectives.quadratic, SPACE, "grid", n_trials=2, storage=path,
                    points={"nope": 3})
    assert not path.exists()


@pytest.mark.parametrize("module", ["fastnn.tune", "fastnn.tune.study", "fastnn.tune.runner",
                                    "fastnn.tune.trial", "fastnn.tune.models"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), verbose=False)
    assert result.attempted > 0 and result.failed == 0
