"""Pruners: stop unpromising trials early from their per-epoch reports.

A pruner answers one question for a running trial that has just reported
``value`` at ``step`` (oriented so that larger is better): stop it now? It sees
``peers``, the values reported at each step by the trials that had finished
(complete or pruned) when this trial started: a snapshot the runner takes, so
the answer does not depend on which other trials happen to be running.

``MedianPruner`` (the median stopping rule)
    Prune when ``value`` is below the median of the peers' values at the same
    step, once ``n_startup_trials`` peers reported there and from step
    ``n_warmup_steps`` on.
``SuccessiveHalvingPruner``
    Rungs at steps ``min_resource * reduction_factor**k``; at a rung a trial
    continues only if its value is among the top ``1/reduction_factor`` of the
    values at that rung (the peers' and its own).

>>> from fastnn.tune.pruners import MedianPruner, SuccessiveHalvingPruner
>>> peers = {3: [0.50, 0.60, 0.70, 0.80, 0.90]}
>>> MedianPruner().should_prune(3, 0.65, peers), MedianPruner().should_prune(3, 0.75, peers)
(True, False)
>>> SuccessiveHalvingPruner(reduction_factor=3).should_prune(3, 0.85, peers)
False
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .. import _checks
from ._registry import build_by_name

__all__ = [
    "MedianPruner",
    "NopPruner",
    "Pruner",
    "SuccessiveHalvingPruner",
    "get_pruner",
    "pruner_from_config",
]


def _finite(values) -> list[float]:
    out = []
    for v in values or ():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def _peers_at(peers: Mapping, step: int) -> list[float]:
    if not isinstance(peers, Mapping):
        raise TypeError(f"peers must be a dict step -> list of values; got "
                        f"{type(peers).__name__}")
    # Steps may have become str keys on a JSON round trip.
    return _finite(peers.get(step, peers.get(str(step), ())))


class Pruner:
    """Base class: never prunes. Subclasses override :meth:`should_prune`."""

    name = "none"

    def should_prune(self, step: int, value: float, peers: Mapping[int, list[float]]) -> bool:
        """Whether a trial that reported ``value`` at ``step`` should stop now.

        Parameters
        ----------
        step : int
            The step (e.g. epochs completed) of the report.
        value : float
            The trial's value at ``step``, larger is better. A NaN value is pruned
            by every pruner but :class:`NopPruner`.
        peers : dict
            step -> values reported at that step by the trials that had finished
            when this trial started.
        """
        return False

    def to_config(self) -> dict:
        """A JSON-able dict that :func:`pruner_from_config` turns into the same pruner."""
        return {"name": self.name, **self._options()}

    def _options(self) -> dict:
        return {}

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_config().items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}({args})"


class NopPruner(Pruner):
    """Never prunes."""

    name = "none"


class MedianPruner(Pruner):
    """The median stopping rule.

    Parameters
    ----------
    n_startup_trials : int
        No pruning at a step until at least this many peers reported there.
    n_warmup_steps : int
        No pruning at steps below this.

    A trial is pruned at ``step >= n_warmup_steps`` when its value is strictly
    below the median of the peers' (finite) values at that step.
    """

    name = "median"

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0) -> None:
        self.n_startup_trials = _checks.integer("n_startup_trials", n_startup_trials, minimum=0)
        self.n_warmup_steps = _checks.integer("n_warmup_steps", n_warmup_steps, minimum=0)

    def should_prune(self, step: int, value: float, peers: Mapping) -> bool:
        if step < self.n_warmup_steps:
            return False
        values = _peers_at(peers, step)
        if not values or len(values) < self.n_startup_trials:
            return False
        if math.isnan(value):
            return True
        return float(value) < _median(values)

    def _options(self) -> dict:
        return {"n_startup_trials": self.n_startup_trials,
                "n_warmup_steps": self.n_warmup_steps}


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


class SuccessiveHalvingPruner(Pruner):
    """Successive halving (asynchronous, one bracket).

    Parameters
    ----------
    min_resource : int
        The first rung: steps ``min_resource * reduction_factor**k``, k = 0, 1, ...
    reduction_factor : int
        η: at each rung, about one trial in η continues.

    At a rung, with ``n`` peer values there plus the trial's own, the trial
    continues when its value is at least the ``m``-th largest of them,
    ``m = max(1, (n + 1) // η)``; so the best trial so far always continues
    and, once there are η or more values, only the top 1/η do. Steps that are
    not rungs never prune. ``step`` is the resource used so far (for example
    epochs completed): report it at the rungs.
    """

    name = "halving"

    def __init__(self, min_resource: int = 1, reduction_factor: int = 3) -> None:
        self.min_resource = _checks.integer("min_resource", min_resource, minimum=1)
        self.reduction_factor = _checks.integer("reduction_factor", reduction_factor, minimum=2)

    def is_rung(self, step: int) -> bool:
        """Whether ``step`` is ``min_resource * reduction_factor**k`` for some k >= 0."""
        if step < self.min_resource or step % self.min_resource:
            return False
        q = step // self.min_resource
        while q % self.reduction_factor == 0:
            q //= self.reduction_factor
        return q == 1

    def should_prune(self, step: int, value: float, peers: Mapping) -> bool:
        if not self.is_rung(step):
            return False
        if math.isnan(value):
            return True
        values = sorted(_peers_at(peers, step) + [float(value)], reverse=True)
        m = max(1, len(values) // self.reduction_factor)
        return float(value) < values[m - 1]

    def _options(self) -> dict:
        return {"min_resource": self.min_resource, "reduction_factor": self.reduction_factor}


_PRUNERS = {"none": NopPruner, "nop": NopPruner, "median": MedianPruner,
            "halving": SuccessiveHalvingPruner, "successive_halving": SuccessiveHalvingPruner}


def get_pruner(pruner=None, /, **options) -> Pruner:
    """A pruner from a name (``"median"``, ``"halving"``, ``"none"``), None, a config dict
    or itself."""
    if isinstance(pruner, Pruner):
        if options:
            raise TypeError(f"options {sorted(options)} can only be given with a pruner name")
        return pruner
    if isinstance(pruner, Mapping):
        if options:
            raise TypeError(f"options {sorted(options)} can only be given with a pruner name")
        return pruner_from_config(pruner)
    if pruner is None:
        pruner = "none"
    if not isinstance(pruner, str):
        raise TypeError(f"pruner must be a name, None, a config dict or a Pruner; got "
                        f"{pruner!r}")
    return build_by_name("pruner", _PRUNERS, pruner, options, or_also=" or None")


def pruner_from_config(config: Mapping) -> Pruner:
    """The pruner described by ``config`` (from :meth:`Pruner.to_config`); None gives NopPruner."""
    if config is None:
        return NopPruner()
    if not isinstance(config, Mapping) or "name" not in config:
        raise ValueError(f"config must be a dict with a 'name'; got {config!r}")
    options = {k: v for k, v in config.items() if k != "name"}
    return get_pruner(config["name"], **options)
