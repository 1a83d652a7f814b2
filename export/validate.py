"""Export-time parity validation: torch vs onnxruntime vs numba, at shapes other than the export shape.

Every export runs the written graph on both backends at batch sizes {1, 3, 8} and
lengths {1, 7, 33, 200} with ragged padded batches (and random word widths for
character features), and -- given the bundle's ``max_length`` -- at that length too: a
ragged batch of two whose longest row is exactly ``max_length`` and one row of
``max_length`` alone (lengths of the grid above ``max_length`` are skipped: the bundle never
runs them).  A module that changes past some length (a forward that truncates at 256 tokens)
therefore fails its export instead of answering differently on a 400-token input.  It
compares against the oracle (the torch module for fp32, onnxruntime's int8 graph for the
numba int8 run):

* outputs within the named tolerance (FP32 or INT8 from ``rnnkit.runtime.tolerance``),
* labels (classification) or per-token tags (tagging) exactly equal, except where the
  oracle's own top-2 margin is inside the tolerance (a tie the tolerance cannot decide is
  not a failure); tagging logits past a sentence's length exactly 0,
* every row of a ragged batch equal to running that row alone, on every backend,
* per-token outputs after the scores (``per_token``: a classifier's attention-pooling weights,
  (batch, time)): within the same tolerance (int8 runs too: they are probabilities already),
  exactly 0 past each row's length, per row too; the worst difference per output and backend is
  recorded (``ParityReport.outputs``),
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
Every miss is collected; one ``ParityError`` lists them all, after a diagnosis of the pattern
of rows that differ from the torch module (``diagnose``): only padded rows (the forward reads
padding), only rows longer than N tokens (the forward changes past N: the exact N is found by
bisection), every row (weights, gate order, pooling), only one backend (a backend bug).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..runtime.errors import ParityError
from ..runtime.manifest import LanguageModelIO, TaggerIO
from ..runtime.model import softmax
from ..runtime.tolerance import Tolerance

BATCH_SIZES = (1, 3, 8)
LENGTHS = (1, 7, 33, 200)
MAX_LENGTH_BATCHES = (2, 1)  # at max_length: a ragged pair (row 0 exactly max_length), then one row alone
MAX_WORD = 12  # char width of the random words in parity batches
Forward = Callable[[dict], "np.ndarray | tuple"]  # feeds -> logits (B, C) / (B, T, K) [, state (L, B, H)...]
IDS, LENS, CHARS = TaggerIO.input_ids, TaggerIO.sequence_lens, TaggerIO.char_ids  # shared by every task
STATE_INPUTS = (LanguageModelIO.initial_h, LanguageModelIO.initial_c)


class Arguments:
    """How a message names one of the caller's arguments: the Python API's keywords by default
    (``max_length=256``); a command line passes its flags (``{"max_length": "--max-length"}`` ->
    ``--max-length 256``), so that each user reads the name they typed."""

    API_FORMS = {"dev": "dev=DevSet(items, labels, source)", "int8": "int8=True"}  # an argument without a value

    def __init__(self, flags: Mapping[str, str] | None = None):
        self.flags = dict(flags or {})

    def __call__(self, name: str, value: Any = None) -> str:
        if name in self.flags:
            return self.flags[name] if value is None else f"{self.flags[name]} {value}"
        return self.API_FORMS.get(name, name) if value is None else f"{name}={value}"


def shapes(batch_sizes=BATCH_SIZES, lengths=LENGTHS, max_length: int | None = None) -> list[tuple[int, int]]:
    """(batch, time) of every parity case: the grid up to ``max_length``, then ``max_length`` itself
    (``MAX_LENGTH_BATCHES``) unless the grid has it already."""
    grid = [(b, t) for b in batch_sizes for t in lengths if max_length is None or t <= max_length]
    if max_length is not None and max_length not in lengths:
        grid += [(b, max_length) for b in MAX_LENGTH_BATCHES]
    return grid


def parity_feeds(
    vocab_size: int,
    char_vocab_size: int = 0,
    seed: int = 0,
    batch_sizes=BATCH_SIZES,
    lengths=LENGTHS,
    state_shapes: dict | None = None,
    max_length: int | None = None,
):
    """Ragged padded feeds: row 0 is full length, the others random in 1..T; padding is 0.
    ``state_shapes``: state input name -> (layers, hidden); each gets a random (layers, B, hidden).
    ``max_length``: the cases of ``shapes``."""
    rng = np.random.default_rng(seed)
    for batch, time in shapes(batch_sizes, lengths, max_length):
        lens = rng.integers(1, time + 1, size=batch).astype(np.int32)
        lens[0] = time
        pad = np.arange(time)[None, :] >= lens[:, None]  # (B, T)
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


def row_alone(feed: dict, i: int, n: int | None = None, lens: str = LENS, timed: tuple = (IDS, CHARS)) -> dict:
    """Row i of a padded batch as a batch of one, at its own length (``feed[lens][i]``; and char
    width), or its first ``n`` tokens.  ``timed``: the inputs cut to that length; recurrent state
    (layers, B, H) is cut on axis 1, every other input to row i.  Encoder-decoders pass their source
    names (``rnnkit.export.validate_seq2seq``); a feed without ``lens`` keeps every length."""
    lengths = feed.get(lens)
    n = int(lengths[i]) if n is None and lengths is not None else n
    out = {}
    for name, value in feed.items():
        if name == lens:
            out[name] = np.full(1, n, value.dtype)
        elif name in timed:
            out[name] = value[i : i + 1, :n]
        elif name in STATE_INPUTS:  # (layers, B, H)
            out[name] = value[:, i : i + 1]
        else:
            out[name] = value[i : i + 1]
    if CHARS in out:
        c = out[CHARS]
        out[CHARS] = c[..., : max(1, int((c != 0).sum(-1).max()))]
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
    worst: dict[str, float] = field(default_factory=dict)  # backend -> max |diff| over all shapes
    compared: str = "logits"  # or "probabilities" (int8, or a forward that returns them)
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    batch_sizes: tuple = BATCH_SIZES
    lengths: tuple = LENGTHS
    max_length: int | None = None  # also validated at this length (the bundle's max_length)
    oracle_output: str | None = None  # what the oracle returns, when detected (user modules)
    diagnosis: list[str] = field(default_factory=list)  # the pattern of the failures, first in the ParityError
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)  # per-token output -> backend -> max |diff|

    def to_dict(self) -> dict:
        record = {
            "tolerance": self.tolerance,
            "oracle": self.oracle,
            "compared": self.compared,
            "cases": self.cases,
            "batch_sizes": list(self.batch_sizes),
            "lengths": list(self.lengths),
        }
        if self.max_length is not None:
            record["max_length"] = self.max_length
        if self.oracle_output is not None:
            record["oracle_output"] = self.oracle_output
        if self.outputs:  # compared besides the scores, each within the same tolerance
            record["outputs"] = {name: {"max_abs_diff": worst} for name, worst in self.outputs.items()}
        return {**record, "max_abs_diff": self.worst, "passed": not self.failures}


@dataclass
class RowOutcome:
    """One row of one parity case against the oracle: what the diagnosis reads."""

    backend: str
    length: int  # the row's tokens
    time: int  # its batch's padded length T
    differs: bool


def outputs(value) -> tuple:
    """A forward's result as a tuple (logits first, then any state outputs)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def check_parity(
    oracle_name: str,
    oracle: Forward,
    candidates: dict[str, Forward],
    tol: Tolerance,
    vocab_size: int,
    char_vocab_size: int = 0,
    seed: int = 0,
    probabilities: bool = False,
    batch_sizes=BATCH_SIZES,
    lengths=LENGTHS,
    state_shapes: dict | None = None,
    max_length: int | None = None,
    oracle_output: str | None = None,
    diagnose: bool = True,
    args: Arguments | None = None,
    per_token: tuple[str, ...] = (),
) -> ParityReport:
    """``state_shapes`` (graphs with recurrent state inputs): random initial states in the feeds,
    every output compared, with the ``scaled`` tolerance (see the module docstring).  ``max_length``:
    also validate at that length, and skip grid lengths above it.  ``oracle_output``: what the
    oracle's first output is, when detected (``output_space``; recorded) -- ``logits`` (also None),
    ``log_probabilities`` or ``probabilities`` (the last two compared as probabilities).  ``diagnose``:
    on failure, explain the pattern of the rows that differ (``diagnose_rows``; ``args`` names the
    arguments its advice mentions).  ``per_token``: the names of the outputs after the scores, each
    (batch, time) and 0 past each row's length (a classifier's ``pooling_weights``; the graph has no
    state outputs then); compared in every run, int8 included (``compare_per_token``)."""
    space = oracle_output or "logits"
    if space not in OUTPUT_SPACES:
        raise ValueError(f"oracle_output={oracle_output!r}; expected one of {OUTPUT_SPACES}")
    probabilities = probabilities or space != "logits"
    report = ParityReport(
        tol.name,
        oracle_name,
        worst={name: 0.0 for name in candidates},
        compared="probabilities" if probabilities else "logits",
        batch_sizes=tuple(batch_sizes),
        lengths=tuple(t for t in lengths if max_length is None or t <= max_length),
        max_length=max_length,
        oracle_output=oracle_output,
        outputs={what: {name: 0.0 for name in candidates} for what in per_token},
    )
    if probabilities:
        oracle = _probabilities(oracle, space)
        candidates = {name: _probabilities(f) for name, f in candidates.items()}
    rows: list[RowOutcome] = []
    examples: list[tuple[int, dict, int, str]] = []  # differing rows: (length, feed, row, backend)
    for feed in parity_feeds(vocab_size, char_vocab_size, seed, batch_sizes, lengths, state_shapes, max_length):
        lens = feed[LENS]
        expected = outputs(oracle(feed))
        time = feed[IDS].shape[1]
        shape = f"batch={len(lens)} time={time} lengths={_short(lens.tolist())}"
        for name, forward in candidates.items():
            report.cases += 1
            actual = outputs(forward(feed))
            _compare_all(report, name, shape, actual, expected, lens, tol, probabilities, per_token)
            if diagnose:
                differs = _rows_differ(actual, expected, lens, tol, per_token)
                if differs is not None:
                    rows += [RowOutcome(name, int(n), time, bool(d)) for n, d in zip(lens, differs)]
                    examples += [(int(lens[i]), feed, i, name) for i in np.flatnonzero(differs)]
            if len(lens) > 1 and actual[0].shape == expected[0].shape:  # each row must equal that row alone
                for i, n in enumerate(lens):
                    alone = outputs(forward(row_alone(feed, i)))
                    in_batch = (
                        (actual[0][i : i + 1, :n] if actual[0].ndim == 3 else actual[0][i : i + 1]),
                        # per-token outputs (B, T): the row's own tokens; state (layers, B, H): its column
                        *(a[i : i + 1, :n] if per_token else a[:, i : i + 1] for a in actual[1:]),
                    )
                    _compare_all(
                        report,
                        name,
                        f"{shape} row {i} alone vs in batch",
                        alone,
                        in_batch,
                        lens[i : i + 1],
                        tol,
                        probabilities,
                        per_token,
                    )
    if diagnose and report.failures:

        def agrees_alone(example, m: int) -> bool:
            _, feed, i, name = example
            prefix = row_alone(feed, i, m)
            found, want = outputs(candidates[name](prefix)), outputs(oracle(prefix))
            return not _rows_differ(found, want, prefix[LENS], tol, per_token)[0]

        report.diagnosis = diagnose_rows(rows, examples, agrees_alone, max_length, args or Arguments())
    return report


