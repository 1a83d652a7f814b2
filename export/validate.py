"""Export-time parity validation: torch vs onnxruntime vs numba, at shapes other than the export shape.

Every export runs the written graph on both backends at batch sizes {1, 3, 8} and
lengths {1, 7, 33, 200} with ragged padded batches (and random word widths for
character features), and compares against the oracle (the torch module for fp32,
onnxruntime's int8 graph for the numba int8 run):

* outputs within the named tolerance (FP32 or INT8 from ``rnnkit.runtime.tolerance``),
* labels (classification) or per-token tags (tagging) exactly equal, except where the
  oracle's own top-2 margin is inside the tolerance (a tie the tolerance cannot decide is
  not a failure); tagging logits past a sentence's length exactly 0,
* every row of a ragged batch equal to running that row alone, on every backend,
* for graphs with recurrent state inputs (language models, ``state_shapes``): random non-zero
  initial states in every feed, and every state output (``final_*``, the graph's outputs after
  the first) within the same tolerance, per row too.  Their logits (a head over the whole
  vocabulary, tens of units) and LSTM cell states are compared with the tolerance's ``scaled``
  form (``atol * max(1, max|expected|)`` per output; rtol unchanged): rounding of a 256-term sum
  of large terms is about 1e-5 of their size however small the result.  int8 runs compare the
  probabilities only (the state's effect shows in every later probability), and a language
  model's int8 parity stops at 33 steps: over 200 steps onnxruntime's int8 LSTM (activations
  quantized per call) and numba's (activations fp32) each drift from fp32 by up to ~0.06 in a
  probability at the worst position (mean 4e-4, measured on the tiny-shakespeare char LM), so
  long-range int8 quality is gated at task level instead: dev loss delta and top-1 agreement
  with fp32 over the whole dev text, state carried (``rnnkit.export.task_lm``).

int8 graphs are compared on the probabilities users see (``softmax`` of the logits), not on
raw logits: onnxruntime's int8 LSTM quantizes its activations per call, so its error grows
with sequence length and depends on the batch, while numba's int8 kernels keep activations
in fp32; after 200 steps their logits can drift apart by more than one quantization step of
a single op; they are compared with ``INT8_SEQUENCE`` (see ``rnnkit.runtime.tolerance``), labels
by the same margin rule, and int8 accuracy is gated separately on the dev set.

A forward takes a feed dict named as the graph's inputs and returns the first output, or a
tuple of every output (logits first) when the graph has state outputs.
Every miss is collected; one ``ParityError`` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..runtime.errors import ParityError
from ..runtime.manifest import TaggerIO
from ..runtime.model import softmax
from ..runtime.tolerance import Tolerance

BATCH_SIZES = (1, 3, 8)
LENGTHS = (1, 7, 33, 200)
MAX_WORD = 12  # char width of the random words in parity batches
Forward = Callable[[dict], "np.ndarray | tuple"]  # feeds -> logits (B, C) / (B, T, K) [, state (L, B, H)...]
IDS, LENS, CHARS = TaggerIO.input_ids, TaggerIO.sequence_lens, TaggerIO.char_ids  # shared by every task


def parity_feeds(vocab_size: int, char_vocab_size: int = 0, seed: int = 0, batch_sizes=BATCH_SIZES,
                 lengths=LENGTHS, state_shapes: dict | None = None):
    """Ragged padded feeds: row 0 is full length, the others random in 1..T; padding is 0.
    ``state_shapes``: state input name -> (layers, hidden); each gets a random (layers, B, hidden)."""
    rng = np.random.default_rng(seed)
    for batch in batch_sizes:
        for time in lengths:
            lens = rng.integers(1, time + 1, size=batch).astype(np.int32)
            lens[0] = time
            pad = np.arange(time)[None, :] >= lens[:, None]                    # (B, T)
            ids = rng.integers(2, max(3, vocab_size), size=(batch, time)).astype(np.int64)
            ids[pad] = 0
            feed = {IDS: ids, LENS: lens}
            if char_vocab_size:
                chars = rng.integers(1, max(2, char_vocab_size), size=(batch, time, MAX_WORD)).astype(np.int64)
                width = rng.integers(1, MAX_WORD + 1, size=(batch, time))
                chars[np.arange(MAX_WORD)[None, None, :] >= width[..., None]] = 0
                chars[pad] = 0
                feed[CHARS] = chars
            for name, (layers, hidden) in (state_shapes or {}).items():
                feed[name] = (0.5 * rng.standard_normal((layers, batch, hidden))).astype(np.float32)
            yield feed


def row_alone(feed: dict, i: int) -> dict:
    """Row i of a padded batch as a batch of one, at its own length (and char width)."""
    n = int(feed[LENS][i])
    out = {IDS: feed[IDS][i:i + 1, :n], LENS: feed[LENS][i:i + 1]}
    if CHARS in feed:
        c = feed[CHARS][i:i + 1, :n]
        out[CHARS] = c[..., :max(1, int((c != 0).sum(-1).max()))]
    for name, value in feed.items():
        if name not in (IDS, LENS, CHARS):  # recurrent state (layers, B, H)
            out[name] = value[:, i:i + 1]
    return out


def disagreements(actual: np.ndarray, expected: np.ndarray, lens: np.ndarray, tol: Tolerance) -> list:
    """Rows (or (row, t) tokens) whose argmax differs although the oracle's margin exceeds the tolerance."""
    a, e = actual.argmax(-1), expected.argmax(-1)
    differ = a != e
    if actual.ndim == 3:  # tagging: real tokens only
        differ &= np.arange(a.shape[1])[None, :] < lens[:, None]
    where = np.nonzero(differ)
    top = expected[where + (e[where],)]
    margin = top - expected[where + (a[where],)]
    bad = margin > 2 * (tol.atol + tol.rtol * np.abs(top))
    return list(zip(*(w[bad].tolist() for w in where)))


