"""Cold start: wall time of `rnnkit predict BUNDLE "text"` as a fresh process.

onnxruntime; numba with a warm on-disk JIT cache; numba's first-ever compile (an empty
cache directory).  Uses the bundles `classifier_latency.py` builds (run it first) or
builds an LSTM(256) one.

    python benchmarks/cold_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401
import numpy as np
from common import WORK, machine, table

RNNKIT = [sys.executable, "-m", "rnnkit.toolkit"]


def wall(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(RNNKIT + args, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cell", default="lstm")
    args = parser.parse_args(argv)
    bundle = WORK / f"{args.cell}256.bundle"
    if not bundle.exists():
        from classifier_latency import make_bundle

        make_bundle(args.cell, 256)
    rows = []
    env = dict(os.environ)
    predict = ["predict", str(bundle), "w1 w2 w3 w4 w5 w6 w7"]
    for int8 in (False, True):
        flag = ["--int8"] if int8 else []
        times = [wall(predict + ["--backend", "onnxruntime"] + flag, env) for _ in range(args.runs)]
        rows.append([f"onnxruntime {'int8' if int8 else 'fp32'}", "-", float(np.median(times)), float(min(times))])
        cache = tempfile.mkdtemp(prefix="rnnkit-numba-cache-")
        fresh = dict(env, NUMBA_CACHE_DIR=cache)
        first = wall(predict + ["--backend", "numba"] + flag, fresh)
        times = [wall(predict + ["--backend", "numba"] + flag, fresh) for _ in range(args.runs)]
        shutil.rmtree(cache, ignore_errors=True)
        rows.append(
            [
                f"numba {'int8' if int8 else 'fp32'}",
                f"{first:.2f} s (first-ever compile)",
                float(np.median(times)),
                float(min(times)),
            ]
        )
    print(f'Cold start of `rnnkit predict BUNDLE "text"` ({args.cell.upper()}(256) classifier) -- {machine()}')
    print(table(["backend", "empty JIT cache", "warm: median s", "warm: min s"], rows))


if __name__ == "__main__":
    main()
