"""Recipe: a G2P teacher on CMUdict (several processes), a smaller student distilled from it, both
exported and scored on the published test split.

The steps, each an ``rnnkit`` command printed before it runs (copy them to run one step alone):

1. the published split (``scripts/g2p_cmudict.py --split-only``: words split 85/5/10 with seed 0,
   stress-free) -> ``OUT/train.tsv``, ``OUT/dev.tsv``, ``OUT/test.tsv``;
2. the teacher: ``rnnkit train seq2seq ... --nproc N`` (DistributedDataParallel on N processes,
   1 thread each);
3. ``rnnkit export OUT/teacher --int8`` -> ``OUT/teacher.bundle``;
4. the student: ``rnnkit train seq2seq ... --teacher OUT/teacher.bundle --distill-beam 5``
   (sequence-level distillation, Kim & Rush 2016: the teacher's int8 beam-5 outputs for the training
   words, beside the references; decoded once by the runtime, cached with provenance);
5. ``rnnkit export OUT/student --int8`` -> ``OUT/student.bundle``;
6. ``scripts/seq2seq_eval.py`` on ``OUT/test.tsv`` for both bundles (greedy and beam 5, fp32 and
   int8) -> ``OUT/teacher-test.json``, ``OUT/student-test.json``; a table of beam-5 WER / PER.

    .venv/bin/python scripts/g2p_distill.py --smoke --out /tmp/g2p-distill-smoke   # ~2 min, 300 words
    .venv/bin/python scripts/g2p_distill.py --nproc 16 --out runs/g2p-distill         # the full recipe

The full recipe's teacher is sized to beat the shipped model (2x384 BiLSTM encoder, 25.91% beam-5
test WER): 2x512, label smoothing 0.1, 30 epochs.  Not run to completion here: one epoch of the
shipped model's size took ~340 s on one thread (6801 s for 20), so this teacher needs a machine with
many cores (``--nproc``) or several machines (``torchrun``: docs/distillation.md).  ``--smoke``
proves the pipeline end to end on 300 words per split with tiny models; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TEACHER = dict(
    cell="lstm", layers=2, hidden=512, embed=256, dropout=0.3, batch_size=128, lr=2e-3, epochs=30, label_smoothing=0.1
)
STUDENT = dict(cell="lstm", layers=1, hidden=256, embed=64, dropout=0.2, batch_size=128, lr=3e-3, epochs=20)
# --smoke: big enough that the teacher's beam outputs are not empty (so the student gets teacher pairs)
SMOKE_TEACHER = dict(cell="lstm", layers=1, hidden=64, embed=32, dropout=0.0, batch_size=32, lr=1e-2, epochs=20)
SMOKE_STUDENT = dict(cell="lstm", layers=1, hidden=32, embed=16, dropout=0.0, batch_size=32, lr=1e-2, epochs=10)


def flags(options: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]


def rnnkit() -> list[str]:
    script = Path(sys.executable).parent / "rnnkit"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rnnkit.toolkit"]


def run(cmd: list[str]) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"  ({time.perf_counter() - t0:.0f}s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "g2p-distill")
    ap.add_argument("--nproc", type=int, default=2, help="teacher and student training processes")
    ap.add_argument("--smoke", action="store_true", help="300 words per split, tiny models: proves the pipeline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-teacher", action="store_true", help="reuse OUT/teacher.bundle")
    args = ap.parse_args()

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    teacher, student = (SMOKE_TEACHER, SMOKE_STUDENT) if args.smoke else (TEACHER, STUDENT)
    limit = ["--limit", "300"] if args.smoke else []
    common = ["--threads", "1", "--seed", str(args.seed), "--nproc", str(args.nproc), "--force"]
    data = ["--train", str(out / "train.tsv"), "--dev", str(out / "dev.tsv")]
    export = ["--int8"] + (["--min-agreement", "0"] if args.smoke else [])

    run([sys.executable, str(ROOT / "scripts" / "g2p_cmudict.py"), "--split-only", "--out", str(out), *limit])
    if not args.skip_teacher:
        run([*rnnkit(), "train", "seq2seq", *data, "--out", str(out / "teacher"), *flags(teacher), *common])
        run([*rnnkit(), "export", str(out / "teacher"), "--out", str(out / "teacher.bundle"), *export])
    distil = ["--teacher", str(out / "teacher.bundle"), "--distill-beam", "5", "--distill-int8"]
    distil += ["--distill-mix", "keep-references"]
    run([*rnnkit(), "train", "seq2seq", *data, "--out", str(out / "student"), *flags(student), *common, *distil])
    run([*rnnkit(), "export", str(out / "student"), "--out", str(out / "student.bundle"), *export])
    rows = {}
    for name in ("teacher", "student"):
        report = out / f"{name}-test.json"
        run(
            [sys.executable, str(ROOT / "scripts" / "seq2seq_eval.py"), str(out / f"{name}.bundle")]
            + ["--split", str(out / "test.tsv"), "--parity", "0", "--out", str(report)]
        )
        rows[name] = json.loads(report.read_text(encoding="utf-8"))["results"]
    print(f"\n{'model':8} {'decoding':12} {'WER %':>7} {'PER %':>7}  (test, {out / 'test.tsv'})")
    for name, results in rows.items():
        for key, r in results.items():
            if key.endswith("beam 5"):
                print(f"{name:8} {key:12} {r['WER']:7.2f} {r['PER']:7.2f}")


if __name__ == "__main__":
    main()
