"""Int8 weight quantization of the graphs rnnkit writes (``rnnkit.export.task_*``), every task's.

onnxruntime's ``quantize_dynamic`` has no GRU/RNN handler, so we rewrite the graph ourselves.
Every scheme is symmetric int8 (zero point 0, range [-127, 127], scale = max|w| / 127), and
every decision is recorded in the returned ``params`` for the manifest:

* Embedding table: int8 per row. ``Gather(q_table, ids)`` and ``Gather(scale, ids)`` ->
  ``Cast`` -> ``Mul``: only the gathered rows are dequantized, the table stays int8 in memory.
  Always per row (``per_channel`` does not apply): rows differ a lot in norm.
* LSTM: ``com.microsoft.DynamicQuantizeLSTM`` (ContribOperators.md): real int8 GEMMs in
  onnxruntime, activations quantized on the fly.  ``W``/``R`` are transposed to
  ``[D, input, 4H]`` / ``[D, H, 4H]`` as that op expects; scales ``[D, 4H]`` per channel
  (onnxruntime accepts them; checked by running it) or ``[D]`` per tensor; int8 zero points 0.
* GRU and RNN: weight-only int8, ``DequantizeLinear(W_q int8 [D*G*H, I], scale [D*G*H],
  zero_point int8 0 [D*G*H], axis=0) -> Reshape([D, G*H, I]) -> GRU.W`` (same for ``R``).
  The numba backend recognises this canonical form and runs an int8 kernel; onnxruntime
  constant-folds it back to fp32 at load, so there it saves file size and download, not RAM
  or time.  ``per_channel=False`` keeps the form with one scale per direction repeated on rows.
* MatMul weights with at least ``min_matmul_elements`` values (LM heads, attention keys and
  projections): ``com.microsoft.DynamicQuantizeMatMul`` with int8 weights per output channel,
  the activation quantized to uint8 at run time.  Not ``DequantizeLinear -> MatMul``: onnxruntime
  (1.31) rewrites that pair into ``MatMulNBits``, which quantizes activations its own way, so the
  graph would no longer say what onnxruntime computes; this op is computed identically by both
  backends.  Gemm weights that large keep weight-only ``DequantizeLinear`` per output channel.
  Smaller weights (the head with few labels, attention ``v``) and all biases stay fp32: a few
  KiB, and the head decides the label.

Imports onnx and numpy only; the numbers are validated by the caller against the fp32 graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rnnkit.export.check import MS_DOMAIN

QMAX = 127  # symmetric int8; -128 unused so that -q is always representable
MIN_MATMUL_ELEMENTS = 16384  # smaller MatMul/Gemm weights stay fp32 (128x128 and up are quantized)


def quantize_symmetric(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and float32 scales along ``axis`` (None: one scale); max|w| -> 127."""
    w = np.asarray(w, dtype=np.float32)
    if axis is None:
        amax = np.max(np.abs(w), keepdims=True)
    else:
        others = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        amax = np.max(np.abs(w), axis=others, keepdims=True)
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)  # all-zero rows: any scale
    q = np.clip(np.rint(w / scale), -QMAX, QMAX).astype(np.int8)
    return q, scale


class _Rewriter:
    def __init__(self, model: onnx.ModelProto):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.inits = {t.name: numpy_helper.to_array(t) for t in self.model.graph.initializer}
        self.new_inits: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []

    def const(self, name: str, value) -> str:
        self.new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type, inputs, outputs, name, domain="", **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, domain=domain, **attrs))

    def dequantize(self, name: str, w: np.ndarray, axis: int, per_channel: bool, out: str) -> dict:
        """``w`` -> int8 initializer + DequantizeLinear along ``axis`` producing ``out``."""
        q, scale = quantize_symmetric(w, axis if per_channel else None)
        scale = scale.reshape(-1) if per_channel else scale.reshape(())
        self.node(
            "DequantizeLinear",
            [
                self.const(f"{name}_quantized", q),
                self.const(f"{name}_scale", scale),
                self.const(f"{name}_zero_point", np.zeros(scale.shape, np.int8)),
            ],
            [out],
            f"{name}_dequantize",
            axis=axis,
        )
        return {"tensor": name, "shape": list(w.shape), "axis": axis if per_channel else None}


