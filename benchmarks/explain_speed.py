"""Explaining costs how many predictions?  Occlusion ``explain`` of a 20-token sentence vs one
``predict`` of it, 1 thread, each backend, fp32 and int8, measured side by side in one run.

    python benchmarks/explain_speed.py /tmp/explain_mr/bundle     # an MR bundle exported with --int8

Occlusion runs the sentence and its 20 variants (each token replaced by <unk>) as one batch of 21
rows, so its cost is one graph call on a batch of 21 plus the bookkeeping; the goal is <= 5x one
prediction.  The last column is the floor batching leaves: one graph call on the 21 rows against
one call on the sentence alone (on 1 thread a small recurrent model's cost grows almost linearly
with the rows of a batch).  Medians of ``timeit_blocks`` (contenders interleaved, so a noisy neighbour on the
shared machine hits them alike); absolute numbers are noisy, the ratios are the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common  # noqa: F401
import numpy as np
from common import machine, stats_ms, table, timeit_blocks

SENTENCE = "the acting is superb and the story moves along , but the ending is so dull that it ruins everything"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    from rnnkit.runtime import load
    from rnnkit.runtime.explain import occluded

    rows = []
    for backend in ("onnxruntime", "numba"):
        for int8 in (False, True):
            model = load(args.bundle, backend=backend, int8=int8, threads=1)
            n = len(model.encode([SENTENCE])[0])
            assert n == 20, f"the benchmark sentence has {n} tokens, expected 20"
            model.warmup()
            rows21 = occluded(model.encode([SENTENCE])[0])
            one, lens1, lens21 = rows21[:1], np.array([n], np.int32), np.full(n + 1, n, np.int32)
            times = timeit_blocks(
                {
                    "predict": lambda: model.predict([SENTENCE]),
                    "explain": lambda: model.explain([SENTENCE], method="occlusion"),
                    "call1": lambda: model.logits(one, lens1),
                    "call21": lambda: model.logits(rows21, lens21),
                },
                rounds=args.rounds,
                block=20,
            )
            ms = {k: stats_ms(v)[0] for k, v in times.items()}
            rows.append(
                [
                    backend,
                    "int8" if int8 else "fp32",
                    ms["predict"],
                    ms["explain"],
                    f"{ms['explain'] / ms['predict']:.2f}x",
                    f"{ms['call21'] / ms['call1']:.2f}x",
                ]
            )
    print(machine())
    headers = ["backend", "precision", "predict (ms)", "occlusion explain (ms)", "explain / predict (goal <= 5x)"]
    print(table(headers + ["graph call: 21 rows / 1 row"], rows))


if __name__ == "__main__":
    main()
