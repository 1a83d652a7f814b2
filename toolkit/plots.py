"""Training-curve PNG: train and dev loss (left axis) and dev accuracy (right axis) per epoch.

matplotlib is imported lazily with the non-interactive Agg backend, so training works on
headless machines and importing rnnkit never pulls matplotlib in.  ``pyplot`` and
``save_figure`` are shared with the other figures (``rnnkit.toolkit.tag_metrics``).
"""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend; call inside a plotting function, never at import."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Lay out, write and close ``fig`` (closing frees it: pyplot keeps every open figure alive)."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    pyplot().close(fig)
    return path


def plot_curves(history: list[dict], path, title: str = "") -> Path:
    """``history``: one dict per epoch with ``epoch``, ``train_loss``, ``dev_loss``, ``dev_accuracy``."""
    best = max(history, key=lambda h: h["dev_accuracy"])
    return _loss_and(
        history,
        path,
        "dev_accuracy",
        "dev accuracy",
        "cross-entropy loss",
        best,
        "center right",
        title or f"best dev accuracy {best['dev_accuracy']:.4f} (epoch {best['epoch']})",
    )


def plot_lm_curves(history: list[dict], path, unit: str = "token") -> Path:
    """Language model: train and dev loss in nats per ``unit`` (left), dev perplexity (right)."""
    best = min(history, key=lambda h: h["dev_loss"])
    return _loss_and(
        history,
        path,
        "dev_perplexity",
        "dev perplexity",
        f"cross-entropy (nats/{unit})",
        best,
        "upper right",
        f"best dev loss {best['dev_loss']:.4f} nats/{unit} (epoch {best['epoch']})",
    )


def _loss_and(history, path, key: str, label: str, loss_label: str, best: dict, legend: str, title: str) -> Path:
    """Train/dev loss on the left axis, one dev metric on the right, the best epoch marked."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax.plot(epochs, [h["dev_loss"] for h in history], "s-", label="dev loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel(loss_label)
    ax2 = ax.twinx()
    ax2.plot(epochs, [h[key] for h in history], "^-", color="tab:green", label=label)
    ax2.set_ylabel(label)
    ax2.axvline(best["epoch"], color="gray", linestyle=":", linewidth=1, label="best epoch")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc=legend, fontsize=8)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
