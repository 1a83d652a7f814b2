"""Write a ``RecurrentClassifier`` as an ONNX graph with native RNN/LSTM/GRU ops, from its weights.

We do not call ``torch.onnx.export``: in torch 2.13 it unrolls ``nn.RNN`` with a frozen time
axis, loses the dynamic time axis on a second export of the same cell type, reads ``c0`` for
both states when ``h0`` and ``c0`` example tensors are identical, and writes GRU with a
``linear_before_reset`` other than 1.  Here the graph is written directly from numpy weights
keyed like ``RecurrentClassifier.state_dict()``; torch is only the parity oracle (the caller
converts tensors), so this module imports neither torch nor onnxruntime.

Graph (shapes inline; D = directions, H = hidden, L = labels)::

    input_ids (B, T) -Gather-> (B, T, E) -Transpose-> (T, B, E)
      -> per layer one RNN/LSTM/GRU node reading sequence_lens, layout 0: Y (T, D, B, H), Y_h (D, B, H)
         between layers Y -> (T, B, D*H)
      -> pooling: last = Y_h (D, B, H) -> (B, D*H) (what torch's packed h_n holds);
         mean / max / attention over the time mask ``arange(T) < sequence_lens``
      -> Gemm head -> logits (B, L)

The recurrent layers, the time mask and the model wrapping are ``rnnkit.export.recurrent``'s
(shared with the tagger writer; the gate reordering is documented there).  Only ops the numba
backend runs are written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from rnnkit.export.recurrent import (BATCH, GATE_ORDER, GATES, RECURRENT_OPS, TIME, GraphBuilder,
                                     batch_major, make_model, merge_metadata, onnx_rnn_weights,
                                     time_mask, write_recurrent_stack)
from rnnkit.runtime.errors import UnsupportedError
from rnnkit.runtime.manifest import FORMAT_VERSION, ClassifierIO

if TYPE_CHECKING:  # only the dataclass fields are read here
    from rnnkit.toolkit.configs import ClassifierConfig

# re-exported: the recurrent pieces used to live here
__all__ = ["build_classifier_graph", "default_metadata", "onnx_rnn_weights", "RECURRENT_OPS", "GATES",
           "GATE_ORDER", "BATCH", "TIME"]


def default_metadata(config: ClassifierConfig) -> dict[str, str]:
    """Values for ``METADATA_KEYS`` when the caller gives none, e.g. ``bilstm-2x256-mean``."""
    bi = "bi" if config.bidirectional else ""
    arch = f"{bi}{config.cell}-{config.layers}x{config.hidden}-{config.pooling}"
    return {"rnnkit.task": "classify", "rnnkit.format_version": str(FORMAT_VERSION),
            "rnnkit.architecture": arch}


def _pool(g: GraphBuilder, config: ClassifierConfig, weights, y: str, y_h: str) -> str:
    """Last layer's outputs -> pooled (B, D*H)."""
    width = config.directions * config.hidden
    if config.pooling == "last":
        # Y_h (D, B, H): forward = state at each row's last real token, reverse = state at t=0
        bdh = g.op("Transpose", [y_h], "pool_last_transpose", perm=[1, 0, 2])      # (B, D, H)
        return g.op("Reshape", [bdh, g.ints("pool_last_shape", [0, width])], "pool_last")

    ybt = batch_major(g, config, y)                                               # (B, T, DH)
    mask, lens = time_mask(g, ClassifierIO.input_ids, ClassifierIO.sequence_lens)  # (B, T, 1), (B, 1)
    if config.pooling == "max":
        neg = g.op("Where", [mask, ybt, g.const("neg_inf", -np.inf)], "y_masked_neg_inf")
        return g.op("ReduceMax", [neg], "pool_max", axes=[1], keepdims=0)         # opset 17: attr
    # Where rather than Mul: padding positions never leak, even if a backend leaves NaN there
    y0 = g.op("Where", [mask, ybt, g.const("zero_f32", 0.0)], "y_masked")
    axis_t = g.ints("reduce_axes_time", [1])
    if config.pooling == "mean":
        total = g.op("ReduceSum", [y0, axis_t], "pool_sum", keepdims=0)           # (B, DH)
        count = g.op("Cast", [lens], "lens_f32", to=TensorProto.FLOAT)            # (B, 1)
        return g.op("Div", [total, count], "pool_mean")
    # attention: alpha = softmax_t(v . tanh(proj(y))), pooled = sum_t alpha * y
    proj_w = g.const("attention.proj.W_t", np.asarray(weights["attention.proj.weight"]).T)
    proj_b = g.const("attention.proj.bias", weights["attention.proj.bias"])
    v_w = g.const("attention.v.W_t", np.asarray(weights["attention.v.weight"]).T)  # (DH, 1)
    p = g.op("MatMul", [ybt, proj_w], "attention_proj_matmul")
    p = g.op("Add", [p, proj_b], "attention_proj")
    p = g.op("Tanh", [p], "attention_tanh")
    scores = g.op("MatMul", [p, v_w], "attention_scores")                          # (B, T, 1)
    scores = g.op("Where", [mask, scores, g.const("neg_inf", -np.inf)], "attention_masked")
    alpha = g.op("Softmax", [scores], "attention_alpha", axis=1)
    weighted = g.op("Mul", [alpha, y0], "attention_weighted")
    return g.op("ReduceSum", [weighted, axis_t], "pool_attention", keepdims=0)


def build_classifier_graph(config: ClassifierConfig, weights: dict[str, np.ndarray],
                           metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Numpy weights (``RecurrentClassifier.state_dict()`` keys) -> ONNX classifier graph."""
    meta = merge_metadata(default_metadata(config), metadata)
    needed = ["embedding.weight", "head.weight", "head.bias"]
    if config.pooling == "attention":
        needed += ["attention.proj.weight", "attention.proj.bias", "attention.v.weight"]
    missing = [k for k in needed if k not in weights]
    if missing:
        raise UnsupportedError(f"weights: missing {missing} (keys must follow "
                               f"RecurrentClassifier.state_dict() for pooling={config.pooling!r})")

    g = GraphBuilder()
    table = g.const("embedding.weight", weights["embedding.weight"])               # (V, E)
    x = g.op("Gather", [table, ClassifierIO.input_ids], "embedding", axis=0)       # (B, T, E)
    x = g.op("Transpose", [x], "time_major", perm=[1, 0, 2])                       # (T, B, E)
    y, y_h = write_recurrent_stack(g, config, weights, x, ClassifierIO.sequence_lens)
    pooled = _pool(g, config, weights, y, y_h)
    g.op("Gemm", [pooled, g.const("head.weight", weights["head.weight"]),
                  g.const("head.bias", weights["head.bias"])], "head",
         outputs=[ClassifierIO.logits], transB=1)

    return make_model(
        g, f"rnnkit_{config.cell}_classifier",
        inputs=[helper.make_tensor_value_info(ClassifierIO.input_ids, TensorProto.INT64, [BATCH, TIME]),
                helper.make_tensor_value_info(ClassifierIO.sequence_lens, TensorProto.INT32, [BATCH])],
        outputs=[helper.make_tensor_value_info(ClassifierIO.logits, TensorProto.FLOAT,
                                               [BATCH, config.num_labels])],
        meta=meta)
