"""Loading (X, y) from files: NumPy .npz, CSV (plain or gzip) and MNIST's IDX format.

Nothing here unpickles or evaluates anything: ``.npz`` files are read header
first by :class:`fastnn.serialization.Archive` (object arrays refused), text is
parsed with :func:`float`, and binary formats with :mod:`struct` and NumPy. Every
problem with a file is a :class:`ValueError` whose message starts with the file's
path as given.

No file can make a loader allocate more than the file says it holds, checked before
the data are read: an ``.npz`` array's header must declare exactly its member's size
(which deflate bounds by 1032 times its compressed size) and the shapes are checked
on the headers; an IDX header must agree with the file's size (for gzip: with what
deflate can expand it to), and its data are streamed into an array of that size; a
gzip CSV is decompressed only up to ``max_bytes`` (default :data:`MAX_CSV_BYTES`).
"""

from __future__ import annotations

import array
import contextlib
import csv
import gzip
import io
import math
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from .. import _checks, serialization

__all__ = ["MAX_CSV_BYTES", "load", "load_csv", "load_idx", "load_npz"]

#: Default ``max_bytes`` of :func:`load_csv`: the most a gzip file may decompress to.
MAX_CSV_BYTES = 256 * 2**20
_CHUNK = 2**20  # bytes per read while decompressing

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members; an empty zip
_NPY_MAGIC = b"\x93NUMPY"
_INT64_MAX = np.iinfo(np.int64).max


@contextlib.contextmanager
def _gzip_errors(label: str):
    """Turn a corrupt gzip stream's errors into a ValueError naming the file."""
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{label}: not a valid gzip file (truncated or corrupt: {exc})"
                         ) from None


def _open_maybe_gzip(handle):
    """``(stream, is_gzip)``: a decompressing stream over ``handle`` if it is gzip."""
    is_gzip = handle.read(2) == _GZIP_MAGIC
    handle.seek(0)
    return (gzip.GzipFile(fileobj=handle) if is_gzip else handle), is_gzip


def _read_bytes(path: object, name: str, max_bytes: int | None) -> tuple[str, bytes]:
    """(path as text for messages, the file's bytes, gunzipped if they are gzip, which
    may decompress to at most ``max_bytes`` (None: no limit))."""
    resolved = _checks.file_path(name, path)
    label = os.fspath(path)
    with open(resolved, "rb") as handle, _gzip_errors(label):
        stream, is_gzip = _open_maybe_gzip(handle)
        if not is_gzip:
            return label, stream.read()
        chunks, size = [], 0  # no buffer regrown (and copied) while it fills
        while chunk := stream.read(_CHUNK):
            chunks.append(chunk)
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise ValueError(f"{label}: decompresses to more than max_bytes={max_bytes} "
                                 f"bytes (a decompression bomb?); pass a larger max_bytes "
                                 f"(or None) to read it")
        return label, b"".join(chunks)


