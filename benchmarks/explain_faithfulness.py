"""Faithfulness of ``explain`` on MR dev (ERASER, DeYoung et al. 2020), and top-3 agreement across backends.

    rnnkit train classify --train ../shared/datasets/mr_polarity --out /tmp/explain_mr/ckpt \\
        --pooling attention --cell gru --hidden 64 --embed 64 --lr 0.003 --max-vocab 8000 \\
        --epochs 10 --patience 3 --seed 0 --threads 1
    python benchmarks/explain_faithfulness.py /tmp/explain_mr/ckpt

The checkpoint is exported (fp32) to ``$RNNKIT_BENCH_DIR`` and explained on its own held-out dev
split (the seeded 10% ``rnnkit train`` selected epochs on, found through its training record as
``rnnkit export`` finds it).  For each dev sentence and method, the top k% of tokens by score
(k = 10, 20, 50; at least one token) form the rationale r:

* comprehensiveness = p(y | x) - p(y | x without r): how much the prediction falls when r is deleted;
* sufficiency = p(y | x) - p(y | r alone): how much it falls when only r is kept (lower is better);

y is the label predicted on the full sentence.  Tokens are *deleted* (ERASER's protocol), not
replaced by ``<unk>`` as occlusion scores them, so occlusion is not graded on its own perturbation.
``random`` ranks tokens by a seeded shuffle (seed 0).  Agreement: the top-3 token positions of
each dev sentence on onnxruntime and numba (fp32), per method.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import common  # noqa: F401
import numpy as np
from common import WORK, machine, table

FRACTIONS = (0.1, 0.2, 0.5)


def rationale(order: list[int], n: int, fraction: float) -> set[int]:
    return set(order[: max(1, math.ceil(fraction * n))])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--limit", type=int, default=0, help="first N dev sentences only (0: all)")
    args = parser.parse_args(argv)
    from rnnkit.runtime import load
    from rnnkit.toolkit.devset import dev_set_for
    from rnnkit.toolkit.export_checkpoint import export_checkpoint

    dev = dev_set_for(args.checkpoint)
    if dev is None:
        sys.exit(f"{args.checkpoint}: its dev data is not on this machine")
    bundle = export_checkpoint(
        args.checkpoint, WORK / "explain_mr.bundle", dev=dev, min_agreement=0.0, log=lambda m: None
    )["path"]
    texts = [t for t in dev.items if t.strip()]
    if args.limit:
        texts = texts[: args.limit]
    print(f"{len(texts)} MR dev sentences ({dev.source}); {machine()}", file=sys.stderr)

    models = {b: load(bundle, backend=b, threads=1) for b in ("onnxruntime", "numba")}
    model = models["onnxruntime"]
    found = {}
    for backend, m in models.items():
        for method in ("occlusion", "attention"):
            found[backend, method] = m.explain(texts, method=method)
            print(f"  explained with {method} on {backend}", file=sys.stderr)

    rng = np.random.default_rng(0)
    orders: dict[str, list[list[int]]] = {"random": []}
    for method in ("occlusion", "attention"):
        orders[method] = [
            sorted(range(len(e.scores)), key=lambda i: (-e.scores[i], i)) for e in found["onnxruntime", method]
        ]
    for e in found["onnxruntime", "occlusion"]:
        orders["random"].append([int(i) for i in rng.permutation(len(e.tokens))])

    base = found["onnxruntime", "occlusion"]
    labels = [e.prediction["label"] for e in base]
    p_full = np.array([e.prediction["score"] for e in base])
    ids = model.encode(texts)
    rows = []
    for method, per_text in orders.items():
        row = [method]
        for fraction in FRACTIONS:
            without, only = [], []
            for tokens, order in zip(ids, per_text):
                keep = rationale(order, len(tokens), fraction)
                without.append([t for i, t in enumerate(tokens) if i not in keep])
                only.append([t for i, t in enumerate(tokens) if i in keep])
            p_without = probability(model, without, labels)
            p_only = probability(model, only, labels)
            row += [float(np.mean(p_full - p_without)), float(np.mean(p_full - p_only))]
        rows.append(row)
    headers = ["method"] + [f"{k} @{int(f * 100)}%" for f in FRACTIONS for k in ("comp", "suff")]
    print(table(headers, rows))
    comp = {r[0]: float(np.mean(r[1::2])) for r in rows}
    best = max(("occlusion", "attention"), key=comp.get)
    print(
        f"\nmean comprehensiveness: {', '.join(f'{k} {v:.3f}' for k, v in comp.items())}; "
        f"best ({best}) / random = {comp[best] / comp['random']:.2f}x (goal >= 2x)"
    )

    agree = []
    for method in ("occlusion", "attention"):
        a, b = found["onnxruntime", method], found["numba", method]
        same = sum(x.top(3) == y.top(3) for x, y in zip(a, b))
        same_set = sum(set(x.top(3)) == set(y.top(3)) for x, y in zip(a, b))
        agree.append([method, len(a), same, same_set])
    print()
    print(table(["method", "sentences", "same top-3 (in order)", "same top-3 (as a set)"], agree))


def probability(model, id_rows: list[list[int]], labels: list[str]) -> np.ndarray:
    """p(label | ids) per row, from the graph's logits on the id rows themselves (no re-tokenizing);
    a row with every token deleted reads as one <unk> (a graph needs at least one token)."""
    from rnnkit.runtime.session import length_buckets, pad, softmax

    rows = [r if r else [1] for r in id_rows]
    wanted = np.array([model.labels.index(label) for label in labels])
    out = np.empty(len(rows))
    for batch in length_buckets([len(r) for r in rows], 64):
        probs = softmax(model.logits(*pad([rows[i] for i in batch])).astype(np.float64))
        out[batch] = probs[np.arange(len(batch)), wanted[batch]]
    return out


if __name__ == "__main__":
    main()
