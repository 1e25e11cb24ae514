"""Synthetic classification data: interleaved spirals and Gaussian blobs."""

from __future__ import annotations

import math
import numbers

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .. import _checks

__all__ = ["make_blobs", "make_spirals"]


def _class_sizes(n_samples: int, n_classes: int) -> np.ndarray:
    """``n_samples`` split evenly: the first ``n_samples % n_classes`` classes get one more."""
    sizes = np.full(n_classes, n_samples // n_classes, dtype=np.int64)
    sizes[: n_samples % n_classes] += 1
    return sizes


def make_spirals(n_samples: int = 300, n_classes: int = 3, noise: float = 0.2, *,
                 seed: int | np.random.Generator | None = None,
                 dtype: DTypeLike = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Interleaved 2-D spirals, one arm per class (the CS231n toy problem).

    Class ``k`` with ``m`` points has radii ``r = linspace(0, 1, m)`` and
    angles ``t = linspace(4k, 4(k + 1), m) + noise * N(0, 1)`` (radians), and
    its points are ``(r sin t, r cos t)``. The arms wind around the origin
    into one another, so no linear classifier separates them; a small
    network with one hidden layer does.

    Parameters
    ----------
    n_samples : int, optional
        The total number of points, at least ``n_classes``. They are split as
        evenly as possible: the first ``n_samples % n_classes`` classes get
        one point more than the others.
    n_classes : int, optional
        The number of arms (classes), at least 2.
    noise : float, optional
        The standard deviation of the Gaussian noise added to each angle, in
        radians; finite, at least 0 (0: points exactly on the arms).
    seed : int, None or numpy.random.Generator, optional
        Seeds :func:`numpy.random.default_rng`; None gives fresh data each call.
    dtype : {"float32", "float64"}, optional
        The dtype of ``X``.

    Returns
    -------
    X : ndarray of shape (n_samples, 2)
        The points, inside the unit disc up to noise (the radius is at most 1).
    y : ndarray of shape (n_samples,), int64
        The class (arm) of each point, 0..n_classes-1. The rows are ordered by
        class: shuffle them (or use :func:`train_test_split`) before training
        in minibatches.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn.datasets import make_spirals
    >>> X, y = make_spirals(100, 3, seed=0)
    >>> X.shape, X.dtype, np.bincount(y).tolist()
    ((100, 2), dtype('float32'), [34, 33, 33])
    >>> bool(np.all(np.hypot(X[:, 0], X[:, 1]) <= 1.0 + 1e-6))
    True
    """
    n_samples = _checks.integer("n_samples", n_samples, minimum=1)
    n_classes = _checks.integer("n_classes", n_classes, minimum=2)
    if n_samples < n_classes:
        raise ValueError(f"n_samples must be at least n_classes ({n_classes}) so that every "
                         f"class has a point; got {n_samples}")
    noise = _checks.real("noise", noise, 0.0, math.inf, high_open=True)
    generator = _checks.rng("seed", seed)
    dtype = _checks.float_dtype("dtype", dtype)

    sizes = _class_sizes(n_samples, n_classes)
    X = np.empty((n_samples, 2), dtype=np.float64)
    y = np.repeat(np.arange(n_classes, dtype=np.int64), sizes)
    start = 0
    for k, m in enumerate(sizes.tolist()):
        radius = np.linspace(0.0, 1.0, m)
        angle = np.linspace(4.0 * k, 4.0 * (k + 1), m) + noise * generator.standard_normal(m)
        X[start:start + m, 0] = radius * np.sin(angle)
        X[start:start + m, 1] = radius * np.cos(angle)
        start += m
    return X.astype(dtype, copy=False), y


def make_blobs(n_samples: int = 300, n_features: int = 2, centers: int | ArrayLike = 3,
               cluster_std: float | ArrayLike = 1.0, *,
               seed: int | np.random.Generator | None = None,
               dtype: DTypeLike = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Isotropic Gaussian clusters ("blobs"), one class per cluster.

    Parameters
    ----------
    n_samples : int, optional
        The total number of points, at least the number of centers; split as
        evenly as possible across the clusters (the first
        ``n_samples % k`` clusters get one point more).
    n_features : int, optional
        The dimension ``d`` of the points, at least 1. Used only when
        ``centers`` is an int; an array of centers sets ``d`` itself (as in
        scikit-learn), and ``n_features`` is then ignored.
    centers : int or array_like of shape (k, d), optional
        An int ``k >= 1``: ``k`` centers drawn uniformly from ``[-10, 10]^d``
        (from the same generator, so also reproducible). An array: the
        centers themselves (finite numbers).
    cluster_std : float or array_like of shape (k,), optional
        The standard deviation of every coordinate of a cluster: one for all
        clusters, or one per cluster; finite, at least 0.
    seed : int, None or numpy.random.Generator, optional
        Seeds :func:`numpy.random.default_rng`; None gives fresh data each call.
    dtype : {"float32", "float64"}, optional
        The dtype of ``X``.

    Returns
    -------
    X : ndarray of shape (n_samples, d)
        The points: cluster ``c``'s are ``center_c + cluster_std_c * N(0, I)``.
    y : ndarray of shape (n_samples,), int64
        The cluster of each point, 0..k-1. The rows are ordered by cluster.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn.datasets import make_blobs
    >>> X, y = make_blobs(6, centers=[[0.0, 0.0], [5.0, 5.0]], cluster_std=0.0)
    >>> X.tolist(), y.tolist()
    ([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.0], [5.0, 5.0]], [0, 0, 0, 1, 1, 1])
    >>> X, y = make_blobs(200, n_features=3, centers=4, seed=0, dtype="float64")
    >>> X.shape, X.dtype, np.bincount(y).tolist()
    ((200, 3), dtype('float64'), [50, 50, 50, 50])
    """
    n_samples = _checks.integer("n_samples", n_samples, minimum=1)
    generator = _checks.rng("seed", seed)
    dtype = _checks.float_dtype("dtype", dtype)

    if isinstance(centers, numbers.Integral) and not isinstance(centers, (bool, np.bool_)):
        n_features = _checks.integer("n_features", n_features, minimum=1)
        k = _checks.integer("centers", centers, minimum=1)
        center_array = None
    else:
        if isinstance(centers, (bool, np.bool_, str, bytes)) or centers is None:
            raise TypeError(f"centers must be an int or an array of shape (k, d); "
                            f"got {type(centers).__name__}")
        center_array = np.asarray(centers)
        if center_array.dtype.kind not in "iuf":
            raise TypeError(f"centers must hold real numbers; got dtype {center_array.dtype}")
        if center_array.ndim != 2 or 0 in center_array.shape:
            raise ValueError(f"centers must be an int or an array of shape (k, d) with k, d >= 1; "
                             f"got shape {center_array.shape}")
        center_array = center_array.astype(np.float64)
        if not np.all(np.isfinite(center_array)):
            raise ValueError("centers must be finite; got NaN or infinity")
        k, n_features = center_array.shape

    std = np.asarray(cluster_std)
    if std.dtype.kind not in "iuf":
        raise TypeError(f"cluster_std must be a real number or an array of {k} of them; "
                        f"got dtype {std.dtype}")
    if std.ndim == 0:
        std = np.full(k, float(std))
    elif std.shape != (k,):
        raise ValueError(f"cluster_std must be a number or have shape ({k},), one per center; "
                         f"got shape {std.shape}")
    std = std.astype(np.float64)
    if not np.all(np.isfinite(std)) or np.any(std < 0):
        raise ValueError(f"cluster_std must be finite and at least 0; got {std.tolist()}")
    if n_samples < k:
        raise ValueError(f"n_samples must be at least the number of centers ({k}) so that every "
                         f"cluster has a point; got {n_samples}")

    if center_array is None:
        center_array = generator.uniform(-10.0, 10.0, size=(k, n_features))
    sizes = _class_sizes(n_samples, k)
    y = np.repeat(np.arange(k, dtype=np.int64), sizes)
    X = center_array[y] + std[y, None] * generator.standard_normal((n_samples, n_features))
    return X.astype(dtype, copy=False), y
