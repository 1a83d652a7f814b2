"""One graph of a bundle against its manifest.

``check_graph`` runs after ``graph_file.load_graph`` and before any prediction, without a backend:
the graph's inputs and outputs are the manifest's (names, dtypes, shapes, in order); its precision
is its file's (no int8 weights in ``model.onnx``: swapped files); the head (the last MatMul/Gemm
before the logits, and its bias) is as wide as the labels, tags or vocabulary; every embedding
table (fp32, or an int8 table and its per-row scales) has one row per vocabulary entry; the
recurrent nodes are the architecture's (cell, layers, direction, hidden size) with their own
weights, shaped to match (a portable graph's bidirectional layer is two forward nodes, paired by
``REVERSE_SUFFIX``); float weights are finite and within ``MAX_WEIGHT``; int8 is symmetric;
and the shapes hold at two input sizes (``graph_shapes``).

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto

from .errors import BundleError
from .graph_file import RECURRENT_GATES, REEXPORT
from .graph_shapes import check_shapes
from .manifest import MANIFEST_FILE, ClassifierIO, Seq2SeqIO
from .tasks import TASKS


class Bundle(Protocol):
    """What these checks read of ``bundle.Bundle`` (a protocol, so this module does not import the
    module that calls it)."""

    path: Path
    manifest: dict

    @property
    def charset(self) -> object | None: ...  # read-only here, so Bundle's narrower type is accepted

    @property
    def task(self) -> str: ...


# A trained recurrent model's weights are near 1 (activations saturate long before 10^6); a larger,
# infinite or NaN weight is a flipped exponent bit, and would turn log-probabilities into NaN.
MAX_WEIGHT = 1e6
# (weight, scale, zero point) input indices of the quantized ops export/quantize.py writes
QUANT_INPUTS = {
    "DequantizeLinear": ((0, 1, 2),),
    "DynamicQuantizeMatMul": ((1, 2, 3),),
    "DynamicQuantizeLSTM": ((1, 8, 9), (2, 10, 11)),
}
DTYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "int32": TensorProto.INT32}
# A portable graph (export/portable.py) runs a bidirectional layer as two direction="forward" nodes:
# the forward half keeps the layer's name, the reverse half is named this suffix after it.
REVERSE_SUFFIX = ".reverse"


def check_graph(bundle: Bundle, model: onnx.ModelProto, name: str, path: Path, int8: bool) -> None:
    """Graph ``name`` of the bundle (``path``, the int8 file or not) against the manifest: precision,
    inputs and outputs, head width, output distributions, embeddings, recurrent nodes, weights and
    int8 parameters, and the shapes it computes (``graph_shapes.check_shapes``)."""
    manifest, graph = bundle.manifest, model.graph
    record = manifest["graph"] if name == "model" else manifest["graph"][name]
    inits = {t.name: t for t in graph.initializer}
    quantized = any(t.data_type == TensorProto.INT8 for t in graph.initializer)
    if quantized != int8:  # e.g. model.onnx and model.int8.onnx swapped: both run, one answers for the other
        raise BundleError(
            f"{path}: holds {'int8' if quantized else 'no int8'} weights, but {path.name} is the "
            f"bundle's {'int8' if int8 else 'fp32'} graph; the files were swapped or replaced, "
            f"{REEXPORT}"
        )
    for side, values in (("inputs", [v for v in graph.input if v.name not in inits]), ("outputs", list(graph.output))):
        declared = [(d["name"], d["dtype"], d["shape"]) for d in record[side]]
        found = [_describe(v) for v in values]
        if found != declared:
            raise BundleError(
                f"{path}: graph {side} are {found} but {MANIFEST_FILE} 'graph' declares {declared}; the "
                f"graph does not belong to this manifest, {REEXPORT}"
            )
    head = TASKS[bundle.task].head  # its width key equals len(labels) where there are labels (open_bundle checks)
    if name == head.graph:
        _check_head(path, graph, inits, head.output, manifest["architecture"].get(head.width))
    _check_distributions(path, graph)
    _check_embeddings(bundle, path, graph, inits, name)
    _check_recurrent(bundle, path, graph, inits, name)
    _check_values(path, graph, inits)
    check_shapes(model, path, record)


# outputs that are distributions over their last axis: the next token's log-probabilities, the
# attention over source positions, a classifier's attention-pooling weights over its tokens (a
# softmax over another axis is a well-formed graph that normalises the wrong thing, and over a
# masked axis gives NaN)
DISTRIBUTIONS = {
    Seq2SeqIO.log_probs: "LogSoftmax",
    Seq2SeqIO.attention: "Softmax",
    ClassifierIO.pooling_weights: "Softmax",
}


def _check_distributions(path: Path, graph: onnx.GraphProto) -> None:
    producers = _producers(graph)
    for out in graph.output:
        op = DISTRIBUTIONS.get(out.name)
        node = producers.get(out.name)
        if op is None:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1) if node is not None else None
        rank = len(out.type.tensor_type.shape.dim)
        if node is None or node.op_type != op or axis not in (-1, rank - 1):
            found = "nothing" if node is None else f"{node.op_type} over axis {axis}"
            raise BundleError(
                f"{path}: {out.name!r} comes from {found}, not a {op} over its last axis; the graph "
                f"was changed, {REEXPORT}"
            )


def _describe(value: onnx.ValueInfoProto) -> tuple:
    """(name, dtype, shape) as the manifest records a graph input/output; None parts when not a plain tensor."""
    if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.HasField("shape"):
        return value.name, None, None
    elem = value.type.tensor_type.elem_type
    dtype = next(
        (k for k, v in DTYPES.items() if v == elem),
        TensorProto.DataType.Name(elem).lower() if elem in TensorProto.DataType.values() else str(elem),
    )
    dims = [
        d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None
        for d in value.type.tensor_type.shape.dim
    ]
    return value.name, dtype, dims


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _const_shape(name: str, inits: dict, producers: dict) -> list[int] | None:
    """Static shape of a weight: an initializer, or one through DequantizeLinear / Cast / Reshape by a
    constant / Mul by a constant / Concat of constants."""
    for _ in range(4):
        if name in inits:
            return list(inits[name].dims)
        node = producers.get(name)
        if node is None or node.op_type not in WEIGHT_PASSES:
            return None
        if node.op_type in ("Concat", "Mul"):
            found = [_const_shape(i, inits, producers) for i in node.input]
            parts = [p for p in found if p is not None]
            if not parts or len(parts) != len(found):
                return None
            if node.op_type == "Mul":  # a weight times its scales: the broadcast shape
                try:
                    return list(np.broadcast_shapes(*map(tuple, parts)))
                except ValueError:
                    return None
            if len({len(p) for p in parts}) != 1:
                return None
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % len(parts[0])
            if any(p[:axis] + p[axis + 1 :] != parts[0][:axis] + parts[0][axis + 1 :] for p in parts):
                return None
            return [sum(p[axis] for p in parts) if k == axis else v for k, v in enumerate(parts[0])]
        if node.op_type == "Reshape":
            shape = inits.get(node.input[1]) if len(node.input) > 1 else None
            if shape is None or shape.data_type != TensorProto.INT64:
                return None
            values = list(onnx.numpy_helper.to_array(shape).reshape(-1))
            return [int(v) for v in values] if all(v > 0 for v in values) else None
        name = node.input[0]
    return None


def _check_head(path: Path, graph: onnx.GraphProto, inits: dict, output: str, width: int) -> None:
    """The output's last dim, the head MatMul/Gemm's output channels and its bias all equal ``width``
    (labels, tags or vocabulary): a narrower head would answer for classes it never scored."""
    producers = _producers(graph)
    name, bias = output, []
    # the writers' tails: Gemm (classify); MatMul -> Add(bias) [-> Where | LogSoftmax] (the others)
    for _ in range(8):
        node = producers.get(name)
        if node is None:
            break
        if node.op_type in ("MatMul", "Gemm", "DynamicQuantizeMatMul"):
            break
        if node.op_type == "Add":
            bias += [i for i in node.input if i in inits]
        data = [i for i in node.input if i not in inits]
        name = data[1] if node.op_type == "Where" and len(data) > 1 else (data[0] if data else "")
    else:
        node = None
    if node is None or node.op_type not in ("MatMul", "Gemm", "DynamicQuantizeMatMul") or len(node.input) < 2:
        raise BundleError(
            f"{path}: found no MatMul/Gemm head before output {output!r}; the graph was not written by "
            f"rnnkit's exporter, {REEXPORT}"
        )
    weight = _const_shape(node.input[1], inits, producers)
    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)
    widths = {"weight": None if not weight else weight[0] if trans_b else weight[-1]}
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in inits:
        bias.append(node.input[2])
    for b in bias:
        dims = list(inits[b].dims)
        widths[f"bias {b!r}"] = dims[-1] if dims else None
    bad = {k: v for k, v in widths.items() if v != width}
    if bad:
        raise BundleError(
            f"{path}: the head {node.name!r} ({node.op_type}) is {bad} wide but {MANIFEST_FILE} has "
            f"{width} classes for {output!r}; the graph does not belong to this manifest, {REEXPORT}"
        )


def _check_embeddings(bundle: Bundle, path: Path, graph: onnx.GraphProto, inits: dict, name: str) -> None:
    """Each embedding table (fp32, or an int8 table and its per-row scales) has one row per vocabulary
    entry: every Gather of constant rows by the graph's id input, and the tagger's character table."""
    arch, where = bundle.manifest["architecture"], bundle.path / MANIFEST_FILE
    ids = TASKS[bundle.task].embeddings[name]  # id input -> architecture key of its vocabulary size
    tables = {}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in ids and node.input[0] in inits:
            tables[node.input[0]] = ids[node.input[1]]
    if set(tables.values()) != set(ids.values()):
        raise BundleError(
            f"{path}: no embedding Gather reads {list(ids)}; the graph was not written by rnnkit's exporter, {REEXPORT}"
        )
    if bundle.charset is not None:
        chars = {t: "char_vocab_size" for t in inits if t.startswith("char_embedding.weight")}
        if not chars:
            raise BundleError(f"{path}: no 'char_embedding.weight' table, but {where.name} has a 'charset'; {REEXPORT}")
        tables.update(chars)
    for tensor, size_key in tables.items():
        rows = inits[tensor].dims[0] if inits[tensor].dims else None
        if rows != arch[size_key]:
            raise BundleError(
                f"{path}: {tensor.split('.')[0]} has {rows} rows but {where.name} "
                f"'architecture.{size_key}' is {arch[size_key]} (tensor {tensor!r}); the model and its "
                f"vocabulary do not belong together, {REEXPORT}"
            )


def _check_recurrent(bundle: Bundle, path: Path, graph: onnx.GraphProto, inits: dict, name: str) -> None:
    """The recurrent nodes are the architecture's (cell, layers, direction, hidden size), with the
    attributes rnnkit writes and W/R/B shapes that agree with them: a backend would otherwise fail,
    read past a weight, or run the sequence the other way, in the middle of a prediction."""
    arch = bundle.manifest["architecture"]
    ops = {"rnn": ("RNN",), "gru": ("GRU",), "lstm": ("LSTM", "DynamicQuantizeLSTM")}[arch["cell"]]
    # an encoder (or a bidirectional classifier/tagger) runs both ways; an LM or a decoder forwards only
    both = bool(arch.get("bidirectional")) and name not in TASKS[bundle.task].forward_only
    hidden = arch["hidden"] // 2 if both and name == "encoder" else arch["hidden"]  # encoder: concat = hidden
    want = {"op": ops, "hidden_size": hidden, "direction": b"bidirectional" if both else b"forward"}
    producers = _producers(graph)
    nodes = [n for n in graph.node if n.op_type in RECURRENT_GATES]
    # a portable graph's bidirectional layer: node N (forward half) and node N + REVERSE_SUFFIX
    names = {n.name for n in nodes}
    halves = {n.name for n in nodes if n.name + REVERSE_SUFFIX in names}
    halves |= {name + REVERSE_SUFFIX for name in halves}
    layers = [n for n in nodes if not (n.name in halves and n.name.endswith(REVERSE_SUFFIX))]
    if len(layers) != arch["layers"]:
        raise BundleError(
            f"{path}: {len(layers)} recurrent layer(s) but 'architecture.layers' is {arch['layers']}; "
            f"the graph does not belong to this manifest, {REEXPORT}"
        )
    for node in nodes:
        gates = RECURRENT_GATES[node.op_type]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        hidden, direction = attrs.get("hidden_size"), attrs.get("direction", b"forward")
        d = 2 if direction == b"bidirectional" else 1
        layer = node.name
        if node.name in halves:  # one direction of a bidirectional layer, each run forwards
            layer = node.name[: -len(REVERSE_SUFFIX)] if node.name.endswith(REVERSE_SUFFIX) else node.name
            direction = b"bidirectional" if direction == b"forward" else b"half of a layer, " + direction
        extra = set(attrs) - {"hidden_size", "direction", "layout", "linear_before_reset"}
        problems = [f"attribute(s) {sorted(extra)}, which rnnkit never writes"] if extra else []
        found = {"op": node.op_type, "hidden_size": hidden, "direction": direction}
        if node.op_type not in want["op"] or hidden != want["hidden_size"] or direction != want["direction"]:
            problems.append(
                f"{found} where the architecture ({arch['cell']}, hidden {arch['hidden']}, "
                f"bidirectional {bool(arch.get('bidirectional'))}) gives {want}"
            )
        if attrs.get("layout", 0) != 0 or (node.op_type == "GRU" and attrs.get("linear_before_reset") != 1):
            problems.append(
                f"layout={attrs.get('layout', 0)!r} linear_before_reset="
                f"{attrs.get('linear_before_reset')!r} (rnnkit writes 0 and, for GRU, 1)"
            )
        foreign = sorted(t for t in _constant_sources(node, inits, producers) if not t.startswith(f"{layer}."))
        if foreign:  # the writers name a layer's weights after it: another layer's are a rewired graph
            problems.append(f"weights {foreign} of another layer")
        if not problems:
            quantized = node.op_type == "DynamicQuantizeLSTM"  # W (D, in, 4H), R (D, H, 4H)
            w, r = (_const_shape(node.input[i], inits, producers) if len(node.input) > i else None for i in (1, 2))
            rows = gates * hidden
            w_ok = w is not None and len(w) == 3 and w[0] == d and (w[2] if quantized else w[1]) == rows
            r_ok = r == ([d, hidden, rows] if quantized else [d, rows, hidden])
            has_b = len(node.input) > 3 and node.input[3]
            b = _const_shape(node.input[3], inits, producers) if has_b else [d, 2 * rows]
            if not (w_ok and r_ok and b == [d, 2 * rows]):
                problems.append(f"W {w}, R {r}, B {b} for {d} direction(s) x {gates} gate(s) x hidden {hidden}")
        if problems:
            raise BundleError(
                f"{path}: recurrent node {node.name!r} ({node.op_type}) has {'; '.join(problems)}; the "
                f"file is corrupted or was not written by rnnkit, {REEXPORT}"
            )


# ops a recurrent node's weights pass through: int8 dequantization (DequantizeLinear, or Cast + Mul by
# a scale), Reshape (int8 GRU/RNN weights), Concat (a portable LSTM's hold column joined to W)
WEIGHT_PASSES = ("DequantizeLinear", "Reshape", "Concat", "Cast", "Mul")


def _constant_sources(node: onnx.NodeProto, inits: dict, producers: dict) -> set[str]:
    """The initializers a recurrent node's weights (W, R, B, and int8 scales and zero points) come from,
    directly or through ``WEIGHT_PASSES``."""
    found, todo = set(), [x for i, x in enumerate(node.input) if i in (1, 2, 3) or i >= 8]
    while todo:
        name = todo.pop()
        if name in inits:
            found.add(name)
        elif name in producers and producers[name].op_type in WEIGHT_PASSES:
            todo += list(producers[name].input)
    return found


def _check_values(path: Path, graph: onnx.GraphProto, inits: dict) -> None:
    """Float constants are finite and within ``MAX_WEIGHT`` (-inf only as a Where's fill value: the
    masks rnnkit writes); int8 is symmetric: zero points are 0, scales positive, one per output
    channel or one for all (onnxruntime refuses anything else mid-run; numba would misread it)."""
    fills = {i for n in graph.node if n.op_type == "Where" for i in n.input[1:]}
    weights = {i for n in graph.node if n.op_type != "Where" for i in n.input}
    for name, t in inits.items():
        if t.data_type != TensorProto.FLOAT:
            continue
        value = onnx.numpy_helper.to_array(t)
        bad = np.isnan(value) | (np.abs(value) > MAX_WEIGHT)
        if name in fills and name not in weights:  # a mask's fill value: rnnkit writes -inf there
            bad &= ~np.isneginf(value)
        if bad.any():
            raise BundleError(
                f"{path}: tensor {name!r} holds {value[bad].reshape(-1)[0]}, outside +-{MAX_WEIGHT:g} "
                f"(or NaN); a trained model has no such weight, the file is corrupted or was changed, "
                f"{REEXPORT}"
            )
    for node in graph.node:
        for w_i, s_i, z_i in QUANT_INPUTS.get(node.op_type, ()):
            names = [node.input[i] if len(node.input) > i else "" for i in (w_i, s_i, z_i)]
            scale, zero = (onnx.numpy_helper.to_array(inits[n]) if n in inits else None for n in names[1:])
            sizes = _scale_sizes(node, inits.get(names[0]))
            ok = (
                scale is not None
                and zero is not None
                and scale.dtype == np.float32
                and scale.shape == zero.shape
                and bool(np.all(scale > 0))
                and not np.any(zero)
                and scale.size in sizes
            )
            if not ok:
                raise BundleError(
                    f"{path}: {node.op_type} node {node.name!r} has scale {names[1]!r} "
                    f"{None if scale is None else list(scale.shape)} and zero point {names[2]!r} "
                    f"{None if zero is None else list(zero.shape)} for weight {names[0]!r}; rnnkit's "
                    f"int8 is symmetric (zero points 0, positive scales, {sorted(sizes)} of them); the "
                    f"file is corrupted or was changed, {REEXPORT}"
                )


def _scale_sizes(node: onnx.NodeProto, weight: onnx.TensorProto | None) -> set[int]:
    """How many scales a weight quantized per tensor, per direction or per output channel has:
    DequantizeLinear, 1 or its dim at ``axis`` (default 1); DynamicQuantizeMatMul, 1 or its columns;
    DynamicQuantizeLSTM (W (D, in, 4H), R (D, H, 4H)), D or D x 4H."""
    dims = list(weight.dims) if weight is not None else []
    if not dims:
        return set()
    if node.op_type == "DequantizeLinear":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        return {1, dims[axis]} if -len(dims) <= axis < len(dims) else {1}
    if node.op_type == "DynamicQuantizeMatMul":
        return {1, dims[-1]}
    return {dims[0], dims[0] * dims[-1]} if len(dims) == 3 else set()
