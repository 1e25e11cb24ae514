"""fastnn.datasets: the bundled digits, the held-out split, the generators and the file loaders."""

from __future__ import annotations

import doctest
import gzip
import importlib
import io
import re
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from fastnn import datasets
from fastnn.datasets import (
    DIGITS_CITATION,
    load,
    load_csv,
    load_digits,
    load_idx,
    load_npz,
    make_blobs,
    make_spirals,
    train_test_split,
)

SHARED_DIGITS = Path("/work/shared/data/digits.csv.gz")
DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # samples of each digit 0..9
needs_shared_csv = pytest.mark.skipif(not SHARED_DIGITS.is_file(),
                                      reason=f"{SHARED_DIGITS} is not on this machine")


def _package_file(name: str):
    return resources.files("fastnn.datasets").joinpath("data", name)


def _shared_digits() -> np.ndarray:
    return np.loadtxt(SHARED_DIGITS, delimiter=",", dtype=np.int64)


def _named(path) -> str:
    """A `match=` pattern for a message that names ``path``."""
    return re.escape(str(path))


def test_public_names():
    assert sorted(datasets.__all__) == [
        "DIGITS_CITATION", "k_fold", "label_warning", "load", "load_csv", "load_digits", "load_idx",
        "load_labeled", "load_npz", "make_blobs", "make_spirals", "train_test_split",
    ]
    for name in datasets.__all__:
        assert getattr(datasets, name) is not None


@pytest.mark.parametrize("module", ["_digits", "_split", "_synthetic", "_files"])
def test_docstring_examples(module):
    mod = importlib.import_module(f"fastnn.datasets.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_package_docstring_example():
    result = doctest.testmod(datasets, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------
# Bundled digits
# --------------------------------------------------------------------------


def test_load_digits_shapes_and_dtypes():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    X64, y64 = load_digits(dtype="float64")
    assert X64.dtype == np.float64 and np.array_equal(X64, X)
    assert np.array_equal(y64, y)
    images, y_images = load_digits(dtype=np.float64, return_images=True)
    assert images.shape == (1797, 8, 8) and images.dtype == np.float64
    assert np.array_equal(images.reshape(1797, 64), X) and np.array_equal(y_images, y)


def test_load_digits_values():
    X, y = load_digits()
    assert X.min() == 0 and X.max() == 16  # as stored, not scaled
    assert np.array_equal(X, np.round(X))
    assert np.bincount(y, minlength=10).tolist() == DIGITS_COUNTS
    assert y.min() == 0 and y.max() == 9


@needs_shared_csv
def test_bundled_npz_equals_shared_csv():
    table = _shared_digits()
    with np.load(io.BytesIO(_package_file("digits.npz").read_bytes()),
                 allow_pickle=False) as stored:
        assert sorted(stored.files) == ["X", "y"]
        assert stored["X"].dtype == np.uint8 and stored["y"].dtype == np.uint8
        assert np.array_equal(stored["X"], table[:, :64])
        assert np.array_equal(stored["y"], table[:, 64])
    X, y = load_digits()
    assert np.array_equal(X, table[:, :64]) and np.array_equal(y, table[:, 64])
    assert np.bincount(y).tolist() == np.bincount(table[:, 64]).tolist()


def test_load_digits_returns_fresh_arrays():
    X, y = load_digits()
    X[:] = -1
    y[:] = -1
    X2, y2 = load_digits()
    assert X2.min() == 0 and y2.min() == 0
    assert not np.shares_memory(X, X2) and not np.shares_memory(y, y2)
    assert X2.flags.writeable and y2.flags.writeable


@pytest.mark.parametrize("dtype", ["int32", np.int64, "float16", None, "no such", ">f8", True])
def test_load_digits_bad_dtype(dtype):
    with pytest.raises(TypeError, match="dtype must be float32 or float64; got"):
        load_digits(dtype=dtype)


def test_load_digits_bad_return_images():
    with pytest.raises(TypeError, match="return_images must be True or False; got 'yes'"):
        load_digits(return_images="yes")


def test_bundled_npz_is_small():
    assert len(_package_file("digits.npz").read_bytes()) < 100 * 1024


def test_citation_and_licence_file():
    assert "Alpaydin" in DIGITS_CITATION and "Kaynak" in DIGITS_CITATION
    assert "CC BY 4.0" in DIGITS_CITATION and "10.24432/C50P49" in DIGITS_CITATION
    licence = _package_file("DIGITS_LICENSE.txt")
    assert licence.is_file()
    text = licence.read_text(encoding="utf-8")
    for needed in ("Alpaydin", "Kaynak", "1998", "CC BY 4.0",
                   "https://creativecommons.org/licenses/by/4.0/",
                   "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
                   "10.24432/C50P49"):
        assert needed in text


# --------------------------------------------------------------------------
# train_test_split
# --------------------------------------------------------------------------


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_split_digits_sizes_and_multiset():
    X, y = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(X, y)
    assert X_test.shape == (359, 64) and X_train.shape == (1438, 64)  # round(0.2 * 1797)
    assert y_test.shape == (359,) and y_train.shape == (1438,)
    assert X_train.dtype == X.dtype and y_train.dtype == y.dtype
    # The union of the parts is the original multiset of (row, label) pairs.
    original = np.column_stack([X, y])
    parts = np.vstack([np.column_stack([X_train, y_train]), np.column_stack([X_test, y_test])])
    assert np.array_equal(_sorted_rows(parts), _sorted_rows(original))
    # Shuffled within each part, not grouped by class.
    assert np.any(np.diff(y_test) < 0) and np.any(np.diff(y_train) < 0)


def test_split_is_disjoint_complete_and_keeps_pairs():
    rng = np.random.default_rng(3)
    n = 103
    ids = np.arange(n)
    X = np.column_stack([ids, rng.standard_normal(n)])
    y = rng.integers(0, 4, n)
    for stratify in (True, False):
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, seed=5,
                                                            stratify=stratify)
        train_ids, test_ids = X_train[:, 0].astype(int), X_test[:, 0].astype(int)
        assert len(test_ids) == round(0.3 * n)
        assert not set(train_ids) & set(test_ids)
        assert sorted(np.concatenate([train_ids, test_ids]).tolist()) == ids.tolist()
        assert np.array_equal(y_train, y[train_ids]) and np.array_equal(y_test, y[test_ids])


@pytest.mark.parametrize("test_size", [0.2, 0.5, 0.37, 7, 300])
def test_split_stratified_proportions(test_size):
    X, y = load_digits()
    n = len(y)
    n_test = test_size if isinstance(test_size, int) else round(test_size * n)
    _, _, y_train, y_test = train_test_split(X, y, test_size=test_size, seed=1)
    assert len(y_test) == n_test and len(y_train) == n - n_test
    sizes = np.bincount(y)
    test_counts = np.bincount(y_test, minlength=10)
    assert np.all(np.abs(test_counts - sizes * n_test / n) < 1)
    assert np.array_equal(test_counts + np.bincount(y_train, minlength=10), sizes)


def test_split_stratified_with_string_labels_and_unequal_classes():
    y = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    X = np.arange(100)
    _, X_test, _, y_test = train_test_split(X, y, test_size=0.25, seed=0)
    counts = {c: int(np.sum(y_test == c)) for c in "abc"}
    # Quotas 12.5, 7.5 and 5: the one sample left over goes to the tied remainders' first class.
    assert counts == {"a": 13, "b": 7, "c": 5}
    assert np.array_equal(y[X_test], y_test)  # 1-D X works too


def test_split_deterministic_for_a_seed_and_differs_across_seeds():
    X, y = load_digits()
    first = train_test_split(X, y, seed=42)
    again = train_test_split(X, y, seed=42)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a, b)
    other = train_test_split(X, y, seed=43)
    assert not np.array_equal(first[1], other[1])
    unstratified = train_test_split(X, y, seed=42, stratify=False)
    assert np.array_equal(unstratified[1], train_test_split(X, y, seed=42, stratify=False)[1])


