"""MR sentence-polarity recipe: train the reported configurations and print a results table.

Data: /work/shared/datasets/mr_polarity (rt-polarity.pos / .neg), seeded stratified 90/10
split of the folder (dev_split=0.1, seed=0: 9596 train / 1066 dev).  Tuning used dev only;
no pretrained vectors.  Each run uses 1 torch thread (the machine is shared).

    .venv/bin/python scripts/mr_sweep.py                    # every configuration below
    .venv/bin/python scripts/mr_sweep.py --only bigru_max small
    .venv/bin/python scripts/mr_sweep.py --only small --copy-to /tmp/mr_small

Checkpoints go to <out-root>/<name>; --copy-to copies the checkpoint of the (single or best)
run to the given folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from rnnkit.toolkit.train import TrainConfig, train_classifier

DATA = "/work/shared/datasets/mr_polarity"
COMMON = dict(dev_split=0.1, seed=0, threads=1, epochs=10, patience=3, batch_size=32)

CONFIGS = {
    # one-directional baselines, final state (the "classic" RNN classifier)
    "rnn_last": dict(cell="rnn", bidirectional=False, pooling="last", embed=128, hidden=128, lr=1e-3),
    "lstm_last": dict(cell="lstm", bidirectional=False, pooling="last", embed=128, hidden=128, lr=2e-3),
    "gru_last": dict(cell="gru", bidirectional=False, pooling="last", embed=128, hidden=128, lr=2e-3),
    # bidirectional with max pooling over time
    "birnn_max": dict(cell="rnn", bidirectional=True, pooling="max", embed=128, hidden=128, lr=1e-3),
    "bilstm_max": dict(cell="lstm", bidirectional=True, pooling="max", embed=128, hidden=128, lr=2e-3),
    "bigru_max": dict(cell="gru", bidirectional=True, pooling="max", embed=128, hidden=128, lr=2e-3),
    # attention pooling (Yang et al. 2016) + word dropout
    "bigru_attn": dict(
        cell="gru", bidirectional=True, pooling="attention", embed=128, hidden=128, lr=2e-3, word_dropout=0.1
    ),
    # the small demo model shipped with the package (~1-2 MB checkpoint)
    "small": dict(cell="gru", bidirectional=True, pooling="max", embed=64, hidden=64, lr=3e-3, max_vocab=8000),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run only these configurations")
    ap.add_argument("--out-root", default="/tmp/mr_sweep", help="checkpoints go to OUT_ROOT/<name>")
    ap.add_argument("--copy-to", help="copy the best run's checkpoint here (replaces it)")
    ap.add_argument("--epochs", type=int, help="override the number of epochs (quick checks)")
    args = ap.parse_args()

    rows = []
    for name in args.only or CONFIGS:
        cfg = TrainConfig(**{**COMMON, **CONFIGS[name], **({"epochs": args.epochs} if args.epochs else {})})
        out = Path(args.out_root) / name
        t0 = time.perf_counter()
        r = train_classifier(DATA, out, cfg, progress=False, log=lambda m, n=name: print(f"[{n}] {m}", flush=True))
        size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
        rows.append(
            {
                "name": name,
                "dev_accuracy": r.dev_accuracy,
                "dev_macro_f1": r.dev_macro_f1,
                "best_epoch": r.best_epoch,
                "epochs_run": len(r.history),
                "train_time_s": round(time.perf_counter() - t0, 1),
                "checkpoint_mb": round(size, 2),
                "config": asdict(cfg),
                "out": str(out),
            }
        )

    print()
    print(
        f"{'config':<12} {'cell':<5} {'bi':<3} {'pool':<9} {'E/H':<8} {'dev acc':>8} {'macro-F1':>9} "
        f"{'best ep':>8} {'time s':>7} {'ckpt MB':>8}"
    )
    for row in rows:
        c = row["config"]
        print(
            f"{row['name']:<12} {c['cell']:<5} {'y' if c['bidirectional'] else 'n':<3} {c['pooling']:<9} "
            f"{str(c['embed']) + '/' + str(c['hidden']):<8} {100 * row['dev_accuracy']:>8.2f} "
            f"{100 * row['dev_macro_f1']:>9.2f} {row['best_epoch']:>4}/{row['epochs_run']:<3} "
            f"{row['train_time_s']:>7.0f} {row['checkpoint_mb']:>8.2f}"
        )
    Path(args.out_root).mkdir(parents=True, exist_ok=True)
    (Path(args.out_root) / "results.json").write_text(json.dumps(rows, indent=1))
    if args.copy_to:
        best = max(rows, key=lambda r: r["dev_accuracy"])
        dst = Path(args.copy_to)
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(best["out"], dst)
        print(f"copied {best['name']} ({100 * best['dev_accuracy']:.2f}) to {dst}")


if __name__ == "__main__":
    main()
