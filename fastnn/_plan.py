"""Planned training steps: a model's whole training pass bound once per batch size.

The per-layer path (``Sequential._forward`` / ``_backward``) validates every kernel
argument on every call, and on a tiny network that validation and the Python calls cost
several times the arithmetic. For the common case — Dense, BatchNorm and activation
layers under a fused softmax cross-entropy, without sample weights — :class:`TrainPlan`
builds, for each batch size, one :func:`fastnn.ops.program`: gather the batch, every
layer's forward (an activation after a BatchNorm fused into it), the loss and its
gradient, every layer's backward (the activation's derivative fused into the
BatchNorm backward), each op bound to the model's live parameter, gradient and state
views and to buffers allocated here once. A step is then one call, and allocates
nothing.

The arithmetic is the per-layer path's (same kernels), except that small matrix
products run in fastnn's own C loop rather than BLAS, which changes float rounding in
the last bits. Anything else (dropout, other losses, sample weights, the NumPy backend)
takes the per-layer path: :func:`plan_unsupported` says why.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .layers import BatchNorm, Dense, LeakyReLU, ReLU, Sigmoid, Tanh
from .losses import SoftmaxCrossEntropy

_ACTIVATIONS = {ReLU: "relu", LeakyReLU: "leaky_relu", Tanh: "tanh", Sigmoid: "sigmoid"}


def _activation(layer) -> tuple[str, float] | None:
    name = _ACTIVATIONS.get(type(layer))
    if name is None:
        return None
    return name, float(getattr(layer, "alpha", 0.0))


def plan_unsupported(model, weights) -> str | None:
    """Why ``model`` cannot take planned steps (None if it can)."""
    if not model.plan_steps:
        return "plan_steps is False"
    if not ops.can_plan():
        return f"the {ops.get_backend()!r} backend runs per-layer"
    if weights is not None:
        return "sample weights"
    if not isinstance(model.loss, SoftmaxCrossEntropy) or not model.fused_softmax:
        return "only a fused softmax cross-entropy is planned"
    previous = None
    for layer in model._train_layers:
        if isinstance(layer, (Dense, BatchNorm)):
            pass
        elif _activation(layer) is None:
            return f"{type(layer).__name__} layers run per-layer"
        elif not isinstance(previous, (Dense, BatchNorm)):
            # planned activations run in place on the output of a Dense (or inside a
            # BatchNorm op), whose backward does not need that output
            return "an activation that does not follow a Dense or BatchNorm layer"
        previous = layer
    return None


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

    @property
    def correct(self) -> int:
        return self._current.correct

    # -- building ------------------------------------------------------------------------

    def _build(self, n: int):
        model = self.model
        dtype = model.dtype
        layers = model._train_layers
        xb = np.empty((n, self.X.shape[1]), dtype)
        yb = np.empty(n, np.int64)
        gather = ops.plan_gather(self.X, self.targets, self._order, xb, yb)
        forward = [gather]
        # Forward: each entry of `steps` remembers what its backward needs.
        steps = []
        x = xb
        i = 0
        while i < len(layers):
            layer = layers[i]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, Dense):
                out = np.empty((n, layer.units), dtype)
                forward.append(ops.plan_matmul(
                    x, layer.p["kernel"], out,
                    bias=layer.p["bias"] if layer.has_bias else None))
                steps.append(("dense", layer, x, out))
                x = out
            elif isinstance(layer, BatchNorm):
                act = _activation(nxt) if nxt is not None else None
                name, alpha = act if act is not None else ("identity", 0.0)
                out = np.empty_like(x)
                cache = ops.BatchNormCache(True, np.empty_like(x), None,
                                           np.empty(x.shape[1], dtype),
                                           np.empty(x.shape[1], dtype), layer.p["gamma"])
                forward.append(ops.plan_batchnorm_train(
                    x, layer.p["gamma"], layer.p["beta"], layer.s["running_mean"],
                    layer.s["running_var"], out=out, cache=cache, momentum=layer.momentum,
                    eps=layer.eps, activation=name, alpha=alpha))
                steps.append(("batchnorm", layer, cache, out, name, alpha))
                x = out
                if act is not None:
                    i += 1  # the activation ran inside the BatchNorm op
            else:
                name, alpha = _activation(layer)  # after a Dense: in place on its output
                forward.append(ops.plan_activation(x, name, alpha=alpha))
                steps.append(("activation", layer, x, name, alpha))
            i += 1
        logits = x
        grad = np.empty_like(logits)
        row_loss = np.empty(n)
        loss_fn = model.loss
        loss_op = ops.plan_softmax_cross_entropy(
            logits, yb, grad, row_loss, class_weight=loss_fn._weights(dtype),
            label_smoothing=loss_fn.label_smoothing)
        backward = [loss_op]
        d = grad
        for k in range(len(steps) - 1, -1, -1):
            kind, layer = steps[k][0], steps[k][1]
            if kind == "dense":
                x_in = steps[k][2]
                backward.append(ops.plan_matmul(x_in, d, layer.g["kernel"], trans_a=True))
                if layer.has_bias:
                    backward.append(ops.plan_column_sum(d, layer.g["bias"]))
                if k > 0:
                    dx = np.empty_like(x_in)
                    backward.append(ops.plan_matmul(d, layer.p["kernel"], dx, trans_b=True))
                    d = dx
            elif kind == "batchnorm":
                _, _, cache, out, name, alpha = steps[k]
                backward.append(ops.plan_batchnorm_backward(
                    d, cache, dx=d, dgamma=layer.g["gamma"], dbeta=layer.g["beta"],
                    y=out if name != "identity" else None, activation=name, alpha=alpha))
            else:
                _, _, y, name, alpha = steps[k]
                backward.append(ops.plan_activation(y, name, alpha=alpha, dout=d))
        return ops.program(forward + backward, gather=gather, loss=loss_op)
