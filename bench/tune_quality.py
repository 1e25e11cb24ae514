"""Tuning quality: simple regret of fastnn's bayes strategy against Optuna's samplers.

Usage::

    python bench/tune_quality.py [--seeds 10] [--first-seed 0]
                                 [--problems branin,hartmann6,mixed,digits]
                                 [--samplers bayes,bayes-b2,tpe,gp,random] [--markdown]

Problems (each a minimisation with a known minimum, except the digits):

``branin``     Branin on [-5, 10] x [0, 15] (Uniform); minimum 0.397887.
``hartmann6``  Hartmann-6 on [0, 1]^6 (Uniform); minimum -3.32237.
``mixed``      a synthetic training-like function with a LogUniform learning rate
               (1e-5..1), an IntLogUniform width (8..512), an IntUniform depth (1..5),
               a Choice of 4 activations and a Uniform dropout; minimum 0 (at lr
               10^-2.5, width 128, depth 3, relu, dropout 0.2); the best learning rate
               moves with the depth.
``digits``     the bundled digits MLP (:func:`fastnn.tune.digits_space`, 5 epochs,
               validation on a stratified half, fixed training seed per repetition so a
               value depends on the params only); "regret" is the validation error
               1 - accuracy (its minimum is unknown), 60 trials.

Samplers: ``bayes`` (fastnn, ``batch_size=1``: one proposal at a time), ``bayes-b2``
(fastnn, ``batch_size=2``: the batches two workers run), ``tpe`` (Optuna
``TPESampler(multivariate=True)``), ``gp`` (Optuna ``GPSampler``), ``random`` (fastnn).
Optuna is an optional, bench-only dependency: without it only the fastnn samplers run.
Install ``greenlet`` beside it (``pip install optuna greenlet``): without it GPSampler
falls back to a sequential L-BFGS-B and takes 2-3 times as long a trial.
Every run is sequential and deterministic for its seed (first_seed .. first_seed +
seeds - 1; ``--first-seed`` checks a finding on seeds it was not tuned on); a run of fastnn
with ``batch_size=2`` proposes what a 2-worker study proposes.

Printed: per problem and sampler, the median [IQR] simple regret (best value so far minus
the minimum) after 10/20/30/60 trials, the median number of trials to reach the best value
of 60 random trials of the same seed (">N": not reached within the budget; such runs
count as budget + 1), and the sampler's time per trial (proposals and, for Optuna,
``tell``; the objective excluded), the mean over the run. The overhead depends on the
machine's load; the regrets do not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from fastnn.tune.space import (  # noqa: E402
    Choice,
    IntLogUniform,
    IntUniform,
    LogUniform,
    OneMinusLogUniform,
    Uniform,
)
from fastnn.tune.strategies import Bayes, Finished, Random  # noqa: E402

CHECKPOINTS = (10, 20, 30, 60)
SAMPLERS = ("bayes", "bayes-b2", "tpe", "gp", "random")


# ---------------------------------------------------------------------------- problems

def branin(p: dict) -> float:
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6(p: dict) -> float:
    x = np.array([p[f"x{i}"] for i in range(6)])
    return float(-_H6_ALPHA @ np.exp(-(_H6_A * (x - _H6_P) ** 2).sum(1)))


_ACTIVATION = {"relu": 0.0, "elu": 0.05, "tanh": 0.3, "sigmoid": 0.8}


def mixed(p: dict) -> float:
    depth = p["layers"] - 3
    return ((math.log10(p["lr"]) + 2.5 + 0.3 * depth) ** 2 + 0.125 * (math.log2(p["hidden"]) - 7)
            ** 2 + 0.1 * depth ** 2 + _ACTIVATION[p["activation"]] + 2 * (p["dropout"] - 0.2) ** 2)


class Digits:
    """Validation error of the digits MLP, trained with a fixed seed (cached by params)."""

    def __init__(self, train_seed: int, epochs: int = 5) -> None:
        from fastnn.tune import DigitsObjective
        self.objective = DigitsObjective(epochs, validation_split=0.5)
        self.train_seed = train_seed
        self.cache: dict[str, float] = {}

    def __call__(self, p: dict) -> float:
        from fastnn.tune import Trial
        key = json.dumps(p, sort_keys=True)
        if key not in self.cache:
            try:
                acc = self.objective(p, Trial(0, p, seed=self.train_seed))
            except Exception:  # a diverged trial (non-finite loss): the worst error
                acc = 0.0
            self.cache[key] = 1.0 - float(acc)
        return self.cache[key]


def problems(names) -> dict:
    from fastnn.tune import digits_space
    table = {
        "branin": (lambda seed: branin, {"x1": Uniform(-5.0, 10.0), "x2": Uniform(0.0, 15.0)},
                   0.397887357729738, 60),
        "hartmann6": (lambda seed: hartmann6, {f"x{i}": Uniform(0.0, 1.0) for i in range(6)},
                      -3.32236801141551, 60),
        "mixed": (lambda seed: mixed, {
            "lr": LogUniform(1e-5, 1.0), "hidden": IntLogUniform(8, 512),
            "layers": IntUniform(1, 5), "activation": Choice(list(_ACTIVATION)),
            "dropout": Uniform(0.0, 0.5)}, 0.0, 60),
        "digits": (lambda seed: Digits(seed), digits_space(), 0.0, 60),
    }
    return {n: table[n] for n in names}


# ---------------------------------------------------------------------------- samplers

def run_fastnn(strategy, space: dict, f, n_trials: int, seed: int) -> tuple[list, float]:
    """Values of a sequential fastnn search and the mean proposal time per trial."""
    strategy.bind(space, seed)
    strategy.set_budget(n_trials)
    history, values, spent = [], [], 0.0
    for number in range(n_trials):
        t0 = time.perf_counter()
        params = strategy.propose(number, history)
        spent += time.perf_counter() - t0
        value = f(params)
        values.append(value)
        history.append(Finished(number, params, -value))
    return values, spent / n_trials


def _optuna_distributions(space: dict) -> dict:
    import optuna.distributions as od
    out = {}
    for name, d in space.items():
        if isinstance(d, Choice):
            out[name] = od.CategoricalDistribution(d.options)
        elif isinstance(d, IntUniform | IntLogUniform):
            out[name] = od.IntDistribution(d.low, d.high, log=isinstance(d, IntLogUniform))
        elif isinstance(d, OneMinusLogUniform):  # sampled as 1 - value on a log scale
            out[name] = od.FloatDistribution(1 - d.high, 1 - d.low, log=True)
        elif isinstance(d, LogUniform | Uniform):
            out[name] = od.FloatDistribution(d.low, d.high, log=isinstance(d, LogUniform))
        else:
            raise TypeError(f"no Optuna distribution for {d!r}")
    return out


def run_optuna(kind: str, space: dict, f, n_trials: int, seed: int) -> tuple[list, float]:
    """Values of a sequential Optuna search (ask/tell) and its mean time per trial."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if kind == "tpe":
        sampler = optuna.samplers.TPESampler(multivariate=True, seed=seed)
    else:
        sampler = optuna.samplers.GPSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    dists = _optuna_distributions(space)
    values, spent = [], 0.0
    for _ in range(n_trials):
        t0 = time.perf_counter()
        trial = study.ask(dists)
        spent += time.perf_counter() - t0
        params = {n: (1 - v if isinstance(space[n], OneMinusLogUniform) else v)
                  for n, v in trial.params.items()}
        value = f(params)
        values.append(value)
        t0 = time.perf_counter()
        study.tell(trial, value)
        spent += time.perf_counter() - t0
    return values, spent / n_trials