def _embedding(rw: _Rewriter, node: onnx.NodeProto) -> dict:
    name = node.input[0]
    q, scale = quantize_symmetric(rw.inits[name], axis=0)  # scale (V, 1)
    ids = node.input[1]
    rw.node("Gather", [rw.const(f"{name}_quantized", q), ids], [f"{node.name}_q"], f"{node.name}_q", axis=0)
    rw.node(
        "Gather", [rw.const(f"{name}_scale", scale), ids], [f"{node.name}_scale"], f"{node.name}_scale", axis=0
    )  # (B, T, 1)
    rw.node("Cast", [f"{node.name}_q"], [f"{node.name}_f32"], f"{node.name}_cast", to=TensorProto.FLOAT)
    rw.node("Mul", [f"{node.name}_f32", f"{node.name}_scale"], list(node.output), node.name)
    return {
        "node": node.name,
        "op": "Gather",
        "tensors": [name],
        "granularity": "per-row",
        "method": "int8 table; Gather rows and scales, Cast, Mul",
        "compute": "fp32 after gather",
    }


def _lstm(rw: _Rewriter, node: onnx.NodeProto, per_channel: bool) -> dict:
    ins = list(node.input) + [""] * (8 - len(node.input))
    extra = []
    for idx in (1, 2):  # W (D, 4H, I) -> (D, I, 4H); R (D, 4H, H) -> (D, H, 4H)
        name = ins[idx]
        w = rw.inits[name]  # (D, 4H, in)
        d, rows, cols = w.shape
        if per_channel:  # one scale per (direction, gate row), reduced over the input axis
            q, scale = quantize_symmetric(w.reshape(d * rows, cols), axis=0)
            q, scale = q.reshape(d, rows, cols), scale.reshape(d, rows)  # scale (D, 4H)
        else:
            parts = [quantize_symmetric(w[i], axis=None) for i in range(d)]
            q = np.stack([p[0] for p in parts])
            scale = np.array([p[1].item() for p in parts], np.float32)  # (D,)
        ins[idx] = rw.const(f"{name}_quantized", np.ascontiguousarray(q.transpose(0, 2, 1)))
        extra += [rw.const(f"{name}_scale", scale), rw.const(f"{name}_zero_point", np.zeros(scale.shape, np.int8))]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "layout"}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    rw.node("DynamicQuantizeLSTM", ins[:8] + extra, list(node.output), node.name, domain=MS_DOMAIN, **attrs)
    return {
        "node": node.name,
        "op": "com.microsoft.DynamicQuantizeLSTM",
        "tensors": [node.input[1], node.input[2]],
        "granularity": "per-channel" if per_channel else "per-direction",
        "method": "int8 W/R transposed to [D, in, 4H]; activations quantized dynamically (uint8)",
        "compute": "int8 GEMM in onnxruntime",
    }


def _gru_rnn(rw: _Rewriter, node: onnx.NodeProto, per_channel: bool) -> dict:
    new_inputs = list(node.input)
    for idx in (1, 2):
        name = node.input[idx]
        w = rw.inits[name]  # (D, G*H, I)
        d, rows, cols = w.shape
        if per_channel:
            q, scale = quantize_symmetric(w.reshape(d * rows, cols), axis=0)
        else:  # one scale per direction, repeated on its rows: same canonical form
            parts = [quantize_symmetric(w[i], axis=None) for i in range(d)]
            q = np.concatenate([p[0] for p in parts])
            scale = np.repeat([p[1].item() for p in parts], rows).astype(np.float32)
        scale = scale.reshape(-1)
        rw.node(
            "DequantizeLinear",
            [
                rw.const(f"{name}_quantized", q),
                rw.const(f"{name}_scale", scale),
                rw.const(f"{name}_zero_point", np.zeros(d * rows, np.int8)),
            ],
            [f"{name}_flat"],
            f"{name}_dequantize",
            axis=0,
        )
        rw.node(
            "Reshape",
            [f"{name}_flat", rw.const(f"{name}_shape", np.array([d, rows, cols], np.int64))],
            [f"{name}_dequantized"],
            f"{name}_reshape",
        )
        new_inputs[idx] = f"{name}_dequantized"
    rw.nodes.append(helper.make_node(node.op_type, new_inputs, list(node.output), name=node.name))
    rw.nodes[-1].attribute.extend(node.attribute)
    return {
        "node": node.name,
        "op": f"DequantizeLinear -> Reshape -> {node.op_type}",
        "tensors": [node.input[1], node.input[2]],
        "granularity": "per-channel" if per_channel else "per-direction",
        "method": "weight-only int8; numba runs it as int8, onnxruntime folds it to fp32 at load",
        "compute": "int8 weights (numba) / fp32 (onnxruntime)",
    }