@pytest.mark.parametrize("n_splits", [2, 3, 5, 10])
def test_k_fold_validates_every_row_once_with_classes_spread_evenly(n_splits):
    y = np.repeat(np.arange(4), [7, 13, 30, 1])  # unequal classes, one of a single row
    folds = datasets.k_fold(y, n_splits, seed=3)
    assert len(folds) == n_splits
    val = np.concatenate([v for _, v in folds])
    assert np.array_equal(np.sort(val), np.arange(y.size))  # a partition of the rows
    sizes = [v.size for _, v in folds]
    assert max(sizes) - min(sizes) <= 1
    for train, v in folds:
        assert np.array_equal(np.sort(np.concatenate([train, v])), np.arange(y.size))
        assert np.all(np.diff(train) > 0) and np.all(np.diff(v) > 0)  # sorted, disjoint
        assert train.dtype == v.dtype == np.int64
    for c, n_c in enumerate(np.bincount(y)):
        per_fold = [int(np.sum(y[v] == c)) for _, v in folds]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n_c


def test_k_fold_is_seeded_and_shuffles():
    y = np.arange(200) % 3
    first = datasets.k_fold(y, 4, seed=1)
    same = datasets.k_fold(y, 4, seed=1)
    assert all(np.array_equal(a, b) for f, g in zip(first, same, strict=True)
               for a, b in zip(f, g, strict=True))
    other = datasets.k_fold(y, 4, seed=2)
    assert not all(np.array_equal(f[1], g[1]) for f, g in zip(first, other, strict=True))
    # shuffled, not contiguous blocks: the first fold's rows are spread over the data
    assert first[0][1].max() - first[0][1].min() > 150


