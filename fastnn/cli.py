"""The ``fastnn`` command line (also ``python -m fastnn``).

* ``fastnn train``: train an MLP on the bundled digits (or ``--data``), report test accuracy;
  ``--save`` a model that standardises its own input, ``--resume`` it, ``--params-from`` a
  tuned study; Ctrl-C keeps the complete epochs and prints how to go on (exit status 130);
* ``fastnn predict MODEL --data FILE``, ``fastnn evaluate MODEL --data FILE``;
* ``fastnn tune``: search an MLP's hyperparameters on the digits (or ``--data``);
  the test rows ``fastnn train`` reports on are held out first and never seen by a trial;
  ``fastnn tune report STORAGE``: a stored study's trials, best first, and plots;
* ``fastnn bench``: time the kernels on the cython and numpy backends;
* ``fastnn info``: version, build flags, backend, NumPy and its BLAS.

Bad arguments or data exit with status 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

import numpy as np

from . import __version__, _names, _threads, ops


def _blas_summary() -> str:
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode; the rest of `info` still works
        return "unknown (NumPy < 1.25 cannot report it)"


def _threadpools() -> list[str]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["(install threadpoolctl, e.g. pip install \"fastnn-cpu[bench]\", for details)"]
    return [
        f"{p.get('internal_api')} {p.get('version') or ''}: {p.get('num_threads')} threads "
        f"({os.path.basename(p.get('filepath', ''))})"
        for p in threadpool_info()
    ]


def info_lines() -> list[str]:
    """What ``fastnn info`` prints: version, build, backend, NumPy and its BLAS."""
    problem = ops.cython_status()
    lines = [
        f"fastnn {__version__} (distribution fastnn-cpu)",
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"active backend: {ops.get_backend()}",
        f"cython backend: {'loaded' if problem is None else 'unavailable: ' + problem}",
    ]
    if problem is None:
        build = ops.backend_info("cython")
        lines += [
            f"  openmp: {'on' if build['openmp'] else 'off'}",
            f"  -march=native: {'on' if build['native'] else 'off'}",
            f"  debug build (bounds checks): {'on' if build['debug_build'] else 'off'}",
            f"  source sha256: {build['source_sha256'][:16] or 'unknown'}",
            "  large float32 matrix products: " + _products_summary(build),
        ]
    lines.append(f"numpy {np.__version__}, BLAS: {_blas_summary()}")
    lines += ["  " + p for p in _threadpools()]
    policy = _threads.info()
    lines += [
        f"cpu cores: {os.cpu_count()} ({policy['cores']} usable by this process)",
        f"fastnn threads: {policy['threads']} (from {policy['source']}; set with "
        f"FASTNN_NUM_THREADS or fastnn.set_num_threads), for matrix products of "
        f">= {policy['parallel_min_macs']:,} multiply-adds; smaller ones run on 1",
        f"  and on no core another process is running on: {policy['spare_cores']} of "
        f"{policy['cores']} free now",
    ]
    lines += [f"  limits {b}" for b in policy["blas"]]
    return lines


def _products_summary(build: dict) -> str:
    """Who computes the large float32 products of planned steps and predictions."""
    if not build.get("packed_gemm"):
        return "BLAS (fastnn's packed product needs AVX-512F, which this CPU lacks)"
    if not ops.uses_packed_gemm(np.float32, ops.PACKED_MIN_N):
        return "BLAS (FASTNN_PACKED_GEMM=0)"
    return (f"fastnn's packed AVX-512 product, on fastnn's own threads (BLAS for "
            f"float64, under {ops.PACKED_MIN_M} rows; FASTNN_PACKED_GEMM=0 for BLAS always)")


def _cmd_info(args: argparse.Namespace) -> int:
    print("\n".join(info_lines()))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import _quickbench

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limits = None
    else:
        limits = threadpool_limits(args.threads)
    print(f"fastnn {__version__}: cython vs numpy backend, float32, best of 5"
          + (f", {args.threads} thread(s)" if limits is not None else ""))
    try:
        _quickbench.run(quick=args.quick)
    except RuntimeError as exc:
        print(f"fastnn: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from . import load
    from .onnx import export

    model = load(args.model)
    export(model, args.out, opset=args.opset, dtype=args.dtype)
    output = "class probabilities" if model.loss.classification else "predicted values"
    print(f"exported {args.model} to {args.out}: input 'input' (batch, {model.input_dim}) "
          f"{args.dtype or model.dtype.name}, output 'output' (batch, {model.output_dim}): "
          f"{output}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _folds(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected a number of folds of at least 2; got "
                                         f"{value}")
    return value


def _decay_names() -> tuple[str, ...]:
    from .schedules import DECAYS

    return DECAYS


def _hidden_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths like 128 or 256,128; got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be integers >= 1; got {text!r}")
    return sizes


def _number(text: str, *, low: float, high: float, low_open: bool, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not ((value > low if low_open else value >= low) and value < high):
        raise argparse.ArgumentTypeError(f"expected {what}; got {text}")
    return value


def _fraction(text: str) -> float:
    return _number(text, low=0.0, high=1.0, low_open=False, what="a number in [0, 1)")


def _positive_fraction(text: str) -> float:
    return _number(text, low=0.0, high=1.0, low_open=True, what="a number in (0, 1)")


def _positive_float(text: str) -> float:
    return _number(text, low=0.0, high=float("inf"), low_open=True, what="a positive number")


def _non_negative_float(text: str) -> float:
    return _number(text, low=0.0, high=float("inf"), low_open=False, what="a number >= 0")


def _label_column(text: str) -> int | str:
    """A column index (an integer, negative from the end) or a column's name."""
    try:
        return int(text)
    except ValueError:
        return text


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------

