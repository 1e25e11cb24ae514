"""Learning curves and tuning-study plots (optional: needs matplotlib,
``pip install "fastnn-cpu[plot]"``)."""

from __future__ import annotations

from pathlib import Path

from ._names import HYPERPARAMETERS

__all__ = ["history", "tune_best_so_far", "tune_param", "tune_report"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError('fastnn.plot needs matplotlib: pip install "fastnn-cpu[plot]"') from None
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg") and not _has_display():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or os.name == "nt")


def history(h, path=None, *, title: str | None = None):
    """Plot loss, accuracy (if recorded) and learning rate per epoch.

    Parameters
    ----------
    h : History or dict
        ``model.fit(...)`` result (or its ``.history`` dict).
    path : str or Path, optional
        Write the figure there (format from the suffix, e.g. ``.png``).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    logs = h.history if hasattr(h, "history") else dict(h)
    if not logs.get("loss"):
        raise ValueError("the history has no 'loss' values to plot")
    epochs = list(getattr(h, "epoch", [])) or list(range(len(logs["loss"])))
    epochs = [e + 1 for e in epochs]
    panels = ["loss"] + (["accuracy"] if "accuracy" in logs else []) + (
        ["lr"] if len(set(logs.get("lr", []))) > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=True):
        ax.plot(epochs, logs[metric], marker=".", label="train" if metric != "lr" else "lr")
        if f"val_{metric}" in logs:
            ax.plot(epochs, logs[f"val_{metric}"], marker=".", label="validation")
        if metric == "lr":
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(Path(path), dpi=110)
    return fig


# ------------------------------------------------------------------------------------------
# Hyperparameter studies (fastnn.tune)
# ------------------------------------------------------------------------------------------

def _complete(study) -> list:
    complete = [t for t in study.trials if t.state == "complete"]
    if not complete:
        raise ValueError("the study has no complete trial to plot")
    return complete


def tune_param(study, name: str, path=None, *, one_minus: bool = False, log: bool = True):
    """Each complete trial's value against one parameter (a log axis by default).

    Parameters
    ----------
    study : fastnn.tune.Study
    name : str
        A parameter of the study's trials, e.g. "lr".
    path : str or Path, optional
        Write the figure there.
    one_minus : bool
        Plot against ``1 - value`` (β and momentum: 1 − β on a log axis spreads 0.9, 0.99,
        0.999 evenly).
    log : bool
        A logarithmic x axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    trials = [t for t in _complete(study) if isinstance(t.params.get(name), (int, float))]
    if not trials:
        raise ValueError(f"no complete trial has a numeric parameter {name!r}")
    x = [(1.0 - t.params[name]) if one_minus else t.params[name] for t in trials]
    y = [t.value for t in trials]
    best = study.best_trial
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.scatter(x, y, s=18, alpha=0.75, label="trials")
    if best.params.get(name) is not None:
        bx = (1.0 - best.params[name]) if one_minus else best.params[name]
        ax.scatter([bx], [best.value], s=80, marker="*", color="C3",
                   label=f"best (#{best.number})", zorder=3)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"1 − {name}" if one_minus else name)
    ax.set_ylabel("value")
    ax.set_title(f"value vs {'1 − ' if one_minus else ''}{name} ({study.direction})")
    return _finish(fig, ax, path)


def tune_best_so_far(study, path=None):
    """Every complete trial's value by trial number, with the best value so far as a step line.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    trials = sorted(_complete(study), key=lambda t: t.number)
    sign = 1.0 if study.direction == "maximize" else -1.0
    numbers, values, best = [], [], []
    for t in trials:
        numbers.append(t.number)
        values.append(t.value)
        best.append(t.value if not best else sign * max(sign * best[-1], sign * t.value))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.scatter(numbers, values, s=14, alpha=0.5, label="trial value")
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel("value")
    ax.set_title(f"best so far ({study.direction})")
    return _finish(fig, ax, path)


def _finish(fig, ax, path):
    """Grid and legend on ``ax``; the figure laid out and, if ``path``, saved."""
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(Path(path), dpi=110)
    return fig


def tune_report(study, directory) -> list[Path]:
    """Write a study's plots into ``directory`` (created if missing); returns their paths.

    ``value_vs_lr.png`` (if the trials have ``lr`` or ``learning_rate``),
    ``value_vs_one_minus_beta.png`` (if they have ``beta1``, ``beta_1``, ``beta`` or
    ``momentum``), both on log axes, and ``best_so_far.png``.
    """
    plt = _pyplot()
    complete = _complete(study)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def present(names):
        return next((n for n in names
                     if all(isinstance(t.params.get(n), (int, float)) for t in complete)
                     and len({t.params[n] for t in complete}) > 1), None)

    paths = []
    lr = present(HYPERPARAMETERS["lr"])
    if lr is not None:
        paths.append(directory / "value_vs_lr.png")
        plt.close(tune_param(study, lr, paths[-1]))
    beta = present(HYPERPARAMETERS["beta1"])
    if beta is not None and all(0 <= t.params[beta] < 1 for t in complete):
        paths.append(directory / "value_vs_one_minus_beta.png")
        plt.close(tune_param(study, beta, paths[-1], one_minus=True))
    paths.append(directory / "best_so_far.png")
    plt.close(tune_best_so_far(study, paths[-1]))
    return paths
