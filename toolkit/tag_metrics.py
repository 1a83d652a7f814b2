"""Tagging metrics in plain numpy: token accuracy, accuracy on words unseen in training, confusion.

Sentences are lists of tag ids; metrics are over all tokens (punctuation included, as UD
papers report).  "Unseen" = the token's normalised form (``WordTokenizer.normalize``) never
occurs in the training split.  The confusion matrix is ``rnnkit.toolkit.metrics``'s (row =
gold tag, column = predicted); here it also becomes a TSV table and a PNG (matplotlib Agg,
imported lazily through ``rnnkit.toolkit.plots``).  No torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rnnkit.toolkit.metrics import confusion_matrix


def _flat(rows: Sequence[Sequence[int]]) -> np.ndarray:
    return np.fromiter((x for r in rows for x in r), dtype=np.int64)


def evaluate_tags(
    gold: Sequence[Sequence[int]], pred: Sequence[Sequence[int]], unseen: Sequence[Sequence[bool]], num_tags: int
) -> dict:
    """JSON-ready: accuracy, unseen_accuracy (None without unseen tokens), n, n_unseen, confusion."""
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tag sequences differ in number or length")
    g, p = _flat(gold), _flat(pred)
    u = np.fromiter((x for r in unseen for x in r), dtype=bool)
    ok = g == p
    return {
        "accuracy": float(ok.mean()) if ok.size else 0.0,
        "unseen_accuracy": float(ok[u].mean()) if u.any() else None,
        "n": int(ok.size),
        "n_unseen": int(u.sum()),
        "confusion": confusion_matrix(g, p, num_tags).tolist(),
    }


def confusion_table(cm, tags: Sequence[str]) -> str:
    """TSV: header ``gold\\pred`` + tags + ``total`` + ``recall``; one row per gold tag."""
    cm = np.asarray(cm, dtype=np.int64)
    lines = ["gold\\pred\t" + "\t".join(tags) + "\ttotal\trecall"]
    for i, tag in enumerate(tags):
        total = int(cm[i].sum())
        recall = f"{cm[i, i] / total:.4f}" if total else "-"
        lines.append(f"{tag}\t" + "\t".join(str(int(x)) for x in cm[i]) + f"\t{total}\t{recall}")
    return "\n".join(lines) + "\n"


def plot_confusion(cm, tags: Sequence[str], path, title: str = "") -> Path:
    """Row-normalised heat map (recall per gold tag) with the counts written in the cells."""
    from rnnkit.toolkit.plots import pyplot, save_figure

    plt = pyplot()

    cm = np.asarray(cm, dtype=np.int64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(tags)
    size = max(4.0, 0.45 * k + 1.5)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=tags, rotation=90, fontsize=7)
    ax.set_yticks(range(k), labels=tags, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=5,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(title or f"token accuracy {acc:.4f}", fontsize=9)
    return save_figure(fig, path)