def _short(values: list) -> str:
    """A list for a message, elided past 10 items (a batch at max_length may be long)."""
    return str(values) if len(values) <= 10 else f"{str(values[:10])[:-1]}, ... ({len(values)} rows)]"


def _rows_differ(
    actual: tuple, expected: tuple, lens: np.ndarray, tol: Tolerance, per_token: tuple[str, ...] = ()
) -> np.ndarray | None:
    """(B,) bool: rows outside the tolerance (or not finite) in any output, real tokens only; None when
    the shapes differ (a per-row answer does not exist; the shape failure is reported already).
    ``per_token``: the outputs after the scores are (B, T), per row on axis 0, not state."""
    if len(actual) != len(expected) or any(a.shape != e.shape for a, e in zip(actual, expected)):
        return None
    batch = len(lens)
    a, e = actual[0], expected[0]
    if a.ndim == 3:  # tagging / LM logits: padding positions do not count here
        real = (np.arange(a.shape[1])[None, :] < lens[:, None])[..., None]
        a, e = np.where(real, a, 0), np.where(real, e, 0)
    scores = tol.scaled(expected[0]) if len(expected) > 1 else tol
    if per_token:
        scores = tol
    bad = ~(np.isclose(a, e, atol=scores.atol, rtol=scores.rtol) & np.isfinite(a)).reshape(batch, -1).all(1)
    if per_token:  # (B, T): padding is 0 on both sides when right, and a difference there is one
        for a, e in zip(actual[1:], expected[1:]):
            bad |= ~(np.isclose(a, e, atol=tol.atol, rtol=tol.rtol) & np.isfinite(a)).reshape(batch, -1).all(1)
        return bad
    for a, e in zip(actual[1:], expected[1:]):  # state (L, B, H): per row on axis 1
        scaled = tol.scaled(e)
        close = np.isclose(a, e, atol=scaled.atol, rtol=scaled.rtol) & np.isfinite(a)
        bad |= ~np.moveaxis(close, 1, 0).reshape(batch, -1).all(1)
    return bad


