"""The encoder-decoder task on the export pipeline: two graph writers (encoder, decoder step) per
``Seq2SeqIO``, their checkers, the ``Exportable``.  Its oracles, parity cases and dev metrics are
``rnnkit.export.validate_seq2seq``'s.

Same approach as ``rnnkit.export.task_lm`` (written from numpy weights keyed like
``Seq2Seq.state_dict()``, native RNN/LSTM/GRU ops, only ops the numba backend runs).
Shapes: S = source time, T = target time, L = layers, H = hidden, He = H / directions, V = target vocabulary::

    encoder.onnx
    source_ids (B, S) -Gather-> (B, S, E) -Transpose-> (S, B, E)
      -> per layer one RNN/LSTM/GRU node reading source_lens (bidirectional: both directions)
         Y (S, D, B, He), Y_h (D, B, He) [, Y_c]
      -> bridge per layer: Y_h (D, B, He) -Transpose, Reshape-> (1, B, D*He) (torch's
         cat(forward, backward)), Concat over layers -> initial_h (L, B, H)   [initial_c likewise]
      last Y -> (B, S, H) -Where(s < source_lens, ., 0)-> memory;  memory -MatMul W_k^T-> keys

    decoder.onnx (one step, T = 1, or a teacher-forced chunk)
    input_ids (B, T) -Gather-> (T, B, E) -> per layer a node starting from its slice of
      initial_h [initial_c], no sequence_lens (every row runs all T steps) -> final_h [final_c]
    y (B, T, H) -> scores (B, T, S): dot   y @ keys^T
                                     additive  v . tanh(y W_q^T + b_q + keys)  (via (B, T, S, H))
      -Where(s < source_lens, ., -inf)-> Softmax -> attention (B, T, S), exactly 0 on padding
      context = attention @ memory;  h~ = tanh([context; y] W_c^T + b_c)
    h~ (or y without attention) -MatMul+Add-> (B, T, V) -LogSoftmax-> log_probs

Why the encoder computes ``keys``: both score functions project the source with a matrix that
does not depend on the step (Luong's ``W_a m``, Bahdanau's ``W_k m``), so projecting once per
source and reusing it every step turns an (S x H x H) product per step into an (S x H) one.

Imports onnx and numpy (torch only inside the oracles).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from ..runtime.errors import InputError
from ..runtime.manifest import LanguageModelIO
from ..runtime.manifest import Seq2SeqIO as IO
from .architecture import Seq2SeqConfig
from .check import contract_problems, raise_problems
from .graph_builder import (
    BATCH,
    TIME,
    GraphBuilder,
    Signature,
    Stack,
    batch_major,
    embed,
    graph_metadata,
    layer_input,
    length_mask,
    linear,
    make_model,
    merge_metadata,
    node_name,
    require,
    transposed,
    write_recurrent_layer,
    write_state_stack,
)
from .pipeline import DevSet, Exportable, GraphSpec, numpy_weights
from .validate import Forward
from .validate_seq2seq import (
    SOURCE_TIME,
    check_seq2seq_parity,
    seq2seq_dev_metrics,
    torch_decoder_forward,
    torch_encoder_forward,
)

TASK = "seq2seq"
# MatMul-like nodes outside the recurrent ops: encoder keys; decoder head + scores/context/combine (+ query, v)
ENCODER_MATMULS = {"none": 0, "dot": 1, "additive": 1}
DECODER_MATMULS = {"none": 1, "dot": 4, "additive": 5}


def encoder_stack(config: Seq2SeqConfig) -> Stack:
    return Stack(config.cell, config.encoder_hidden, config.layers, config.bidirectional)


def decoder_stack(config: Seq2SeqConfig) -> Stack:
    return Stack(config.cell, config.hidden, config.layers, False)


def state_contract(config: Seq2SeqConfig) -> list[dict]:
    """The manifest's ``state`` section: the decoder's recurrent state, carried from call to call,
    starting from the encoder's output of the same name (the bridge)."""
    return [
        {
            "input": i,
            "output": o,
            "dtype": "float32",
            "shape": [config.layers, BATCH, config.hidden],
            "initial": "encoder",
        }
        for i, o in zip(LanguageModelIO.state_inputs(config.cell), LanguageModelIO.state_outputs(config.cell))
    ]


