"""Write a ``Seq2Seq`` as two ONNX graphs (encoder, decoder step) per ``Seq2SeqIO``, and check them.

Same approach as ``rnnkit.export.graph_lm`` (written from numpy weights keyed like
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

Imports onnx and numpy only (no torch, no onnxruntime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from rnnkit.export.check import contract_problems, raise_problems
from rnnkit.export.recurrent import (BATCH, TIME, GraphBuilder, Stack, batch_major, layer_input, length_mask,
                                     make_model, merge_metadata, node_name, write_recurrent_layer)
from rnnkit.runtime.errors import UnsupportedError
from rnnkit.runtime.manifest import FORMAT_VERSION, LanguageModelIO, Seq2SeqIO as IO

if TYPE_CHECKING:
    from rnnkit.toolkit.configs import Seq2SeqConfig

SOURCE_TIME = "source_time"  # dim_param of the source axis (memory, keys, attention)
# MatMul-like nodes outside the recurrent ops: encoder keys; decoder head + scores/context/combine (+ query, v)
ENCODER_MATMULS = {"none": 0, "dot": 1, "additive": 1}
DECODER_MATMULS = {"none": 1, "dot": 4, "additive": 5}


def encoder_stack(config: Seq2SeqConfig) -> Stack:
    return Stack(config.cell, config.encoder_hidden, config.layers, config.bidirectional)


def decoder_stack(config: Seq2SeqConfig) -> Stack:
    return Stack(config.cell, config.hidden, config.layers, False)


def default_metadata(config: Seq2SeqConfig, part: str) -> dict[str, str]:
    bi = "bi" if config.bidirectional else ""
    return {"rnnkit.task": "seq2seq", "rnnkit.format_version": str(FORMAT_VERSION),
            "rnnkit.architecture": f"{bi}{config.cell}-{config.layers}x{config.hidden}-{config.attention}-{part}"}


def state_contract(config: Seq2SeqConfig) -> list[dict]:
    """The manifest's ``state`` section: the decoder's recurrent state, carried from call to call,
    starting from the encoder's output of the same name (the bridge)."""
    return [{"input": i, "output": o, "dtype": "float32", "shape": [config.layers, BATCH, config.hidden],
             "initial": "encoder"}
            for i, o in zip(LanguageModelIO.state_inputs(config.cell), LanguageModelIO.state_outputs(config.cell))]


def context_contract(config: Seq2SeqConfig) -> list[dict]:
    """The manifest's ``context`` section: decoder inputs fixed for a whole decode (per source row),
    and where they come from; empty without attention."""
    if config.attention == "none":
        return []
    source = [config.hidden]
    return [{"input": IO.memory, "from": "encoder output", "dtype": "float32", "shape": [BATCH, SOURCE_TIME, *source]},
            {"input": IO.keys, "from": "encoder output", "dtype": "float32", "shape": [BATCH, SOURCE_TIME, *source]},
            {"input": IO.source_lens, "from": "encoder input", "dtype": "int32", "shape": [BATCH]}]


def _require(weights: dict, keys: list[str]) -> None:
    missing = [k for k in keys if k not in weights]
    if missing:
        raise UnsupportedError(f"weights: missing {missing} (keys must follow Seq2Seq.state_dict())")


def _t(weights: dict, key: str) -> np.ndarray:
    """torch Linear weight (out, in) -> MatMul's right operand (in, out)."""
    return np.ascontiguousarray(np.asarray(weights[key], dtype=np.float32).T)


def attention_keys(config: Seq2SeqConfig) -> list[str]:
    if config.attention == "none":
        return []
    keys = ["attention.key.weight", "attention.combine.weight", "attention.combine.bias"]
    if config.attention == "additive":
        keys += ["attention.query.weight", "attention.query.bias", "attention.v.weight"]
    return keys


# -- encoder ---------------------------------------------------------------------------------------

def _bridge(g: GraphBuilder, stack: Stack, y_h: str, layer: int, kind: str, out: str | None) -> str:
    """Y_h / Y_c (D, B, He) of one encoder layer -> (1, B, D*He): the directions side by side."""
    if stack.directions == 1:
        return y_h  # already (1, B, H); named by the node itself
    t = g.op("Transpose", [y_h], f"bridge_{kind}_{layer}_transpose", perm=[1, 0, 2])      # (B, D, He)
    shape = g.ints(f"bridge_{kind}_{layer}_shape", [1, -1, stack.directions * stack.hidden])
    return g.op("Reshape", [t, shape], f"bridge_{kind}_{layer}", outputs=[out] if out else None)


