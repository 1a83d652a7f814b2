"""The language-model task on the export pipeline: step-graph writer, checker, ``Exportable``, oracle, dev metrics.

Written from numpy weights keyed like ``RecurrentLM.state_dict()``, native ops only, nothing the numba
backend lacks.  The graph is the
state contract of ``LanguageModelIO``: one call runs one step or a whole chunk (prefill) from a
given state and returns the state after each row's last real token, so a caller never re-runs a
prefix.  Graph (L = layers, H = hidden, V = vocabulary)::

    input_ids (B, T) -Gather-> (B, T, E) -Transpose-> (T, B, E)
    initial_h (L, B, H) -Slice [l, l+1)-> (1, B, H) per layer   [initial_c likewise, LSTM]
      -> per layer one RNN/LSTM/GRU node reading sequence_lens and its initial state:
         Y (T, 1, B, H), Y_h (1, B, H) [, Y_c]
      -> Concat of the layers' Y_h over axis 0 -> final_h (L, B, H)   [final_c]
    last Y -> (B, T, H) -MatMul+Add-> (B, T, V) -Where(t < sequence_lens, ., 0)-> logits

With one layer the state input feeds the node directly and its ``Y_h`` is named ``final_h``.

The oracle is ``RecurrentLM.forward(ids, lengths, state)`` on the parity feeds (random non-zero
initial states included), returning ``(logits, final_h[, final_c])`` like the graph.  Dev metrics
run the exported graph the way the runtime does, carrying ``final_* -> initial_*`` from one
window to the next over ``DEV_STREAMS`` contiguous streams of the dev text, and report the mean
next-token loss in nats (per character at char level) for fp32 and int8, their difference, and
int8's top-1 agreement with fp32.  The int8 gate is the loss: an export fails when int8's dev
loss exceeds fp32's by more than ``max_loss_delta`` nats/token (default 0.02).
Top-1 agreement is reported, not gated: next-character distributions are often nearly flat
between two candidates, so a 98.8% agreement (measured, tiny-shakespeare char LM) comes with an
unchanged dev loss.

A language model's ``max_length`` is the chunk its runtime feeds the step graph at once
(``State.run`` carries the state across chunks, exactly), so the bundle records at most
``MAX_CHUNK`` and is validated at that length: validating a chunk of 10,000 tokens would hold
(batch, 10,000, vocabulary) logits several times over -- 800 MB each for a 10k-word vocabulary at
batch 2 -- and the runtime would allocate as much for one call.  ``MAX_CHUNK`` is the dev
metrics' window.

Imports onnx and numpy (torch only inside the oracle).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from ..runtime.errors import UnsupportedError
from ..runtime.manifest import LanguageModelIO as IO
from .architecture import LMConfig
from .check import contract_problems, raise_problems
from .graph_builder import (
    BATCH,
    TIME,
    GraphBuilder,
    Signature,
    batch_major,
    embed,
    graph_metadata,
    linear,
    make_model,
    merge_metadata,
    require,
    time_mask,
    write_state_stack,
)
from .oracle import one_torch_thread
from .pipeline import DevSet, Exportable, numpy_weights, single_graph
from .validate import Arguments, Forward, outputs

TASK = "lm"
DEV_STREAMS, DEV_WINDOW = 16, 256
MAX_CHUNK = DEV_WINDOW  # a language model's max_length: tokens per step-graph call (see the module docstring)
INT8_PARITY_LENGTHS = (1, 7, 33)  # see rnnkit.export.validate: longer int8 runs are gated by the dev loss
MAX_DEV_TOKENS = 200_000  # bounds export time; tiny-shakespeare's dev split is 111,540 chars


def signature(config: LMConfig) -> tuple[Signature, Signature]:
    """The step graph's inputs and outputs (``LanguageModelIO``), as written and as checked."""
    state = (TensorProto.FLOAT, (config.layers, BATCH, config.hidden))
    return (
        {
            IO.input_ids: (TensorProto.INT64, (BATCH, TIME)),
            IO.sequence_lens: (TensorProto.INT32, (BATCH,)),
            **{n: state for n in IO.state_inputs(config.cell)},
        },
        {
            IO.logits: (TensorProto.FLOAT, (BATCH, TIME, config.vocab_size)),
            **{n: state for n in IO.state_outputs(config.cell)},
        },
    )


def state_contract(config: LMConfig) -> list[dict]:
    """The manifest's ``state`` section: what a caller must carry from one call to the next."""
    return [
        {
            "input": i,
            "output": o,
            "dtype": "float32",
            "shape": [config.layers, BATCH, config.hidden],
            "initial": "zeros",
        }
        for i, o in zip(IO.state_inputs(config.cell), IO.state_outputs(config.cell))
    ]


