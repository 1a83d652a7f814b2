"""Training speed by torch thread count: seconds per epoch of the README's MR classifier.

Trains ``rnnkit train classify`` with the README's quick-start flags (``--cell gru --bidirectional
--pooling attention --word-dropout 0.1``) on ``../shared/datasets/mr_polarity`` for ``--epochs``
epochs at each thread count, every run in a fresh process, the order rotated per round, and
prints seconds per epoch (training pass plus dev evaluation, as the training log reports it) and
the ratio to 1 thread.  ``0`` is rnnkit's default (``toolkit/configs.py``: ``train_threads``, the idle CPUs);
its row says how many threads that is.  What this measures chooses that default: run it on an
idle machine (the load average is printed; another job on the cores makes more threads look worse).

    python benchmarks/train_threads.py                          # 1, 2 and the default, all of MR
    python benchmarks/train_threads.py --limit 800 --rounds 1   # a quick check that it works
    python benchmarks/train_threads.py --threads 1,2,4,0 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "mr_polarity"
QUICK_START = dict(cell="gru", bidirectional=True, pooling="attention", word_dropout=0.1)  # the README's flags
# math libraries read these at import and would cap torch's pool; each run sets its threads itself
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def write_subset(data: Path, limit: int, seed: int, folder: Path) -> Path:
    """The first ``limit`` examples of a seeded shuffle of ``data`` (0: all) as JSONL."""
    from rnnkit.toolkit.data import read_examples

    examples = read_examples(data)
    random.Random(seed).shuffle(examples)
    examples = examples[:limit] if limit else examples
    path = folder / "train.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False) + "\n")
    return path


def worker(data: str, threads: int, epochs: int) -> None:
    """One run in this process: print {"threads", "torch_threads", "seconds": per epoch} as JSON."""
    from rnnkit.toolkit.configs import TrainConfig, train_threads
    from rnnkit.toolkit.train import train_classifier

    config = TrainConfig(**QUICK_START, epochs=epochs, threads=threads)
    with tempfile.TemporaryDirectory() as out:
        result = train_classifier(data, Path(out) / "ckpt", config, progress=False, log=None, force=True)
    print(
        json.dumps(
            {
                "threads": threads,
                "torch_threads": train_threads(threads),
                "seconds": [h["seconds"] for h in result.history],
            }
        )
    )


def run_one(data: Path, threads: int, epochs: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    done = subprocess.run(
        [sys.executable, __file__, "--worker", str(data), "--threads", str(threads), "--epochs", str(epochs)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode:
        sys.exit(f"run with --threads {threads} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = ", load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} cores{load}, Python {platform.python_version()}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="MR folder (one file per label) or a labelled file")
    parser.add_argument("--threads", default="1,2,0", help="comma-separated thread counts (0: rnnkit's default)")
    parser.add_argument("--limit", type=int, default=0, help="train on this many examples (0: all; 10%% is dev)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (each one timed)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per thread count, the order rotated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, int(args.threads), args.epochs)
    counts = [int(t) for t in args.threads.split(",")]
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_subset(args.data, args.limit, args.seed, Path(tmp))
        n = sum(1 for _ in open(data, encoding="utf-8"))
        print(
            f"data: {n} examples of {args.data} (--limit {args.limit}), {args.epochs} epoch(s) x "
            f"{args.rounds} round(s), flags {QUICK_START}"
        )
        seconds: dict[int, list[float]] = {t: [] for t in counts}
        used: dict[int, int] = {}
        for r in range(args.rounds):
            for t in counts[r % len(counts) :] + counts[: r % len(counts)]:
                found = run_one(data, t, args.epochs)
                seconds[t] += found["seconds"]
                used[t] = found["torch_threads"]
                print(
                    f"  round {r + 1}: --threads {t} ({used[t]} torch threads): "
                    f"{', '.join(f'{s:.1f}' for s in found['seconds'])} s/epoch",
                    flush=True,
                )
    base = statistics.median(seconds[counts[0]])
    print(f"\n| --threads | torch threads | s/epoch (median) | vs --threads {counts[0]} |\n|---|---|---|---|")
    for t in counts:
        median = statistics.median(seconds[t])
        name = f"{t} (default)" if t == 0 else str(t)
        print(f"| {name} | {used[t]} | {median:.1f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
