"""Coarse-to-fine search: rounds of random search in boxes zoomed around the best points."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from ... import _checks
from .base import _KEY_C2F, Finished, Strategy, _before, _fingerprint, _rng, _score

__all__ = ["CoarseToFine"]


class CoarseToFine(Strategy):
    """Rounds of random search, each in a box zoomed around the best points so far.

    Parameters
    ----------
    rounds : int
        Number of rounds; trials past the last round's share stay in the last round.
    trials_per_round : int or None
        None: ``budget // rounds`` once the runner has called ``set_budget``,
        else 10.
    top : float or int
        The best points that shape a box: a float in (0, 1] is a fraction of the
        scored trials of the earlier rounds (at least one), an int a count.
    shrink : float in (0, 1]
        Each box is at least ``shrink`` times as wide as the previous one in
        every dimension.

    Notes
    -----
    Round 0 samples the whole unit cube. For round ``r >= 1``, take the top
    points among all scored trials of rounds ``< r``; in each dimension the
    box is centred on the span ``[a, b]`` of their unit coordinates, with width
    ``max(b - a, shrink * previous width)``, and is shifted (never shrunk) to
    fit in ``[0, 1]``. So every box contains all the top points, and when they
    cluster the boxes shrink by ``shrink`` per round. Without any scored trial
    the previous box is kept. The barrier of a trial is the start of its round.
    """

    name = "coarse_to_fine"

    def __init__(self, rounds: int = 3, trials_per_round: int | None = None,
                 top: float | int = 0.2, shrink: float = 0.5) -> None:
        super().__init__()
        self.rounds = _checks.integer("rounds", rounds, minimum=1)
        self.trials_per_round = (
            None if trials_per_round is None
            else _checks.integer("trials_per_round", trials_per_round, minimum=1))
        if isinstance(top, bool) or not isinstance(top, numbers.Real):
            raise TypeError(f"top must be a fraction in (0, 1] or a count >= 1; got {top!r}")
        if isinstance(top, numbers.Integral):
            self.top = _checks.integer("top", top, minimum=1)
        elif 0.0 < float(top) <= 1.0:
            self.top = float(top)
        else:
            raise ValueError(f"top must be a fraction in (0, 1] or a count >= 1; got {top!r}")
        if isinstance(shrink, bool) or not isinstance(shrink, numbers.Real) \
                or not 0.0 < float(shrink) <= 1.0:
            raise ValueError(f"shrink must be in (0, 1]; got {shrink!r}")
        self.shrink = float(shrink)
        self._boxes: dict[int, tuple] = {}

    def _per_round(self) -> int:
        if self.trials_per_round is not None:
            return self.trials_per_round
        if self._budget is not None:
            return max(1, self._budget // self.rounds)
        return 10

    def n_trials(self) -> int | None:
        if self.trials_per_round is not None:
            return self.rounds * self.trials_per_round
        return self._budget

    def _round(self, number: int) -> int:
        return min(number // self._per_round(), self.rounds - 1)

    def barrier(self, number: int) -> int:
        self._check_number(number)
        return self._round(number) * self._per_round()

    def _propose(self, number: int, history: list) -> dict:
        lo, hi = self._box(self._round(number), history)
        u = _rng(self._seed, _KEY_C2F, number).random(len(self._dims))
        return self._params(lo + u * (hi - lo))

    def _box(self, r: int, history: list) -> tuple[np.ndarray, np.ndarray]:
        """The unit box of round ``r`` (cached by the trials it depends on)."""
        d = len(self._dims)
        if r == 0:
            return np.zeros(d), np.ones(d)
        done = _before(history, r * self._per_round())
        key = _fingerprint(done)
        cached = self._boxes.get(r)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        prev_lo, prev_hi = self._box(r - 1, history)
        points = [(t, self._unit_point(t.params)) for t in done if _score(t) is not None]
        points = [(t, u) for t, u in points if u is not None]
        if not points:
            lo, hi = prev_lo, prev_hi
        else:
            lo, hi = self._zoom(points, prev_hi - prev_lo)
        self._boxes[r] = (key, lo, hi)
        return lo, hi

    def _zoom(self, points: list, prev_width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = self.top if isinstance(self.top, int) else math.ceil(self.top * len(points))
        ranked = sorted(points, key=lambda p: (-_score(p[0]), p[0].number))
        U = np.array([u for _, u in ranked[:max(1, k)]])
        a, b = U.min(0), U.max(0)
        width = np.minimum(np.maximum(b - a, self.shrink * prev_width), 1.0)
        lo = (a + b) / 2 - width / 2
        lo = np.clip(lo, 0.0, 1.0 - width)  # shift into [0, 1], keeping the width
        return lo, lo + width

    def describe(self, history: Sequence[Finished] | None = None) -> dict:
        """The boxes of rounds >= 1, in values (``box``) and unit coordinates (``unit``).

        With ``history``, every round whose start it reaches is computed;
        without, the boxes computed so far. For a ``Choice`` the box shows the
        first and last options it covers.
        """
        out = {"strategy": self.name, "rounds": self.rounds}
        if self._space is None:
            return out
        if history is not None:
            history = list(history)
            last = max((t.number for t in history), default=-1)
            for r in range(1, self.rounds):
                if last >= r * self._per_round() - 1:
                    self._box(r, history)
        out["trials_per_round"] = self._per_round()
        out["boxes"] = [self._box_report(r) for r in sorted(self._boxes)]
        return out

    def _box_report(self, r: int) -> dict:
        _, lo, hi = self._boxes[r]
        box, unit = {}, {}
        for (name, dist), a, b in zip(self._dims, lo, hi, strict=True):
            box[name] = [dist.from_unit(a), dist.from_unit(b)]
            unit[name] = [float(a), float(b)]
        return {"round": r, "box": box, "unit": unit}

    def _options(self) -> dict:
        tpr = self.trials_per_round
        if tpr is None and self._budget is not None:
            tpr = self._per_round()  # the resolved size, so a re-created strategy matches
        return {"rounds": self.rounds, "trials_per_round": tpr, "top": self.top,
                "shrink": self.shrink}