def test_k_fold_with_string_labels_and_without_stratification():
    y = np.array(["cat"] * 9 + ["dog"] * 3)
    for _, v in datasets.k_fold(y, 3, seed=0):
        assert sorted(y[v].tolist()) == ["cat"] * 3 + ["dog"]
    plain = datasets.k_fold(np.zeros(10), 3, seed=0, stratify=False)
    assert sorted(v.size for _, v in plain) == [3, 3, 4]


@pytest.mark.parametrize("args, error, match", [
    ((np.arange(10), 1), ValueError, r"n_splits must be an integer >= 2; got 1"),
    ((np.arange(10), 2.5), TypeError, r"n_splits must be an integer"),
    ((np.arange(5), 6), ValueError, r"n_splits must be at most the number of samples \(5\)"),
    ((np.zeros((4, 2)), 2), ValueError,
     r"y must be a 1-D array of labels; got shape \(4, 2\)"),
])
def test_k_fold_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        datasets.k_fold(*args)


def test_split_float_rounding_is_documented_round():
    X, y = np.arange(10), np.array([0, 1] * 5)
    assert len(train_test_split(X, y, test_size=0.25, stratify=False)[1]) == round(2.5) == 2
    assert len(train_test_split(X, y, test_size=0.35, stratify=False)[1]) == 4  # round(3.5)


@pytest.mark.parametrize("test_size, error, message", [
    (0.0, ValueError, r"test_size must be a float in \(0, 1\); got 0.0"),
    (1.0, ValueError, r"test_size must be a float in \(0, 1\); got 1.0"),
    (-0.1, ValueError, "test_size must be a float"),
    (float("nan"), ValueError, "test_size must be a float"),
    (0, ValueError, r"test_size must be an int in \[1, 9\] for 10 samples; got 0"),
    (10, ValueError, r"test_size must be an int in \[1, 9\] for 10 samples; got 10"),
    (0.01, ValueError, "test_size=0.01 of 10 samples rounds to 0 test samples"),
    (0.99, ValueError, "rounds to 10 test samples"),
    (True, TypeError, "test_size must be a float .* got bool"),
    ("0.2", TypeError, "test_size must be a float .* got str"),
])
def test_split_bad_test_size(test_size, error, message):
    with pytest.raises(error, match=message):
        train_test_split(np.zeros((10, 2)), np.arange(10) % 2, test_size=test_size)


@pytest.mark.parametrize("X, y, error, message", [
    (np.zeros((5, 2)), np.zeros(4), ValueError,
     "X and y must have the same length; got 5 rows in X and 4 labels in y"),
    (np.zeros((1, 2)), np.zeros(1), ValueError, "at least 2 samples to split; got 1"),
    (np.zeros((4, 2)), np.zeros((4, 1)), ValueError,
     r"y must be a 1-D array .* got shape \(4, 1\)"),
    (np.float64(3.0), np.zeros(1), ValueError, "X must be an array of samples"),
])
def test_split_bad_arrays(X, y, error, message):
    with pytest.raises(error, match=message):
        train_test_split(X, y)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"seed": "a"}, TypeError,
     "seed must be None, an integer >= 0 or a numpy Generator; got 'a' \\(str\\)"),
    ({"seed": -1}, ValueError, "seed must be an integer >= 0; got -1"),
    ({"seed": 1.5}, TypeError, r"seed must be .* got 1.5 \(float\)"),
    ({"stratify": "yes"}, TypeError, "stratify must be True or False; got 'yes'"),
])
def test_split_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        train_test_split(np.zeros((10, 2)), np.arange(10) % 2, **kwargs)


# --------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------


def _linear_accuracy(X, y) -> float:
    """Training accuracy of a least-squares linear classifier (one-hot targets, with bias)."""
    A = np.column_stack([X.astype(np.float64), np.ones(len(X))])
    W = np.linalg.lstsq(A, np.eye(y.max() + 1)[y], rcond=None)[0]
    return float(np.mean(np.argmax(A @ W, axis=1) == y))


def test_spirals_shapes_and_balance():
    X, y = make_spirals(301, 3, seed=0)
    assert X.shape == (301, 2) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [101, 100, 100]
    X, y = make_spirals(40, 4, noise=0.0, seed=0, dtype="float64")
    assert X.dtype == np.float64 and np.bincount(y).tolist() == [10] * 4
    assert np.all(np.hypot(X[:, 0], X[:, 1]) <= 1 + 1e-12)


def test_spirals_follow_the_definition_without_noise():
    X, y = make_spirals(30, 2, noise=0.0, seed=0, dtype="float64")
    for k in range(2):
        r = np.linspace(0, 1, 15)
        t = np.linspace(4 * k, 4 * (k + 1), 15)
        assert np.allclose(X[y == k], np.column_stack([r * np.sin(t), r * np.cos(t)]))


