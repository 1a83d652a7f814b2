"""ONNX's own node conformance cases on the numba backend: every case of every claimed op.

Cases whose graphs use types numpy cannot hold (bfloat16, float8, int4, string, sequences)
are outside what the backend claims: for those the test asserts the loud refusal at load
(``UnsupportedError`` naming the type), which ``conformance.run_case`` checks; the summary
counts them apart from the passes.  The claimed set is every key of the registry.
"""

import pytest

pytest.importorskip("numba")

from rnnkit.runtime.numba_backend import conformance  # noqa: E402
from rnnkit.runtime.numba_backend.graph import OPS  # noqa: E402

CASES = conformance.selected_cases()
_RESULTS: dict = {}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_onnx_case(case):
    result = _RESULTS[case.name] = conformance.run_case(case)
    assert result.status in ("passed", "refused"), result.detail


def test_rnn_family_cases_are_run():
    """The suite must fail if the RNN-family cases vanish (registry or onnx wheel change)."""
    rnn = [c.name for c in CASES if {op for _, op in conformance._ops_of(c.model)} & conformance.RNN_FAMILY]
    assert len(rnn) >= 18, f"only {len(rnn)} RNN-family cases selected: {rnn}"
    for name in ("test_rnn_seq_length", "test_dynamicquantizelinear", "test_matmulinteger"):
        assert name in {c.name for c in CASES}


def test_every_claimed_onnx_op_has_cases():
    """A claimed ai.onnx op without any case would be untested here (com.microsoft ones: test_numba_graph)."""
    covered = {op for c in CASES for _, op in conformance._ops_of(c.model)}
    untested = sorted(op for domain, op in OPS if domain == "" and op not in covered)
    assert not untested, untested


def test_summary():
    results = [_RESULTS.get(c.name) or conformance.run_case(c) for c in CASES]
    text = conformance.report(results)
    print(text)
    table = conformance.summarize(results)
    assert sum(c["failed"] for c in table.values()) == 0, text