DIGITS_SOURCE = "bundled UCI digits (1797 8x8 images; Alpaydin & Kaynak 1998, CC BY 4.0)"


def _load_data(args, n_features: int | None = None):
    """(X, y, source, where the labels are); y is None only when ``n_features`` allows a file
    without labels. Warns (stderr) when the labels look like a continuous feature."""
    from . import datasets

    if args.data is None:
        if args.label_column is not None:
            raise ValueError("--label-column needs --data (the bundled digits have their "
                             "labels)")
        X, y = datasets.load_digits(dtype=args.dtype)
        return X, y, DIGITS_SOURCE, "the digit"
    X, y, where = datasets.load_labeled(args.data, label_column=args.label_column,
                                        dtype=args.dtype, n_features=n_features)
    if y is not None:
        _check_labels(y, args.data)
        problem = datasets.label_warning(y, f"the labels ({where})")
        if problem is not None:
            print(f"fastnn: warning: {problem}; choose the label column with --label-column "
                  f"NAME|INDEX", file=sys.stderr)
    return X, y, str(args.data), where


def _check_labels(y: np.ndarray, path) -> None:
    if y.dtype.kind == "f" and np.isnan(y).any():
        rows = np.flatnonzero(np.isnan(y))
        raise ValueError(f"{path}: {rows.size} of {y.size} labels are missing (NaN), the first "
                         f"in data row {rows[0] + 1}; remove or fill those rows (or pick another "
                         f"--label-column)")


def _split(args, X, y):
    from . import datasets

    return datasets.train_test_split(X, y, test_size=args.test_size, seed=args.split_seed)


def _split_text(args, n_test: int) -> str:
    return (f"{n_test} test rows held out by --test-size {args.test_size} --split-seed "
            f"{args.split_seed} (the same rows for fastnn train and fastnn tune)")


# ------------------------------------------------------------------------------------------
# Models and optimizers from flags
# ------------------------------------------------------------------------------------------

#: Flags that fix a model's architecture (dest -> flag), checked against a resumed model.
ARCHITECTURE_FLAGS = {"hidden": "--hidden", "layers": "--layers", "activation": "--activation",
                      "batch_norm": "--no-batch-norm", "dropout": "--dropout",
                      "label_smoothing": "--label-smoothing", "dtype": "--dtype",
                      "standardize": "--no-standardize"}
#: Flags of the optimizer other than its learning rate (dest -> flag).
OPTIMIZER_FLAGS = {"optimizer": "--optimizer", "beta1": "--beta1", "beta2": "--beta2",
                   "weight_decay": "--weight-decay"}
#: Flags of the learning rate and its schedule.
RATE_FLAGS = {"lr": "--lr", "decay": "--decay", "decay_rate": "--decay-rate"}


def _widths(args) -> list[int]:
    hidden = list(args.hidden)
    if args.layers is None:
        return hidden
    if len(hidden) == 1:
        return hidden * args.layers
    if len(hidden) != args.layers:
        raise ValueError(f"--layers {args.layers} disagrees with --hidden "
                         f"{','.join(map(str, hidden))} ({len(hidden)} widths)")
    return hidden


def _build_model(args, n_classes: int, X_train):
    from . import Sequential
    from .layers import Standardize, mlp
    from .losses import SoftmaxCrossEntropy

    layers = mlp(_widths(args), n_classes, activation=args.activation,
                 batch_norm=args.batch_norm, dropout=args.dropout)
    if args.standardize:  # the scaler lives in the model: predict takes raw features
        layers.insert(0, Standardize().adapt(X_train))
    return Sequential(layers, dtype=args.dtype, seed=args.seed,
                      loss=SoftmaxCrossEntropy(label_smoothing=args.label_smoothing))


def _optimizer_options(args, kind: str, only: set | None = None) -> dict:
    """The optimizer's keyword options from --beta1, --beta2, --weight-decay (``only``:
    just the flags in that set)."""
    def value(dest):
        return getattr(args, dest) if only is None or dest in only else None

    beta1, beta2, wd = value("beta1"), value("beta2"), value("weight_decay")
    options = {} if wd is None else {"weight_decay": wd}
    if kind in ("adam", "adamw"):
        options.update({k: v for k, v in (("beta_1", beta1), ("beta_2", beta2)) if v is not None})
    elif kind == "sgd":
        if only is None or beta1 is not None:  # the command line's SGD: Nesterov, 0.9
            momentum = 0.9 if beta1 is None else beta1
            options.update(momentum=momentum, nesterov=momentum > 0)
    else:  # rmsprop: beta2 is its rho, beta1 its momentum
        options.update({k: v for k, v in (("rho", beta2), ("momentum", beta1)) if v is not None})
    return options


def _schedule(args, total: int):
    from . import schedules

    return schedules.decay(args.decay, args.lr, rate=args.decay_rate, total=total)


def _build_optimizer(args, total: int):
    from . import optimizers

    return optimizers.make(args.optimizer, _schedule(args, total),
                           **_optimizer_options(args, args.optimizer))


def _rate_text(opt) -> str:
    rate = opt.learning_rate
    return f"{rate:g}" if isinstance(rate, float) else repr(rate)


# ------------------------------------------------------------------------------------------
# --params-from: a tuned trial's configuration
# ------------------------------------------------------------------------------------------

