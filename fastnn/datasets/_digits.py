"""The bundled UCI optical handwritten digits (8×8 images, 1797 samples)."""

from __future__ import annotations

import functools
import io
from importlib import resources

import numpy as np
from numpy.typing import DTypeLike

from .. import _checks

__all__ = ["DIGITS_CITATION", "load_digits"]

DIGITS_CITATION = (
    "Alpaydin, E. & Kaynak, C. (1998). Optical Recognition of Handwritten Digits [Dataset]. "
    "UCI Machine Learning Repository. https://doi.org/10.24432/C50P49. "
    "Source: https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits. "
    "Licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/). "
    "fastnn ships the 1797-sample test partition, converted from CSV to a compressed NumPy "
    "archive (uint8); the values are unchanged."
)
"""The attribution the licence (CC BY 4.0) requires: cite it wherever you use the digits."""

_N_SAMPLES = 1797
_N_PIXELS = 64
_RESOURCE = "data/digits.npz"


@functools.lru_cache(maxsize=1)
def _bundled() -> tuple[np.ndarray, np.ndarray]:
    """The packaged arrays as stored (uint8), read once and kept read-only."""
    resource = resources.files(__package__).joinpath(_RESOURCE)
    # read_bytes works whether the package is a directory or inside a zip.
    with np.load(io.BytesIO(resource.read_bytes()), allow_pickle=False) as archive:
        pixels, labels = archive["X"], archive["y"]
    if (pixels.shape != (_N_SAMPLES, _N_PIXELS) or labels.shape != (_N_SAMPLES,)
            or pixels.dtype != np.uint8 or labels.dtype != np.uint8):
        raise ValueError(
            f"{_RESOURCE}: expected uint8 arrays X of shape ({_N_SAMPLES}, {_N_PIXELS}) and y of "
            f"shape ({_N_SAMPLES},); got X {pixels.dtype} {pixels.shape}, "
            f"y {labels.dtype} {labels.shape} (a damaged installation?)"
        )
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def load_digits(*, dtype: DTypeLike = "float32",
                return_images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load the UCI optical handwritten digits bundled with fastnn.

    1797 grey-scale 8×8 images of the digits 0–9 (between 174 and 183 of each),
    the test partition of the UCI "Optical Recognition of Handwritten Digits"
    data set (the same samples as scikit-learn's ``load_digits``). Each pixel
    counts the "on" pixels of a 4×4 block of the original 32×32 bitmap, so
    it is an integer from 0 to 16.

    The data are licensed CC BY 4.0: cite :data:`DIGITS_CITATION` when you use
    them (the licence text is ``fastnn/datasets/data/DIGITS_LICENSE.txt``).

    Parameters
    ----------
    dtype : {"float32", "float64"} or the NumPy dtype, optional
        The floating dtype of ``X``. Anything else raises TypeError.
    return_images : bool, optional
        If True, ``X`` has shape (1797, 8, 8) (row-major images) instead of
        (1797, 64).

    Returns
    -------
    X : ndarray of shape (1797, 64) or (1797, 8, 8)
        The pixel values 0..16 exactly as stored: **not scaled** (divide by 16
        for values in [0, 1], or standardise).
    y : ndarray of shape (1797,), int64
        The digit shown, 0..9.

    Each call returns new arrays that the caller may modify.

    Examples
    --------
    >>> from fastnn.datasets import load_digits
    >>> X, y = load_digits()
    >>> X.shape, X.dtype, y.dtype
    ((1797, 64), dtype('float32'), dtype('int64'))
    >>> float(X.min()), float(X.max()), sorted(set(y.tolist())) == list(range(10))
    (0.0, 16.0, True)
    >>> load_digits(dtype="float64", return_images=True)[0].shape
    (1797, 8, 8)
    """
    dtype = _checks.float_dtype("dtype", dtype)
    return_images = _checks.boolean("return_images", return_images)
    pixels, labels = _bundled()
    X = pixels.astype(dtype)  # astype copies: the cached arrays stay untouched
    if return_images:
        X = X.reshape(_N_SAMPLES, 8, 8)
    return X, labels.astype(np.int64)
