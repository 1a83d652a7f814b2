"""PNG figures of explanations (``rnnkit explain --format png``), like the training curves:
an encoder-decoder's alignment (output tokens x source tokens) as a heatmap, a classifier's or
tagger's token scores as bars.  matplotlib is imported lazily (``plots.pyplot``)."""

from __future__ import annotations

from ..runtime.explain import Explanation
from ..runtime.explain_render import AGAINST, ALIGN, SUPPORT, prediction_text
from .plots import pyplot


def plot_explanations(explanations: list[Explanation], handle) -> None:
    """One panel per explanation, stacked, written as PNG to the open binary ``handle`` (the caller's
    ``atomic_writer``, so a failed plot leaves no half-written file)."""
    plt = pyplot()
    heights = [max(2.2, 0.35 * len(e.targets or []) + 1.6) if e.alignment else 2.2 for e in explanations]
    widths = [max(4.0, 0.45 * len(e.tokens) + 1.5) for e in explanations]
    fig, axes = plt.subplots(len(explanations), 1, figsize=(max(widths), sum(heights)), squeeze=False)
    for ax, e in zip(axes[:, 0], explanations):
        if e.alignment and e.targets is not None and "output" in e.prediction:
            _alignment(fig, ax, e)
        else:
            _bars(ax, e)
        ax.set_title(f"{prediction_text(e)}  ({e.method})", fontsize=10)
    fig.tight_layout()
    fig.savefig(handle, format="png")
    plt.close(fig)  # pyplot keeps every open figure alive


def _alignment(fig, ax, e: Explanation) -> None:
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("align", [(1, 1, 1), tuple(c / 255 for c in ALIGN)])
    image = ax.imshow(e.alignment, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(e.tokens)), e.tokens)
    ax.set_yticks(range(len(e.targets or [])), e.targets)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    fig.colorbar(image, ax=ax, fraction=0.04, label="attention")


def _bars(ax, e: Explanation) -> None:
    colours = [tuple(c / 255 for c in (SUPPORT if s >= 0 else AGAINST)) for s in e.scores]
    ax.bar(range(len(e.tokens)), e.scores, color=colours)
    ax.set_xticks(range(len(e.tokens)), e.tokens, rotation=45, ha="right")
    ax.axhline(0.0, color="#888", linewidth=0.8)
    ax.set_ylabel("score")