def _trial_values(params: dict, settings: dict) -> dict:
    """The train flags (dest -> value) a trial's params (and its study's settings) mean:
    what the trial trained, with the tuner's defaults (MLPBuilder: 64 units, 1 layer;
    make_optimizer: a constant rate unless a decay is given)."""
    from ._names import first, hyperparameter_of

    known = {"optimizer", "activation", "dropout", "label_smoothing", "batch_norm",
             "weight_decay", "epochs"}
    unknown = sorted(k for k in params if k not in known and hyperparameter_of(k) is None)
    if unknown:
        raise ValueError(f"the trial's params {unknown} have no fastnn train flag; train it "
                         f"with fastnn.tune.resume_trial or a script")
    values = {"hidden": [int(first(params, "hidden", 64))] * int(first(params, "layers", 1)),
              "layers": None,
              "batch_size": int(first(params, "batch_size", settings.get("batch_size", 32))),
              "epochs": int(params.get("epochs", settings.get("epochs", 10))),
              "optimizer": str(params.get("optimizer", settings.get("optimizer", "adam"))),
              "lr": float(first(params, "lr", 1e-3))}
    for dest in ("beta1", "beta2"):
        if first(params, dest) is not None:
            values[dest] = float(first(params, dest))
    decay = first(params, "decay", 0.0)
    if isinstance(decay, str):
        values["decay"] = decay
    else:
        values.update(decay="inverse_time" if decay > 0 else "none",
                      decay_rate=float(decay) if decay > 0 else 0.1)
    for dest in ("activation", "dropout", "label_smoothing", "weight_decay"):
        if dest in params:
            values[dest] = params[dest]
    if "batch_norm" in params:
        values["batch_norm"] = bool(params["batch_norm"])
    return values


def _apply_trial(args) -> None:
    """Fill the flags not given on the command line from --params-from's trial."""
    from .tune import load_study
    from .tune.study import format_params

    if args.resume:
        raise ValueError("--params-from starts a new training; give it without --resume")
    with load_study(args.params_from) as study:
        trial = study.best_trial if args.trial is None else study.trial(args.trial)
        if trial.state != "complete":
            raise ValueError(f"trial {trial.number} of {args.params_from} is {trial.state}; "
                             f"pick a complete one (fastnn tune report {args.params_from})")
        settings = dict(study.user_attrs.get("tune_model") or {})
        split = study.user_attrs.get("cli_split")
    values = _trial_values(trial.params, settings)
    for dest, value in values.items():
        if dest not in args.given:
            setattr(args, dest, value)
    overridden = sorted(f"--{d.replace('_', '-')}" for d in values if d in args.given)
    print(f"from {args.params_from}: trial {trial.number} (value {trial.value:.4f}): "
          f"{format_params(trial.params)}; {values['epochs']} epochs, batch size "
          f"{values['batch_size']}, {values['optimizer']}"
          + (f"; overridden on the command line: {', '.join(overridden)}" if overridden else ""))
    mine = {"data": args.data, "test_size": args.test_size, "split_seed": args.split_seed}
    if split is not None and any(split.get(k) != v for k, v in mine.items()):
        print(f"fastnn: warning: the study tuned on {split} but this training uses {mine}: "
              f"its test rows may have been seen by the tuning", file=sys.stderr)


# ------------------------------------------------------------------------------------------
# --resume
# ------------------------------------------------------------------------------------------

def _saved_architecture(model) -> dict:
    """The architecture flags' values for a saved model (from its config)."""
    from . import _names

    config = model.get_config()
    classes = [spec["class"] for spec in config["layers"]]
    units = [spec["config"]["units"] for spec in config["layers"] if "units" in spec["config"]]
    activations = {name for name, cls in _names.ACTIVATIONS.items() if cls in classes}
    rates = [spec["config"]["rate"] for spec in config["layers"] if spec["class"] == "Dropout"]
    return {"hidden": units[:-1], "activation": activations,
            "batch_norm": any(c in ("BatchNorm", "BatchNormalization") for c in classes),
            "dropout": rates[0] if rates else 0.0,
            "label_smoothing": config["loss"].get("label_smoothing", 0.0),
            "dtype": config["dtype"], "standardize": classes[0] == "Standardize"}


def _architecture_conflicts(args, model) -> list[str]:
    saved = _saved_architecture(model)
    conflicts = []
    for dest in sorted(args.given & ARCHITECTURE_FLAGS.keys()):
        flag = ARCHITECTURE_FLAGS[dest]
        if dest in ("hidden", "layers"):
            mine, theirs = _widths(args), saved["hidden"]
            if mine != theirs:
                conflicts.append(f"{flag} (saved: hidden {','.join(map(str, theirs))})")
        elif dest == "activation":
            if args.activation not in saved["activation"]:
                conflicts.append(f"--activation {args.activation} (saved: "
                                 f"{'/'.join(sorted(saved['activation'])) or 'none'})")
        elif getattr(args, dest) != saved[dest]:
            conflicts.append(f"{flag} {getattr(args, dest)} (saved: {saved[dest]})"
                             if dest not in ("batch_norm", "standardize") else
                             f"{flag} (the saved model has it {'on' if saved[dest] else 'off'})")
    return conflicts


