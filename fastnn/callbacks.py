"""Callbacks for ``fit``: History, EarlyStopping, ModelCheckpoint, LearningRateScheduler,
CSVLogger, and the progress display (Keras names and behaviour).

Epochs passed to callbacks count over all calls to ``fit`` (0-based), so a
resumed or continued training keeps numbering where it stopped.
"""

from __future__ import annotations

import math
import os
import sys
import time

from . import _checks

__all__ = [
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "History",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ProgressBar",
]


class Callback:
    """Base class; ``self.model`` is set by ``fit`` before ``on_train_begin``."""

    model = None

    def set_model(self, model) -> None:
        self.model = model

    def check_logs(self, reported: set) -> None:
        """Called by ``fit`` before training with the metric names it will report;
        raise ValueError if this callback needs one that is missing."""


    def on_train_begin(self, logs: dict | None = None) -> None: ...

    def on_train_end(self, logs: dict | None = None) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None: ...


# Metrics fit can report; a callback monitoring one of these that fit will not report is
# rejected before training. Other names may be added to the logs by other callbacks.
_FIT_METRICS = {"loss", "accuracy", "lr", "val_loss", "val_accuracy"}


def _check_monitor(owner: str, monitor: str, reported: set) -> None:
    if monitor in _FIT_METRICS and monitor not in reported:
        hint = "; give validation data for val_ metrics" if monitor.startswith("val_") else ""
        raise ValueError(f"{owner} monitors {monitor!r}, which fit will not report (it "
                         f"reports {sorted(reported)}){hint}")


def _monitored(owner: str, monitor: str, logs: dict) -> float:
    if monitor not in logs:
        raise ValueError(f"{owner} monitors {monitor!r}, which is not in the logs of this "
                         f"epoch ({sorted(logs)})")
    return logs[monitor]

class History(Callback):
    """Per-epoch metrics: ``history.history["loss"]``, ``["val_accuracy"]``, ``["lr"]``, ...

    ``epoch`` lists the (global) epoch numbers recorded; ``stop_reason`` says why
    training ended early, if it did.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.stop_reason: str | None = None

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        keys = ", ".join(self.history)
        return f"History({len(self.epoch)} epochs: {keys})"


def _better(mode: str, monitor: str):
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max'; got {mode!r}")
    return mode


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights`` the model ends with the weights (and BatchNorm
    statistics) of its best epoch.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False) -> None:
        patience = _checks.integer("patience", patience, minimum=0)
        if not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"min_delta must be finite and >= 0; got {min_delta!r}")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = float(min_delta)
        self.mode = _better(mode, monitor)
        self.restore_best_weights = bool(restore_best_weights)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self._wait = 0
        self._best_weights = None

    def on_train_begin(self, logs=None) -> None:
        self.best, self.best_epoch, self.stopped_epoch = None, None, None
        self._wait, self._best_weights = 0, None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def check_logs(self, reported: set) -> None:
        _check_monitor("EarlyStopping", self.monitor, reported)

    def on_epoch_end(self, epoch, logs=None) -> None:
        value = _monitored("EarlyStopping", self.monitor, logs or {})
        if self._improved(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_weights = (self.model._params.copy(), self.model._states.copy())
            return
        self._wait += 1
        if self._wait >= max(self.patience, 1):
            self.stopped_epoch = epoch
            self.model.stop_training = True
            self.model.stop_reason = (f"early stopping: {self.monitor} did not improve for "
                                      f"{self._wait} epochs (best {self.best:.6g} at epoch "
                                      f"{self.best_epoch + 1})")

    def on_train_end(self, logs=None) -> None:
        if self.restore_best_weights and self._best_weights is not None and \
                self.stopped_epoch is not None:
            self.model._params[...] = self._best_weights[0]
            self.model._states[...] = self._best_weights[1]


class ModelCheckpoint(Callback):
    """Save the model (with optimizer state) after each epoch, atomically.

    ``path`` may contain ``{epoch}`` (1-based) and any logged metric, e.g.
    ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``. With ``save_best_only`` only an
    epoch that improves ``monitor`` is saved.
    """

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto") -> None:
        self.path = str(path)
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.mode = _better(mode, monitor)
        self.best: float | None = None
        self.saved: list[str] = []

    def check_logs(self, reported: set) -> None:
        if self.save_best_only:
            _check_monitor("ModelCheckpoint", self.monitor, reported)

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        if self.save_best_only:
            value = _monitored("ModelCheckpoint", self.monitor, logs)
            better = self.best is None or (value < self.best if self.mode == "min"
                                           else value > self.best)
            if not better:
                return
            self.best = value
        path = self.path.format(epoch=epoch + 1, **logs)
        self.model.save(path)
        self.saved.append(path)


class LearningRateScheduler(Callback):
    """Set the optimizer's rate at each epoch start: ``lr = schedule(epoch, lr)``."""

    def __init__(self, schedule, verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError(f"schedule must be callable (epoch, lr) -> lr; got {schedule!r}")
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None) -> None:
        opt = self.model.optimizer
        lr = float(self.schedule(epoch, opt.lr))
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"the schedule returned lr={lr!r} at epoch {epoch}")
        opt.lr = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: learning rate {lr:.6g}")


