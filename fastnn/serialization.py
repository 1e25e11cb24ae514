"""The model file format: one .npz of named arrays plus a JSON config, no pickle.

This module knows the file, not the model: :func:`write` stores a JSON document (a 0-d
unicode array) and named arrays, :func:`open_model` gives them back after checking the
file is a fastnn file of a format version this fastnn reads. What the config and arrays
mean is :class:`fastnn.Sequential`'s business (``save`` and ``load`` translate).

Reading is header first (:class:`Archive`): nothing is decompressed before the zip
directory and each ``.npy`` header have been checked (the declared shape and dtype
against the member's size, the member's size against its compressed size), and an array
is then read straight into a buffer of the declared size. A file that lies about its
sizes, or a decompression bomb, is refused before it costs memory. Pickled (object)
arrays are never loaded.

Writes are atomic: the file is written under a temporary name in the same directory
(``.NAME.XXXXXXXX.fastnn-tmp``, locked while it is written), flushed to disk, then
renamed over the target, so a crash during a save leaves the previous file intact. A
save that is killed leaves its temporary file behind; the next save to that directory
removes such files once they are :data:`STALE_SECONDS` old and no live writer holds
their lock.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from ._version import __version__

try:
    import fcntl
except ImportError:  # Windows: a file open for writing cannot be deleted there anyway
    fcntl = None

__all__ = ["DEFLATE_LIMIT", "FORMAT_NAME", "FORMAT_VERSION", "MAX_CONFIG_BYTES", "MAX_RATIO",
           "RATIO_FLOOR", "STALE_SECONDS", "TEMP_SUFFIX", "Archive", "ModelFile", "open_model",
           "remove_stale_temps", "write"]

FORMAT_NAME = "fastnn-model"
FORMAT_VERSION = 1
_CONFIG_KEY = "fastnn_config"

#: The largest config document (the declared bytes of its 0-d unicode array) a model may have.
MAX_CONFIG_BYTES = 64 * 2**20
#: A model's array larger than :data:`RATIO_FLOOR` bytes may be deflated at most this much
#: (fastnn writes them uncompressed; random weights deflate about 1.1:1).
MAX_RATIO = 100
RATIO_FLOOR = 16 * 2**20
#: Deflate cannot expand a stream by more than 1032:1; more is a lie, refused for any file.
DEFLATE_LIMIT = 1032
#: Suffix of the temporary files of :func:`write`.
TEMP_SUFFIX = ".fastnn-tmp"
#: Age (seconds since last written) after which an unlocked temporary file is stale.
STALE_SECONDS = 60

_CHUNK = 2**20  # bytes per read: a member is never read as one large bytes object
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------


def new_file_mode(path) -> int:
    """The permission bits a file written at ``path`` should get: those of the file it
    replaces, else what ``open`` would give (0o666 less the umask). ``mkstemp``'s
    temporary files are 0o600, which a rename would otherwise keep."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask: from /proc on Linux (reading it there changes nothing, so
    no other thread can create a file under a wrong mask meanwhile), else set and
    restored, the only portable way."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write(path, config: dict, arrays: dict) -> None:
    """Write ``config`` (JSON-serialisable) and ``arrays`` (name -> ndarray, no object
    dtype) to ``path`` atomically (see the module docstring); first remove the stale
    temporary files of killed saves in that directory."""
    path = Path(path)
    document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "fastnn_version": __version__, **config}
    members = {_CONFIG_KEY: np.array(json.dumps(document)), **arrays}
    directory = path.parent if str(path.parent) else Path(".")
    remove_stale_temps(directory, path.name)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=directory)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # held until renamed: not stale
            np.savez(fh, **members)
            fh.flush()
            os.fsync(fh.fileno())
            if fcntl is not None:
                os.replace(tmp, path)
        if fcntl is None:  # Windows renames a closed file only
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_stale_temps(directory, target: str | None = None) -> list[str]:
    """Remove the temporary files that killed saves left in ``directory``; their names.

    A file is removed if its name is a :func:`write` temporary name (or, for ``target``,
    the ``.TARGET.XXXXXXXX.tmp`` name of fastnn 0.1.0), it was last written more
    than :data:`STALE_SECONDS` ago, and no process holds its lock (a live writer always
    does; the kernel drops a killed writer's lock). Never raises: a file that cannot be
    inspected or removed is left alone.
    """
    legacy = None if target is None else re.compile(
        re.escape(f".{target}.") + r"[a-z0-9_]{8}\.tmp")
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if _TEMP_NAME.fullmatch(name) or (legacy is not None and legacy.fullmatch(name)):
            if _remove_if_stale(entry.path):
                removed.append(name)
    return removed


def _remove_if_stale(path: str) -> bool:
    try:
        st = os.lstat(path)
        if not os.path.isfile(path) or os.path.islink(path):
            return False
        if time.time() - st.st_mtime < STALE_SECONDS:
            return False
        if fcntl is None:
            os.unlink(path)  # fails while a writer has it open
            return True
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:  # renamed or replaced meanwhile
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------
# Reading: archives header first
# ----------------------------------------------------------------------------------------


