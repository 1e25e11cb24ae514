"""Search-space distributions that know their scale.

Every distribution maps its values to and from the unit interval of its own
scale, and every strategy works in the unit cube of these transformed scales:

==========================  ======================================================
``Uniform(low, high)``      ``u`` linear in the value
``LogUniform(low, high)``   ``u`` linear in ``log(value)`` (learning rate)
``OneMinusLogUniform``      ``value = 1 - 10**t``, ``t`` linear in ``u`` (β, momentum)
``IntUniform(low, high)``   integers, each with the same share of ``[0, 1]``
``IntLogUniform``           integers, shares proportional to ``log((k + 1) / k)``
``Choice(options)``         the options, each with the same share of ``[0, 1]``
==========================  ======================================================

Integer and choice distributions cut ``[0, 1]`` into cells, one per value:
``from_unit(u)`` returns the value whose cell holds ``u`` and ``to_unit(v)``
returns the centre of the cell of ``v`` (so ``from_unit(to_unit(v)) == v``).
A uniform ``u`` therefore gives each integer of ``IntUniform`` the same
probability, and gives ``IntLogUniform(1, 999)`` one third of its draws in each
decade. ``sample(rng)`` is ``from_unit(rng.random())`` for every distribution.

>>> import numpy as np
>>> from fastnn.tune.space import LogUniform, OneMinusLogUniform
>>> LogUniform(1e-4, 1.0).grid(5)
[0.0001, 0.001, 0.01, 0.1, 1.0]
>>> beta = OneMinusLogUniform(0.9, 0.999)
>>> round(beta.from_unit(0.5), 6)     # half the draws are above 0.99
0.99
>>> space = {"lr": LogUniform(1e-4, 1.0), "beta": beta, "epochs": 10}
>>> space_from_config(space_to_config(space)) == space
True

Values returned are plain Python ``float``, ``int`` or the option itself, never
NumPy scalars, so they store as JSON.
"""

from __future__ import annotations

import abc
import json
import math
import numbers
from collections.abc import Mapping

import numpy as np

__all__ = [
    "Choice",
    "Distribution",
    "IntLogUniform",
    "IntUniform",
    "LogUniform",
    "OneMinusLogUniform",
    "Uniform",
    "check_space",
    "distribution_from_config",
    "space_from_config",
    "space_to_config",
]


# ---------------------------------------------------------------------------- argument checks

def _real(name: str, value) -> float:
    """A finite real number as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return v


def _integer(name: str, value) -> int:
    """An integer (an integral float such as 1e3 is accepted) as a Python int."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isfinite(v) and v.is_integer():
            return int(v)
        raise ValueError(f"{name} must be an integer; got {value!r}")
    raise TypeError(f"{name} must be an integer; got {value!r}")


def _check_order(low, high) -> None:
    if not low < high:
        raise ValueError(f"low must be < high; got low={low!r}, high={high!r}")


def _unit(u) -> float:
    """``u`` as a float clipped to [0, 1]."""
    u = float(u)
    if math.isnan(u):
        raise ValueError("u must be a number in [0, 1]; got nan")
    return min(max(u, 0.0), 1.0)


def _check_n(n) -> int:
    n = _integer("n", n)
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    return n


