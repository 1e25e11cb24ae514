"""Losses: each computes the mean loss of a batch and writes its gradient w.r.t. the outputs.

``SoftmaxCrossEntropy`` takes logits (the model's last Dense layer; a final
``Softmax`` layer is fused into it) and calls the fused kernel through
``fastnn.ops``; ``MeanSquaredError`` is for regression.
"""

from __future__ import annotations

import numpy as np

from . import _checks, ops

__all__ = ["Loss", "MeanSquaredError", "SoftmaxCrossEntropy", "from_config"]


class Loss:
    """Base class. ``classification`` tells the model to map labels to class indices;
    ``fuses_softmax`` that the loss takes logits and a final Softmax layer is fused into
    it (the model skips that layer in training)."""

    classification = False
    fuses_softmax = False

    def plan_step(self, logits: np.ndarray, labels: np.ndarray, grad: np.ndarray,
                  row_loss: np.ndarray):
        """The loss and its gradient as a bound op (see :mod:`fastnn._plan`), for losses
        planned steps can run; the others raise TypeError."""
        raise TypeError(f"{type(self).__name__} has no planned form")

    def __call__(self, outputs: np.ndarray, targets: np.ndarray, grad: np.ndarray, *,
                 sample_weight: np.ndarray | None = None,
                 row_loss: np.ndarray | None = None) -> float:
        """Mean loss of the batch; writes d(loss)/d(outputs) into ``grad``."""
        raise TypeError(f"{type(self).__name__} does not implement __call__")

    def get_config(self) -> dict:
        return {"class": type(self).__name__}


class SoftmaxCrossEntropy(Loss):
    """Softmax cross-entropy from logits (PyTorch ``CrossEntropyLoss`` semantics).

    Parameters
    ----------
    label_smoothing : float in [0, 1]
        Targets become ``(1 - s) onehot + s / C``.
    class_weight : array-like of shape (C,), optional
        Per-class weights; the mean is weighted (divided by the sum of the
        weights of the batch's labels).

    With ``sample_weight`` the mean is ``sum_n s_n w[y_n] l_n / sum_n s_n w[y_n]``.
    """

    classification = True
    fuses_softmax = True

    def __init__(self, label_smoothing: float = 0.0, class_weight=None) -> None:
        _checks.real("label_smoothing", label_smoothing, 0.0, 1.0)
        self.label_smoothing = float(label_smoothing)
        if class_weight is not None:
            class_weight = np.asarray(class_weight, dtype=np.float64)
            if class_weight.ndim != 1 or not np.all(np.isfinite(class_weight)) or np.any(
                    class_weight < 0):
                raise ValueError("class_weight must be a 1-D array of finite, non-negative "
                                 f"weights; got {class_weight!r}")
        self.class_weight = class_weight
        self._weight_cast: np.ndarray | None = None

    def _weights(self, dtype) -> np.ndarray | None:
        if self.class_weight is None:
            return None
        if self._weight_cast is None or self._weight_cast.dtype != dtype:
            self._weight_cast = self.class_weight.astype(dtype)
        return self._weight_cast

    def __call__(self, outputs, targets, grad, *, sample_weight=None, row_loss=None) -> float:
        weights = self._weights(outputs.dtype)
        if weights is not None and weights.shape[0] != outputs.shape[1]:
            raise ValueError(f"class_weight has {weights.shape[0]} entries for a model with "
                             f"{outputs.shape[1]} outputs")
        if sample_weight is None:
            loss, _ = ops.softmax_cross_entropy(
                outputs, targets, label_smoothing=self.label_smoothing, class_weight=weights,
                grad=grad, row_loss=row_loss)
            return loss
        if row_loss is None:
            row_loss = np.empty(outputs.shape[0])
        ops.softmax_cross_entropy(outputs, targets, label_smoothing=self.label_smoothing,
                                  class_weight=weights, grad=grad, row_loss=row_loss)
        # The kernel normalised by sum_n w[y_n]; renormalise by sum_n s_n w[y_n].
        if weights is None:
            norm, total = float(len(targets)), float(np.sum(sample_weight))
        else:
            label_weight = weights[targets].astype(np.float64)
            norm, total = float(label_weight.sum()), float(np.dot(sample_weight, label_weight))
        if total <= 0:
            raise ValueError("sample_weight gives this batch a total weight of 0")
        grad *= (sample_weight * (norm / total)).astype(grad.dtype)[:, None]
        return float(np.dot(sample_weight, row_loss) / total)

    def plan_step(self, logits, labels, grad, row_loss):
        return ops.plan_softmax_cross_entropy(
            logits, labels, grad, row_loss, class_weight=self._weights(logits.dtype),
            label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {"class": "SoftmaxCrossEntropy", "label_smoothing": self.label_smoothing,
                "class_weight": None if self.class_weight is None else
                self.class_weight.tolist()}


class MeanSquaredError(Loss):
    """``mean((outputs - targets) ** 2)`` over rows and outputs (Keras ``mse``).

    With ``sample_weight``, rows are weighted: ``sum_n s_n mean_j(...) / sum_n s_n``.
    """

    def __call__(self, outputs, targets, grad, *, sample_weight=None, row_loss=None) -> float:
        n, d = outputs.shape
        np.subtract(outputs, targets.reshape(n, d), out=grad)
        if sample_weight is None:
            loss = float(np.vdot(grad, grad)) / (n * d)
            grad *= grad.dtype.type(2.0 / (n * d))
            return loss
        total = float(np.sum(sample_weight))
        if total <= 0:
            raise ValueError("sample_weight gives this batch a total weight of 0")
        rows = np.einsum("ij,ij->i", grad, grad) / d
        grad *= (sample_weight * (2.0 / (d * total))).astype(grad.dtype)[:, None]
        return float(np.dot(sample_weight, rows) / total)


_CLASSES = {"SoftmaxCrossEntropy": SoftmaxCrossEntropy, "MeanSquaredError": MeanSquaredError}
_ALIASES = {"cross_entropy": SoftmaxCrossEntropy, "categorical_crossentropy": SoftmaxCrossEntropy,
            "sparse_categorical_crossentropy": SoftmaxCrossEntropy, "mse": MeanSquaredError,
            "mean_squared_error": MeanSquaredError}


def get(loss) -> Loss:
    """A Loss from an instance or a name (``"cross_entropy"``, ``"mse"``)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in _ALIASES:
        return _ALIASES[loss]()
    raise ValueError(f"loss must be a fastnn.losses.Loss or one of {sorted(_ALIASES)}; "
                     f"got {loss!r}")


def from_config(config: dict) -> Loss:
    config = dict(config)
    name = config.pop("class", None)
    if name not in _CLASSES:
        raise ValueError(f"unknown loss class {name!r}; expected one of {sorted(_CLASSES)}")
    return _CLASSES[name](**config)