class Archive:
    """An ``.npz`` archive read header first.

    Opening reads only the zip directory. :meth:`header` reads one array's ``.npy``
    header and checks it against the member: the declared bytes must be exactly the
    member's size, which must be one that its compressed size can hold (stored:
    equal; deflated: at most :data:`DEFLATE_LIMIT` times; ``max_ratio`` when given,
    for members over :data:`RATIO_FLOOR` bytes). :meth:`read` then reads the data in
    chunks into one array of the declared size. Every problem is a ValueError whose
    message starts with ``label``.

    Parameters
    ----------
    path : str or os.PathLike
        The archive.
    label : str, optional
        How messages name the file (default: ``path`` as given).
    max_ratio : float, optional
        The most a member over :data:`RATIO_FLOOR` bytes may be compressed (None: only
        the deflate limit).

    Raises
    ------
    ValueError
        Not a zip archive, or a truncated or corrupt one.
    """

    #: What messages call the file.
    kind = ".npz file"

    def __init__(self, path, label: str | None = None, max_ratio: float | None = None
                 ) -> None:
        self.label = os.fspath(path) if label is None else label
        self.max_ratio = max_ratio
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
            raise ValueError(f"{self.label}: not a valid {self.kind} (truncated or corrupt "
                             f"zip archive: {exc})") from None
        self._disk_size = os.fstat(self._zip.fp.fileno()).st_size
        infos = self._zip.infolist()
        self._members = {info.filename[:-4]: info for info in infos
                         if info.filename.endswith(".npy")}
        #: Members that are not ``.npy`` arrays.
        self.others = [info.filename for info in infos if not info.filename.endswith(".npy")]
        if len(self._members) + len(self.others) != len(infos):
            self.close()
            raise ValueError(f"{self.label}: not a valid {self.kind} (a member name appears "
                             f"twice)")
        self._headers: dict[str, tuple] = {}

    @property
    def keys(self) -> list[str]:
        """The names of the arrays, in archive order."""
        return list(self._members)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, key: str, problem: str) -> ValueError:
        return ValueError(f"{self.label}: array {key!r} {problem}")

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """``(shape, dtype)`` of array ``key`` as its header declares them, checked
        against the member's sizes (see the class docstring); nothing else is read."""
        if key in self._headers:
            return self._headers[key][:2]
        info = self._members[key]
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise self._fail(key, f"is compressed with zip method {info.compress_type}; "
                                  f"an .npz member is stored or deflated")
        if info.header_offset + info.compress_size > self._disk_size:
            raise self._fail(key, f"cannot be read; the file is truncated or corrupt (its "
                                  f"{info.compress_size} bytes end beyond the file's "
                                  f"{self._disk_size})")
        try:
            with self._zip.open(info) as fp:
                version = npy_format.read_magic(fp)
                if version == (1, 0):
                    shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
                elif version == (2, 0):
                    shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
                else:
                    raise self._fail(key, f"has .npy format version {version}; fastnn reads "
                                          f"1.0 and 2.0")
                offset = fp.tell()
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
            raise self._fail(key, f"cannot be read; the file is truncated or corrupt ({exc})"
                             ) from None
        except (ValueError, TypeError, OverflowError) as exc:
            if str(exc).startswith(self.label):
                raise
            raise self._fail(key, f"has a corrupt .npy header ({exc})") from None
        if dtype.hasobject:
            raise self._fail(key, "holds Python objects (an object array, stored as a "
                                  "pickle); pickled data is refused (fastnn never loads "
                                  "with allow_pickle=True).")
        declared = math.prod(shape) * dtype.itemsize
        self._check_sizes(key, info, shape, dtype, declared, info.file_size - offset)
        self._headers[key] = (tuple(shape), dtype, bool(fortran), offset)
        return tuple(shape), dtype

    def _check_sizes(self, key, info, shape, dtype, declared: int, held: int) -> None:
        if declared != held:
            raise self._fail(key, f"declares shape {tuple(shape)} {dtype} ({declared} bytes) "
                                  f"but its member holds {held} bytes (truncated or corrupt)")
        packed = max(info.compress_size, 1)
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise self._fail(key, f"is stored uncompressed as {info.compress_size} bytes but "
                                  f"claims {info.file_size} (corrupt)")
        if info.file_size > DEFLATE_LIMIT * packed + 1024:
            raise self._fail(key, f"claims {info.file_size} bytes from {info.compress_size} "
                                  f"compressed, more than deflate can expand (corrupt)")
        ratio = info.file_size / packed
        if self.max_ratio is not None and info.file_size > RATIO_FLOOR and (
                ratio > self.max_ratio):
            raise self._fail(key, f"expands {ratio:.0f}:1 ({info.file_size} bytes from "
                                  f"{info.compress_size}); arrays over {RATIO_FLOOR} bytes "
                                  f"may expand at most {self.max_ratio}:1 (a decompression "
                                  f"bomb?)")

    def read(self, key: str, out: np.ndarray | None = None) -> np.ndarray:
        """Array ``key`` (its header checked first), read in chunks into ``out`` (a
        C-contiguous array of the declared shape and dtype) or a new array."""
        shape, dtype = self.header(key)
        fortran, offset = self._headers[key][2:]
        if out is None:
            flat = np.empty(math.prod(shape), dtype)
            out = flat.reshape(shape, order="F" if fortran else "C")
        elif out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous or fortran:
            raise self._fail(key, f"is {shape} {dtype}; it cannot be read into a "
                                  f"{out.shape} {out.dtype} buffer")
        else:
            flat = out.reshape(-1)
        view = memoryview(flat.view(np.uint8)) if flat.size else memoryview(b"")
        try:
            with self._zip.open(self._members[key]) as fp:
                fp.read(offset)
                done = 0
                while done < len(view):
                    n = fp.readinto(view[done:done + _CHUNK])
                    if not n:
                        raise EOFError(f"{done} of {len(view)} bytes")
                    done += n
                fp.read(1)  # at the end: the zip module checks the CRC
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise self._fail(key, f"cannot be read; the file is truncated or corrupt ({exc})"
                             ) from None
        return out