def _read_exactly(stream, n: int) -> bytes:
    """Up to ``n`` bytes of ``stream`` (fewer only at its end)."""
    parts, left = [], n
    while left > 0 and (part := stream.read(min(left, _CHUNK))):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _read_into(stream, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``stream`` a chunk at a time; the number of bytes read."""
    done = 0
    while done < len(buffer):
        n = stream.readinto(buffer[done:done + _CHUNK])
        if not n:
            break
        done += n
    return done


def _key(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str; got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------


def _npz_header(archive: serialization.Archive, key: str, name: str, label: str
                ) -> tuple[tuple[int, ...], np.dtype]:
    """The checked header of array ``key`` (``name`` is the argument that named it)."""
    if key not in archive.keys:
        present = archive.keys + archive.others
        held = ", ".join(repr(k) for k in present) if present else "no arrays"
        raise ValueError(f"{label}: has no array {key!r} ({name}={key!r}); the file "
                         f"holds {held}")
    return archive.header(key)


def _check_npz_shapes(label: str, x_key: str, x_head: tuple, y_key: str, y_head: tuple
                      ) -> None:
    """Refuse X and y of the wrong shapes or dtypes, from their headers alone."""
    (x_shape, x_dtype), (y_shape, _) = x_head, y_head
    if len(x_shape) != 2:
        raise ValueError(f"{label}: array {x_key!r} must be 2-D (samples x features); "
                         f"got shape {x_shape}")
    if x_dtype.kind not in "iuf":
        raise ValueError(f"{label}: array {x_key!r} must hold integers or floats; "
                         f"got dtype {x_dtype}")
    if x_shape[0] == 0 or x_shape[1] == 0:
        raise ValueError(f"{label}: array {x_key!r} must have at least one row and one "
                         f"column; got shape {x_shape}")
    if len(y_shape) != 1:
        raise ValueError(f"{label}: array {y_key!r} must be 1-D (one label per row); "
                         f"got shape {y_shape}")
    if y_shape[0] != x_shape[0]:
        raise ValueError(f"{label}: array {y_key!r} has {y_shape[0]} labels; expected "
                         f"{x_shape[0]}, one per row of {x_key!r}")


def load_npz(path: str | os.PathLike, *, x_key: str = "X", y_key: str = "y",
             dtype: DTypeLike = "float32", label_column: int | str | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Load features and labels from a NumPy ``.npz`` archive, safely.

    The archive is read with ``allow_pickle=False``: an array of Python objects
    (which NumPy stores as a pickle) is refused with a ValueError, never
    unpickled.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file, as written by :func:`numpy.savez` or
        :func:`numpy.savez_compressed`.
    x_key, y_key : str, optional
        The names of the feature and the label arrays in the archive. Without
        an array ``y_key``, the first of ``label``, ``target``, ``class`` (and
        ``y``) the archive holds is the labels.
    dtype : {"float32", "float64"}, optional
        The dtype ``X`` is cast to.
    label_column : int, str or None, optional
        A name: the labels' array (instead of ``y_key``). An index: the labels
        are that column of the ``x_key`` array (counted from 0; negative from
        the end), the features its other columns.

    Returns
    -------
    X : ndarray of shape (n, d), ``dtype``
        The features: the stored array must be 2-D, with ``n, d >= 1``, and of
        an integer or floating dtype. NaN and infinite values are loaded as
        they are (``Sequential.fit`` rejects them).
    y : ndarray of shape (n,)
        The labels: must be 1-D with one label per row of ``X``. Integer labels
        are returned as int64; any other labels (floats, strings, ...) as
        stored.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Not a zip archive (or a truncated one); ``x_key`` or ``y_key`` missing
        (the message lists the arrays the file holds); pickled data; wrong
        shapes or dtypes; an array whose header declares more or fewer bytes
        than its member holds. All of these are found from the headers,
        before any data is read: the most memory a file can take is what
        its headers declare, which is at most 1032 times its size on disk
        (the limit of deflate).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fastnn.datasets import load_npz
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "toy.npz")
    ...     np.savez(path, X=np.arange(6).reshape(3, 2), y=np.array([0, 1, 1], np.uint8))
    ...     X, y = load_npz(path)
    >>> X
    array([[0., 1.],
           [2., 3.],
           [4., 5.]], dtype=float32)
    >>> y
    array([0, 1, 1])
    """
    X, y, _ = _load_npz(path, x_key=x_key, y_key=y_key, dtype=dtype, label_column=label_column)
    return X, y


def _npz_label_key(present: list[str], y_key: str, label_column) -> str:
    if isinstance(label_column, str):
        return label_column
    if y_key in present or y_key != "y":
        return y_key
    return next((k for k in (*LABEL_NAMES, "labels") if k in present), y_key)


def _load_npz(path, *, x_key="X", y_key="y", dtype="float32", label_column=None,
              need_labels=True):
    """load_npz's work: (X, y or None, what the labels are). ``need_labels=False``: an
    archive without labels gives y None."""
    resolved = _checks.file_path("path", path)
    label = os.fspath(path)
    x_key = _key(x_key, "x_key")
    y_key = _key(y_key, "y_key")
    dtype = _checks.float_dtype("dtype", dtype)
    label_column = _check_label_column(label_column)

    with open(resolved, "rb") as handle:
        head = handle.read(len(_NPY_MAGIC))
    if head.startswith(_NPY_MAGIC):
        raise ValueError(f"{label}: is a single .npy array, not an .npz archive; save X and y "
                         f"together with np.savez(path, X=X, y=y)")
    if not head.startswith(_ZIP_MAGICS):
        raise ValueError(f"{label}: not an .npz file (a zip archive of .npy arrays): it starts "
                         f"with the bytes {head[:4]!r}; expected {_ZIP_MAGICS[0]!r}")
    with serialization.Archive(resolved, label) as archive:
        present = archive.keys + archive.others
        y_key = _npz_label_key(present, y_key, label_column)
        in_x = isinstance(label_column, int)
        x_head = _npz_header(archive, x_key, "x_key", label)
        has_y = not in_x and (need_labels or y_key in present)
        if has_y:
            name = "label_column" if isinstance(label_column, str) else "y_key"
            y_head = _npz_header(archive, y_key, name, label)
        else:  # no labels to check: a stand-in that passes the y checks
            y_head = ((x_head[0][0] if x_head[0] else 0,), np.dtype(np.int64))
        # every shape checked on the headers, before any data is read
        _check_npz_shapes(label, x_key, x_head, y_key, y_head)
        X = archive.read(x_key)
        y = archive.read(y_key) if has_y else None

    described = f"array {y_key!r}"
    if in_x:
        X, y, described = _column_of(X, label_column, label, x_key)
    if y is None:
        return np.ascontiguousarray(X, dtype=dtype), None, "no labels"
    if y.dtype.kind in "iu":
        if y.dtype.kind == "u" and y.dtype.itemsize == 8 and int(y.max()) > _INT64_MAX:
            raise ValueError(f"{label}: array {y_key!r} has labels above the int64 range")
        y = y.astype(np.int64)
    return np.ascontiguousarray(X, dtype=dtype), y, described


def _column_of(X: np.ndarray, column: int, label: str, x_key: str) -> tuple:
    """(X without the column, the column as labels, what they are)."""
    width = X.shape[1]
    if width < 2 or not -width <= column < width:
        raise ValueError(f"label_column={column} is out of range for the {width} columns of "
                         f"array {x_key!r} in {label}")
    index = column % width
    y = X[:, index]
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    return (np.delete(X, index, axis=1), y,
            f"column {index + 1} of {width} of array {x_key!r}")


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _rows(text: str, delimiter: str | None):
    """(line number, fields) for each non-blank row of ``text``."""
    stream = io.StringIO(text, newline="")
    if delimiter is None:
        for number, line in enumerate(stream, start=1):
            fields = line.split()
            if fields:
                yield number, fields
        return
    reader = csv.reader(stream, delimiter=delimiter)
    start = 1
    for fields in reader:
        if fields and not (len(fields) == 1 and not fields[0].strip()):
            yield start, fields
        start = reader.line_num + 1


def _labels_array(labels: list[str]) -> np.ndarray:
    """int64 if every label is an integer-valued number, float64 if all numbers, else str."""
    try:
        values = np.array([float(s) for s in labels], dtype=np.float64)
    except ValueError:
        return np.array(labels, dtype=str)
    if (np.all(np.isfinite(values)) and np.all(values == np.round(values))
            and np.all(np.abs(values) < 2.0**63)):
        return values.astype(np.int64)
    return values


#: Column (or array) names taken as the labels when no label column is given.
LABEL_NAMES = ("label", "target", "class", "y")
#: ``label_column`` for :func:`load_csv` when every column is a feature (no labels).
NO_LABELS = "no labels"


def _check_label_column(label_column):
    if label_column is None or isinstance(label_column, str):
        return label_column
    return _checks.integer("label_column", label_column)


def _first_row(fields: list[str], label_column, label: str, delimiter) -> tuple:
    """(label index or None, whether the row names the columns, what the labels are) from
    the first row, for ``label_column`` None (auto), a name, an index or NO_LABELS."""
    n_columns = len(fields)
    names = [field.strip() for field in fields]
    if label_column == NO_LABELS:
        return None, any(f and not _is_number(f) for f in names), "no label column"
    if label_column is None or isinstance(label_column, str):
        lowered = [name.lower() for name in names]
        wanted = (label_column,) if label_column is not None else tuple(
            n for n in LABEL_NAMES if not (n == "y" and "x" in lowered))  # x, y: coordinates
        for want in wanted:
            for candidate in (names, lowered):
                key = want if candidate is names else want.lower()
                if key in candidate:
                    index = candidate.index(key)
                    return index, True, f"column {names[index]!r} ({index + 1} of {n_columns})"
        if label_column is not None:
            shown = ", ".join(repr(n) for n in names[:20]) + (", ..." if n_columns > 20 else "")
            raise ValueError(f"{label}: has no column named {label_column!r} (label_column); "
                             f"its first row is {shown}")
        label_column = -1
    if n_columns < 2:
        raise ValueError(f"{label}: row has {n_columns} column; expected at least 2 "
                         f"(features and a label; is delimiter={delimiter!r} right?)")
    if not -n_columns <= label_column < n_columns:
        raise ValueError(f"label_column={label_column} is out of range for the "
                         f"{n_columns} columns of {label}")
    index = label_column % n_columns
    is_header = any(field and not _is_number(field)
                    for i, field in enumerate(names) if i != index)
    named = f" {names[index]!r}" if is_header else ""
    return index, is_header, f"column{named} ({index + 1} of {n_columns})"


def load_csv(path: str | os.PathLike, *, label_column: int | str | None = None,
             delimiter: str | None = ",", header: bool | str = "auto",
             dtype: DTypeLike = "float32", max_bytes: int | None = MAX_CSV_BYTES
             ) -> tuple[np.ndarray, np.ndarray]:
    """Load features and labels from a delimited text file, plain or gzip-compressed.

    One sample a row: every column is a feature except the label column.

    Parameters
    ----------
    path : str or os.PathLike
        The file; UTF-8 text (a byte-order mark is ignored). If its first
        bytes are the gzip magic number it is decompressed first, whatever
        its name (so ``data.csv.gz`` works).
    label_column : int, str or None, optional
        The labels: a column index counted from 0 (negative counts from the
        end), or a column's name in the header row. None (the default): the
        column named ``label``, ``target``, ``class`` or ``y`` (any case; in
        that order; ``y`` not beside an ``x``, which makes it a coordinate) if
        the first row names one, else the last column.
    delimiter : str or None, optional
        A single character separating the fields (quotes work as in the
        :mod:`csv` module). None: any run of whitespace.
    header : {"auto", True, False}, optional
        Whether the first non-blank row holds column names (and is skipped).
        "auto": it does if at least one of its feature fields (all but the
        label column) is neither empty nor a number, or if it names the label
        column. A header of numbers needs ``header=True``.
    dtype : {"float32", "float64"}, optional
        The dtype of ``X``.
    max_bytes : int or None, optional
        The most bytes a gzip-compressed file may decompress to (default
        :data:`MAX_CSV_BYTES`, 256 MiB); decompression stops with a
        ValueError as soon as it passes them, so a small file that would
        expand to gigabytes (a decompression bomb) costs at most this much
        memory. None: no limit. A plain file is read whole (its size on
        disk bounds it).

    Returns
    -------
    X : ndarray of shape (n, d), ``dtype``
        The features. Each field must parse with Python's :func:`float`
        (surrounding spaces are fine; an empty field is an error). ``nan``,
        ``inf`` and ``-inf`` are loaded as they are, not refused here
        (``Sequential.fit`` rejects them).
    y : ndarray of shape (n,)
        The labels, stripped of surrounding spaces: int64 if every label is
        an integer-valued number (``3`` or ``3.0``); float64 if they are all
        numbers but not all integers (e.g. regression targets, or a NaN);
        otherwise all of them as strings (a str array). An empty label is an
        error.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Rows with different numbers of columns (the header included; the
        message gives the row, i.e. the line number counting from 1), a field
        that is not a number (row and column, counting from 1), an empty
        label, fewer than 2 columns, no data rows, text that is not UTF-8, a
        corrupt gzip file, a gzip file that decompresses to more than
        ``max_bytes``, or ``label_column`` out of range or not a column's name.

    Examples
    --------
    >>> import os, tempfile
    >>> from fastnn.datasets import load_csv
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "toy.csv")
    ...     with open(path, "w") as f:
    ...         _ = f.write("class,x1,x2\\ncat,0.5,1\\ndog,2,-1\\n")
    ...     X, y = load_csv(path)
    >>> X
    array([[ 0.5,  1. ],
           [ 2. , -1. ]], dtype=float32)
    >>> y
    array(['cat', 'dog'], dtype='<U3')
    """
    X, y, _ = _load_csv(path, label_column=label_column, delimiter=delimiter, header=header,
                        dtype=dtype, max_bytes=max_bytes)
    return X, y


def _load_csv(path, *, label_column=None, delimiter=",", header="auto", dtype="float32",
              max_bytes=MAX_CSV_BYTES):
    """load_csv's work: (X, y or None for NO_LABELS, what the labels are)."""
    label_column = _check_label_column(label_column)
    if delimiter is not None:
        if not isinstance(delimiter, str):
            raise TypeError(f"delimiter must be a str or None; got {type(delimiter).__name__}")
        if len(delimiter) != 1 or delimiter in "\r\n\"":
            raise ValueError(f"delimiter must be a single character other than a quote or a "
                             f"line break (or None for whitespace); got {delimiter!r}")
    if not (isinstance(header, (bool, np.bool_)) or (isinstance(header, str)
                                                     and header == "auto")):
        raise ValueError(f"header must be 'auto', True or False; got {header!r}")
    dtype = _checks.float_dtype("dtype", dtype)
    if max_bytes is not None:
        max_bytes = _checks.integer("max_bytes", max_bytes, minimum=1)

    label, data = _read_bytes(path, "path", max_bytes)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{label}: not UTF-8 text (byte {exc.start} is {data[exc.start:][:1]!r})"
                         f"; expected a delimited text file") from None

    features = array.array("d")
    labels: list[str] = []
    n_columns = first_row = label_index = None
    described = ""
    try:
        for row, fields in _rows(text, delimiter):
            if n_columns is None:  # the first row: fixes the shape, may be a header
                n_columns, first_row = len(fields), row
                if n_columns < 2 and label_column != NO_LABELS:
                    raise ValueError(
                        f"{label}: row {row} has {n_columns} column; expected at least 2 "
                        f"(features and a label; is delimiter={delimiter!r} right?)")
                label_index, is_header, described = _first_row(fields, label_column, label,
                                                                delimiter)
                if header != "auto":
                    is_header = bool(header)
                if is_header:
                    continue
            elif len(fields) != n_columns:
                raise ValueError(f"{label}: row {row} has {len(fields)} columns; expected "
                                 f"{n_columns} (as in row {first_row})")
            if label_index is None:
                _parse_features(features, fields, fields, (), label, row)
                continue
            value = fields[label_index].strip()
            if not value:
                raise ValueError(f"{label}: row {row}, column {label_index + 1}: the label "
                                 f"is empty")
            labels.append(value)
            _parse_features(features, fields[:label_index], fields, (label_index,), label, row)
            _parse_features(features, fields[label_index + 1:], fields, (label_index,), label,
                            row)
    except csv.Error as exc:
        raise ValueError(f"{label}: not a readable delimited text file ({exc})") from None
    if n_columns is None:
        raise ValueError(f"{label}: is empty; expected rows of features and a label")
    width = n_columns - (label_index is not None)
    n_rows = len(features) // width if width else 0
    if not n_rows:
        raise ValueError(f"{label}: has a header but no data rows")
    X = np.frombuffer(features, dtype=np.float64).reshape(n_rows, width)
    y = None if label_index is None else _labels_array(labels)
    return X.astype(dtype), y, described


