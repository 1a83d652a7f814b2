"""Per-op time of the numba backend on a bundle, 1 thread: where a batch of inputs spends its time.

    .venv/bin/python benchmarks/numba_op_profile.py BUNDLE [--batch 32] [--int8] [--reps 20]

BUNDLE is a tagger or classifier bundle (``benchmarks/tagger_latency.py`` and
``benchmarks/classifier_latency.py`` leave theirs in $RNNKIT_BENCH_DIR, default /tmp/rnnkit-bench).
Every step of the compiled plan (``plan.py``: after the passes, so a fused recurrent step is one
entry) is wrapped in a timer; the inputs are ``--batch`` sentences of 5-45 tokens drawn from UD
English-EWT dev when ../shared is present, else synthetic words.  Prints, per op type and step,
the total ms per call of ``tag``/``predict`` (median over ``--reps`` calls), its share, and the
remainder outside the steps (tokenizing, padding, Python).  The timer adds ~1 us per step.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import common  # noqa: F401  (pins 1 thread before numpy loads)
import numpy as np
from common import machine
from tagger_latency import sentences

from rnnkit.runtime import load
from rnnkit.runtime.numba_backend import graph, plan


class _Timed:
    """An op called as the plan calls it, its time added to ``totals[label]``."""

    def __init__(self, op, label, totals):
        self.op, self.label, self.totals = op, label, totals

    def __call__(self, *args):
        t0 = time.perf_counter()
        out = self.op(*args)
        self.totals[self.label] += time.perf_counter() - t0
        return out


def instrument(totals: dict) -> None:
    """Make every NumbaSession built from now on time its steps into ``totals``."""
    init = graph.NumbaSession.__init__

    def timed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        steps = self.program.steps
        for k, st in enumerate(steps):
            label = f"{st.key[1]} #{k}"
            steps[k] = st._replace(op=_Timed(st.op, label, totals))
        self._body = plan.compile_plan(self.program, self._node_error)

    graph.NumbaSession.__init__ = timed_init


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    totals: dict = defaultdict(float)
    instrument(totals)
    m = load(args.bundle, backend="numba", int8=args.int8, threads=1)
    m.warmup()
    batch = sentences(args.batch, seed=3)
    run = (lambda: m.tag(batch, batch_size=args.batch)) if hasattr(m, "tag") else None
    if run is None:
        texts = [" ".join(s) for s in batch]
        run = lambda: m.predict(texts, batch_size=args.batch)  # noqa: E731
    run()
    per_call: dict = defaultdict(list)
    walls = []
    for _ in range(args.reps):
        totals.clear()
        t0 = time.perf_counter()
        run()
        walls.append(time.perf_counter() - t0)
        for k, v in totals.items():
            per_call[k].append(v)
    wall = 1e3 * float(np.median(walls))
    rows = sorted(((1e3 * float(np.median(v)), k) for k, v in per_call.items()), reverse=True)
    print(f"{args.bundle} ({'int8' if args.int8 else 'fp32'}), B={args.batch}, numba, {machine()}")
    print(f"median wall {wall:.3f} ms per call over {args.reps} calls")
    print("| step | ms | share |\n|---|---|---|")
    for ms, k in rows:
        print(f"| {k} | {ms:.3f} | {100 * ms / wall:.1f}% |")
    rest = wall - sum(ms for ms, _ in rows)
    print(f"| outside the steps | {rest:.3f} | {100 * rest / wall:.1f}% |")


if __name__ == "__main__":
    main()
