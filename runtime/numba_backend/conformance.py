"""Run ONNX's own node conformance cases (shipped in the ``onnx`` wheel) on the numba backend.

A case is selected when every op of its graph is in the backend's registry (the claimed
set).  Each selected case ends as ``passed``, ``failed`` or ``refused``: a case whose graph
uses a type numpy cannot hold (bfloat16, float8, int4, string, sequences, optionals) must be
refused at load with ``UnsupportedError`` and is counted apart, never as a pass; a refusal
of any other case is a failure.  Outputs are compared with the case's rtol/atol for floats
and exactly (values and dtype) for ints and bools.

    python -m rnnkit.runtime.numba_backend.conformance [substring ...]

Needs only onnx and numpy (no onnxruntime, no torch).
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UnsupportedError
from .backend import NumbaBackend
from .graph import _DOMAINS, OPS, unsupported_types

RNN_FAMILY = frozenset({"RNN", "GRU", "LSTM", "DynamicQuantizeLSTM"})


@dataclass
class CaseResult:
    name: str
    ops: tuple[str, ...]
    status: str  # 'passed' | 'failed' | 'refused'
    detail: str = ""


def _ops_of(model: onnx.ModelProto) -> set[tuple[str, str]]:
    return {(_DOMAINS.get(n.domain, n.domain), n.op_type) for n in model.graph.node}


def selected_cases(claimed=None) -> list:
    """Node cases whose ops are all claimed (default: every key of the registry)."""
    from onnx.backend.test.case.node import collect_testcases

    claimed = set(OPS if claimed is None else claimed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        cases = collect_testcases(None)
    return sorted(
        (c for c in cases if c.model is not None and c.model.graph.node and _ops_of(c.model) <= claimed),
        key=lambda c: c.name,
    )


def _array(x):
    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x


def _compare(actual, expected, rtol, atol) -> str:
    """'' if equal enough, else what differs."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return f"shape {actual.shape} != expected {expected.shape}"
    if actual.dtype != expected.dtype:
        return f"dtype {actual.dtype} != expected {expected.dtype}"
    if np.issubdtype(expected.dtype, np.floating):
        if np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True):
            return ""
        with np.errstate(all="ignore"):
            worst = np.nanmax(np.abs(actual.astype(np.float64) - expected))
        return f"max |diff| {worst:.3g} (rtol {rtol}, atol {atol})"
    return "" if np.array_equal(actual, expected) else "values differ (exact comparison)"


def run_case(case) -> CaseResult:
    ops = tuple(sorted(op for _, op in _ops_of(case.model)))
    must_refuse = unsupported_types(case.model)
    try:
        rep = NumbaBackend.prepare(case.model)
    except UnsupportedError as e:
        if must_refuse:
            return CaseResult(case.name, ops, "refused", f"unsupported type: {', '.join(must_refuse)}")
        return CaseResult(case.name, ops, "failed", f"refused at load: {e}")
    if must_refuse:
        return CaseResult(case.name, ops, "failed", f"uses {must_refuse} but was not refused")
    for k, (inputs, outputs) in enumerate(case.data_sets):
        try:
            with np.errstate(all="ignore"):
                actual = rep.run([_array(x) for x in inputs])
        except Exception as e:  # a crash is a failure of this case, not of the harness
            return CaseResult(case.name, ops, "failed", f"data set {k}: {type(e).__name__}: {e}")
        if len(actual) != len(outputs):
            return CaseResult(case.name, ops, "failed", f"{len(actual)} outputs, expected {len(outputs)}")
        for j, (a, expected) in enumerate(zip(actual, outputs)):
            why = _compare(a, _array(expected), case.rtol, case.atol)
            if why:
                return CaseResult(case.name, ops, "failed", f"data set {k} output {j}: {why}")
    return CaseResult(case.name, ops, "passed")


def summarize(results: list[CaseResult]) -> dict[str, Counter]:
    """Per op: how many selected cases use it, and how many passed / were refused / failed."""
    table: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        for op in r.ops:
            table[op]["run"] += 1
            table[op][r.status] += 1
    return dict(sorted(table.items()))


def report(results: list[CaseResult]) -> str:
    lines = [f"{'op':24} {'run':>5} {'passed':>7} {'refused':>8} {'failed':>7}"]
    for op, c in summarize(results).items():
        lines.append(f"{op:24} {c['run']:5d} {c['passed']:7d} {c['refused']:8d} {c['failed']:7d}")
    total = Counter(r.status for r in results)
    lines.append(f"{'cases':24} {len(results):5d} {total['passed']:7d} {total['refused']:8d} {total['failed']:7d}")
    unclaimed = sorted(f"{d + '.' if d else ''}{op}" for d, op in OPS if op not in summarize(results))
    if unclaimed:
        lines.append(f"claimed ops with no ONNX case: {', '.join(unclaimed)}")
    for r in results:
        if r.status != "passed":
            lines.append(f"{r.status:8} {r.name}: {r.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    patterns = sys.argv[1:] if argv is None else argv
    cases = [c for c in selected_cases() if not patterns or any(p in c.name for p in patterns)]
    results = [run_case(c) for c in cases]
    print(report(results))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
