"""Shapes a graph computes, at two concrete input sizes.

onnx's shape inference checks much of a graph, but takes some things on trust that a backend
refuses in the middle of a prediction: a Reshape's target, a recurrent node's initial state,
a Transpose's perm, a Slice's operand ranks, a time mask computed from the input's shape.  Here
the graph's named axes (batch, time, chars, source_time) get two sets of sizes (``AXIS_SIZES``)
that share no value; the nodes that compute shapes and indices are evaluated (onnx's reference
ops, on at most ``MAX_FOLD`` values) into constants; com.microsoft int8 ops stand in as their
standard twins; and strict inference must then give every output its declared shape at those
sizes, every Reshape the same number of values, every recurrent node inputs that fit, every
constant index that reaches a table (a padding id) a row of it, and no intermediate tensor an
absurd size.  A constant that fixes an axis, indexes past a table or asks for billions of values
shows as a ``BundleError`` when the bundle is opened, not as a backend's exception mid-run.

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from .errors import BundleError
from .graph_file import RECURRENT_GATES, REEXPORT, brief, is_int
from .manifest import MANIFEST_FILE

# Sizes given to the named axes for shape inference: two settings that share no value, so that a
# constant which fixes an axis (a Reshape to a static batch, a Slice past a window) is wrong in one.
AXIS_SIZES = (
    {"batch": 2, "time": 5, "chars": 3, "source_time": 4},
    {"batch": 3, "time": 7, "chars": 6, "source_time": 2},
)
# operands that are lists (rank 1) or scalars (rank 0), by op and input index (Operators.md, opset 17)
OPERAND_RANKS = {
    "Slice": {1: 1, 2: 1, 3: 1, 4: 1},
    "Unsqueeze": {1: 1},
    "Squeeze": {1: 1},
    "ReduceSum": {1: 1},
    "Reshape": {1: 1},
    "ConstantOfShape": {0: 1},
    "Range": {0: 0, 1: 0, 2: 0},
}
# ops that compute shapes and indices from constants and the inputs' shapes (rnnkit's time masks,
# character windows, state slices): folded to constants so that inference sees their values
FOLDABLE = {
    "Shape",
    "Gather",
    "Range",
    "Unsqueeze",
    "Squeeze",
    "Cast",
    "Concat",
    "Slice",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "ConstantOfShape",
    "Reshape",
    "Equal",
    "Less",
    "Not",
}
# ops that pass values on unchanged (in value, if not in shape): indices are followed through them
PASS_VALUES = {"Concat", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Slice", "Transpose"}
MAX_FOLD = 4096  # elements: shapes, indices and masks of a few small inputs


def check_shapes(model: onnx.ModelProto, path: Path, record: dict) -> None:
    """For inputs of two different sizes, every output the graph computes has the declared shape at
    those sizes: the widths the manifest records, and each named axis the size the inputs gave it."""
    for sizes in AXIS_SIZES:
        for out, dims in _inferred_outputs(model, path, sizes).items():
            declared = next(d["shape"] for d in record["outputs"] if d["name"] == out)
            want = [sizes.get(x) if isinstance(x, str) else x for x in declared]
            if (
                dims is None
                or len(dims) != len(want)
                or any(is_int(got) and w is not None and got != w for got, w in zip(dims, want))
            ):
                shown = "unknown" if dims is None else ["?" if x is None else x for x in dims]
                raise BundleError(
                    f"{path}: for inputs sized {sizes} the graph computes {out!r} with shape {shown}, "
                    f"but {MANIFEST_FILE} declares {declared}, i.e. {want}; the graph was changed, "
                    f"{REEXPORT}"
                )


def _inferred_outputs(model: onnx.ModelProto, path: Path, sizes: dict[str, int]) -> dict[str, list | None]:
    """Output name -> dims that strict shape inference derives from the graph itself for inputs of
    the given axis ``sizes`` (an int, a symbol, or None), ignoring what the outputs declare.  Run on
    a data-free copy in which the large tensors are typed inputs and com.microsoft ops their
    standard twins (onnx has no shapes for those), so int8 graphs are followed to their outputs too."""
    graph = onnx.GraphProto(name=model.graph.name)
    graph.node.extend(model.graph.node)
    constants = {t.name for t in model.graph.initializer}
    graph.input.extend(v for v in model.graph.input if v.name not in constants)  # copies: the model stays as is
    for value in graph.input:
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.dim_value = sizes.get(d.dim_param, 1)
    for t in model.graph.initializer:  # shape constants stay (data_prop reads them), weights go
        if t.data_type in (TensorProto.INT64, TensorProto.INT32) and math.prod(t.dims) <= MAX_FOLD:
            graph.initializer.append(t)
        else:
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for o in model.graph.output:
        graph.output.add(name=o.name).type.tensor_type.elem_type = o.type.tensor_type.elem_type
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for i, node in enumerate(graph.node):
        twin = _standard_twin(node, shapes, graph)
        if twin is not None:
            graph.node[i].CopyFrom(twin)
    known = _fold_shapes(graph, path, sizes)
    _check_gather_constants(graph, known, path)
    shim = onnx.helper.make_model(
        graph, opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")], ir_version=model.ir_version
    )
    try:
        inferred = onnx.shape_inference.infer_shapes(shim, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx's InferenceError, or anything its C++ side raises
        raise BundleError(
            f"{path}: shapes do not fit together for inputs sized {sizes} ({type(exc).__name__}: "
            f"{brief(exc, 300)}); the file is corrupted or was changed, {REEXPORT}"
        ) from None
    dims: dict[str, list | None] = {t.name: list(t.dims) for t in inferred.graph.initializer}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        tt = v.type.tensor_type
        dims[v.name] = (
            None
            if not tt.HasField("shape")
            else [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in tt.shape.dim]
        )
    largest = max((math.prod(t.dims) for t in model.graph.initializer), default=1)
    bound = max(1 << 22, 64 * largest)  # at these few tokens, no real intermediate comes near
    for name, shape in dims.items():
        if shape and all(map(is_int, shape)) and math.prod(shape) > bound:
            raise BundleError(
                f"{path}: for inputs sized {sizes} the graph computes {name!r} with shape {shape}, "
                f"{math.prod(shape)} values (a model with {largest}-value weights needs far fewer): a "
                f"prediction would exhaust memory; the file is corrupted or was changed, {REEXPORT}"
            )
    for node in graph.node:  # what onnx's inference takes on trust, and a backend would fail on mid-run
        problem = None
        if node.op_type == "Reshape" and len(node.input) > 1:  # inferred from the target alone
            src, dst = dims.get(node.input[0]), dims.get(node.output[0])
            if src and dst and all(map(is_int, src + dst)) and math.prod(src) != math.prod(dst):
                problem = f"turns {src} into {dst}"
        elif node.op_type in RECURRENT_GATES:  # inferred from X and hidden_size alone
            problem = _recurrent_inputs(node, dims)
        elif node.op_type in OPERAND_RANKS:  # onnx infers through a scalar where a backend wants a list
            wrong = {
                i: dims.get(node.input[i])
                for i, rank in OPERAND_RANKS[node.op_type].items()
                if len(node.input) > i
                and node.input[i]
                and dims.get(node.input[i]) is not None
                and len(dims[node.input[i]] or ()) != rank
            }
            problem = f"has operand(s) {wrong} of the wrong rank" if wrong else None
        elif node.op_type == "Transpose" and dims.get(node.input[0]) is not None:  # perm is not checked
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            rank = len(dims[node.input[0]] or ())
            if perm is not None and sorted(perm) != list(range(rank)):
                problem = f"has perm {perm} for a rank-{rank} input"
        if problem:
            raise BundleError(
                f"{path}: for inputs sized {sizes} {node.op_type} node {node.name!r} {problem}; the "
                f"file is corrupted or was changed, {REEXPORT}"
            )
    return {o.name: dims.get(o.name) for o in model.graph.output}


def _recurrent_inputs(node: onnx.NodeProto, dims: dict) -> str | None:
    """X (T, B, I) against W (D, G*H, I); sequence_lens (B,); initial_h / initial_c (D, B, H)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    d, hidden = 2 if attrs.get("direction") == b"bidirectional" else 1, attrs.get("hidden_size")
    x, w = dims.get(node.input[0]), dims.get(node.input[1])
    if x is None or w is None:
        return None
    if len(x) != 3 or len(w) != 3 or (is_int(x[2]) and is_int(w[2]) and x[2] != w[2]):
        return f"reads X {x} with W {w}"
    for i, want in ((4, [x[1]]), (5, [d, x[1], hidden]), (6, [d, x[1], hidden])):
        got = dims.get(node.input[i]) if len(node.input) > i and node.input[i] else None
        if got is not None and (
            len(got) != len(want) or any(is_int(g) and is_int(e) and g != e for g, e in zip(got, want))
        ):
            return f"reads input {i} shaped {got} where X {x} and hidden_size {hidden} need {want}"
    return None


