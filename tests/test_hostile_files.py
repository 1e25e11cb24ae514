"""Hostile and corrupt files (issue 14, holes 1, 2, 8, 9, 10): each is refused with a
ValueError naming the file and the problem, before it costs memory.

Every hostile file is generated here, small on disk: a decompression bomb is a deflate
stream of zeros built from one compressed MiB repeated (after a full flush, deflate
encodes each MiB of zeros to the same bytes), written into a zip or gzip container by
hand, so a 600 MB member costs 600 KB and no time to make. Memory is measured with
tracemalloc (NumPy reports its buffers to it), and once in a subprocess by its peak RSS.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

import fastnn
from fastnn import serialization
from fastnn.datasets import load, load_csv, load_idx, load_npz
from fastnn.datasets._files import MAX_CSV_BYTES
from fastnn.layers import BatchNorm, Dense, ReLU, Softmax
from fastnn.optimizers import Adam

MiB = 2**20
BOMB = 600 * MiB  # what the attack run used
SMALL_PEAK = 32 * MiB  # what refusing any of these files may cost at most


# ----------------------------------------------------------------------------------------
# Building files by hand
# ----------------------------------------------------------------------------------------

_ZERO_MIB = bytes(MiB)


def _deflate(prefix: bytes, zero_mib: int = 0, tail: bytes = b"", chunk: bytes = _ZERO_MIB
             ) -> tuple[bytes, int, int]:
    """(raw deflate stream, CRC-32, length) of ``prefix + chunk * zero_mib + tail``."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    body = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH) if zero_mib else b""
    end = c.compress(tail) + c.flush()
    crc = zlib.crc32(prefix)
    for _ in range(zero_mib):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(tail, crc)
    return head + body * zero_mib + end, crc, len(prefix) + len(chunk) * zero_mib + len(tail)


def _write_zip(path, members, claims=None) -> None:
    """A zip of deflated ``members``: name -> bytes, or (prefix, MiB of zeros); ``claims``
    (name -> size) overrides the uncompressed size the directory records."""
    claims = claims or {}
    out, directory = io.BytesIO(), []
    for name, content in members.items():
        stream, crc, size = _deflate(*content) if isinstance(content, tuple) else _deflate(
            content)
        size = claims.get(name, size)
        raw = name.encode()
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(stream),
                              size, len(raw), 0) + raw + stream)
        directory.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21,
                                     crc, len(stream), size, len(raw), 0, 0, 0, 0, 0,
                                     offset) + raw)
    start = out.tell()
    out.write(b"".join(directory))
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(directory), len(directory),
                          out.tell() - start, start, 0))
    path.write_bytes(out.getvalue())


def _npy_header(shape, dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": tuple(shape)})
    return buf.getvalue()


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _write_gzip(path, prefix: bytes, zero_mib: int = 0, chunk: bytes = _ZERO_MIB) -> None:
    stream, crc, size = _deflate(prefix, zero_mib, chunk=chunk)
    path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + stream
                     + struct.pack("<II", crc, size & 0xFFFFFFFF))


def _peak(call) -> tuple[BaseException | None, int]:
    """(what ``call()`` raised, the peak of traced memory while it ran, in bytes)."""
    tracemalloc.start()
    error = None
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - returned to the test, which checks it
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


def _refused(call, match: str, limit: int = SMALL_PEAK) -> ValueError:
    error, peak = _peak(call)
    assert isinstance(error, ValueError), repr(error)
    assert match in str(error), str(error)
    assert peak < limit, f"refusing cost {peak / MiB:.1f} MiB"
    return error


# ----------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    """A trained classifier with Adam state, saved by the current code."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 4)), rng.integers(0, 3, 60)
    model = fastnn.Sequential([Dense(8), BatchNorm(), ReLU(), Dense(3), Softmax()], seed=0)
    model.fit(X, np.array(["a", "b", "c"])[y], epochs=2, batch_size=16,
              optimizer=Adam(0.01), verbose=0)
    path = tmp_path_factory.mktemp("good") / "model.npz"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    return model, path, members, X


def _config(members) -> dict:
    return json.loads(str(np.load(io.BytesIO(members["fastnn_config.npy"]))))


def _with_config(members, change) -> dict:
    config = change(_config(members))
    return {**members, "fastnn_config.npy": _npy(np.array(json.dumps(config)))}