def _resume(args):
    """The saved model, with its optimizer kept, changed as the flags say, or replaced;
    prints what it does. ``args.epochs`` is the total to reach."""
    from . import load, optimizers

    model = load(args.resume)
    done = model.epochs_trained
    conflicts = _architecture_conflicts(args, model)
    if conflicts:
        raise ValueError(f"--resume {args.resume}: these flags conflict with the saved model: "
                         f"{'; '.join(conflicts)}; leave them out to resume, or train a new "
                         f"model without --resume")
    if done >= args.epochs:
        raise ValueError(f"{args.resume} has trained {done} epochs already; --epochs is the "
                         f"total to reach when resuming: pass more, e.g. --epochs {done + 10}")
    print(f"resumed {args.resume}: {done} epochs trained so far; training epochs {done + 1}.."
          f"{args.epochs}")
    opt = model.optimizer
    if opt is None:
        model.optimizer = _build_optimizer(args, args.epochs)
        print(f"  optimizer: none saved; a new {type(model.optimizer).__name__}")
        return model
    saved_name = type(opt).__name__
    kind = args.optimizer if "optimizer" in args.given else next(
        k for k, v in _names.OPTIMIZERS.items() if v == saved_name)
    same_class = optimizers.by_name(kind).__name__ == saved_name
    saved_options = {k: v for k, v in opt.get_config().items()
                     if k not in ("class", "lr", "iterations", "epoch")}
    wanted = {**(saved_options if same_class else {}),
              **_optimizer_options(args, kind, args.given | ({"optimizer"} if not same_class
                                                             else set()))}
    if not same_class or wanted != saved_options:
        new_rate = bool(args.given & RATE_FLAGS.keys())
        rate = _schedule(args, args.epochs) if new_rate else opt.learning_rate
        model.optimizer = optimizers.make(kind, rate, **wanted)
        if not new_rate:
            _stretch_schedule(model.optimizer, args.epochs)
        changed = (f"{saved_name} -> {type(model.optimizer).__name__}" if not same_class else
                   ", ".join(f"{k} {saved_options.get(k)} -> {v}" for k, v in wanted.items()
                             if saved_options.get(k) != v))
        print(f"  optimizer changed ({changed}): it starts with a fresh state (the saved "
              f"moments are dropped); learning rate {_rate_text(model.optimizer)}")
    elif args.given & RATE_FLAGS.keys():
        opt.learning_rate = _schedule(args, args.epochs)
        opt.set_epoch(done)
        print(f"  learning rate replaced: {_rate_text(opt)} ({opt.lr:.4g} at epoch {done + 1});"
              f" {saved_name}'s state (step {opt.iterations}) is kept")
    else:
        _stretch_schedule(opt, args.epochs)
        print(f"  {saved_name} continues from step {opt.iterations} "
              f"(learning rate {_rate_text(opt)})")
    return model


def _stretch_schedule(opt, total: int) -> None:
    """A schedule that ends (cosine) before ``total`` epochs is stretched to end there."""
    from . import schedules

    rate = opt.learning_rate
    end = getattr(rate, "total", None)
    if end is None or rate.per_step or end >= total:
        return
    config = rate.get_config()
    config["total"] = total
    opt.learning_rate = schedules.from_config(config)
    print(f"  its {type(rate).__name__} ended at epoch {end}: stretched to end at epoch {total}")


# ------------------------------------------------------------------------------------------
# fastnn train
# ------------------------------------------------------------------------------------------

def _check_plot_possible(args) -> None:
    if args.plot:
        from .plot import _pyplot

        _pyplot()  # ImportError naming the extra, before any epoch runs


def _progress(verbose: int, total: int, steps: int):
    """Keras-style progress counting epochs over the whole training (resumes included)."""
    from .callbacks import ProgressBar

    class Progress(ProgressBar):
        def on_train_begin(self, logs=None) -> None:
            self.first_epoch = 0  # "Epoch 13/50" after a resume, not "Epoch 1/38"

        def on_epoch_end(self, epoch, logs=None) -> None:
            super().on_epoch_end(epoch, logs)
            self.stream.flush()

    return Progress(verbose, total, steps)


def _resume_command(args) -> str:
    import shlex

    argv = list(args.argv)
    cleaned, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--resume", "--params-from", "--trial"):
            skip = "=" not in arg and i + 1 < len(argv)
            continue
        cleaned.append(arg)
    if "epochs" not in args.given:
        cleaned += ["--epochs", str(args.epochs)]
    return shlex.join(["fastnn", *cleaned, "--resume", args.save])


def _cmd_train(args: argparse.Namespace) -> int:
    from .trainer import batch_sizes

    _check_plot_possible(args)
    ops.set_backend(args.backend)
    if args.params_from:
        _apply_trial(args)
    X, y, source, where = _load_data(args)
    X_train, X_test, y_train, y_test = _split(args, X, y)
    print(f"data: {source}; labels: {where}; {X.shape[1]} features; train {X_train.shape[0]} "
          f"rows, {_split_text(args, X_test.shape[0])}")
    if args.resume:
        model = _resume(args)
        epochs = args.epochs - model.epochs_trained
    else:
        n_classes = int(np.unique(y_train).size)
        model = _build_model(args, n_classes, X_train)
        model.optimizer = _build_optimizer(args, args.epochs)
        epochs = args.epochs
    if args.label_column is not None:  # saved with the model: predict finds it again
        model.label_column = args.label_column
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    n_fit = X_train.shape[0] - int(round(X_train.shape[0] * args.validation_split))
    callbacks = [_progress(verbose, args.epochs, len(batch_sizes(
        n_fit, args.batch_size, merge_single=True)))] if verbose else []
    start = time.perf_counter()
    try:
        history = model.fit(X_train, y_train, epochs=epochs, batch_size=args.batch_size,
                            validation_split=args.validation_split, seed=args.seed,
                            verbose=0, callbacks=callbacks)
    except KeyboardInterrupt:
        return _interrupted(args, model)
    elapsed = time.perf_counter() - start
    if args.verbose != 0:
        model.summary()
    result = model.evaluate(X_test, y_test)
    correct = int(round(result["accuracy"] * X_test.shape[0]))
    if history.stop_reason:
        print(f"note: {history.stop_reason}")
    print(f"trained {len(history.epoch)} epochs ({model.epochs_trained} in all) in "
          f"{elapsed:.2f} s on the {ops.get_backend()} backend ({model.dtype.name})")
    print(f"test loss {result['loss']:.4f}, test accuracy {result['accuracy']:.4f} "
          f"({correct}/{X_test.shape[0]})")
    if args.save:
        model.save(args.save)
        print(f"saved to {args.save} (fastnn predict {args.save} --data FILE)")
    if args.plot:
        from .plot import history as plot_history

        plot_history(history, args.plot, title=f"fastnn on {source.split(' (')[0]}")
        print(f"learning curves written to {args.plot}")
    return 0


