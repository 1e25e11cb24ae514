"""Label encoding: users' targets to the arrays a loss takes, and back.

A classifier's targets are int64 class indices; ``classes`` maps them back to the
labels the user gave (integers in ``[0, outputs)`` map to themselves, any other labels
must name exactly one class per output). A regressor's targets are a float
``(n, outputs)`` array. Nothing here changes a model: :class:`fastnn.Sequential` keeps
the ``classes`` it learned on its first ``fit``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["classes_for", "encode"]


def encode(y, n: int, *, classification: bool, output_dim: int, dtype: np.dtype,
           classes: np.ndarray | None = None, name: str = "y"):
    """``(targets, classes, targets_1d)`` for ``n`` rows of a model with ``output_dim``
    outputs (``classes`` None: learned from ``y``; ``targets_1d``: a regressor's ``y``
    was 1-D, so predictions are returned 1-D too)."""
    if y is None:
        raise ValueError(f"{name} is required; got None")
    y = np.asarray(y)
    if y.shape[0:1] != (n,):
        raise ValueError(f"{name} must have {n} entries (one per row of X); got shape "
                         f"{y.shape}")
    if not classification:
        return _regression(y, n, output_dim, dtype, name)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D class labels; got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{name} has non-integer float labels; pass class labels")
        y = y.astype(np.int64)
    if classes is None:
        classes = classes_for(y, output_dim, name)
    if classes.dtype.kind in "iu" and np.array_equal(classes, np.arange(classes.size)):
        if y.dtype.kind not in "iu":
            raise ValueError(f"{name} has labels of dtype {y.dtype}; this model's classes "
                             f"are 0..{classes.size - 1}")
        targets = y.astype(np.int64)
        bad = (targets < 0) | (targets >= classes.size)
        if bad.any():
            raise ValueError(f"{name} has label {targets[bad][0].item()!r} outside this "
                             f"model's classes 0..{classes.size - 1}")
        return targets, classes, True
    try:
        index = np.minimum(np.searchsorted(classes, y), classes.size - 1)
        known = classes[index] == y
    except TypeError:
        raise ValueError(f"{name} has labels of dtype {y.dtype}; this model's classes are "
                         f"{classes.tolist()}") from None
    if not np.all(known):
        raise ValueError(f"{name} has label {y[~known][0].item()!r} not among this model's "
                         f"classes {classes.tolist()}")
    return index.astype(np.int64), classes, True


def _regression(y: np.ndarray, n: int, output_dim: int, dtype: np.dtype, name: str):
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric for a regressor; got dtype {y.dtype}")
    targets = np.ascontiguousarray(y, dtype=dtype)
    width = 1 if targets.ndim == 1 else targets.shape[1]
    if targets.ndim > 2 or width != output_dim:
        shapes = f"({n},) or ({n}, 1)" if output_dim == 1 else f"({n}, {output_dim})"
        message = (f"{name} must have shape {shapes} for a regressor with {output_dim} "
                   f"output{'s' if output_dim > 1 else ''}; got {y.shape}")
        if y.ndim == 1 and output_dim > 1 and (y.dtype.kind in "biu" or np.array_equal(
                targets, np.round(targets))):
            message += (f". {name} looks like class labels: this model is a regressor "
                        "because it does not end with a Softmax layer; end it with Softmax() "
                        "for classification (or pass float targets of shape "
                        f"({n}, {output_dim}) for regression)")
        raise ValueError(message)
    if not np.isfinite(targets).all():
        raise ValueError(f"{name} contains NaN or inf")
    return targets.reshape(n, width), None, targets.ndim == 1


def classes_for(y: np.ndarray, n_out: int, name: str = "y") -> np.ndarray:
    """The classes of labels ``y`` for a model with ``n_out`` outputs.

    >>> classes_for(np.array([2, 0, 1]), 3)
    array([0, 1, 2])
    >>> classes_for(np.array(["b", "a"]), 2)
    array(['a', 'b'], dtype='<U1')
    """
    if y.dtype.kind in "iu" and y.size and y.min() >= 0 and y.max() < n_out:
        return np.arange(n_out)
    try:
        classes = np.unique(y)
    except TypeError:
        raise TypeError(f"{name} mixes label types that cannot be ordered (e.g. numbers "
                        "and strings); use one type") from None
    if classes.size > n_out:
        raise ValueError(f"{name} has {classes.size} classes but the model has only "
                         f"{n_out} outputs")
    if classes.size < n_out:
        raise ValueError(
            f"{name} has {classes.size} classes ({classes.tolist()[:10]}) for a model with "
            f"{n_out} outputs: labels other than 0..{n_out - 1} must name exactly one "
            f"class per output")
    return classes