def test_hand_built_model_file_loads(good_model, tmp_path):
    # The control: the same members through the hand-written (deflating) zip load exactly.
    model, _, members, X = good_model
    path = tmp_path / "rebuilt.npz"
    _write_zip(path, members)
    loaded = fastnn.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    for name, arr in model.optimizer.state_arrays().items():
        np.testing.assert_array_equal(loaded.optimizer.state_arrays()[name], arr)


def test_bomb_in_a_member_the_model_never_uses(good_model, tmp_path):
    path = tmp_path / "bomb.npz"
    _write_zip(path, {**good_model[2], "junk.npy": (_npy_header((BOMB,), np.uint8), 600)})
    assert path.stat().st_size < 2 * MiB
    error = _refused(lambda: fastnn.load(path), "'junk' expands")
    assert str(path) in str(error) and "decompression bomb" in str(error)


def test_small_member_the_model_never_uses(good_model, tmp_path):
    for name in ("junk.npy", "README.txt"):
        path = tmp_path / "extra.npz"
        _write_zip(path, {**good_model[2], name: _npy(np.zeros(3))})
        _refused(lambda p=path: fastnn.load(p), "which its config does not use")


def test_params_bomb_matching_its_config(good_model, tmp_path):
    # A 10000 x 10000 Dense: its config and its params header agree (400 MB of float32
    # zeros), and the member is a 400 KB deflate stream.
    def big(config):
        config["model"]["layers"] = [{"class": "Dense", "config": {"units": 10_000}}]
        config["model"]["input_dim"] = 10_000
        config["optimizer"] = None
        return config

    n = 10_000 * 10_000 + 10_000
    members = _with_config(good_model[2], big)
    del members["classes.npy"], members["optimizer/m.npy"], members["optimizer/v.npy"]
    members["params.npy"] = (_npy_header((n,), np.float32) + bytes(4 * n % MiB), 4 * n // MiB)
    members["states.npy"] = _npy(np.zeros(0, np.float32))
    path = tmp_path / "params-bomb.npz"
    _write_zip(path, members)
    _refused(lambda: fastnn.load(path), "'params' expands")


def test_huge_config_is_refused_before_allocating(good_model, tmp_path):
    # Hole 2: a 60000 x 60000 Dense in the config (13.4 GiB) with the small params.
    def huge(config):
        config["model"]["layers"][0]["config"]["units"] = 60_000
        config["model"]["input_dim"] = 60_000
        return config

    path = tmp_path / "huge.npz"
    _write_zip(path, _with_config(good_model[2], huge))
    error = _refused(lambda: fastnn.load(path), "the saved model is inconsistent")
    assert "'params' has shape" in str(error) and str(60_000 * 60_000 + 2 * 60_000 + 60_000
                                                      * 3 + 3) in str(error)


def test_npy_header_declaring_1e12_elements(good_model, tmp_path):
    # Hole 9: was a MemoryError.
    members = dict(good_model[2])
    members["params.npy"] = _npy_header((10**12,), np.float32) + bytes(400)
    path = tmp_path / "liar.npz"
    _write_zip(path, members)
    _refused(lambda: fastnn.load(path), "declares shape (1000000000000,) float32")


def test_zip_directory_claiming_more_than_deflate_can_expand(good_model, tmp_path):
    members = dict(good_model[2])
    k = 700_000_000
    members["params.npy"] = _npy_header((k,), np.float32) + bytes(100)
    path = tmp_path / "claims.npz"
    _write_zip(path, members, claims={"params.npy": 128 + 4 * k})
    _refused(lambda: fastnn.load(path), "more than deflate can expand")


def test_deeply_nested_json_config(good_model, tmp_path):
    # Hole 9: was a RecursionError.
    members = dict(good_model[2])
    members["fastnn_config.npy"] = _npy(np.array("[" * 100_000 + "]" * 100_000))
    path = tmp_path / "deep.npz"
    _write_zip(path, members)
    _refused(lambda: fastnn.load(path), "nested too deeply")
    deep = "[" * 100_000 + "]" * 100_000
    doc = json.dumps(_config(good_model[2]))[:-1] + ', "junk": ' + deep + "}"
    members["fastnn_config.npy"] = _npy(np.array(doc))
    _write_zip(path, members)
    _refused(lambda: fastnn.load(path), "nested too deeply")


def test_config_text_over_the_limit(good_model, tmp_path, monkeypatch):
    monkeypatch.setattr(serialization, "MAX_CONFIG_BYTES", 1000)
    _refused(lambda: fastnn.load(good_model[1]), "must be a text of at most 1000 bytes")


def test_too_many_members(good_model, tmp_path):
    members = dict(good_model[2])
    members.update({f"x{i}.npy": _npy(np.zeros(1)) for i in range(100)})
    path = tmp_path / "many.npz"
    _write_zip(path, members)
    _refused(lambda: fastnn.load(path), "members (a model has fewer than 64)")


@pytest.mark.parametrize("key, bad, message", [
    ("optimizer/m.npy", lambda a: a[:-1], "'optimizer/m' has shape"),
    ("optimizer/v.npy", lambda a: np.concatenate([a, a]), "'optimizer/v' has shape"),
    ("optimizer/m.npy", lambda a: a.astype(np.float64), "'optimizer/m' has shape"),
    ("params.npy", lambda a: np.full_like(a, np.nan), "'params' holds NaN or infinite"),
    ("params.npy", lambda a: np.where(np.arange(a.size) == 3, np.inf, a).astype(a.dtype),
     "'params' holds NaN or infinite"),
    ("states.npy", lambda a: np.full_like(a, -np.inf), "'states' holds NaN or infinite"),
    ("optimizer/v.npy", lambda a: np.full_like(a, np.nan), "'optimizer/v' holds NaN"),
    ("classes.npy", lambda a: a[:2], "'classes' has shape (2,)"),
    ("classes.npy", lambda a: np.array([{}, 1, 2], dtype=object), "holds Python objects"),
], ids=["m-short", "v-long", "m-float64", "params-nan", "params-inf", "states-inf", "v-nan",
        "classes-short", "classes-pickled"])
def test_corrupt_arrays_are_refused_at_load(good_model, tmp_path, key, bad, message):
    # Hole 8: a wrong-size optimizer state loaded and fit silently reset it; NaN weights
    # loaded and predicted class 0 for every row.
    members = dict(good_model[2])
    members[key] = _npy(bad(np.load(io.BytesIO(members[key]), allow_pickle=False)))
    path = tmp_path / "corrupt.npz"
    _write_zip(path, members)
    error = _refused(lambda: fastnn.load(path), message)
    assert str(path) in str(error)


@pytest.mark.parametrize("drop, message", [
    ("optimizer/v.npy", "needs an array 'optimizer/v', which it lacks"),
    ("params.npy", "needs an array 'params', which it lacks"),
])
def test_missing_arrays_are_refused(good_model, tmp_path, drop, message):
    members = dict(good_model[2])
    del members[drop]
    path = tmp_path / "missing.npz"
    _write_zip(path, members)
    _refused(lambda: fastnn.load(path), message)


@pytest.mark.parametrize("change", [
    lambda c: {**c, "epochs_trained": float("inf")},
    lambda c: {**c, "epochs_trained": -1},
    lambda c: {**c, "train_seed": "seven"},
    lambda c: {**c, "optimizer": {**c["optimizer"], "iterations": float("inf")}},
    lambda c: {**c, "optimizer": {**c["optimizer"], "beta_1": float("nan")}},
    lambda c: {**c, "history": {"epoch": "01", "history": {}}},
    lambda c: {**c, "model": [1, 2]},
    lambda c: {**c, "model": {**c["model"], "layers": [7]}},
    lambda c: {**c, "model": {**c["model"], "input_dim": None}},
], ids=["epochs-inf", "epochs-negative", "seed-str", "iterations-inf", "beta-nan",
        "history-str", "model-list", "layer-int", "never-built"])
def test_hostile_config_values(good_model, tmp_path, change):
    path = tmp_path / "config.npz"
    _write_zip(path, _with_config(good_model[2], change))
    error = _refused(lambda: fastnn.load(path), "the saved model is inconsistent")
    assert str(path) in str(error)


# ----------------------------------------------------------------------------------------
# Data files
# ----------------------------------------------------------------------------------------


def test_hand_built_npz_and_gzip_load(tmp_path):
    # The control for the builders below.
    X, y = np.arange(12.0).reshape(4, 3), np.array([0, 1, 0, 1])
    path = tmp_path / "ok.npz"
    _write_zip(path, {"X.npy": _npy(X), "y.npy": _npy(y)})
    X_loaded, y_loaded = load_npz(path, dtype="float64")
    np.testing.assert_array_equal(X_loaded, X)
    np.testing.assert_array_equal(y_loaded, y)
    gz = tmp_path / "ok.csv.gz"
    _write_gzip(gz, b"1,2,0\n3,4,1\n")
    assert load_csv(gz)[0].tolist() == [[1, 2], [3, 4]]


def test_npz_one_dimensional_bomb(tmp_path):
    # Was +573 MB: X was read before its ndim was checked.
    path = tmp_path / "bomb.npz"
    _write_zip(path, {"X.npy": (_npy_header((BOMB,), np.uint8), 600),
                      "y.npy": _npy(np.zeros(3))})
    _refused(lambda: load_npz(path), "array 'X' must be 2-D")


def test_npz_header_declaring_more_than_the_member_holds(tmp_path):
    path = tmp_path / "liar.npz"
    _write_zip(path, {"X.npy": _npy_header((10**6, 10**6), np.float64) + bytes(64),
                      "y.npy": _npy(np.zeros(10**6))})
    error = _refused(lambda: load_npz(path), "declares shape (1000000, 1000000) float64")
    assert str(path) in str(error)


def _idx_header(shape, code=0x08) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def test_idx_gz_bomb_behind_a_small_header(tmp_path):
    # Was +1.0 GB: the whole file was decompressed before the header was looked at.
    path = tmp_path / "images-idx3-ubyte.gz"
    _write_gzip(path, _idx_header((2, 2, 2)), 600)
    assert path.stat().st_size < 2 * MiB
    _refused(lambda: load_idx(path), "(extra bytes at the end)")


def test_idx_header_declaring_more_than_the_file_can_hold(tmp_path):
    gz = tmp_path / "big.idx.gz"
    _write_gzip(gz, _idx_header((10_000, 10_000, 10_000)), 1)
    _refused(lambda: load_idx(gz), "cannot hold more than")
    plain = tmp_path / "big.idx"
    plain.write_bytes(_idx_header((10_000, 10_000, 10_000)) + bytes(100))
    _refused(lambda: load_idx(plain), "promises 1000000000000 bytes of data; the file has 100")


_CSV_ROWS = b"1,2,0\n" * (MiB // 6)  # a chunk of whole rows, repeated by the bomb


def test_csv_gz_bomb_is_cut_at_max_bytes(tmp_path):
    # Was +1.5 GB: gzip.decompress of the whole file.
    path = tmp_path / "bomb.csv.gz"
    _write_gzip(path, b"a,b,label\n", 600, chunk=_CSV_ROWS)
    assert path.stat().st_size < 8 * MiB
    error = _refused(lambda: load_csv(path, max_bytes=4 * MiB),
                     f"decompresses to more than max_bytes={4 * MiB} bytes")
    assert str(path) in str(error)
    _refused(lambda: load(path, max_bytes=4 * MiB), "max_bytes")  # through the dispatcher


def test_csv_gz_under_max_bytes_and_unlimited(tmp_path):
    path = tmp_path / "rows.csv.gz"
    _write_gzip(path, b"a,b,label\n", 2, chunk=_CSV_ROWS)
    rows = 2 * (MiB // 6)
    assert load_csv(path, max_bytes=3 * MiB)[0].shape == (rows, 2)
    assert load_csv(path, max_bytes=None)[1].shape == (rows,)
    with pytest.raises(ValueError, match="max_bytes"):
        load_csv(path, max_bytes=MiB)
    with pytest.raises(ValueError, match="max_bytes must be an integer >= 1"):
        load_csv(path, max_bytes=0)


def test_csv_default_max_bytes_is_documented():
    assert MAX_CSV_BYTES == 256 * MiB
    assert inspect.signature(load_csv).parameters["max_bytes"].default == MAX_CSV_BYTES
    assert "256 MiB" in load_csv.__doc__


_PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys
    import fastnn
    from fastnn.datasets import load_csv, load_idx, load_npz

    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    base = rss()
    for call, path in ((fastnn.load, sys.argv[1]), (load_npz, sys.argv[2]),
                       (load_idx, sys.argv[3]), (load_csv, sys.argv[4])):
        try:
            call(path)
        except ValueError as exc:
            print("refused", path in str(exc))
    print(rss() - base)
""")


@pytest.mark.slow
def test_peak_rss_of_refusing_bombs(good_model, tmp_path):
    model = tmp_path / "model.npz"
    _write_zip(model, {**good_model[2], "junk.npy": (_npy_header((BOMB,), np.uint8), 600)})
    npz = tmp_path / "data.npz"
    _write_zip(npz, {"X.npy": (_npy_header((BOMB,), np.uint8), 600), "y.npy": _npy(np.zeros(3))})
    idx = tmp_path / "images.idx.gz"
    _write_gzip(idx, _idx_header((2, 2, 2)), 600)
    csv = tmp_path / "data.csv.gz"
    _write_gzip(csv, b"a,b,label\n", 600, chunk=_CSV_ROWS)
    script = tmp_path / "peak.py"
    script.write_text(_PEAK_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(model), str(npz), str(idx),
                           str(csv)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    lines = done.stdout.split()
    assert done.returncode == 0, done.stderr
    assert lines[:-1] == ["refused", "True"] * 4, done.stdout
    # The default cap of load_csv (256 MiB) dominates; every other refusal is near zero.
    assert int(lines[-1]) < MAX_CSV_BYTES + 64 * MiB, int(lines[-1]) / MiB


# ----------------------------------------------------------------------------------------
# Temporary files of killed saves (hole 10)
# ----------------------------------------------------------------------------------------


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_stale_temp_files_are_removed_on_the_next_save(good_model, tmp_path):
    model = good_model[0]
    old = serialization.STALE_SECONDS + 5
    stale = tmp_path / ".model.npz.ab12cd34.fastnn-tmp"  # a killed save of this target
    other = tmp_path / ".other.npz.zz99yy88.fastnn-tmp"  # a killed save of another one
    legacy = tmp_path / ".model.npz.k3j4h5g6.tmp"  # the name fastnn 0.1.0 used
    fresh = tmp_path / ".model.npz.qwer_tyu.fastnn-tmp"  # just written: maybe in progress
    foreign = [tmp_path / ".model.npz.k3j4h5g6.tmp.bak", tmp_path / ".other.npz.k3j4h5g6.tmp",
               tmp_path / "model.fastnn-tmp", tmp_path / "notes.txt"]
    for path in (stale, other, legacy, fresh, *foreign):
        path.write_bytes(b"x" * 100)
        if path is not fresh:
            _age(path, old)
    model.save(tmp_path / "model.npz")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["model.npz", fresh.name] + [p.name for p in foreign])
    assert fastnn.load(tmp_path / "model.npz").epochs_trained == model.epochs_trained


def test_a_locked_temp_file_is_never_removed(good_model, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    busy = tmp_path / ".model.npz.lock1234.fastnn-tmp"
    with open(busy, "wb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # as a live writer holds it
        _age(busy, serialization.STALE_SECONDS + 5)
        good_model[0].save(tmp_path / "model.npz")
        assert busy.exists()
    assert serialization.remove_stale_temps(tmp_path) == [busy.name]  # unlocked now
    assert not busy.exists()


def test_a_save_never_removes_its_own_temp_file(good_model, tmp_path, monkeypatch):
    # Another save cleaning the directory while this one writes (no age grace at all):
    # the writer's lock protects its temporary file.
    monkeypatch.setattr(serialization, "STALE_SECONDS", -1)
    removed = []
    real_savez = np.savez

    def savez_while_another_save_cleans(fh, **arrays):
        real_savez(fh, **arrays)
        removed.extend(serialization.remove_stale_temps(tmp_path))

    monkeypatch.setattr(serialization.np, "savez", savez_while_another_save_cleans)
    good_model[0].save(tmp_path / "model.npz")
    monkeypatch.undo()
    assert removed == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    assert fastnn.load(tmp_path / "model.npz").n_params == good_model[0].n_params


_LOCK_HOLDER = textwrap.dedent("""
    import fcntl, sys, time
    handle = open(sys.argv[1], "wb")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(60)
""")


@pytest.mark.slow
def test_the_temp_file_of_a_killed_writer_is_cleaned(tmp_path):
    pytest.importorskip("fcntl")
    temp = tmp_path / ".model.npz.kill1234.fastnn-tmp"
    proc = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(temp)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        _age(temp, serialization.STALE_SECONDS + 5)
        assert serialization.remove_stale_temps(tmp_path) == []  # alive: kept
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert temp.exists()
    assert serialization.remove_stale_temps(tmp_path) == [temp.name]  # the kernel dropped it
    assert not temp.exists()
