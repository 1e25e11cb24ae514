"""Planned training steps: a model's whole training pass bound once per batch size.

The per-layer path (``Sequential._forward`` / ``_backward``) validates every kernel
argument on every call, and on a tiny network that validation and the Python calls cost
several times the arithmetic. :class:`TrainPlan` builds, for each batch size, one
:func:`fastnn.ops.program`: gather the batch, every layer's planned forward, the loss
and its gradient, every layer's planned backward, each op bound to the model's live
parameter, gradient and state views and to buffers allocated once. A step is then one
call, and allocates nothing.

This engine is a loop over layers that knows none of them by class: each layer builds
its own planned form (:meth:`fastnn.layers.Layer.plan_step`: an activation fused into
the BatchNorm before it, or run in place on a Dense's output) and the loss its own
(:meth:`fastnn.losses.Loss.plan_step`). The arithmetic is the per-layer path's (same
kernels), except that small matrix products run in fastnn's own C loop rather than
BLAS, which changes float rounding in the last bits. Anything a layer or the loss
cannot plan (dropout, squared error, sample weights, the NumPy backend) takes the
per-layer path: :func:`plan_unsupported` says why.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .losses import Loss

_PROBE_ROWS = 2  # the batch size of the dry run that asks whether a model can be planned


def plan_unsupported(model, weights) -> str | None:
    """Why ``model`` cannot take planned steps (None if it can)."""
    if not model.plan_steps:
        return "plan_steps is False"
    if not ops.can_plan():
        return f"the {ops.get_backend()!r} backend runs per-layer"
    if weights is not None:
        return "sample weights"
    if not model.fused_softmax or type(model.loss).plan_step is Loss.plan_step:
        return "only a fused softmax cross-entropy is planned"
    # A dry run over every layer on a two-row batch: each layer says itself whether it
    # can be planned (binding costs microseconds; nothing runs).
    xb = np.zeros((_PROBE_ROWS, model.input_dim), model.dtype)
    built = _layer_steps(model, xb)
    return built if isinstance(built, str) else None


def _layer_steps(model, x) -> list | str:
    """Each training layer's PlannedStep on batch buffer ``x``, or why one cannot plan."""
    layers = model._train_layers
    steps = []
    writable = False  # the gathered batch is read by the first layer's backward
    i = 0
    while i < len(layers):
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        step = layers[i].plan_step(x, writable, nxt)
        if isinstance(step, str):
            return step
        steps.append(step)
        x, writable = step.output, step.writable
        i += 2 if step.fused_next else 1
    return steps


class TrainPlan:
    """Planned training passes of ``model`` over the rows of (X, targets).

    Parameters
    ----------
    model : Sequential
        Built, with :func:`plan_unsupported` None.
    X : ndarray (n, features), C-contiguous, the model's dtype
    targets : ndarray (n,), int64 class indices in range

    ``set_order(order)`` gives the epoch's row order (int64); ``step(start, size)`` runs
    forward, loss and backward on rows ``order[start:start + size]``, leaves the
    gradients in ``model._grads`` and returns the loss; ``correct`` is the number of
    those rows predicted right.
    """

    def __init__(self, model, X, targets) -> None:
        self.model = model
        self.X = X
        self.targets = targets
        self._order = np.arange(X.shape[0], dtype=np.int64)
        self._programs: dict[int, object] = {}
        self._current = None

    def set_order(self, order) -> None:
        self._order = order
        for program in self._programs.values():
            program.set_order(order)

    def step(self, start: int, size: int) -> float:
        program = self._programs.get(size)
        if program is None:
            program = self._programs[size] = self._build(size)
            program.set_order(self._order)
        self._current = program
        return program.run(start)

    def steps(self, start: int, size: int, count: int, fused, t0: int,
              loss_sum: float) -> tuple[int, float, int, float]:
        """``count`` steps of ``size`` rows from ``start`` on, each followed by the
        optimizer's fused update (``optimizer.fused_step``: ``(op, scalars)``) at steps
        ``t0 + 1``, ...: one compiled call. ``(steps taken, loss_sum + sum of loss *
        size, rows predicted right, last loss)``; fewer steps than ``count`` when a loss
        was not finite (its update not applied)."""
        program = self._programs.get(size)
        if program is None:
            program = self._programs[size] = self._build(size)
            program.set_order(self._order)
        self._current = program
        op, scalars = fused
        return program.run_steps(start, size, count, op, *scalars, float(t0), loss_sum)

    def steps_done(self) -> int:
        """The steps the last :meth:`steps` call took (also when it was interrupted)."""
        return self._current.steps_done if self._current is not None else 0

    @property
    def correct(self) -> int:
        return self._current.correct

    def _build(self, n: int):
        model = self.model
        xb = np.empty((n, self.X.shape[1]), model.dtype)
        yb = np.empty(n, np.int64)
        gather = ops.plan_gather(self.X, self.targets, self._order, xb, yb)
        steps = _layer_steps(model, xb)
        if isinstance(steps, str):
            raise ValueError(f"this model cannot take planned steps: {steps}")
        forward = [gather] + [op for step in steps for op in step.forward]
        logits = steps[-1].output
        grad = np.empty_like(logits)
        loss_op = model.loss.plan_step(logits, yb, grad, np.empty(n))
        backward = [loss_op]
        d = grad
        for k in range(len(steps) - 1, -1, -1):
            ops_k, d = steps[k].backward(d, need_dx=k > 0)
            backward += ops_k
        return ops.program(forward + backward, gather=gather, loss=loss_op)
