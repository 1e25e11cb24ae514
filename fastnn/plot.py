"""Learning-curve plots (optional: needs matplotlib, ``pip install "fastnn-cpu[plot]"``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["history"]


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
