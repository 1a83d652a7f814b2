"""Recipe: a character-level language model on tiny-shakespeare, trained on this machine's CPU.

Splits ``../shared/datasets/tinyshakespeare/input.txt`` 90/10 by position (nanoGPT's split: the
first 90% of the characters train, the last 10% are dev), trains ``rnnkit train lm --level char``
with the chosen preset, exports an fp32 + int8 bundle (dev loss of both recorded in the
manifest) and prints samples from the bundle.  Dev loss is in nats per character, comparable
with nanoGPT's ``val loss`` on the same split (1.4697 for its GPU GPT).

    .venv/bin/python scripts/shakespeare_lm.py --preset small --out runs/shakespeare-small
    .venv/bin/python scripts/shakespeare_lm.py --preset best --epochs 20 --out runs/shakespeare-best
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "tinyshakespeare" / "input.txt"
PRESETS = {  # model + optimisation; everything else is LMTrainConfig's default
    "small": dict(cell="lstm", layers=1, hidden=256, embed=64, dropout=0.0, batch_size=32, bptt=128, lr=3e-3),
    "medium": dict(cell="lstm", layers=1, hidden=512, embed=64, dropout=0.1, batch_size=32, bptt=128, lr=2e-3),
    "best": dict(
        cell="lstm",
        layers=2,
        hidden=512,
        embed=128,
        dropout=0.25,
        batch_size=32,
        bptt=128,
        lr=2e-3,
        lr_schedule="cosine",
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-train-tokens", type=int, default=0, help="train on the first N characters only (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "shakespeare")
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args()

    from rnnkit.toolkit.train_lm import LMTrainConfig, split_by_position, train_lm

    args.out.mkdir(parents=True, exist_ok=True)
    train_text, dev_text = split_by_position(DATA.read_text(encoding="utf-8"), 0.1)
    (args.out / "train.txt").write_text(train_text, encoding="utf-8")
    (args.out / "dev.txt").write_text(dev_text, encoding="utf-8")
    config = LMTrainConfig(
        level="char",
        epochs=args.epochs,
        seed=args.seed,
        threads=args.threads,
        max_train_tokens=args.max_train_tokens,
        **PRESETS[args.preset],
    )
    result = train_lm(args.out / "train.txt", args.out / "ckpt", config, dev_path=args.out / "dev.txt")
    report = {
        "preset": args.preset,
        "config": PRESETS[args.preset],
        "epochs": args.epochs,
        "dev_loss_nats_per_char": round(result.dev_loss, 4),
        "best_epoch": result.best_epoch,
        "train_time_s": round(result.train_time_s, 1),
        "threads": args.threads,
        "train_chars": result.num_train,
        "dev_chars": result.num_dev,
        "history": result.history,
    }
    if not args.no_export:
        from rnnkit.runtime import load
        from rnnkit.toolkit.devset import dev_set_for
        from rnnkit.toolkit.export_checkpoint import export_checkpoint

        t0 = time.perf_counter()
        out = export_checkpoint(
            args.out / "ckpt", args.out / "bundle", int8=True, dev=dev_set_for(args.out / "ckpt"), min_agreement=0.0
        )
        report["export_s"] = round(time.perf_counter() - t0, 1)
        report["bundle_dev"] = out["manifest"]["validation"].get("dev")
        model = load(args.out / "bundle", backend="onnxruntime", threads=1)
        report["samples"] = {
            f"seed {s}": model.generate_text("ROMEO:", max_tokens=300, temperature=0.8, top_k=0, seed=s) for s in (1, 2)
        }
        report["greedy"] = model.generate_text("ROMEO:", max_tokens=200, temperature=0)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
