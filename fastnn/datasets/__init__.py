"""Data for fastnn: bundled digits, a reproducible split, toy generators and file loaders.

* :func:`load_digits`: the UCI optical handwritten digits (1797 8×8 images,
  pixels 0..16), shipped inside the package; cite :data:`DIGITS_CITATION`
  (CC BY 4.0).
* :func:`train_test_split`: a seeded, by default stratified, held-out split;
  :func:`k_fold`: seeded (stratified) k-fold cross-validation indices.
* :func:`make_spirals`, :func:`make_blobs`: synthetic classification data.
* :func:`load_npz`, :func:`load_csv`, :func:`load_idx` and :func:`load` (which
  picks one by the file's suffix): ``(X, y)`` from files, validated, with
  nothing unpickled or evaluated; the label column is chosen by index or name
  (default: one named label/target/class/y, else the last). :func:`load_labeled`
  also says where the labels came from, :func:`label_warning` whether they look
  like a continuous feature rather than classes.

Every function returns NumPy arrays: features ``X`` as float32 (or float64,
``dtype=``) and labels ``y`` as int64 when they are integers. Bad arguments
raise TypeError or ValueError naming the argument (or the file), with what
was expected and what was given.

>>> from fastnn import datasets
>>> X, y = datasets.load_digits()
>>> X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, test_size=0.2, seed=0)
>>> X_train.shape, X_test.shape
((1438, 64), (359, 64))
"""

from __future__ import annotations

from ._digits import DIGITS_CITATION, load_digits
from ._files import label_warning, load, load_csv, load_idx, load_labeled, load_npz
from ._split import k_fold, train_test_split
from ._synthetic import make_blobs, make_spirals

__all__ = [
    "DIGITS_CITATION",
    "k_fold",
    "label_warning",
    "load",
    "load_csv",
    "load_digits",
    "load_idx",
    "load_labeled",
    "load_npz",
    "make_blobs",
    "make_spirals",
    "train_test_split",
]
