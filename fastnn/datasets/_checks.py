"""Argument checks shared by the datasets modules (private).

Every helper raises :class:`TypeError` for an argument of the wrong kind and
:class:`ValueError` for one of the right kind but a bad value; the message
names the argument and says what was expected and what was given.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_dtype(dtype: object, name: str = "dtype") -> np.dtype:
    """``dtype`` as ``np.dtype(float32)`` or ``np.dtype(float64)``; anything else: TypeError.

    >>> float_dtype("float64")
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


def integer(value: object, name: str, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """``value`` as a Python int (bool refused), checked against an inclusive range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}; got {value}")
    return value


def real(value: object, name: str, *, minimum: float | None = None) -> float:
    """``value`` as a finite Python float (bool refused), at least ``minimum`` if given."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value}")
    return value


def boolean(value: object, name: str) -> bool:
    """``value`` as a bool; only True and False (and NumPy's) are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__}")
    return bool(value)


def rng(seed: object, name: str = "seed") -> np.random.Generator:
    """``np.random.default_rng(seed)`` for None, a non-negative int or a Generator (as is)."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be None, a non-negative int or a numpy Generator; "
                        f"got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"{name} must be a non-negative int; got {int(seed)}")
    return np.random.default_rng(int(seed))


def file_path(path: object, name: str = "path") -> Path:
    """``path`` as a Path to an existing regular file.

    A path that does not exist raises :class:`FileNotFoundError` (naming it);
    a directory raises :class:`ValueError`.
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