def _interrupted(args, model) -> int:
    kept = model.epochs_trained
    print(file=sys.stdout, flush=True)
    if args.save and kept > 0:
        model.save(args.save)
        print(f"fastnn: interrupted; {args.save} keeps the {kept} complete epoch(s). To go on:\n"
              f"  {_resume_command(args)}", file=sys.stderr)
    elif args.save:
        print("fastnn: interrupted before the first epoch ended; nothing saved",
              file=sys.stderr)
    else:
        print(f"fastnn: interrupted after {kept} complete epoch(s); nothing saved (give "
              f"--save PATH to keep the work)", file=sys.stderr)
    return 130


# ------------------------------------------------------------------------------------------
# fastnn predict / evaluate
# ------------------------------------------------------------------------------------------

def _model_data(args, model):
    """The rows to predict or evaluate: the labels from --label-column, else from the
    column the model was trained with (``model.label_column``) where the file has it."""
    args.dtype = model.dtype.name
    recorded = getattr(model, "label_column", None)
    if args.label_column is None and recorded is not None and args.data is not None:
        args.label_column = recorded
        try:
            return _load_data(args, n_features=model.input_dim)
        except ValueError as exc:  # e.g. a file of features only, without that column
            args.label_column = None
            try:
                found = _load_data(args, n_features=model.input_dim)
            except ValueError:
                raise exc from None
            if found[1] is not None:  # another column would be taken for the labels
                raise exc from None
            return found
    return _load_data(args, n_features=model.input_dim)


def _write_atomic(path: str, text: str) -> None:
    import tempfile

    from .serialization import new_file_mode

    directory = os.path.dirname(os.path.abspath(path))
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fastnn-", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _predictions_text(model, X, proba: bool) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    classification = model.loss.classification
    if proba:
        if not classification:
            raise ValueError("--proba needs a classifier; this model is a regressor")
        probs = model.predict_proba(X)
        classes = model.classes_ if model.classes_ is not None else np.arange(probs.shape[1])
        labels = classes[np.argmax(probs, axis=1)]
        writer.writerow(["prediction", *(f"p_{c}" for c in classes)])
        for label, row in zip(labels, probs, strict=True):
            writer.writerow([label, *(f"{p:.6g}" for p in row)])
    else:
        pred = model.predict(X)
        writer.writerow(["prediction"] if pred.ndim == 1 else
                        [f"output_{i}" for i in range(pred.shape[1])])
        for value in pred:
            writer.writerow([value] if np.ndim(value) == 0 else list(value))
    return out.getvalue()


