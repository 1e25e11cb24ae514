"""The fit loop: validation, batching, the training step, callbacks, the non-finite policy.

:class:`Trainer` sits below the model (as Keras' ``Model(Trainer, ...)``):
:class:`fastnn.Sequential` inherits ``fit`` from it, and the loop knows the model only by
this protocol, never by its module:

* facts: ``dtype``, ``built``, ``input_dim``, ``output_dim``, ``static_output_dim()``,
  ``layers`` (each layer's ``needs_batch_statistics``), ``loss``, ``classes_``, ``seed``,
  ``optimizer``, ``epochs_trained``, ``train_seed``, ``plan_steps``, ``fused_softmax``,
  ``_train_layers``;
* the flat buffers ``_params``, ``_grads``, ``_states`` (parameters, gradients, state);
* ``build(input_dim)``; the per-layer pass ``_forward(x, rng)``, ``_backward(dout)`` and
  ``_output_grad_buffer(n)``; ``_evaluate_arrays(X, targets, weights)``.
"""

from __future__ import annotations

import math
import mmap
import numbers
import time
import warnings

import numpy as np

from . import _checks, _targets, _threads
from . import optimizers as optimizers_mod
from ._plan import TrainPlan, plan_unsupported
from .callbacks import Callback, History, ProgressBar

__all__ = ["Trainer", "batch_sizes"]


