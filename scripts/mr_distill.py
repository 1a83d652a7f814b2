"""MR sentence polarity: a small classifier distilled from a larger one vs the same model without a
teacher, dev accuracy over several seeds (printed as a table).

Data: ../shared/datasets/mr_polarity, split once (stratified, seed 0, 10% dev: 9596 train / 1066
dev) into ``OUT/train.jsonl`` / ``OUT/dev.jsonl``, so every run, teacher and students of every seed,
trains and selects on the same texts (a per-seed split would let the teacher have trained on a
student's dev texts).  Dev is used for the best epoch only; there is no test split.

1. the teacher (``TEACHER``: a bidirectional GRU 256, 1 thread) -> ``OUT/teacher``;
2. per seed, the small student (``STUDENT``: embed / hidden 64, ``scripts/mr_sweep.py``'s ``small``, the
   shipped ``mr_small``; seed 0 plain is that run) twice: plain, and
   with ``--teacher OUT/teacher`` (soft targets at ``--temperature``, weight ``--alpha``; the
   teacher's logits are computed by the first distilled run and read from the cache by the others).

Each run is one ``rnnkit train classify`` process with ``--threads 1`` (its command is printed);
``--jobs`` of them run at once.

    .venv/bin/python scripts/mr_distill.py --out /tmp/mr-distill --jobs 2
    .venv/bin/python scripts/mr_distill.py --out /tmp/mr-distill --seeds 0 --student-epochs 1   # quick check
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "mr_polarity"
TEACHER = dict(cell="gru", bidirectional=True, pooling="max", embed=128, hidden=256, lr=2e-3, epochs=10, patience=3)
STUDENT = dict(
    cell="gru", bidirectional=True, pooling="max", embed=64, hidden=64, lr=3e-3, max_vocab=8000, epochs=10, patience=3
)


def flags(options: dict) -> list[str]:
    out = []
    for k, v in options.items():
        if isinstance(v, bool):
            out.append(f"--{k}" if v else f"--{'unidirectional' if k == 'bidirectional' else 'no-' + k}")
        else:
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def rnnkit() -> list[str]:
    script = Path(sys.executable).parent / "rnnkit"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rnnkit.toolkit"]


def write_split(out: Path) -> tuple[Path, Path]:
    from rnnkit.runtime.io import atomic_writer
    from rnnkit.toolkit.data import read_examples, split_dev

    train, dev = split_dev(read_examples(DATA), 0.1, 0)
    paths = []
    for name, part in (("train", train), ("dev", dev)):
        path = out / f"{name}.jsonl"
        with atomic_writer(path) as f:
            f.writelines(json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False) + "\n" for e in part)
        paths.append(path)
    return paths[0], paths[1]


def finished(ckpt: Path) -> bool:
    try:
        return "in_progress" not in json.loads((ckpt / "config.json").read_text(encoding="utf-8"))["training"]
    except (OSError, ValueError, KeyError):
        return False


def run_all(commands: dict[str, list[str]], jobs: int, logs: Path) -> None:
    """Run the commands, ``jobs`` at a time, each one's output to ``logs/NAME.log``; a run whose
    checkpoint (``OUT/NAME``) is finished already is kept (delete it to run it again)."""
    for name in [n for n in commands if finished(logs.parent / n)]:
        print(f"[{name}] finished already: {logs.parent / name} kept", flush=True)
        del commands[name]
    todo, running = list(commands.items()), {}
    while todo or running:
        while todo and len(running) < jobs:
            name, cmd = todo.pop(0)
            print(f"[{name}] $ {shlex.join(cmd)}", flush=True)
            log = open(logs / f"{name}.log", "w")  # noqa: SIM115 -- closed when the process ends
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log, time.perf_counter())
        time.sleep(0.5)
        for name, (proc, log, t0) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[name]
                if proc.returncode:
                    sys.exit(f"[{name}] failed (exit {proc.returncode}): see {logs / (name + '.log')}")
                print(f"[{name}] done in {time.perf_counter() - t0:.0f}s", flush=True)


def dev_accuracy(ckpt: Path) -> tuple[float, int, float]:
    t = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))["training"]
    return t["dev"]["accuracy"], t["best_epoch"], t["time_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/mr-distill"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (each one process, one thread)")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--student-epochs", type=int, default=STUDENT["epochs"])
    args = ap.parse_args()

    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    train, dev = write_split(out)
    base = [*rnnkit(), "train", "classify", "--train", str(train), "--dev", str(dev), "--threads", "1", "--force"]
    run_all({"teacher": [*base, "--out", str(out / "teacher"), *flags(TEACHER)]}, 1, out / "logs")
    student = {**STUDENT, "epochs": args.student_epochs}
    distil = ["--teacher", str(out / "teacher"), "--distill-temperature", str(args.temperature)]
    distil += ["--distill-alpha", str(args.alpha)]
    # the first distilled run fills the teacher's cache alone; the rest read it
    first, *rest = args.seeds
    name = f"distilled-{first}"
    run_all({name: [*base, "--out", str(out / name), *flags(student), "--seed", str(first), *distil]}, 1, out / "logs")
    runs = {}
    for seed in args.seeds:
        runs[f"plain-{seed}"] = [*base, "--out", str(out / f"plain-{seed}"), *flags(student), "--seed", str(seed)]
        if seed in rest:
            runs[f"distilled-{seed}"] = [
                *base, "--out", str(out / f"distilled-{seed}"), *flags(student), "--seed", str(seed), *distil
            ]  # fmt: skip
    run_all(runs, args.jobs, out / "logs")

    teacher_acc, teacher_epoch, teacher_s = dev_accuracy(out / "teacher")
    print(f"\nMR dev accuracy (1066 dev texts; split seed 0); teacher {TEACHER['cell']} bi {TEACHER['hidden']}: ")
    print(f"  {teacher_acc:.4f} (best epoch {teacher_epoch}, {teacher_s:.0f}s)")
    print(f"student: embed/hidden 64, T={args.temperature}, alpha={args.alpha}, {args.student_epochs} epochs max")
    print(f"{'seed':>4}  {'plain':>8}  {'distilled':>9}  {'diff':>7}")
    plain, distilled = [], []
    for seed in args.seeds:
        p, d = dev_accuracy(out / f"plain-{seed}")[0], dev_accuracy(out / f"distilled-{seed}")[0]
        plain.append(p)
        distilled.append(d)
        print(f"{seed:>4}  {p:8.4f}  {d:9.4f}  {d - p:+7.4f}")
    sd = statistics.stdev if len(args.seeds) > 1 else (lambda _xs: 0.0)
    print(
        f"{'mean':>4}  {statistics.mean(plain):8.4f}  {statistics.mean(distilled):9.4f}  "
        f"{statistics.mean(distilled) - statistics.mean(plain):+7.4f}"
    )
    print(f"{'sd':>4}  {sd(plain):8.4f}  {sd(distilled):9.4f}")


if __name__ == "__main__":
    main()