def context_contract(config: Seq2SeqConfig) -> list[dict]:
    """The manifest's ``context`` section: decoder inputs fixed for a whole decode (per source row),
    and where they come from; empty without attention."""
    if config.attention == "none":
        return []
    source = [config.hidden]
    return [
        {"input": IO.memory, "from": "encoder output", "dtype": "float32", "shape": [BATCH, SOURCE_TIME, *source]},
        {"input": IO.keys, "from": "encoder output", "dtype": "float32", "shape": [BATCH, SOURCE_TIME, *source]},
        {"input": IO.source_lens, "from": "encoder input", "dtype": "int32", "shape": [BATCH]},
    ]


def attention_keys(config: Seq2SeqConfig) -> list[str]:
    if config.attention == "none":
        return []
    keys = ["attention.key.weight", "attention.combine.weight", "attention.combine.bias"]
    if config.attention == "additive":
        keys += ["attention.query.weight", "attention.query.bias", "attention.v.weight"]
    return keys


def _io(config: Seq2SeqConfig, names: tuple[str, ...]) -> dict:
    """Graph IO names -> (dtype, axes) as the contract declares them."""
    h, state = config.hidden, (TensorProto.FLOAT, (config.layers, BATCH, config.hidden))
    known = {
        IO.source_ids: (TensorProto.INT64, (BATCH, SOURCE_TIME)),
        IO.source_lens: (TensorProto.INT32, (BATCH,)),
        IO.memory: (TensorProto.FLOAT, (BATCH, SOURCE_TIME, h)),
        IO.keys: (TensorProto.FLOAT, (BATCH, SOURCE_TIME, h)),
        IO.input_ids: (TensorProto.INT64, (BATCH, TIME)),
        IO.log_probs: (TensorProto.FLOAT, (BATCH, TIME, config.target_vocab_size)),
        IO.attention: (TensorProto.FLOAT, (BATCH, TIME, SOURCE_TIME)),
    }
    return {n: known.get(n, state) for n in names}


def encoder_signature(config: Seq2SeqConfig) -> tuple[Signature, Signature]:
    """The encoder graph's inputs and outputs (``Seq2SeqIO``), as written and as checked."""
    return _io(config, IO.encoder_inputs()), _io(config, IO.encoder_outputs(config.cell, config.attention))


def decoder_signature(config: Seq2SeqConfig) -> tuple[Signature, Signature]:
    """The decoder step graph's inputs and outputs (``Seq2SeqIO``), as written and as checked."""
    return (
        _io(config, IO.decoder_inputs(config.cell, config.attention)),
        _io(config, IO.decoder_outputs(config.cell, config.attention)),
    )


# -- encoder ---------------------------------------------------------------------------------------


def _bridge(g: GraphBuilder, stack: Stack, y_h: str, layer: int, kind: str, out: str | None) -> str:
    """Y_h / Y_c (D, B, He) of one encoder layer -> (1, B, D*He): the directions side by side."""
    if stack.directions == 1:
        return y_h  # already (1, B, H); named by the node itself
    t = g.op("Transpose", [y_h], f"bridge_{kind}_{layer}_transpose", perm=[1, 0, 2])  # (B, D, He)
    shape = g.ints(f"bridge_{kind}_{layer}_shape", [1, -1, stack.directions * stack.hidden])
    return g.op("Reshape", [t, shape], f"bridge_{kind}_{layer}", outputs=[out] if out else None)


