"""Parity validation up to max_length and the diagnosis of its failures, on numpy oracles (no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from rnnkit.export.validate import MAX_LENGTH_BATCHES, Arguments, check_parity, output_space, parity_feeds, shapes
from rnnkit.runtime.tolerance import FP32

V, C = 40, 3
W = np.random.default_rng(0).standard_normal((V, C)).astype(np.float32)


def bag(cut: int | None = None, reads_padding: bool = False, bump_row0: float = 0.0):
    """A bag-of-words 'model' over real tokens (the graph's behaviour) or with one deliberate difference."""

    def forward(feed):
        ids, lens = feed["input_ids"], feed["sequence_lens"]
        t = np.arange(ids.shape[1])[None, :]
        real = np.ones_like(ids, bool) if reads_padding else t < lens[:, None]
        if cut is not None:
            real &= t < cut
        out = (W[ids] * real[..., None]).sum(1) / 10
        out[0] += bump_row0
        return out.astype(np.float32)

    return forward


def test_shapes_cover_max_length_and_skip_longer_grid_lengths():
    assert shapes((1, 3), (1, 7, 33, 200), 10_000)[-2:] == [(b, 10_000) for b in MAX_LENGTH_BATCHES]
    assert shapes((1, 3), (1, 7, 33, 200), 20) == [(1, 1), (1, 7), (3, 1), (3, 7), (2, 20), (1, 20)]
    assert shapes((1, 3), (1, 7), 7) == [(1, 1), (1, 7), (3, 1), (3, 7)]  # already in the grid
    last = list(parity_feeds(V, batch_sizes=(1,), lengths=(1,), max_length=50))[-2]
    assert last["input_ids"].shape == (2, 50) and last["sequence_lens"][0] == 50  # a ragged pair at max_length


def test_passes_when_equal_and_records_max_length():
    report = check_parity("torch", bag(), {"onnxruntime": bag(), "numba": bag()}, FP32, V, max_length=300)
    assert not report.failures and not report.diagnosis
    assert report.to_dict()["max_length"] == 300 and report.cases == 2 * (12 + 2)


@pytest.mark.parametrize(
    "flags,advice",
    [(None, "export with max_length=50"), ({"max_length": "--max-length"}, "export with --max-length 50")],
)
def test_truncation_is_found_to_the_token(flags, advice):
    report = check_parity(
        "torch", bag(cut=50), {"onnxruntime": bag(), "numba": bag()}, FP32, V, max_length=300, args=Arguments(flags)
    )
    assert report.failures
    assert report.diagnosis == [
        f"the forward changes past 50 tokens (truncation?): a text of 50 tokens agrees with "
        f"the graph, one of 51 does not, and the bundle accepts up to 300 tokens. Remove the "
        f"cut from the forward, or {advice}"
    ]


def test_truncation_past_the_grid_is_caught_only_at_max_length():
    """The old validation (lengths up to 200) passed a forward that cuts at 256."""
    oracle, graph = bag(cut=256), {"onnxruntime": bag()}
    assert not check_parity("torch", oracle, graph, FP32, V).failures
    assert not check_parity("torch", oracle, graph, FP32, V, max_length=256).failures
    late = check_parity("torch", oracle, graph, FP32, V, max_length=400)
    assert late.failures and all("time=400" in f for f in late.failures)
    assert "changes past 256 tokens" in late.diagnosis[0]


def test_padding_reader_and_backend_bug_and_everything():
    padding = check_parity("torch", bag(reads_padding=True), {"onnxruntime": bag(), "numba": bag()}, FP32, V)
    assert padding.diagnosis[0].startswith("only padded rows differ") and "pack the sequence" in padding.diagnosis[0]
    backend = check_parity("torch", bag(), {"onnxruntime": bag(), "numba": bag(bump_row0=1e-2)}, FP32, V)
    assert backend.diagnosis == [
        "only numba differs from the oracle, onnxruntime agrees on every row: a bug in "
        "rnnkit's numba backend, not in the model; please report it with this message"
    ]
    skewed = lambda feed: bag()(feed) + 1e-2  # noqa: E731
    everything = check_parity("torch", skewed, {"onnxruntime": bag()}, FP32, V)
    assert everything.diagnosis[0].startswith("every row differs, full-length and padded")
    quiet = check_parity("torch", skewed, {"onnxruntime": bag()}, FP32, V, diagnose=False)
    assert quiet.failures and not quiet.diagnosis


def test_output_space():
    z = np.random.default_rng(1).standard_normal((8, 3))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert output_space(z) == "logits"
    assert output_space(np.log(p)) == "log_probabilities"
    assert output_space(p) == "probabilities"
    assert output_space(np.log(p) + 0.5) == "logits"  # shifted: not normalised
    assert output_space(np.zeros((8, 1))) == "logits"  # one output: nothing to tell


def test_probability_outputs_are_compared_as_probabilities():
    graph = bag()

    def log_probs(feed):
        z = graph(feed).astype(np.float64)
        return (z - np.log(np.exp(z).sum(1, keepdims=True))).astype(np.float32)

    report = check_parity("torch", log_probs, {"onnxruntime": graph}, FP32, V, oracle_output="log_probabilities")
    assert not report.failures and report.compared == "probabilities"
    assert report.to_dict()["oracle_output"] == "log_probabilities"
    assert check_parity("torch", log_probs, {"onnxruntime": graph}, FP32, V).failures  # as logits: they differ