def _parse_features(out: array.array, part: list[str], fields: list[str], skip: tuple,
                    label: str, row: int) -> None:
    try:
        out.extend(map(float, part))
    except ValueError:
        column = next(i for i, field in enumerate(fields)
                      if i not in skip and not _is_number(field))
        raise ValueError(f"{label}: row {row}, column {column + 1}: "
                         f"{fields[column]!r} is not a number") from None


# --------------------------------------------------------------------------
# IDX (MNIST)
# --------------------------------------------------------------------------

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_header(stream, label: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, item dtype, header length) of the IDX file ``stream``, read up to its data."""
    magic = _read_exactly(stream, 4)
    if len(magic) < 4:
        raise ValueError(f"{label}: has {len(magic)} bytes; an IDX file starts with a 4-byte "
                         f"magic number")
    code, ndim = magic[2], magic[3]
    if magic[:2] != b"\x00\x00" or code not in _IDX_TYPES or ndim == 0:
        raise ValueError(
            f"{label}: not an IDX file: magic number 0x{magic.hex()}; expected 0x0000TTNN "
            f"with TT a type code (08, 09, 0b, 0c, 0d or 0e) and NN >= 1 dimensions")
    start = 4 + 4 * ndim
    dims = _read_exactly(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"{label}: truncated IDX header: {ndim} dimensions need {start} bytes; "
                         f"the file has {4 + len(dims)}")
    return struct.unpack(f">{ndim}I", dims), np.dtype(_IDX_TYPES[code]), start


def _idx_data(stream, label: str, file_size: int, is_gzip: bool) -> np.ndarray:
    """The array of the IDX file ``stream``: its header is checked against the file's size
    (gzip: against what deflate can expand it to) before the data are streamed into an
    array of the size the header declares."""
    shape, item, start = _idx_header(stream, label)
    expected = math.prod(shape) * item.itemsize
    promise = f"the IDX header (shape {shape}, {item.name}) promises {expected} bytes of data"
    if not is_gzip and file_size - start != expected:
        actual = file_size - start
        problem = "truncated" if actual < expected else "extra bytes at the end"
        raise ValueError(f"{label}: {promise}; the file has {actual} ({problem})")
    most = serialization.DEFLATE_LIMIT * file_size + 1024
    if is_gzip and expected > most:
        raise ValueError(f"{label}: {promise}; a gzip file of {file_size} bytes cannot hold "
                         f"more than {most} (corrupt, or a decompression bomb)")
    data = np.empty(math.prod(shape), item)
    actual = _read_into(stream, memoryview(data.view(np.uint8)) if data.size else
                        memoryview(bytearray()))
    if actual < expected:
        raise ValueError(f"{label}: {promise}; the file has {actual} (truncated)")
    extra = len(stream.read(_CHUNK)) if is_gzip else 0
    if extra:
        raise ValueError(f"{label}: {promise}; the file has at least {expected + extra} "
                         f"(extra bytes at the end)")
    return data.reshape(shape)


def _read_idx(path: object, name: str) -> tuple[str, np.ndarray]:
    """(path as text, the array) of an IDX file, plain or gzip, its header checked first."""
    resolved = _checks.file_path(name, path)
    label = os.fspath(path)
    with open(resolved, "rb") as handle, _gzip_errors(label):
        stream, is_gzip = _open_maybe_gzip(handle)
        return label, _idx_data(stream, label, os.fstat(handle.fileno()).st_size, is_gzip)


def load_idx(images_path: str | os.PathLike, labels_path: str | os.PathLike | None = None, *,
             dtype: DTypeLike = "float32") -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Load images (and labels) in the IDX format of MNIST and Fashion-MNIST.

    An IDX file is a big-endian header — two zero bytes, a type code (0x08
    unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, then each dimension as a 32-bit
    unsigned int — followed by the data, big-endian, row-major. Either file
    may be gzip-compressed (recognised by its first bytes, e.g.
    ``train-images-idx3-ubyte.gz``).

    Parameters
    ----------
    images_path : str or os.PathLike
        The images: n × rows × cols (any number >= 2 of dimensions: the first
        counts the samples).
    labels_path : str or os.PathLike, optional
        The labels: a 1-D IDX file of integers, one per image.
    dtype : {"float32", "float64"}, optional
        The dtype of ``X``.

    Returns
    -------
    X : ndarray of shape (n, rows * cols), ``dtype``
        The images, flattened row by row; values as stored (MNIST: 0..255, not
        scaled).
    y : ndarray of shape (n,), int64
        The labels; returned (as ``(X, y)``) only if ``labels_path`` is given.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    ValueError
        A bad magic number, a data length that disagrees with the header
        (truncated or with extra bytes), images with fewer than 2 dimensions
        or no samples, labels that are not 1-D integers, or label and image
        counts that disagree.

    Examples
    --------
    >>> import os, struct, tempfile
    >>> from fastnn.datasets import load_idx
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     images, labels = os.path.join(tmp, "images.idx"), os.path.join(tmp, "labels.idx")
    ...     with open(images, "wb") as f:  # two 2x3 images
    ...         _ = f.write(struct.pack(">BBBBIII", 0, 0, 0x08, 3, 2, 2, 3) + bytes(range(12)))
    ...     with open(labels, "wb") as f:
    ...         _ = f.write(struct.pack(">BBBBI", 0, 0, 0x08, 1, 2) + bytes([7, 1]))
    ...     X, y = load_idx(images, labels)
    >>> X
    array([[ 0.,  1.,  2.,  3.,  4.,  5.],
           [ 6.,  7.,  8.,  9., 10., 11.]], dtype=float32)
    >>> y
    array([7, 1])
    """
    dtype = _checks.float_dtype("dtype", dtype)
    label, images = _read_idx(images_path, "images_path")
    if images.ndim < 2:
        raise ValueError(f"{label}: images must have at least 2 dimensions (n, rows, cols); got "
                         f"shape {images.shape} (a labels file? pass it as labels_path)")
    n, size = images.shape[0], math.prod(images.shape[1:])
    if n == 0 or size == 0:
        raise ValueError(f"{label}: has no images or empty images; got shape {images.shape}")
    X = images.reshape(n, size).astype(dtype)
    if labels_path is None:
        return X
    labels_label, labels = _read_idx(labels_path, "labels_path")
    if labels.ndim != 1:
        raise ValueError(f"{labels_label}: labels must be 1-D (one per image); got shape "
                         f"{labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{labels_label}: labels must be integers; got IDX type "
                         f"{labels.dtype.name}")
    if labels.shape[0] != n:
        raise ValueError(f"{labels_label}: has {labels.shape[0]} labels; expected {n}, one per "
                         f"image of {label}")
    return X, labels.astype(np.int64)


