"""A reproducible (optionally stratified) train/test split."""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike

from .. import _checks

__all__ = ["k_fold", "train_test_split"]


def _test_count(test_size: object, n: int) -> int:
    """The number of test samples ``test_size`` asks for out of ``n``."""
    if isinstance(test_size, (bool, np.bool_)) or not isinstance(test_size, numbers.Real):
        raise TypeError(f"test_size must be a float in (0, 1) or an int in [1, n - 1]; "
                        f"got {type(test_size).__name__}")
    if isinstance(test_size, numbers.Integral):
        count = int(test_size)
        if not 1 <= count <= n - 1:
            raise ValueError(f"test_size must be an int in [1, {n - 1}] for {n} samples; "
                             f"got {count}")
        return count
    fraction = float(test_size)
    if not 0.0 < fraction < 1.0:  # also refuses NaN
        raise ValueError(f"test_size must be a float in (0, 1); got {fraction}")
    count = round(fraction * n)
    if not 1 <= count <= n - 1:
        raise ValueError(
            f"test_size={fraction} of {n} samples rounds to {count} test samples; expected "
            f"between 1 and {n - 1} (pass a larger or smaller test_size, or an int)"
        )
    return count


def _stratified_counts(class_sizes: np.ndarray, n_test: int) -> np.ndarray:
    """Test samples per class: largest-remainder apportionment of ``n_test``.

    Class ``c`` of size ``n_c`` gets ``floor(n_c * n_test / n)`` test samples;
    the samples still missing from ``n_test`` go, one each, to the classes with
    the largest remainders ``n_c * n_test mod n`` (ties: the smaller class label
    first). All in exact integer arithmetic.
    """
    n = int(class_sizes.sum())
    quota = class_sizes.astype(np.int64) * n_test
    counts = quota // n
    missing = n_test - int(counts.sum())
    order = np.argsort(-(quota % n), kind="stable")
    counts[order[:missing]] += 1
    return counts


def train_test_split(X: ArrayLike, y: ArrayLike, *, test_size: float | int = 0.2,
                     seed: int | np.random.Generator | None = 0, stratify: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``X`` and ``y`` into a training and a held-out test part, reproducibly.

    Parameters
    ----------
    X : array_like of shape (n, ...)
        The samples (rows); any dtype, at least 1-D.
    y : array_like of shape (n,)
        The labels, 1-D, one per row of ``X``; any values that :func:`numpy.unique`
        can sort (ints, strings, ...). ``n`` must be at least 2.
    test_size : float or int, optional
        A float in (0, 1): the test part has ``round(test_size * n)`` samples
        (Python's :func:`round`, halves to even), which must be between 1 and
        ``n - 1``. An int in [1, n - 1]: exactly that many test samples.
    seed : int, None or numpy.random.Generator, optional
        Seeds :func:`numpy.random.default_rng`. The same seed and data give
        the same split on every run and platform; None gives a fresh one.
    stratify : bool, optional
        If True (the default), every class is split in the same proportion.
        The total test count is exactly the one ``test_size`` gives; class
        ``c`` of ``n_c`` samples gets ``floor(n_c * n_test / n)`` of them, and
        the few still missing go one each to the classes with the largest
        fractional remainders (ties: the smaller label first). So each class's
        test count is within 1 of ``n_c * n_test / n``; which of its samples
        are held out is drawn at random. (A class with a single sample can
        fall wholly in either part.) If False, the test part is a uniformly
        random subset.

    Returns
    -------
    X_train, X_test, y_train, y_test : ndarray
        New arrays (rows copied out of ``X`` and ``y``, dtypes kept). The
        order of the rows within each part is shuffled (not grouped by
        class).

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn.datasets import train_test_split
    >>> X = np.arange(20).reshape(10, 2)
    >>> y = np.array([0] * 5 + [1] * 5)
    >>> X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.4, seed=1)
    >>> X_train.shape, X_test.shape
    ((6, 2), (4, 2))
    >>> np.bincount(y_test).tolist()
    [2, 2]
    >>> sorted(X_train[:, 0].tolist() + X_test[:, 0].tolist()) == X[:, 0].tolist()
    True
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim < 1:
        raise ValueError("X must be an array of samples (at least 1-D); got a scalar")
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D array of labels; got shape {y.shape}")
    n = X.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"X and y must have the same length; got {n} rows in X and "
                         f"{y.shape[0]} labels in y")
    if n < 2:
        raise ValueError(f"X and y must have at least 2 samples to split; got {n}")
    n_test = _test_count(test_size, n)
    generator = _checks.rng("seed", seed)
    stratify = _checks.boolean("stratify", stratify)

    if stratify:
        _, classes = np.unique(y, return_inverse=True)
        classes = classes.reshape(-1)  # NumPy 2.0.x returned inverse in y's shape
        sizes = np.bincount(classes)
        test_counts = _stratified_counts(sizes, n_test)
        by_class = np.argsort(classes, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)])
        test_parts, train_parts = [], []
        for c, count in enumerate(test_counts):
            members = generator.permutation(by_class[starts[c]:starts[c + 1]])
            test_parts.append(members[:count])
            train_parts.append(members[count:])
        test_idx = generator.permutation(np.concatenate(test_parts))
        train_idx = generator.permutation(np.concatenate(train_parts))
    else:
        order = generator.permutation(n)
        test_idx, train_idx = order[:n_test], order[n_test:]
    return X[train_idx], X[test_idx], y[train_idx], y[test_idx]


def k_fold(y: ArrayLike, n_splits: int = 5, *, seed: int | np.random.Generator | None = 0,
           stratify: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Reproducible k-fold cross-validation indices: every row is validated on exactly once.

    Parameters
    ----------
    y : array_like of shape (n,)
        The labels (for stratification; only their count matters with ``stratify=False``).
    n_splits : int
        The number of folds, at least 2 and at most ``n``.
    seed : int, None or numpy.random.Generator
        Seeds the shuffle (:func:`numpy.random.default_rng`); the same seed and labels give
        the same folds everywhere.
    stratify : bool
        If True (the default), each class's rows are shuffled and dealt round the folds in
        turn, so every fold holds each class to within one row, and the folds' sizes differ by
        at most one. If False, the shuffled rows are dealt round the folds.

    Returns
    -------
    list of (train_index, val_index)
        ``n_splits`` pairs of sorted int64 index arrays; the validation parts partition
        ``range(n)``.

    >>> import numpy as np
    >>> y = np.array([0] * 6 + [1] * 4)
    >>> folds = k_fold(y, 2, seed=0)
    >>> [np.bincount(y[val]).tolist() for _, val in folds]
    [[3, 2], [3, 2]]
    >>> sorted(np.concatenate([val for _, val in folds]).tolist()) == list(range(10))
    True
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D array of labels; got shape {y.shape}")
    n = y.shape[0]
    n_splits = _checks.integer("n_splits", n_splits, minimum=2)
    if n_splits > n:
        raise ValueError(f"n_splits must be at most the number of samples ({n}); got "
                         f"{n_splits}")
    generator = _checks.rng("seed", seed)
    if _checks.boolean("stratify", stratify):
        _, classes = np.unique(y, return_inverse=True)
        classes = classes.reshape(-1)
        by_class = np.argsort(classes, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(classes))])
        order = np.concatenate([generator.permutation(by_class[a:b])
                                for a, b in zip(starts[:-1], starts[1:], strict=True)])
    else:
        order = generator.permutation(n)
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[order] = np.arange(n) % n_splits
    return [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k))
            for k in range(n_splits)]