def batch_sizes(n: int, batch_size: int, merge_single: bool) -> list[int]:
    """Sizes of the batches of one epoch over ``n`` samples.

    The last batch is short when ``batch_size`` does not divide ``n``. With
    ``merge_single`` (the model has BatchNorm, whose training statistics need two
    samples) a last batch of a single sample is merged into the one before it,
    which is then ``batch_size + 1`` long.

    >>> batch_sizes(10, 4, False)
    [4, 4, 2]
    >>> batch_sizes(9, 4, True)
    [4, 5]
    """
    sizes = [batch_size] * (n // batch_size)
    if n % batch_size:
        sizes.append(n % batch_size)
    if merge_single and len(sizes) > 1 and sizes[-1] == 1:
        last = sizes.pop()
        sizes[-1] += last
    return sizes


def _check_validation_data(model, validation_data, n_features, output_dim, classes):
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise ValueError("validation_data must be a tuple (X_val, y_val) or "
                         "(X_val, y_val, sample_weight_val)")
    Xv = _checks.features("validation_data X", validation_data[0], n_features, model.dtype)
    yv, _, _ = _targets.encode(validation_data[1], Xv.shape[0],
                               classification=model.loss.classification,
                               output_dim=output_dim, dtype=model.dtype, classes=classes,
                               name="validation_data y")
    wv = None
    if len(validation_data) == 3:
        wv = _checks.sample_weight("sample_weight", validation_data[2], Xv.shape[0])
    return Xv, yv, wv


class Trainer:
    """The training loop of a model (see the module docstring for what it needs)."""

    def fit(self, X, y, epochs: int = 1, batch_size: int = 32, optimizer=None,
            validation_data=None, validation_split: float = 0.0, shuffle: bool | str = True,
            seed: int | None = None, callbacks=None, verbose: int = 1,
            sample_weight=None, block_rows: int | None = None) -> History:
        """Train for ``epochs`` more epochs; returns a :class:`~fastnn.callbacks.History`.

        Calling ``fit`` again continues from where the last call stopped: same optimizer
        and its state, epoch count, seed.

        Parameters
        ----------
        X : array-like of shape (n, features)
            Finite numbers; cast once to the model's dtype (float64 data into a
            float32 model is rounded to float32 here).
        y : array-like of shape (n,) (or (n, outputs) for a regressor)
            Class labels of any integer or string values (mapped to output indices and
            back; integers in [0, outputs) map to themselves), or regression targets.
        epochs : int >= 0
            Epochs to run in this call (training continues across calls).
        batch_size : int >= 1
            The last batch of an epoch is shorter when ``batch_size`` does not divide the
            number of samples; if the model has BatchNorm and that last batch would hold a
            single sample (which has no batch variance), it is merged into the batch before.
        optimizer : Optimizer or str, optional
            Replaces the model's optimizer; by default the previous one (and its state) is
            kept, or ``Adam()`` on the first call.
        validation_data : (X_val, y_val[, sample_weight_val]), optional
        validation_split : float in [0, 1)
            Hold out the last fraction of (X, y), before shuffling (as Keras does).
        shuffle : bool or "blocks"
            Reshuffle the training samples every epoch. ``"blocks"``: cut the rows into
            contiguous blocks of ``block_rows``, and every epoch visit the blocks in a
            shuffled order, each read (and cast) whole into a buffer and its rows
            shuffled within it; batches do not cross blocks. Data larger than memory is
            then read sequentially, a block at a time, and working memory is one block.
        seed : int, optional
            Seeds shuffling and dropout; each epoch's generator is derived from
            (seed, epoch), so an interrupted and resumed training repeats exactly.
            Default: the seed of the previous fit, else the model's seed, else fresh entropy.
        callbacks : list of Callback, optional
        verbose : 0, 1 or 2
            Silent, a progress bar per epoch, or one line per epoch.
        sample_weight : array-like of shape (n,), optional
            Non-negative per-sample weights of the loss.
        block_rows : int >= 1, optional
            Rows per block for ``shuffle="blocks"`` (and for block-by-block reading),
            rounded up to a multiple of ``batch_size``; default: about 32 MiB of ``X``.

        Returns
        -------
        History
            Per-epoch ``loss``, ``accuracy`` (classifier), ``val_loss``, ``val_accuracy``, ``lr``.

        Raises
        ------
        ValueError, TypeError
            On any bad argument, before the model is changed in any way.
        """
        # ---- validate everything first: a rejected call leaves the model unchanged ----------
        model = self
        epochs = _checks.integer("epochs", epochs, minimum=0)
        batch_size = _checks.integer("batch_size", batch_size, minimum=1)
        if isinstance(verbose, bool) or verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2; got {verbose!r}")
        if not (isinstance(shuffle, (bool, np.bool_)) or (isinstance(shuffle, str)
                                                        and shuffle == "blocks")):
            raise TypeError(f"shuffle must be True, False or 'blocks'; got {shuffle!r}")
        shuffle = shuffle if isinstance(shuffle, str) else bool(shuffle)
        if block_rows is not None:
            block_rows = _checks.integer("block_rows", block_rows, minimum=1)
        if not isinstance(validation_split, numbers.Real) or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1); got {validation_split!r}")
        if validation_split and validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
        if seed is not None:
            seed = _checks.integer("seed", seed, minimum=0)
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
            raise TypeError(f"callbacks must be a list of fastnn.callbacks.Callback; got "
                            f"{type(callbacks).__name__} (wrap a single callback in a list)")
        callbacks = list(callbacks)
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks[{i}] must be a fastnn.callbacks.Callback; got "
                                f"{type(cb).__name__}")
        new_optimizer = None if optimizer is None else optimizers_mod.get(optimizer)

        X = _checks.rows("X", X, model.input_dim, model.dtype)
        n = X.shape[0]
        output_dim = model.output_dim if model.built else model.static_output_dim()
        targets, classes, targets_1d = _targets.encode(
            y, n, classification=model.loss.classification, output_dim=output_dim,
            dtype=model.dtype, classes=model.classes_)
        weights = _checks.sample_weight("sample_weight", sample_weight, n)
        has_bn = any(layer.needs_batch_statistics for layer in model.layers)

        if validation_split:
            n_train = int(math.floor(n * (1.0 - validation_split)))
            if n_train < 1 or n_train == n:
                raise ValueError(f"validation_split={validation_split} leaves {n_train} of {n} "
                                 "samples for training: need at least one on each side")
            val = (_checks.features("X", X[n_train:], None, model.dtype), targets[n_train:],
                   None if weights is None else weights[n_train:])
            X, targets = _first_rows(X, n_train), targets[:n_train]
            weights = None if weights is None else weights[:n_train]
            n = n_train
        else:
            val = None
        if has_bn and (n < 2 or batch_size == 1):
            raise ValueError(f"BatchNorm needs at least 2 samples per training batch; got "
                             f"{n} training samples with batch_size={batch_size}")
        if weights is not None and not np.any(weights > 0):
            raise ValueError("sample_weight of the training samples is zero everywhere")
        if validation_data is not None:
            val = _check_validation_data(model, validation_data, X.shape[1], output_dim, classes)
        reported = {"loss", "lr"} | ({"accuracy"} if model.loss.classification else set())
        if val is not None:
            reported |= {f"val_{key}" for key in reported - {"lr"}}
        for cb in callbacks:
            cb.check_logs(reported)

        rows = _Rows(X, targets, weights, model.dtype, batch_size, shuffle, has_bn, block_rows)

        # ---- from here on the model changes ------------------------------------------------
        if not model.built:
            model.build(X.shape[1])
        if model.loss.classification and model.classes_ is None:
            model.classes_ = classes
        if not model.loss.classification:
            model._targets_1d = targets_1d
        if new_optimizer is not None:
            model.optimizer = new_optimizer
        elif model.optimizer is None:
            model.optimizer = optimizers_mod.Adam()
        opt = model.optimizer
        opt.build(model.n_params, model.dtype)
        if seed is not None:
            model.train_seed = seed
        elif model.train_seed is None:
            model.train_seed = model.seed if model.seed is not None else int(
                np.random.SeedSequence().entropy % (2**63))
        # BLAS threads by the size of a batch's largest product (see fastnn._threads)
        threads = _threads.threads_for(min(batch_size, n) * _threads.macs_per_row(model.layers))
        with _threads.limited(threads):
            return _run(model, rows, val, epochs, callbacks, verbose)


