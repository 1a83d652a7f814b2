"""The portable int8 form: int8 weights dequantized in-graph by standard ops every ONNX runtime runs.

``quantize_weights(model)`` stores each large float weight as int8, symmetric per output channel
(zero point 0, range [-127, 127], scale = max|w| / 127 per channel: ``quantize.quantize_symmetric``),
and turns it back into float32 inside the graph with ops of the default domain at the graph's
opset (17)::

    Cast(q int8 -> float) * scale (float, one per channel, broadcast) -> Reshape(the weight's shape)

Not ``DequantizeLinear``: ``onnx.reference`` implements it from opset 19 only, and rnnkit's graphs
are opset 17 (``runtime.manifest.OPSET``); ``Cast`` and ``Mul`` run on onnx.reference, OpenVINO,
tract, onnxruntime and rnnkit's numba.  The trailing ``Reshape`` by a constant states the weight's
static shape to a reader that does not fold constants (the bundle verifier,
``runtime/graph_contract.py``, reads a weight's shape through it); for recurrent weights it is the
reshape from the stored 2-D rows back to ``(D, G*H, I)``.

Roles, found from how the graph reads each initializer (the channel axis is each role's output axis):

* recurrent ``W`` / ``R`` (``(D, G*H, I)`` / ``(D, G*H, H)``), read by an RNN/GRU/LSTM node directly
  or through a ``Concat`` (the portable LSTM's hold column, ``rnnkit.export.portable``): one scale
  per (direction, gate row), stored as rows ``(D*G*H, I)`` with scales ``(D*G*H, 1)``;
* embedding tables ``(V, E)`` read by ``Gather``: one scale per row; the int8 rows and their scales
  are gathered, then ``Cast * scale`` (only the rows used are dequantized, as in the fast form);
* ``MatMul`` right operands ``(in, out)``: one scale per column; ``Gemm`` B likewise (per row with
  ``transB``); only those with at least ``min_matmul_elements`` values (the fast form's threshold).

Everything else stays float32: biases, the small pieces a Concat joins to a weight (the hold
column), heads below the threshold, tensors with other readers.  The rewrite changes only how
weights are stored; the graph's inputs, outputs and every other node are unchanged, so the graph
form (``sequence_lens`` or portable) is kept.  Imports onnx and numpy only.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .quantize import MIN_MATMUL_ELEMENTS, quantize_symmetric

RECURRENT = ("RNN", "GRU", "LSTM")
FORMAT = "portable"  # the manifest's name of this int8 format (the fast form is "onnxruntime")


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    found: dict[str, list] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            found.setdefault(name, []).append((node, slot))
    return found


def _role(
    name: str, value: np.ndarray, uses: list, consumers: dict, sizes: dict, min_matmul_elements: int
) -> str | None:
    """What a float initializer is to the graph ("recurrent" | "embedding" | "matmul" | "gemm" | "gemm_t"),
    or None to keep it float32.  Every reader must agree on the role."""
    roles = set()
    for node, slot in uses:
        if node.op_type in RECURRENT and slot in (1, 2) and value.ndim == 3:
            roles.add("recurrent")
        elif (
            node.op_type == "Concat"
            and value.ndim == 3
            and consumers.get(node.output[0])
            and all(n.op_type in RECURRENT and s in (1, 2) for n, s in consumers[node.output[0]])
            and all(sizes.get(i, 0) < value.size for i in node.input if i != name)
        ):
            roles.add("recurrent")  # the largest piece of a weight joined in-graph; the small ones stay fp32
        elif node.op_type == "Gather" and slot == 0 and value.ndim == 2:
            roles.add("embedding")
        elif node.op_type == "MatMul" and slot == 1 and value.ndim == 2 and value.size >= min_matmul_elements:
            roles.add("matmul")
        elif node.op_type == "Gemm" and slot == 1 and value.ndim == 2 and value.size >= min_matmul_elements:
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            roles.add("gemm_t" if trans_b else "gemm")
        else:
            return None
    return roles.pop() if len(roles) == 1 else None


def quantize_weights(
    model: onnx.ModelProto, *, min_matmul_elements: int = MIN_MATMUL_ELEMENTS
) -> tuple[onnx.ModelProto, dict]:
    """fp32 graph -> (the same graph with int8 weights dequantized in standard ops, parameters for the
    manifest's ``quantization`` record).  The input model is not modified."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
    new_inits: list[onnx.TensorProto] = []
    front: list[onnx.NodeProto] = []  # dequantization of whole weights: before every reader
    gathers: dict[str, list[onnx.NodeProto]] = {}  # an embedding Gather's output -> its replacement
    rename: dict[str, str] = {}  # fp32 weight -> its dequantized value
    decisions, removed = [], set()

    def const(name: str, value: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    for name, tensor in inits.items():
        if tensor.data_type != TensorProto.FLOAT:
            continue
        value = numpy_helper.to_array(tensor)
        role = _role(name, value, consumers.get(name, []), consumers, sizes, min_matmul_elements)
        if role is None:
            continue
        removed.add(name)
        if role == "embedding":
            q, scale = quantize_symmetric(value, axis=0)  # scale (V, 1)
            const(f"{name}_quantized", q)
            const(f"{name}_scale", scale)
            for node, _ in consumers[name]:
                gathers[node.output[0]] = _gather_rows(node, name)
            decisions.append(
                {"tensor": name, "role": "embedding", "shape": list(value.shape), "axis": 0, "granularity": "per-row"}
            )
            continue
        if role == "recurrent":  # (D, G*H, X) -> rows
            rows = value.reshape(-1, value.shape[-1])
            q, scale = quantize_symmetric(rows, axis=0)  # scale (D*G*H, 1)
            axis, granularity = 1, "per-direction-and-gate-row"
        else:
            axis = 0 if role == "gemm_t" else 1  # the output channels
            q, scale = quantize_symmetric(value, axis=axis)
            granularity = "per-output-channel"
        cast, scaled = f"{name}_int8_cast", f"{name}_int8_scaled"
        front += [
            helper.make_node("Cast", [const(f"{name}_quantized", q)], [cast], name=cast, to=TensorProto.FLOAT),
            helper.make_node("Mul", [cast, const(f"{name}_scale", scale)], [scaled], name=scaled),
            helper.make_node(
                "Reshape",
                [scaled, const(f"{name}_shape", np.array(value.shape, np.int64))],
                [f"{name}_dequantized"],
                name=f"{name}_dequantize",
            ),
        ]
        rename[name] = f"{name}_dequantized"
        decisions.append(
            {
                "tensor": name,
                "role": "recurrent" if role == "recurrent" else "matmul",
                "shape": list(value.shape),
                "axis": axis,
                "granularity": granularity,
            }
        )

    nodes = list(front)
    for node in graph.node:
        if node.op_type == "Gather" and node.output[0] in gathers:
            nodes += gathers[node.output[0]]
            continue
        for slot, name in enumerate(node.input):
            if name in rename:
                node.input[slot] = rename[name]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name not in removed]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    params = {
        "format": FORMAT,
        "scheme": "int8-symmetric",
        "bits": 8,
        "zero_point": 0,
        "per_channel": True,
        "dequantize": "Cast(int8 -> float) * scale -> Reshape, in the default domain at opset "
        f"{next((o.version for o in out.opset_import if o.domain in ('', 'ai.onnx')), None)}",
        "min_matmul_elements": min_matmul_elements,
        "tensors": decisions,
        "fp32_tensors": sorted(t.name for t in kept if t.data_type == TensorProto.FLOAT),
    }
    return out, params


def _gather_rows(node: onnx.NodeProto, table: str) -> list[onnx.NodeProto]:
    """``Gather(table, ids)`` -> gather int8 rows and their scales, ``Cast``, ``Mul``: the same output name."""
    ids, base = node.input[1], node.name or node.output[0]
    axis = [a for a in node.attribute if a.name == "axis"]
    if axis and axis[0].i != 0:
        raise ValueError(f"Gather {node.name!r} reads table {table!r} along axis {axis[0].i}; rnnkit writes axis 0")
    return [
        helper.make_node("Gather", [f"{table}_quantized", ids], [f"{base}_q"], name=f"{base}_q", axis=0),
        helper.make_node("Gather", [f"{table}_scale", ids], [f"{base}_scale"], name=f"{base}_scale", axis=0),
        helper.make_node("Cast", [f"{base}_q"], [f"{base}_f32"], name=f"{base}_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{base}_f32", f"{base}_scale"], list(node.output), name=node.name),
    ]
