"""Recipe: a word-level LSTM language model on a pre-tokenized corpus, evaluated as the literature does.

DATA_DIR holds ``train.txt`` / ``valid.txt`` / ``test.txt`` or Mikolov's ``ptb.train.txt`` /
``ptb.valid.txt`` / ``ptb.test.txt``: one sentence per line, tokens separated by spaces, ``<unk>``
for rare words.  The recipe trains ``rnnkit train lm --level word --tokenizer whitespace`` (an
``<eos>`` per line, the vocabulary exactly the training file's types) with a preset named after
what it reproduces, exports an fp32 + int8 bundle and measures valid / test perplexity with
``rnnkit eval-lm``'s protocol (one stream, the state carried across the whole file, every token
including ``<eos>`` predicted) on both backends, fp32 and int8.  It writes
``OUT/report.json`` and prints the table (``OUT/table.md``).

Presets (Zaremba et al. 2014, "Recurrent neural network regularization", PTB):

* ``zaremba-small``: 2x200 LSTM, no dropout, 13 epochs, 20 streams x 20 steps (paper: 120.7 valid,
  114.5 test);
* ``zaremba-medium``: 2x650 LSTM, dropout 0.5, 39 epochs, 20 x 35 (paper: 86.2 valid, 82.7 test);
* ``zaremba-medium-tied``: the medium model with the head tied to the embedding (Press & Wolf 2017).

Adapted to one CPU: Adam (lr 2e-3 small, 1e-3 medium) with the rate divided by 4 whenever an
epoch does not lower the valid loss (``--lr-schedule plateau``), instead of the paper's SGD at
lr 1 halved (small) or divided by 1.2 (medium) on a fixed epoch schedule; gradient norm clipped at 5 as in
the paper; weights initialised by torch's defaults (tied: U(-0.1, 0.1) for the shared matrix).
``--epochs`` and ``--max-train-tokens`` shorten a run.

    .venv/bin/python scripts/make_word_corpus.py --out runs/ewt-ptb
    .venv/bin/python scripts/word_lm.py runs/ewt-ptb --preset zaremba-small --out runs/word-lm-small
    .venv/bin/python scripts/word_lm.py PTB_DIR --preset zaremba-medium --out runs/ptb-medium
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_COMMON = dict(cell="lstm", layers=2, tokenizer="whitespace", batch_size=20, clip=5.0, lr_schedule="plateau")
PRESETS = {
    "zaremba-small": dict(_COMMON, hidden=200, embed=200, dropout=0.0, bptt=20, lr=2e-3, epochs=13),
    "zaremba-medium": dict(_COMMON, hidden=650, embed=650, dropout=0.5, bptt=35, lr=1e-3, epochs=39),
    "zaremba-medium-tied": dict(
        _COMMON, hidden=650, embed=650, dropout=0.5, bptt=35, lr=1e-3, epochs=39, tie_weights=True
    ),
}
PAPER = {  # Zaremba et al. 2014, Table 1 (PTB): what each preset is named after
    "zaremba-small": {"valid": 120.7, "test": 114.5},
    "zaremba-medium": {"valid": 86.2, "test": 82.7},
    "zaremba-medium-tied": None,
}
LAYOUTS = (("train.txt", "valid.txt", "test.txt"), ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"))


def find_splits(data_dir: Path) -> tuple[Path, Path, Path]:
    for names in LAYOUTS:
        paths = tuple(data_dir / n for n in names)
        if all(p.is_file() for p in paths):
            return paths  # type: ignore[return-value]
    raise SystemExit(
        f"{data_dir}: expected {', '.join(LAYOUTS[0])} or {', '.join(LAYOUTS[1])} -- build one with "
        "scripts/make_word_corpus.py"
    )


def evaluate(bundle: Path, paths: dict[str, Path]) -> dict:
    """eval-lm's numbers (one stream) for every split x backend x precision."""
    from rnnkit.runtime import load
    from rnnkit.runtime.perplexity import perplexity

    out: dict = {}
    for backend in ("onnxruntime", "numba"):
        for int8 in (False, True):
            model = load(bundle, backend=backend, int8=int8, threads=1)
            for split, path in paths.items():
                t0 = time.perf_counter()
                result = perplexity(model, path.read_text(encoding="utf-8"), streams=1)
                key = f"{split}/{backend}/{'int8' if int8 else 'fp32'}"
                out[key] = {**result.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
                print(f"  {key}: perplexity {result.perplexity:.3f} over {result.tokens} tokens", flush=True)
    return out


def table(report: dict) -> str:
    ev, rows = report["eval"], []
    rows.append("| split | onnxruntime fp32 | numba fp32 | onnxruntime int8 | numba int8 |")
    rows.append("|---|---|---|---|---|")
    for split in ("valid", "test"):
        cells = [
            f"{ev[f'{split}/{b}/{p}']['perplexity']:.2f}" for p in ("fp32", "int8") for b in ("onnxruntime", "numba")
        ]
        rows.append(f"| {split} | " + " | ".join(cells) + " |")
    epochs = report["history"]
    per_epoch = sum(h["seconds"] for h in epochs) / len(epochs)
    rows.append("")
    rows.append(
        f"{report['preset']} ({report['data']}): {len(epochs)} epochs, best {report['best_epoch']}, "
        f"{per_epoch:.1f} s/epoch on {report['threads']} thread(s), {report['train_tokens']} training tokens"
    )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="zaremba-small")
    ap.add_argument("--epochs", type=int, default=0, help="override the preset's epochs (0: the preset's)")
    ap.add_argument("--max-train-tokens", type=int, default=0, help="train on the first N tokens only (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-vocab", type=int, default=10000, help="the corpus's types kept (PTB: 10,000)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "word-lm")
    ap.add_argument("--force", action="store_true", help="replace an earlier run in --out")
    args = ap.parse_args()

    from rnnkit.runtime.io import atomic_writer
    from rnnkit.toolkit.export_checkpoint import DevSet, export_checkpoint
    from rnnkit.toolkit.train_lm import LMTrainConfig, train_lm

    train, valid, test = find_splits(args.data_dir)
    preset = dict(PRESETS[args.preset])
    if args.epochs:
        preset["epochs"] = args.epochs
    config = LMTrainConfig(
        level="word",
        seed=args.seed,
        threads=args.threads,
        max_train_tokens=args.max_train_tokens,
        max_vocab=args.max_vocab,
        **preset,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result = train_lm(train, args.out / "ckpt", config, dev_path=valid, force=args.force or None)
    bundle = args.out / "bundle"
    if bundle.exists() and args.force:
        import shutil

        shutil.rmtree(bundle)
    t0 = time.perf_counter()
    exported = export_checkpoint(
        args.out / "ckpt",
        bundle,
        int8=True,
        dev=DevSet([valid.read_text(encoding="utf-8")], None, str(valid)),
        min_agreement=0.0,
        log=print,
    )
    export_s = time.perf_counter() - t0
    report = {
        "preset": args.preset,
        "data": str(args.data_dir),
        "config": preset,
        "paper": PAPER[args.preset],
        "best_epoch": result.best_epoch,
        "train_time_s": round(result.train_time_s, 1),
        "threads": args.threads,
        "train_tokens": result.num_train,
        "valid_tokens": result.num_dev,
        "export_s": round(export_s, 1),
        "bundle_dev": exported["manifest"]["validation"].get("dev"),
        "history": result.history,
    }
    print("evaluating (one stream, state carried across each file)", flush=True)
    report["eval"] = evaluate(bundle, {"valid": valid, "test": test})
    report["table"] = table(report)
    with atomic_writer(args.out / "report.json") as f:
        f.write(json.dumps(report, indent=1) + "\n")
    with atomic_writer(args.out / "table.md") as f:
        f.write(report["table"] + "\n")
    print(report["table"])


if __name__ == "__main__":
    main()
