"""The ``fastnn`` command line (also ``python -m fastnn``).

* ``fastnn train``: train an MLP on the bundled digits (or ``--data``), report test accuracy;
* ``fastnn tune``: search an MLP's hyperparameters on the digits (or ``--data``);
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
        ]
    lines.append(f"numpy {np.__version__}, BLAS: {_blas_summary()}")
    lines += ["  " + p for p in _threadpools()]
    policy = _threads.info()
    lines += [
        f"cpu cores: {os.cpu_count()} ({policy['cores']} usable by this process)",
        f"fastnn threads: {policy['threads']} (from {policy['source']}; set with "
        f"FASTNN_NUM_THREADS or fastnn.set_num_threads), for matrix products of "
        f">= {policy['parallel_min_macs']:,} multiply-adds; smaller ones run on 1",
    ]
    lines += [f"  limits {b}" for b in policy["blas"]]
    return lines


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


def _positive_float(text: str) -> float:
    return _number(text, low=0.0, high=float("inf"), low_open=True, what="a positive number")


def _build_model(args, n_classes: int):
    from . import Sequential
    from .layers import mlp
    from .losses import SoftmaxCrossEntropy

    layers = mlp(args.hidden, n_classes, activation=args.activation,
                 batch_norm=args.batch_norm, dropout=args.dropout)
    return Sequential(layers, dtype=args.dtype, seed=args.seed,
                      loss=SoftmaxCrossEntropy(label_smoothing=args.label_smoothing))


def _build_optimizer(args):
    from . import optimizers, schedules

    lr = schedules.decay(args.decay, args.lr, rate=args.decay_rate, total=args.epochs)
    # SGD from the command line: Nesterov momentum 0.9, the course's usual setting
    options = {"momentum": 0.9, "nesterov": True} if args.optimizer == "sgd" else {}
    return optimizers.make(args.optimizer, lr, **options)


def _load_data(args):
    from . import datasets

    if args.data is None:
        X, y = datasets.load_digits(dtype=args.dtype)
        source = "bundled UCI digits (1797 8x8 images; Alpaydin & Kaynak 1998, CC BY 4.0)"
    else:
        X, y = datasets.load(args.data, dtype=args.dtype)
        source = str(args.data)
    return X, y, source


def _standardize(X_train, X_test):
    """Scale features by the training set's mean and standard deviation (constant ones: 1)."""
    import numpy as np

    mean = X_train.mean(axis=0, dtype=np.float64)
    std = X_train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return ((X_train - mean) / std).astype(X_train.dtype), ((X_test - mean) / std).astype(
        X_test.dtype)


