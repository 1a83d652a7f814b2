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