def diagnose_rows(
    rows: list[RowOutcome],
    examples: list,
    agrees_alone: Callable[[Any, int], bool],
    max_length: int | None,
    args: Arguments,
) -> list[str]:
    """What the pattern of differing rows says about the oracle (a user's forward) -- one line of advice.

    ``examples``: the differing rows as (length, feed, row, backend); ``agrees_alone(example, m)``
    runs that row's first m tokens alone on both sides: for a forward that changes past some length,
    bisection finds the exact length."""
    differing = [r for r in rows if r.differs]
    if not differing:
        return []
    backends = list(dict.fromkeys(r.backend for r in rows))
    bad = [b for b in backends if any(r.differs for r in rows if r.backend == b)]
    if len(bad) < len(backends):
        good = [b for b in backends if b not in bad]
        return [
            f"only {', '.join(bad)} differs from the oracle, {', '.join(good)} agrees on every row: a bug in "
            f"rnnkit's {', '.join(bad)} backend, not in the model; please report it with this message"
        ]
    rows = [r for r in rows if r.backend == bad[0]]  # both backends fail alike: count each row once
    differing = [r for r in rows if r.differs]
    agreeing = [r for r in rows if not r.differs]
    padded = [r for r in rows if r.length < r.time]
    if not agreeing:
        return [
            "every row differs, full-length and padded, from 1 token on: the graph computes something other "
            "than the forward from the start. Check that the pooling argument matches what the forward pools "
            "('last' = the final state of each direction, h_n), that the forward adds nothing after the "
            "head that rnnkit does not write (a temperature, a bias, an activation other than (log_)softmax), "
            "and that the weights are the trained ones (no custom cell or reordered gates)"
        ]
    if all(r.length < r.time for r in differing) and all(not r.differs for r in rows if r.length == r.time):
        return [
            f"only padded rows differ ({len(differing)} of {len(padded)} rows shorter than their batch; "
            "every row as long as its batch agrees): your forward reads padding: pack the sequence "
            "(nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)) or mask it"
        ]
    longest_agreeing = max(r.length for r in agreeing)
    shortest_differing = min(r.length for r in differing)
    if shortest_differing > longest_agreeing:
        limit = f", and the bundle accepts up to {max_length} tokens" if max_length else ""
        example = min(examples, key=lambda x: x[0]) if examples else None
        exact = _bisect(example, longest_agreeing, agrees_alone) if example else None
        if exact is not None:
            return [
                f"the forward changes past {exact} tokens (truncation?): a text of {exact} tokens agrees with "
                f"the graph, one of {exact + 1} does not{limit}. Remove the cut from the forward, or export "
                f"with {args('max_length', exact)}"
            ]
        return [
            f"only rows longer than {longest_agreeing} tokens differ (every row of {longest_agreeing} or fewer "
            f"agrees, rows of {shortest_differing} or more do not): the forward changes past N tokens for some "
            f"N in {longest_agreeing}..{shortest_differing - 1} (truncation?){limit}"
        ]
    lengths = sorted({r.length for r in differing})
    return [
        f"{len(differing)} of {len(rows)} rows differ, at lengths {_short(lengths)} (padded rows: "
        f"{sum(r.differs for r in padded)} of {len(padded)} differ; full-length rows: "
        f"{sum(r.differs for r in rows if r.length == r.time)} of {len(rows) - len(padded)})"
    ]