def build_encoder_graph(config: Seq2SeqConfig, weights: dict[str, np.ndarray],
                        metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Numpy weights (``Seq2Seq.state_dict()`` keys) -> the encoder graph."""
    meta = merge_metadata(default_metadata(config, "encoder"), metadata)
    _require(weights, ["source_embedding.weight"] + attention_keys(config)[:1])
    stack, layers = encoder_stack(config), config.layers
    state_names = LanguageModelIO.state_inputs(config.cell)              # initial_h[, initial_c]
    g = GraphBuilder()
    x = g.op("Gather", [g.const("source_embedding.weight", weights["source_embedding.weight"]), IO.source_ids],
             "source_embedding", axis=0)                                                      # (B, S, E)
    x = g.op("Transpose", [x], "source_time_major", perm=[1, 0, 2])                           # (S, B, E)
    finals: dict[str, list[str]] = {n: [] for n in state_names}
    y = ""
    for layer in range(layers):
        name = node_name(stack, layer, "encoder")
        single = layers == 1 and stack.directions == 1  # the node's own Y_h is the graph output
        outs = [f"{name}.Y"] + [n if single else f"{name}.{k}" for n, k in zip(state_names, ("Y_h", "Y_c"))]
        res = write_recurrent_layer(g, stack, weights, layer, x, IO.source_lens, outputs=tuple(outs),
                                    prefix="encoder")
        y = res[0]
        for n, kind, value in zip(state_names, ("h", "c"), res[1:]):
            finals[n].append(_bridge(g, stack, value, layer, kind, n if layers == 1 else None))
        if layer + 1 < layers:
            x = layer_input(g, stack, layer, y, prefix="encoder")
    if layers > 1:
        for n in state_names:
            g.op("Concat", finals[n], f"{n}_concat", outputs=[n], axis=0)                     # (L, B, H)

    outputs = []
    if config.attention != "none":
        memory = batch_major(g, stack, y, name="memory_unmasked")                              # (B, S, H)
        mask, _ = length_mask(g, IO.source_ids, IO.source_lens)                                # (B, S)
        mask = g.op("Unsqueeze", [mask, g.ints("axes_mask", [2])], "source_mask")              # (B, S, 1)
        # Where, not Mul: the contract says exactly 0 past each length, whatever a backend leaves there
        g.op("Where", [mask, memory, g.const("zero_f32", 0.0)], "memory", outputs=[IO.memory])
        g.op("MatMul", [IO.memory, g.const("attention.key.W_t", _t(weights, "attention.key.weight"))],
             "keys", outputs=[IO.keys])                                                        # (B, S, H)
        outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [BATCH, SOURCE_TIME, config.hidden])
                    for n in (IO.memory, IO.keys)]
    state = [config.layers, BATCH, config.hidden]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state) for n in state_names]
    inputs = [helper.make_tensor_value_info(IO.source_ids, TensorProto.INT64, [BATCH, SOURCE_TIME]),
              helper.make_tensor_value_info(IO.source_lens, TensorProto.INT32, [BATCH])]
    return make_model(g, f"rnnkit_{config.cell}_seq2seq_encoder", inputs, outputs, meta)


# -- decoder ---------------------------------------------------------------------------------------

def _attention(g: GraphBuilder, config: Seq2SeqConfig, weights, y: str) -> str:
    """y (B, T, H) -> h~ (B, T, H); writes the ``attention`` output (B, T, S)."""
    if config.attention == "dot":                                       # Luong "general": y . (W_a m)
        keys_t = g.op("Transpose", [IO.keys], "keys_transpose", perm=[0, 2, 1])               # (B, H, S)
        scores = g.op("MatMul", [y, keys_t], "attention_scores")                              # (B, T, S)
    else:                                                               # Bahdanau: v . tanh(W_q y + b_q + W_k m)
        q = g.op("MatMul", [y, g.const("attention.query.W_t", _t(weights, "attention.query.weight"))],
                 "attention_query_matmul")
        q = g.op("Add", [q, g.const("attention.query.bias", weights["attention.query.bias"])], "attention_query")
        q = g.op("Unsqueeze", [q, g.ints("axes_q", [2])], "attention_query_4d")              # (B, T, 1, H)
        k = g.op("Unsqueeze", [IO.keys, g.ints("axes_k", [1])], "attention_keys_4d")         # (B, 1, S, H)
        e = g.op("Tanh", [g.op("Add", [q, k], "attention_energy_sum")], "attention_energy")  # (B, T, S, H)
        s = g.op("MatMul", [e, g.const("attention.v.W_t", _t(weights, "attention.v.weight"))],
                 "attention_scores_4d")                                                        # (B, T, S, 1)
        scores = g.op("Squeeze", [s, g.ints("axes_v", [3])], "attention_scores")             # (B, T, S)
    mask, _ = length_mask(g, IO.memory, IO.source_lens)                                       # (B, S)
    mask = g.op("Unsqueeze", [mask, g.ints("axes_mask", [1])], "source_mask")                 # (B, 1, S)
    scores = g.op("Where", [mask, scores, g.const("neg_inf", -np.inf)], "attention_masked")  # source_lens >= 1
    g.op("Softmax", [scores], "attention_softmax", outputs=[IO.attention], axis=-1)           # exp(-inf) = 0
    context = g.op("MatMul", [IO.attention, IO.memory], "attention_context")                  # (B, T, H)
    both = g.op("Concat", [context, y], "attention_concat", axis=-1)                          # (B, T, 2H)
    h = g.op("MatMul", [both, g.const("attention.combine.W_t", _t(weights, "attention.combine.weight"))],
             "attention_combine_matmul")
    h = g.op("Add", [h, g.const("attention.combine.bias", weights["attention.combine.bias"])], "attention_combine")
    return g.op("Tanh", [h], "attention_output")                                              # h~ (B, T, H)


def build_decoder_graph(config: Seq2SeqConfig, weights: dict[str, np.ndarray],
                        metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Numpy weights (``Seq2Seq.state_dict()`` keys) -> the decoder step graph."""
    meta = merge_metadata(default_metadata(config, "decoder"), metadata)
    _require(weights, ["target_embedding.weight", "head.weight", "head.bias"] + attention_keys(config))
    stack, layers, lstm = decoder_stack(config), config.layers, config.cell == "lstm"
    g = GraphBuilder()
    x = g.op("Gather", [g.const("target_embedding.weight", weights["target_embedding.weight"]), IO.input_ids],
             "target_embedding", axis=0)                                                      # (B, T, E)
    x = g.op("Transpose", [x], "target_time_major", perm=[1, 0, 2])                           # (T, B, E)
    axis0 = g.ints("axes_layers", [0]) if layers > 1 else ""

    def layer_state(name: str, layer: int) -> str:                                            # (L, B, H) -> (1, B, H)
        if layers == 1:
            return name
        return g.op("Slice", [name, g.ints(f"{name}_start_{layer}", [layer]),
                              g.ints(f"{name}_end_{layer}", [layer + 1]), axis0], f"{name}_{layer}")

    finals_h, finals_c, y = [], [], ""
    for layer in range(layers):
        name = node_name(stack, layer, "decoder")
        outs = [f"{name}.Y", IO.final_h if layers == 1 else f"{name}.Y_h"]
        if lstm:
            outs.append(IO.final_c if layers == 1 else f"{name}.Y_c")
        res = write_recurrent_layer(g, stack, weights, layer, x, "", layer_state(IO.initial_h, layer),
                                    layer_state(IO.initial_c, layer) if lstm else "", outputs=tuple(outs),
                                    prefix="decoder")
        y = res[0]
        finals_h.append(res[1])
        if lstm:
            finals_c.append(res[2])
        if layer + 1 < layers:
            x = layer_input(g, stack, layer, y, prefix="decoder")
    if layers > 1:
        g.op("Concat", finals_h, "final_h_concat", outputs=[IO.final_h], axis=0)
        if lstm:
            g.op("Concat", finals_c, "final_c_concat", outputs=[IO.final_c], axis=0)
    h = batch_major(g, stack, y)                                                               # (B, T, H)
    if config.attention != "none":
        h = _attention(g, config, weights, h)
    z = g.op("MatMul", [h, g.const("head.W_t", _t(weights, "head.weight"))], "head_matmul")
    z = g.op("Add", [z, g.const("head.bias", weights["head.bias"])], "head")                 # (B, T, V)
    g.op("LogSoftmax", [z], "log_softmax", outputs=[IO.log_probs], axis=-1)

    state = [config.layers, BATCH, config.hidden]
    inputs = [helper.make_tensor_value_info(IO.input_ids, TensorProto.INT64, [BATCH, TIME])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state) for n in IO.decoder_inputs(config.cell, "none")[1:]]
    outputs = [helper.make_tensor_value_info(IO.log_probs, TensorProto.FLOAT, [BATCH, TIME, config.target_vocab_size])]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state) for n in LanguageModelIO.state_outputs(config.cell)]
    if config.attention != "none":
        inputs += [helper.make_tensor_value_info(IO.memory, TensorProto.FLOAT, [BATCH, SOURCE_TIME, config.hidden]),
                   helper.make_tensor_value_info(IO.keys, TensorProto.FLOAT, [BATCH, SOURCE_TIME, config.hidden]),
                   helper.make_tensor_value_info(IO.source_lens, TensorProto.INT32, [BATCH])]
        outputs.append(helper.make_tensor_value_info(IO.attention, TensorProto.FLOAT, [BATCH, TIME, SOURCE_TIME]))
    return make_model(g, f"rnnkit_{config.cell}_seq2seq_decoder", inputs, outputs, meta)