def build_lm_graph(
    config: LMConfig, weights: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """Numpy weights (``RecurrentLM.state_dict()`` keys) -> ONNX step-function graph."""
    if config.bidirectional:
        raise UnsupportedError("a language model graph is unidirectional; bidirectional=True cannot be streamed")
    meta = merge_metadata(graph_metadata(TASK, config), metadata)
    require(weights, ["embedding.weight", "head.weight", "head.bias"], "RecurrentLM.state_dict()")
    g = GraphBuilder()
    x = embed(g, weights, "embedding", IO.input_ids, time_major="time_major")  # (T, B, E)
    y = write_state_stack(g, config, weights, x, IO.sequence_lens)
    z = linear(g, batch_major(g, config, y), weights, "head", "head")  # (B, T, V)
    mask, _ = time_mask(g, IO.input_ids, IO.sequence_lens)  # (B, T, 1)
    g.op("Where", [mask, z, g.const("zero_f32", 0.0)], "logits_masked", outputs=[IO.logits])  # Where: NaN cannot leak
    return make_model(g, f"rnnkit_{config.cell}_lm", *signature(config), meta)


def check_lm_graph(model: onnx.ModelProto, config: LMConfig) -> None:
    """Raise one ``UnsupportedError`` listing every way ``model`` breaks the LM contract (fp32 and int8)."""
    raise_problems(
        contract_problems(
            model,
            config,
            *signature(config),
            "LanguageModelIO",
            "vocab_size/layers/hidden",
            1,
            "head",
            task=TASK,
            initial_state="the state would restart at zeros",
        ),
        f"{config.cell} language model",
    )


def lm_exportable(
    config, weights: dict[str, np.ndarray], tokenizer, module, max_loss_delta: float = 0.02
) -> Exportable:
    def dev_metrics(forwards: dict[str, dict[str, Forward]], dev: DevSet, max_length: int) -> dict:
        return lm_dev_metrics(
            {variant: graphs["model"] for variant, graphs in forwards.items()}, tokenizer, dev, config
        )

    def int8_gate(metrics: dict, args: Arguments) -> str | None:
        delta = metrics.get("int8_loss_delta")
        if delta is not None and delta > max_loss_delta:
            return (
                f"int8 dev loss {metrics['int8_loss']:.4f} is {delta:.4f} nats/token above fp32's "
                f"{metrics['fp32_loss']:.4f} on {metrics['source']}, more than {args('max_loss_delta')} "
                f"{max_loss_delta}"
            )
        return None

    shapes = {name: (config.layers, config.hidden) for name in IO.state_inputs(config.cell)}
    entries = {"tokenizer": tokenizer.to_dict(), "labels": [], "state": state_contract(config)}
    graphs = single_graph(
        build_lm_graph,
        check_lm_graph,
        torch_lm_forward(module),
        config.vocab_size,
        state_shapes=shapes,
        int8_lengths=INT8_PARITY_LENGTHS,
    )
    return Exportable(
        TASK,
        config,
        weights,
        graphs,
        entries=entries,
        unit="tokens",
        dev_metrics=dev_metrics,
        int8_gate=int8_gate,
        max_length_cap=MAX_CHUNK,
    )


def torch_lm_forward(module) -> Forward:
    import torch

    module.eval()

    def forward(feed: dict):
        ids = torch.from_numpy(feed[IO.input_ids])
        lens = torch.from_numpy(feed[IO.sequence_lens].astype(np.int64))
        state = tuple(torch.from_numpy(feed[n]) for n in IO.state_inputs(module.config.cell))
        with torch.no_grad(), one_torch_thread():
            logits, final = module(ids, lens, state)
        return (logits.numpy().astype(np.float32), *(s.numpy().astype(np.float32) for s in final))

    return forward


def lm_dev_metrics(forwards: dict[str, Forward], tokenizer, dev: DevSet, config) -> dict:
    text = "".join(dev.items)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)[:MAX_DEV_TOKENS]
    rows = min(DEV_STREAMS, max(1, len(ids) // 2))
    n = len(ids) // rows
    data = ids[: rows * n].reshape(rows, n)
    result = {"source": dev.source, "examples": int(rows * (n - 1)), "unit": "tokens", "level": tokenizer.level}
    argmax = {}
    for name, forward in forwards.items():
        state = {s: np.zeros((config.layers, rows, config.hidden), np.float32) for s in IO.state_inputs(config.cell)}
        nll, picks = 0.0, []
        for start in range(0, n - 1, DEV_WINDOW):
            x = data[:, start : min(start + DEV_WINDOW, n - 1)]
            y = data[:, start + 1 : start + 1 + x.shape[1]]
            feed = {
                IO.input_ids: np.ascontiguousarray(x),
                IO.sequence_lens: np.full(rows, x.shape[1], np.int32),
                **state,
            }
            out = outputs(forward(feed))
            z = out[0].astype(np.float64)  # (B, t, V)
            z -= z.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            nll -= np.take_along_axis(logp, y[..., None], -1).sum()
            picks.append(out[0].argmax(-1))
            state = {IO.STATE_PAIRS[o]: v for o, v in zip(IO.state_outputs(config.cell), out[1:])}
        loss = nll / max(1, rows * (n - 1))
        result[f"{name}_loss"] = round(float(loss), 5)
        result[f"{name}_perplexity"] = round(math.exp(min(loss, 700)), 4)
        argmax[name] = np.concatenate(picks, axis=1)
    if "int8" in argmax:
        result["int8_loss_delta"] = round(result["int8_loss"] - result["fp32_loss"], 5)
        result["int8_agreement"] = round(float((argmax["int8"] == argmax["fp32"]).mean()), 6)
    return result


def from_module(module, tokenizer, max_loss_delta: float = 0.02) -> Exportable:
    """A ``RecurrentLM`` (its own forward is the oracle) with its tokenizer; ``max_loss_delta``: the int8 gate."""
    return lm_exportable(module.config, numpy_weights(module), tokenizer, module, max_loss_delta)