def test_spirals_deterministic_with_seed():
    a, b, c = (make_spirals(seed=s) for s in (7, 7, 8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(make_spirals()[0], make_spirals()[0])  # seed=None: fresh
    gen = np.random.default_rng(7)
    assert np.array_equal(make_spirals(seed=gen)[0], a[0])


def test_spirals_are_not_linearly_separable():
    X, y = make_spirals(300, 3, seed=0)
    # Every arm winds around the origin: class means lie close to it (radius up to 1) ...
    for k in range(3):
        assert np.linalg.norm(X[y == k].mean(axis=0)) < 0.4
    # ... and a linear classifier does little better than chance (1/3), unlike on blobs.
    assert _linear_accuracy(X, y) < 0.65
    Xb, yb = make_blobs(300, centers=[[-5, 0], [5, 0], [0, 8]], seed=0)
    assert _linear_accuracy(Xb, yb) > 0.95


def test_blobs_shapes_balance_and_centers():
    X, y = make_blobs(301, n_features=4, centers=3, seed=0)
    assert X.shape == (301, 4) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [101, 100, 100]
    # cluster_std=0: every point is its center, drawn in [-10, 10]^d.
    X0, y0 = make_blobs(50, n_features=3, centers=5, cluster_std=0.0, seed=1, dtype="float64")
    centers = np.array([X0[y0 == c][0] for c in range(5)])
    assert np.all(np.abs(centers) <= 10) and len(np.unique(centers, axis=0)) == 5
    assert all(np.all(X0[y0 == c] == centers[c]) for c in range(5))


def test_blobs_given_centers_and_stds():
    centers = np.array([[0.0, 0.0, 0.0], [20.0, 0.0, -5.0]])
    X, y = make_blobs(4000, centers=centers, cluster_std=[0.5, 2.0], seed=0, dtype="float64")
    assert X.shape == (4000, 3)  # the centers set the dimension; n_features is ignored
    for c, std in enumerate([0.5, 2.0]):
        assert np.allclose(X[y == c].mean(axis=0), centers[c], atol=0.15)
        assert np.allclose(X[y == c].std(axis=0), std, rtol=0.1)


def test_blobs_deterministic_with_seed():
    a, b, c = (make_blobs(seed=s) for s in (3, 3, 4))
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("fn, kwargs, error, message", [
    (make_spirals, {"n_samples": 0}, ValueError, "n_samples must be an integer >= 1; got 0"),
    (make_spirals, {"n_samples": 10.0}, TypeError,
     r"n_samples must be an integer >= 1; got 10.0 \(float\)"),
    (make_spirals, {"n_samples": True}, TypeError,
     r"n_samples must be an integer >= 1; got True \(bool\)"),
    (make_spirals, {"n_classes": 1}, ValueError, "n_classes must be an integer >= 2; got 1"),
    (make_spirals, {"n_samples": 2, "n_classes": 3}, ValueError,
     r"n_samples must be at least n_classes \(3\) .* got 2"),
    (make_spirals, {"noise": -0.1}, ValueError, r"noise must be in \[0.0, inf\); got -0.1"),
    (make_spirals, {"noise": float("inf")}, ValueError, r"noise must be in \[0.0, inf\); got inf"),
    (make_spirals, {"noise": "0.2"}, TypeError, "noise must be a real number; got '0.2'"),
    (make_spirals, {"dtype": "int64"}, TypeError, "dtype must be float32 or float64; got <i8"),
    (make_spirals, {"seed": "x"}, TypeError, "seed must be None"),
    (make_blobs, {"n_samples": -1}, ValueError, "n_samples must be an integer >= 1; got -1"),
    (make_blobs, {"n_features": 0}, ValueError, "n_features must be an integer >= 1; got 0"),
    (make_blobs, {"centers": 0}, ValueError, "centers must be an integer >= 1; got 0"),
    (make_blobs, {"centers": 2.5}, ValueError, r"centers must be .* got shape \(\)"),
    (make_blobs, {"centers": [1.0, 2.0]}, ValueError, r"centers must be .* got shape \(2,\)"),
    (make_blobs, {"centers": np.zeros((0, 2))}, ValueError, r"got shape \(0, 2\)"),
    (make_blobs, {"centers": [[0.0, np.nan]]}, ValueError, "centers must be finite"),
    (make_blobs, {"centers": [["a", "b"]]}, TypeError, "centers must hold real numbers"),
    (make_blobs, {"centers": "3"}, TypeError, "centers must be an int or an array"),
    (make_blobs, {"cluster_std": -1.0}, ValueError, "cluster_std must be finite and at least 0"),
    (make_blobs, {"cluster_std": [1.0, 2.0]}, ValueError,
     r"cluster_std must be a number or have shape \(3,\), one per center; got shape \(2,\)"),
    (make_blobs, {"cluster_std": "1"}, TypeError, "cluster_std must be a real number"),
    (make_blobs, {"n_samples": 2, "centers": 3}, ValueError,
     r"n_samples must be at least the number of centers \(3\)"),
    (make_blobs, {"dtype": np.int32}, TypeError, "dtype must be float32 or float64"),
])
def test_generators_bad_arguments(fn, kwargs, error, message):
    with pytest.raises(error, match=message):
        fn(**kwargs)


# --------------------------------------------------------------------------
# load_npz
# --------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    path = tmp_path / "data.npz"
    X = np.arange(12, dtype=np.int16).reshape(4, 3)
    y = np.array([0, 2, 1, 2], dtype=np.uint8)
    np.savez(path, X=X, y=y)
    X_loaded, y_loaded = load_npz(path)
    assert X_loaded.dtype == np.float32 and np.array_equal(X_loaded, X)
    assert y_loaded.dtype == np.int64 and np.array_equal(y_loaded, y)
    X64, _ = load_npz(str(path), dtype="float64")
    assert X64.dtype == np.float64 and X64.flags.c_contiguous


def test_npz_other_keys_and_string_labels(tmp_path):
    path = tmp_path / "named.npz"
    X = np.random.default_rng(0).standard_normal((3, 2))
    labels = np.array(["cat", "dog", "cat"])
    np.savez_compressed(path, features=X, labels=labels, extra=np.zeros(1))
    X_loaded, y_loaded = load_npz(path, x_key="features", y_key="labels", dtype="float64")
    assert np.array_equal(X_loaded, X)
    assert y_loaded.dtype.kind == "U" and y_loaded.tolist() == ["cat", "dog", "cat"]
    floats = tmp_path / "floats.npz"
    np.savez(floats, X=X, y=np.array([0.5, 1.5, 2.5]))
    assert load_npz(floats)[1].tolist() == [0.5, 1.5, 2.5]  # non-integer labels as stored


def test_npz_missing_key_lists_the_keys(tmp_path):
    path = tmp_path / "keys.npz"
    np.savez(path, features=np.zeros((2, 2)), labels=np.zeros(2))
    with pytest.raises(ValueError, match=_named(path) + r".*has no array 'X' \(x_key='X'\); "
                       r"the file holds 'features', 'labels'"):
        load_npz(path)
    with pytest.raises(ValueError, match=r"has no array 'target' \(y_key='target'\)"):
        load_npz(path, x_key="features", y_key="target")
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(ValueError, match="the file holds no arrays"):
        load_npz(empty)


@pytest.mark.parametrize("which", ["X", "y"])
def test_npz_pickled_object_array_is_refused(tmp_path, which):
    path = tmp_path / "pickled.npz"
    arrays = {"X": np.zeros((2, 2)), "y": np.array([0, 1])}
    arrays[which] = np.array([{"evil": 1}, None], dtype=object)
    np.savez(path, allow_pickle=True, **arrays)
    with pytest.raises(ValueError, match=_named(path) + f".*array '{which}' holds Python objects"
                       ".*pickled data is refused"):
        load_npz(path)


def test_npz_truncated_is_refused(tmp_path):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, X=np.random.default_rng(0).standard_normal((50, 8)), y=np.zeros(50))
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{cut}.npz"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=_named(path) + ".*truncated or corrupt"):
            load_npz(path)


def test_npz_corrupt_member_is_refused(tmp_path):
    path = tmp_path / "flipped.npz"
    np.savez(path, X=np.zeros((64, 8)), y=np.zeros(64))  # stored, not compressed
    data = bytearray(path.read_bytes())
    middle = data.index(b"\x00" * 256) + 128  # inside X's zero data
    data[middle] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=_named(path) + ".*'X' cannot be read; .*corrupt"):
        load_npz(path)


