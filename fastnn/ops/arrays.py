"""Array checks for the kernel door: dtype, shape, contiguity, writability, overlap.

Kernels run without bounds checks, so every array a kernel touches passes through these
first. Read-only inputs may be copied to C order; outputs and in-place state never are
(a copy would lose the write).
"""

from __future__ import annotations

import operator

import numpy as np

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_INT32 = np.dtype(np.int32)
_INT64 = np.dtype(np.int64)

# NumPy's flag bits (stable C API): C-contiguous, aligned, writeable.
_C_ALIGNED = 0x0001 | 0x0100
_C_ALIGNED_WRITABLE = _C_ALIGNED | 0x0400


def _dtype_error(name: str, actual: np.dtype, expected: np.dtype | None) -> TypeError:
    if expected is None:
        return TypeError(f"{name} must have dtype float32 or float64; got {actual}")
    return TypeError(f"{name} must have dtype {expected} (the dtype of the data); got {actual}")


def _float_input(name: str, a, ndim: int, dtype: np.dtype | None = None) -> np.ndarray:
    """A read-only floating input: copied to aligned C order if needed, never cast."""
    if type(a) is not np.ndarray:
        if a is None:
            raise TypeError(f"{name} is required; got None")
        a = np.asarray(a)
    dt = a.dtype
    # Builtin dtypes are singletons, so `is` is the fast path; `==` catches equal copies.
    if dtype is None:
        if dt is not _FLOAT32 and dt is not _FLOAT64 and dt != _FLOAT32 and dt != _FLOAT64:
            raise _dtype_error(name, dt, None)
    elif dt is not dtype and dt != dtype:
        raise _dtype_error(name, dt, dtype)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array; got shape {a.shape}")
    if a.flags.num & _C_ALIGNED != _C_ALIGNED:
        a = np.array(a, order="C", copy=True)
    return a


def _writable(name: str, a, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An output or in-place state array: right shape and dtype, C-contiguous, writable."""
    if type(a) is not np.ndarray and not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array; got {type(a).__name__}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {a.shape}")
    dt = a.dtype
    if dt is not dtype and dt != dtype:
        raise _dtype_error(name, dt, dtype)
    if a.flags.num & _C_ALIGNED_WRITABLE != _C_ALIGNED_WRITABLE:
        flags = a.flags
        if not flags.writeable:
            raise ValueError(f"{name} must be writable: it is written in place")
        if not flags.c_contiguous:
            raise ValueError(
                f"{name} must be C-contiguous: it is written in place, so it cannot be copied"
            )
        raise ValueError(f"{name} must be aligned for its dtype {dt}")
    return a


def _flat_state(name: str, a, size: int, dtype: np.dtype) -> np.ndarray:
    """Optimizer state or parameters of any shape, as a flat view (no copy)."""
    if type(a) is not np.ndarray and not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array; got {type(a).__name__}")
    if a.size != size:
        raise ValueError(f"{name} must have {size} elements (as param); got shape {a.shape}")
    _writable(name, a, a.shape, dtype)
    return a if a.ndim == 1 else a.reshape(-1)


def _owner(a: np.ndarray):
    """The ndarray that owns a's memory, or None if it is not an ndarray."""
    base = a.base
    while base is not None:
        if type(base) is not np.ndarray and not isinstance(base, np.ndarray):
            return None
        a, base = base, base.base
    return a


def _disjoint(a: np.ndarray, b: np.ndarray) -> bool:
    # Arrays with different owning ndarrays cannot overlap; otherwise ask NumPy
    # (its bounds test is exact for the contiguous arrays used here).
    if a.base is None and b.base is None:
        return a is not b  # both own their memory: the common case, decided fast
    ra, rb = _owner(a), _owner(b)
    if ra is not None and rb is not None and ra is not rb:
        return True
    return not np.may_share_memory(a, b)


def _check_no_overlap(pairs) -> None:
    for (name_a, a), (name_b, b) in pairs:
        if not _disjoint(a, b):
            raise ValueError(f"{name_a} and {name_b} must not share memory")


def _check_outputs(outputs: list, inputs: list) -> None:
    """Each (name, array) output shares memory with no other output and no input."""
    named = outputs + inputs
    if len({id(a) for _, a in named}) == len(named):
        for _, a in named:
            if a.base is not None:
                break
        else:
            return  # distinct arrays that own their memory cannot overlap: decided fast
    _check_no_overlap((a, b) for i, a in enumerate(outputs) for b in named[i + 1:])


def _step_count(step) -> int:
    if isinstance(step, bool):
        raise TypeError(f"step must be an integer >= 1; got {step!r}")
    try:
        t = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an integer >= 1; got {step!r}") from None
    if t < 1:
        raise ValueError(f"step must be >= 1 (the count including this update); got {t}")
    return t


def _require_rows(name: str, n: int, minimum: int = 1, why: str = "") -> None:
    if n < minimum:
        raise ValueError(
            f"{name} must have at least {minimum} row{'s' if minimum > 1 else ''}{why}; got {n}"
        )
