"""A study's SQLite file (the standard library's :mod:`sqlite3`), written only by the coordinator.

Two tables. ``study`` holds one row of metadata::

    id               INTEGER  always 1
    format           TEXT     "fastnn-tune-study"
    format_version   INTEGER  1
    direction        TEXT     "maximize" | "minimize"
    seed             TEXT     the study seed, a decimal integer (may exceed 64 bits)
    space            TEXT     JSON, space_to_config(space)
    strategy         TEXT     JSON, strategy.to_config()
    pruner           TEXT     JSON, pruner.to_config()
    n_trials         INTEGER  the study's total number of trials (NULL: not set yet)
    budget           INTEGER  the first n_trials >= 1 the strategy was sized by (set_budget);
                              raising n_trials later keeps it, so earlier proposals stand
    created          TEXT     ISO 8601, UTC
    fastnn_version   TEXT
    user_attrs       TEXT     JSON object (tune_model keeps its settings here)
    strategy_state   TEXT     JSON, strategy.describe() after the last search

``trials`` holds one row per trial::

    number             INTEGER PRIMARY KEY   0, 1, 2, ... without gaps
    state              TEXT     "running" | "complete" | "failed" | "pruned"
    params             TEXT     JSON object
    seed               INTEGER  the trial seed (from the study seed and the number)
    value              REAL     NULL unless complete
    reports            TEXT     JSON object {step: value}
    error              TEXT     failed trials: the exception and a traceback summary
    datetime_start     TEXT     ISO 8601, UTC: when the trial was (last) dispatched
    datetime_complete  TEXT     ISO 8601, UTC, NULL while running
    duration           REAL     seconds the objective ran (measured where it ran)
    attempts           INTEGER  how many times the trial was dispatched (> 1 after a resume)
    parent             INTEGER  resume_trial: the trial whose checkpoint this one continued
    crashes            INTEGER  how many coordinators died while running the trial inline:
                                counted when an inline attempt starts, uncounted when the
                                coordinator outlives it (files written before this column
                                existed get it, as 0, when opened)

A trial row is inserted as "running", with its params and seed, before the trial is handed to
a worker; its result is written in one transaction when it comes back. A coordinator killed at
any moment therefore leaves a consistent file: finished rows final, the others "running" and
re-runnable with the same params and seed.

The file uses write-ahead logging, so readers (``fastnn tune report``) can look while a search
writes, and ``synchronous=NORMAL``: a commit survives the coordinator being killed (the
operating system keeps the data); after a power cut the last commits may be lost, which a
resume repairs by re-running those trials.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import sqlite3
from pathlib import Path

FORMAT_NAME = "fastnn-tune-study"
FORMAT_VERSION = 1
MEMORY = ":memory:"
STATES = ("running", "complete", "failed", "pruned")
FINISHED = ("complete", "failed", "pruned")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS study (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format TEXT NOT NULL,
    format_version INTEGER NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('maximize', 'minimize')),
    seed TEXT NOT NULL,
    space TEXT NOT NULL,
    strategy TEXT NOT NULL,
    pruner TEXT NOT NULL,
    n_trials INTEGER,
    budget INTEGER,
    created TEXT NOT NULL,
    fastnn_version TEXT NOT NULL,
    user_attrs TEXT NOT NULL DEFAULT '{}',
    strategy_state TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS trials (
    number INTEGER PRIMARY KEY CHECK (number >= 0),
    state TEXT NOT NULL CHECK (state IN ('running', 'complete', 'failed', 'pruned')),
    params TEXT NOT NULL,
    seed INTEGER NOT NULL,
    value REAL,
    reports TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    datetime_start TEXT,
    datetime_complete TEXT,
    duration REAL,
    attempts INTEGER NOT NULL DEFAULT 1,
    parent INTEGER,
    crashes INTEGER NOT NULL DEFAULT 0
);
"""

_TRIAL_COLUMNS = ("number", "state", "params", "seed", "value", "reports", "error",
                  "datetime_start", "datetime_complete", "duration", "attempts", "parent",
                  "crashes")


def _decode(row: tuple) -> dict:
    record = dict(zip(_TRIAL_COLUMNS, row, strict=True))
    record["params"] = json.loads(record["params"])
    record["reports"] = {int(k): v for k, v in json.loads(record["reports"]).items()}
    return record


