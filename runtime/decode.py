"""Greedy and beam search over an encoder-decoder bundle's two graphs, batched, in numpy.

The decode loop (``Seq2SeqIO``): the encoder runs once per batch of sources and returns the
source ``memory`` and attention ``keys`` (the context, fixed for the whole decode) and the
decoder's initial state; then every step feeds the previous tokens (``<s>`` first) with the
carried state and the context to the decoder step graph, takes its ``log_probs`` (B, 1, V) and
its ``final_*`` (the next step's ``initial_*``).  Rows are ``source x beam``; when hypotheses
are reordered or finished sources leave the batch, state (axis 1) and context (axis 0) follow
with ``np.take``, so a step never re-reads the source and never computes a finished row.

Scores are float64 sums of the graph's float32 log-probabilities.  ``<pad>`` and ``<s>`` are
never generated; ``<unk>`` is (a model trained on references with ``<unk>`` predicts it).

* **Greedy**: argmax each step (ties: the lowest id); a source stops at ``</s>`` or its limit.
* **Beam search** (Wu et al. 2016, GNMT; Ott et al. 2019, fairseq): each step ranks the
  ``beam x V`` extensions of a source's live hypotheses and takes the best ``2 x beam``, ties by
  (beam, id); an extension ending in ``</s>`` among the first ``beam`` of them is finished, the
  others fill the ``beam`` live slots.  A source stops when ``beam`` hypotheses have finished
  (every beam ended in ``</s>``) or at its length limit, where live hypotheses are kept as cut
  (``finished=False``).  Finished hypotheses are ranked by ``log_prob / lp`` with GNMT's length
  penalty ``lp = ((5 + n) / 6) ** alpha``, n = tokens including ``</s>``: ``alpha = 0`` ranks by
  raw log-probability (which favours short outputs), larger alpha favours longer ones; cut ones
  rank after every finished one.  ``beam = 1`` is exactly greedy (same tokens, same score).
* **Limits**: a source of n tokens gets at most ``2 n + 10`` output tokens by default (outputs
  of translation and grapheme-to-phoneme are rarely twice their source), never more than
  ``MAX_OUTPUT_TOKENS``; so no decode runs forever, even for an untrained model.

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import InputError
from .manifest import LanguageModelIO
from .manifest import Seq2SeqIO as IO
from .tokenizer import PAD_ID, pad_ids

GraphRun = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # feeds -> outputs by name
MAX_OUTPUT_TOKENS = 1024  # absolute cap on output tokens per source, whatever the options
OUTPUT_FACTOR, OUTPUT_OFFSET = 2, 10  # default limit: 2 * source tokens + 10
DEFAULT_ALPHA = 0.6  # GNMT's length-penalty exponent (Wu et al. 2016 tuned alpha in [0.6, 0.7])


@dataclass
class Candidate:
    """One hypothesis in ids."""

    ids: list[int]  # target ids, without <s> and </s>
    log_prob: float  # sum of the log-probabilities of ids (and of </s> when finished), nats
    score: float  # log_prob / length_penalty(len(ids) + finished, alpha): the ranking score
    finished: bool  # ended with </s>; False: cut at the length limit


def length_penalty(n: int, alpha: float) -> float:
    """GNMT's ``((5 + n) / 6) ** alpha`` for n output tokens (``</s>`` included)."""
    return ((5.0 + n) / 6.0) ** alpha


def output_limit(source_tokens: int, max_output_tokens: int | None = None) -> int:
    """The most output tokens a source may get: ``max_output_tokens`` when given, else ``2 n + 10``;
    never above ``MAX_OUTPUT_TOKENS``."""
    limit = OUTPUT_FACTOR * source_tokens + OUTPUT_OFFSET if max_output_tokens is None else max_output_tokens
    return min(int(limit), MAX_OUTPUT_TOKENS)


