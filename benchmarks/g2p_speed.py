"""G2P throughput, 1 thread: g2p_en's numpy model vs rnnkit's G2P bundle, on the same CMUdict test words.

Rows, all measured in this one run on the same words: g2p_en (its ``G2p.predict``, one word at a
time: it has no batched path), rnnkit on onnxruntime and numba, fp32 and int8, greedy at B=1 and
batched (``--batch`` words per call), and beam 5 batched.  Words/s and the ratio to g2p_en at
B=1; WER/PER of every row against the test words' CMUdict references (stress removed from all
outputs before scoring, as rnnkit's split is stress-free).  g2p_en's WER is reported, not
claimed: its training split is unknown, so the test words may be in its training data.

    pip install g2p-en==2.1.0          # the `compare` extra; only this benchmark needs it
    python benchmarks/g2p_speed.py --bundle runs/g2p-medium/bundle --bundle runs/g2p-small/bundle \
        --split runs/g2p-medium/test.tsv

g2p_en downloads NLTK data when imported; its neural model needs none of it, so ``nltk.download``
is replaced by a no-op before the import and its CMUdict lookup table by an empty dict (we time
the neural model, never the dictionary).
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import common  # noqa: F401  (pins 1 thread before numpy loads)
import numpy as np
from common import machine, table

STRESS = str.maketrans("", "", "012")


def load_g2p_en():
    import nltk

    nltk.download = lambda *args, **kwargs: False
    import g2p_en.g2p as module

    module.cmudict = types.SimpleNamespace(dict=lambda: {})
    return module.G2p()


def read_split(path) -> tuple[list[str], list[list[str]]]:
    """A test split file written by scripts/g2p_cmudict.py: word<TAB>phones (one line per reference)."""
    refs: dict[str, list[str]] = {}
    for line in open(path, encoding="utf-8"):
        if line.strip():
            word, phones = line.rstrip("\n").split("\t")[:2]
            refs.setdefault(word, []).append(phones.translate(STRESS))
    words = sorted(refs)
    return words, [refs[w] for w in words]


def scores(outputs: list[str], refs: list[list[str]]) -> tuple[float, float]:
    from rnnkit.toolkit.seq_metrics import evaluate_outputs

    result = evaluate_outputs([o.translate(STRESS) for o in outputs], refs)
    return result["sequence_error_rate"], result["token_error_rate"]


def timed(fn, words: list[str]) -> tuple[list[str], float]:
    start = time.perf_counter()
    out = fn(words)
    return out, len(words) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, action="append", help="a G2P bundle (repeat to compare several)")
    ap.add_argument("--split", required=True, help="test split TSV (word<TAB>phones)")
    ap.add_argument("--words", type=int, default=2000, help="test words timed (seeded sample; 0: all)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from rnnkit.runtime import load

    words, refs = read_split(args.split)
    if args.words and args.words < len(words):
        pick = np.sort(np.random.default_rng(args.seed).choice(len(words), args.words, replace=False))
        words, refs = [words[i] for i in pick], [refs[i] for i in pick]
    print(f"# {machine()}; {len(words)} CMUdict test words from {args.split}", file=sys.stderr)

    rows = []
    g2p = load_g2p_en()
    for w in words[:50]:
        g2p.predict(w)
    out, wps = timed(lambda ws: [" ".join(g2p.predict(w)) for w in ws], words)
    base = wps
    rows.append(["g2p_en 2.1.0 (numpy GRU, no attention)", "fp32", "greedy", 1, wps, 1.0, *scores(out, refs)])

    for bundle in args.bundle:
        name = Path(bundle).resolve().parent.name if Path(bundle).name == "bundle" else Path(bundle).name
        for backend in ("onnxruntime", "numba"):
            for int8 in (False, True):
                model = load(bundle, backend=backend, int8=int8, threads=1)
                model.translate(words[:64], beam=1)  # warm-up (numba: JIT cache load)
                kind = "int8" if int8 else "fp32"
                for beam, batch in ((1, 1), (1, args.batch), (5, args.batch)):
                    out, wps = timed(lambda ws: model.translate(ws, beam=beam, batch_size=batch), words)
                    rows.append(
                        [
                            f"rnnkit {name}, {backend}",
                            kind,
                            "greedy" if beam == 1 else f"beam {beam}",
                            batch,
                            wps,
                            wps / base,
                            *scores(out, refs),
                        ]
                    )
    print(
        table(
            ["engine", "weights", "search", "batch", "words/s", "x g2p_en", "WER", "PER"],
            [
                [r[0], r[1], r[2], r[3], round(r[4]), round(r[5], 2), f"{100 * r[6]:.2f}%", f"{100 * r[7]:.2f}%"]
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