def build_encoder_graph(
    config: Seq2SeqConfig, weights: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """Numpy weights (``Seq2Seq.state_dict()`` keys) -> the encoder graph."""
    meta = merge_metadata(graph_metadata(TASK, config, "encoder"), metadata)
    require(weights, ["source_embedding.weight"] + attention_keys(config)[:1], "Seq2Seq.state_dict()")
    stack, layers = encoder_stack(config), config.layers
    state_names = LanguageModelIO.state_inputs(config.cell)  # initial_h[, initial_c]
    g = GraphBuilder()
    x = embed(g, weights, "source_embedding", IO.source_ids, time_major="source_time_major")  # (S, B, E)
    finals: dict[str, list[str]] = {n: [] for n in state_names}
    y = ""
    for layer in range(layers):
        name = node_name(stack, layer, "encoder")
        single = layers == 1 and stack.directions == 1  # the node's own Y_h is the graph output
        outs = [f"{name}.Y"] + [n if single else f"{name}.{k}" for n, k in zip(state_names, ("Y_h", "Y_c"))]
        res = write_recurrent_layer(g, stack, weights, layer, x, IO.source_lens, outputs=tuple(outs), prefix="encoder")
        y = res[0]
        for n, kind, value in zip(state_names, ("h", "c"), res[1:]):
            finals[n].append(_bridge(g, stack, value, layer, kind, n if layers == 1 else None))
        if layer + 1 < layers:
            x = layer_input(g, stack, layer, y, prefix="encoder")
    if layers > 1:
        for n in state_names:
            g.op("Concat", finals[n], f"{n}_concat", outputs=[n], axis=0)  # (L, B, H)

    if config.attention != "none":
        memory = batch_major(g, stack, y, name="memory_unmasked")  # (B, S, H)
        mask, _ = length_mask(g, IO.source_ids, IO.source_lens)  # (B, S)
        mask = g.op("Unsqueeze", [mask, g.ints("axes_mask", [2])], "source_mask")  # (B, S, 1)
        # Where, not Mul: the contract says exactly 0 past each length, whatever a backend leaves there
        g.op("Where", [mask, memory, g.const("zero_f32", 0.0)], "memory", outputs=[IO.memory])
        g.op(
            "MatMul",
            [IO.memory, g.const("attention.key.W_t", transposed(weights, "attention.key.weight"))],
            "keys",
            outputs=[IO.keys],
        )  # (B, S, H)
    return make_model(g, f"rnnkit_{config.cell}_seq2seq_encoder", *encoder_signature(config), meta)


# -- decoder ---------------------------------------------------------------------------------------


def _attention(g: GraphBuilder, config: Seq2SeqConfig, weights, y: str) -> str:
    """y (B, T, H) -> h~ (B, T, H); writes the ``attention`` output (B, T, S)."""
    if config.attention == "dot":  # Luong "general": y . (W_a m)
        keys_t = g.op("Transpose", [IO.keys], "keys_transpose", perm=[0, 2, 1])  # (B, H, S)
        scores = g.op("MatMul", [y, keys_t], "attention_scores")  # (B, T, S)
    else:  # Bahdanau: v . tanh(W_q y + b_q + W_k m)
        q = linear(g, y, weights, "attention.query", "attention_query")
        q = g.op("Unsqueeze", [q, g.ints("axes_q", [2])], "attention_query_4d")  # (B, T, 1, H)
        k = g.op("Unsqueeze", [IO.keys, g.ints("axes_k", [1])], "attention_keys_4d")  # (B, 1, S, H)
        e = g.op("Tanh", [g.op("Add", [q, k], "attention_energy_sum")], "attention_energy")  # (B, T, S, H)
        s = g.op(
            "MatMul", [e, g.const("attention.v.W_t", transposed(weights, "attention.v.weight"))], "attention_scores_4d"
        )  # (B, T, S, 1)
        scores = g.op("Squeeze", [s, g.ints("axes_v", [3])], "attention_scores")  # (B, T, S)
    mask, _ = length_mask(g, IO.memory, IO.source_lens)  # (B, S)
    mask = g.op("Unsqueeze", [mask, g.ints("axes_mask", [1])], "source_mask")  # (B, 1, S)
    scores = g.op("Where", [mask, scores, g.const("neg_inf", -np.inf)], "attention_masked")  # source_lens >= 1
    g.op("Softmax", [scores], "attention_softmax", outputs=[IO.attention], axis=-1)  # exp(-inf) = 0
    context = g.op("MatMul", [IO.attention, IO.memory], "attention_context")  # (B, T, H)
    both = g.op("Concat", [context, y], "attention_concat", axis=-1)  # (B, T, 2H)
    h = linear(g, both, weights, "attention.combine", "attention_combine")
    return g.op("Tanh", [h], "attention_output")  # h~ (B, T, H)


def build_decoder_graph(
    config: Seq2SeqConfig, weights: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """Numpy weights (``Seq2Seq.state_dict()`` keys) -> the decoder step graph."""
    meta = merge_metadata(graph_metadata(TASK, config, "decoder"), metadata)
    require(
        weights,
        ["target_embedding.weight", "head.weight", "head.bias"] + attention_keys(config),
        "Seq2Seq.state_dict()",
    )
    stack = decoder_stack(config)
    g = GraphBuilder()
    x = embed(g, weights, "target_embedding", IO.input_ids, time_major="target_time_major")  # (T, B, E)
    y = write_state_stack(g, stack, weights, x, "", prefix="decoder")  # no sequence_lens: every row runs all T
    h = batch_major(g, stack, y)  # (B, T, H)
    if config.attention != "none":
        h = _attention(g, config, weights, h)
    z = linear(g, h, weights, "head", "head")  # (B, T, V)
    g.op("LogSoftmax", [z], "log_softmax", outputs=[IO.log_probs], axis=-1)
    return make_model(g, f"rnnkit_{config.cell}_seq2seq_decoder", *decoder_signature(config), meta)


# -- checks ----------------------------------------------------------------------------------------


def check_encoder_graph(model: onnx.ModelProto, config: Seq2SeqConfig) -> None:
    """Raise one ``UnsupportedError`` listing every way ``model`` breaks the encoder contract (fp32 and int8)."""
    problems = contract_problems(
        model,
        encoder_stack(config),
        *encoder_signature(config),
        "Seq2SeqIO encoder",
        "hidden/layers",
        ENCODER_MATMULS[config.attention],
        "attention keys",
        sequence_lens=IO.source_lens,
        task=TASK,
    )
    raise_problems(problems, f"{config.cell} seq2seq encoder")


def check_decoder_graph(model: onnx.ModelProto, config: Seq2SeqConfig) -> None:
    """Raise one ``UnsupportedError`` listing every way ``model`` breaks the decoder contract (fp32 and int8)."""
    parts = "head" + (
        ""
        if config.attention == "none"
        else " + attention scores/context/combine" + (" + query/v" if config.attention == "additive" else "")
    )
    problems = contract_problems(
        model,
        decoder_stack(config),
        *decoder_signature(config),
        "Seq2SeqIO decoder",
        "target_vocab_size/layers/hidden",
        DECODER_MATMULS[config.attention],
        parts,
        sequence_lens=None,
        task=TASK,
        initial_state="the decoder would ignore the encoder's state",
    )
    if not any(n.op_type == "LogSoftmax" and IO.log_probs in n.output for n in model.graph.node):
        problems.append(
            f"'{IO.log_probs}' is not produced by a LogSoftmax node; the runtime adds log-probabilities as they come"
        )
    raise_problems(problems, f"{config.cell} seq2seq decoder")


# -- the task ------------------------------------------------------------------------------------


def seq2seq_exportable(
    config, weights: dict[str, np.ndarray], source_tokenizer, target_tokenizer, module
) -> Exportable:
    for side, tokenizer, size in (
        ("source", source_tokenizer, config.source_vocab_size),
        ("target", target_tokenizer, config.target_vocab_size),
    ):
        if tokenizer.vocab_size != size:
            raise InputError(
                f"the {side} tokenizer has {tokenizer.vocab_size} entries but the model's {side} "
                f"vocabulary has {size} rows; pass the tokenizers the model was trained with"
            )

    def parity(graph: str):
        # int8 encoders are compared through the torch decoder, on probabilities (see check_seq2seq_parity)
        def run(oracle_name, oracle, candidates, tol, int8, max_length=None, args=None):
            readout = torch_decoder_forward(module) if int8 and graph == "encoder" else None
            return check_seq2seq_parity(
                graph,
                config,
                oracle_name,
                oracle,
                candidates,
                tol,
                int8,
                readout=readout,
                max_length=None if int8 else max_length,
            )

        return run

    graphs = [
        GraphSpec(
            "encoder",
            IO.encoder_file,
            IO.encoder_int8_file,
            build_encoder_graph,
            check_encoder_graph,
            torch_encoder_forward(module),
            parity("encoder"),
        ),
        GraphSpec(
            "decoder",
            IO.decoder_file,
            IO.decoder_int8_file,
            build_decoder_graph,
            check_decoder_graph,
            torch_decoder_forward(module),
            parity("decoder"),
        ),
    ]

    def dev_metrics(forwards: dict[str, dict[str, Forward]], dev: DevSet, max_length: int) -> dict:
        return seq2seq_dev_metrics(forwards, dev, max_length, config, source_tokenizer, target_tokenizer)

    entries = {
        "source_tokenizer": source_tokenizer.to_dict(),
        "target_tokenizer": target_tokenizer.to_dict(),
        "state": state_contract(config),
        "context": context_contract(config),
    }
    return Exportable(TASK, config, weights, graphs, entries=entries, unit="tokens", dev_metrics=dev_metrics)


def from_module(module, source_tokenizer, target_tokenizer) -> Exportable:
    """A ``Seq2Seq`` (its own ``encode`` / ``decode`` are the oracles) with the tokenizers it was trained with."""
    return seq2seq_exportable(module.config, numpy_weights(module), source_tokenizer, target_tokenizer, module)