def _matmul(rw: _Rewriter, node: onnx.NodeProto, per_channel: bool) -> dict:
    name = node.input[1]
    w = rw.inits[name]
    if node.op_type == "MatMul" and w.ndim == 2:
        q, scale = quantize_symmetric(w, 1 if per_channel else None)
        scale = scale.reshape(-1) if per_channel else scale.reshape(())
        rw.node(
            "DynamicQuantizeMatMul",
            [
                node.input[0],
                rw.const(f"{name}_quantized", q),
                rw.const(f"{name}_scale", scale),
                rw.const(f"{name}_zero_point", np.zeros(scale.shape, np.int8)),
            ],
            list(node.output),
            node.name,
            domain=MS_DOMAIN,
        )
        return {
            "node": node.name,
            "op": "DynamicQuantizeMatMul",
            "tensors": [name],
            "granularity": "per-channel" if per_channel else "per-tensor",
            "axis": 1 if per_channel else None,
            "method": "int8 weights; activations quantized to uint8 at run time",
            "compute": "int8 (both backends, the same numbers)",
        }
    trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
    axis = 0 if (node.op_type == "Gemm" and trans_b) else 1  # the output-channel axis of B
    info = rw.dequantize(name, rw.inits[name], axis, per_channel, f"{name}_dequantized")
    new = helper.make_node(
        node.op_type, [node.input[0], f"{name}_dequantized", *node.input[2:]], list(node.output), name=node.name
    )
    new.attribute.extend(node.attribute)
    rw.nodes.append(new)
    return {
        "node": node.name,
        "op": f"DequantizeLinear -> {node.op_type}",
        "tensors": [name],
        "granularity": "per-channel" if per_channel else "per-tensor",
        "axis": info["axis"],
        "method": "weight-only int8",
        "compute": "fp32 after dequantize",
    }


def quantize_graph(
    model: onnx.ModelProto, per_channel: bool = True, *, min_matmul_elements: int = MIN_MATMUL_ELEMENTS
) -> tuple[onnx.ModelProto, dict]:
    """fp32 rnnkit graph (any task's, encoder and decoder included) -> (int8 graph, quantization
    parameters for the manifest)."""
    rw = _Rewriter(model)
    decisions = []
    for node in rw.model.graph.node:
        first_const = node.input[0] in rw.inits if node.input else False
        second = node.input[1] if len(node.input) > 1 else ""
        if node.op_type == "Gather" and first_const and rw.inits[node.input[0]].dtype == np.float32:
            decisions.append(_embedding(rw, node))
        elif node.op_type == "LSTM":
            decisions.append(_lstm(rw, node, per_channel))
        elif node.op_type in ("GRU", "RNN"):
            decisions.append(_gru_rnn(rw, node, per_channel))
        elif node.op_type in ("MatMul", "Gemm") and second in rw.inits and rw.inits[second].size >= min_matmul_elements:
            decisions.append(_matmul(rw, node, per_channel))
        else:
            rw.nodes.append(node)

    graph = rw.model.graph
    used = {i for n in rw.nodes for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.node[:]
    graph.node.extend(rw.nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + rw.new_inits)
    if any(n.domain == MS_DOMAIN for n in rw.nodes):
        rw.model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    params = {
        "scheme": "int8-symmetric",
        "bits": 8,
        "zero_point": 0,
        "per_channel": per_channel,
        "min_matmul_elements": min_matmul_elements,
        "ops": decisions,
        "fp32_tensors": sorted(t.name for t in kept if t.data_type == TensorProto.FLOAT),
    }
    return rw.model, params


quantize_classifier = quantize_graph  # its first name: the classifier was the first graph it served