@dataclass
class ParityReport:
    tolerance: str
    oracle: str
    worst: dict[str, float] = field(default_factory=dict)   # backend -> max |diff| over all shapes
    compared: str = "logits"                                 # or "probabilities" (int8)
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    batch_sizes: tuple = BATCH_SIZES
    lengths: tuple = LENGTHS

    def to_dict(self) -> dict:
        return {"tolerance": self.tolerance, "oracle": self.oracle, "compared": self.compared,
                "cases": self.cases, "batch_sizes": list(self.batch_sizes), "lengths": list(self.lengths),
                "max_abs_diff": self.worst, "passed": not self.failures}


def outputs(value) -> tuple:
    """A forward's result as a tuple (logits first, then any state outputs)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def check_parity(oracle_name: str, oracle: Forward, candidates: dict[str, Forward], tol: Tolerance,
                 vocab_size: int, char_vocab_size: int = 0, seed: int = 0, probabilities: bool = False,
                 batch_sizes=BATCH_SIZES, lengths=LENGTHS, state_shapes: dict | None = None) -> ParityReport:
    """``state_shapes`` (graphs with recurrent state inputs): random initial states in the feeds,
    every output compared, with the ``scaled`` tolerance (see the module docstring)."""
    report = ParityReport(tol.name, oracle_name, worst={name: 0.0 for name in candidates},
                          compared="probabilities" if probabilities else "logits",
                          batch_sizes=tuple(batch_sizes), lengths=tuple(lengths))
    if probabilities:
        oracle = _probabilities(oracle)
        candidates = {name: _probabilities(f) for name, f in candidates.items()}
    for feed in parity_feeds(vocab_size, char_vocab_size, seed, batch_sizes, lengths, state_shapes):
        lens = feed[LENS]
        expected = outputs(oracle(feed))
        shape = f"batch={len(lens)} time={feed[IDS].shape[1]} lengths={lens.tolist()}"
        for name, forward in candidates.items():
            report.cases += 1
            actual = outputs(forward(feed))
            _compare_all(report, name, shape, actual, expected, lens, tol, probabilities)
            if len(lens) > 1 and actual[0].shape == expected[0].shape:  # each row must equal that row alone
                for i, n in enumerate(lens):
                    alone = outputs(forward(row_alone(feed, i)))
                    in_batch = ((actual[0][i:i + 1, :n] if actual[0].ndim == 3 else actual[0][i:i + 1]),
                                *(a[:, i:i + 1] for a in actual[1:]))
                    _compare_all(report, name, f"{shape} row {i} alone vs in batch", alone, in_batch,
                                 lens[i:i + 1], tol, probabilities)
    return report


def _compare_all(report: ParityReport, name: str, where: str, actual: tuple, expected: tuple, lens, tol: Tolerance,
                 probabilities: bool) -> None:
    """Logits (argmax, padding, tolerance) and then each state output (tolerance only)."""
    if len(actual) != len(expected):
        report.failures.append(f"{name} @ {where}: {len(actual)} outputs, expected {len(expected)}")
        return
    stateful = len(expected) > 1
    compare_scores(report, name, where, actual[0], expected[0], lens, tol.scaled(expected[0]) if stateful else tol,
                   probabilities)
    if probabilities:  # int8: what users see; the state's effect is in every later probability
        return
    for k, (a, e) in enumerate(zip(actual[1:], expected[1:]), start=1):
        compare_tensor(report, name, where, f"state output #{k}", a, e, tol)


def compare_tensor(report: ParityReport, name: str, where: str, what: str, actual: np.ndarray, expected: np.ndarray,
                   tol: Tolerance) -> None:
    """One output that is not a score (recurrent state, memory, attention weights): same shape, finite,
    within the ``scaled`` tolerance (see the module docstring)."""
    if actual.shape != expected.shape:
        report.failures.append(f"{name} @ {where}: {what} shape {actual.shape}, expected {expected.shape}")
        return
    worst, scaled = tol.worst(actual, expected), tol.scaled(expected)
    report.worst[name] = max(report.worst[name], worst)
    if not np.all(np.isfinite(actual)) or not scaled.close(actual, expected):
        report.failures.append(f"{name} @ {where}: {what} max |diff| {worst:.3g} exceeds "
                               f"{scaled.name} (atol {scaled.atol:.3g}, rtol {scaled.rtol})")


def _probabilities(forward: Forward) -> Forward:
    def probs(feed):
        out = outputs(forward(feed))
        p = softmax(out[0].astype(np.float64)).astype(np.float32)
        return p if len(out) == 1 else (p, *out[1:])
    return probs


def compare_scores(report: ParityReport, name: str, where: str, actual, expected, lens, tol: Tolerance,
                   probabilities: bool) -> None:
    """Scores (logits, log-probabilities or probabilities; (B, C) or (B, T, K) with rows past ``lens``
    exactly 0 unless ``probabilities``): finite, within ``tol``, and the same argmax up to ties."""
    if actual.shape != expected.shape:
        report.failures.append(f"{name} @ {where}: output shape {actual.shape}, expected {expected.shape}")
        return
    if actual.ndim == 3:  # tagging: only real tokens count; padding must be exactly 0 (logits)
        real = np.arange(actual.shape[1])[None, :] < lens[:, None]
        if not probabilities and np.any(actual[~real] != 0):
            report.failures.append(f"{name} @ {where}: non-zero logits past a sentence's length")
        actual, expected = np.where(real[..., None], actual, 0), np.where(real[..., None], expected, 0)
    worst = tol.worst(actual, expected)
    report.worst[name] = max(report.worst[name], worst)
    if not np.all(np.isfinite(actual)):
        report.failures.append(f"{name} @ {where}: non-finite outputs")
    elif not tol.close(actual, expected):
        report.failures.append(f"{name} @ {where}: max |diff| {worst:.3g} exceeds {tol.name} "
                               f"(atol {tol.atol}, rtol {tol.rtol})")
    bad = disagreements(actual, expected, lens, tol)
    if bad:
        what = "tags differ at (row, t)" if actual.ndim == 3 else "labels differ in rows"
        report.failures.append(f"{name} @ {where}: {what} {[b if len(b) > 1 else b[0] for b in bad[:10]]}")


def raise_on_failures(*reports: ParityReport, what: str) -> None:
    failures = [f for r in reports for f in r.failures]
    if failures:
        shown = "\n  ".join(failures[:40])
        more = f"\n  ... and {len(failures) - 40} more" if len(failures) > 40 else ""
        raise ParityError(f"{what}: {len(failures)} parity failure(s); nothing was written:\n  {shown}{more}")
