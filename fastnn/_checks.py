"""Argument and data checks, one home for the whole library.

Every module checks its arguments through these helpers, so every message reads the
same way. In the manner of scikit-learn's ``check_scalar``: an argument of the wrong
kind raises :class:`TypeError`, one of the right kind with a bad value raises
:class:`ValueError`, and the message names the argument, says what was expected and
shows what was given::

    epochs must be an integer >= 0; got -1
    momentum must be in [0.0, 1.0]; got 1.5
    X has 3 features; the model expects 4

This module imports nothing of fastnn: everything may use it.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from pathlib import Path

import numpy as np

__all__ = ["boolean", "chunk_rows", "feature_chunks", "features", "file_path",
           "finite_chunks", "float_dtype", "integer", "real", "rng", "rows", "sample_weight"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _bounds_text(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def integer(name: str, value: object, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """``value`` as a Python int (bool refused) in ``[minimum, maximum]`` (inclusive).

    >>> integer("epochs", 3, minimum=0)
    3
    >>> integer("epochs", -1, minimum=0)
    Traceback (most recent call last):
    ...
    ValueError: epochs must be an integer >= 0; got -1
    """
    expected = "an integer" + _bounds_text(minimum, maximum)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}; got {value!r} "
                        f"({type(value).__name__})")
    value = operator.index(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {expected}; got {value}")
    return value


def real(name: str, value: object, low: float = -math.inf, high: float = math.inf, *,
         low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite Python float in the interval from ``low`` to ``high``.

    The ends are closed unless ``low_open`` / ``high_open``; NaN is always refused.

    >>> real("momentum", 0.5, 0.0, 1.0)
    0.5
    >>> real("eps", 0.0, 0.0, math.inf, low_open=True, high_open=True)
    Traceback (most recent call last):
    ...
    ValueError: eps must be in (0.0, inf); got 0.0
    """
    if type(value) is float and low < value < high:
        return value  # strictly inside: the common case, decided fast (NaN fails it)
    try:
        if isinstance(value, (str, bytes, bool, np.bool_)):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number; got {value!r}") from None
    ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok or v != v:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}; got {value!r}")
    return v


def boolean(name: str, value: object) -> bool:
    """``value`` as a bool; only True and False (and NumPy's) are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def float_dtype(name: str, dtype: object) -> np.dtype:
    """``dtype`` as ``np.dtype(float32)`` or ``np.dtype(float64)``; anything else: TypeError.

    >>> float_dtype("dtype", "float64")
    dtype('float64')
    """
    resolved = None
    if dtype is not None and not isinstance(dtype, bool):
        try:
            resolved = np.dtype(dtype)
        except (TypeError, ValueError):
            resolved = None
    if resolved is None or resolved not in _FLOAT_DTYPES or not resolved.isnative:
        got = resolved.str if resolved is not None else repr(dtype)
        raise TypeError(f"{name} must be float32 or float64; got {got}")
    return resolved


def rng(name: str, seed: object) -> np.random.Generator:
    """``np.random.default_rng(seed)`` for None, a non-negative int or a Generator (as is)."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be None, an integer >= 0 or a numpy Generator; got "
                        f"{seed!r} ({type(seed).__name__})")
    return np.random.default_rng(integer(name, seed, minimum=0))


def file_path(name: str, path: object) -> Path:
    """``path`` as a Path to an existing regular file.

    A path that does not exist raises :class:`FileNotFoundError` (naming it); a
    directory raises :class:`ValueError`.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike; got {type(path).__name__}")
    resolved = Path(path)
    if not resolved.exists():
        raise FileNotFoundError(f"{os.fspath(path)}: no such file")
    if not resolved.is_file():
        raise ValueError(f"{os.fspath(path)}: is not a regular file (a directory?); "
                         f"expected a data file")
    return resolved


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------

#: Bytes of input a chunked check or cast reads at a time: working memory stays a few
#: MB whatever the number of rows.
CHUNK_BYTES = 1 << 22


def chunk_rows(X, itemsize: int | None = None) -> int:
    """Rows of the 2-D ``X`` per chunk: about :data:`CHUNK_BYTES` of input (or of
    ``itemsize``-byte items, e.g. those of the dtype a chunk is cast to), at least 1."""
    width = max(int(X.shape[1]), 1)
    if itemsize is None:
        itemsize = np.dtype(X.dtype).itemsize
    return max(1, CHUNK_BYTES // (width * max(itemsize, np.dtype(X.dtype).itemsize)))


def _sliceable(X) -> bool:
    """An array-like read by row slices (h5py, zarr, dask, ...): shape, dtype and
    ``X[a:b]``, not converted as a whole."""
    return (not isinstance(X, np.ndarray) and hasattr(X, "__getitem__")
            and isinstance(getattr(X, "shape", None), tuple) and hasattr(X, "dtype"))


def _rows_of(X, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``X`` (an ndarray or a sliceable array-like) as an ndarray."""
    return np.asarray(X[start:stop])