def _cmd_predict(args: argparse.Namespace) -> int:
    from . import load

    model = load(args.model)
    X, _, source, _ = _model_data(args, model)
    text = _predictions_text(model, X, args.proba)
    if args.output:
        _write_atomic(args.output, text)
        print(f"{X.shape[0]} predictions for {source} written to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import load

    model = load(args.model)
    X, y, source, where = _model_data(args, model)
    if y is None:
        raise ValueError(f"{source} has no labels ({model.input_dim} columns, all features); "
                         f"evaluate needs them (use fastnn predict for predictions only)")
    result = model.evaluate(X, y)
    line = f"{source}: {X.shape[0]} rows, labels {where}; loss {result['loss']:.4f}"
    if "accuracy" in result:
        correct = int(round(result["accuracy"] * X.shape[0]))
        line += f", accuracy {result['accuracy']:.4f} ({correct}/{X.shape[0]})"
    print(line)
    return 0


TUNE_STRATEGIES = ("grid", "random", "coarse_to_fine", "bayes")


def _tune_space(args) -> dict | None:
    """The ``--space`` JSON file's space (distribution configs), or None for the default."""
    if args.space is None:
        return None
    import json

    from .tune.space import space_from_config

    try:
        with open(args.space) as fh:
            config = json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such space file: {args.space}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{args.space} is not valid JSON ({exc})") from None
    return space_from_config(config)


def _tune_trials(args):
    """--trials, else the stored study's total, else 20 for a new study."""
    if args.trials is not None:
        return args.trials
    if args.storage and os.path.exists(args.storage):
        return None
    return 20


@contextlib.contextmanager
def _dask_executor(address: str | None, n_workers: int):
    """None, or a Dask executor: a LocalCluster of ``n_workers`` processes for "local", else
    a client of the scheduler at ``address``; closed afterwards."""
    if address is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError('fastnn tune --dask needs dask.distributed: pip install '
                          '"fastnn-cpu[dask]"') from None
    with contextlib.ExitStack() as stack:
        if address == "local":
            cluster = stack.enter_context(LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True,
                dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(Client(address))
        yield client.get_executor()


def _cmd_tune(args: argparse.Namespace) -> int:
    import sqlite3

    try:
        if args.tune_command == "report":
            return _cmd_tune_report(args)
        return _cmd_tune_search(args)
    except sqlite3.Error as exc:
        raise RuntimeError(f"the study storage failed: {exc}") from None


def _cmd_tune_search(args: argparse.Namespace) -> int:
    from . import tune

    strategy = args.strategy
    if args.staged:
        strategy = tune.Staged(strategy=args.strategy or "random")
    common = dict(strategy=strategy, n_trials=_tune_trials(args), storage=args.storage or
                  ":memory:", seed=args.seed, direction=args.direction,
                  pruner=None if args.pruner == "none" else args.pruner, epochs=args.epochs,
                  metric=args.metric, checkpoint_dir=args.checkpoint_dir, verbose=1,
                  timeout=args.timeout, trial_timeout=args.trial_timeout)
    space = _tune_space(args)
    workers = f"{args.jobs} worker(s)" + (f" on dask {args.dask}" if args.dask else "")
    X, y, source, where = _load_data(args)
    X_rest, X_test, y_rest, y_test = _split(args, X, y)
    n_rest = X_rest.shape[0]
    if args.checkpoint_dir is not None and args.cv is not None:
        raise ValueError("--checkpoint-dir keeps one model per trial, and --cv trains one per "
                         "fold; give --checkpoint-dir with --validation-split F")
    cv = None if args.validation_split is not None or args.checkpoint_dir else args.cv or 5
    if cv is not None and cv > n_rest:
        raise ValueError(f"--cv {cv}: more folds than the {n_rest} training rows")
    n_classes = int(np.unique(y_rest).size)
    print(f"tuning an MLP on {source.split(' (')[0]}: {X.shape[0]} samples, {X.shape[1]} "
          f"features, {n_classes} classes (labels: {where}); {args.epochs} epochs per trial, "
          f"{workers}", flush=True)
    rows = f"rows: {_split_text(args, X_test.shape[0])}, never seen by tuning; "
    if cv is None:
        split = 0.2 if args.validation_split is None else args.validation_split
        n_val = n_rest - int(np.floor(n_rest * (1 - split)))
        rows += (f"each trial trains on about {n_rest - n_val} and is scored on about {n_val} "
                 f"validation rows (--validation-split {split}), both carved from the "
                 f"{n_rest} training rows")
    else:
        split = None
        rows += (f"each trial is {cv}-fold cross-validated on the {n_rest} training rows "
                 f"(--cv {cv}): {cv} models, each trained on about {n_rest - n_rest // cv} "
                 f"and scored on the other {n_rest // cv}; its value is their mean")
    print(rows, flush=True)
    space = tune.mlp_space() if space is None else space

    def run(**kw):
        how = dict(cv=cv) if cv is not None else dict(validation_split=split)
        return tune.tune_model(tune.MLPBuilder(n_classes), X_rest, y_rest, space,
                               standardize=True, split_seed=args.split_seed, **how,
                               **common, **kw)
    start = time.perf_counter()
    try:
        with _dask_executor(args.dask, args.jobs) as executor:
            study = run(n_jobs=args.jobs, executor=executor)
    except KeyboardInterrupt:
        where = (f"; run the same command again to resume from {args.storage}" if args.storage
                 else "")
        print(f"fastnn: interrupted{where}", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - start
    study.set_user_attr("cli_split", {"data": args.data, "test_size": args.test_size,
                                      "split_seed": args.split_seed})
    print(study.summary().splitlines()[0])
    print(f"{len(study.trials)} trials in the study; {elapsed:.1f} s for this run")
    best = study.best_trial
    print(f"best: trial {best.number}, {args.metric} {best.value:.4f}")
    print(f"  params: {tune.study.format_params(best.params)}")
    if args.storage:
        print(f"study stored in {args.storage} (fastnn tune report {args.storage}); train "
              f"the best trial on all the training rows and test it on the held-out ones:")
        import shlex

        data = ["--data", args.data] if args.data else []
        if args.label_column is not None:
            data += ["--label-column", str(args.label_column)]
        print("  " + shlex.join(["fastnn", "train", *data, "--params-from", args.storage]))
    return 0


def _strategy_state_lines(state: dict) -> list[str]:
    from .tune.study import format_params

    lines = []
    for box in state.get("boxes", []):
        ranges = " ".join(f"{name}=[{lo:.4g}, {hi:.4g}]" if isinstance(lo, float)
                          else f"{name}=[{lo}, {hi}]" for name, (lo, hi) in box["box"].items())
        lines.append(f"  round {box['round']} box: {ranges}")
    for stage in state.get("stages", []):
        best = stage.get("best")
        lines.append(f"  stage {stage['stage']}: {', '.join(stage['params'])} "
                     f"({stage['strategy']}, trials {stage['start']}.."
                     f"{stage['start'] + stage['trials'] - 1})"
                     + (f", best {format_params(best)}" if best else ""))
    return lines


def _cmd_tune_report(args: argparse.Namespace) -> int:
    from .tune import load_study

    with load_study(args.report_storage) as study:
        print(study.summary())
        lines = _strategy_state_lines(study.describe())
        if lines:
            print(f"{study.strategy.name}:")
            print("\n".join(lines))
        print(study.table(top=args.top))
        if args.plots:
            from .plot import tune_report

            for path in tune_report(study, args.plots):
                print(f"plot written to {path}")
    return 0


def _add_tune_parser(sub) -> None:
    tune = sub.add_parser("tune", help="search an MLP's hyperparameters on the digits (or "
                          "--data); `tune report STORAGE` shows a stored study",
                          formatter_class=_Help, description="Search an MLP's "
                          "hyperparameters. The test rows (--test-size, --split-seed: the ones "
                          "fastnn train tests on) are held out first and never seen; each "
                          "trial is scored by 5-fold cross-validation on the other rows "
                          "(--cv), or on one validation split of them (--validation-split).")
    tune.add_argument("--data", help=_DATA_HELP + " (default: the bundled digits)")
    tune.add_argument("--label-column", type=_label_column, help=_LABEL_HELP)
    _add_split_flags(tune)
    scoring = tune.add_mutually_exclusive_group()
    scoring.add_argument("--cv", type=_folds, default=None, metavar="K",
                         help="score each trial by K-fold cross-validation of the training "
                              "rows: K models, each validated on another 1/K of the rows "
                              "(default 5, unless --validation-split or --checkpoint-dir)")
    scoring.add_argument("--validation-split", type=_positive_fraction, default=None,
                         metavar="F", help="score each trial on one split: this fraction of "
                         "the training rows (0.2 with --checkpoint-dir)")
    tune.add_argument("--strategy", choices=TUNE_STRATEGIES, default=None,
                      help="how to propose trials (default: random, or the stored study's)")
    tune.add_argument("--staged", action="store_true",
                      help="the course's order: lr; then beta1, hidden, batch_size; then "
                           "layers, decay (each stage with --strategy)")
    tune.add_argument("--trials", type=_positive_int, default=None,
                      help="the study's total number of trials (default 20, or the stored "
                           "study's)")
    tune.add_argument("--jobs", type=_positive_int, default=1,
                      help="trials run in parallel, one process each")
    tune.add_argument("--storage", help="an SQLite file for the study; running the same "
                      "command again resumes it")
    tune.add_argument("--seed", type=int, default=None,
                      help="the study seed (default: fresh, stored with the study)")
    tune.add_argument("--epochs", type=_positive_int, default=10,
                      help="training epochs per trial")
    tune.add_argument("--metric", choices=("val_accuracy", "val_loss"), default="val_accuracy",
                      help="what a trial scores on its validation rows")
    tune.add_argument("--direction", choices=("maximize", "minimize"), default=None,
                      help="default: maximize an accuracy, minimize a loss")
    tune.add_argument("--pruner", choices=("none", "median", "halving"), default="none",
                      help="stop unpromising trials from their per-epoch metric")
    tune.add_argument("--space", help="a JSON file of the search space, e.g. "
                      '{"lr": {"type": "LogUniform", "low": 1e-4, "high": 0.1}}')
    tune.add_argument("--dask", metavar="ADDRESS",
                      help='run the trials on a Dask cluster: a scheduler address, or "local" '
                           "for a LocalCluster of --jobs processes (needs the dask extra)")
    tune.add_argument("--checkpoint-dir",
                      help="keep every trial's model there (for fastnn.tune.resume_trial)")
    tune.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                      help="stop the whole search after this long, trials in flight "
                           "included (they run again on resume)")
    tune.add_argument("--trial-timeout", type=_positive_float, default=None,
                      metavar="SECONDS",
                      help="fail a trial that runs longer than this (its worker is stopped "
                           "and replaced)")
    tune.set_defaults(func=_cmd_tune, tune_command=None, dtype="float32")
    tune_sub = tune.add_subparsers(dest="tune_command", metavar="report",
                                   parser_class=_Parser)
    report = tune_sub.add_parser("report", help="a stored study's trials, best first, and plots")
    report.add_argument("report_storage", metavar="STORAGE", help="the study's SQLite file")
    report.add_argument("--plots", metavar="DIR",
                        help="write plots there: value vs lr, value vs 1-beta, best so far "
                             "(needs matplotlib)")
    report.add_argument("--top", type=_positive_int, default=None,
                        help="show only the best N trials")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2, no usage dump
        self.exit(2, f"fastnn: error: {message}\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default (unless it has none worth showing)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if "%(default)" in text or any(action.default is v for v in (
                None, False, True, argparse.SUPPRESS)):  # `is`: 0 == False
            return text
        if isinstance(action.default, list):
            return text + f" (default: {','.join(map(str, action.default))})"
        return text + " (default: %(default)s)"


_DATA_HELP = "a .npz, .csv[.gz], .tsv or IDX file of features and labels"
_LABEL_HELP = ("the labels' column: an index (0 = first, -1 = last) or a header name; NPZ: the "
               "labels' array name; IDX: the labels file (default: a column named label, "
               "target, class or y, else the last)")


def _add_split_flags(parser) -> None:
    parser.add_argument("--test-size", type=_fraction, default=0.2,
                        help="fraction of the rows held out as the test set (stratified)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the held-out split (the same rows in train and tune)")


def _add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="train an MLP on the bundled digits (or --data)",
                           formatter_class=_Help, description="Train an MLP classifier; "
                           "--save keeps it (with its feature scaling and optimizer state) "
                           "for fastnn predict, evaluate and --resume.")
    data = train.add_argument_group("data")
    data.add_argument("--data", help=_DATA_HELP + " (default: the bundled digits)")
    data.add_argument("--label-column", type=_label_column, help=_LABEL_HELP)
    _add_split_flags(data)
    data.add_argument("--validation-split", type=_fraction, default=0.0,
                      help="fraction of the training rows held out to report val_ metrics")
    data.add_argument("--no-standardize", dest="standardize", action="store_false",
                      help="do not scale features by the training rows' mean and std (the "
                           "scaling is a Standardize layer saved in the model)")
    model = train.add_argument_group("model")
    model.add_argument("--hidden", type=_hidden_sizes, default=[256],
                       help="hidden layer widths, comma-separated")
    model.add_argument("--layers", type=_positive_int, default=None,
                       help="number of hidden layers, each --hidden wide (a tuned 'layers')")
    model.add_argument("--activation", choices=tuple(_names.ACTIVATIONS), default="relu",
                       help="hidden activation")
    model.add_argument("--no-batch-norm", dest="batch_norm", action="store_false",
                       help="leave out BatchNorm after each hidden Dense")
    model.add_argument("--dropout", type=_fraction, default=0.0, help="dropout rate")
    model.add_argument("--label-smoothing", type=_fraction, default=0.0,
                       help="cross-entropy label smoothing")
    model.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="precision of the model and data")
    opt = train.add_argument_group("optimizer")
    opt.add_argument("--optimizer", choices=tuple(_names.OPTIMIZERS), default="adam",
                     help="sgd means Nesterov momentum (--beta1, default 0.9)")
    opt.add_argument("--lr", type=_positive_float, default=3e-3, help="initial learning rate")
    opt.add_argument("--decay", choices=_decay_names(), default="cosine",
                     help="learning-rate decay per epoch (cosine: to 0 at the last epoch)")
    opt.add_argument("--decay-rate", type=_non_negative_float, default=0.1,
                     help="inverse_time's k, exponential's factor, step's drop every 10 "
                          "epochs")
    opt.add_argument("--beta1", type=_fraction, default=None,
                     help="Adam's beta_1, SGD's momentum, RMSprop's momentum (default: "
                          "theirs: 0.9, 0.9, 0)")
    opt.add_argument("--beta2", type=_fraction, default=None,
                     help="Adam's beta_2, RMSprop's rho (default: theirs: 0.999, 0.9)")
    opt.add_argument("--weight-decay", type=_non_negative_float, default=None,
                     help="L2 weight decay (AdamW: decoupled; default: the optimizer's, 0 "
                          "or AdamW's 0.01)")
    run = train.add_argument_group("training")
    run.add_argument("--epochs", type=_positive_int, default=30,
                     help="epochs in all (with --resume: the total to reach, counting those "
                          "already trained)")
    run.add_argument("--batch-size", type=_positive_int, default=32, help="minibatch size")
    run.add_argument("--seed", type=int, default=0, help="initialisation, shuffling, dropout")
    run.add_argument("--backend", choices=("cython", "numpy"), default="cython",
                     help="kernel backend")
    run.add_argument("--params-from", metavar="STUDY",
                     help="take the hyperparameters of a fastnn tune study's best trial (flags "
                          "given here win)")
    run.add_argument("--trial", type=int, default=None,
                     help="with --params-from: this trial number instead of the best")
    run.add_argument("--save", help="write the trained model (with optimizer state) here")
    run.add_argument("--resume", help="continue training a model saved with --save: the "
                     "schedule and epoch count go on; architecture flags must match it")
    run.add_argument("--plot", help="write learning curves here (needs matplotlib)")
    run.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                     help="0 silent, 1 progress bars, 2 one line per epoch "
                          "(default: 1 on a terminal, else 2)")
    train.set_defaults(func=_cmd_train)


