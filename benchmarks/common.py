"""Shared benchmark helpers: pin one thread before anything imports a math library, time, print tables."""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("RNNKIT_BENCH_DIR", "/tmp/rnnkit-bench"))


def timeit(fn, repeat: int = 200, warmup: int = 10, budget_s: float = 20.0) -> np.ndarray:
    """Per-call seconds of ``fn()`` (stops early after ``budget_s``)."""
    for _ in range(warmup):
        fn()
    times = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(times) >= 20:
            break
    return np.array(times)


def timeit_blocks(fns: dict, rounds: int = 20, block: int = 50, warmup: int = 5) -> dict:
    """Per-call seconds of each ``fns[name]()``, measured side by side: ``rounds`` rounds, each running
    every function for ``warmup`` untimed then ``block`` timed calls (the order rotated per round).
    A noisy neighbour or a frequency change then hits every contender alike, while each block still
    runs in its own steady state (its weights in cache, as in an app that calls one model repeatedly);
    timing each contender in one long stretch of its own let a burst of noise decide a 5% ratio."""
    names = list(fns)
    times: dict = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[n]
            for _ in range(warmup):
                fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times[n].append(time.perf_counter() - start)
    return {n: np.array(t) for n, t in times.items()}


def stats_ms(times: np.ndarray) -> tuple[float, float]:
    return float(np.median(times) * 1e3), float(np.percentile(times, 99) * 1e3)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, 1 thread"


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table (what the README pastes)."""

    def fmt(x):
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)
