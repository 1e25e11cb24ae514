"""Grid search: every point of a product of per-dimension grids."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

from ... import _checks
from ..space import Distribution
from .base import Strategy

__all__ = ["Grid"]


class Grid(Strategy):
    """Every point of the product of per-dimension grids, in a fixed order.

    Parameters
    ----------
    points : int or dict
        Points per dimension, evenly spaced on each distribution's own scale
        (``Distribution.grid``; a ``Choice`` gives all its options). A dict maps
        names to counts; names it omits get 5.

    Trial ``i`` is the ``i``-th point of ``itertools.product`` over the
    dimensions in the space's order (the last dimension varies fastest);
    ``n_trials()`` is the number of points.
    """

    name = "grid"

    def __init__(self, points: int | Mapping = 5) -> None:
        super().__init__()
        if isinstance(points, Mapping):
            self.points = {str(k): _checks.integer(f"points[{k!r}]", v, minimum=1)
                           for k, v in points.items()}
        else:
            self.points = _checks.integer("points", points, minimum=1)

    def _on_bind(self) -> None:
        if isinstance(self.points, dict):
            unknown = sorted(set(self.points) - {n for n, _ in self._dims})
            if unknown:
                raise ValueError(f"points names {unknown} are not distributions of the space "
                                 f"{[n for n, _ in self._dims]}")
        self._axes = [d.grid(self._points_for(n)) for n, d in self._dims]
        self._size = math.prod(len(a) for a in self._axes)

    def _points_for(self, name: str) -> int:
        if isinstance(self.points, dict):
            return self.points.get(name, 5)
        return self.points

    def n_trials(self) -> int | None:
        return self._size if self._space is not None else None

    def _propose(self, number: int, history: list) -> dict:
        if number >= self._size:
            raise ValueError(f"number must be < {self._size}, the number of grid points; got "
                             f"{number}")
        values, rest = [], number
        for axis in reversed(self._axes):
            rest, j = divmod(rest, len(axis))
            values.append(axis[j])
        values.reverse()
        params, i = {}, 0
        for name, value in self._space.items():
            if isinstance(value, Distribution):
                params[name] = values[i]
                i += 1
            else:
                params[name] = copy.deepcopy(value)
        return params

    def describe(self, history=None) -> dict:
        grid = {n: list(a) for (n, _), a in zip(self._dims, self._axes, strict=True)} \
            if self._space is not None else {}
        return {"strategy": self.name, "grid": grid}

    def _options(self) -> dict:
        return {"points": dict(self.points) if isinstance(self.points, dict) else self.points}
