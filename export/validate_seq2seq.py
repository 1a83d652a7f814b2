"""The encoder-decoder's validation: its torch oracles, parity cases and dev metrics (``rnnkit.export.task_seq2seq``).

Parity (each graph on its own ragged feeds, against ``Seq2Seq.encode`` / ``Seq2Seq.decode``):

* encoder: ``source_ids``/``source_lens`` at batch sizes {1, 3, 8} x source lengths {1, 7, 33, 200}
  (row 0 full length, the others random), and at the bundle's ``max_length`` (a ragged pair whose
  row 0 has exactly ``max_length`` tokens, and one row alone: ``rnnkit.export.validate.shapes``),
  as every source the runtime accepts is at most that long; ``memory``, ``keys`` and the initial
  state within FP32, ``memory``/``keys`` exactly 0 past each length, every row equal to that row
  alone at its length;
* decoder: random non-zero state, random ``memory``/``keys`` (non-zero past the lengths too, so a
  missing mask shows), ragged ``source_lens``, and ``input_ids`` chunks of T = 1 (a decode step)
  and T = 7 (teacher forcing), same source lengths, ``max_length`` included; ``log_probs`` (same
  argmax up to ties), final state and ``attention`` (exactly 0 on padding) within FP32, every row
  equal to that row alone with its memory cut to its length.

int8: numba's int8 graphs against onnxruntime's at source lengths up to 33 (see
``rnnkit.export.validate``), on probabilities within ``INT8_SEQUENCE``: the decoder's own, and the
encoder's read out through the fp32 torch decoder (onnxruntime's int8 LSTM quantizes its
activations, numba's does not, and on a trained model their raw hidden states drift apart by up
to ~0.5 in a unit at 33 steps, measured, while the probabilities they lead to stay within
``INT8_SEQUENCE``).  Longer-range int8 quality is gated on the dev set instead:

Dev metrics run the exported graphs through the runtime's own decode loop
(``rnnkit.runtime.decode``): greedy outputs of fp32 (and int8), with references (``DevSet.labels``)
their exact-match accuracy, token error rate (edit distance / reference tokens) and teacher-forced
loss in nats per token; for int8, ``int8_agreement`` = the share of next-token decisions where
int8, fed fp32's greedy output, picks fp32's token (``</s>`` included) -- the default
``--min-agreement`` gate of the pipeline -- and ``int8_output_agreement``, the share of
identical outputs (reported, not gated: one early difference changes a whole output).

Imports torch only inside the oracles.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..runtime.decode import Steps, greedy, output_limit, teacher_forced
from ..runtime.manifest import LanguageModelIO
from ..runtime.manifest import Seq2SeqIO as IO
from ..runtime.model import length_buckets
from ..runtime.tolerance import Tolerance
from .oracle import one_torch_thread
from .pipeline import DevSet
from .validate import (
    BATCH_SIZES,
    LENGTHS,
    Forward,
    ParityReport,
    compare_scores,
    compare_tensor,
    outputs,
    row_alone,
    shapes,
)

SOURCE_TIME = "source_time"  # dim_param of the source axis (memory, keys, attention)
TARGET_LENGTHS = (1, 7)  # decoder chunks, alternating over the source lengths: a step, teacher forcing
INT8_LENGTHS = (1, 7, 33)  # as language models: longer int8 runs are covered by the dev agreement
MAX_DEV_SOURCES = 2000  # bounds export time
DEV_BATCH = 64
# axes of every graph output: 'batch' is cut for a row alone, 'source' past each source length is exactly 0
AXES = {
    IO.memory: ("batch", "source", "hidden"),
    IO.keys: ("batch", "source", "hidden"),
    IO.initial_h: ("layers", "batch", "hidden"),
    IO.initial_c: ("layers", "batch", "hidden"),
    IO.final_h: ("layers", "batch", "hidden"),
    IO.final_c: ("layers", "batch", "hidden"),
    IO.log_probs: ("batch", "time", "vocab"),
    IO.attention: ("batch", "time", "source"),
}
TIMED = (IO.source_ids, IO.memory, IO.keys)  # inputs cut to a row's source length when it runs alone


def torch_encoder_forward(module) -> Forward:
    import torch

    module.eval()

    def forward(feed: dict):
        ids = torch.from_numpy(feed[IO.source_ids])
        lens = torch.from_numpy(feed[IO.source_lens].astype(np.int64))
        with torch.no_grad(), one_torch_thread():
            memory, keys, state = module.encode(ids, lens)
        out = ([memory, keys] if keys is not None else []) + list(state)
        return tuple(t.numpy().astype(np.float32) for t in out)

    return forward


def torch_decoder_forward(module) -> Forward:
    import torch

    module.eval()
    c = module.config

    def forward(feed: dict):
        ids = torch.from_numpy(feed[IO.input_ids])
        state = tuple(torch.from_numpy(feed[n]) for n in LanguageModelIO.state_inputs(c.cell))
        memory = keys = lens = None
        if c.attention != "none":
            memory, keys = torch.from_numpy(feed[IO.memory]), torch.from_numpy(feed[IO.keys])
            lens = torch.from_numpy(feed[IO.source_lens].astype(np.int64))
        with torch.no_grad(), one_torch_thread():
            logits, final, weights = module.decode(ids, state, memory, keys, lens)
        out = [torch.log_softmax(logits, dim=-1), *final] + ([weights] if weights is not None else [])
        return tuple(t.numpy().astype(np.float32) for t in out)

    return forward


def seq2seq_feeds(
    graph: str, config, seed: int = 0, batch_sizes=BATCH_SIZES, lengths=LENGTHS, max_length: int | None = None
):
    """Ragged feeds for the ``encoder`` or ``decoder`` graph (see the module docstring); ``max_length``:
    source lengths up to it, and it (``rnnkit.export.validate.shapes``)."""
    rng = np.random.default_rng(seed)
    lengths = tuple(lengths)
    for j, (batch, source_time) in enumerate(shapes(batch_sizes, lengths, max_length)):
        k = lengths.index(source_time) if source_time in lengths else j  # the grid's target lengths as before
        lens = rng.integers(1, source_time + 1, size=batch).astype(np.int32)
        lens[0] = source_time
        if graph == "encoder":
            ids = rng.integers(2, max(3, config.source_vocab_size), size=(batch, source_time)).astype(np.int64)
            ids[np.arange(source_time)[None, :] >= lens[:, None]] = 0
            yield {IO.source_ids: ids, IO.source_lens: lens}
            continue
        time = TARGET_LENGTHS[k % len(TARGET_LENGTHS)]
        feed = {IO.input_ids: rng.integers(2, config.target_vocab_size, size=(batch, time)).astype(np.int64)}
        for name in LanguageModelIO.state_inputs(config.cell):
            feed[name] = (0.5 * rng.standard_normal((config.layers, batch, config.hidden))).astype(np.float32)
        if config.attention != "none":
            for name in (IO.memory, IO.keys):
                feed[name] = (0.5 * rng.standard_normal((batch, source_time, config.hidden))).astype(np.float32)
            feed[IO.source_lens] = lens
        yield feed


def _source_lens(feed: dict) -> np.ndarray | None:
    return feed.get(IO.source_lens)


def _row(name: str, value: np.ndarray, i: int, n: int | None) -> np.ndarray:
    index = tuple(
        slice(i, i + 1) if axis == "batch" else slice(None, n) if axis == "source" else slice(None)
        for axis in AXES[name]
    )
    return value[index]


def read_out(encoder: Forward, decoder: Forward, config) -> Forward:
    """``encoder`` followed by a fixed fp32 ``decoder`` reading its outputs (the chunk ``<s> 4 5``,
    the same for every row): the encoder's effect on what users see, as the decoder's log-probabilities."""
    names = IO.encoder_outputs(config.cell, config.attention)

    def forward(feed: dict):
        encoded = dict(zip(names, outputs(encoder(feed))))
        batch = feed[IO.source_ids].shape[0]
        chunk = np.minimum([config.bos_id, 4, 5], config.target_vocab_size - 1)
        step = {IO.input_ids: np.tile(np.asarray(chunk, np.int64), (batch, 1)), **encoded}
        if config.attention != "none":
            step[IO.source_lens] = feed[IO.source_lens]
        return outputs(decoder(step))[0]

    return forward


def check_seq2seq_parity(
    graph: str,
    config,
    oracle_name: str,
    oracle: Forward,
    candidates: dict[str, Forward],
    tol: Tolerance,
    int8: bool,
    seed: int = 0,
    batch_sizes=BATCH_SIZES,
    lengths=None,
    readout: Forward | None = None,
    max_length: int | None = None,
) -> ParityReport:
    """The ``encoder`` or ``decoder`` graph's parity report (see the module docstring); every miss listed.
    ``lengths``: source lengths (default {1, 7, 33, 200}, int8 {1, 7, 33}); ``max_length``: only
    source lengths up to it, and it.  ``readout`` (a fp32
    decoder): compare encoders through it, on probabilities (``read_out``), instead of on their raw
    outputs -- for int8, whose LSTM hidden states differ between backends by more than what
    reaches the probabilities (onnxruntime quantizes activations, numba does not)."""
    names = (
        IO.encoder_outputs(config.cell, config.attention)
        if graph == "encoder"
        else IO.decoder_outputs(config.cell, config.attention)
    )
    if readout is not None:
        oracle = read_out(oracle, readout, config)
        candidates = {name: read_out(f, readout, config) for name, f in candidates.items()}
        names = (IO.log_probs,)
    lengths = lengths or (INT8_LENGTHS if int8 else LENGTHS)
    compared = ("probabilities" if int8 else "log_probs") if names[0] == IO.log_probs else "outputs"
    compared += " through the fp32 decoder" if readout is not None else ""
    report = ParityReport(
        tol.name,
        oracle_name,
        worst={name: 0.0 for name in candidates},
        compared=compared,
        batch_sizes=tuple(batch_sizes),
        lengths=tuple(t for t in lengths if max_length is None or t <= max_length),
        max_length=max_length,
    )
    for feed in seq2seq_feeds(graph, config, seed, batch_sizes, lengths, max_length):
        lens = _source_lens(feed)
        if graph == "encoder":
            batch, where = feed[IO.source_ids].shape[0], f"batch={len(lens)} source_time={feed[IO.source_ids].shape[1]}"
        else:
            batch, time = feed[IO.input_ids].shape
            where = f"batch={batch} time={time}" + (
                f" source_time={feed[IO.memory].shape[1]}" if lens is not None else ""
            )
        where += f" source_lens={lens.tolist()}" if lens is not None else ""
        expected = dict(zip(names, outputs(oracle(feed))))
        for backend, forward in candidates.items():
            report.cases += 1
            actual = dict(zip(names, outputs(forward(feed))))
            _compare(report, backend, where, actual, expected, lens, tol, int8)
            for i in range(batch if batch > 1 else 0):
                n = None if lens is None else int(lens[i])
                alone = dict(zip(names, outputs(forward(row_alone(feed, i, lens=IO.source_lens, timed=TIMED)))))
                in_batch = {k: _row(k, v, i, n) for k, v in actual.items()}
                _compare(
                    report,
                    backend,
                    f"{where} row {i} alone vs in batch",
                    alone,
                    in_batch,
                    None if lens is None else lens[i : i + 1],
                    tol,
                    int8,
                )
    return report


def _compare(
    report: ParityReport, backend: str, where: str, actual: dict, expected: dict, lens, tol: Tolerance, int8: bool
) -> None:
    if list(actual) != list(expected) or any(v is None for v in actual.values()):
        report.failures.append(f"{backend} @ {where}: outputs {list(actual)}, expected {list(expected)}")
        return
    for name, e in expected.items():
        a = actual[name]
        if name == IO.log_probs:  # every target position is real
            full = np.full(e.shape[0], e.shape[1], np.int64)
            if int8:
                compare_scores(report, backend, where, np.exp(a), np.exp(e), full, tol, True)
            else:
                compare_scores(report, backend, where, a, e, full, tol.scaled(e), False)
            continue
        if int8 and name in (IO.final_h, IO.final_c, IO.attention):  # int8 decoder: what users see, as LMs
            continue
        compare_tensor(report, backend, where, f"'{name}'", a, e, tol)
        axes = AXES[name]
        if "source" in axes and lens is not None and a.shape == e.shape:
            at = axes.index("source")
            past = np.arange(a.shape[at])[None, :] >= lens[:, None]  # (B, S)
            past = np.broadcast_to(np.expand_dims(past, 2 if at == 1 else 1), a.shape)  # onto (B, S, H) / (B, T, S)
            if np.any(a[past] != 0):
                report.failures.append(f"{backend} @ {where}: '{name}' is not exactly 0 past a source's length")


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (unit insert / delete / substitute) between two token sequences (the token
    error rate of dev metrics here, and of training's ``rnnkit.toolkit.seq_metrics``)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _steps(graphs: dict[str, Forward], config) -> Steps:
    def named(forward: Forward, names: tuple[str, ...]):
        return lambda feeds: dict(zip(names, outputs(forward(feeds))))

    return Steps(
        named(graphs["encoder"], IO.encoder_outputs(config.cell, config.attention)),
        named(graphs["decoder"], IO.decoder_outputs(config.cell, config.attention)),
        config.cell,
        config.attention,
        config.bos_id,
        config.eos_id,
        config.target_vocab_size,
    )


def seq2seq_dev_metrics(
    forwards: dict[str, dict[str, Forward]], dev: DevSet, max_length: int, config, source_tokenizer, target_tokenizer
) -> dict:
    keep = [i for i, text in enumerate(dev.items[:MAX_DEV_SOURCES]) if source_tokenizer.encode(text)]
    sources = [source_tokenizer.encode(dev.items[i])[:max_length] for i in keep]
    refs = [target_tokenizer.encode(dev.labels[i]) for i in keep] if dev.labels is not None else None
    buckets = list(length_buckets([len(s) for s in sources], DEV_BATCH))
    result = {"source": dev.source, "sentences": len(sources), "examples": 0, "unit": "tokens", "decoding": "greedy"}
    decoded = {}
    for variant, graphs in forwards.items():
        steps = _steps(graphs, config)
        out = [None] * len(sources)
        for rows in buckets:
            batch = [sources[r] for r in rows]
            for r, c in zip(rows, greedy(steps, batch, [output_limit(len(s)) for s in batch])):
                out[r] = c
        decoded[variant] = out
        result["examples"] = sum(len(c.ids) + c.finished for c in decoded["fp32"])
        if refs is not None:
            n = max(1, len(sources))
            result[f"{variant}_exact_match"] = round(sum(c.ids == r for c, r in zip(out, refs)) / n, 6)
            errors = sum(edit_distance(c.ids, r) for c, r in zip(out, refs))
            result[f"{variant}_token_error_rate"] = round(errors / max(1, sum(len(r) for r in refs)), 6)
            nll, count = 0.0, 0
            for rows in buckets:
                forced = teacher_forced(steps, [sources[r] for r in rows], [refs[r] for r in rows])
                for r, lp in zip(rows, forced):
                    gold = refs[r] + [config.eos_id]
                    nll -= float(lp[np.arange(len(gold)), gold].astype(np.float64).sum())
                    count += len(gold)
            result[f"{variant}_loss"] = round(nll / max(1, count), 5)
    if "int8" in decoded:
        steps = _steps(forwards["int8"], config)
        agree = total = 0
        for rows in buckets:
            fp32 = [decoded["fp32"][r] for r in rows]
            forced = teacher_forced(steps, [sources[r] for r in rows], [c.ids for c in fp32])
            for c, lp in zip(fp32, forced):
                gold = c.ids + ([config.eos_id] if c.finished else [])
                lp = lp[: len(gold)].copy()
                lp[:, steps.never] = -np.inf  # as the decode loop: never <pad>, <s>
                agree += int((lp.argmax(-1) == np.asarray(gold, np.int64)).sum())
                total += len(gold)
        result["int8_agreement"] = round(agree / total, 6) if total else 1.0
        same = sum(a.ids == b.ids for a, b in zip(decoded["int8"], decoded["fp32"]))
        result["int8_output_agreement"] = round(same / max(1, len(sources)), 6)
        if refs is not None:
            result["int8_exact_match_drop_pt"] = round(
                100 * (result["fp32_exact_match"] - result["int8_exact_match"]), 3
            )
    return result
