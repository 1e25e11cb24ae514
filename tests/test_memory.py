"""Working memory that does not grow with the data: chunked finite checks and casts,
training on memory-mapped ``.npy`` files and sliceable array-likes, ``shuffle="blocks"``.

Peaks are NumPy's allocations as tracemalloc sees them (NumPy reports its data buffers to
tracemalloc); pages of a memory-mapped file are the file's, not working memory.
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import _checks
from fastnn.layers import BatchNorm, Dense, ReLU, Softmax
from fastnn.trainer import _Rows

WIDTH = 64
MB = 1 << 20


def _peak(fn) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _data(n, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    X = rng.standard_normal((n, WIDTH)) + y[:, None] * 0.5
    return X.astype(dtype), y


def _model():
    return fastnn.Sequential([Dense(16), BatchNorm(), ReLU(), Dense(4), Softmax()],
                             input_dim=WIDTH, seed=1)


def _memmap(tmp_path, X, name="X.npy"):
    np.save(tmp_path / name, X)
    return np.load(tmp_path / name, mmap_mode="r")


def _same_training(a, b):
    np.testing.assert_array_equal(a._params, b._params)
    np.testing.assert_array_equal(a._states, b._states)
    assert a.history.history == b.history.history


# ----------------------------------------------------------------------------------------
# Checks and casts chunk by chunk
# ----------------------------------------------------------------------------------------


def test_finite_check_makes_no_mask_over_all_of_x():
    X, _ = _data(200_000)  # 51 MB
    peak = _peak(lambda: _checks.features("X", X, WIDTH, np.float32))
    assert peak < 2 * MB, peak  # a whole mask would be 12.8 MB
    X[150_001, 7] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(first at row 150001, column 7\)"):
        _checks.features("X", X, WIDTH, np.float32)


def test_finite_check_sees_float64_overflowing_the_model_dtype():
    X = np.ones((10, 3))
    X[4, 2] = 1e300  # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"row 4, column 2"):
        _checks.features("X", X, 3, np.float32)
    with pytest.raises(ValueError, match=r"row 4, column 2"):
        _checks.rows("X", X, 3, np.float32)
    assert _checks.rows("X", X, 3, np.float64) is X  # checked, not copied


def test_finite_check_of_finite_values_whose_sum_overflows():
    X = np.full((4, 2), 3e38, np.float32)  # finite; the sum is inf
    _checks.finite_chunks("X", X)


def test_feature_chunks_cast_each_chunk_and_name_the_bad_row():
    X, _ = _data(1000)
    chunks = list(_checks.feature_chunks("X", X, WIDTH, np.float64, rows_per_chunk=300))
    assert [s for s, _ in chunks] == [0, 300, 600, 900]
    assert all(c.dtype == np.float64 and c.flags.c_contiguous for _, c in chunks)
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), X)
    X[731, 5] = np.inf
    with pytest.raises(ValueError, match=r"first at row 731, column 5"):
        list(_checks.feature_chunks("X", X, WIDTH, np.float64, rows_per_chunk=300))
    with pytest.raises(ValueError, match="has 64 features; the model expects 3"):
        _checks.feature_chunks("X", X, 3, np.float64)


# ----------------------------------------------------------------------------------------
# Training on a memory-mapped file: the same training, bounded working memory
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [True, False, "blocks"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_memmap_fit_trains_exactly_as_in_memory(tmp_path, dtype, shuffle):
    X, y = _data(1500, dtype=dtype)
    mapped = _memmap(tmp_path, X)
    a, b = _model(), _model()
    a.fit(mapped, y, epochs=2, batch_size=64, verbose=0, shuffle=shuffle, block_rows=256)
    b.fit(X, y, epochs=2, batch_size=64, verbose=0, shuffle=shuffle, block_rows=256)
    _same_training(a, b)
    loss = a.history.history["loss"]
    assert loss[-1] < loss[0]  # it learnt


# Bytes per row fit keeps whatever the data: the encoded labels, their int64 copy and
# the epoch's order (8 bytes each); X itself is 256 bytes a row here.
PER_ROW = 24


@pytest.mark.parametrize("dtype, shuffle", [(np.float32, True), (np.float32, False),
                                            (np.float32, "blocks"), (np.float64, True),
                                            (np.float64, False), (np.float64, "blocks")])
def test_memmap_fit_working_memory_does_not_grow_with_the_data(tmp_path, dtype, shuffle):
    model = _model()
    warm, y_warm = _data(512)
    model.fit(warm, y_warm, epochs=1, batch_size=256, verbose=0)  # plan buffers exist
    peaks = {}
    for n in (25_000, 100_000):
        X, y = _data(n, dtype=dtype)
        mapped = _memmap(tmp_path, X, f"X{n}.npy")
        del X
        peaks[n] = _peak(lambda X=mapped, y=y: model.fit(
            X, y, epochs=1, batch_size=256, verbose=0, shuffle=shuffle, block_rows=2048))
        assert peaks[n] - PER_ROW * n < 4 * MB, (n, peaks[n])  # fixed: one block or chunk
    growth = (peaks[100_000] - peaks[25_000]) / 75_000
    assert growth <= PER_ROW, growth  # bytes per row, against 256 or 512 of the data


def test_blocks_visit_every_row_once_reading_contiguous_blocks():
    n, block = 1000, 128
    X = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    targets = np.arange(n, dtype=np.int64)
    rows = _Rows(X, targets, None, np.dtype(np.float32), 32, "blocks", False, block)
    seen, starts = [], []
    for Xb, tb, _, order, sizes in rows.epoch(np.random.default_rng(0), True):
        m = sum(sizes)
        block_rows = tb[:m].copy()
        assert np.all(np.diff(np.sort(block_rows)) == 1)  # one contiguous block of X
        np.testing.assert_array_equal(Xb[:m, 0], block_rows)  # X and targets together
        starts.append(int(block_rows.min()))
        seen.append(block_rows[order[:m]])
    assert sorted(np.concatenate(seen).tolist()) == list(range(n))
    assert starts != sorted(starts)  # the blocks are visited in a shuffled order
    assert not np.array_equal(seen[0], np.sort(seen[0]))  # and shuffled within


class _Sliced:
    """An array-like that only serves row slices (as h5py or zarr do), recording them."""

    def __init__(self, X):
        self._X, self.shape, self.dtype, self.reads = X, X.shape, X.dtype, []

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"only row slices; got {key!r}")
        self.reads.append(key)
        return self._X[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("read whole")


@pytest.mark.parametrize("shuffle", [False, "blocks"])
def test_sliceable_array_like_is_read_block_by_block(shuffle):
    X, y = _data(1200, dtype=np.float64)
    source = _Sliced(X)
    a, b = _model(), _model()
    a.fit(source, y, epochs=2, batch_size=50, verbose=0, shuffle=shuffle, block_rows=200,
          validation_split=0.25)
    b.fit(X, y, epochs=2, batch_size=50, verbose=0, shuffle=shuffle, block_rows=200,
          validation_split=0.25)
    _same_training(a, b)
    assert "val_loss" in a.history.history
    training_reads = [k for k in source.reads if k.stop is not None and k.stop <= 900]
    assert training_reads and max(k.stop - k.start for k in training_reads) <= 200


def test_shuffle_and_block_rows_are_checked():
    X, y = _data(100)
    model = _model()
    with pytest.raises(TypeError, match="shuffle must be True, False or 'blocks'; got 'block'"):
        model.fit(X, y, shuffle="block", verbose=0)
    with pytest.raises(ValueError, match="block_rows must be an integer >= 1; got 0"):
        model.fit(X, y, shuffle="blocks", block_rows=0, verbose=0)
    assert model.optimizer is None and model.epochs_trained == 0  # rejected first


# ----------------------------------------------------------------------------------------
# The scikit-learn estimators: no float64 copy of a float32 X
# ----------------------------------------------------------------------------------------


def test_estimator_fit_and_predict_do_not_copy_a_float32_x(tmp_path):
    pytest.importorskip("sklearn")
    from fastnn.sklearn import FastNNClassifier

    X, y = _data(100_000)  # 25.6 MB of float32
    clf = FastNNClassifier(hidden_layer_sizes=(16,), max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one epoch: the ConvergenceWarning
        fit_peak = _peak(lambda: clf.fit(X, y))
    proba = []
    predict_peak = _peak(lambda: proba.append(clf.predict_proba(X)))
    output = proba[0].nbytes  # 4 float64 per row: 3.2 MB
    assert fit_peak < 0.2 * X.nbytes, fit_peak  # labels and order: ~24 B a row
    # one float64 chunk of X (4 MiB) and its activations; a float64 X would be 51 MB
    assert predict_peak < output + 12 * MB, predict_peak
    mapped = _memmap(tmp_path, X)
    np.testing.assert_array_equal(clf.predict_proba(mapped), proba[0])


@pytest.mark.parametrize("shuffle", [True, False, "blocks"])
def test_memmap_fit_per_layer_path_weights_and_regression(tmp_path, shuffle):
    """The per-layer path (sample weights; a regressor) stages rows the same way."""
    X, y = _data(900, dtype=np.float64)
    mapped = _memmap(tmp_path, X)
    weights = np.linspace(0.5, 1.5, 900)
    targets = X[:, :2].sum(axis=1)
    for make, labels in ((_model, y), (lambda: fastnn.Sequential(
            [Dense(8), ReLU(), Dense(1)], input_dim=WIDTH, seed=2), targets)):
        a, b = make(), make()
        for model, source in ((a, mapped), (b, X)):
            model.fit(source, labels, epochs=2, batch_size=32, verbose=0, shuffle=shuffle,
                      block_rows=128, sample_weight=weights)
        _same_training(a, b)
