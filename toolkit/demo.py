"""``rnnkit demo``: the main job end to end on the embedded sentiment model (no user data).

Exports the small checkpoint shipped in the package ``rnnkit-demo-mr`` (a GRU trained on the
MR movie-review corpus, CC BY 4.0) with int8, then predicts its dev split on both
backends, fp32 and int8, and prints a side-by-side comparison.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..runtime.builtin import CHECKPOINTS, find, require

# The checkpoint ships in the package rnnkit-demo-mr (pulled in by rnnkit[train]), found by name;
# None when it is not installed, and run_demo says which extra installs it.
ASSET = find("mr_small", CHECKPOINTS)
SAMPLES = [
    "a gripping , beautifully acted film that earns every one of its tears",
    "the plot is a mess and the jokes fall flat",
    "not bad at all",
]


def run_demo(out: str, echo=print) -> dict:
    if ASSET is None:
        require("mr_small", CHECKPOINTS)  # raises a BundleError naming `pip install "rnnkit[train]"`
    from ..runtime import load
    from .devset import dev_set_for
    from .export_checkpoint import export_checkpoint

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = dev_set_for(ASSET, ASSET / "dev.tsv")
    echo(f"exporting {ASSET} -> {out_dir / 'sentiment.bundle'} (fp32 + int8, validated on both backends)")
    result = export_checkpoint(ASSET, out_dir / "sentiment.bundle", int8=True, dev=dev, log=echo)
    bundle = result["path"]
    gold = dev.labels
    rows, samples = [], {}
    for backend in ("onnxruntime", "numba"):
        for int8 in (False, True):
            model = load(bundle, backend=backend, int8=int8, threads=1)
            model.warmup()
            start = time.perf_counter()
            predictions = model.predict(dev.items, batch_size=32)
            seconds = time.perf_counter() - start
            accuracy = sum(p.label == g for p, g in zip(predictions, gold)) / len(gold)
            name = f"{backend} {'int8' if int8 else 'fp32'}"
            rows.append((name, accuracy, len(gold) / seconds, [p.label for p in predictions]))
            samples[name] = model.predict(SAMPLES)
    reference = rows[0][3]
    echo(f"\n{'backend':<18}{'dev accuracy':>14}{'texts/s (1 thread)':>20}{'agrees with onnxruntime fp32':>30}")
    for name, accuracy, speed, labels in rows:
        agree = sum(a == b for a, b in zip(labels, reference)) / len(reference)
        echo(f"{name:<18}{accuracy:>14.4f}{speed:>20.0f}{agree:>30.2%}")
    echo("")
    for i, text in enumerate(SAMPLES):
        echo(f"{text!r}")
        echo("   " + "  ".join(f"{name}: {p[i].label} {p[i].score:.3f}" for name, p in samples.items()))
    echo(f'\nbundle: {bundle}  (try: rnnkit predict {bundle} "what a lovely film" --backend numba)')
    return {"bundle": bundle, "rows": rows}