_BLOCK_BYTES = 1 << 25  # default block of shuffle="blocks": about 32 MiB of X


class _RowRange:
    """Rows ``[0, n)`` of a sliceable array-like, itself sliceable (nothing is read)."""

    def __init__(self, X, n: int) -> None:
        self.X, self.shape, self.dtype = X, (n,) + tuple(X.shape[1:]), X.dtype

    def __getitem__(self, key: slice):
        start, stop, _ = key.indices(self.shape[0])
        return self.X[start:stop]


def _memory_mapped(X) -> bool:
    """Whether ``X`` is (a view of) a memory-mapped file: np.memmap, or an ndarray over an
    mmap (``np.asarray`` of a memmap, as scikit-learn's checks return it)."""
    while isinstance(X, np.ndarray):
        if isinstance(X, np.memmap):
            return True
        X = X.base
    return isinstance(X, mmap.mmap)


def _first_rows(X, n: int):
    return X[:n] if isinstance(X, np.ndarray) else _RowRange(X, n)


class _Rows:
    """Where each epoch's batches come from: a sequence of blocks of rows, each given as
    (X, targets, weights, order, batch sizes) to run in turn.

    Chosen once per fit, from X and ``shuffle``:

    * in place (X C-contiguous of the model's dtype, in memory or memory-mapped; or an
      in-memory array or non-memmap array-like with ``shuffle=True`` or ``False``, cast
      whole up front): one block, all of X, in the epoch's order (a permutation, or
      None: in turn);
    * batch by batch (a memmap of another dtype, ``shuffle=True``): each batch's rows,
      taken in the epoch's order and cast into a staging buffer of one batch;
    * block by block (``shuffle="blocks"``, or a memmap or array-like of another dtype
      with ``shuffle=False``): contiguous blocks read whole and cast into a staging
      buffer, visited in a shuffled order and shuffled within (``"blocks"``) or in turn.

    Working memory beyond X: the epoch's order (8 bytes a row) when in place or batch by
    batch, one staging block or batch otherwise; the targets are held whole (encoded).
    """

    def __init__(self, X, targets, weights, dtype, batch_size, shuffle, merge_single,
                 block_rows) -> None:
        self.n = n = X.shape[0]
        self._ends: dict[int, tuple] = {}  # id(sizes) -> (sizes, their run ends)
        self.targets, self.weights, self.shuffle = targets, weights, shuffle
        self.batch_size, self.merge_single = batch_size, merge_single
        usable = (isinstance(X, np.ndarray) and X.dtype == dtype and X.flags.c_contiguous
                  and X.flags.aligned)
        mapped = _memory_mapped(X)
        streamed = mapped or not isinstance(X, np.ndarray)
        if shuffle == "blocks" or (not usable and streamed and not shuffle):
            self.mode = "blocks"
            self.blocks = self._cut(n, block_rows, X)
            self.sizes = [batch_sizes(e - s, batch_size, merge_single) for s, e in self.blocks]
            capacity = max(e - s for s, e in self.blocks)
        elif not usable and mapped:
            self.mode = "batches"
            self.sizes = batch_sizes(n, batch_size, merge_single)
            capacity = max(self.sizes)
        else:
            self.mode = "in place"
            if not usable:
                X = np.ascontiguousarray(np.asarray(X), dtype=dtype)
            self.sizes = batch_sizes(n, batch_size, merge_single)
            capacity = 0
        self.source = X
        if capacity:
            self.X = np.empty((capacity, X.shape[1]), dtype)
            self.block_targets = np.empty((capacity,) + targets.shape[1:], targets.dtype)
            self.block_weights = None if weights is None else np.empty(capacity)
            self.local_order = np.arange(capacity, dtype=np.int64)
        else:
            self.X, self.block_targets, self.block_weights = X, targets, weights
            self.local_order = None  # made when the plan needs the rows in turn
        self.n_batches = (sum(len(s) for s in self.sizes) if self.mode == "blocks"
                          else len(self.sizes))

    def _cut(self, n: int, block_rows: int | None, X) -> list[tuple[int, int]]:
        """Contiguous (start, stop) blocks of a multiple of batch_size rows; a last block
        of one row joins the one before when BatchNorm needs two."""
        bs = self.batch_size
        if block_rows is None:
            row_bytes = max(int(X.shape[1]), 1) * np.dtype(X.dtype).itemsize
            block_rows = max(_BLOCK_BYTES // row_bytes, 1)
        block_rows = -(-block_rows // bs) * bs
        blocks = [(s, min(s + block_rows, n)) for s in range(0, n, block_rows)]
        if self.merge_single and len(blocks) > 1 and blocks[-1][1] - blocks[-1][0] == 1:
            blocks[-2:] = [(blocks[-2][0], n)]
        return blocks

    def run_ends(self, sizes: list) -> list:
        """:func:`_run_ends` of a list of batch sizes this object made (the same lists
        every epoch): computed once per list."""
        if not isinstance(sizes, list):  # a batch's own (size,): nothing to keep
            return _run_ends(sizes)
        cached = self._ends.get(id(sizes))
        if cached is None or cached[0] is not sizes:
            cached = self._ends[id(sizes)] = (sizes, _run_ends(sizes))
        return cached[1]

    def epoch(self, rng, need_order: bool):
        """The blocks of one epoch, shuffled from ``rng``: (X, targets, weights, order or
        None (rows in turn; an arange if ``need_order``), batch sizes)."""
        if self.mode == "in place":
            if self.shuffle:
                order = rng.permutation(self.n)
            elif need_order:
                if self.local_order is None:
                    self.local_order = np.arange(self.n, dtype=np.int64)
                order = self.local_order
            else:
                order = None
            yield self.X, self.targets, self.weights, order, self.sizes
        elif self.mode == "batches":
            order = rng.permutation(self.n)
            start = 0
            for size in self.sizes:
                self._stage_rows(order[start:start + size])
                start += size
                yield (self.X, self.block_targets, self.block_weights,
                       self.local_order if need_order else None, (size,))
        else:
            visit = rng.permutation(len(self.blocks)) if self.shuffle else range(len(self.blocks))
            for k in visit:
                start, stop = self.blocks[k]
                self._stage_block(start, stop)
                if self.shuffle:
                    order = self.local_order[:stop - start]
                    order[...] = np.arange(stop - start)
                    rng.shuffle(order)
                else:
                    order = self.local_order if need_order else None
                yield self.X, self.block_targets, self.block_weights, order, self.sizes[k]

    def _stage_rows(self, idx) -> None:
        m = idx.size
        self.X[:m] = np.take(self.source, idx, axis=0)
        np.take(self.targets, idx, axis=0, out=self.block_targets[:m])
        if self.weights is not None:
            np.take(self.weights, idx, out=self.block_weights[:m])

    def _stage_block(self, start: int, stop: int) -> None:
        m = stop - start
        self.X[:m] = np.asarray(self.source[start:stop])
        self.block_targets[:m] = self.targets[start:stop]
        if self.weights is not None:
            self.block_weights[:m] = self.weights[start:stop]


class _Buffers:
    """Per-batch-size buffers of the per-layer path: batch inputs, targets, weights,
    metrics."""

    def __init__(self, rows) -> None:
        self.width, self.rows = rows.X.shape[1], rows
        self._cache: dict[int, tuple] = {}

    def get(self, size: int) -> tuple:
        bufs = self._cache.get(size)
        if bufs is None:
            targets = self.rows.block_targets
            bufs = (np.empty((size, self.width), self.rows.X.dtype),
                    np.empty((size,) + targets.shape[1:], targets.dtype),
                    None if self.rows.weights is None else np.empty(size),
                    np.empty(size),  # per-row losses
                    np.empty(size, np.intp),  # predicted classes
                    np.empty(size, np.bool_))  # correct?
            self._cache[size] = bufs
        return bufs


def _overrides_batch_end(cb) -> bool:
    return type(cb).on_batch_end is not Callback.on_batch_end


class _BatchReport:
    """Calls ``on_batch_end``: every batch if a user callback defines it; else only the
    progress bar's (verbose=1), about every ``_BAR_SECONDS`` and on the last batch."""

    _BAR_SECONDS = 0.05

    def __init__(self, callbacks, bar, steps: int) -> None:
        self.every = [cb for cb in callbacks if _overrides_batch_end(cb)]
        self.bar = bar if bar is not None and bar.verbose == 1 else None
        if self.every and self.bar is not None:
            self.every.append(self.bar)
        self.last = steps - 1
        self.stride, self.time = 1, 0.0

    def first(self) -> int:
        """The first batch to report this epoch (-1: none)."""
        self.stride, self.time = 1, time.perf_counter()
        return 0 if self.every or self.bar is not None else -1

    def __call__(self, batch: int, loss: float) -> int:
        """Report ``batch`` (the epoch's mean loss so far); the next batch to report."""
        logs = {"loss": loss}
        if self.every:
            for cb in self.every:
                cb.on_batch_end(batch, logs)
            return batch + 1
        self.bar.on_batch_end(batch, logs)
        now = time.perf_counter()
        if now - self.time < self._BAR_SECONDS:
            self.stride *= 2
        elif self.stride > 1:
            self.stride //= 2
        self.time = now
        return min(batch + self.stride, self.last)


class _Position:
    """Where the loop stopped early: epoch, batch (and the non-finite loss, if that was it)."""

    epoch = batch = loss = None


def _run(model, rows, val, epochs, callbacks, verbose) -> History:
    opt = model.optimizer
    history = History()
    all_callbacks = [history, *callbacks]
    bar = ProgressBar(verbose, epochs, rows.n_batches) if verbose else None
    if bar is not None:
        all_callbacks.append(bar)
    for cb in all_callbacks:
        cb.set_model(model)
    model.stop_training = False
    model.stop_reason = None
    report = _BatchReport(callbacks, bar, rows.n_batches)
    # The common case runs planned steps (one compiled pass per batch size, see _plan).
    plan = (TrainPlan(model, rows.X, rows.block_targets)
            if plan_unsupported(model, rows.weights) is None else None)
    # Snapshots at the start of this epoch and the one before (for the non-finite policy
    # and Ctrl-C): allocated once, copied into once per epoch, never touched by a step.
    snapshots = (_Snapshot(model), _Snapshot(model))
    opt_epoch = opt.get_config()["epoch"]  # the optimizer's epoch before this fit
    first = model.epochs_trained
    where = _Position()
    buffers = _Buffers(rows) if plan is None else None
    dirty = False  # whether the model may differ from snapshots[0] (an epoch is under way)
    try:
        for cb in all_callbacks:
            cb.on_train_begin()
        for epoch in range(first, first + epochs):
            where.epoch, where.batch = epoch, None
            snapshots = (snapshots[1], snapshots[0])  # [0]: this epoch's start, [1]: the last
            snapshots[0].take(model, opt_epoch if epoch == first else epoch - 1)
            dirty = True
            opt.set_epoch(epoch)
            for cb in all_callbacks:
                cb.on_epoch_begin(epoch)
            lr_at_start = opt.lr
            rng = np.random.default_rng([model.train_seed, epoch])
            dropout_rng = None if plan is not None else np.random.default_rng(
                [model.train_seed, epoch, 1])
            totals = _epoch(model, rows, plan, buffers, rng, dropout_rng, report, where)
            if totals is None:  # a non-finite loss: restored, the epoch is not recorded
                _stop_non_finite(model, history, epoch, where.batch, where.loss, snapshots,
                                 first_epoch=epoch == first)
                break
            loss_sum, correct = totals
            logs = {"loss": loss_sum / rows.n}
            if model.loss.classification:
                logs["accuracy"] = correct / rows.n
            if val is not None:
                result = model._evaluate_arrays(*val)
                logs.update({f"val_{k}": v for k, v in result.items()})
            logs["lr"] = lr_at_start
            model.epochs_trained = epoch + 1
            history.on_epoch_end(epoch, logs)
            dirty = False  # the epoch is complete (and recorded)
            for cb in all_callbacks[1:]:
                cb.on_epoch_end(epoch, logs)
            if model.stop_training:
                history.stop_reason = model.stop_reason
                break
    except KeyboardInterrupt:
        _roll_back(model, history, snapshots[0] if dirty else None, where, first)
        for cb in all_callbacks:
            cb.on_train_end()
        model.history = history
        raise
    for cb in all_callbacks:
        cb.on_train_end()
    model.history = history
    return history


def _epoch(model, rows, plan, buffers, rng, dropout_rng, report, where):
    """One epoch's batches: (loss summed over rows, rows predicted right), or None if
    a loss was not finite (``where.batch``, ``where.loss`` say which; that batch's
    gradients are not applied)."""
    opt = model.optimizer
    opt_step, params, grads = opt.step, model._params, model._grads
    classification = model.loss.classification
    isfinite = math.isfinite
    # planned steps with the optimizer's update fused: runs of batches in one call each
    fused = opt.fused_step(params, grads) if plan is not None else None
    loss_sum = 0.0
    correct = 0
    b = 0
    seen = 0
    next_report = report.first()
    try:
        for X, targets, weights, order, sizes in rows.epoch(rng, plan is not None):
            if plan is not None:
                plan.set_order(order)
            start = 0
            i = 0
            ends = rows.run_ends(sizes) if fused is not None else ()
            while fused is not None and i < len(sizes):
                size = sizes[i]
                run = ends[i] - i  # the batches of this size from here (all but maybe the last)
                if next_report >= b:  # up to the batch to report, at most
                    run = min(run, next_report - b + 1)
                try:
                    steps, loss_sum, hits, loss = plan.steps(start, size, run, fused,
                                                             opt.iterations, loss_sum)
                except KeyboardInterrupt:
                    b += plan.steps_done()
                    raise
                opt.iterations += steps
                correct += hits
                start += steps * size
                i += steps
                if steps < run:  # a non-finite loss: where, and its update not applied
                    where.batch, where.loss = b + steps, loss
                    return None
                b += steps - 1  # the last batch run
                if b == next_report:
                    next_report = report(b, loss_sum / (seen + start))
                b += 1
            for size in sizes if fused is None else ():  # one step at a time
                if plan is not None:
                    loss = plan.step(start, size)  # forward, loss and backward
                    hits = plan.correct
                else:
                    loss, hits = _layer_step(model, X, targets, weights, order, start, size,
                                             buffers, dropout_rng, classification)
                start += size
                if not isfinite(loss):
                    where.batch, where.loss = b, loss
                    return None
                opt_step(params, grads)
                loss_sum += loss * size
                correct += hits
                if b == next_report:
                    next_report = report(b, loss_sum / (seen + start))
                b += 1
            seen += start
    except KeyboardInterrupt:
        where.batch = b
        raise
    return loss_sum, correct


def _run_ends(sizes) -> list:
    """For each batch i, the end (exclusive) of the run of equal sizes it is in: one pass
    over the epoch, where finding each chunk's run by scanning from its start cost a pass
    per progress report (8 an epoch: ~1.5 us a batch on a 64-32-10 net at batch 32)."""
    ends = [0] * len(sizes)
    end = len(sizes)
    for j in range(len(sizes) - 1, -1, -1):
        if j + 1 < len(sizes) and sizes[j + 1] != sizes[j]:
            end = j + 1
        ends[j] = end
    return ends


def _layer_step(model, X, targets, weights, order, start, size, buffers, dropout_rng,
                classification) -> tuple[float, int]:
    """One batch through the per-layer path: (loss, correctly classified rows); the
    gradients are left in model._grads unless the loss is not finite."""
    xb, yb, wb, row_loss, pred, hit = buffers.get(size)
    if order is None:
        xb, yb = X[start:start + size], targets[start:start + size]
        wb = None if weights is None else weights[start:start + size]
    else:
        # mode="clip" writes straight into out (the default "raise" buffers a
        # batch-sized temporary); the indices come from a permutation, so valid.
        idx = order[start:start + size]
        np.take(X, idx, axis=0, out=xb, mode="clip")
        np.take(targets, idx, axis=0, out=yb, mode="clip")
        if weights is not None:
            np.take(weights, idx, out=wb, mode="clip")
    logits = model._forward(xb, dropout_rng)
    grad = model._output_grad_buffer(size)
    loss = model.loss(logits, yb, grad, sample_weight=wb,
                      row_loss=row_loss if classification else None)
    if not math.isfinite(loss):
        return loss, 0
    model._backward(grad)
    if not classification:
        return loss, 0
    np.argmax(logits, axis=1, out=pred)
    np.equal(pred, yb, out=hit)
    return loss, int(np.count_nonzero(hit))


class _Snapshot:
    """The training state at an epoch's start, copied: parameters, BatchNorm state,
    optimizer state and step count, its epoch and learning rate, ``epochs_trained``."""

    def __init__(self, model) -> None:
        self.params = np.empty_like(model._params)
        self.states = np.empty_like(model._states)
        self.opt_state = {k: np.empty_like(v)
                          for k, v in model.optimizer.state_arrays().items()}
        self.iterations = self.opt_epoch = self.epochs_trained = 0
        self.learning_rate = None

    def take(self, model, opt_epoch: int) -> None:
        np.copyto(self.params, model._params)
        np.copyto(self.states, model._states)
        opt = model.optimizer
        for name, arr in opt.state_arrays().items():
            np.copyto(self.opt_state[name], arr)
        self.iterations = opt.iterations
        self.learning_rate = opt.learning_rate
        self.opt_epoch = opt_epoch
        self.epochs_trained = model.epochs_trained

    def restore(self, model) -> None:
        np.copyto(model._params, self.params)
        np.copyto(model._states, self.states)
        opt = model.optimizer
        for name, arr in opt.state_arrays().items():
            np.copyto(arr, self.opt_state[name])
        opt.iterations = self.iterations
        opt.learning_rate = self.learning_rate
        opt.set_epoch(self.opt_epoch)


def _roll_back(model, history, snapshot, where, first) -> None:
    """Ctrl-C: back to the end of the last complete epoch (``snapshot``, the start of
    the epoch under way; None if none was under way), the history cut to match."""
    if snapshot is not None:
        snapshot.restore(model)
        model.epochs_trained = snapshot.epochs_trained
    kept = model.epochs_trained - first
    history.epoch = history.epoch[:kept]
    history.history = {k: v[:kept] for k, v in history.history.items() if v[:kept]}
    at = "" if where.epoch is None else f" in epoch {where.epoch + 1}" + (
        "" if where.batch is None else f", batch {where.batch + 1}")
    done = model.epochs_trained
    state = f"the end of epoch {done} (its last complete epoch)" if done else "its initial state"
    reason = (f"interrupted (KeyboardInterrupt){at}: the model was "
              f"{'rolled back to' if snapshot is not None else 'left at'} {state}")
    model.stop_training = True
    model.stop_reason = history.stop_reason = reason


def _stop_non_finite(model, history, epoch, batch, loss, snapshots, first_epoch) -> None:
    """The non-finite loss policy: stop, restore the last weights known to give a finite
    loss, and say so.

    Weights at the start of an epoch gave a finite loss on that epoch's first batch, so
    a failure after the first batch restores this epoch's start, a failure on the first
    batch the previous epoch's start (weights, BatchNorm statistics, optimizer moments
    and step count together).
    """
    if batch > 0:
        snapshots[0].restore(model)
        restored = f"the weights from the start of epoch {epoch + 1} were restored"
    elif not first_epoch:
        snapshots[1].restore(model)
        restored = f"the weights from the start of epoch {epoch} were restored"
    else:
        snapshots[0].restore(model)
        restored = ("no earlier weights gave a finite loss; the weights from before this "
                    "fit were kept")
    reason = (f"non-finite loss ({loss}) at epoch {epoch + 1}, batch {batch + 1}: training "
              f"stopped and {restored}")
    model.stop_training = True
    model.stop_reason = history.stop_reason = reason
    warnings.warn(reason, RuntimeWarning, stacklevel=3)
