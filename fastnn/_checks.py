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

__all__ = ["boolean", "features", "file_path", "float_dtype", "integer", "real", "rng",
           "sample_weight"]

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

def features(name: str, X, n_features: int | None, dtype: np.dtype) -> np.ndarray:
    """``X`` as a finite C-contiguous 2-D array of ``dtype`` (cast once if needed).

    ``n_features`` (if not None) is the width the model expects.
    """
    arr = feature_rows(name, X, n_features)
    # The one cast of the data to the model's dtype (float64 data into a float32 model is
    # rounded here, once; nothing is promoted later).
    arr = np.ascontiguousarray(arr, dtype=dtype)
    finite(name, arr)
    return arr


def feature_rows(name: str, X, n_features: int | None) -> np.ndarray:
    """``X`` as a 2-D numeric array of ``n_features`` columns, neither cast nor copied (the
    caller casts and checks it chunk by chunk, see :func:`finite`)."""
    if X is None:
        raise ValueError(f"{name} is required; got None")
    arr = X if type(X) is np.ndarray else np.asarray(X)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric; got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features; the model expects {n_features}")
    return arr


def finite(name: str, arr: np.ndarray, first_row: int = 0) -> None:
    """Raise unless every value of ``arr`` (rows ``first_row``... of ``name``) is finite."""
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