def _bisect(example, agrees: int, agrees_alone: Callable[[Any, int], bool]) -> int | None:
    """The largest m such that the example row's first m tokens agree alone and m + 1 do not, searched
    between ``agrees`` and the row's length; None when the row alone does not show the difference."""
    low, high = agrees, example[0]
    if agrees_alone(example, high) or not agrees_alone(example, low):
        return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if agrees_alone(example, mid) else (low, mid)
    return low


def _compare_all(
    report: ParityReport,
    name: str,
    where: str,
    actual: tuple,
    expected: tuple,
    lens,
    tol: Tolerance,
    probabilities: bool,
    per_token: tuple[str, ...] = (),
) -> None:
    """Logits (argmax, padding, tolerance), then each per-token output (``compare_per_token``) or
    each state output (tolerance only)."""
    if len(actual) != len(expected):
        report.failures.append(f"{name} @ {where}: {len(actual)} outputs, expected {len(expected)}")
        return
    stateful = len(expected) > 1 and not per_token
    compare_scores(
        report, name, where, actual[0], expected[0], lens, tol.scaled(expected[0]) if stateful else tol, probabilities
    )
    if per_token:
        if len(actual) != 1 + len(per_token):
            report.failures.append(f"{name} @ {where}: {len(actual)} outputs, expected scores and {list(per_token)}")
            return
        for what, a, e in zip(per_token, actual[1:], expected[1:]):
            compare_per_token(report, name, where, what, a, e, lens, tol)
        return
    if probabilities:  # int8: what users see; the state's effect is in every later probability
        return
    for k, (a, e) in enumerate(zip(actual[1:], expected[1:]), start=1):
        compare_tensor(report, name, where, f"state output #{k}", a, e, tol)


