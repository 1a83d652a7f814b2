"""The graph builder: every ONNX piece two task writers would otherwise each write.

A task module (``rnnkit.export.task_*``) writes only what is its own (pooling, char CNN,
attention, the bridge); the rest is here, once:

* ``GraphBuilder``: nodes and initializers with readable, unique names;
* ``embed``: ``Gather`` on a torch ``nn.Embedding`` table, optionally ``Transpose`` to time-major;
* the recurrent layers: torch's ``{prefix}.weight_ih_l{k}[_reverse]`` tensors become ONNX ``W``,
  ``R``, ``B`` and one native RNN/LSTM/GRU node per layer (``write_recurrent_layer``), stacked
  with ``sequence_lens`` on every layer (``write_stack``) or with explicit state too,
  ``initial_* -> final_*`` (``write_state_stack``: a language model, a decoder step);
* ``linear``: a torch ``nn.Linear`` as ``MatMul`` by its transposed weight + ``Add``;
* ``time_mask`` / ``length_mask``: ``arange(T) < sequence_lens``;
* ``make_model``: the graph's inputs and outputs declared from one ``Signature`` (name ->
  dtype and axes, in the order of the runtime's IO class) that the task's checker reads too,
  and ``graph_metadata`` mirrored into ``metadata_props``;
* ``require``: the missing-weight check, every missing key named at once.

Gate order (ONNX Operators.md, LSTM/GRU): torch LSTM ``i,f,g,o`` -> ONNX ``i,o,f,c``; torch GRU
``r,z,n`` -> ONNX ``z,r,h`` with ``linear_before_reset=1`` (torch applies the reset gate after
the hidden matmul and its bias); ``B = concat(W_b, R_b)`` per direction.

Imports onnx and numpy only (no torch, no onnxruntime); configs are read by field name.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata as _pkg_metadata

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rnnkit.runtime.errors import UnsupportedError
from rnnkit.runtime.manifest import FORMAT_VERSION, METADATA_KEYS, OPSET, LanguageModelIO

RECURRENT_OPS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# torch gate blocks in ONNX order: LSTM i,f,g,o -> i,o,f,c ; GRU r,z,n -> z,r,h
GATE_ORDER = {"rnn": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}
BATCH, TIME = "batch", "time"  # dim_param names of the symbolic axes


def producer_version() -> str:
    try:
        return _pkg_metadata.version("rnnkit")
    except _pkg_metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Stack:
    """The fields of a model config the recurrent writer reads, for models with several stacks
    (an encoder-decoder's encoder and decoder differ in width and direction)."""

    cell: str  # rnn | lstm | gru
    hidden: int  # per direction
    layers: int
    bidirectional: bool

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


def onnx_rnn_weights(
    config, weights: dict[str, np.ndarray], layer: int, prefix: str = "rnn"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch ``{prefix}.*_l{layer}[_reverse]`` -> ONNX ``W (D, G*H, I)``, ``R (D, G*H, H)``, ``B (D, 2*G*H)``."""
    order = GATE_ORDER[config.cell]
    h = config.hidden

    def reorder(a: np.ndarray) -> np.ndarray:  # gate blocks along axis 0
        a = np.asarray(a, dtype=np.float32)
        return np.concatenate([a[g * h : (g + 1) * h] for g in order], axis=0)

    Ws, Rs, Bs = [], [], []
    for suffix in ("", "_reverse")[: config.directions]:
        key = f"l{layer}{suffix}"
        missing = [
            f"{prefix}.{k}_{key}"
            for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            if f"{prefix}.{k}_{key}" not in weights
        ]
        if missing:
            raise UnsupportedError(
                f"weights: missing {missing} for layer {layer} of a "
                f"{config.cell} (keys must follow the model's state_dict())"
            )
        Ws.append(reorder(weights[f"{prefix}.weight_ih_{key}"]))
        Rs.append(reorder(weights[f"{prefix}.weight_hh_{key}"]))
        Bs.append(
            np.concatenate([reorder(weights[f"{prefix}.bias_ih_{key}"]), reorder(weights[f"{prefix}.bias_hh_{key}"])])
        )
    return np.stack(Ws), np.stack(Rs), np.stack(Bs)


class GraphBuilder:
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

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, outputs=None, **attrs) -> str | list[str]:
        assert name not in self._names, name
        self._names.add(name)
        outs = list(outputs or ([name] if n_out == 1 else [f"{name}.{i}" for i in range(n_out)]))
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if len(outs) == 1 else outs


def node_name(config, layer: int, prefix: str = "rnn") -> str:
    """``lstm_0`` for a model's only stack (weights ``rnn.*``), ``encoder_0`` for a named one."""
    return f"{config.cell}_{layer}" if prefix == "rnn" else f"{prefix}_{layer}"


def write_recurrent_layer(
    g: GraphBuilder,
    config,
    weights: dict[str, np.ndarray],
    layer: int,
    x: str,
    sequence_lens: str,
    initial_h: str = "",
    initial_c: str = "",
    outputs: tuple[str, ...] = (),
    prefix: str = "rnn",
) -> list[str]:
    """One native RNN/LSTM/GRU node for ``layer``: x (T, B, I) -> [Y (T, D, B, H), Y_h (D, B, H)
    (, Y_c for LSTM)]; ``sequence_lens`` may be "" (every row runs all T steps); ``initial_h`` /
    ``initial_c`` (D, B, H) are optional state inputs, ``outputs`` optional names for the node's
    outputs (default ``{cell}_{layer}.Y`` ...) and ``prefix`` the torch module holding the weights."""
    name = node_name(config, layer, prefix)
    W, R, B = onnx_rnn_weights(config, weights, layer, prefix)
    attrs = dict(hidden_size=config.hidden, direction="bidirectional" if config.bidirectional else "forward", layout=0)
    if config.cell == "gru":
        attrs["linear_before_reset"] = 1
    ins = [x, g.const(f"{name}.W", W), g.const(f"{name}.R", R), g.const(f"{name}.B", B), sequence_lens]
    if initial_h or initial_c:
        ins += [initial_h] + ([initial_c] if config.cell == "lstm" and initial_c else [])
    while not ins[-1]:  # an omitted optional input at the end is left out, not written as ""
        ins.pop()
    outs = list(outputs) or [f"{name}.Y", f"{name}.Y_h"] + ([f"{name}.Y_c"] if initial_c else [])
    result = g.op(RECURRENT_OPS[config.cell], ins, name, outputs=outs, **attrs)
    return result if isinstance(result, list) else [result]


def layer_input(g: GraphBuilder, config, layer: int, y: str, prefix: str = "rnn") -> str:
    """Y (T, D, B, H) of ``layer`` -> (T, B, D*H), the next layer's input."""
    name = node_name(config, layer, prefix)
    t = g.op("Transpose", [y], f"{name}_out_transpose", perm=[0, 2, 1, 3])
    return g.op("Reshape", [t, g.ints(f"{name}_out_shape", [0, 0, config.directions * config.hidden])], f"{name}_out")


def batch_major(g: GraphBuilder, config, y: str, name: str = "y_batch") -> str:
    """Y (T, D, B, H) -> (B, T, D*H): both directions of a token side by side, as torch's output."""
    ybt = g.op("Transpose", [y], f"{name}_major", perm=[2, 0, 1, 3])  # (B, T, D, H)
    return g.op(
        "Reshape", [ybt, g.ints(f"{name}_shape", [0, 0, config.directions * config.hidden])], name
    )  # (B, T, D*H)


def time_mask(g: GraphBuilder, input_ids: str, sequence_lens: str) -> tuple[str, str]:
    """-> mask (B, T, 1) bool, ``arange(T) < sequence_lens``, and the lengths as int64 (B, 1)."""
    mask, lens = length_mask(g, input_ids, sequence_lens)
    return g.op("Unsqueeze", [mask, g.ints("axes_2", [2])], "time_mask_3d"), lens  # (B, T, 1)


def length_mask(g: GraphBuilder, input_ids: str, sequence_lens: str) -> tuple[str, str]:
    """-> mask (B, T) bool, ``arange(T) < sequence_lens`` (T = ``input_ids``' axis 1), and the
    lengths as int64 (B, 1)."""
    shape = g.op("Shape", [input_ids], "ids_shape")
    time = g.op("Gather", [shape, g.ints("axis_time", 1)], "time", axis=0)  # scalar
    steps = g.op("Range", [g.ints("zero_i64", 0), time, g.ints("one_i64", 1)], "steps")
    steps = g.op("Unsqueeze", [steps, g.ints("axes_0", [0])], "steps_row")  # (1, T)
    lens = g.op("Cast", [sequence_lens], "lens_i64", to=TensorProto.INT64)
    lens = g.op("Unsqueeze", [lens, g.ints("axes_1", [1])], "lens_col")  # (B, 1)
    return g.op("Less", [steps, lens], "time_mask"), lens  # (B, T)


def write_stack(g: GraphBuilder, config, weights: dict[str, np.ndarray], x: str, sequence_lens: str) -> tuple[str, str]:
    """x (T, B, I) -> last layer's Y (T, D, B, H) and Y_h (D, B, H), one native node per layer;
    every layer reads the graph input ``sequence_lens`` (the task's IO names it)."""
    y = y_h = ""
    for layer in range(config.layers):
        y, y_h = write_recurrent_layer(g, config, weights, layer, x, sequence_lens)[:2]
        if layer + 1 < config.layers:
            x = layer_input(g, config, layer, y)
    return y, y_h


def write_state_stack(
    g: GraphBuilder, config, weights: dict[str, np.ndarray], x: str, sequence_lens: str, prefix: str = "rnn"
) -> str:
    """x (T, B, I) -> last layer's Y (T, 1, B, H), every layer starting from its slice of the graph
    inputs ``initial_h`` [``initial_c``] (L, B, H) and its final states concatenated into the graph
    outputs ``final_h`` [``final_c``] (``LanguageModelIO``'s state contract).  With one layer the
    state inputs feed the node directly and its own ``Y_h`` is named ``final_h``."""
    io, layers, lstm = LanguageModelIO, config.layers, config.cell == "lstm"
    axis0 = g.ints("axes_layers", [0]) if layers > 1 else ""

    def layer_state(name: str, layer: int) -> str:  # (L, B, H) -> (1, B, H)
        if layers == 1:
            return name
        return g.op(
            "Slice",
            [name, g.ints(f"{name}_start_{layer}", [layer]), g.ints(f"{name}_end_{layer}", [layer + 1]), axis0],
            f"{name}_{layer}",
        )

    finals_h, finals_c, y = [], [], ""
    for layer in range(layers):
        name = node_name(config, layer, prefix)
        outs = [f"{name}.Y", io.final_h if layers == 1 else f"{name}.Y_h"]
        if lstm:
            outs.append(io.final_c if layers == 1 else f"{name}.Y_c")
        res = write_recurrent_layer(
            g,
            config,
            weights,
            layer,
            x,
            sequence_lens,
            layer_state(io.initial_h, layer),
            layer_state(io.initial_c, layer) if lstm else "",
            outputs=tuple(outs),
            prefix=prefix,
        )
        y = res[0]
        finals_h.append(res[1])
        if lstm:
            finals_c.append(res[2])
        if layer + 1 < layers:
            x = layer_input(g, config, layer, y, prefix=prefix)
    if layers > 1:
        g.op("Concat", finals_h, "final_h_concat", outputs=[io.final_h], axis=0)
        if lstm:
            g.op("Concat", finals_c, "final_c_concat", outputs=[io.final_c], axis=0)
    return y


def embed(g: GraphBuilder, weights: dict[str, np.ndarray], module: str, ids: str, time_major: str = "") -> str:
    """``ids`` (B, T) through the torch ``nn.Embedding`` named ``module`` -> (B, T, E) (node ``module``),
    or (T, B, E) with ``time_major`` (the Transpose's name), as the recurrent layers read it."""
    x = g.op("Gather", [g.const(f"{module}.weight", weights[f"{module}.weight"]), ids], module, axis=0)
    return g.op("Transpose", [x], time_major, perm=[1, 0, 2]) if time_major else x


def transposed(weights: dict[str, np.ndarray], key: str) -> np.ndarray:
    """torch Linear weight (out, in) -> MatMul's right operand (in, out)."""
    return np.ascontiguousarray(np.asarray(weights[key], dtype=np.float32).T)


def linear(
    g: GraphBuilder, x: str, weights: dict[str, np.ndarray], module: str, name: str, outputs: list[str] | None = None
) -> str:
    """The torch ``nn.Linear`` named ``module`` on x (..., in) -> (..., out): ``MatMul`` by its
    transposed weight (``{module}.W_t``; ``{name}_matmul``), then ``Add`` of its bias (node ``name``)."""
    z = g.op("MatMul", [x, g.const(f"{module}.W_t", transposed(weights, f"{module}.weight"))], f"{name}_matmul")
    return g.op("Add", [z, g.const(f"{module}.bias", weights[f"{module}.bias"])], name, outputs=outputs)


def require(weights: dict[str, np.ndarray], keys: list[str], contract: str) -> None:
    """Every key of ``keys`` missing from ``weights``, in one ``UnsupportedError`` (``contract``: whose
    ``state_dict()`` the keys follow, e.g. ``RecurrentLM.state_dict()``)."""
    missing = [k for k in keys if k not in weights]
    if missing:
        raise UnsupportedError(f"weights: missing {missing} (keys must follow {contract})")


# A graph's inputs or outputs, in order: name -> (TensorProto dtype, axes); an axis is a dim_param
# (symbolic, e.g. BATCH) or an int from the config (e.g. num_labels).  Written by ``make_model`` and
# checked by ``rnnkit.export.check.contract_problems`` from the same task function.
Signature = dict[str, tuple[int, tuple]]


def graph_metadata(task: str, config, part: str = "") -> dict[str, str]:
    """``METADATA_KEYS`` for a graph of ``task``: e.g. ``lstm x2 bi`` (``part``: a bundle with several
    graphs names which one, ``lstm x2 bi encoder``)."""
    arch = f"{config.cell} x{config.layers}{' bi' if config.bidirectional else ''}" + (f" {part}" if part else "")
    return {"rnnkit.task": task, "rnnkit.format_version": str(FORMAT_VERSION), "rnnkit.architecture": arch}


def merge_metadata(defaults: dict[str, str], metadata: dict[str, str] | None) -> dict[str, str]:
    """The caller's ``metadata_props`` over the defaults; only ``METADATA_KEYS`` are allowed."""
    unknown = sorted(set(metadata or {}) - set(METADATA_KEYS))
    if unknown:
        raise UnsupportedError(
            f"metadata: keys {unknown} are not in METADATA_KEYS {list(METADATA_KEYS)}; put other facts in manifest.json"
        )
    return {**defaults, **(metadata or {})}


def make_model(
    g: GraphBuilder, name: str, inputs: Signature, outputs: Signature, meta: dict[str, str]
) -> onnx.ModelProto:
    """Nodes + initializers -> an opset-``OPSET`` model declaring ``inputs`` / ``outputs``, with the
    metadata keys mirrored into it."""

    def declare(signature: Signature) -> list[onnx.ValueInfoProto]:
        return [helper.make_tensor_value_info(n, dtype, list(axes)) for n, (dtype, axes) in signature.items()]

    graph = helper.make_graph(g.nodes, name, inputs=declare(inputs), outputs=declare(outputs), initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="rnnkit",
        producer_version=producer_version(),
    )
    model.ir_version = 8  # opset 17's IR; lets onnxruntime >= 1.17 load it
    helper.set_model_props(model, {k: str(meta[k]) for k in METADATA_KEYS})
    return model
