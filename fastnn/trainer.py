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
import numbers
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
            validation_data=None, validation_split: float = 0.0, shuffle: bool = True,
            seed: int | None = None, callbacks=None, verbose: int = 1,
            sample_weight=None) -> History:
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
        shuffle : bool
            Reshuffle the training samples every epoch.
        seed : int, optional
            Seeds shuffling and dropout; each epoch's generator is derived from
            (seed, epoch), so an interrupted and resumed training repeats exactly.
            Default: the seed of the previous fit, else the model's seed, else fresh entropy.
        callbacks : list of Callback, optional
        verbose : 0, 1 or 2
            Silent, a progress bar per epoch, or one line per epoch.
        sample_weight : array-like of shape (n,), optional
            Non-negative per-sample weights of the loss.

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
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle must be True or False; got {shuffle!r}")
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

        X = _checks.features("X", X, model.input_dim, model.dtype)
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
            val = (X[n_train:], targets[n_train:], None if weights is None else weights[n_train:])
            X, targets = X[:n_train], targets[:n_train]
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
            return _run(model, X, targets, weights, val, epochs, batch_size, shuffle,
                        callbacks, verbose, has_bn)


class _Buffers:
    """Per-batch-size buffers of the loop: batch inputs, targets, weights, metrics."""

    def __init__(self, model, X, targets, weights) -> None:
        self.model, self.X, self.targets, self.weights = model, X, targets, weights
        self._cache: dict[int, tuple] = {}

    def get(self, size: int) -> tuple:
        bufs = self._cache.get(size)
        if bufs is None:
            t_shape = (size,) + self.targets.shape[1:]
            bufs = (np.empty((size, self.X.shape[1]), self.X.dtype),
                    np.empty(t_shape, self.targets.dtype),
                    None if self.weights is None else np.empty(size),
                    np.empty(size),  # per-row losses
                    np.empty(size, np.intp),  # predicted classes
                    np.empty(size, np.bool_))  # correct?
            self._cache[size] = bufs
        return bufs


def _run(model, X, targets, weights, val, epochs, batch_size, shuffle, callbacks, verbose,
         has_bn) -> History:
    n = X.shape[0]
    opt = model.optimizer
    sizes = batch_sizes(n, batch_size, merge_single=has_bn)
    history = History()
    all_callbacks = [history, *callbacks]
    if verbose:
        all_callbacks.append(ProgressBar(verbose, epochs, len(sizes)))
    for cb in all_callbacks:
        cb.set_model(model)
    model.stop_training = False
    model.stop_reason = None
    classification = model.loss.classification
    buffers = _Buffers(model, X, targets, weights)
    # The common case runs planned steps (one compiled pass per batch size, see _plan).
    plan = TrainPlan(model, X, targets) if plan_unsupported(model, weights) is None else None
    in_order = np.arange(n, dtype=np.int64) if plan is not None and not shuffle else None
    # Snapshots at the start of this epoch and the one before (for the non-finite policy):
    # allocated once, copied into once per epoch, never touched by a step.
    snapshots = (_Snapshot(model), _Snapshot(model))
    for cb in all_callbacks:
        cb.on_train_begin()
    first = model.epochs_trained
    for epoch in range(first, first + epochs):
        opt.set_epoch(epoch)
        for cb in all_callbacks:
            cb.on_epoch_begin(epoch)
        lr_at_start = opt.lr
        rng = np.random.default_rng([model.train_seed, epoch])
        order = rng.permutation(n) if shuffle else None
        dropout_rng = np.random.default_rng([model.train_seed, epoch, 1])
        snapshots = (snapshots[1], snapshots[0])  # [0]: this epoch's start, [1]: the last
        snapshots[0].take(model)
        if plan is not None:
            plan.set_order(order if order is not None else in_order)
        loss_sum = 0.0
        correct = 0
        start = 0
        for b, size in enumerate(sizes):
            if plan is not None:
                loss = plan.step(start, size)  # forward, loss and backward
                hits = plan.correct
            else:
                loss, hits = _layer_step(model, X, targets, weights, order, start, size,
                                         buffers, dropout_rng, classification)
            start += size
            if not math.isfinite(loss):
                _stop_non_finite(model, history, epoch, b, loss, snapshots,
                                 first_epoch=epoch == first)
                break
            opt.step(model._params, model._grads)
            loss_sum += loss * size
            correct += hits
            if verbose == 1 or callbacks:
                batch_logs = {"loss": loss_sum / start}
                for cb in all_callbacks:
                    cb.on_batch_end(b, batch_logs)
        if model.stop_reason is not None and history.stop_reason is not None:
            break  # non-finite loss: the epoch is not recorded
        logs = {"loss": loss_sum / n}
        if classification:
            logs["accuracy"] = correct / n
        if val is not None:
            result = model._evaluate_arrays(*val)
            logs.update({f"val_{k}": v for k, v in result.items()})
        logs["lr"] = lr_at_start
        model.epochs_trained = epoch + 1
        for cb in all_callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            history.stop_reason = model.stop_reason
            break
    for cb in all_callbacks:
        cb.on_train_end()
    model.history = history
    return history


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
    """Parameters, BatchNorm state and optimizer state (and step count), copied."""

    def __init__(self, model) -> None:
        self.params = np.empty_like(model._params)
        self.states = np.empty_like(model._states)
        self.opt_state = {k: np.empty_like(v)
                          for k, v in model.optimizer.state_arrays().items()}
        self.iterations = 0

    def take(self, model) -> None:
        np.copyto(self.params, model._params)
        np.copyto(self.states, model._states)
        for name, arr in model.optimizer.state_arrays().items():
            np.copyto(self.opt_state[name], arr)
        self.iterations = model.optimizer.iterations

    def restore(self, model) -> None:
        np.copyto(model._params, self.params)
        np.copyto(model._states, self.states)
        for name, arr in model.optimizer.state_arrays().items():
            np.copyto(arr, self.opt_state[name])
        model.optimizer.iterations = self.iterations


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