def test_npz_random_bytes_and_npy_are_refused(tmp_path):
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match=_named(noise) + r": not an \.npz file"):
        load_npz(noise)
    fake = tmp_path / "fake.npz"
    fake.write_bytes(b"PK\x03\x04" + np.random.default_rng(1).bytes(200))
    with pytest.raises(ValueError, match=_named(fake) + r": not a valid \.npz file"):
        load_npz(fake)
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as handle:
        np.save(handle, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=_named(npy) + r": is a single \.npy array"):
        load_npz(npy)


@pytest.mark.parametrize("arrays, message", [
    ({"X": np.zeros(4), "y": np.zeros(4)}, r"array 'X' must be 2-D .* got shape \(4,\)"),
    ({"X": np.zeros((2, 2, 2)), "y": np.zeros(2)}, r"array 'X' must be 2-D"),
    ({"X": np.array([["a", "b"]]), "y": np.zeros(1)}, "array 'X' must hold integers or floats; "
                                                      "got dtype <U1"),
    ({"X": np.zeros((2, 2), complex), "y": np.zeros(2)}, "must hold integers or floats"),
    ({"X": np.zeros((0, 3)), "y": np.zeros(0)}, r"at least one row and one column; got shape "
                                                r"\(0, 3\)"),
    ({"X": np.zeros((4, 2)), "y": np.zeros((4, 1))}, r"array 'y' must be 1-D .* got shape "
                                                     r"\(4, 1\)"),
    ({"X": np.zeros((4, 2)), "y": np.zeros(3)}, "array 'y' has 3 labels; expected 4, one per row "
                                                "of 'X'"),
])
def test_npz_bad_contents(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=_named(path) + ".*" + message):
        load_npz(path)


