"""Search strategies: grid, random, coarse-to-fine, Bayesian and staged search.

A strategy proposes the parameters of trial ``number`` (0, 1, 2, ...). Every
strategy works in the unit cube of the distributions' own scales (see
:mod:`fastnn.tune.space`) and its proposals depend only on

* the study seed given to :meth:`Strategy.bind`,
* the trial ``number``,
* the finished trials numbered below :meth:`Strategy.barrier` ``(number)``,

so a study proposes the same trials whatever the number of workers, the
order in which trials finish, or a crash and resume in between. The runner
calls ``propose`` in increasing ``number`` order, once every trial below the
barrier has finished; ``propose`` may be called again for the same number
with the same history and returns the same parameters.

==================  ========================================================  =====================
strategy            proposal of trial ``number``                              barrier
==================  ========================================================  =====================
``Grid``            the ``number``-th point of the product of per-dim grids   0
``Random``          uniform in the unit cube                                  0
``CoarseToFine``    uniform in the box of its round (whole cube in round 0)   start of its round
``Bayes``           Latin hypercube, then GP + expected improvement batches   start of its batch
``Staged``          one strategy per stage, earlier stages fixed at the best  start of its stage
==================  ========================================================  =====================

>>> from fastnn.tune.space import LogUniform, OneMinusLogUniform
>>> from fastnn.tune.strategies import get_strategy
>>> space = {"lr": LogUniform(1e-4, 1.0), "beta": OneMinusLogUniform(0.9, 0.999), "epochs": 5}
>>> grid = get_strategy("grid", points={"lr": 3, "beta": 2})
>>> grid.bind(space, seed=0)
>>> grid.n_trials()
6
>>> [grid.propose(i, [])["lr"] for i in range(0, 6, 2)]
[0.0001, 0.01, 1.0]
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from .._registry import build_by_name
from .base import Finished, Strategy
from .bayes import Bayes
from .coarse_to_fine import CoarseToFine
from .grid import Grid
from .random import Random
from .staged import Staged

__all__ = [
    "Bayes",
    "CoarseToFine",
    "Finished",
    "Grid",
    "Random",
    "Staged",
    "Strategy",
    "get_strategy",
    "strategy_from_config",
]

_STRATEGIES = {cls.name: cls for cls in (Grid, Random, CoarseToFine, Bayes, Staged)}


def get_strategy(strategy="random", /, **options) -> Strategy:
    """A strategy from its name (with options), its config dict, or itself.

    Parameters
    ----------
    strategy : str, dict or Strategy
        ``"grid"``, ``"random"``, ``"coarse_to_fine"`` (or ``"coarse-to-fine"``),
        ``"bayes"``, ``"staged"``; a dict from :meth:`Strategy.to_config`; or an
        instance, returned as it is.
    **options
        Arguments of the strategy's class (only with a name).
    """
    if isinstance(strategy, Strategy):
        if options:
            raise TypeError(f"options {sorted(options)} can only be given with a strategy name, "
                            f"not with the instance {strategy!r}")
        return strategy
    if isinstance(strategy, Mapping):
        if options:
            raise TypeError(f"options {sorted(options)} can only be given with a strategy name, "
                            "not with a config dict")
        return strategy_from_config(strategy)
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a name, a config dict or a Strategy; got {strategy!r}")
    return build_by_name("strategy", _STRATEGIES, strategy, options)


def strategy_from_config(config: Mapping) -> Strategy:
    """The strategy described by ``config`` (from :meth:`Strategy.to_config`)."""
    if not isinstance(config, Mapping) or "name" not in config:
        raise ValueError(f"config must be a dict with a 'name'; got {config!r}")
    options = {k: copy.deepcopy(v) for k, v in config.items() if k != "name"}
    return get_strategy(config["name"], **options)


Staged._get_strategy = staticmethod(get_strategy)  # its stages' strategies, by name too
