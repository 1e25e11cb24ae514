"""Learning-rate schedules: the learning rate as a function of the epoch (or step).

Every optimizer accepts a schedule as its ``lr``. A schedule is evaluated once
per epoch, with ``t`` the 0-based epoch index, unless it was created with
``per_step=True``, in which case ``t`` is the number of optimizer steps already
taken (0 before the first). The course's decays, with ``a0`` the initial rate:

=========================  ==========================================
``Constant(a0)``           ``a0``
``InverseTimeDecay``       ``a0 / (1 + decay_rate * t)``
``ExponentialDecay``       ``a0 * rate ** t``
``InverseSqrtDecay``       ``a0 * k / sqrt(t + 1)``  (``k/sqrt(epoch_num)``)
``PowerDecay``             ``a0 / (t + 1) ** power``  (MLPClassifier's invscaling)
``StepDecay``              ``a0 * drop ** floor(t / every)``  (staircase)
``CosineDecay``            ``min_lr + (a0 - min_lr) (1 + cos(pi min(t, T) / T)) / 2``
=========================  ==========================================

>>> from fastnn.schedules import InverseTimeDecay
>>> s = InverseTimeDecay(0.1, decay_rate=1.0)
>>> [round(s(epoch), 4) for epoch in range(4)]
[0.1, 0.05, 0.0333, 0.025]
"""

from __future__ import annotations

import abc
import math

from . import _checks

__all__ = [
    "Constant",
    "CosineDecay",
    "ExponentialDecay",
    "InverseSqrtDecay",
    "InverseTimeDecay",
    "PowerDecay",
    "Schedule",
    "StepDecay",
    "decay",
    "from_config",
]


def _positive(name: str, value, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}; got {value!r}")
    return v


class Schedule(abc.ABC):
    """Base class: ``schedule(t)`` is the learning rate at epoch (or step) ``t``."""

    per_step: bool = False

    def __init__(self, lr: float, *, per_step: bool = False) -> None:
        self.lr = _positive("lr", lr, allow_zero=True)
        self.per_step = bool(per_step)

    def __call__(self, t: int) -> float:
        if t < 0:
            raise ValueError(f"t must be >= 0; got {t}")
        return float(self._rate(int(t)))

    @abc.abstractmethod
    def _rate(self, t: int) -> float:
        """The rate at t >= 0."""

    def get_config(self) -> dict:
        config = {"class": type(self).__name__, "lr": self.lr, "per_step": self.per_step}
        config.update(self._extra_config())
        return config

    def _extra_config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "class")
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """The same rate at every epoch."""

    def _rate(self, t: int) -> float:
        return self.lr


class InverseTimeDecay(Schedule):
    """``lr / (1 + decay_rate * t)``: the course's ``decay_rate`` schedule."""

    def __init__(self, lr: float, decay_rate: float = 1.0, *, per_step: bool = False) -> None:
        super().__init__(lr, per_step=per_step)
        self.decay_rate = _positive("decay_rate", decay_rate, allow_zero=True)

    def _rate(self, t: int) -> float:
        return self.lr / (1.0 + self.decay_rate * t)

    def _extra_config(self) -> dict:
        return {"decay_rate": self.decay_rate}


class ExponentialDecay(Schedule):
    """``lr * rate ** t`` (for example ``rate=0.95``)."""

    def __init__(self, lr: float, rate: float = 0.95, *, per_step: bool = False) -> None:
        super().__init__(lr, per_step=per_step)
        self.rate = _positive("rate", rate)
        if self.rate > 1:
            raise ValueError(f"rate must be in (0, 1] for a decay; got {rate!r}")

    def _rate(self, t: int) -> float:
        return self.lr * self.rate**t

    def _extra_config(self) -> dict:
        return {"rate": self.rate}