def test_npz_bad_arguments(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez(path, X=np.zeros((2, 2)), y=np.zeros(2))
    with pytest.raises(TypeError, match="dtype must be float32 or float64; got <i4"):
        load_npz(path, dtype="int32")
    with pytest.raises(TypeError, match="x_key must be a str; got int"):
        load_npz(path, x_key=0)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike; got int"):
        load_npz(3)
    with pytest.raises(FileNotFoundError, match=_named(tmp_path / "missing.npz")):
        load_npz(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=_named(tmp_path) + ": is not a regular file"):
        load_npz(tmp_path)


# --------------------------------------------------------------------------
# load_csv
# --------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_without_header(tmp_path):
    path = _write(tmp_path / "plain.csv", "1,2,0\n3.5,-4e1,1\n\n5,6,2\n")
    X, y = load_csv(path)
    assert X.dtype == np.float32 and X.tolist() == [[1, 2], [3.5, -40], [5, 6]]
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 2]
    assert load_csv(path, dtype="float64")[0].dtype == np.float64


def test_csv_with_header_auto_and_forced(tmp_path):
    path = _write(tmp_path / "header.csv", "a,b,label\r\n1,2,0\r\n3,4,1\r\n")
    X, y = load_csv(path)
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [0, 1]
    with pytest.raises(ValueError, match=_named(path) + ": row 1, column 1: 'a' is not a number"):
        load_csv(path, header=False)
    numeric_header = _write(tmp_path / "numeric_header.csv", "0,1,2\n1,2,0\n3,4,1\n")
    assert load_csv(numeric_header, header=True)[0].tolist() == [[1, 2], [3, 4]]
    assert load_csv(numeric_header)[0].shape == (3, 2)  # auto: numbers are data


def test_csv_gz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 17, (20, 5))
    y = rng.integers(0, 10, 20)
    path = tmp_path / "data.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("p0,p1,p2,p3,p4,digit\n")
        for row, label in zip(X, y, strict=True):
            handle.write(",".join(map(str, row)) + f",{label}\n")
    X_loaded, y_loaded = load_csv(path)
    assert np.array_equal(X_loaded, X) and np.array_equal(y_loaded, y)
    assert y_loaded.dtype == np.int64


@needs_shared_csv
def test_csv_reads_the_shared_digits_like_the_bundle():
    X, y = load_csv(SHARED_DIGITS)
    X_bundled, y_bundled = load_digits()
    assert np.array_equal(X, X_bundled) and np.array_equal(y, y_bundled)


def test_csv_label_kinds(tmp_path):
    strings = _write(tmp_path / "strings.csv", "x,y,animal\n1,2, cat\n3,4,dog \n5,6,cat\n")
    _, y = load_csv(strings)
    assert y.dtype.kind == "U" and y.tolist() == ["cat", "dog", "cat"]
    float_ints = _write(tmp_path / "float_ints.csv", "1,2,0.0\n3,4,1.0\n5,6,2e0\n")
    _, y = load_csv(float_ints)
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 2]
    reals = _write(tmp_path / "reals.csv", "1,2,0.5\n3,4,1.0\n")
    _, y = load_csv(reals)
    assert y.dtype == np.float64 and y.tolist() == [0.5, 1.0]
    mixed = _write(tmp_path / "mixed.csv", "1,2,3\n3,4,x\n")
    assert load_csv(mixed)[1].tolist() == ["3", "x"]


def test_csv_label_column_and_delimiters(tmp_path):
    first = _write(tmp_path / "first.csv", "7,1,2\n8,3,4\n")
    X, y = load_csv(first, label_column=0)
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [7, 8]
    middle = _write(tmp_path / "middle.csv", "1;7;2\n3;8;4\n")
    X, y = load_csv(middle, label_column=1, delimiter=";")
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [7, 8]
    spaces = _write(tmp_path / "spaces.txt", "  1   2\t0\n3 4 1  \n")
    X, y = load_csv(spaces, delimiter=None)
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [0, 1]
    quoted = _write(tmp_path / "quoted.csv", '1,2,"New York, NY"\n3,4,Paris\n')
    assert load_csv(quoted)[1].tolist() == ["New York, NY", "Paris"]


def test_csv_nan_and_inf_load(tmp_path):
    path = _write(tmp_path / "nan.csv", "nan,1,0\ninf,-inf,1\n")
    X, _ = load_csv(path)
    assert np.isnan(X[0, 0]) and X[1, 0] == np.inf and X[1, 1] == -np.inf