def now() -> str:
    """The current time, ISO 8601 in UTC with microseconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def dumps(obj) -> str:
    """JSON for storing and comparing configs: no NaN, key order kept (a space's order
    is the order of a grid's dimensions)."""
    return json.dumps(obj, allow_nan=False)


def check_path(storage) -> str:
    """``":memory:"`` or a file path whose directory exists, as a string.

    Raises
    ------
    TypeError
        If ``storage`` is not a str or os.PathLike.
    FileNotFoundError
        If the directory that would hold the file does not exist.
    """
    if not isinstance(storage, (str, os.PathLike)):
        raise TypeError(f"storage must be ':memory:' or a file path; got "
                        f"{type(storage).__name__}")
    if isinstance(storage, str) and storage == MEMORY:
        return MEMORY
    path = Path(storage)
    if str(storage) == "" or path.is_dir():
        raise ValueError(f"storage must be a file path (a .db file), not a directory; got "
                         f"{str(storage)!r}")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"storage directory {str(directory)!r} does not exist "
                                f"(storage={str(storage)!r})")
    return str(path)


class Storage:
    """One study's SQLite database; every method is one transaction.

    Parameters
    ----------
    path : str or os.PathLike
        ``":memory:"`` (the study lives as long as this object) or a file, created if missing.
    create : bool
        If False, the file must exist and hold a study (``load_study``).

    Raises
    ------
    FileNotFoundError
        ``create=False`` and no such file, or the directory is missing.
    ValueError
        The file exists but is not a fastnn study (or is from a newer fastnn).
    """

    def __init__(self, path, *, create: bool = True) -> None:
        if not create and isinstance(path, (str, os.PathLike)) and str(path) != MEMORY \
                and not Path(path).is_file():
            raise FileNotFoundError(f"no such study file: {path}")
        self.path = check_path(path)
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as exc:
            raise ValueError(f"cannot open the study file {self.path}: {exc}") from None
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise ValueError(f"{self.path} is not a fastnn study file ({exc})") from None
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        conn = self._conn
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "study" not in tables:
            raise ValueError(f"{self.path} is an SQLite file but not a fastnn study (its tables: "
                             f"{sorted(tables)})")
        if self.path != MEMORY:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        if not {"study", "trials"} <= tables:
            conn.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(trials)")}
        if "crashes" not in columns:  # a file from before the column: add it
            conn.execute("ALTER TABLE trials ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0")
        row = conn.execute("SELECT format, format_version FROM study WHERE id = 1").fetchone()
        if row is not None:
            if row[0] != FORMAT_NAME:
                raise ValueError(f"{self.path} is not a fastnn study (format {row[0]!r})")
            if row[1] > FORMAT_VERSION:
                raise ValueError(f"{self.path} has study format version {row[1]}; this fastnn "
                                 f"reads versions up to {FORMAT_VERSION}")

    @contextlib.contextmanager
    def _transaction(self):
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    # -- the study row ---------------------------------------------------------------------

    def read_study(self) -> dict | None:
        """The study metadata (JSON columns decoded), or None for a new file."""
        cursor = self._conn.execute("SELECT * FROM study WHERE id = 1")
        row = cursor.fetchone()
        if row is None:
            return None
        meta = dict(zip([c[0] for c in cursor.description], row, strict=True))
        for key in ("space", "strategy", "pruner", "user_attrs", "strategy_state"):
            meta[key] = json.loads(meta[key])
        meta["seed"] = int(meta["seed"])
        return meta

    def create_study(self, *, direction: str, seed: int, space: dict, strategy: dict,
                     pruner: dict, n_trials: int | None, fastnn_version: str) -> None:
        """Write the study row (once, for a new file)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO study (id, format, format_version, direction, seed, space, "
                "strategy, pruner, n_trials, budget, created, fastnn_version) "
                "VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (FORMAT_NAME, FORMAT_VERSION, direction, str(int(seed)), dumps(space),
                 dumps(strategy), dumps(pruner), n_trials, None, now(), fastnn_version))

    def update_study(self, **columns) -> None:
        """Set study columns (``n_trials``, ``budget``, ``user_attrs``, ``strategy_state``)."""
        allowed = {"n_trials", "budget", "user_attrs", "strategy_state"}
        unknown = set(columns) - allowed
        if unknown:
            raise ValueError(f"cannot update study columns {sorted(unknown)}")
        values = [dumps(v) if k in ("user_attrs", "strategy_state") else v
                  for k, v in columns.items()]
        assignments = ", ".join(f"{k} = ?" for k in columns)
        with self._transaction() as conn:
            conn.execute(f"UPDATE study SET {assignments} WHERE id = 1", values)

    # -- trial rows ------------------------------------------------------------------------

    def trial_rows(self, start: int = 0, numbers=()) -> list[dict]:
        """The trial rows numbered ``start`` or more and those in ``numbers``, by number, JSON
        columns decoded; by default every row."""
        numbers = [int(n) for n in numbers]
        where = "number >= ?" + (f" OR number IN ({', '.join('?' * len(numbers))})"
                                 if numbers else "")
        cursor = self._conn.execute(
            f"SELECT {', '.join(_TRIAL_COLUMNS)} FROM trials WHERE {where} ORDER BY number",
            (int(start), *numbers))
        return [_decode(row) for row in cursor.fetchall()]

    def trial_row(self, number: int) -> dict | None:
        """Trial ``number``'s row, or None."""
        row = self._conn.execute(f"SELECT {', '.join(_TRIAL_COLUMNS)} FROM trials "
                                 "WHERE number = ?", (int(number),)).fetchone()
        return None if row is None else _decode(row)

    def next_number(self) -> int:
        (count,) = self._conn.execute("SELECT COUNT(*) FROM trials").fetchone()
        return int(count)

    def insert_running(self, number: int, params: dict, seed: int,
                       parent: int | None = None, *, inline: bool = False) -> str:
        """Record trial ``number`` as running (before it is dispatched); returns its start time.

        ``inline``: the trial runs in this process (counted in ``crashes`` until
        :meth:`release`).

        Raises
        ------
        RuntimeError
            If the file has a trial ``number`` already (another process wrote to it).
        """
        start = now()
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO trials (number, state, params, seed, datetime_start, parent, "
                    "crashes) VALUES (?, 'running', ?, ?, ?, ?, ?)",
                    (number, dumps(params), int(seed), start, parent, int(inline)))
        except sqlite3.IntegrityError:
            raise RuntimeError(f"{self.path} has a trial {number} already: another process "
                               "wrote to this study meanwhile (a study has one coordinator at "
                               "a time)") from None
        return start

    def restart_running(self, number: int, *, inline: bool = False) -> str:
        """A running trial left by an interrupted search is dispatched again (``inline``: in
        this process, counted in ``crashes`` until :meth:`release`)."""
        start = now()
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE trials SET datetime_start = ?, attempts = attempts + 1, reports = '{}', "
                "crashes = crashes + ? WHERE number = ? AND state = 'running'",
                (start, int(inline), number))
            if cursor.rowcount != 1:
                raise RuntimeError(f"trial {number} is not a running trial in {self.path}")
        return start

    def release(self, number: int) -> None:
        """The process that ran trial ``number`` inline outlived the attempt: uncount it."""
        with self._transaction() as conn:
            conn.execute("UPDATE trials SET crashes = crashes - 1 WHERE number = ? "
                         "AND crashes > 0", (number,))

    def finish(self, number: int, *, state: str, value: float | None, reports: dict,
               error: str | None, duration: float | None) -> str:
        """Write a running trial's result; returns the completion time."""
        if state not in FINISHED:
            raise ValueError(f"state must be one of {FINISHED}; got {state!r}")
        if value is not None and not math.isfinite(value):
            raise ValueError(f"value must be finite; got {value!r}")
        done = now()
        reports_json = dumps({str(k): float(v) for k, v in sorted(reports.items())})
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE trials SET state = ?, value = ?, reports = ?, error = ?, "
                "datetime_complete = ?, duration = ? WHERE number = ? AND state = 'running'",
                (state, value, reports_json, error, done, duration, number))
            if cursor.rowcount != 1:
                raise RuntimeError(f"trial {number} is not running: it cannot be finished "
                                   "twice")
        return done