def compare_tensor(
    report: ParityReport, name: str, where: str, what: str, actual: np.ndarray, expected: np.ndarray, tol: Tolerance
) -> None:
    """One output that is not a score (recurrent state, memory, attention weights): same shape, finite,
    within the ``scaled`` tolerance (see the module docstring)."""
    if actual.shape != expected.shape:
        report.failures.append(f"{name} @ {where}: {what} shape {actual.shape}, expected {expected.shape}")
        return
    worst, scaled = tol.worst(actual, expected), tol.scaled(expected)
    report.worst[name] = max(report.worst[name], worst)
    if not np.all(np.isfinite(actual)) or not scaled.close(actual, expected):
        report.failures.append(
            f"{name} @ {where}: {what} max |diff| {worst:.3g} exceeds "
            f"{scaled.name} (atol {scaled.atol:.3g}, rtol {scaled.rtol})"
        )


def compare_per_token(
    report: ParityReport,
    name: str,
    where: str,
    what: str,
    actual: np.ndarray,
    expected: np.ndarray,
    lens: np.ndarray,
    tol: Tolerance,
) -> None:
    """A (B, T) output of one value per token (attention-pooling weights): the same shape, finite,
    exactly 0 past each row's length, and within ``tol`` everywhere; the worst difference is kept
    per output and backend (``ParityReport.outputs``)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        report.failures.append(f"{name} @ {where}: {what} shape {actual.shape}, expected {expected.shape}")
        return
    worst = tol.worst(actual, expected)
    kept = report.outputs.setdefault(what, {})
    kept[name] = max(kept.get(name, 0.0), worst)
    padding = np.arange(actual.shape[1])[None, :] >= np.asarray(lens)[:, None]
    if not np.all(np.isfinite(actual)):
        report.failures.append(f"{name} @ {where}: non-finite {what}")
    elif np.any(actual[padding] != 0):
        report.failures.append(f"{name} @ {where}: non-zero {what} past a row's length")
    elif not tol.close(actual, expected):
        report.failures.append(
            f"{name} @ {where}: {what} max |diff| {worst:.3g} exceeds {tol.name} (atol {tol.atol}, rtol {tol.rtol})"
        )


OUTPUT_SPACES = ("logits", "log_probabilities", "probabilities")


def output_space(scores: np.ndarray, atol: float = 1e-4) -> str:
    """What a classifier's (B, C) scores are: ``log_probabilities`` when every row's logsumexp is 0
    (a log_softmax), ``probabilities`` when every row is in [0, 1] and sums to 1 (a softmax), else
    ``logits``.  Read on a ragged batch of 8: random logits pass neither test on every row."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2 or not np.all(np.isfinite(x) | (x == -np.inf)):
        return "logits"
    top = x.max(axis=1, keepdims=True)
    logsumexp = top[:, 0] + np.log(np.exp(x - top).sum(axis=1))
    if np.all(np.abs(logsumexp) <= atol):
        return "log_probabilities"
    if np.all((x >= 0) & (x <= 1)) and np.all(np.abs(x.sum(axis=1) - 1) <= atol):
        return "probabilities"
    return "logits"


