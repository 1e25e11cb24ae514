"""Optimizers over one flat parameter buffer, with flat state buffers, via ``fastnn.ops``.

Each optimizer updates every parameter of a model in one fused kernel call per
step. The learning rate is a number or a :mod:`fastnn.schedules` schedule; the
rate in use is :attr:`Optimizer.lr`, and assigning ``opt.lr = 0.01`` between
calls to ``fit`` replaces it (the "panda" workflow: train, look, change the
rate, go on), keeping the moments.

Numerics follow PyTorch (``torch.optim.SGD``, ``RMSprop``, ``Adam``, ``AdamW``);
argument names follow Keras where they differ (``beta_1``, ``epsilon``).
"""

from __future__ import annotations

import numpy as np

from . import _checks, _names, ops, schedules

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "RMSprop", "from_config", "get"]


class Optimizer:
    """Base class: a learning rate (or schedule), a step count, and flat state buffers."""

    #: Names of the flat state buffers this optimizer keeps, in save order.
    state_names: tuple[str, ...] = ()

    def __init__(self, lr) -> None:
        self.learning_rate = lr
        self.iterations = 0  # steps taken so far
        self._epoch = 0
        self._state: dict[str, np.ndarray] = {}
        self._bound = None  # the update bound to this step's buffers (cython backend)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_bound"] = None  # a compiled object bound to live arrays: rebound on use
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_bound", None)  # (pickles from before binding existed)
        self.__dict__.update(state)

    # -- learning rate ----------------------------------------------------------------

    @property
    def learning_rate(self):
        """The configured rate: a float or a Schedule."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        if isinstance(value, schedules.Schedule):
            self._learning_rate = value
        else:
            self._learning_rate = _checks.real("lr", value, 0.0, float("inf"), high_open=True)

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        rate = self._learning_rate
        if isinstance(rate, schedules.Schedule):
            return rate(self.iterations if rate.per_step else self._epoch)
        return rate

    @lr.setter
    def lr(self, value) -> None:
        self.learning_rate = value

    def set_epoch(self, epoch: int) -> None:
        """Called by ``fit`` at the start of each epoch (0-based, counted over all fits)."""
        self._epoch = int(epoch)

    # -- state -------------------------------------------------------------------------

    def build(self, size: int, dtype) -> None:
        """Allocate zeroed state buffers for ``size`` parameters (kept if already fitting)."""
        dtype = np.dtype(dtype)
        self._bound = None
        for name in self._active_state_names():
            buf = self._state.get(name)
            if buf is None or buf.shape != (size,) or buf.dtype != dtype:
                self._state[name] = np.zeros(size, dtype)

    def _active_state_names(self) -> tuple[str, ...]:
        return self.state_names

    @property
    def built(self) -> bool:
        return all(name in self._state for name in self._active_state_names())

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The state buffers (views, not copies), by name."""
        return dict(self._state)

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for name in self._active_state_names():
            if name not in arrays:
                raise ValueError(f"optimizer state {name!r} is missing")
        self._bound = None
        for name in self._active_state_names():
            self._state[name] = np.array(arrays[name], copy=True, order="C")

    # -- the step ------------------------------------------------------------------------

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        """Update ``params`` in place from ``grads`` (flat buffers), one kernel call."""
        if not self.built:
            self.build(params.size, params.dtype)
        self._update(params, grads, self.lr, self.iterations + 1)
        self.iterations += 1

    def _update(self, params, grads, lr: float, t: int) -> None:
        raise TypeError(f"{type(self).__name__} does not implement _update")

    def fused_step(self, params, grads):
        """The update bound to the flat buffers and its scalars,
        ``(op, (lr, beta1, beta2, eps, weight_decay, decoupled))``, for a compiled pass
        that runs many training steps without Python between them (``fit``'s planned
        steps; the caller adds the steps taken to ``iterations``). None where each step
        must go through :meth:`step` (this optimizer, a learning rate that changes per
        step, the NumPy backend)."""
        return None

    # -- config --------------------------------------------------------------------------

    def _hyperparameters(self) -> dict:
        return {}

    def get_config(self) -> dict:
        rate = self._learning_rate
        return {
            "class": type(self).__name__,
            "lr": rate.get_config() if isinstance(rate, schedules.Schedule) else rate,
            **self._hyperparameters(),
            "iterations": self.iterations,
            "epoch": self._epoch,
        }

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self._hyperparameters().items())
        return f"{type(self).__name__}(lr={self._learning_rate!r}{', ' if hyper else ''}{hyper})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    ``velocity = momentum * velocity + grad``; ``param -= lr * velocity``
    (Nesterov: ``param -= lr * (grad + momentum * velocity)``), PyTorch semantics.
    """

    def __init__(self, lr=0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(lr)
        self.momentum = _checks.real("momentum", momentum, 0.0, 1.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.weight_decay = _checks.real("weight_decay", weight_decay, 0.0, float("inf"),
                                        high_open=True)

    def _active_state_names(self):
        return ("velocity",) if self.momentum > 0 else ()

    def _update(self, params, grads, lr, t):
        ops.sgd_update(params, grads, self._state.get("velocity"), t, lr=lr,
                       momentum=self.momentum, nesterov=self.nesterov,
                       weight_decay=self.weight_decay)

    def _hyperparameters(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class RMSprop(Optimizer):
    """RMSprop (PyTorch semantics; ``rho`` is PyTorch's ``alpha``, Keras' ``rho``)."""

    def __init__(self, lr=0.001, rho: float = 0.9, epsilon: float = 1e-8,
                 momentum: float = 0.0, centered: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(lr)
        self.rho = _checks.real("rho", rho, 0.0, 1.0)
        self.epsilon = _checks.real("epsilon", epsilon, 0.0, float("inf"), high_open=True)
        self.momentum = _checks.real("momentum", momentum, 0.0, 1.0)
        self.centered = bool(centered)
        self.weight_decay = _checks.real("weight_decay", weight_decay, 0.0, float("inf"),
                                        high_open=True)

    def _active_state_names(self):
        names = ["square_avg"]
        if self.momentum > 0:
            names.append("momentum_buffer")
        if self.centered:
            names.append("grad_avg")
        return tuple(names)

    def _update(self, params, grads, lr, t):
        ops.rmsprop_update(params, grads, self._state["square_avg"], lr=lr, alpha=self.rho,
                           eps=self.epsilon, weight_decay=self.weight_decay,
                           momentum=self.momentum, centered=self.centered,
                           momentum_buffer=self._state.get("momentum_buffer"),
                           grad_avg=self._state.get("grad_avg"))

    def _hyperparameters(self):
        return {"rho": self.rho, "epsilon": self.epsilon, "momentum": self.momentum,
                "centered": self.centered, "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam with bias correction (PyTorch placement of epsilon), optional amsgrad.

    ``weight_decay`` is L2 added to the gradient (``torch.optim.Adam``); for
    decoupled weight decay use :class:`AdamW`.
    """

    decoupled = False

    def __init__(self, lr=0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False) -> None:
        super().__init__(lr)
        self.beta_1 = _checks.real("beta_1", beta_1, 0.0, 1.0, high_open=True)
        self.beta_2 = _checks.real("beta_2", beta_2, 0.0, 1.0, high_open=True)
        self.epsilon = _checks.real("epsilon", epsilon, 0.0, float("inf"), high_open=True)
        self.weight_decay = _checks.real("weight_decay", weight_decay, 0.0, float("inf"),
                                        high_open=True)
        self.amsgrad = bool(amsgrad)

    def _active_state_names(self):
        return ("m", "v", "v_max") if self.amsgrad else ("m", "v")

    def _bind(self, params, grads):
        """The update bound to these buffers (made on first use; build() and
        load_state_arrays() unbind it); None with the NumPy backend."""
        bound = self._bound
        if bound is None or bound.arrays[0] is not params or bound.arrays[1] is not grads:
            if not (ops.can_plan() and isinstance(params, np.ndarray) and params.ndim == 1):
                return None
            if not self.built:
                self.build(params.size, params.dtype)
            state = self._state
            bound = self._bound = ops.bind_adam(params, grads, state["m"], state["v"],
                                                state.get("v_max"))
        elif not ops.can_plan():
            return None
        return bound

    def fused_step(self, params, grads):
        rate = self._learning_rate
        if isinstance(rate, schedules.Schedule) and rate.per_step:
            return None
        bound = self._bind(params, grads)
        if bound is None:
            return None
        lr = _checks.real("lr", self.lr, 0.0, float("inf"), high_open=True)
        return bound, (lr, self.beta_1, self.beta_2, self.epsilon, self.weight_decay,
                       self.decoupled)

    def step(self, params, grads) -> None:
        # With the cython backend the update is bound once to the flat buffers (validated
        # then) and costs one C call a step.
        bound = self._bind(params, grads)
        if bound is None:
            return super().step(params, grads)
        t = self.iterations + 1
        lr = _checks.real("lr", self.lr, 0.0, float("inf"), high_open=True)
        bound.update(lr, self.beta_1, self.beta_2, self.epsilon, self.weight_decay,
                     self.decoupled, 1.0 - self.beta_1**t, 1.0 - self.beta_2**t)
        self.iterations = t

    def _update(self, params, grads, lr, t):
        ops.adam_update(params, grads, self._state["m"], self._state["v"], t, lr=lr,
                        beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon,
                        weight_decay=self.weight_decay, decoupled=self.decoupled,
                        amsgrad=self.amsgrad, v_max=self._state.get("v_max"))

    def _hyperparameters(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay: ``param *= 1 - lr * weight_decay`` each step."""

    decoupled = True

    def __init__(self, lr=0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, weight_decay: float = 0.01,
                 amsgrad: bool = False) -> None:
        super().__init__(lr, beta_1, beta_2, epsilon, weight_decay, amsgrad)


_CLASSES = {cls.__name__: cls for cls in (SGD, RMSprop, Adam, AdamW)}


def by_name(name: str) -> type[Optimizer]:
    """The optimizer class called ``name`` (see :data:`fastnn._names.OPTIMIZERS`), in any
    case: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``."""
    key = name.lower() if isinstance(name, str) else None
    if key not in _names.OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(_names.OPTIMIZERS)} (or a "
                         f"fastnn.optimizers.Optimizer); got {name!r}")
    return _CLASSES[_names.OPTIMIZERS[key]]


def make(name: str, lr=None, **options) -> Optimizer:
    """The optimizer called ``name`` with learning rate ``lr`` (a float or a schedule; None:
    the class's default) and the class's own keyword ``options``.

    >>> make("sgd", 0.1, momentum=0.9)
    SGD(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)
    """
    cls = by_name(name)
    return cls(**options) if lr is None else cls(lr, **options)


def get(optimizer) -> Optimizer:
    """An optimizer from an instance or a name (``"adam"``, ``"sgd"``, ...), defaults otherwise."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    return make(optimizer)


def from_config(config: dict) -> Optimizer:
    """Rebuild an optimizer (without its state arrays) from :meth:`Optimizer.get_config`."""
    config = dict(config)
    name = config.pop("class", None)
    if name not in _CLASSES:
        raise ValueError(f"unknown optimizer class {name!r}; expected one of {sorted(_CLASSES)}")
    iterations = int(config.pop("iterations", 0))
    epoch = int(config.pop("epoch", 0))
    lr = config.pop("lr")
    if isinstance(lr, dict):
        lr = schedules.from_config(lr)
    opt = _CLASSES[name](lr, **config)
    opt.iterations = iterations
    opt._epoch = epoch
    return opt