@pytest.mark.parametrize("text, message", [
    ("1,2,0\n3,4,1\n\n5,6\n", r"row 4 has 2 columns; expected 3 \(as in row 1\)"),
    ("a,b,c\n1,2,0\n3,4,5,1\n", r"row 3 has 4 columns; expected 3"),
    ("1,2,0\n3,abc,1\n", "row 2, column 2: 'abc' is not a number"),
    ("1,,0\n", "row 1, column 2: '' is not a number"),  # empty: not a header
    ("1, ,0\n3,4,1\n", "row 1, column 2: ' ' is not a number"),
    ("x,,label\n1,2,0\n3,,1\n", "row 3, column 2: '' is not a number"),
    ("1,2,0\n3,4,\n", "row 2, column 3: the label is empty"),
    ("", "is empty"),
    ("\n\n", "is empty"),
    ("x,y,label\n", "has a header but no data rows"),
    ("1\n2\n", r"row 1 has 1 column; expected at least 2 .* delimiter=','"),
    ('1,2,"unterminated\n', None),  # a quoted label running to the end is still one field
])
def test_csv_bad_contents(tmp_path, text, message):
    path = _write(tmp_path / "bad.csv", text)
    if message is None:
        assert load_csv(path)[1].tolist() == ["unterminated"]
        return
    with pytest.raises(ValueError, match=_named(path) + ".*" + message):
        load_csv(path)


