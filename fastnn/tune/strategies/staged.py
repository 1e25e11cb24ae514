"""Staged search, the course's order: a few parameters at a time, each stage's best fixed."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from ... import _checks
from ..._names import HYPERPARAMETERS, STAGES
from ..space import Distribution
from .base import _KEY_STAGE, _SALT, Finished, Strategy, _best

__all__ = ["Staged"]

# The course's stages (fastnn._names.STAGES), each canonical name with all its aliases.
_DEFAULT_STAGES = tuple(tuple(alias for canonical in stage for alias in HYPERPARAMETERS[canonical])
                        for stage in STAGES)


class Staged(Strategy):
    """The course's order: tune a few parameters at a time, fixing each stage's best.

    Parameters
    ----------
    stages : list or None
        Each stage a list of parameter names, or a dict with ``"params"`` and
        optionally ``"strategy"`` (name, config dict or Strategy) and ``"trials"``.
        None: stage 1 the learning rate (``lr``, ``learning_rate``); stage 2 β
        or momentum, hidden units and minibatch size (``beta``, ``beta1``,
        ``beta_1``, ``momentum``, ``hidden``, ``units``, ``hidden_units``,
        ``width``, ``batch_size``, ``minibatch``); stage 3 layers and decay
        (``layers``, ``n_layers``, ``depth``, ``decay``, ``decay_rate``,
        ``lr_decay``) and every other name. Empty stages are dropped; names a
        given list leaves out join the last stage.
    strategy : str, dict or Strategy
        The strategy of stages that do not name one (each stage gets its own
        fresh copy, bound to its parameters with a seed of its own).
    trials : int, list of int or None
        Trials per stage (or one count per stage). None: a stage whose strategy
        has a natural size (grid) takes it, the others share the budget from
        ``set_budget`` evenly (10 each without a budget).
    defaults : dict or None
        Values of parameters not tuned yet; others take their distribution's
        centre on its own scale, ``from_unit(0.5)``.

    Notes
    -----
    Stage ``s`` covers a block of consecutive trial numbers; trials past the
    last block belong to the last stage. In a stage, the parameters of earlier
    stages take their values in that stage's best trial (defaults if none
    scored), later ones their defaults. The barrier of a trial is the start of
    its stage or the stage strategy's own barrier, whichever is later.
    """

    name = "staged"

    #: Builds a stage's strategy from a name, a config dict or an instance:
    #: :func:`fastnn.tune.strategies.get_strategy`, set by that package when it imports this
    #: module (which does not import the package back: no import circle).
    _get_strategy = None

    def __init__(self, stages=None, strategy="random", trials=None, defaults=None) -> None:
        super().__init__()
        self.stages = self._check_stages(stages)
        self.strategy = self._check_inner(strategy, "strategy")
        if trials is None or isinstance(trials, numbers.Integral) and not isinstance(trials,
                                                                                        bool):
            self.trials = None if trials is None else _checks.integer("trials", trials, minimum=1)
        elif isinstance(trials, Sequence) and not isinstance(trials, str):
            self.trials = [_checks.integer(f"trials[{i}]", t, minimum=1)
                           for i, t in enumerate(trials)]
        else:
            raise TypeError(f"trials must be None, an int or a list of ints; got {trials!r}")
        if defaults is not None and not isinstance(defaults, Mapping):
            raise TypeError(f"defaults must be a dict of name -> value; got {defaults!r}")
        self.defaults = dict(defaults or {})
        self._layout_cache = None

    @staticmethod
    def _check_inner(strategy, where: str):
        if isinstance(strategy, Staged) or strategy == "staged" or (
                isinstance(strategy, Mapping) and strategy.get("name") == "staged"):
            raise ValueError(f"{where} of a stage cannot itself be 'staged'")
        Staged._get_strategy(strategy)  # validates the name or config now
        return strategy.to_config() if isinstance(strategy, Strategy) else strategy

    def _check_stages(self, stages):
        if stages is None:
            return None
        if isinstance(stages, (str, Mapping)) or not isinstance(stages, Sequence) or not stages:
            raise ValueError(f"stages must be a non-empty list of stages; got {stages!r}")
        checked = []
        for i, stage in enumerate(stages):
            if isinstance(stage, Mapping):
                extra = set(stage) - {"params", "strategy", "trials"}
                if "params" not in stage or extra:
                    raise ValueError(f"stages[{i}] must have 'params' and optionally 'strategy' "
                                     f"and 'trials'; got keys {sorted(stage)}")
                entry = {"params": self._names(stage["params"], i)}
                if stage.get("strategy") is not None:
                    entry["strategy"] = self._check_inner(stage["strategy"],
                                                          f"stages[{i}]['strategy']")
                if stage.get("trials") is not None:
                    entry["trials"] = _checks.integer(f"stages[{i}]['trials']", stage["trials"],
                                                      minimum=1)
            else:
                entry = {"params": self._names(stage, i)}
            checked.append(entry)
        return checked

    @staticmethod
    def _names(names, i: int) -> list:
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"stages[{i}] must list parameter names; got {names!r}")
        return list(names)

    # -- binding ---------------------------------------------------------------------------

    def _on_bind(self) -> None:
        names = [n for n, _ in self._dims]
        plan = self._default_plan(names) if self.stages is None else self._given_plan(names)
        if self.trials is not None and not isinstance(self.trials, int) \
                and len(self.trials) != len(plan):
            raise ValueError(f"trials must have one count per stage ({len(plan)} stages); got "
                             f"{self.trials!r}")
        self._check_defaults(names)
        self._plan = []
        for s, entry in enumerate(plan):
            inner = self._get_strategy(copy.deepcopy(entry.get("strategy", self.strategy)))
            sub = {n: self._space[n] for n in entry["params"]}
            stage_seed = int(np.random.SeedSequence(
                self._seed, spawn_key=(_SALT, _KEY_STAGE, s)).generate_state(1)[0])
            inner.bind(sub, stage_seed)
            self._plan.append({"params": list(entry["params"]), "inner": inner,
                               "trials": entry.get("trials")})
        self._layout_cache = None

    def _default_plan(self, names: list) -> list:
        groups: list[list[str]] = [[] for _ in _DEFAULT_STAGES]
        for name in names:
            where = [i for i, group in enumerate(_DEFAULT_STAGES) if name.lower() in group]
            groups[where[0] if where else len(_DEFAULT_STAGES) - 1].append(name)
        return [{"params": g} for g in groups if g]

    def _given_plan(self, names: list) -> list:
        seen: dict[str, int] = {}
        for i, entry in enumerate(self.stages):
            for n in entry["params"]:
                if n not in names:
                    raise ValueError(f"stages[{i}] names {n!r}, which is not a distribution of "
                                     f"the space {names}")
                if n in seen:
                    raise ValueError(f"{n!r} appears in stages[{seen[n]}] and stages[{i}]")
                seen[n] = i
        plan = [dict(e) for e in self.stages]
        left = [n for n in names if n not in seen]
        if left:
            plan[-1] = {**plan[-1], "params": plan[-1]["params"] + left}
        return [e for e in plan if e["params"]]

    def _check_defaults(self, names: list) -> None:
        for name, value in self.defaults.items():
            if name not in names:
                raise ValueError(f"defaults names {name!r}, which is not a distribution of the "
                                 f"space {names}")
            try:
                self._space[name].to_unit(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"defaults[{name!r}] does not fit {self._space[name]!r}: "
                                 f"{exc}") from None

    def set_budget(self, n_trials: int | None) -> None:
        super().set_budget(n_trials)
        self._layout_cache = None

    def _layout(self) -> list[tuple[int, int]]:
        """(start, size) of each stage."""
        if self._layout_cache is not None:
            return self._layout_cache
        sizes = []
        for s, stage in enumerate(self._plan):
            if stage["trials"] is not None:
                sizes.append(stage["trials"])
            elif self.trials is not None:
                sizes.append(self.trials if isinstance(self.trials, int) else self.trials[s])
            else:
                stage["inner"].set_budget(None)  # its natural size (a grid's), not a share
                sizes.append(stage["inner"].n_trials())
        free = [s for s, n in enumerate(sizes) if n is None]
        if free:
            if self._budget is None:
                share = [10] * len(free)
            else:
                left = max(self._budget - sum(n for n in sizes if n is not None), len(free))
                share = [left // len(free) + (i < left % len(free)) for i in range(len(free))]
            for s, n in zip(free, share, strict=True):
                sizes[s] = n
        layout, start = [], 0
        for stage, n in zip(self._plan, sizes, strict=True):
            layout.append((start, n))
            stage["inner"].set_budget(n)
            start += n
        self._layout_cache = layout
        return layout

    def n_trials(self) -> int | None:
        if self._space is None or not self._plan:
            return None
        start, size = self._layout()[-1]
        return start + size

    def _stage_of(self, number: int) -> int:
        layout = self._layout()
        for s in range(len(layout) - 1, -1, -1):
            if number >= layout[s][0]:
                return s
        return 0

    # -- proposals -------------------------------------------------------------------------

    def barrier(self, number: int) -> int:
        self._check_number(number)
        if not self._plan:
            return 0
        s = self._stage_of(number)
        start = self._layout()[s][0]
        return start + self._plan[s]["inner"].barrier(number - start)

    def _propose(self, number: int, history: list) -> dict:
        if not self._plan:
            return self._params([])
        s = self._stage_of(number)
        start = self._layout()[s][0]
        inner_params = self._plan[s]["inner"].propose(number - start,
                                                      self._stage_history(s, history))
        values = {}
        for e in range(s):
            values.update(self._stage_best(e, history))
        values.update({n: inner_params[n] for n in self._plan[s]["params"]})
        params = {}
        for name, value in self._space.items():
            if not isinstance(value, Distribution):
                params[name] = copy.deepcopy(value)
            elif name in values:
                params[name] = values[name]
            else:
                params[name] = self._default(name)
        return params

    def _default(self, name: str):
        if name in self.defaults:
            return copy.deepcopy(self.defaults[name])
        return self._space[name].from_unit(0.5)

    def _stage_trials(self, s: int, history) -> list:
        start, size = self._layout()[s]
        end = math.inf if s == len(self._plan) - 1 else start + size
        return [t for t in history if start <= t.number < end]

    def _stage_history(self, s: int, history) -> list:
        """The stage's trials renumbered from 0, with only the stage's parameters."""
        start = self._layout()[s][0]
        names = self._plan[s]["params"]
        return [Finished(t.number - start, {n: t.params[n] for n in names if n in t.params},
                         t.score) for t in self._stage_trials(s, history)]

    def _stage_best(self, s: int, history) -> dict:
        best = _best(self._stage_trials(s, history))
        names = self._plan[s]["params"]
        if best is None or any(n not in best.params for n in names):
            return {n: self._default(n) for n in names}
        return {n: best.params[n] for n in names}

    def describe(self, history: Sequence[Finished] | None = None) -> dict:
        """The stages: parameters, strategy, first trial, size; with ``history``, each
        stage's best values so far and its strategy's own report."""
        out = {"strategy": self.name}
        if self._space is None:
            return out
        history = None if history is None else list(history)
        stages = []
        for s, ((start, size), stage) in enumerate(zip(self._layout(), self._plan, strict=True)):
            inner_history = None if history is None else self._stage_history(s, history)
            entry = {"stage": s + 1, "params": list(stage["params"]),
                     "strategy": stage["inner"].name, "start": start, "trials": size,
                     "inner": stage["inner"].describe(inner_history)}
            if history is not None:
                best = _best(self._stage_trials(s, history))
                entry["best"] = None if best is None else {
                    n: best.params.get(n) for n in stage["params"]}
            stages.append(entry)
        out["stages"] = stages
        return out

    def _options(self) -> dict:
        if self._space is None:
            stages = copy.deepcopy(self.stages)
            trials = self.trials
        else:
            layout = self._layout()
            stages = [{"params": list(st["params"]), "strategy": st["inner"].to_config(),
                       "trials": size} for st, (_, size) in zip(self._plan, layout, strict=True)]
            trials = None
        return {"stages": stages, "strategy": copy.deepcopy(self.strategy), "trials": trials,
                "defaults": copy.deepcopy(self.defaults)}
