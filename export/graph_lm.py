"""Write a ``RecurrentLM`` as an ONNX step function with explicit recurrent state, and check it.

Same approach as ``rnnkit.export.graph`` (written from numpy weights keyed like
``RecurrentLM.state_dict()``, native ops only, nothing the numba backend lacks).  The graph is the
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

Imports onnx and numpy only (no torch, no onnxruntime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from rnnkit.export.check import contract_problems, raise_problems
from rnnkit.export.recurrent import (BATCH, TIME, GraphBuilder, batch_major, layer_input, make_model,
                                     merge_metadata, time_mask, write_recurrent_layer)
from rnnkit.runtime.errors import UnsupportedError
from rnnkit.runtime.manifest import FORMAT_VERSION, LanguageModelIO as IO

if TYPE_CHECKING:
    from rnnkit.toolkit.configs import LMConfig


def default_metadata(config: LMConfig) -> dict[str, str]:
    return {"rnnkit.task": "lm", "rnnkit.format_version": str(FORMAT_VERSION),
            "rnnkit.architecture": f"{config.cell}-{config.layers}x{config.hidden}-lm"}


def state_contract(config: LMConfig) -> list[dict]:
    """The manifest's ``state`` section: what a caller must carry from one call to the next."""
    return [{"input": i, "output": o, "dtype": "float32", "shape": [config.layers, BATCH, config.hidden],
             "initial": "zeros"}
            for i, o in zip(IO.state_inputs(config.cell), IO.state_outputs(config.cell))]


def build_lm_graph(config: LMConfig, weights: dict[str, np.ndarray],
                   metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Numpy weights (``RecurrentLM.state_dict()`` keys) -> ONNX step-function graph."""
    if config.bidirectional:
        raise UnsupportedError("a language model graph is unidirectional; bidirectional=True cannot be streamed")
    meta = merge_metadata(default_metadata(config), metadata)
    missing = [k for k in ("embedding.weight", "head.weight", "head.bias") if k not in weights]
    if missing:
        raise UnsupportedError(f"weights: missing {missing} (keys must follow RecurrentLM.state_dict())")
    g = GraphBuilder()
    lstm, layers = config.cell == "lstm", config.layers
    x = g.op("Gather", [g.const("embedding.weight", weights["embedding.weight"]), IO.input_ids], "embedding", axis=0)
    x = g.op("Transpose", [x], "time_major", perm=[1, 0, 2])                       # (T, B, E)
    axis0 = g.ints("axes_layers", [0])

    def layer_state(name: str, layer: int) -> str:                                 # (L, B, H) -> (1, B, H)
        if layers == 1:
            return name
        return g.op("Slice", [name, g.ints(f"{name}_start_{layer}", [layer]), g.ints(f"{name}_end_{layer}", [layer + 1]),
                              axis0], f"{name}_{layer}")

    finals_h, finals_c, y = [], [], ""
    for layer in range(layers):
        name = f"{config.cell}_{layer}"
        outs = [f"{name}.Y", IO.final_h if layers == 1 else f"{name}.Y_h"]
        if lstm:
            outs.append(IO.final_c if layers == 1 else f"{name}.Y_c")
        res = write_recurrent_layer(g, config, weights, layer, x, IO.sequence_lens, layer_state(IO.initial_h, layer),
                                    layer_state(IO.initial_c, layer) if lstm else "", outputs=tuple(outs))
        y = res[0]
        finals_h.append(res[1])
        if lstm:
            finals_c.append(res[2])
        if layer + 1 < layers:
            x = layer_input(g, config, layer, y)
    if layers > 1:
        g.op("Concat", finals_h, "final_h_concat", outputs=[IO.final_h], axis=0)
        if lstm:
            g.op("Concat", finals_c, "final_c_concat", outputs=[IO.final_c], axis=0)
    ybt = batch_major(g, config, y)                                                # (B, T, H)
    head_w = np.ascontiguousarray(np.asarray(weights["head.weight"], dtype=np.float32).T)  # (H, V)
    z = g.op("MatMul", [ybt, g.const("head.W_t", head_w)], "head_matmul")
    z = g.op("Add", [z, g.const("head.bias", weights["head.bias"])], "head")      # (B, T, V)
    mask, _ = time_mask(g, IO.input_ids, IO.sequence_lens)                        # (B, T, 1)
    g.op("Where", [mask, z, g.const("zero_f32", 0.0)], "logits_masked", outputs=[IO.logits])  # Where: NaN cannot leak

    state = [config.layers, BATCH, config.hidden]
    inputs = [helper.make_tensor_value_info(IO.input_ids, TensorProto.INT64, [BATCH, TIME]),
              helper.make_tensor_value_info(IO.sequence_lens, TensorProto.INT32, [BATCH])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state) for n in IO.state_inputs(config.cell)]
    outputs = [helper.make_tensor_value_info(IO.logits, TensorProto.FLOAT, [BATCH, TIME, config.vocab_size])]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state) for n in IO.state_outputs(config.cell)]
    return make_model(g, f"rnnkit_{config.cell}_lm", inputs, outputs, meta)


def check_lm_graph(model: onnx.ModelProto, config: LMConfig) -> None:
    """Raise one ``UnsupportedError`` listing every way ``model`` breaks the LM contract (fp32 and int8)."""
    state = (TensorProto.FLOAT, (config.layers, BATCH, config.hidden))
    inputs = {IO.input_ids: (TensorProto.INT64, (BATCH, TIME)), IO.sequence_lens: (TensorProto.INT32, (BATCH,)),
              **{n: state for n in IO.state_inputs(config.cell)}}
    outputs = {IO.logits: (TensorProto.FLOAT, (BATCH, TIME, config.vocab_size)),
               **{n: state for n in IO.state_outputs(config.cell)}}
    problems = contract_problems(model, config, inputs, outputs, "LanguageModelIO", "vocab_size/layers/hidden", 1,
                                 "head")
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("rnnkit.task") != "lm":
        problems.append(f"metadata 'rnnkit.task' is {props.get('rnnkit.task')!r}, expected 'lm'")
    rec = [n for n in model.graph.node if n.op_type in ("RNN", "LSTM", "GRU", "DynamicQuantizeLSTM")]
    for n in rec:
        if len(n.input) < 6 or not n.input[5]:
            problems.append(f"{n.op_type} node '{n.name}' does not read an initial_h; the state would restart at zeros")
    raise_problems(problems, f"{config.cell} language model")


__all__ = ["build_lm_graph", "check_lm_graph", "state_contract", "default_metadata"]