# --------------------------------------------------------------------------
# Dispatch on the file name
# --------------------------------------------------------------------------

_IDX_NAME = re.compile(r"(\.idx|[-.]idx\d-ubyte)$")
SUPPORTED_SUFFIXES = (
    ".npz", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz",
    ".idx", ".idx.gz", "-idx3-ubyte", "-idx3-ubyte.gz",
)


def _idx_labels_beside(path: Path) -> list[Path]:
    """Where the labels of an IDX images file would be: 'images'→'labels', 'idx3'→'idx1'."""
    name = path.name
    if "images" not in name:
        return []
    base = name.replace("images", "labels").replace("idx3", "idx1")
    base = base[:-3] if base.endswith(".gz") else base
    return [path.with_name(base), path.with_name(base + ".gz")]


def load(path: str | os.PathLike, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(X, y)`` from a file, choosing the reader by the file name's suffix.

    This is what ``fastnn train --data PATH`` uses. The suffix (any case)
    selects:

    * ``.npz``: :func:`load_npz`;
    * ``.csv``, ``.csv.gz``: :func:`load_csv`;
    * ``.tsv``, ``.tsv.gz``: :func:`load_csv` with ``delimiter="\\t"``;
    * ``.txt``, ``.txt.gz``: :func:`load_csv` with ``delimiter=None`` (any
      whitespace);
    * ``.idx``, ``-idx3-ubyte`` (and ``.idx3-ubyte``, each also with
      ``.gz``): :func:`load_idx`. The labels are ``labels_path=`` if given,
      else the file beside it whose name has ``images`` replaced by
      ``labels`` and ``idx3`` by ``idx1`` (plain or ``.gz``), as MNIST
      names them; if there is none, a ValueError.

    Parameters
    ----------
    path : str or os.PathLike
        The data file.
    **kwargs
        Passed on to the reader (they override the defaults above).

    Returns
    -------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist (the message gives it).
    ValueError
        An unsupported suffix (the message lists the supported ones), or
        whatever the reader refuses.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fastnn.datasets import load
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "points.txt")
    ...     with open(path, "w") as f:
    ...         _ = f.write("0.5  1.5  0\\n2.5  3.5  1\\n")
    ...     X, y = load(path, dtype="float64")
    >>> X.tolist(), y.tolist()
    ([[0.5, 1.5], [2.5, 3.5]], [0, 1])
    """
    X, y, _ = load_labeled(path, **kwargs)
    return X, y


def _reader(resolved: Path, path) -> str:
    name = resolved.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    if name.endswith(".npz"):
        return "npz"
    for suffix in (".csv", ".tsv", ".txt"):
        if base.endswith(suffix):
            return suffix[1:]
    if _IDX_NAME.search(base):
        return "idx"
    raise ValueError(f"{os.fspath(path)}: unsupported file type; expected a name ending in one "
                     f"of {', '.join(SUPPORTED_SUFFIXES)}")


def load_labeled(path: str | os.PathLike, *, label_column: int | str | None = None,
                 n_features: int | None = None, **kwargs) -> tuple:
    """:func:`load`, also saying where the labels came from: ``(X, y, where)``.

    ``label_column`` is the CSV column (index or name) or NPZ array (name; or an index:
    a column of ``X``) of the labels, default as in :func:`load_csv` and
    :func:`load_npz`; for IDX images, the labels file's path. With ``n_features`` (a
    model's input width) a file may hold no labels: a CSV of exactly ``n_features``
    columns, an NPZ without a labels array, IDX images with no labels file; ``y`` is then
    None (and ``where`` "no labels").
    """
    resolved = _checks.file_path("path", path)
    kind = _reader(resolved, path)
    delimiters = {"tsv": {"delimiter": "\t"}, "txt": {"delimiter": None}}
    if kind in ("csv", "tsv", "txt"):
        options = {**delimiters.get(kind, {}), **kwargs}
        X, y, where = _load_csv(path, label_column=label_column, **options)
        # one column too few once a label is taken out: the file is all features
        if n_features is not None and X.shape[1] + 1 == n_features:
            X, y, where = _load_csv(path, label_column=NO_LABELS, **options)
        return X, y, where
    if kind == "npz":
        return _load_npz(path, label_column=label_column, need_labels=n_features is None,
                         **kwargs)
    return _load_idx_labeled(resolved, path, label_column, n_features is None, kwargs)


def _load_idx_labeled(resolved: Path, path, label_column, need_labels: bool, kwargs) -> tuple:
    if label_column is not None and not isinstance(label_column, str):
        raise ValueError(f"{os.fspath(path)}: IDX images keep their labels in a separate "
                         f"file; give its path as label_column (got {label_column!r})")
    labels_path = kwargs.pop("labels_path", label_column)
    if labels_path is not None:
        X, y = load_idx(path, labels_path, **kwargs)
        return X, y, f"IDX file {os.fspath(labels_path)}"
    candidates = _idx_labels_beside(resolved)
    for candidate in candidates:
        if candidate.is_file():
            X, y = load_idx(path, candidate, **kwargs)
            return X, y, f"IDX file {candidate}"
    if not need_labels:
        return load_idx(path, **kwargs), None, "no labels"
    looked = (" (looked for " + " and ".join(str(c) for c in candidates) + ")"
              if candidates else "")
    raise ValueError(f"{os.fspath(path)}: found no IDX labels file for these images"
                     f"{looked}; pass labels_path=")


def label_warning(y: np.ndarray, where: str = "the labels") -> str | None:
    """A warning if class labels ``y`` look like a continuous feature, else None: labels that
    are not all integers, or more than 20 distinct values averaging under 5 rows each
    (e.g. 121 values in 178 rows)."""
    y = np.asarray(y)
    if y.dtype.kind == "f" and not np.all(np.isnan(y) | (y == np.round(y))):
        return (f"{where} are non-integer numbers ({np.unique(y).size} distinct values in "
                f"{y.size} rows): a continuous feature, not classes?")
    distinct = np.unique(y).size
    if distinct > 20 and distinct * 5 > y.size:
        return (f"{where} have {distinct} distinct values in {y.size} rows (under 5 rows a "
                f"class): they look like a continuous feature, not classes")
    return None