def check_options(beam, alpha, max_output_tokens) -> None:
    if not isinstance(beam, (int, np.integer)) or isinstance(beam, bool) or beam < 1:
        raise InputError(f"beam must be an integer >= 1 (1 = greedy), got {beam!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not np.isfinite(alpha) or alpha < 0:
        raise InputError(f"alpha (length penalty) must be a finite number >= 0, got {alpha!r}")
    if max_output_tokens is not None and (
        not isinstance(max_output_tokens, (int, np.integer))
        or isinstance(max_output_tokens, bool)
        or not 1 <= max_output_tokens <= MAX_OUTPUT_TOKENS
    ):
        raise InputError(
            f"max_output_tokens must be an integer in 1..{MAX_OUTPUT_TOKENS} (or None: 2 x source "
            f"tokens + 10), got {max_output_tokens!r}"
        )


@dataclass
class Rows:
    """The per-row inputs of the decoder that are not tokens: recurrent state (L, N, H) and context (N, ...)."""

    state: dict[str, np.ndarray]
    context: dict[str, np.ndarray]

    def take(self, rows: np.ndarray) -> "Rows":
        """Rows reordered / repeated / dropped: state along axis 1, context along axis 0."""
        return Rows(
            {k: np.take(v, rows, axis=1) for k, v in self.state.items()},
            {k: np.take(v, rows, axis=0) for k, v in self.context.items()},
        )


class Steps:
    """An encoder-decoder's two graphs as the decode loop calls them."""

    def __init__(
        self, encoder: GraphRun, decoder: GraphRun, cell: str, attention: str, bos_id: int, eos_id: int, vocab_size: int
    ):
        self.encoder, self.decoder = encoder, decoder
        self.state_inputs = LanguageModelIO.state_inputs(cell)
        self.state_outputs = LanguageModelIO.state_outputs(cell)
        self.attention = attention != "none"
        self.bos_id, self.eos_id, self.vocab_size = int(bos_id), int(eos_id), int(vocab_size)
        self.never = np.array(sorted({PAD_ID, self.bos_id}))  # ids never generated

    def encode(self, sources: Sequence[Sequence[int]]) -> Rows:
        """Source id rows (each >= 1 token) -> the decoder's initial state and the context."""
        ids, lens = pad_ids(sources)
        out = self.encoder({IO.source_ids: ids, IO.source_lens: lens})
        context = {IO.memory: out[IO.memory], IO.keys: out[IO.keys], IO.source_lens: lens} if self.attention else {}
        return Rows({name: out[name] for name in self.state_inputs}, context)

    def run(self, input_ids: np.ndarray, rows: Rows) -> tuple[np.ndarray, Rows]:
        """(N, T) previous tokens -> log-probabilities (N, T, V) float32, and the rows after them."""
        out = self.decoder(
            {IO.input_ids: np.ascontiguousarray(input_ids, dtype=np.int64), **rows.state, **rows.context}
        )
        state = {LanguageModelIO.STATE_PAIRS[o]: out[o] for o in self.state_outputs}
        return out[IO.log_probs], Rows(state, rows.context)

    def step(self, tokens: np.ndarray, rows: Rows) -> tuple[np.ndarray, Rows]:
        """(N,) previous tokens -> float64 log-probabilities (N, V) with never-generated ids at -inf, new rows."""
        log_probs, rows = self.run(tokens[:, None], rows)
        lp = log_probs[:, 0].astype(np.float64)
        lp[:, self.never] = -np.inf
        return lp, rows


def greedy(
    steps: Steps, sources: Sequence[Sequence[int]], limits: Sequence[int], alpha: float = DEFAULT_ALPHA
) -> list[Candidate]:
    """The argmax output of every source (one batch: the encoder runs once); ``alpha`` only sets
    the reported score, as beam search would."""
    n = len(sources)
    rows = steps.encode(sources)
    outputs: list[list[int]] = [[] for _ in range(n)]
    log_prob = np.zeros(n)
    finished = np.zeros(n, bool)
    active = np.arange(n)  # source of each row
    tokens = np.full(n, steps.bos_id, np.int64)
    while len(active):
        lp, rows = steps.step(tokens, rows)
        pick = lp.argmax(axis=1)  # first maximum: ties -> lowest id
        log_prob[active] += lp[np.arange(len(active)), pick]
        kept: list[int] = []
        for r, (s, token) in enumerate(zip(active.tolist(), pick)):
            if token == steps.eos_id:
                finished[s] = True
                continue
            outputs[s].append(int(token))
            if len(outputs[s]) < limits[s]:
                kept.append(r)
        keep = np.asarray(kept, np.int64)
        if len(keep) < len(active):  # finished sources leave the batch
            rows = rows.take(keep)
        active, tokens = active[keep], pick[keep]
    return [
        Candidate(
            outputs[s],
            float(log_prob[s]),
            float(log_prob[s]) / length_penalty(len(outputs[s]) + bool(finished[s]), alpha),
            bool(finished[s]),
        )
        for s in range(n)
    ]


def beam_search(
    steps: Steps, sources: Sequence[Sequence[int]], limits: Sequence[int], beam: int, alpha: float = DEFAULT_ALPHA
) -> list[list[Candidate]]:
    """Up to ``beam`` hypotheses per source, best first (see the module docstring); one batch."""
    k, vocab = int(beam), steps.vocab_size
    n = len(sources)
    rows = steps.encode(sources).take(np.repeat(np.arange(n), k))  # row = source * k + slot
    scores = np.full((n, k), -np.inf)
    scores[:, 0] = 0.0  # one live hypothesis to start: no duplicates
    seqs = np.zeros((n, k, 0), np.int64)
    active = np.arange(n)  # source of each block of k rows
    done: list[list[Candidate]] = [[] for _ in range(n)]
    tokens = np.full(n * k, steps.bos_id, np.int64)
    width = min(2 * k, k * vocab)
    for t in range(max(limits, default=0)):
        lp, rows = steps.step(tokens, rows)
        a = len(active)
        total = (scores[:, :, None] + lp.reshape(a, k, vocab)).reshape(a, k * vocab)
        kth = -np.partition(-total, width - 1, axis=1)[:, width - 1]  # each source's width-th best value
        keep, parents, next_tokens, next_scores = [], [], [], []
        for i, s in enumerate(active.tolist()):
            ranked = np.flatnonzero(total[i] >= kth[i])  # every candidate as good: ties included
            ranked = ranked[np.argsort(-total[i, ranked], kind="stable")[:width]]  # best first, ties by (slot, id)
            live: list[tuple[int, int, float]] = []
            for rank, j in enumerate(ranked):
                value = total[i, j]
                if not np.isfinite(value) or len(live) == k:
                    break
                slot, token = divmod(int(j), vocab)
                if token == steps.eos_id:
                    if rank < k:  # a top-k extension ends here
                        ids = seqs[i, slot].tolist()
                        done[s].append(
                            Candidate(ids, float(value), float(value) / length_penalty(len(ids) + 1, alpha), True)
                        )
                else:
                    live.append((slot, token, float(value)))
            if len(done[s]) >= k or not live:
                continue
            if t + 1 >= limits[s]:  # the limit: live hypotheses are cut here
                for slot, token, value in live:
                    ids = seqs[i, slot].tolist() + [token]
                    done[s].append(Candidate(ids, value, value / length_penalty(len(ids), alpha), False))
                continue
            live += [(0, steps.eos_id, -np.inf)] * (k - len(live))  # empty slots: never extended
            keep.append(i)
            parents.append([i * k + slot for slot, _, _ in live])
            next_tokens.append([token for _, token, _ in live])
            next_scores.append([value for _, _, value in live])
        if not keep:
            break
        parent_rows = np.asarray(parents, np.int64)  # (a', k) rows of the current batch
        seqs = np.concatenate([seqs.reshape(a * k, t)[parent_rows], np.asarray(next_tokens)[..., None]], axis=2)
        rows = rows.take(parent_rows.reshape(-1))
        scores = np.asarray(next_scores)
        tokens = np.asarray(next_tokens, np.int64).reshape(-1)
        active = active[keep]
    return [sorted(found, key=lambda c: (not c.finished, -c.score))[:k] for found in done]


def teacher_forced(
    steps: Steps, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
) -> list[np.ndarray]:
    """Log-probabilities (len(target) + 1, V) float32 of every next token given ``<s> target``: the
    last row predicts what follows the target (``</s>`` for a complete one).  One decoder call
    (the decoder has no input feeding); rows shorter than the batch's longest are padded after
    their end, which a unidirectional decoder never reads back."""
    rows = steps.encode(sources)
    inputs, _ = pad_ids([[steps.bos_id, *t] for t in targets])
    log_probs, _ = steps.run(inputs, rows)
    return [log_probs[i, : len(t) + 1] for i, t in enumerate(targets)]
