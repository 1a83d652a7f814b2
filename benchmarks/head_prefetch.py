"""The LM head's mat-vec with and without software prefetch, across fresh processes.

A word LM's head (256 x 10,000 fp32, 10 MB) is read from L3 or memory at every generated token.
rnnkit's numba kernels read fp32 weights larger than one core's L2 with prefetch, 4 KB ahead
(``matvec._make_fma(nr, ahead=1024)``), and smaller ones without (``runtime/numba_backend/config.py``
reads the L2 size).  This script shows why, per process: each of ``--processes`` fresh interpreters
packs its own random head and times, side by side (``common.timeit_blocks``), one row times the
head with numpy (BLAS sgemv, the GEMV floor's head), with rnnkit's kernel without prefetch
(``_fma1``) and with it (``_fma1s``).  One thread.

    python benchmarks/head_prefetch.py --processes 12
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import common  # noqa: F401  (pins 1 thread before numpy loads)
import numpy as np

from common import machine, stats_ms, table, timeit_blocks

RUNS = ("numpy sgemv", "numba, no prefetch", "numba, prefetch 4 KB ahead")


def child(vocab: int, hidden: int, rounds: int, block: int) -> None:
    import rnnkit.runtime.numba_backend.config  # noqa: F401  (rnnkit's numba settings before numba loads)
    from numba import njit

    from rnnkit.runtime.numba_backend.matvec import JIT, PB, _fma1, _fma1s, pack_blocks

    def head_kernel(fma):
        @njit(**JIT)
        def head(v, Q, out):  # out[0, :] = v[0] @ M, M packed in Q: one row, one block at a time
            K = Q.shape[1]
            for cb in range(Q.shape[0]):
                fma(Q, cb * K * PB, v, 0, K, out, out.shape[1], cb * PB)
        return head

    rng = np.random.default_rng()
    W = rng.normal(0, 0.05, (vocab, hidden)).astype(np.float32)  # torch's Linear layout, as the floor
    Q = pack_blocks(np.ascontiguousarray(W.T)[None])[0]
    x = rng.normal(0, 1, hidden).astype(np.float32)
    v = np.zeros((1, Q.shape[1]), np.float32)
    v[0, :hidden] = x
    outs = [np.empty((1, Q.shape[0] * PB), np.float32) for _ in range(2)]
    plain, streamed = head_kernel(_fma1), head_kernel(_fma1s)
    for fn, out in ((plain, outs[0]), (streamed, outs[1])):
        fn(v, Q, out)
        np.testing.assert_allclose(out[0, :vocab], W @ x, rtol=1e-4, atol=1e-4)
    times = timeit_blocks({RUNS[0]: lambda: W @ x, RUNS[1]: lambda: plain(v, Q, outs[0]),
                           RUNS[2]: lambda: streamed(v, Q, outs[1])}, rounds=rounds, block=block)
    print(json.dumps({name: stats_ms(times[name])[0] * 1e3 for name in RUNS}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.vocab, args.hidden, args.rounds, args.block)
    rows, per_run = [], {name: [] for name in RUNS}
    for p in range(args.processes):
        r = subprocess.run([sys.executable, __file__, "--child", "--vocab", str(args.vocab), "--hidden",
                            str(args.hidden), "--rounds", str(args.rounds), "--block", str(args.block)],
                           capture_output=True, text=True, check=True)
        us = json.loads(r.stdout.splitlines()[-1])
        rows.append([p + 1] + [f"{us[name]:.1f}" for name in RUNS] + [us[RUNS[1]] / us[RUNS[0]], us[RUNS[2]] / us[RUNS[0]]])
        for name in RUNS:
            per_run[name].append(us[name])
        print(f"  process {p + 1}/{args.processes}", file=sys.stderr)
    ratios = np.array([r[4:] for r in rows])
    rows.append(["median"] + [f"{np.median(per_run[n]):.1f}" for n in RUNS] + list(np.median(ratios, 0)))
    rows.append(["max"] + [f"{np.max(per_run[n]):.1f}" for n in RUNS] + list(ratios.max(0)))
    mb = args.vocab * args.hidden * 4 / 2**20
    print(f"Head mat-vec, 1 x {args.hidden} times {args.hidden} x {args.vocab} fp32 ({mb:.1f} MB), median us per "
          f"call in each of {args.processes} fresh processes -- {machine()}")
    print(table(["process"] + [f"{n} us" for n in RUNS] + ["no prefetch / numpy", "prefetch / numpy"], rows))


if __name__ == "__main__":
    main()
