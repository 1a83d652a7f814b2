"""Training-curve PNG: train and dev loss (left axis) and dev accuracy (right axis) per epoch;
the gradient-norm PNG of a run (``plot_gradients``).

matplotlib is imported lazily with the non-interactive Agg backend, so training works on
headless machines and importing rnnkit never pulls matplotlib in.  ``pyplot`` and
``save_figure`` are shared with the other figures (``rnnkit.toolkit.tag_metrics``).
"""

from __future__ import annotations

import os
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
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # atomic: no half-written PNG
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        pyplot().close(fig)
        tmp.unlink(missing_ok=True)
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


def plot_gradients(steps: list[dict], path, clip: float = 0.0, title: str = "") -> Path:
    """Gradient L2 norm per parameter group and in total over the optimizer steps (log scale),
    the clip threshold dashed, skipped (non-finite) steps as red ticks, epoch starts dotted.
    ``steps``: ``rnnkit.toolkit.gradients`` records (``step``, ``epoch``, ``norm``, ``groups``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    x = [r["step"] for r in steps]

    def values(get):  # non-finite values are stored as strings: a gap in the line
        out = []
        for r in steps:
            v = get(r)
            out.append(v if isinstance(v, (int, float)) and v > 0 else float("nan"))
        return out

    groups = list(steps[0]["groups"]) if steps else []
    for g in groups:
        ax.plot(x, values(lambda r, g=g: r["groups"].get(g)), linewidth=0.8, label=g)
    ax.plot(x, values(lambda r: r["norm"]), color="black", linewidth=1.0, label="total (before clipping)")
    if clip > 0:
        ax.axhline(clip, color="tab:red", linestyle="--", linewidth=1, label=f"clip {clip:g}")
    skipped = [r["step"] for r in steps if r.get("skipped")]
    for s in skipped:
        ax.axvline(s, color="tab:red", linewidth=0.6, alpha=0.6)
    starts = [r["step"] for prev, r in zip(steps, steps[1:]) if r["epoch"] != prev["epoch"]]
    for s in starts:
        ax.axvline(s, color="gray", linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step (dotted: epoch start)")
    ax.set_ylabel("gradient L2 norm")
    ax.legend(fontsize=7, loc="best", ncol=2)
    clipped = sum(bool(r.get("clipped")) for r in steps)
    default = f"{len(steps)} steps, {clipped} clipped" + (f", {len(skipped)} skipped (non-finite)" if skipped else "")
    ax.set_title(title or default, fontsize=9)
    return save_figure(fig, path)


def plot_gradient_flow(result: dict, path, min_share: float = 0.1) -> Path:
    """``rnnkit diagnose``'s curves: mean ||dL/dh_t|| per recurrent layer and direction against
    the distance from the loss (log scale); distances reached by fewer than ``min_share`` of the
    rows are left out (a mean over a handful of rows is noise)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    least = max(1, round(min_share * result["rows"]))
    for name, layer in result["layers"].items():
        pts = [(d, v) for d, (v, n) in enumerate(zip(layer["mean_norm"], layer["rows"])) if n >= least and v > 0]
        ax.plot([d for d, _ in pts], [v for _, v in pts], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("distance from the loss (steps)")
    ax.set_ylabel("mean ||dL/dh_t||")
    ax.set_title(f"{result['task']} ({result.get('cell')}), {result['rows']} sequences\n{result['loss']}", fontsize=8)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