def _fold_size(node: onnx.NodeProto, inputs: list) -> float:
    """An upper bound on the elements ``node`` would produce, checked before computing it (a changed
    constant could ask ConstantOfShape or Range for billions)."""
    try:
        if node.op_type == "ConstantOfShape":
            shape = np.asarray(inputs[0]).reshape(-1)
            return math.prod(int(x) for x in shape) if (shape >= 0).all() else math.inf
        if node.op_type == "Range":
            start, limit, delta = (float(np.asarray(x).reshape(-1)[0]) for x in inputs[:3])
            return max(0.0, math.ceil((limit - start) / delta)) if delta else math.inf
        if node.op_type in ("Add", "Sub", "Mul", "Div", "Equal", "Less", "Not"):
            return math.prod(np.broadcast_shapes(*(np.shape(x) for x in inputs)))
        return sum(np.size(x) for x in inputs)  # gathers, slices, reshapes, concats: no larger than their inputs
    except (ValueError, TypeError, IndexError, OverflowError):
        return math.inf


def _fold_shapes(graph: onnx.GraphProto, path: Path, sizes: dict[str, int]) -> dict:
    """Evaluate, with onnx's reference ops, the nodes computed from small integer constants and from
    the shapes of inputs of ``sizes`` (already made concrete in ``graph``), and replace them by
    their values: a time mask from a changed constant is then as long as it is.  Returns every
    constant's value by name."""
    from onnx.reference import ReferenceEvaluator

    known = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    kept = []
    for node in graph.node:
        value = None
        if node.op_type == "Shape" and node.input[0] in shapes and not node.attribute:
            value = np.array(shapes[node.input[0]], np.int64)
        elif (
            node.op_type in FOLDABLE
            and node.op_type != "Shape"
            and len(node.output) == 1
            and node.input
            and all(not i or i in known for i in node.input)
            and _fold_size(node, [known[i] for i in node.input if i]) <= MAX_FOLD
        ):
            wrong = {
                i: list(np.shape(known[node.input[i]]))
                for i, rank in OPERAND_RANKS.get(node.op_type, {}).items()
                if len(node.input) > i and node.input[i] and np.ndim(known[node.input[i]]) != rank
            }
            if wrong:  # the reference ops accept what onnxruntime refuses
                raise BundleError(
                    f"{path}: {node.op_type} node {node.name!r} has operand(s) of the wrong rank "
                    f"{wrong}; the file is corrupted or was changed, {REEXPORT}"
                )
            try:
                # run() gives a list of outputs (its annotation also allows the dict of intermediate=True)
                value = ReferenceEvaluator(node).run(None, {i: known[i] for i in node.input if i})[0]  # type: ignore[index]
            except Exception as exc:  # a constant no backend could compute either
                raise BundleError(
                    f"{path}: for inputs sized {sizes} {node.op_type} node {node.name!r} fails on its "
                    f"constant inputs ({type(exc).__name__}: {brief(exc, 200)}); the file is corrupted "
                    f"or was changed, {REEXPORT}"
                ) from None
        if value is None or np.asarray(value).size > MAX_FOLD:
            kept.append(node)
            continue
        known[node.output[0]] = value = np.asarray(value)
        graph.initializer.append(onnx.numpy_helper.from_array(value, node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    return known


def _check_gather_constants(graph: onnx.GraphProto, known: dict, path: Path) -> None:
    """Constant indices (a padding id, a time index) that reach a Gather of a table, through the
    ops that pass values on, are inside the table: onnxruntime fails mid-run on one that is not."""
    producers = {out: node for node in graph.node for out in node.output}
    rows = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    rows.update({name: list(np.shape(value)) for name, value in known.items()})
    for node in graph.node:
        table = rows.get(node.input[0]) if node.op_type == "Gather" and len(node.input) == 2 else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if not table or not -len(table) <= axis < len(table):
            continue
        todo, seen = [node.input[1]], set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in known:
                value = np.asarray(known[name])
                if value.size and (value.min() < -table[axis] or value.max() >= table[axis]):
                    raise BundleError(
                        f"{path}: Gather node {node.name!r} reads a {table[axis]}-row table with "
                        f"constant indices {name!r} from {value.min()} to {value.max()}; the file is "
                        f"corrupted or was changed, {REEXPORT}"
                    )
            elif name in producers and producers[name].op_type in PASS_VALUES:
                todo += [i for i in producers[name].input[: 1 if producers[name].op_type != "Concat" else None] if i]


def _standard_twin(node: onnx.NodeProto, shapes: dict, graph: onnx.GraphProto) -> onnx.NodeProto | None:
    """DynamicQuantizeLSTM -> LSTM, DynamicQuantizeMatMul -> MatMul, over float inputs shaped like the
    fp32 weights they stand for (declared as graph inputs: dims, no data)."""

    def float_input(name: str, dims: list[int]) -> str:
        graph.input.append(onnx.helper.make_tensor_value_info(f"{name}.float", TensorProto.FLOAT, dims))
        return f"{name}.float"

    if node.domain != "com.microsoft" or len(node.input) < 2:
        return None
    w, r = shapes.get(node.input[1]), shapes.get(node.input[2]) if len(node.input) > 2 else None
    if node.op_type == "DynamicQuantizeMatMul" and w is not None:
        return onnx.helper.make_node(
            "MatMul", [node.input[0], float_input(node.input[1], w)], list(node.output), name=node.name
        )
    if node.op_type == "DynamicQuantizeLSTM" and w is not None and r is not None and len(w) == 3 and len(r) == 3:
        inputs = [
            node.input[0],
            float_input(node.input[1], [w[0], w[2], w[1]]),
            float_input(node.input[2], [r[0], r[2], r[1]]),
            *node.input[3:8],
        ]
        twin = onnx.helper.make_node("LSTM", inputs, list(node.output), name=node.name)
        twin.attribute.extend(a for a in node.attribute if a.name in ("hidden_size", "direction"))
        return twin
    return None
