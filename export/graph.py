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

Gate order (ONNX Operators.md, LSTM/GRU): torch LSTM ``i,f,g,o`` -> ONNX ``i,o,f,c``; torch GRU
``r,z,n`` -> ONNX ``z,r,h`` with ``linear_before_reset=1`` (torch applies the reset gate after
the hidden matmul and its bias); ``B = concat(W_b, R_b)`` per direction.  Only ops the numba
backend runs are written.
"""

from __future__ import annotations

from importlib import metadata as _pkg_metadata

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rnnkit.runtime.errors import UnsupportedError
from rnnkit.runtime.manifest import FORMAT_VERSION, METADATA_KEYS, OPSET, ClassifierIO
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only the dataclass fields are read here
    from rnnkit.toolkit.configs import ClassifierConfig

RECURRENT_OPS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# torch gate blocks in ONNX order: LSTM i,f,g,o -> i,o,f,c ; GRU r,z,n -> z,r,h
GATE_ORDER = {"rnn": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}
BATCH, TIME = "batch", "time"  # dim_param names of the symbolic axes


def _producer_version() -> str:
    try:
        return _pkg_metadata.version("rnnkit")
    except _pkg_metadata.PackageNotFoundError:
        return "0+unknown"


def default_metadata(config: ClassifierConfig) -> dict[str, str]:
    """Values for ``METADATA_KEYS`` when the caller gives none, e.g. ``bilstm-2x256-mean``."""
    bi = "bi" if config.bidirectional else ""
    arch = f"{bi}{config.cell}-{config.layers}x{config.hidden}-{config.pooling}"
    return {"rnnkit.task": "classify", "rnnkit.format_version": str(FORMAT_VERSION),
            "rnnkit.architecture": arch}


def onnx_rnn_weights(config: ClassifierConfig, weights: dict[str, np.ndarray], layer: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch ``rnn.*_l{layer}[_reverse]`` -> ONNX ``W (D, G*H, I)``, ``R (D, G*H, H)``, ``B (D, 2*G*H)``."""
    order = GATE_ORDER[config.cell]
    h = config.hidden

    def reorder(a: np.ndarray) -> np.ndarray:  # gate blocks along axis 0
        a = np.asarray(a, dtype=np.float32)
        return np.concatenate([a[g * h:(g + 1) * h] for g in order], axis=0)

    Ws, Rs, Bs = [], [], []
    for suffix in ("", "_reverse")[:config.directions]:
        key = f"l{layer}{suffix}"
        missing = [f"rnn.{k}_{key}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                   if f"rnn.{k}_{key}" not in weights]
        if missing:
            raise UnsupportedError(f"weights: missing {missing} for layer {layer} of a "
                                   f"{config.cell} (keys must follow RecurrentClassifier.state_dict())")
        Ws.append(reorder(weights[f"rnn.weight_ih_{key}"]))
        Rs.append(reorder(weights[f"rnn.weight_hh_{key}"]))
        Bs.append(np.concatenate([reorder(weights[f"rnn.bias_ih_{key}"]),
                                  reorder(weights[f"rnn.bias_hh_{key}"])]))
    return np.stack(Ws), np.stack(Rs), np.stack(Bs)


class _Graph:
    """Collects nodes and initializers with readable, unique names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def const(self, name: str, value, dtype=np.float32) -> str:
        assert name not in self._names, name
        self._names.add(name)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, name: str, values) -> str:
        return self.const(name, values, np.int64)

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, outputs=None,
           **attrs) -> str | list[str]:
        assert name not in self._names, name
        self._names.add(name)
        outs = list(outputs or ([name] if n_out == 1 else [f"{name}.{i}" for i in range(n_out)]))
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if len(outs) == 1 else outs


def _pool(g: _Graph, config: ClassifierConfig, weights, y: str, y_h: str) -> str:
    """Last layer's outputs -> pooled (B, D*H)."""
    width = config.directions * config.hidden
    if config.pooling == "last":
        # Y_h (D, B, H): forward = state at each row's last real token, reverse = state at t=0
        bdh = g.op("Transpose", [y_h], "pool_last_transpose", perm=[1, 0, 2])      # (B, D, H)
        return g.op("Reshape", [bdh, g.ints("pool_last_shape", [0, width])], "pool_last")

    ybt = g.op("Transpose", [y], "y_batch_major", perm=[2, 0, 1, 3])              # (B, T, D, H)
    ybt = g.op("Reshape", [ybt, g.ints("y_batch_shape", [0, 0, width])], "y_batch")  # (B, T, DH)
    # time mask (B, T, 1): arange(T) < sequence_lens
    shape = g.op("Shape", [ClassifierIO.input_ids], "ids_shape")
    time = g.op("Gather", [shape, g.ints("axis_time", 1)], "time", axis=0)      # scalar
    steps = g.op("Range", [g.ints("zero_i64", 0), time, g.ints("one_i64", 1)], "steps")
    steps = g.op("Unsqueeze", [steps, g.ints("axes_0", [0])], "steps_row")        # (1, T)
    lens = g.op("Cast", [ClassifierIO.sequence_lens], "lens_i64", to=TensorProto.INT64)
    lens = g.op("Unsqueeze", [lens, g.ints("axes_1", [1])], "lens_col")           # (B, 1)
    mask = g.op("Less", [steps, lens], "time_mask")                               # (B, T)
    mask = g.op("Unsqueeze", [mask, g.ints("axes_2", [2])], "time_mask_3d")       # (B, T, 1)
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
    meta = default_metadata(config)
    unknown = sorted(set(metadata or {}) - set(METADATA_KEYS))
    if unknown:
        raise UnsupportedError(f"metadata: keys {unknown} are not in METADATA_KEYS "
                               f"{list(METADATA_KEYS)}; put other facts in manifest.json")
    meta.update(metadata or {})
    needed = ["embedding.weight", "head.weight", "head.bias"]
    if config.pooling == "attention":
        needed += ["attention.proj.weight", "attention.proj.bias", "attention.v.weight"]
    missing = [k for k in needed if k not in weights]
    if missing:
        raise UnsupportedError(f"weights: missing {missing} (keys must follow "
                               f"RecurrentClassifier.state_dict() for pooling={config.pooling!r})")

    g = _Graph()
    op = RECURRENT_OPS[config.cell]
    d, h = config.directions, config.hidden
    direction = "bidirectional" if config.bidirectional else "forward"

    table = g.const("embedding.weight", weights["embedding.weight"])               # (V, E)
    x = g.op("Gather", [table, ClassifierIO.input_ids], "embedding", axis=0)       # (B, T, E)
    x = g.op("Transpose", [x], "time_major", perm=[1, 0, 2])                       # (T, B, E)
    y = y_h = ""
    for layer in range(config.layers):
        name = f"{config.cell}_{layer}"
        W, R, B = onnx_rnn_weights(config, weights, layer)
        attrs = dict(hidden_size=h, direction=direction, layout=0)
        if config.cell == "gru":
            attrs["linear_before_reset"] = 1
        y, y_h = g.op(op, [x, g.const(f"{name}.W", W), g.const(f"{name}.R", R),
                           g.const(f"{name}.B", B), ClassifierIO.sequence_lens],
                      name, outputs=[f"{name}.Y", f"{name}.Y_h"], **attrs)
        if layer + 1 < config.layers:  # Y (T, D, B, H) -> (T, B, D*H) for the next layer
            t = g.op("Transpose", [y], f"{name}_out_transpose", perm=[0, 2, 1, 3])
            x = g.op("Reshape", [t, g.ints(f"{name}_out_shape", [0, 0, d * h])], f"{name}_out")

    pooled = _pool(g, config, weights, y, y_h)
    g.op("Gemm", [pooled, g.const("head.weight", weights["head.weight"]),
                  g.const("head.bias", weights["head.bias"])], "head",
         outputs=[ClassifierIO.logits], transB=1)

    graph = helper.make_graph(
        g.nodes, f"rnnkit_{config.cell}_classifier",
        inputs=[helper.make_tensor_value_info(ClassifierIO.input_ids, TensorProto.INT64, [BATCH, TIME]),
                helper.make_tensor_value_info(ClassifierIO.sequence_lens, TensorProto.INT32, [BATCH])],
        outputs=[helper.make_tensor_value_info(ClassifierIO.logits, TensorProto.FLOAT,
                                               [BATCH, config.num_labels])],
        initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="rnnkit", producer_version=_producer_version())
    model.ir_version = 8  # opset 17's IR; lets onnxruntime >= 1.17 load it
    helper.set_model_props(model, {k: str(meta[k]) for k in METADATA_KEYS})
    return model