class CSVLogger(Callback):
    """Append one row per epoch (``epoch`` then the logged metrics) to a CSV file."""

    def __init__(self, path, separator: str = ",", append: bool = False) -> None:
        self.path = os.fspath(path)
        self.separator = separator
        self.append = bool(append)
        self._keys: list[str] | None = None

    def on_train_begin(self, logs=None) -> None:
        self._keys = None
        if not self.append and os.path.exists(self.path):
            os.unlink(self.path)

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        new_file = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        if self._keys is None:
            self._keys = sorted(logs)
        import csv  # (here: keeps `import fastnn` light)

        with open(self.path, "a", newline="") as fh:
            writer = csv.writer(fh, delimiter=self.separator)
            if new_file:
                writer.writerow(["epoch", *self._keys])
            writer.writerow([epoch, *(logs.get(k, "") for k in self._keys)])
            fh.flush()
            os.fsync(fh.fileno())


class ProgressBar(Callback):
    """verbose=1: a per-epoch bar (tqdm if installed, else a plain text bar); 2: one line
    per epoch. Written to stdout, like Keras.

    ``fit`` calls ``on_batch_end`` only every few batches (about 20 times a second, and
    on each epoch's last batch): the bar shows the batch it is given."""

    def __init__(self, verbose: int, epochs: int, steps: int, stream=None) -> None:
        self.verbose = verbose
        self.epochs = epochs
        self.steps = steps
        self.stream = stream if stream is not None else sys.stdout
        self._bar = None
        self._tqdm = None
        if verbose == 1:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            self._tqdm = tqdm

    first_epoch = 0
    # A tqdm bar is made only once an epoch has run this long (seconds): a quicker epoch
    # gets its one finished line from tqdm's formatter, written once. Making, drawing and
    # closing a bar costs ~100 us (tqdm measures each character's display width), which
    # was ~10% of a small network's epoch.
    _BAR_DELAY = 0.1
    _in_epoch = False
    _seen = 0  # batches of this epoch reported so far
    _loss = float("nan")

    def on_train_begin(self, logs=None) -> None:
        self.first_epoch = self.model.epochs_trained

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch_number = epoch - self.first_epoch + 1
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._in_epoch, self._seen, self._bar = True, 0, None

    def _desc(self) -> str:
        return f"Epoch {self._epoch_number}/{self.epochs}"

    def _tqdm_line(self, n: int, postfix: str) -> str:
        """The line tqdm draws for ``n`` of the epoch's batches done (its own formatter;
        ASCII blocks unless the stream's encoding is UTF, as tqdm decides)."""
        encoding = getattr(self.stream, "encoding", None) or ""
        return self._tqdm.format_meter(
            n, self.steps, time.perf_counter() - self._start, prefix=self._desc(),
            unit="batch", postfix=postfix or None,
            ascii="utf" not in encoding.lower().replace("-", ""))

    def on_batch_end(self, batch, logs=None) -> None:
        if self.verbose != 1:
            return
        loss = (logs or {}).get("loss", float("nan"))
        if self._tqdm is not None:
            self._seen, self._loss = batch + 1, loss
            if self._bar is None:
                if (batch + 1 == self.steps
                        or time.perf_counter() - self._start < self._BAR_DELAY):
                    return  # on_epoch_end writes its line
                self._bar = self._tqdm(total=self.steps, desc=self._desc(), unit="batch",
                                       leave=True, file=self.stream, initial=batch + 1)
            else:
                self._bar.update(batch + 1 - self._bar.n)  # fit may skip batches (throttled)
            if batch % 10 == 0 or batch + 1 == self.steps:
                self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.1 and batch + 1 < self.steps:
            return
        self._last_draw = now
        self._drawn = True
        done = int(30 * (batch + 1) / self.steps)
        bar = "=" * max(done - 1, 0) + (">" if done < 30 else "=") + "." * (30 - done)
        self.stream.write(f"\rEpoch {self._epoch_number}/{self.epochs} [{bar}] "
                          f"{batch + 1}/{self.steps} - loss: {loss:.4f}")
        self.stream.flush()

    _drawn = False  # a text bar is on screen without its end of line

    def on_train_end(self, logs=None) -> None:
        if self._bar is not None:  # training stopped within an epoch (Ctrl-C)
            self._bar.close()
            self._bar = None
        elif self._in_epoch and self._tqdm is not None and self.verbose == 1:
            self.stream.write(self._tqdm_line(self._seen, f"loss={self._loss:.4f}") + "\n")
            self.stream.flush()
        elif self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
        self._in_epoch = False

    def on_epoch_end(self, epoch, logs=None) -> None:
        self._in_epoch = False
        elapsed = time.perf_counter() - self._start
        metrics = " - ".join(f"{k}: {v:.4g}" if k == "lr" else f"{k}: {v:.4f}"
                             for k, v in (logs or {}).items())
        if self._bar is not None:
            self._bar.set_postfix_str(metrics, refresh=False)
            self._bar.close()
            self._bar = None
            return
        if self.verbose == 1 and self._tqdm is not None:
            self.stream.write(self._tqdm_line(self.steps, metrics) + "\n")
        elif self.verbose == 1:
            self._drawn = False
            self.stream.write(f" - {elapsed:.2f}s - {metrics}\n")
        elif self.verbose == 2:
            self.stream.write(f"Epoch {self._epoch_number}/{self.epochs} - {elapsed:.2f}s - "
                              f"{metrics}\n")
        self.stream.flush()