def _add_predict_parsers(sub) -> None:
    for name, func, text in (
            ("predict", _cmd_predict, "predict with a saved model (raw features: the model "
             "standardises them itself)"),
            ("evaluate", _cmd_evaluate, "loss and accuracy of a saved model on a labelled "
             "file")):
        cmd = sub.add_parser(name, help=text, description=text, formatter_class=_Help)
        cmd.add_argument("model", metavar="MODEL", help="a model saved by fastnn train --save")
        cmd.add_argument("--data", required=True,
                         help=_DATA_HELP + "; predict also takes features only")
        cmd.add_argument("--label-column", type=_label_column, help=_LABEL_HELP)
        if name == "predict":
            cmd.add_argument("--output", help="write the predictions to this CSV file "
                             "(default: stdout)")
            cmd.add_argument("--proba", action="store_true",
                             help="add each class's probability")
        cmd.set_defaults(func=func, dtype="float32")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastnn", description="fastnn: a small, fast CPU neural-net library.")
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_train_parser(sub)
    _add_predict_parsers(sub)
    _add_tune_parser(sub)
    info = sub.add_parser("info", help="version, build flags, backend, NumPy and BLAS")
    info.set_defaults(func=_cmd_info)
    bench = sub.add_parser("bench", help="time the kernels on the cython and numpy backends",
                           formatter_class=_Help)
    bench.add_argument("--quick", action="store_true", help="smaller sizes, shorter timing")
    bench.add_argument("--threads", type=_positive_int, default=1,
                       help="BLAS/OpenMP threads (needs threadpoolctl)")
    bench.set_defaults(func=_cmd_bench)
    export = sub.add_parser("export", help="write a saved model as ONNX (BatchNorm folded; "
                            "needs the onnx extra)")
    export.add_argument("model", metavar="MODEL", help="a model file written by --save")
    export.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    export.add_argument("--opset", type=_positive_int, default=None,
                        help="the ONNX opset (default 17)")
    export.add_argument("--dtype", choices=("float32", "float64"), default=None,
                        help="the graph's precision (default: the model's)")
    export.set_defaults(func=_cmd_export)
    return parser


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield child
                yield from _subparsers(child)


def _given(argv: list[str]) -> set[str]:
    """The options given on the command line (their dests), whatever their values."""
    parser = build_parser()
    for child in [parser, *_subparsers(parser)]:
        for action in child._actions:
            if not isinstance(action, argparse._SubParsersAction):
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _stdout_closed() -> int:
    """`fastnn ... | head`: the reader left; stop quietly (no BrokenPipe message)."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, as a shell reports a command killed by it


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    args.argv = argv
    args.given = _given(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        print("\nfastnn: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError,
            OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"fastnn: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