def _plain(value):
    """NumPy scalars as the Python scalar of the same kind; other values unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------- distributions

class Distribution(abc.ABC):
    """A one-dimensional search distribution with a unit-interval parametrisation.

    Subclasses implement ``to_unit``, ``from_unit``, ``grid`` and ``_params``;
    ``sample`` draws ``u`` uniformly in [0, 1) and returns ``from_unit(u)``.
    """

    def sample(self, rng: np.random.Generator):
        """One value drawn with ``rng`` (a ``numpy.random.Generator``)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
        return self.from_unit(rng.random())

    @abc.abstractmethod
    def to_unit(self, value) -> float:
        """Position of ``value`` in [0, 1] on this distribution's scale (clipped)."""

    @abc.abstractmethod
    def from_unit(self, u: float):
        """The value at position ``u`` (clipped to [0, 1]) on this distribution's scale."""

    @abc.abstractmethod
    def grid(self, n: int) -> list:
        """``n`` values evenly spaced on this distribution's scale, ends included."""

    @abc.abstractmethod
    def _params(self) -> dict:
        """Constructor arguments, JSON-able."""

    def _snap_unit(self, u: np.ndarray) -> np.ndarray:
        """Unit positions moved to the centre of their value's cell (vectorised; the
        identity for continuous distributions). Strategies use it so that two unit
        points giving the same value are the same point."""
        return np.clip(u, 0.0, 1.0)

    def to_config(self) -> dict:
        """A JSON-able dict that :func:`distribution_from_config` turns back into ``self``."""
        return {"type": type(self).__name__, **self._params()}

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return _config_key(self.to_config()) == _config_key(other.to_config())

    def __hash__(self) -> int:
        return hash(_config_key(self.to_config()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


def _config_key(config: dict) -> str:
    # json keeps 1 and 1.0 and True apart, which == does not.
    return json.dumps(config, sort_keys=True)


class _Continuous(Distribution):
    """A float distribution on [low, high] with a monotone increasing map t(value)."""

    def __init__(self, low: float, high: float) -> None:
        self.low = _real("low", low)
        self.high = _real("high", high)
        self._check_bounds()
        self._t_low = self._t(self.low)
        self._t_high = self._t(self.high)

    def _check_bounds(self) -> None:
        _check_order(self.low, self.high)

    @abc.abstractmethod
    def _t(self, value: float) -> float:
        """The transformed scale (monotone increasing)."""

    @abc.abstractmethod
    def _t_inverse(self, t: float) -> float:
        """Inverse of ``_t``."""

    def to_unit(self, value) -> float:
        v = _real("value", value)
        v = min(max(v, self.low), self.high)
        return _unit((self._t(v) - self._t_low) / (self._t_high - self._t_low))

    def from_unit(self, u: float) -> float:
        u = _unit(u)
        if u == 0.0:
            return self.low
        if u == 1.0:
            return self.high
        v = self._t_inverse(self._t_low + u * (self._t_high - self._t_low))
        return float(min(max(v, self.low), self.high))

    def grid(self, n: int) -> list:
        n = _check_n(n)
        if n == 1:
            return [self.from_unit(0.5)]
        return [self.from_unit(i / (n - 1)) for i in range(n)]

    def _params(self) -> dict:
        return {"low": self.low, "high": self.high}


class Uniform(_Continuous):
    """Floats uniform on ``[low, high]``.

    Raises
    ------
    ValueError
        If ``low >= high`` or a bound is not finite.
    """

    def _t(self, value: float) -> float:
        return value

    def _t_inverse(self, t: float) -> float:
        return t


class LogUniform(_Continuous):
    """Floats whose logarithm is uniform: each decade of ``[low, high]`` gets the same share.

    The scale for a learning rate: ``LogUniform(1e-4, 1)`` puts a quarter of its
    draws in each of [1e-4, 1e-3), [1e-3, 1e-2), [1e-2, 1e-1), [1e-1, 1].

    Raises
    ------
    ValueError
        If ``low >= high`` or ``low <= 0``.
    """

    def _check_bounds(self) -> None:
        if self.low <= 0:
            raise ValueError(f"low must be > 0 for a log scale; got low={self.low!r}")
        _check_order(self.low, self.high)

    def _t(self, value: float) -> float:
        return math.log10(value)  # base 10 so that grid points on decades are exact

    def _t_inverse(self, t: float) -> float:
        return 10.0 ** t


class OneMinusLogUniform(_Continuous):
    """Floats ``1 - 10**t`` with ``t`` uniform in ``[log10(1-high), log10(1-low)]``.

    The scale for an exponentially-weighted-average β or a momentum:
    ``OneMinusLogUniform(0.9, 0.999)`` spends half its draws in [0.9, 0.99]
    and half in [0.99, 0.999]. ``to_unit`` increases with the value
    (``to_unit(low) == 0``).

    Raises
    ------
    ValueError
        If ``low >= high`` or a bound is outside (0, 1).
    """

    def _check_bounds(self) -> None:
        for name, v in (("low", self.low), ("high", self.high)):
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must be in (0, 1) for OneMinusLogUniform; got "
                                 f"{name}={v!r}")
        _check_order(self.low, self.high)

    def _t(self, value: float) -> float:
        return -math.log10(1.0 - value)

    def _t_inverse(self, t: float) -> float:
        return 1.0 - 10.0 ** (-t)


class _Integer(Distribution):
    """Integers ``low..high`` (inclusive); the cell of ``k`` is [t(k), t(k+1)) on scale t."""

    def __init__(self, low: int, high: int) -> None:
        self.low = _integer("low", low)
        self.high = _integer("high", high)
        self._check_bounds()
        self._t_low = self._t(self.low)
        self._t_span = self._t(self.high + 1) - self._t_low

    def _check_bounds(self) -> None:
        _check_order(self.low, self.high)

    @abc.abstractmethod
    def _t(self, value: float) -> float: ...

    @abc.abstractmethod
    def _t_inverse(self, t: float) -> float: ...

    @abc.abstractmethod
    def _t_centre(self, k: int) -> float:
        """The centre of the cell of ``k`` on scale t."""

    def to_unit(self, value) -> float:
        k = _integer("value", value)
        k = min(max(k, self.low), self.high)
        return _unit((self._t_centre(k) - self._t_low) / self._t_span)

    def from_unit(self, u: float) -> int:
        u = _unit(u)
        x = self._t_inverse(self._t_low + u * self._t_span)
        k = math.floor(x)
        # Guard the floor against rounding just below an integer cell boundary.
        if k + 1 <= self.high and self._t(k + 1) <= self._t_low + u * self._t_span:
            k += 1
        return int(min(max(k, self.low), self.high))

    def _snap_unit(self, u: np.ndarray) -> np.ndarray:
        x = self._t_inverse(self._t_low + np.clip(u, 0.0, 1.0) * self._t_span)
        k = np.clip(np.floor(x), self.low, self.high)
        return (self._t_centre(k) - self._t_low) / self._t_span

    def grid(self, n: int) -> list:
        n = _check_n(n)
        if n == 1:
            return [self.from_unit(0.5)]
        t_low, t_high = self._t(self.low), self._t(self.high)
        values = (round(self._t_inverse(t_low + i / (n - 1) * (t_high - t_low)))
                  for i in range(n))
        return sorted({min(max(int(v), self.low), self.high) for v in values})

    def _params(self) -> dict:
        return {"low": self.low, "high": self.high}


class IntUniform(_Integer):
    """Integers ``low..high`` (both included), each equally likely.

    Raises
    ------
    ValueError
        If ``low >= high`` or a bound is not an integer.
    """

    def _t(self, value: float) -> float:
        return float(value)

    def _t_inverse(self, t: float) -> float:
        return t

    def _t_centre(self, k: int) -> float:
        return k + 0.5


class IntLogUniform(_Integer):
    """Integers ``low..high`` (both included) on a log scale (hidden units, batch size).

    ``k`` has probability ``log((k + 1) / k) / log((high + 1) / low)``: each
    decade (or each octave) gets the same share, e.g. a third per decade for
    ``IntLogUniform(1, 999)``.

    Raises
    ------
    ValueError
        If ``low >= high``, ``low < 1`` or a bound is not an integer.
    """

    def _check_bounds(self) -> None:
        if self.low < 1:
            raise ValueError(f"low must be >= 1 for a log scale; got low={self.low!r}")
        _check_order(self.low, self.high)

    def _t(self, value: float) -> float:
        return math.log10(value)

    def _t_inverse(self, t):
        return 10.0 ** t

    def _t_centre(self, k):
        return 0.5 * (np.log10(k) + np.log10(k + 1.0))


_OPTION_TYPES = (str, bool, int, float, type(None))


class Choice(Distribution):
    """One of ``options``, each equally likely.

    On the unit scale option ``i`` of ``n`` owns the cell ``[i/n, (i+1)/n)``
    (an *index* encoding, in the order given; ``to_unit`` returns the cell
    centre). Options must be distinct JSON scalars: str, int, float, bool or None.

    Raises
    ------
    ValueError
        If ``options`` is empty, holds duplicates, or holds a value that is not
        a JSON scalar (or a non-finite float).
    """

    def __init__(self, options) -> None:
        if isinstance(options, (str, bytes, Mapping)) or not hasattr(options, "__iter__"):
            raise ValueError(f"options must be a list of values; got {options!r}")
        opts = [_plain(o) for o in options]
        if not opts:
            raise ValueError("options must not be empty")
        seen = set()
        for i, o in enumerate(opts):
            if not isinstance(o, _OPTION_TYPES):
                raise ValueError(f"options[{i}] must be a str, int, float, bool or None (JSON-"
                                 f"able); got {o!r} of type {type(o).__name__}")
            if isinstance(o, float) and not math.isfinite(o):
                raise ValueError(f"options[{i}] must be finite; got {o!r}")
            key = _config_key([o])
            if key in seen:
                raise ValueError(f"options must be distinct; {o!r} appears twice")
            seen.add(key)
        self.options = opts
        self._keys = [_config_key([o]) for o in opts]

    def index(self, value) -> int:
        """Position of ``value`` in ``options``."""
        v = _plain(value)
        if isinstance(v, _OPTION_TYPES):
            key = _config_key([v])
            if key in self._keys:
                return self._keys.index(key)
            for i, o in enumerate(self.options):  # 2.0 for the option 2, but never True for 1
                if isinstance(o, bool) == isinstance(v, bool) and o == v:
                    return i
        raise ValueError(f"value must be one of {self.options!r}; got {value!r}")

    def to_unit(self, value) -> float:
        return (self.index(value) + 0.5) / len(self.options)

    def from_unit(self, u: float):
        n = len(self.options)
        return self.options[min(int(_unit(u) * n), n - 1)]

    def _snap_unit(self, u: np.ndarray) -> np.ndarray:
        n = len(self.options)
        return (np.minimum(np.floor(np.clip(u, 0.0, 1.0) * n), n - 1) + 0.5) / n

    def grid(self, n: int | None = None) -> list:
        """All options, in order (``n`` is ignored)."""
        return list(self.options)

    def _params(self) -> dict:
        return {"options": list(self.options)}


_DISTRIBUTIONS = {cls.__name__: cls for cls in (
    Uniform, LogUniform, OneMinusLogUniform, IntUniform, IntLogUniform, Choice)}


def distribution_from_config(config: Mapping) -> Distribution:
    """The distribution described by ``config`` (from :meth:`Distribution.to_config`).

    Raises
    ------
    ValueError
        If ``config`` has no known ``"type"`` or has arguments the type does not take.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict; got {type(config).__name__}")
    kind = config.get("type")
    if kind not in _DISTRIBUTIONS:
        raise ValueError(f"config['type'] must be one of {sorted(_DISTRIBUTIONS)}; got {kind!r}")
    cls = _DISTRIBUTIONS[kind]
    args = {k: v for k, v in config.items() if k != "type"}
    expected = {"options"} if cls is Choice else {"low", "high"}
    if set(args) != expected:
        raise ValueError(f"config for {kind} must have keys {sorted(expected)}; got "
                         f"{sorted(args)}")
    return cls(**args)


# ---------------------------------------------------------------------------- spaces

def _check_constant(name: str, value):
    value = _plain(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(f"space[{name!r}] must be a Distribution or a JSON-able constant; got "
                         f"{value!r}") from None
    return value


def check_space(space: Mapping) -> dict:
    """Validate a search space and return it as a new dict.

    Parameters
    ----------
    space : dict
        Parameter name (a non-empty str) to a :class:`Distribution` or to a
        JSON-able constant passed unchanged to every trial.

    Returns
    -------
    dict
        The same entries in the same order (NumPy scalar constants as Python scalars).

    Raises
    ------
    TypeError
        If ``space`` is not a dict or a name is not a str.
    ValueError
        If a name is empty or a value is neither a distribution nor JSON-able.
    """
    if not isinstance(space, Mapping):
        raise TypeError(f"space must be a dict of name -> distribution; got "
                        f"{type(space).__name__}")
    checked = {}
    for name, value in space.items():
        if not isinstance(name, str):
            raise TypeError(f"space names must be str; got {name!r}")
        if not name:
            raise ValueError("space names must not be empty")
        if isinstance(value, Distribution):
            checked[name] = value
        else:
            checked[name] = _check_constant(name, value)
    return checked


def space_to_config(space: Mapping) -> dict:
    """A JSON-able description of ``space``.

    Constants become ``{"type": "Constant", "value": v}``.
    """
    config = {}
    for name, value in check_space(space).items():
        if isinstance(value, Distribution):
            config[name] = value.to_config()
        else:
            config[name] = {"type": "Constant", "value": value}
    return config


def space_from_config(config: Mapping) -> dict:
    """The space described by ``config`` (from :func:`space_to_config`).

    A plain (non-dict) value is accepted as a constant too.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict; got {type(config).__name__}")
    space = {}
    for name, entry in config.items():
        if isinstance(entry, Mapping) and entry.get("type") == "Constant":
            if set(entry) != {"type", "value"}:
                raise ValueError(f"config[{name!r}] for a Constant must have keys "
                                 f"['type', 'value']; got {sorted(entry)}")
            space[name] = entry["value"]
        elif isinstance(entry, Mapping):
            space[name] = distribution_from_config(entry)
        else:
            space[name] = entry
    return check_space(space)