# -- checks ----------------------------------------------------------------------------------------

def _io(config: Seq2SeqConfig, names: tuple[str, ...]) -> dict:
    """Graph IO names -> (dtype, axes) as the contract declares them."""
    h, state = config.hidden, (TensorProto.FLOAT, (config.layers, BATCH, config.hidden))
    known = {IO.source_ids: (TensorProto.INT64, (BATCH, SOURCE_TIME)), IO.source_lens: (TensorProto.INT32, (BATCH,)),
             IO.memory: (TensorProto.FLOAT, (BATCH, SOURCE_TIME, h)), IO.keys: (TensorProto.FLOAT, (BATCH, SOURCE_TIME, h)),
             IO.input_ids: (TensorProto.INT64, (BATCH, TIME)),
             IO.log_probs: (TensorProto.FLOAT, (BATCH, TIME, config.target_vocab_size)),
             IO.attention: (TensorProto.FLOAT, (BATCH, TIME, SOURCE_TIME))}
    return {n: known.get(n, state) for n in names}


def _task_problem(model: onnx.ModelProto) -> list[str]:
    props = {p.key: p.value for p in model.metadata_props}
    task = props.get("rnnkit.task")
    return [] if task == "seq2seq" else [f"metadata 'rnnkit.task' is {task!r}, expected 'seq2seq'"]