class InverseSqrtDecay(Schedule):
    """``lr * k / sqrt(t + 1)``: the course's ``k / sqrt(epoch_num)`` (epochs counted from 1)."""

    def __init__(self, lr: float, k: float = 1.0, *, per_step: bool = False) -> None:
        super().__init__(lr, per_step=per_step)
        self.k = _positive("k", k)

    def _rate(self, t: int) -> float:
        return self.lr * self.k / math.sqrt(t + 1.0)

    def _extra_config(self) -> dict:
        return {"k": self.k}


class PowerDecay(Schedule):
    """``lr / (t + 1) ** power``: MLPClassifier's ``invscaling`` (usually per step)."""

    def __init__(self, lr: float, power: float = 0.5, *, per_step: bool = False) -> None:
        super().__init__(lr, per_step=per_step)
        self.power = _positive("power", power, allow_zero=True)

    def _rate(self, t: int) -> float:
        return self.lr / (t + 1.0) ** self.power

    def _extra_config(self) -> dict:
        return {"power": self.power}


class StepDecay(Schedule):
    """Staircase: ``lr * drop ** floor(t / every)``."""

    def __init__(self, lr: float, drop: float = 0.5, every: int = 10, *,
                 per_step: bool = False) -> None:
        super().__init__(lr, per_step=per_step)
        self.drop = _positive("drop", drop)
        if self.drop > 1:
            raise ValueError(f"drop must be in (0, 1]; got {drop!r}")
        every = _checks.integer("every", every, minimum=1)
        self.every = every

    def _rate(self, t: int) -> float:
        return self.lr * self.drop ** (t // self.every)

    def _extra_config(self) -> dict:
        return {"drop": self.drop, "every": self.every}


class CosineDecay(Schedule):
    """Half a cosine from ``lr`` down to ``min_lr`` over ``total`` epochs (or steps), then flat."""

    def __init__(self, lr: float, total: int, min_lr: float = 0.0, *,
                 per_step: bool = False) -> None:
        super().__init__(lr, per_step=per_step)
        total = _checks.integer("total", total, minimum=1)
        self.total = total
        self.min_lr = _positive("min_lr", min_lr, allow_zero=True)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must be <= lr ({self.lr}); got {min_lr!r}")

    def _rate(self, t: int) -> float:
        frac = min(t, self.total) / self.total
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * frac))

    def _extra_config(self) -> dict:
        return {"total": self.total, "min_lr": self.min_lr}


_CLASSES = {cls.__name__: cls for cls in (Constant, InverseTimeDecay, ExponentialDecay,
                                          InverseSqrtDecay, PowerDecay, StepDecay, CosineDecay)}


def from_config(config: dict) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.get_config` output."""
    config = dict(config)
    name = config.pop("class", None)
    if name not in _CLASSES:
        raise ValueError(f"unknown schedule class {name!r}; expected one of {sorted(_CLASSES)}")
    lr = config.pop("lr")
    per_step = config.pop("per_step", False)
    return _CLASSES[name](lr, per_step=per_step, **config)


DECAYS = ("none", "inverse_time", "exponential", "inverse_sqrt", "step", "cosine")


def decay(kind: str, lr: float, *, rate: float = 0.1, total: int = 100):
    """A per-epoch decay by name (for command lines and estimators), or ``lr`` for "none".

    ``rate`` is inverse_time's k, exponential's factor (at most 1) and step's drop (every
    10 epochs, at most 1); inverse_sqrt is ``lr / sqrt(epoch + 1)``; cosine reaches 0
    at epoch ``total``.

    >>> decay("inverse_time", 0.1, rate=1.0)(1)
    0.05
    """
    makers = {
        "none": lambda: lr,
        "inverse_time": lambda: InverseTimeDecay(lr, decay_rate=rate),
        "exponential": lambda: ExponentialDecay(lr, rate=min(rate, 1.0)),
        "inverse_sqrt": lambda: InverseSqrtDecay(lr, k=1.0),
        "step": lambda: StepDecay(lr, drop=min(rate, 1.0), every=10),
        "cosine": lambda: CosineDecay(lr, total=max(int(total), 1)),
    }
    if kind not in makers:
        raise ValueError(f"decay must be one of {DECAYS}; got {kind!r}")
    return makers[kind]()
