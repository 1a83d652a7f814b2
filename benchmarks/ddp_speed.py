"""Training speed on N processes (``rnnkit train classify --nproc N``, DDP over gloo) vs one process.

Trains the MR classifier (``../shared/datasets/mr_polarity``, the seeded 10% dev split of the
folder) with the same options, seed and global batch once per process count, each process on
``--threads 1``, one after the other in fresh processes, and prints side by side: training samples
per second (training examples x epochs / the training loop's seconds: every batch, every dev
evaluation; from the checkpoint's ``time_s``), the wall seconds of the whole command (process start,
data reading and N interpreters importing torch included), the best dev accuracy, and the speed-up
over one process.  Run it on an otherwise idle machine: a busy core slows one of the N ranks and
every rank waits for it at each gradient all-reduce.

It also trains one process at half the batch (16) and prints the ceiling of any 2-process
speed-up of this model: 2 x samples/s(batch 16) / samples/s(batch 32), the speed-up two ranks
would reach with free communication (each rank's step is a batch-16 step).

    python benchmarks/ddp_speed.py                      # 1 and 2 processes, 3 epochs of MR, small model
    python benchmarks/ddp_speed.py --model teacher --epochs 1
    python benchmarks/ddp_speed.py --nproc 1,2,4 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "mr_polarity"
# the global batch is 32 (16 per rank at --nproc 2); the last run: one process at batch 16
MODELS = {
    # the small MR model (embed / hidden 64, as mr_small): a step's time is mostly per-time-step op
    # overhead, which a half batch does not halve
    "small": ["--cell", "gru", "--bidirectional", "--pooling", "max", "--embed", "64", "--hidden", "64"]
    + ["--lr", "0.003", "--max-vocab", "8000"],
    # scripts/mr_distill.py's teacher (bidirectional GRU 256): more arithmetic per example
    "teacher": ["--cell", "gru", "--bidirectional", "--pooling", "max", "--embed", "128", "--hidden", "256"]
    + ["--lr", "0.002"],
}


def rnnkit() -> list[str]:
    script = Path(sys.executable).parent / "rnnkit"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rnnkit.toolkit"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", default="1,2", help="process counts, comma-separated")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    args = ap.parse_args()

    rows = []
    runs = [(int(x), 32) for x in args.nproc.split(",")] + [(1, 16)]
    with tempfile.TemporaryDirectory(prefix="ddp-speed-") as tmp:
        for n, batch in runs:
            out = Path(tmp) / f"nproc{n}-batch{batch}"
            cmd = [*rnnkit(), "train", "classify", "--train", str(DATA), "--out", str(out), *MODELS[args.model]]
            cmd += ["--epochs", str(args.epochs), "--seed", str(args.seed), "--threads", "1", "--nproc", str(n)]
            cmd += ["--batch-size", str(batch)]
            print("$ " + " ".join(cmd), flush=True)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            t = json.loads((out / "config.json").read_text(encoding="utf-8"))["training"]
            rate = t["num_train"] * t["epochs_run"] / t["time_s"]
            rows.append((n, batch, rate, t["time_s"], wall, t["dev"]["accuracy"], t["best_epoch"]))
    print(
        f"\nMR, {args.model} model, {args.epochs} epochs, global batch 32, --threads 1 per process; "
        f"{os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), load average {os.getloadavg()[0]:.2f} at the end"
    )
    head = ("nproc", "batch", "samples/s", "loop s", "wall s", "dev acc", "best ep", "speed-up")
    print("  ".join(f"{h:>{w}}" for h, w in zip(head, (5, 5, 9, 7, 7, 7, 7, 8))))
    base = rows[0][2]
    for n, batch, rate, loop_s, wall, acc, best in rows:
        print(
            f"{n:>5}  {batch:>5}  {rate:9.0f}  {loop_s:7.1f}  {wall:7.1f}  {acc:7.4f}  {best:>7}  {rate / base:7.2f}x"
        )
    print(f"ceiling of a 2-process speed-up (2 x samples/s at batch 16 / at batch 32): {2 * rows[-1][2] / base:.2f}x")


if __name__ == "__main__":
    main()
