"""scikit-learn estimators: :class:`FastNNClassifier` and :class:`FastNNRegressor`.

Drop-in replacements for ``sklearn.neural_network.MLPClassifier`` /
``MLPRegressor``: the same parameters where the meaning is the same, the same
learned attributes, usable in Pipeline, GridSearchCV, cross_val_score, clone
and pickle; trained by fastnn (Cython kernels, batch normalisation, Adam's
decay schedules). Needs scikit-learn: ``pip install "fastnn-cpu[sklearn]"``.

Differences from MLPClassifier, on purpose:

* ``batch_norm=True`` (default) puts a BatchNorm after each hidden Dense layer
  (whose bias it makes redundant); ``dropout`` adds inverted dropout.
* ``solver`` is one of ``adam``, ``adamw``, ``sgd``, ``rmsprop`` (no lbfgs).
* ``learning_rate`` also takes fastnn's per-epoch decays: ``inverse_time``
  (``decay_rate`` is k), ``exponential`` (``decay_rate`` is the factor),
  ``inverse_sqrt`` (``lr / sqrt(epoch + 1)``), ``step`` (``decay_rate`` every 10
  epochs), ``cosine`` (to 0 at ``max_iter``); every schedule applies to every
  solver, Adam included (``invscaling`` is per step, as in MLPClassifier).
* ``alpha`` (L2) is applied as weight decay ``alpha / batch_size`` on all
  parameters (MLPClassifier exempts the biases); with ``solver="adamw"`` it is
  decoupled.
* ``warm_start=True`` and ``partial_fit`` keep the optimizer's state (Adam's
  moments and step count); MLPClassifier restarts Adam at each ``fit``.
* The output layer is a softmax for binary problems too (MLPClassifier uses a
  logistic unit); ``coefs_`` and ``intercepts_`` are the weights of the
  inference network, with each BatchNorm folded into the Dense layer before it.
* Supported targets: binary and multiclass labels (classifier), one or several
  continuous outputs (regressor). Multilabel and multioutput classification are
  rejected with a clear error.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils._param_validation import Interval, Options, StrOptions
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        'fastnn.sklearn needs scikit-learn: pip install "fastnn-cpu[sklearn]"'
        f" ({exc})") from None

from . import _checks, _names, optimizers, schedules
from .callbacks import Callback
from .layers import activation as activation_layer
from .layers import mlp
from .losses import MeanSquaredError, SoftmaxCrossEntropy
from .model import Sequential

__all__ = ["FastNNClassifier", "FastNNRegressor"]

_DECAYS = set(schedules.DECAYS) - {"none"}


# MLPClassifier's activation names (a subset of fastnn's vocabulary, fastnn._names).
_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
_SOLVERS = tuple(_names.OPTIMIZERS)


def _stalled(count: int, value: float, best: float, tol: float, maximize: bool = False) -> int:
    """MLPClassifier's plateau count: reset when ``value`` beats ``best`` by more than
    ``tol``, else one more epoch without improvement."""
    improved = value > best + tol if maximize else value < best - tol
    return 0 if improved else count + 1


class _Adaptive(Callback):
    """MLPClassifier's ``learning_rate="adaptive"``: divide the rate by 5 each time the
    training loss fails to fall by ``tol`` for two epochs in a row."""

    def __init__(self, tol: float) -> None:
        self.tol = tol
        self.best = np.inf
        self.bad = 0

    def on_epoch_end(self, epoch, logs=None) -> None:
        loss = logs["loss"]
        self.bad = _stalled(self.bad, loss, self.best, self.tol)
        self.best = min(self.best, loss)
        if self.bad >= 2:
            self.model.optimizer.lr = self.model.optimizer.lr / 5.0
            self.bad = 0


class _StopOnPlateau(Callback):
    """MLPClassifier's stopping rule: stop when the monitored quantity has not improved
    by ``tol`` for ``n_iter_no_change`` epochs (validation score with early stopping,
    else the training loss). Records the curves the estimator reports."""

    def __init__(self, estimator, tol, n_iter_no_change, score_fn) -> None:
        self.estimator = estimator
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.score_fn = score_fn
        self.stalled = 0
        self.stopped = False

    def on_epoch_end(self, epoch, logs=None) -> None:
        est = self.estimator
        est.loss_curve_.append(float(logs["loss"]))
        est.n_iter_ += 1
        if self.score_fn is not None:
            score = float(self.score_fn())
            est.validation_scores_.append(score)
            self.stalled = _stalled(self.stalled, score, est.best_validation_score_, self.tol,
                                    maximize=True)
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_params = (self.model._params.copy(), self.model._states.copy())
        else:
            loss = logs["loss"]
            self.stalled = _stalled(self.stalled, loss, est.best_loss_, self.tol)
            est.best_loss_ = min(est.best_loss_, loss)
        if self.stalled >= self.n_iter_no_change:
            self.stopped = True
            self.model.stop_training = True
            self.model.stop_reason = (
                f"no improvement of more than tol={self.tol} for {self.n_iter_no_change} "
                "consecutive epochs")


class _BaseFastNN(BaseEstimator):
    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(_ACTIVATIONS))],
        "solver": [StrOptions(set(_SOLVERS))],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"} | _DECAYS)],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "decay_rate": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"),
                             Options(Real, {np.inf})],
        "batch_norm": ["boolean"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "dtype": [StrOptions({"float32", "float64"})],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, decay_rate=0.1, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, batch_norm=True, dropout=0.0, dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.decay_rate = decay_rate
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.batch_norm = batch_norm
        self.dropout = dropout
        self.dtype = dtype

    # -- building blocks --------------------------------------------------------------------

    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, Integral) else list(sizes)
        if any(not isinstance(s, Integral) or s < 1 for s in sizes):
            raise ValueError("hidden_layer_sizes must contain positive integers; got "
                             f"{self.hidden_layer_sizes!r}")
        return [int(s) for s in sizes]

    def _seed(self) -> int:
        rs = self.random_state
        if rs is None:
            return int(np.random.SeedSequence().entropy % (2**32))
        if isinstance(rs, Integral):
            return int(rs)
        return int(rs.randint(np.iinfo(np.int32).max))  # a RandomState

    def _build_model(self, n_outputs: int, seed: int) -> Sequential:
        layers = mlp(self._hidden_sizes(), n_outputs, activation=activation_layer(self.activation),
                     batch_norm=self.batch_norm, dropout=self.dropout,
                     softmax=self._is_classifier)
        return Sequential(layers, dtype=self.dtype, seed=seed, loss=self._make_loss())

    def _rate(self, n_samples: int):
        if self.learning_rate == "invscaling":
            return schedules.PowerDecay(self.learning_rate_init, power=self.power_t,
                                        per_step=True)
        if self.learning_rate in _DECAYS:
            return schedules.decay(self.learning_rate, self.learning_rate_init,
                                   rate=self.decay_rate, total=self.max_iter)
        return self.learning_rate_init

    def _make_optimizer(self, n_samples: int, batch_size: int):
        lr = self._rate(n_samples)
        wd = self.alpha / batch_size
        if self.solver in ("adam", "adamw"):
            options = {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}
        elif self.solver == "rmsprop":
            options = {"epsilon": self.epsilon}
        else:
            options = {"momentum": self.momentum,
                       "nesterov": self.nesterovs_momentum and self.momentum > 0}
        return optimizers.make(self.solver, lr, weight_decay=wd, **options)

    def _batch(self, n_samples: int) -> int:
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                          "going to be clipped", UserWarning, stacklevel=3)
        return max(1, min(int(self.batch_size), n_samples))

    # -- fitting ------------------------------------------------------------------------------

    def _fit(self, X, y, sample_weight, *, incremental: bool, classes=None):
        first_call = not (incremental or self.warm_start) or not hasattr(self, "model_")
        self._check_target_type(y)
        X, y = validate_data(self, X, y, reset=first_call, multi_output=not self._is_classifier,
                             dtype=(np.float64, np.float32), ensure_min_samples=1,
                             y_numeric=not self._is_classifier)
        y = self._prepare_targets(y, first_call, classes)
        n_samples = X.shape[0]
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                                 ensure_non_negative=True)
        batch_size = self._batch(n_samples)
        if self.batch_norm and n_samples < 2:
            raise ValueError(f"{type(self).__name__} with batch_norm=True needs at least 2 "
                             f"samples (batch statistics); got {n_samples} sample")
        if self.batch_norm and batch_size == 1:
            batch_size = 2  # BatchNorm statistics need two samples per batch
        if first_call:
            seed = self._seed()
            self.model_ = self._build_model(self._n_model_outputs(), seed)
            self.model_.build(X.shape[1])
            self.model_.classes_ = self._model_classes()
            self.model_.optimizer = self._make_optimizer(n_samples, batch_size)
            self._seed_ = seed
            self.loss_curve_ = []
            self.n_iter_ = 0
            self.t_ = 0
            self.best_loss_ = np.inf
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = -np.inf if self.early_stopping else None
        model = self.model_

        score_fn = None
        if self.early_stopping and not incremental:
            stratify = y if self._is_classifier else None
            try:
                X, X_val, y, y_val, *w = train_test_split(
                    X, y, *(() if sample_weight is None else (sample_weight,)),
                    test_size=self.validation_fraction, random_state=self._seed_,
                    stratify=stratify)
            except ValueError:  # a class too small to stratify: split without stratifying
                X, X_val, y, y_val, *w = train_test_split(
                    X, y, *(() if sample_weight is None else (sample_weight,)),
                    test_size=self.validation_fraction, random_state=self._seed_)
            if sample_weight is not None:
                sample_weight = w[0]
            if X.shape[0] < 2 or X_val.shape[0] < 1:
                raise ValueError("early_stopping leaves too few samples: use a smaller "
                                 "validation_fraction or more data")
            score_fn = lambda: self._validation_score(X_val, y_val)  # noqa: E731
        epochs = 1 if incremental else self.max_iter
        stopper = _StopOnPlateau(self, self.tol, self.n_iter_no_change, score_fn)
        callbacks = [stopper]
        if self.learning_rate == "adaptive":
            callbacks.append(_Adaptive(self.tol))
        self._best_params = None
        verbose = 2 if self.verbose else 0
        model.fit(X, y, epochs=epochs, batch_size=min(batch_size, X.shape[0]),
                  shuffle=self.shuffle, seed=self._seed_ + self.n_iter_, callbacks=callbacks,
                  verbose=verbose, sample_weight=sample_weight)
        self.t_ += X.shape[0] * len(model.history.epoch)  # samples seen, as MLPClassifier
        self.loss_ = self.loss_curve_[-1]
        if self.early_stopping and not incremental and self._best_params is not None:
            model._params[...], model._states[...] = self._best_params
        self._best_params = None
        if not incremental and not stopper.stopped and self.max_iter > 0:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          "and the optimization hasn't converged yet.", ConvergenceWarning,
                          stacklevel=3)
        return self

    def _infer_float64(self, X, logits: bool = False) -> np.ndarray:
        """The model's float64 outputs for the checked ``X``, cast chunk by chunk: a
        float32 ``X`` (or a memmap) is never copied whole to float64."""
        out = None
        for start, chunk in _checks.feature_chunks("X", X, None, np.float64):
            part = self.model_._infer(chunk, logits=logits, dtype=np.float64)
            if out is None:
                out = np.empty((X.shape[0], part.shape[1]), np.float64)
            out[start:start + part.shape[0]] = part
        return out

    def _inference_weights(self):
        """(coefs_, intercepts_) of the eval-mode network, BatchNorm folded."""
        coefs, intercepts = [], []
        for kind, *args in self.model_._inference_plan(logits=True):
            if kind == "affine":
                coefs.append(args[0].copy())
                intercepts.append(args[1].copy())
        return coefs, intercepts

    @property
    def coefs_(self):
        check_is_fitted(self, "model_")
        return self._inference_weights()[0]

    @property
    def intercepts_(self):
        check_is_fitted(self, "model_")
        return self._inference_weights()[1]

    @property
    def n_layers_(self) -> int:
        check_is_fitted(self, "model_")
        return len(self._hidden_sizes()) + 2


class FastNNClassifier(ClassifierMixin, _BaseFastNN):
    """Multi-layer perceptron classifier trained by fastnn (see the module docstring).

    Parameters mirror ``sklearn.neural_network.MLPClassifier``; fastnn adds
    ``batch_norm``, ``dropout``, ``label_smoothing``, ``class_weight`` ("balanced",
    a dict, or None), ``decay_rate`` and ``dtype``.

    Attributes
    ----------
    classes_, n_features_in_, feature_names_in_, loss_, loss_curve_, best_loss_,
    validation_scores_, best_validation_score_, n_iter_, t_, coefs_, intercepts_,
    n_layers_, n_outputs_, out_activation_ : as MLPClassifier's.
    model_ : fastnn.Sequential
        The trained network.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from fastnn.sklearn import FastNNClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = FastNNClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0)
    >>> clf.fit(X, y).score(X, y) > 0.9
    True
    """

    _is_classifier = True
    _parameter_constraints: dict = {
        **_BaseFastNN._parameter_constraints,
        "label_smoothing": [Interval(Real, 0, 1, closed="both")],
        "class_weight": [StrOptions({"balanced"}), dict, None],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, decay_rate=0.1, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, batch_norm=True, dropout=0.0, label_smoothing=0.0,
                 class_weight=None, dtype="float32"):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
            decay_rate=decay_rate, max_iter=max_iter, shuffle=shuffle,
            random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            batch_norm=batch_norm, dropout=dropout, dtype=dtype)
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight

    out_activation_ = "softmax"

    def _make_loss(self):
        return SoftmaxCrossEntropy(label_smoothing=self.label_smoothing,
                                   class_weight=self._class_weight_vector)

    def _check_target_type(self, y) -> None:
        if y is None:
            return  # validate_data says y is required
        kind = type_of_target(y)
        if kind in ("multilabel-indicator", "multiclass-multioutput"):
            raise ValueError(f"{type(self).__name__} supports binary and multiclass targets "
                             f"only; got {kind}")

    def _prepare_targets(self, y, first_call: bool, classes):
        check_classification_targets(y)
        if first_call:
            labels = np.unique(y) if classes is None else np.unique(np.asarray(classes))
            if labels.size < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; "
                                 f"got 1 class: {labels.tolist()}")
            self.classes_ = labels
            self._class_weight_vector = self._class_weights(y)
        else:
            unknown = np.setdiff1d(np.unique(y), self.classes_)
            if unknown.size:
                raise ValueError(f"y has labels not seen in the first fit: "
                                 f"{unknown.tolist()[:10]}; expected {self.classes_.tolist()}")
        return np.searchsorted(self.classes_, y)

    def _class_weights(self, y):
        cw = self.class_weight
        if cw is None:
            return None
        if cw == "balanced":
            from sklearn.utils.class_weight import compute_class_weight

            present = np.unique(y)
            weights = np.ones(self.classes_.size)
            weights[np.searchsorted(self.classes_, present)] = compute_class_weight(
                "balanced", classes=present, y=y)
            return weights
        unknown = set(cw) - set(self.classes_.tolist())
        if unknown:
            raise ValueError(f"class_weight has labels that are not classes: {sorted(unknown)}")
        return np.array([float(cw.get(c, 1.0)) for c in self.classes_.tolist()])

    def _n_model_outputs(self) -> int:
        return self.classes_.size

    def _model_classes(self):
        return np.arange(self.classes_.size)

    @property
    def n_outputs_(self) -> int:
        check_is_fitted(self, "model_")
        return self.classes_.size

    def _validation_score(self, X_val, y_val) -> float:
        return float(np.mean(self.model_.predict(X_val) == y_val))

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit to (X, y) for up to ``max_iter`` epochs (continuing if ``warm_start``)."""
        return self._fit(X, y, sample_weight, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y), keeping the model and the optimizer's state.

        ``classes`` (all labels that will ever appear) is required on the first call.
        """
        if not hasattr(self, "model_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), in ``classes_`` order."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        # Inference in float64 whatever the training dtype: a row's prediction must not
        # depend on the other rows even in its last bits (float32 products do, slightly).
        logits = self._infer_float64(X, logits=True)
        from . import ops

        return ops.softmax(logits, out=logits)

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    def predict(self, X):
        """Predicted class labels."""
        check_is_fitted(self, "model_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


class FastNNRegressor(RegressorMixin, _BaseFastNN):
    """Multi-layer perceptron regressor trained by fastnn (squared error, linear output).

    Parameters mirror ``sklearn.neural_network.MLPRegressor``; fastnn adds ``batch_norm``,
    ``dropout``, ``decay_rate`` and ``dtype``. One or several outputs (y of shape
    (n,) or (n, n_outputs)).

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn.sklearn import FastNNRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 3))
    >>> y = X @ np.array([1.0, -2.0, 0.5])
    >>> reg = FastNNRegressor(hidden_layer_sizes=(32,), max_iter=200, random_state=0)
    >>> reg.fit(X, y).score(X, y) > 0.95
    True
    """

    _is_classifier = False
    out_activation_ = "identity"

    def _make_loss(self):
        return MeanSquaredError()

    def _check_target_type(self, y) -> None:
        """Any numeric target: validate_data checks it."""

    def _prepare_targets(self, y, first_call: bool, classes):
        y = np.asarray(y, dtype=np.float64)
        width = 1 if y.ndim == 1 else y.shape[1]
        if first_call:
            self._y_ndim = y.ndim
            self._n_out = width
        elif width != self._n_out:
            raise ValueError(f"y has {width} outputs; the first fit had {self._n_out}")
        return y

    def _n_model_outputs(self) -> int:
        return self._n_out

    def _model_classes(self):
        return None

    @property
    def n_outputs_(self) -> int:
        check_is_fitted(self, "model_")
        return self._n_out

    def _validation_score(self, X_val, y_val) -> float:
        pred = self.model_.predict(X_val).reshape(y_val.shape)
        from sklearn.metrics import r2_score

        return float(r2_score(y_val, pred))

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit to (X, y) for up to ``max_iter`` epochs (continuing if ``warm_start``)."""
        return self._fit(X, y, sample_weight, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), keeping the model and the optimizer's state."""
        return self._fit(X, y, sample_weight, incremental=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X):
        """Predicted values, shape (n_samples,) or (n_samples, n_outputs)."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        out = self._infer_float64(X)  # float64: see predict_proba
        return out[:, 0] if self._y_ndim == 1 else out