def _probabilities(forward: Forward, output: str = "logits") -> Forward:
    """``forward`` with its first output as probabilities: softmax of logits, exp of log-probabilities,
    probabilities as they are."""

    def probs(feed):
        out = outputs(forward(feed))
        scores = out[0].astype(np.float64)
        p = (
            softmax(scores) if output == "logits" else np.exp(scores) if output == "log_probabilities" else scores
        ).astype(np.float32)
        return p if len(out) == 1 else (p, *out[1:])

    return probs


def compare_scores(
    report: ParityReport, name: str, where: str, actual, expected, lens, tol: Tolerance, probabilities: bool
) -> None:
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
        report.failures.append(
            f"{name} @ {where}: max |diff| {worst:.3g} exceeds {tol.name} (atol {tol.atol}, rtol {tol.rtol})"
        )
    bad = disagreements(actual, expected, lens, tol)
    if bad:
        what = "tags differ at (row, t)" if actual.ndim == 3 else "labels differ in rows"
        report.failures.append(f"{name} @ {where}: {what} {[b if len(b) > 1 else b[0] for b in bad[:10]]}")


def raise_on_failures(*reports: ParityReport, what: str) -> None:
    """One ``ParityError``: the diagnosis first, then every failure (the first 40)."""
    failures = [f for r in reports for f in r.failures]
    if failures:
        diagnosis = "".join(f"\n  diagnosis: {d}" for r in reports for d in r.diagnosis)
        shown = "\n  ".join(failures[:40])
        more = f"\n  ... and {len(failures) - 40} more" if len(failures) > 40 else ""
        raise ParityError(
            f"{what}: {len(failures)} parity failure(s); nothing was written:{diagnosis}\n  {shown}{more}"
        )
