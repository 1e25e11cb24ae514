"""Random search: independent uniform draws on each distribution's own scale."""

from __future__ import annotations

from .base import _KEY_RANDOM, Strategy, _rng

__all__ = ["Random"]


class Random(Strategy):
    """Independent uniform draws in the unit cube (each distribution on its own scale).

    Trial ``number`` uses a generator seeded by (study seed, ``number``) only.
    """

    name = "random"

    def _propose(self, number: int, history: list) -> dict:
        return self._params(_rng(self._seed, _KEY_RANDOM, number).random(len(self._dims)))
