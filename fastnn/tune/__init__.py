"""Hyperparameter tuning: spaces on the right scale, five strategies, parallel trials, a study
that survives a crash.

>>> from fastnn import tune
>>> space = {"lr": tune.LogUniform(1e-4, 1e-1), "beta1": tune.OneMinusLogUniform(0.9, 0.999)}
>>> study = tune.search(lambda params, trial: -abs(params["lr"] - 3e-3), space,
...                     strategy="coarse_to_fine", n_trials=30, seed=0)
>>> len(study.trials), study.best_trial.state
(30, 'complete')

* Spaces: :class:`Uniform`, :class:`LogUniform` (learning rates), :class:`OneMinusLogUniform`
  (β, momentum), :class:`IntUniform`, :class:`IntLogUniform` (hidden units), :class:`Choice`.
* Strategies: :class:`Grid`, :class:`Random`, :class:`CoarseToFine`, :class:`Bayes`,
  :class:`Staged` (or their names in :func:`search`).
* Pruners: :class:`MedianPruner`, :class:`SuccessiveHalvingPruner` on ``trial.report`` values.
* Running: :func:`search` (inline, ``n_jobs`` processes, or any ``concurrent.futures``
  executor such as Dask's), storage in SQLite, :func:`load_study` to resume or report.
* Hand-driven trials ("panda"): :meth:`Study.ask` / :meth:`Study.tell`, and
  :func:`resume_trial` to continue one trial's training from its checkpoint with a new rate.
* fastnn models: :func:`tune_model` (on a validation split, or ``cv``-fold
  cross-validated: :class:`CrossValidatedObjective`), :func:`mlp_space` (what ``fastnn tune``
  searches); the bundled digits: :func:`digits_objective`, :func:`digits_space`.
"""

from __future__ import annotations

from .models import (
    CrossValidatedObjective,
    DigitsObjective,
    MLPBuilder,
    ModelObjective,
    digits_objective,
    digits_space,
    make_optimizer,
    mlp_space,
    resume_trial,
    tune_digits,
    tune_model,
)
from .pruners import MedianPruner, NopPruner, Pruner, SuccessiveHalvingPruner
from .space import (
    Choice,
    Distribution,
    IntLogUniform,
    IntUniform,
    LogUniform,
    OneMinusLogUniform,
    Uniform,
)
from .strategies import Bayes, CoarseToFine, Grid, Random, Staged, Strategy
from .study import Study, create_study, load_study, search
from .trial import FrozenTrial, Trial, TrialPruned, trial_seed

__all__ = [
    "Bayes",
    "Choice",
    "CrossValidatedObjective",
    "CoarseToFine",
    "DigitsObjective",
    "Distribution",
    "FrozenTrial",
    "Grid",
    "IntLogUniform",
    "IntUniform",
    "LogUniform",
    "MLPBuilder",
    "MedianPruner",
    "ModelObjective",
    "NopPruner",
    "OneMinusLogUniform",
    "Pruner",
    "Random",
    "Staged",
    "Strategy",
    "Study",
    "SuccessiveHalvingPruner",
    "Trial",
    "TrialPruned",
    "Uniform",
    "create_study",
    "digits_objective",
    "digits_space",
    "load_study",
    "make_optimizer",
    "mlp_space",
    "resume_trial",
    "search",
    "trial_seed",
    "tune_digits",
    "tune_model",
]