def check_encoder_graph(model: onnx.ModelProto, config: Seq2SeqConfig) -> None:
    """Raise one ``UnsupportedError`` listing every way ``model`` breaks the encoder contract (fp32 and int8)."""
    inputs = _io(config, IO.encoder_inputs())
    outputs = _io(config, IO.encoder_outputs(config.cell, config.attention))
    problems = contract_problems(model, encoder_stack(config), inputs, outputs, "Seq2SeqIO encoder",
                                 "hidden/layers", ENCODER_MATMULS[config.attention], "attention keys",
                                 sequence_lens=IO.source_lens)
    raise_problems(problems + _task_problem(model), f"{config.cell} seq2seq encoder")


def check_decoder_graph(model: onnx.ModelProto, config: Seq2SeqConfig) -> None:
    """Raise one ``UnsupportedError`` listing every way ``model`` breaks the decoder contract (fp32 and int8)."""
    inputs = _io(config, IO.decoder_inputs(config.cell, config.attention))
    outputs = _io(config, IO.decoder_outputs(config.cell, config.attention))
    parts = "head" + ("" if config.attention == "none" else
                      " + attention scores/context/combine" + (" + query/v" if config.attention == "additive" else ""))
    problems = contract_problems(model, decoder_stack(config), inputs, outputs, "Seq2SeqIO decoder",
                                 "target_vocab_size/layers/hidden", DECODER_MATMULS[config.attention], parts,
                                 sequence_lens=None)
    for n in model.graph.node:
        if n.op_type in ("RNN", "LSTM", "GRU", "DynamicQuantizeLSTM") and (len(n.input) < 6 or not n.input[5]):
            problems.append(f"{n.op_type} node '{n.name}' does not read an initial_h; the decoder would "
                            "ignore the encoder's state")
    if not any(n.op_type == "LogSoftmax" and IO.log_probs in n.output for n in model.graph.node):
        problems.append(f"'{IO.log_probs}' is not produced by a LogSoftmax node; the runtime adds log-probabilities "
                        "as they come")
    raise_problems(problems + _task_problem(model), f"{config.cell} seq2seq decoder")


__all__ = ["build_encoder_graph", "build_decoder_graph", "check_encoder_graph", "check_decoder_graph",
           "state_contract", "context_contract", "encoder_stack", "decoder_stack", "default_metadata", "SOURCE_TIME"]
