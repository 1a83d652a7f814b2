"""Reading one ONNX file of a bundle without trusting it.

``load_graph`` parses the file (any exception from a damaged one becomes a ``BundleError``) and,
before any tensor's data is read or a backend sees the graph, checks every tensor it holds --
initializers, sparse initializers and node attributes, in the main graph, in every subgraph
(If/Loop/Scan bodies) and in local functions: a type rnnkit writes, dims in 0..``MAX_DIM``,
exactly the data its dims say, and all of them together at most ``MAX_TENSOR_BYTES`` (so a file
cannot make opening it allocate more than it holds); external data only inside the bundle folder
and only in files the manifest lists, hence hashed.  Then: every string is UTF-8, the opsets and
IR version are rnnkit's, every op is one rnnkit's exporters write (``OPS``: If/Loop/Scan are not),
no integer attribute is past int32, and onnx's checker passes.

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import onnx
from google.protobuf.message import Message
from onnx import AttributeProto, TensorProto

from .errors import BundleError
from .manifest import MANIFEST_FILE, OPSET

MAX_DIM = 1 << 24  # no declared size in an rnnkit graph comes near 16 M; larger is corruption
MAX_RANK = 8  # rnnkit's tensors have at most 4 dimensions
MAX_NODES = 100_000  # rnnkit's graphs have a few hundred nodes; every check below is linear in them
MAX_GRAPH_BYTES = 2 << 30  # protobuf's own limit on one message; weights past it are external data
MAX_TENSOR_BYTES = 4 << 30  # all tensors of one graph: a bound on what opening a bundle may allocate
# The ops rnnkit's exporters write (export/graph*.py, export/task_*.py, export/quantize.py,
# export/portable.py).  A graph with any other op (If/Loop/Scan included) was not written by rnnkit:
# refused here rather than met by a backend in the middle of a prediction.
OPS = {
    "": {
        "Add",
        "Cast",
        "Concat",
        "ConstantOfShape",
        "DequantizeLinear",
        "Div",
        "Equal",
        "Expand",
        "GRU",
        "Gather",
        "GatherElements",
        "Gemm",
        "LSTM",
        "Less",
        "LogSoftmax",
        "MatMul",
        "Mul",
        "Not",
        "RNN",
        "Range",
        "ReduceMax",
        "ReduceSum",
        "Reshape",
        "Shape",
        "Slice",
        "Softmax",
        "Squeeze",
        "Sub",
        "Tanh",
        "Transpose",
        "Unsqueeze",
        "Where",
    },
    "com.microsoft": {"DynamicQuantizeLSTM", "DynamicQuantizeMatMul"},
}
RECURRENT_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4, "DynamicQuantizeLSTM": 4}
# the tensor types rnnkit writes (fp32 weights, int8 tables and weights, int64 shapes and indices, int32)
ITEMSIZE: dict[int, int] = {TensorProto.FLOAT: 4, TensorProto.INT8: 1, TensorProto.INT32: 4, TensorProto.INT64: 8}
OPSETS = {"": OPSET, "com.microsoft": 1}  # what rnnkit's graphs import; onnxruntime binds ops by these
IR_VERSIONS = range(7, 11)  # rnnkit writes 8 (opset 17's); onnxruntime >= 1.17 loads 7..10
# where a tensor's values are when it has no raw_data (onnx.proto): int8 and int32 in int32_data
TYPED_FIELD: dict[int, str] = {TensorProto.FLOAT: "float_data", TensorProto.INT64: "int64_data"}
REEXPORT = "re-export the bundle"


def inside(root: Path, name: str) -> Path | None:
    """``root / name`` resolved (symlinks followed), or None when that is outside ``root`` or not a
    path at all (empty, a NUL byte)."""
    if not isinstance(name, str) or not name or "\0" in name:
        return None
    try:
        target = (root / name).resolve()
    except (OSError, ValueError, RuntimeError):  # RuntimeError: a symlink loop on older Pythons
        return None
    return target if root.resolve() in target.parents else None


def brief(exc: BaseException, limit: int) -> str:
    """An exception's text on one line, cut to ``limit`` characters (onnx's can run to pages)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _graphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph in its node attributes (If/Loop/Scan bodies), recursively."""
    yield graph
    for node in graph.node:
        yield from _node_graphs(node)


def _node_graphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield from _graphs(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            for g in attr.graphs:
                yield from _graphs(g)


def _all_nodes(model: onnx.ModelProto):
    for graph in _graphs(model.graph):
        yield from graph.node
    for function in model.functions:
        for node in function.node:
            yield node
            for g in _node_graphs(node):
                yield from g.node


def _all_tensors(model: onnx.ModelProto):
    """(where, tensor) for every tensor the file holds: initializers, sparse initializers and
    node attributes, in the main graph, in every subgraph and in local functions."""
    for graph in _graphs(model.graph):
        for t in graph.initializer:
            yield f"initializer {t.name!r}", t
        for s in graph.sparse_initializer:
            yield f"sparse initializer {s.values.name!r}", s.values
            yield f"sparse initializer {s.values.name!r} indices", s.indices
    for node in _all_nodes(model):
        for attr in node.attribute:
            what = f"attribute {attr.name!r} of node {node.name!r}"
            if attr.type == AttributeProto.TENSOR:
                yield what, attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from ((what, t) for t in attr.tensors)
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                yield what, attr.sparse_tensor.values
                yield what, attr.sparse_tensor.indices


def load_graph(model_path: Path, root: Path, files: dict) -> onnx.ModelProto:
    """Parse one graph and check every tensor in it before any of its data is read or used."""
    size = model_path.stat().st_size
    if size > MAX_GRAPH_BYTES:
        raise BundleError(
            f"{model_path}: {size} bytes, more than an ONNX file can hold ({MAX_GRAPH_BYTES >> 30} GiB); "
            f"the file is corrupted, {REEXPORT}"
        )
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError family; a deep nesting RecursionError
        raise BundleError(
            f"{model_path}: not a readable ONNX file ({type(exc).__name__}); the bundle is corrupted, re-export it"
        ) from None
    nodes = sum(1 for _ in _all_nodes(model))
    if nodes > MAX_NODES:
        raise BundleError(
            f"{model_path}: {nodes} nodes, more than rnnkit opens ({MAX_NODES}; its graphs have a few "
            f"hundred); the file is corrupted or not an rnnkit graph, {REEXPORT}"
        )
    _check_strings(model_path, model)  # first: a name or location is used as text from here on
    total, external = 0, False
    for what, tensor in _all_tensors(model):
        total += _check_tensor(model_path, root, files, what, tensor)
        external |= tensor.data_location == TensorProto.EXTERNAL
        if total > MAX_TENSOR_BYTES:
            raise BundleError(
                f"{model_path}: its tensors hold more than {MAX_TENSOR_BYTES >> 30} GiB, more than "
                f"rnnkit opens; the file is corrupted or not an rnnkit graph, {REEXPORT}"
            )
    if external:  # before the checker, which looks for the data beside the current directory otherwise
        try:
            onnx.load_external_data_for_model(model, str(root))
        except Exception as exc:  # checked above; this is the file system changing under us
            raise BundleError(
                f"{model_path}: its external data could not be read ({type(exc).__name__}: "
                f"{brief(exc, 200)}); re-copy the whole bundle directory"
            ) from None
    opsets = {o.domain: o.version for o in model.opset_import}
    if (
        len(opsets) != len(model.opset_import)
        or opsets.get("") != OPSET
        or any(OPSETS.get(d) != v for d, v in opsets.items())
        or model.ir_version not in IR_VERSIONS
    ):
        raise BundleError(
            f"{model_path}: imports opsets {opsets} with IR version {model.ir_version}; rnnkit writes "
            f"{OPSETS} (com.microsoft only with int8) and IR "
            f"{IR_VERSIONS.start}..{IR_VERSIONS.stop - 1}; "
            f"the file is corrupted or was not written by rnnkit, {REEXPORT}"
        )
    problems = sorted(
        {f"{n.domain or 'ai.onnx'}.{n.op_type}" for n in _all_nodes(model) if n.op_type not in OPS.get(n.domain, ())}
    )
    # onnx's checks read integer attributes as int32 and onnxruntime as int64: past int32 they disagree
    problems += sorted(
        {
            f"{n.name!r}.{a.name}"
            for n in _all_nodes(model)
            for a in n.attribute
            if any(abs(v) >= 1 << 31 for v in ([a.i] if a.type == AttributeProto.INT else a.ints))
        }
    )
    for graph in _graphs(model.graph):  # onnxruntime refuses a repeated node name (onnx's checker does not)
        names = Counter(n.name for n in graph.node if n.name)
        problems += sorted(f"node name {x!r} {k} times" for x, k in names.items() if k > 1)
    if problems:
        raise BundleError(
            f"{model_path}: has {problems}, which rnnkit's exporters never write (ops: OPS in "
            f"runtime/graph_file.py; integer attributes within 2^31; unique node names); the file is "
            f"corrupted or was not written by rnnkit, {REEXPORT}"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx's ValidationError, or anything its C++ side raises
        raise BundleError(
            f"{model_path}: not a valid ONNX graph ({type(exc).__name__}: {brief(exc, 300)}); "
            f"the file is corrupted, {REEXPORT}"
        ) from None
    return model


def _check_strings(model_path: Path, model) -> None:
    """Every string in the file is UTF-8.  protobuf (upb) hands an invalid one back as bytes, which
    would fail wherever it is first used as text (a backend, mid-run) rather than here."""

    def walk(message) -> None:
        fields = (
            [
                (f, getattr(message, f.name))
                for f in (message.DESCRIPTOR.fields_by_name["name"], message.DESCRIPTOR.fields_by_name["doc_string"])
            ]
            + [(f, v) for f, v in message.ListFields() if f.message_type is not None]
            if isinstance(message, TensorProto)
            else message.ListFields()
        )  # a tensor's data stays unread
        for descriptor, value in fields:
            if descriptor.type == descriptor.TYPE_STRING:
                if any(isinstance(v, bytes) for v in ([value] if isinstance(value, (str, bytes)) else value)):
                    raise BundleError(
                        f"{model_path}: a {type(message).__name__}'s {descriptor.name!r} is not UTF-8 "
                        f"text; the file is corrupted, {REEXPORT}"
                    )
            elif isinstance(value, Message):
                walk(value)
            elif descriptor.message_type is not None:  # a repeated message field
                for item in value:
                    walk(item)

    walk(model)


def _check_tensor(model_path: Path, root: Path, files: dict, what: str, tensor: onnx.TensorProto) -> int:
    """One tensor: a numeric type, bounded dims, exactly the data its dims say (inside the file, or
    in an external file the manifest lists).  Returns its size in bytes."""

    def refuse(problem: str):
        raise BundleError(
            f"{model_path}: {what} {problem}; the file is corrupted or was not written by rnnkit, {REEXPORT}"
        )

    if tensor.data_type not in ITEMSIZE:
        kind = TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in TensorProto.DataType.values() else ""
        refuse(
            f"has data type {tensor.data_type} {kind}, expected one of "
            f"{sorted(TensorProto.DataType.Name(t) for t in ITEMSIZE)}"
        )
    if (
        len(tensor.dims) > MAX_RANK
        or any(d < 0 or d > MAX_DIM for d in tensor.dims)
        or math.prod(d for d in tensor.dims if d) > MAX_TENSOR_BYTES
    ):  # even an empty tensor: numpy reshapes by the product
        refuse(
            f"declares shape {list(tensor.dims)}; rnnkit's tensors have at most {MAX_RANK} dimensions of 0..{MAX_DIM}"
        )
    count = math.prod(tensor.dims)
    nbytes = count * ITEMSIZE[tensor.data_type]
    if nbytes > MAX_TENSOR_BYTES:
        refuse(
            f"declares shape {list(tensor.dims)}: {nbytes} bytes, more than rnnkit opens ({MAX_TENSOR_BYTES >> 30} GiB)"
        )
    if tensor.HasField("segment"):
        refuse("is split into segments, which rnnkit never writes")
    if tensor.data_location == TensorProto.EXTERNAL:
        _check_external(model_path, root, files, what, tensor, nbytes, refuse)
        return nbytes
    if tensor.data_location != TensorProto.DEFAULT:
        refuse(f"has data_location {tensor.data_location}")
    if tensor.HasField("raw_data"):
        stored, unit = len(tensor.raw_data), nbytes
    else:
        stored, unit = len(getattr(tensor, TYPED_FIELD.get(tensor.data_type, "int32_data"))), count
    if stored != unit:
        refuse(
            f"declares shape {list(tensor.dims)} ({count} values) but holds "
            f"{stored} {'bytes' if tensor.HasField('raw_data') else 'values'}"
        )
    return nbytes


def _check_external(model_path: Path, root: Path, files: dict, what: str, tensor, nbytes: int, refuse) -> None:
    """External data: inside the bundle, in a file the manifest lists (so its sha256 was checked), and
    the tensor's bytes lie inside that file."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    target = inside(root, location)
    if target is None or os.path.isabs(location):
        raise BundleError(
            f"{model_path}: {what} points at external data {location!r} outside the bundle "
            f"directory; refusing to read it (path traversal)"
        )
    listed = {inside(root, name) for name in files} - {None}
    if target not in listed:
        raise BundleError(
            f"{model_path}: {what} reads external data from {location!r}, which {MANIFEST_FILE} "
            f"'files' does not list, so no checksum covers it; {REEXPORT}"
        )
    if not target.is_file():
        raise BundleError(
            f"{model_path}: {what} needs external data {location!r}, which is missing; "
            f"re-copy the whole bundle directory"
        )
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
    except ValueError:
        refuse(f"has external data offset/length {info.get('offset')!r}/{info.get('length')!r}, not integers")
    size = target.stat().st_size
    if length == -1:
        length = size - offset  # onnx reads to the end of the file
    if offset < 0 or length != nbytes or offset + length > size:
        refuse(f"needs {nbytes} bytes of {location!r} ({size} bytes) at offset {offset} (length {length})")
