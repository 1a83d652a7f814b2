"""Recipe: grapheme-to-phoneme conversion on CMUdict (English words -> ARPAbet phones, stress-free).

Reads ``../shared/datasets/cmudict/cmudict.dict`` (alternates ``word(2)`` belong to ``word``,
``# comments`` dropped, stress digits stripped: published CMUdict G2P numbers are stress-free),
splits the *words* with a fixed seed into 85% train / 5% dev / 10% test (all pronunciations of a
word on one side), writes ``train.tsv`` / ``dev.tsv`` / ``test.tsv`` (``word<TAB>PH ON ES``, one
line per pronunciation) to ``--out``, trains ``rnnkit train seq2seq`` (char source, lower-cased;
word-level phones) with dev PER/WER each epoch, then scores greedy decoding (torch) on test.
A word is right if its output equals any of its reference pronunciations (WER); PER is the
edit distance to the closest reference over the sum of those references' lengths.

    .venv/bin/python scripts/g2p_cmudict.py --preset small --limit 600 --epochs 1 --out /tmp/g2p-smoke
    nice -n 5 .venv/bin/python scripts/g2p_cmudict.py --preset best --threads 1 --out /work/runs/g2p-best
    .venv/bin/python scripts/g2p_cmudict.py --preset large-ft --init runs/g2p-large/ckpt --out runs/g2p-large-ft

Goal (issue 6): test WER <= 24%, PER <= 6.5% (stress-free).  The exported bundle's beam-search
numbers come from ``evaluate_outputs`` (``rnnkit.toolkit.seq_metrics``) on ``test.tsv``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cmudict" / "cmudict.dict"
SPLIT = (0.85, 0.05, 0.10)  # train / dev / test share of the distinct words
SPLIT_SEED = 0  # the published split: keep it fixed across presets and model seeds
PRESETS = {  # Seq2SeqTrainConfig overrides (token options: the config's G2P defaults)
    "small": dict(
        cell="lstm",
        layers=1,
        hidden=128,
        embed=64,
        attention="dot",
        dropout=0.2,
        batch_size=64,
        lr=3e-3,
        lr_schedule="cosine",
        epochs=5,
    ),
    # best: sized for <= 70 min on one loaded core (timed: ~0.30 s per 128-pair batch, 898 batches,
    # ~4.6 min per epoch + ~0.5 min dev decoding); a bidirectional 2x192 encoder, 384-wide decoder
    # medium: what fits ~35 min on one core (~2.4 min per epoch measured); also the faster bundle
    "medium": dict(
        cell="lstm",
        layers=2,
        hidden=256,
        embed=128,
        attention="dot",
        dropout=0.25,
        batch_size=128,
        lr=3e-3,
        lr_schedule="cosine",
        epochs=14,
    ),
    "best": dict(
        cell="lstm",
        layers=2,
        hidden=384,
        embed=128,
        attention="dot",
        dropout=0.3,
        batch_size=128,
        lr=2e-3,
        lr_schedule="cosine",
        epochs=11,
    ),
    # large: best's network trained longer (~100 min on one core) with label smoothing 0.1
    "large": dict(
        cell="lstm",
        layers=2,
        hidden=384,
        embed=128,
        attention="dot",
        dropout=0.3,
        batch_size=128,
        lr=2e-3,
        lr_schedule="cosine",
        epochs=20,
        label_smoothing=0.1,
    ),
    # large-ft: a second cosine cycle from a trained checkpoint (--init runs/g2p-large/ckpt), at a quarter of
    # large's peak rate (a warm restart: SGDR, Loshchilov & Hutter 2017); architecture from the checkpoint
    "large-ft": dict(dropout=0.3, batch_size=128, lr=5e-4, lr_schedule="cosine", epochs=8, label_smoothing=0.1),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N words of each split (smoke runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="model seed (the word split always uses seed 0)")
    ap.add_argument("--keep-stress", action="store_true", help="keep the 0/1/2 stress digits on vowels")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "g2p")
    ap.add_argument("--init", type=Path, help="fine-tune this checkpoint (trained on the same split: large-ft)")
    ap.add_argument(
        "--split-only",
        action="store_true",
        help="write train.tsv / dev.tsv / test.tsv to --out and stop (e.g. for benchmarks/g2p_speed.py)",
    )
    args = ap.parse_args()

    from rnnkit.toolkit.pairs import group_pairs, group_split, read_cmudict, write_pairs
    from rnnkit.toolkit.seq_metrics import evaluate_outputs
    from rnnkit.toolkit.train_seq2seq import Seq2SeqTrainConfig, load_seq2seq_checkpoint, reference_form, train_seq2seq

    args.out.mkdir(parents=True, exist_ok=True)
    pairs = read_cmudict(DATA, keep_stress=args.keep_stress)
    parts = dict(zip(("train", "dev", "test"), group_split(pairs, SPLIT, SPLIT_SEED)))
    if args.limit:
        keep = {name: {e.source for e in group_pairs(p)[: args.limit]} for name, p in parts.items()}
        parts = {name: [pr for pr in p if pr[0] in keep[name]] for name, p in parts.items()}
    for name, p in parts.items():
        write_pairs(args.out / f"{name}.tsv", p)
    if args.split_only:
        print(json.dumps({"out": str(args.out), "pairs": {k: len(v) for k, v in parts.items()}}))
        return
    overrides = {
        **PRESETS[args.preset],
        **({"epochs": args.epochs} if args.epochs else {}),
        **({"init": str(args.init)} if args.init else {}),
    }
    if args.preset.endswith("-ft") and not args.init:
        ap.error(f"--preset {args.preset} fine-tunes a trained checkpoint: give --init CKPT")
    config = Seq2SeqTrainConfig(seed=args.seed, threads=args.threads, **overrides)
    result = train_seq2seq(args.out / "train.tsv", args.out / "ckpt", config, dev_path=args.out / "dev.tsv")

    ckpt = load_seq2seq_checkpoint(args.out / "ckpt")
    test = group_pairs(parts["test"])
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    hyps = ckpt.translate([e.source for e in test])
    decode_s = time.perf_counter() - t0
    refs = [[reference_form(ckpt.target_tokenizer, r) for r in e.references] for e in test]
    scores = evaluate_outputs(hyps, refs)
    report = {
        "preset": args.preset,
        "config": overrides,
        "split": {
            "fractions": SPLIT,
            "seed": SPLIT_SEED,
            "words": {k: len(group_pairs(v)) for k, v in parts.items()},
            "pairs": {k: len(v) for k, v in parts.items()},
            "limit": args.limit,
        },
        "stress": args.keep_stress,
        "best_epoch": result.best_epoch,
        "dev": {k: result.dev[k] for k in ("token_error_rate", "sequence_error_rate", "loss")},
        "test_greedy": {
            "PER": scores["token_error_rate"],
            "WER": scores["sequence_error_rate"],
            "words": scores["count"],
            "decode_s": round(decode_s, 1),
        },
        "train_time_s": round(result.train_time_s, 1),
        "threads": args.threads,
        "history": result.history,
        "test_samples": [
            {"word": e.source, "output": h, "references": r} for e, h, r in list(zip(test, hyps, refs))[:20]
        ],
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k not in ("history", "test_samples")}, indent=1))


if __name__ == "__main__":
    main()