def run(sampler: str, space: dict, f, n_trials: int, seed: int) -> tuple[list, float]:
    if sampler == "bayes":
        return run_fastnn(Bayes(batch_size=1), space, f, n_trials, seed)
    if sampler == "bayes-b2":
        return run_fastnn(Bayes(batch_size=2), space, f, n_trials, seed)
    if sampler == "random":
        return run_fastnn(Random(), space, f, n_trials, seed)
    return run_optuna(sampler, space, f, n_trials, seed)


# ---------------------------------------------------------------------------- the table

def summarise(values: list, minimum: float, target: float) -> dict:
    """Simple regret at the checkpoints and the trials to reach ``target``."""
    best = np.minimum.accumulate(np.asarray(values, dtype=np.float64))
    regret = {n: float(best[n - 1] - minimum) for n in CHECKPOINTS if n <= len(best)}
    hit = np.nonzero(best <= target)[0]
    return {"regret": regret, "to_target": int(hit[0]) + 1 if len(hit) else len(best) + 1}


def benchmark(problem_names, sampler_names, seeds: int, log=None, first_seed: int = 0) -> dict:
    """{problem: {sampler: [per-seed summary]}} (``log``: a progress printer)."""
    results = {}
    for pname, (make, space, minimum, budget) in problems(problem_names).items():
        results[pname] = {s: [] for s in sampler_names}
        for seed in range(first_seed, first_seed + seeds):
            f = make(seed)
            reference, _ = run("random", space, f, 60, 10_000 + seed)
            target = min(reference)
            for s in sampler_names:
                values, overhead = run(s, space, f, budget, seed)
                entry = summarise(values, minimum, target)
                entry["overhead"] = overhead
                results[pname][s].append(entry)
                if log:
                    log(f"{pname} seed {seed} {s}: regret {entry['regret']} "
                        f"to-target {entry['to_target']} overhead {1e3 * overhead:.1f} ms")
    return results


def _median_iqr(xs: list) -> str:
    q1, med, q3 = np.percentile(xs, [25, 50, 75])
    return f"{med:.2g} [{q1:.2g}, {q3:.2g}]"


def table(results: dict, markdown: bool) -> str:
    headers = ["problem", "sampler"] + [f"regret@{n}" for n in CHECKPOINTS] + [
        "trials to random-60 best", "ms/trial"]
    rows = []
    for pname, by_sampler in results.items():
        for s, entries in by_sampler.items():
            if not entries:
                continue
            cells = [pname, s]
            for n in CHECKPOINTS:
                xs = [e["regret"][n] for e in entries if n in e["regret"]]
                cells.append(_median_iqr(xs) if xs else "-")
            budget = max(max(e["regret"]) for e in entries)
            med = statistics.median(e["to_target"] for e in entries)
            cells.append(f">{budget}" if med > budget else f"{med:g}")
            cells.append(f"{1e3 * statistics.median(e['overhead'] for e in entries):.1f}")
            rows.append(cells)
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                     for r in [headers, *rows])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--problems", default="branin,hartmann6,mixed,digits")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    samplers = args.samplers.split(",")
    if any(s in ("tpe", "gp") for s in samplers):
        try:
            import optuna  # noqa: F401
        except ImportError:
            print("optuna is not installed: running the fastnn samplers only", file=sys.stderr)
            samplers = [s for s in samplers if s not in ("tpe", "gp")]
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    results = benchmark(args.problems.split(","), samplers, args.seeds, log, args.first_seed)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh)
    print(table(results, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
