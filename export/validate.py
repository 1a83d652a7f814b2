"""Export-time parity validation: torch vs onnxruntime vs numba, at shapes other than the export shape.

Every export runs the written graph on both backends at batch sizes {1, 3, 8} and
lengths {1, 7, 33, 200} with ragged padded batches, and compares against the oracle
(the torch module for fp32, onnxruntime's int8 graph for the numba int8 run):

* logits within the named tolerance (FP32 or INT8 from ``rnnkit.runtime.tolerance``),
* labels exactly equal, except where the oracle's own top-2 margin is inside the
  tolerance (a tie the tolerance cannot decide is not a failure),
* every row of a ragged batch equal to running that row alone, on every backend.

Every miss is collected; one ``ParityError`` lists them all.  The measured worst
differences go into the manifest either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..runtime.errors import ParityError
from ..runtime.tolerance import Tolerance

BATCH_SIZES = (1, 3, 8)
LENGTHS = (1, 7, 33, 200)
Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (ids (B,T), lengths (B,)) -> logits (B, C)


def parity_batches(vocab_size: int, seed: int = 0, batch_sizes=BATCH_SIZES, lengths=LENGTHS):
    """Ragged padded batches: row 0 is full length, the others random in 1..T, padding is <pad>=0."""
    rng = np.random.default_rng(seed)
    for batch in batch_sizes:
        for time in lengths:
            lens = rng.integers(1, time + 1, size=batch).astype(np.int32)
            lens[0] = time
            ids = rng.integers(2, max(3, vocab_size), size=(batch, time)).astype(np.int64)
            ids[np.arange(time)[None, :] >= lens[:, None]] = 0
            yield ids, lens


def labels_disagree(actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Rows whose argmax differs although the oracle's margin is larger than the tolerance."""
    a, e = actual.argmax(-1), expected.argmax(-1)
    rows = np.nonzero(a != e)[0]
    margin = expected[rows, e[rows]] - expected[rows, a[rows]]
    return rows[margin > 2 * (tol.atol + tol.rtol * np.abs(expected[rows, e[rows]]))]


@dataclass
class ParityReport:
    tolerance: str
    oracle: str
    worst: dict[str, float] = field(default_factory=dict)   # backend -> max |diff| over all shapes
    cases: int = 0
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"tolerance": self.tolerance, "oracle": self.oracle, "cases": self.cases,
                "batch_sizes": list(BATCH_SIZES), "lengths": list(LENGTHS),
                "max_abs_diff": self.worst, "passed": not self.failures}


def check_parity(oracle_name: str, oracle: Forward, candidates: dict[str, Forward], tol: Tolerance,
                 vocab_size: int, seed: int = 0) -> ParityReport:
    report = ParityReport(tol.name, oracle_name, {name: 0.0 for name in candidates})
    for ids, lens in parity_batches(vocab_size, seed):
        expected = oracle(ids, lens)
        shape = f"batch={len(lens)} time={ids.shape[1]} lengths={lens.tolist()}"
        for name, forward in candidates.items():
            report.cases += 1
            actual = forward(ids, lens)
            _compare(report, name, f"{shape}", actual, expected, tol)
            if len(lens) > 1:  # each row of the ragged batch must equal that row alone
                for row, n in enumerate(lens):
                    alone = forward(ids[row:row + 1, :n], lens[row:row + 1])
                    _compare(report, name, f"{shape} row {row} alone vs in batch", alone, actual[row:row + 1], tol)
    return report


def _compare(report: ParityReport, name: str, where: str, actual, expected, tol: Tolerance) -> None:
    if actual.shape != expected.shape:
        report.failures.append(f"{name} @ {where}: output shape {actual.shape}, expected {expected.shape}")
        return
    worst = tol.worst(actual, expected)
    report.worst[name] = max(report.worst[name], worst)
    if not np.all(np.isfinite(actual)):
        report.failures.append(f"{name} @ {where}: non-finite outputs")
    elif not tol.close(actual, expected):
        report.failures.append(f"{name} @ {where}: max |diff| {worst:.3g} exceeds {tol.name} "
                               f"(atol {tol.atol}, rtol {tol.rtol})")
    bad = labels_disagree(actual, expected, tol)
    if bad.size:
        report.failures.append(f"{name} @ {where}: labels differ in rows {bad.tolist()}")


def raise_on_failures(*reports: ParityReport, what: str) -> None:
    failures = [f for r in reports for f in r.failures]
    if failures:
        shown = "\n  ".join(failures[:40])
        more = f"\n  ... and {len(failures) - 40} more" if len(failures) > 40 else ""
        raise ParityError(f"{what}: {len(failures)} parity failure(s); nothing was written:\n  {shown}{more}")