def test_csv_bad_bytes(tmp_path):
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("1,2,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=_named(latin) + r": not UTF-8 text \(byte 7"):
        load_csv(latin)
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(gzip.compress(b"1,2,0\n" * 1000)[:40])
    with pytest.raises(ValueError, match=_named(truncated) + ": not a valid gzip file"):
        load_csv(truncated)
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"1,2,0\n1,\x00,1\n")
    with pytest.raises(ValueError, match=_named(nul)):
        load_csv(nul)


def test_csv_bad_arguments(tmp_path):
    path = _write(tmp_path / "ok.csv", "1,2,0\n3,4,1\n")
    with pytest.raises(ValueError, match="label_column=3 is out of range for the 3 columns of "
                       + _named(path)):
        load_csv(path, label_column=3)
    with pytest.raises(ValueError, match="label_column=-4 is out of range"):
        load_csv(path, label_column=-4)
    with pytest.raises(ValueError, match="has no column named 'label' \\(label_column\\)"):
        load_csv(path, label_column="label")
    with pytest.raises(ValueError, match="delimiter must be a single character .* got ';;'"):
        load_csv(path, delimiter=";;")
    with pytest.raises(TypeError, match="delimiter must be a str or None; got int"):
        load_csv(path, delimiter=1)
    with pytest.raises(ValueError, match="header must be 'auto', True or False; got 'yes'"):
        load_csv(path, header="yes")
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        load_csv(path, dtype=int)
    with pytest.raises(FileNotFoundError, match=_named(tmp_path / "nope.csv")):
        load_csv(tmp_path / "nope.csv")


# --------------------------------------------------------------------------
# load_idx
# --------------------------------------------------------------------------

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file built by hand: magic (0, 0, type, ndim), big-endian dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_idx_images_and_labels(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, 5, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    images_path = _write_idx(tmp_path / f"images-idx3-ubyte{suffix}", images, gz=gz)
    labels_path = _write_idx(tmp_path / f"labels-idx1-ubyte{suffix}", labels, gz=gz)
    X, y = load_idx(images_path, labels_path)
    assert X.shape == (5, 12) and X.dtype == np.float32
    assert np.array_equal(X, images.reshape(5, 12))
    assert y.dtype == np.int64 and np.array_equal(y, labels)
    only = load_idx(images_path, dtype="float64")
    assert isinstance(only, np.ndarray) and only.dtype == np.float64
    assert np.array_equal(only, X)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_other_types_are_big_endian(tmp_path, dtype):
    values = (np.arange(24).reshape(2, 3, 4) - 10).astype(dtype) * 3
    path = _write_idx(tmp_path / "values.idx", values)
    labels = _write_idx(tmp_path / "labels.idx", np.array([-1, 300], np.int32))
    X, y = load_idx(path, labels, dtype="float64")
    assert np.array_equal(X, values.reshape(2, 12).astype(np.float64))
    assert y.tolist() == [-1, 300]


def test_idx_bad_files(tmp_path):
    images = np.zeros((4, 2, 2), np.uint8)
    good = _idx_bytes(images)
    cases = {
        "magic.idx": (b"\x01" + good[1:], r"not an IDX file: magic number 0x01000803"),
        "type.idx": (good[:2] + b"\x07" + good[3:], r"not an IDX file: magic number 0x00000703"),
        "ndim0.idx": (good[:3] + b"\x00" + good[4:], "not an IDX file"),
        "short.idx": (b"\x00\x00", "has 2 bytes; an IDX file starts with a 4-byte magic"),
        "header.idx": (good[:10], r"truncated IDX header: 3 dimensions need 16 bytes; the file "
                                  r"has 10"),
        "data.idx": (good[:-3], r"the IDX header \(shape \(4, 2, 2\), uint8\) promises 16 bytes "
                                r"of data; the file has 13 \(truncated\)"),
        "extra.idx": (good + b"\x00", r"the IDX header .* promises 16 bytes of data; the file "
                                       r"has 17 \(extra bytes at the end\)"),
        "noise.idx": (np.random.default_rng(0).bytes(100), "not an IDX file"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=_named(path) + ": " + message):
            load_idx(path)
    gz = tmp_path / "cut.idx.gz"
    gz.write_bytes(gzip.compress(good * 50)[:30])
    with pytest.raises(ValueError, match=_named(gz) + ": not a valid gzip file"):
        load_idx(gz)


def test_idx_images_and_labels_must_agree(tmp_path):
    images = _write_idx(tmp_path / "images.idx", np.zeros((5, 2, 2), np.uint8))
    few = _write_idx(tmp_path / "few-labels.idx", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match=_named(few) + ": has 4 labels; expected 5, one per image "
                       "of " + _named(images)):
        load_idx(images, few)
    flat = _write_idx(tmp_path / "flat.idx", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match=_named(flat) + r": images must have at least 2 "
                       r"dimensions .* got shape \(5,\)"):
        load_idx(flat)
    square = _write_idx(tmp_path / "square-labels.idx", np.zeros((5, 1), np.uint8))
    with pytest.raises(ValueError, match=_named(square) + r": labels must be 1-D"):
        load_idx(images, square)
    real = _write_idx(tmp_path / "real-labels.idx", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=_named(real) + ": labels must be integers; got IDX "
                       "type float32"):
        load_idx(images, real)
    empty = _write_idx(tmp_path / "empty.idx", np.zeros((0, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=_named(empty) + ": has no images"):
        load_idx(empty)
    with pytest.raises(FileNotFoundError, match=_named(tmp_path / "absent.idx")):
        load_idx(images, tmp_path / "absent.idx")
    with pytest.raises(TypeError, match="labels_path must be a str or os.PathLike; got int"):
        load_idx(images, 5)


# --------------------------------------------------------------------------
# load: dispatch on the suffix
# --------------------------------------------------------------------------


def test_load_dispatches_on_suffix(tmp_path):
    X = np.array([[1.0, 2.0], [3.0, 4.0]])
    y = np.array([0, 1])
    np.savez(tmp_path / "d.npz", X=X, y=y)
    _write(tmp_path / "d.csv", "1,2,0\n3,4,1\n")
    (tmp_path / "D.CSV.GZ").write_bytes(gzip.compress(b"f1,f2,c\n1,2,0\n3,4,1\n"))
    _write(tmp_path / "d.tsv", "1\t2\t0\n3\t4\t1\n")
    _write(tmp_path / "d.txt", "1 2 0\n3   4 1\n")
    for name in ("d.npz", "d.csv", "D.CSV.GZ", "d.tsv", "d.txt"):
        X_loaded, y_loaded = load(tmp_path / name)
        assert np.array_equal(X_loaded, X) and np.array_equal(y_loaded, y), name
    X_first, y_first = load(str(tmp_path / "d.csv"), label_column=0, dtype="float64")
    assert X_first.tolist() == [[2.0, 0.0], [4.0, 1.0]] and y_first.tolist() == [1, 3]


@pytest.mark.parametrize("images_name, labels_name", [
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ("t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte"),
    ("images.idx", "labels.idx.gz"),
])
def test_load_idx_finds_the_labels_beside(tmp_path, images_name, labels_name):
    images = np.arange(24, dtype=np.uint8).reshape(3, 2, 4)
    labels = np.array([4, 2, 9], np.uint8)
    images_path = _write_idx(tmp_path / images_name, images, gz=images_name.endswith(".gz"))
    _write_idx(tmp_path / labels_name, labels, gz=labels_name.endswith(".gz"))
    X, y = load(images_path)
    assert np.array_equal(X, images.reshape(3, 8)) and y.tolist() == [4, 2, 9]


def test_load_idx_without_labels(tmp_path):
    images = _write_idx(tmp_path / "digits-images-idx3-ubyte", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=_named(images) + ": found no IDX labels file .*"
                       "digits-labels-idx1-ubyte.* pass labels_path="):
        load(images)
    odd = _write_idx(tmp_path / "pixels.idx", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=_named(odd) + ": found no IDX labels file for these "
                       "images; pass labels_path="):
        load(odd)
    labels = _write_idx(tmp_path / "y.idx", np.array([1, 0], np.uint8))
    X, y = load(odd, labels_path=labels)
    assert X.shape == (2, 4) and y.tolist() == [1, 0]


def test_load_unknown_suffix_and_missing_file(tmp_path):
    path = _write(tmp_path / "data.json", "{}")
    with pytest.raises(ValueError, match=_named(path) + r": unsupported file type; expected a "
                       r"name ending in one of \.npz, \.csv, \.csv\.gz, .*-idx3-ubyte"):
        load(path)
    missing = tmp_path / "missing.csv"
    with pytest.raises(FileNotFoundError, match=_named(missing) + ": no such file"):
        load(missing)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike; got NoneType"):
        load(None)