def _cmd_train(args: argparse.Namespace) -> int:
    import numpy as np

    from . import datasets, load

    ops.set_backend(args.backend)
    X, y, source = _load_data(args)
    X_train, X_test, y_train, y_test = datasets.train_test_split(
        X, y, test_size=args.test_size, seed=args.split_seed)
    if args.standardize:
        X_train, X_test = _standardize(X_train, X_test)
    if args.resume:
        model = load(args.resume)
        if args.optimizer_given or args.lr_given:
            model.optimizer.lr = args.lr
        print(f"resumed {args.resume}: {model.epochs_trained} epochs trained so far")
    else:
        n_classes = int(np.unique(y_train).size)
        model = _build_model(args, n_classes)
        model.optimizer = _build_optimizer(args)
    print(f"data: {source}; train {X_train.shape[0]}, test {X_test.shape[0]} "
          f"(split seed {args.split_seed}), {X.shape[1]} features")
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    start = time.perf_counter()
    history = model.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_split=args.validation_split, seed=args.seed,
                        verbose=verbose)
    elapsed = time.perf_counter() - start
    if args.verbose != 0:
        model.summary()
    result = model.evaluate(X_test, y_test)
    correct = int(round(result["accuracy"] * X_test.shape[0]))
    if history.stop_reason:
        print(f"note: {history.stop_reason}")
    print(f"trained {len(history.epoch)} epochs in {elapsed:.2f} s on the {ops.get_backend()} "
          f"backend ({model.dtype.name})")
    print(f"test loss {result['loss']:.4f}, test accuracy {result['accuracy']:.4f} "
          f"({correct}/{X_test.shape[0]})")
    if args.save:
        model.save(args.save)
        print(f"saved to {args.save}")
    if args.plot:
        from .plot import history as plot_history

        plot_history(history, args.plot, title=f"fastnn on {source.split(' (')[0]}")
        print(f"learning curves written to {args.plot}")
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
                  metric=args.metric, checkpoint_dir=args.checkpoint_dir, verbose=1)
    space = _tune_space(args)
    workers = f"{args.jobs} worker(s)" + (f" on dask {args.dask}" if args.dask else "")
    if args.data is None:
        print(f"tuning an MLP on the bundled UCI digits ({args.epochs} epochs per trial, "
              f"{workers})", flush=True)

        def run(**kw):
            return tune.tune_digits(space, **common, **kw)
    else:
        from . import datasets

        X, y = datasets.load(args.data)
        n_classes = int(np.unique(y).size)
        print(f"tuning an MLP on {args.data}: {X.shape[0]} samples, {X.shape[1]} features, "
              f"{n_classes} classes ({args.epochs} epochs per trial, {workers})", flush=True)
        space = tune.digits_space() if space is None else space

        def run(**kw):
            return tune.tune_model(tune.MLPBuilder(n_classes), X, y, space, standardize=True,
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
    print(study.summary().splitlines()[0])
    print(f"{len(study.trials)} trials in the study; {elapsed:.1f} s for this run")
    best = study.best_trial
    print(f"best: trial {best.number}, {args.metric} {best.value:.4f}")
    print(f"  params: {tune.study.format_params(best.params)}")
    if args.storage:
        print(f"study stored in {args.storage} (fastnn tune report {args.storage})")
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
                          "--data); `tune report STORAGE` shows a stored study")
    tune.add_argument("--data", help="a .npz, .csv[.gz] or IDX file of features and labels "
                      "(default: the bundled digits)")
    tune.add_argument("--strategy", choices=TUNE_STRATEGIES, default=None,
                      help="how to propose trials (default random, or the stored study's)")
    tune.add_argument("--staged", action="store_true",
                      help="the course's order: lr; then beta1, hidden, batch_size; then "
                           "layers, decay (each stage with --strategy)")
    tune.add_argument("--trials", type=_positive_int, default=None,
                      help="the study's total number of trials (default 20, or the stored "
                           "study's)")
    tune.add_argument("--jobs", type=_positive_int, default=1,
                      help="trials run in parallel, one process each (default 1)")
    tune.add_argument("--storage", help="an SQLite file for the study; running the same "
                      "command again resumes it")
    tune.add_argument("--seed", type=int, default=None,
                      help="the study seed (default: fresh, stored with the study)")
    tune.add_argument("--epochs", type=_positive_int, default=10,
                      help="training epochs per trial (default 10)")
    tune.add_argument("--metric", choices=("val_accuracy", "val_loss"), default="val_accuracy")
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
    tune.set_defaults(func=_cmd_tune, tune_command=None)
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastnn", description="fastnn: a small, fast CPU neural-net library.")
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    train = sub.add_parser("train", help="train an MLP on the bundled digits (or --data)")
    train.add_argument("--data", help="a .npz, .csv[.gz] or IDX file of features and labels "
                       "(default: the bundled digits)")
    train.add_argument("--hidden", type=_hidden_sizes, default=[256],
                       help="hidden layer widths, comma-separated (default 256)")
    train.add_argument("--activation", choices=tuple(_names.ACTIVATIONS), default="relu")
    train.add_argument("--no-batch-norm", dest="batch_norm", action="store_false",
                       help="leave out BatchNorm after each hidden Dense")
    train.add_argument("--dropout", type=_fraction, default=0.0)
    train.add_argument("--optimizer", choices=tuple(_names.OPTIMIZERS),
                       default="adam")
    train.add_argument("--lr", type=_positive_float, default=3e-3,
                       help="initial learning rate (default 3e-3)")
    train.add_argument("--decay", choices=_decay_names(), default="cosine",
                       help="learning-rate decay per epoch (default cosine, to 0 at the last "
                            "epoch)")
    train.add_argument("--decay-rate", type=_positive_float, default=0.1,
                       help="inverse_time's k, exponential's factor, step's drop every 10 "
                            "epochs (default 0.1)")
    train.add_argument("--label-smoothing", type=_fraction, default=0.0)
    train.add_argument("--epochs", type=_positive_int, default=30)
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--test-size", type=_fraction, default=0.2)
    train.add_argument("--validation-split", type=_fraction, default=0.0)
    train.add_argument("--no-standardize", dest="standardize", action="store_false",
                       help="do not scale features by the training set's mean and std")
    train.add_argument("--seed", type=int, default=0, help="initialisation, shuffling, dropout")
    train.add_argument("--split-seed", type=int, default=0, help="the held-out split")
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    train.add_argument("--backend", choices=("cython", "numpy"), default="cython")
    train.add_argument("--save", help="write the trained model (with optimizer state) here")
    train.add_argument("--resume", help="continue training a model saved with --save")
    train.add_argument("--plot", help="write learning curves here (needs matplotlib)")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                       help="0 silent, 1 progress bars, 2 one line per epoch "
                            "(default: 1 on a terminal, else 2)")
    train.set_defaults(func=_cmd_train)
    _add_tune_parser(sub)
    info = sub.add_parser("info", help="version, build flags, backend, NumPy and BLAS")
    info.set_defaults(func=_cmd_info)
    bench = sub.add_parser("bench", help="time the kernels on the cython and numpy backends")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, shorter timing")
    bench.add_argument("--threads", type=_positive_int, default=1,
                       help="BLAS/OpenMP threads (needs threadpoolctl; default 1)")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    args.optimizer_given = any(a.startswith("--optimizer") for a in argv)
    args.lr_given = any(a.startswith("--lr") for a in argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError,
            OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"fastnn: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