# ----------------------------------------------------------------------------------------
# Reading: the model file
# ----------------------------------------------------------------------------------------


def _json_document(text: str, label: str) -> dict:
    try:
        config = json.loads(text)
    except RecursionError:
        raise ValueError(f"{label}: the fastnn config is not valid JSON (nested too deeply)"
                         ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{label}: the fastnn config is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{label} is not a fastnn model (format {found!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ValueError(f"{label} has format version {version!r}; this fastnn "
                         f"({__version__}) reads versions up to {FORMAT_VERSION}")
    return config


class ModelFile(Archive):
    """A fastnn model file, opened by :func:`open_model`: :attr:`config` is its checked
    JSON document; :meth:`check` compares the arrays' headers with what the model expects,
    before :meth:`~Archive.read` reads any of them."""

    kind = "fastnn model file"
    #: More members than any model has (params, states, classes, config, optimizer state).
    max_members = 64

    def __init__(self, path, label: str) -> None:
        super().__init__(path, label, max_ratio=MAX_RATIO)
        try:
            self.config = self._read_config()
        except BaseException:
            self.close()
            raise

    def _read_config(self) -> dict:
        n_members = len(self.keys) + len(self.others)
        if n_members > self.max_members:
            raise ValueError(f"{self.label} is not a fastnn model: it has {n_members} "
                             f"members (a model has fewer than {self.max_members})")
        if _CONFIG_KEY not in self._members:
            raise ValueError(f"{self.label} is not a fastnn model: it has no {_CONFIG_KEY!r} "
                             f"entry (entries: {sorted(self.keys + self.others)[:10]})")
        for key in self.keys:  # before anything is read: a pickle anywhere is refused
            self.header(key)
        shape, dtype = self.header(_CONFIG_KEY)
        if shape != () or dtype.kind != "U" or dtype.itemsize > MAX_CONFIG_BYTES:
            raise self._fail(_CONFIG_KEY, f"must be a text of at most {MAX_CONFIG_BYTES} "
                                          f"bytes; got shape {shape} {dtype}")
        return _json_document(str(self.read(_CONFIG_KEY)), self.label)

    def check(self, expected: dict) -> None:
        """Check that the arrays are exactly ``expected``: name -> ``(shape, dtype)``,
        where dtype is a dtype or a string of the dtype kinds allowed."""
        present = set(self.keys) - {_CONFIG_KEY}
        unknown = sorted(present - set(expected)) + self.others
        if unknown:
            raise ValueError(f"{self.label}: the saved model is inconsistent: it holds "
                             f"{unknown[:5]}, which its config does not use")
        for key, (shape, dtype) in expected.items():
            if key not in present:
                raise ValueError(f"{self.label}: the saved model is inconsistent: its "
                                 f"config needs an array {key!r}, which it lacks")
            got_shape, got_dtype = self.header(key)
            ok = got_dtype.kind in dtype if isinstance(dtype, str) else got_dtype == dtype
            if got_shape != shape or not ok:
                raise ValueError(f"{self.label}: the saved model is inconsistent: {key!r} "
                                 f"has shape {got_shape} {got_dtype}; its config needs "
                                 f"{shape} {dtype}")


def open_model(path) -> ModelFile:
    """Open a fastnn file written by :func:`write` (use as a context manager).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated, not a fastnn model, from a newer format, holds pickled
        (object) data (never loaded), declares sizes its members do not have, or is a
        decompression bomb.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":  # every .npz is a zip archive; look before NumPy guesses
        raise ValueError(f"{path} is not a readable fastnn model file (not an .npz archive)")
    return ModelFile(path, str(path))