def finite_chunks(name: str, X, *, rows: int | None = None, dtype=None) -> None:
    """Raise ValueError naming the first NaN or inf of the 2-D ``X`` (row and column).

    ``X`` (an ndarray, memmap or sliceable array-like) is read ``rows`` rows at a time
    (default :func:`chunk_rows`): no mask over all of ``X`` is made, so the check needs
    a few MB whatever the size of ``X``. A chunk's sum decides the common case in one
    pass; only a chunk whose sum is not finite is searched. With ``dtype`` each chunk is
    checked as cast to it (float64 values beyond float32's range are inf in float32).

    >>> finite_chunks("X", np.array([[1.0, 2.0], [3.0, np.nan]]))
    Traceback (most recent call last):
    ...
    ValueError: X contains NaN or inf (first at row 1, column 1)
    """
    if np.dtype(X.dtype).kind != "f":
        return  # integers and booleans are finite (and in range of any float dtype)
    step = chunk_rows(X) if rows is None else rows
    for start in range(0, X.shape[0], step):
        chunk = _rows_of(X, start, start + step)
        if dtype is not None:
            with np.errstate(over="ignore"):  # an overflow to inf is reported below
                chunk = chunk.astype(dtype, copy=False)
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.add.reduce(chunk, axis=None)
        if not math.isfinite(total):  # a non-finite value, or an overflowing sum
            bad = np.argwhere(~np.isfinite(chunk))
            if bad.size:
                raise ValueError(f"{name} contains NaN or inf (first at row "
                                 f"{start + bad[0][0]}, column {bad[0][1]})")


def rows(name: str, X, n_features: int | None, dtype=None, *, finite: bool = True):
    """``X`` checked as features (2-D, numeric, non-empty, ``n_features`` wide, finite
    once cast to ``dtype`` if given; ``finite=False`` skips that check) but not
    converted: an ndarray (a memmap stays one, any dtype or layout) or a
    sliceable array-like (see :func:`finite_chunks`) is returned as given; anything else
    (lists, DataFrames) goes through ``np.asarray``. The caller casts, whole or by
    blocks."""
    if X is None:
        raise ValueError(f"{name} is required; got None")
    arr = X if isinstance(X, np.ndarray) or _sliceable(X) else np.asarray(X)
    kind = np.dtype(arr.dtype).kind
    if kind not in "biuf":
        raise TypeError(f"{name} must be numeric; got dtype {arr.dtype}")
    shape = tuple(arr.shape)
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (samples, features); got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty: got shape {shape}")
    if n_features is not None and shape[1] != n_features:
        raise ValueError(f"{name} has {shape[1]} features; the model expects {n_features}")
    if finite:
        finite_chunks(name, arr, dtype=dtype)
    return arr


def features(name: str, X, n_features: int | None, dtype: np.dtype) -> np.ndarray:
    """``X`` as a finite C-contiguous 2-D array of ``dtype`` (cast once if needed).

    ``n_features`` (if not None) is the width the model expects. Data already of
    ``dtype`` and C-contiguous (a memmap too) is returned without a copy; the finite
    check reads it chunk by chunk (:func:`finite_chunks`).
    """
    arr = rows(name, X, n_features, finite=False)
    # The one cast of the data to the model's dtype (float64 data into a float32 model is
    # rounded here, once; nothing is promoted later), checked after the cast.
    with np.errstate(over="ignore"):  # an overflow to inf is reported below
        arr = np.ascontiguousarray(arr, dtype=dtype)
    finite_chunks(name, arr)
    return arr


def feature_chunks(name: str, X, n_features: int | None, dtype: np.dtype,
                   rows_per_chunk: int | None = None):
    """``(start, chunk)`` over the rows of ``X``: each chunk a finite C-contiguous array
    of ``dtype``, checked and cast on its own, so converting a float32 ``X`` for a
    float64 computation (or a memmap for any) never holds more than one chunk.

    Shape, dtype kind and width are checked before the first chunk; a NaN or inf
    raises ValueError when its chunk is reached (naming its row and column).

    >>> [(s, c.dtype.name, c.shape) for s, c in feature_chunks(
    ...     "X", np.ones((5, 2), np.float32), 2, np.float64, rows_per_chunk=2)]
    [(0, 'float64', (2, 2)), (2, 'float64', (2, 2)), (4, 'float64', (1, 2))]
    """
    if X is None:
        raise ValueError(f"{name} is required; got None")
    arr = X if isinstance(X, np.ndarray) or _sliceable(X) else np.asarray(X)
    shape = tuple(arr.shape)
    if np.dtype(arr.dtype).kind not in "biuf":
        raise TypeError(f"{name} must be numeric; got dtype {arr.dtype}")
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"{name} must be 2-D (samples, features) and not empty; got shape "
                         f"{shape}")
    if n_features is not None and shape[1] != n_features:
        raise ValueError(f"{name} has {shape[1]} features; the model expects {n_features}")
    dtype = np.dtype(dtype)
    step = chunk_rows(arr, dtype.itemsize) if rows_per_chunk is None else rows_per_chunk
    return _feature_chunks(name, arr, dtype, step)


def _feature_chunks(name, arr, dtype, step):
    for start in range(0, arr.shape[0], step):
        with np.errstate(over="ignore"):  # an overflow to inf is reported below
            chunk = np.ascontiguousarray(_rows_of(arr, start, start + step), dtype=dtype)
        try:
            finite_chunks(name, chunk, rows=step)
        except ValueError:
            bad = np.argwhere(~np.isfinite(chunk))[0]
            raise ValueError(f"{name} contains NaN or inf (first at row {start + bad[0]}, "
                             f"column {bad[1]})") from None
        yield start, chunk



def finite(name: str, arr: np.ndarray, first_row: int = 0) -> None:
    """Raise unless every value of the in-memory chunk ``arr`` (rows ``first_row``... of
    ``name``) is finite; the message names the row and column of the first that is not."""
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name} contains NaN or inf (first at row {first_row + bad[0]}, "
                         f"column {bad[1]})")

def sample_weight(name: str, w, n: int) -> np.ndarray | None:
    """Per-sample weights: None, or a finite non-negative float64 (n,) array, not all 0."""
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},); got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    if not np.any(w > 0):
        raise ValueError(f"{name} is zero everywhere")
    return np.ascontiguousarray(w)
