"""Classification metrics in plain numpy: accuracy, macro-F1, confusion matrix.

Labels are integer ids ``0..num_labels-1``.  Macro-F1 averages per-class F1 over the
classes that occur in ``y_true`` or ``y_pred`` (as scikit-learn's ``f1_score(average=
"macro")`` does); a class with no true positive has F1 = 0 (sklearn's ``zero_division=0``).

No torch, no sklearn.
"""

from __future__ import annotations

import numpy as np


def _as_ids(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    return t, p


def accuracy(y_true, y_pred) -> float:
    t, p = _as_ids(y_true, y_pred)
    return float((t == p).mean()) if t.size else 0.0


def confusion_matrix(y_true, y_pred, num_labels: int | None = None) -> np.ndarray:
    """int64 (K, K): row = true label, column = predicted label."""
    t, p = _as_ids(y_true, y_pred)
    k = num_labels if num_labels is not None else int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= k):
        raise ValueError(f"label ids must be in [0, {k}), got range [{min(t.min(), p.min())}, {max(t.max(), p.max())}]")
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (t, p), 1)
    return m


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    denom = support + predicted  # 2TP + FP + FN
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(y_true, y_pred, num_labels: int | None = None) -> float:
    cm = confusion_matrix(y_true, y_pred, num_labels)
    present = (cm.sum(axis=1) + cm.sum(axis=0)) > 0
    return float(per_class_f1(cm)[present].mean()) if present.any() else 0.0


def evaluate(y_true, y_pred, num_labels: int) -> dict:
    """JSON-ready summary: accuracy, macro_f1, confusion (nested lists), n."""
    cm = confusion_matrix(y_true, y_pred, num_labels)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, num_labels),
        "confusion": cm.tolist(),
        "n": int(cm.sum()),
    }
