"""Glue and elementwise ONNX ops of the numba backend, in plain numpy.

These ops move little data compared with the recurrent kernels (shape arithmetic,
embedding lookups, the classifier head), so numpy is fast enough and easy to check;
numba is kept for the kernels where it pays (``rnn.py``, ``quant_ops.py``).  Every op
follows the contract of ``base.Op``: built once per node (attributes checked, refused
with ``UnsupportedError`` if unknown), then called with all inputs positionally (``None``
for omitted optional ones), returning a tuple.  ``opset`` is set on each op by the graph
loader after construction (the version of the node's domain), for the few ops whose
semantics changed between opsets (Softmax/LogSoftmax before 13).

Semantics follow https://onnx.ai/onnx/operators/ ; every op here is checked against the
ONNX conformance cases (``conformance.py``).  Must not import torch or onnxruntime.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from .base import Op, QuantizedWeight

# ONNX tensor element types numpy can hold; the rest (bfloat16, float8, int4, string, ...)
# are refused at load, by the graph loader and by ops whose attributes name a dtype.
NUMPY_DTYPES: dict[int, np.dtype] = {
    TensorProto.FLOAT: np.dtype(np.float32),
    TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.FLOAT16: np.dtype(np.float16),
    TensorProto.BOOL: np.dtype(np.bool_),
    TensorProto.INT8: np.dtype(np.int8),
    TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.INT16: np.dtype(np.int16),
    TensorProto.UINT16: np.dtype(np.uint16),
    TensorProto.INT32: np.dtype(np.int32),
    TensorProto.UINT32: np.dtype(np.uint32),
    TensorProto.INT64: np.dtype(np.int64),
    TensorProto.UINT64: np.dtype(np.uint64),
}


def numpy_dtype(elem_type: int) -> np.dtype | None:
    """The numpy dtype of an ONNX element type, or None if numpy cannot represent it."""
    return NUMPY_DTYPES.get(elem_type)


class NumpyOp(Op):
    """An op whose ``__call__`` is ``fn(self, *inputs) -> array``, wrapped into a 1-tuple."""

    def __call__(self, *xs):
        return (self.compute(*xs),)

    def compute(self, *xs):  # pragma: no cover - abstract
        raise NotImplementedError


def _elementwise(fn, name):
    # fresh_output: every call returns a new array (passes.reuse_inplace may compute an Add/Mul into it)
    cls = type(name, (NumpyOp,), {"compute": lambda self, *xs: np.asarray(fn(*xs)), "fresh_output": True})
    return cls


def _div(a, b):
    if np.issubdtype(a.dtype, np.integer):  # ONNX integer Div truncates toward zero (C semantics)
        q = np.abs(a) // np.where(b == 0, 1, np.abs(b))
        return (np.sign(a) * np.sign(b) * q).astype(a.dtype)
    return np.divide(a, b)


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype)


def _log(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


Add = _elementwise(np.add, "Add")
Sub = _elementwise(np.subtract, "Sub")
Mul = _elementwise(np.multiply, "Mul")
Div = _elementwise(_div, "Div")
Neg = _elementwise(np.negative, "Neg")
Tanh = _elementwise(np.tanh, "Tanh")
Sigmoid = _elementwise(_sigmoid, "Sigmoid")
Relu = _elementwise(lambda x: np.maximum(x, np.zeros((), x.dtype)), "Relu")
Exp = _elementwise(np.exp, "Exp")
Log = _elementwise(_log, "Log")
Less = _elementwise(np.less, "Less")
LessOrEqual = _elementwise(np.less_equal, "LessOrEqual")
Greater = _elementwise(np.greater, "Greater")
GreaterOrEqual = _elementwise(np.greater_equal, "GreaterOrEqual")
Equal = _elementwise(np.equal, "Equal")
Not = _elementwise(np.logical_not, "Not")
And = _elementwise(np.logical_and, "And")
Or = _elementwise(np.logical_or, "Or")
Xor = _elementwise(np.logical_xor, "Xor")


class Where(NumpyOp):
    """Where; a condition that is true everywhere (the usual time mask of a full-length step)
    returns ``x`` itself (unless it is a constant) when it already has the result's shape and dtype."""

    def compute(self, cond, x, y):
        if (
            1 not in self.consts
            and cond.size == 1
            and y.size == 1
            and cond.ndim <= x.ndim
            and y.ndim <= x.ndim
            and x.dtype == y.dtype
            and cond.dtype == np.bool_
            and cond.reshape(-1)[0]
        ):
            return x
        return np.asarray(np.where(cond, x, y))


class Identity(NumpyOp):
    def compute(self, x):
        return x


class Constant(NumpyOp):
    supported_attributes = frozenset({"value", "value_float", "value_floats", "value_int", "value_ints"})

    def __init__(self, node, consts):
        super().__init__(node, consts)
        if len(self.attrs) != 1:
            self.refuse(f"needs exactly one value attribute, got {sorted(self.attrs)}")
        ((key, value),) = self.attrs.items()
        if key == "value":
            dtype = numpy_dtype(value.data_type)
            if dtype is None:
                self.refuse(f"constant of unsupported dtype {value.data_type}")
            self.value = numpy_helper.to_array(value)
        elif key in ("value_float", "value_floats"):
            self.value = np.asarray(value, dtype=np.float32)
        else:
            self.value = np.asarray(value, dtype=np.int64)

    def compute(self):
        return self.value


class ConstantOfShape(NumpyOp):
    supported_attributes = frozenset({"value"})

    def __init__(self, node, consts):
        super().__init__(node, consts)
        value = self.attrs.get("value")
        if value is None:
            self.fill = np.zeros((), np.float32)
        else:
            if numpy_dtype(value.data_type) is None:
                self.refuse(f"value of unsupported dtype {value.data_type}")
            self.fill = numpy_helper.to_array(value).reshape(())

    def compute(self, shape):
        return np.full(tuple(int(d) for d in shape), self.fill, dtype=self.fill.dtype)


class Cast(NumpyOp):
    supported_attributes = frozenset({"to", "saturate", "round_mode"})

    def __init__(self, node, consts):
        super().__init__(node, consts)
        self.to = numpy_dtype(self.attr("to"))
        if self.to is None:
            self.refuse(f"cast to unsupported dtype {self.attr('to')} (numpy has no such type)")
        if self.attr("round_mode", "up") != "up":  # only matters for float8e8m0, which we refuse
            self.refuse(f"round_mode={self.attr('round_mode')!r}")

    def compute(self, x):
        if x.dtype.kind in "biu":  # nothing to warn about (np.errstate costs more than the cast)
            return x.astype(self.to)
        with np.errstate(invalid="ignore", over="ignore"):
            return x.astype(self.to)


class Shape(NumpyOp):
    supported_attributes = frozenset({"start", "end"})

    def compute(self, x):
        return np.asarray(x.shape[self.attr("start", 0) : self.attr("end", None)], dtype=np.int64)


class Size(NumpyOp):
    def compute(self, x):
        return np.asarray(x.size, dtype=np.int64)


class Reshape(NumpyOp):
    supported_attributes = frozenset({"allowzero"})

    def __init__(self, node, consts):
        super().__init__(node, consts)
        self.copy_zeros = not self.attr("allowzero", 0)  # 0 copies the input's dim
        shape = consts.get(1)
        self.shape = None if shape is None else [int(d) for d in shape]
        self.has_zero = self.shape is not None and 0 in self.shape

    def compute(self, x, shape):
        if self.shape is not None:
            if not (self.has_zero and self.copy_zeros):
                return x.reshape(self.shape)
            shape = self.shape
        else:
            shape = [int(d) for d in shape]
        if self.copy_zeros:
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return x.reshape(shape)


class Transpose(NumpyOp):
    supported_attributes = frozenset({"perm"})

    def __init__(self, node, consts):
        super().__init__(node, consts)
        perm = self.attr("perm")
        self.perm = tuple(perm) if perm else None

    def compute(self, x):
        return x.transpose(self.perm) if self.perm is not None else x.transpose()


class Concat(NumpyOp):
    supported_attributes = frozenset({"axis"})

    def compute(self, *xs):
        return np.concatenate([x for x in xs if x is not None], axis=self.attr("axis"))


def _axes(op, given):
    """``axes`` from the input (newer opsets) or the attribute (older ones); None if absent."""
    if given is not None:
        return [int(a) for a in given.reshape(-1)]
    axes = op.attr("axes")
    return None if axes is None else list(axes)


class Unsqueeze(NumpyOp):
    """Unsqueeze as a reshape (a view, like ``np.expand_dims``, for a fraction of its cost)."""

    supported_attributes = frozenset({"axes"})

    def __init__(self, node, consts):
        super().__init__(node, consts)
        given = consts.get(1)
        self.axes = _axes(self, given) if given is not None or 1 not in consts else None

    def compute(self, x, axes=None):
        axes = self.axes if self.axes is not None else _axes(self, axes)
        rank = x.ndim + len(axes)
        where = sorted(a % rank for a in axes)
        if len(set(where)) != len(where):
            raise ValueError(f"repeated axis in Unsqueeze axes {axes}")
        shape = list(x.shape)
        for a in where:
            shape.insert(a, 1)
        return x.reshape(shape)


class Squeeze(NumpyOp):
    supported_attributes = frozenset({"axes"})

    def __init__(self, node, consts):
        super().__init__(node, consts)
        given = consts.get(1)
        self.axes = _axes(self, given) if given is not None else None
        self.const_axes = 1 in consts or len(node.input) < 2 or not node.input[1]

    def compute(self, x, axes=None):
        axes = self.axes if self.const_axes else _axes(self, axes)
        if axes is None:
            return np.squeeze(x)
        return np.squeeze(x, axis=tuple(a % x.ndim for a in axes))


class Slice(NumpyOp):
    supported_attributes = frozenset({"starts", "ends", "axes"})  # opset 1 keeps them as attributes

    def __init__(self, node, consts):
        super().__init__(node, consts)
        # Constant starts/ends/axes/steps with every step positive: ONNX's clamping is Python's own
        # slice semantics, so the index is built once per input rank.
        self.slices = None
        given = [i for i in range(1, 5) if len(node.input) > i and node.input[i]]
        if given and all(i in consts for i in given):
            starts, ends = consts[1], consts[2]
            axes = consts.get(3)
            steps = consts.get(4)
        elif not given:
            starts, ends, axes, steps = self.attr("starts"), self.attr("ends"), self.attr("axes"), None
        else:
            return
        if starts is None or ends is None:
            return
        starts, ends = [int(v) for v in np.ravel(starts)], [int(v) for v in np.ravel(ends)]
        axes = list(range(len(starts))) if axes is None else [int(a) for a in np.ravel(axes)]
        steps = [1] * len(starts) if steps is None else [int(v) for v in np.ravel(steps)]
        if len({len(starts), len(ends), len(axes), len(steps)}) == 1 and all(v > 0 for v in steps):
            self.slices = [(a, slice(b, e, st)) for a, b, e, st in zip(axes, starts, ends, steps)]
            self.by_rank: dict[int, tuple] = {}

    def compute(self, x, starts=None, ends=None, axes=None, steps=None):
        if self.slices is not None:
            index = self.by_rank.get(x.ndim)
            if index is None:
                index = [slice(None)] * x.ndim
                for a, sl in self.slices:
                    index[a % x.ndim] = sl
                index = self.by_rank[x.ndim] = tuple(index)
            return x[index]
        if starts is None:
            starts, ends, axes = self.attr("starts"), self.attr("ends"), self.attr("axes")
        starts, ends = [int(s) for s in np.ravel(starts)], [int(e) for e in np.ravel(ends)]
        axes = list(range(len(starts))) if axes is None else [int(a) % x.ndim for a in np.ravel(axes)]
        steps = [1] * len(starts) if steps is None else [int(s) for s in np.ravel(steps)]
        index = [slice(None)] * x.ndim
        for start, end, axis, step in zip(starts, ends, axes, steps):
            dim = x.shape[axis]
            start = start + dim if start < 0 else start
            end = end + dim if end < 0 else end
            if step > 0:
                start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            else:  # negative step: start in [0, dim-1], end in [-1, dim-1], -1 = "past the front"
                start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            index[axis] = slice(start, None if end < 0 else end, step)
        return x[tuple(index)]


class Gather(NumpyOp):
    """Gather; a per-row int8 table (``QuantizedWeight``, axis 0) is looked up, then dequantized."""

    supported_attributes = frozenset({"axis"})
    quantized_inputs = frozenset({0})  # see passes.fold_quantized_weights: consts[0] may be a QuantizedWeight

    def __init__(self, node, consts):
        super().__init__(node, consts)
        self.axis = self.attr("axis", 0)
        table = consts.get(0)
        if isinstance(table, QuantizedWeight) and not self._rowwise(table):
            consts[0] = table.dequantize()

    def _rowwise(self, w):
        scale = np.asarray(w.scale)
        return self.axis == 0 and w.q.ndim == 2 and (scale.ndim == 0 or (scale.ndim == 1 and w.axis in (0, -1)))

    def compute(self, data, indices):
        data = self.consts.get(0, data)
        if isinstance(data, QuantizedWeight):
            rows = np.take(data.q, indices, axis=0).astype(np.float32)
            scale = np.asarray(data.scale, np.float32)
            zp = None if data.zero_point is None else np.asarray(data.zero_point).astype(np.float32)
            if scale.ndim == 1:
                scale = np.take(scale, indices)[..., None]
                zp = None if zp is None else np.take(zp, indices)[..., None]
            return (rows - zp) * scale if zp is not None else rows * scale
        return np.take(data, indices, axis=self.axis)


class GatherElements(NumpyOp):
    """GatherElements: ``out[i][j][k] = data[index[i][j][k]][j][k]`` (axis 0), any rank and axis.

    Negative indices count from the end; an index outside ``[-dim, dim)`` or indices of another
    rank are refused (numpy would wrap or broadcast, onnxruntime fails: never a different answer)."""

    supported_attributes = frozenset({"axis"})

    def compute(self, data, indices):
        if indices.ndim != data.ndim:
            raise ValueError(f"GatherElements indices have rank {indices.ndim}, data rank {data.ndim}")
        axis = self.attr("axis", 0)
        if not -data.ndim <= axis < data.ndim:
            raise ValueError(f"GatherElements axis {axis} is outside a rank-{data.ndim} input")
        axis %= data.ndim
        if any(i > d for a, (i, d) in enumerate(zip(indices.shape, data.shape)) if a != axis):
            raise ValueError(f"GatherElements indices {indices.shape} exceed data {data.shape} off axis {axis}")
        dim = data.shape[axis]
        if indices.size and (indices.min() < -dim or indices.max() >= dim):
            raise ValueError(f"GatherElements index outside [-{dim}, {dim}) on axis {axis}")
        index = np.where(indices < 0, indices + dim, indices)
        # take_along_axis broadcasts; slicing data to the indices' extent off the axis keeps
        # ONNX's semantics (indices may be smaller than data on the other axes)
        view = data[tuple(slice(None) if a == axis else slice(0, n) for a, n in enumerate(indices.shape))]
        return np.take_along_axis(view, index, axis=axis)


class Gemm(NumpyOp):
    supported_attributes = frozenset({"alpha", "beta", "transA", "transB"})
    fresh_output = True

    def compute(self, a, b, c=None):
        a = a.T if self.attr("transA", 0) else a
        b = b.T if self.attr("transB", 0) else b
        y = a @ b
        alpha, beta = self.attr("alpha", 1.0), self.attr("beta", 1.0)
        if alpha != 1.0:
            y = y * np.asarray(alpha, y.dtype)
        if c is not None:
            y = y + (c * np.asarray(beta, c.dtype) if beta != 1.0 else c)
        return y


class Range(NumpyOp):
    def compute(self, start, limit, delta):
        n = max(int(np.ceil((limit.item() - start.item()) / delta.item())), 0)
        return (start + np.arange(n, dtype=start.dtype) * delta).astype(start.dtype)


class Expand(NumpyOp):
    def compute(self, x, shape):
        out = np.broadcast_shapes(x.shape, tuple(int(d) for d in shape))
        return np.array(np.broadcast_to(x, out))


class Split(NumpyOp):
    supported_attributes = frozenset({"axis", "split", "num_outputs"})

    def __call__(self, x, split=None):
        axis = self.attr("axis", 0) % x.ndim
        dim = x.shape[axis]
        sizes = _axes(self, split) if split is not None else self.attr("split")
        if sizes is None:
            n = self.attr("num_outputs", len(self.node.output))
            chunk = -(-dim // n)  # ceil: the last chunk is the smaller one (opset 18)
            sizes = [min(chunk, dim - i * chunk) for i in range(n)]
        bounds = np.cumsum(sizes)[:-1]
        return tuple(np.split(x, bounds, axis=axis))


class Softmax(NumpyOp):
    """Softmax over ``axis`` (opset >= 13); before 13, over the input flattened to 2-D at ``axis``."""

    supported_attributes = frozenset({"axis"})
    log = False

    def compute(self, x):
        if self.opset >= 13:
            return self._softmax(x, self.attr("axis", -1))
        axis = self.attr("axis", 1) % x.ndim
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return self._softmax(flat, 1).reshape(x.shape)

    def _softmax(self, x, axis):
        shifted = x - np.max(x, axis=axis, keepdims=True)
        e = np.exp(shifted)
        s = np.sum(e, axis=axis, keepdims=True)
        return shifted - np.log(s) if self.log else e / s


class LogSoftmax(Softmax):
    log = True


class _Reduce(NumpyOp):
    supported_attributes = frozenset({"axes", "keepdims", "noop_with_empty_axes"})

    def compute(self, x, axes=None):
        axes = _axes(self, axes)
        if not axes:
            if self.attr("noop_with_empty_axes", 0):
                return x
            axes = None
        else:
            axes = tuple(a % x.ndim for a in axes)
        return self.reduce(x, axes, bool(self.attr("keepdims", 1)))


class ReduceSum(_Reduce):
    def reduce(self, x, axes, keepdims):
        return np.sum(x, axis=axes, keepdims=keepdims, dtype=x.dtype)


class ReduceMean(_Reduce):
    def reduce(self, x, axes, keepdims):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.mean(x, axis=axes, keepdims=keepdims).astype(x.dtype)


class ReduceMax(_Reduce):
    def reduce(self, x, axes, keepdims):
        if x.dtype == np.bool_:
            return np.any(x, axis=axes, keepdims=keepdims)
        lowest = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
        return np.max(x, axis=axes, keepdims=keepdims, initial=lowest)


class ArgMax(NumpyOp):
    supported_attributes = frozenset({"axis", "keepdims", "select_last_index"})

    def compute(self, x):
        axis = self.attr("axis", 0) % x.ndim
        if self.attr("select_last_index", 0):
            idx = x.shape[axis] - 1 - np.argmax(np.flip(x, axis), axis=axis)
        else:
            idx = np.argmax(x, axis=axis)
        idx = idx.astype(np.int64)
        return np.expand_dims(idx, axis) if self.attr("keepdims", 1) else idx


class TopK(NumpyOp):
    """TopK; ties go to the lower index (stable sort), as the spec asks."""

    supported_attributes = frozenset({"axis", "largest", "sorted"})

    def __call__(self, x, k):
        k = int(np.ravel(k)[0])
        axis = self.attr("axis", -1) % x.ndim
        keys = x.astype(np.float64) if np.issubdtype(x.dtype, np.unsignedinteger) else x
        if self.attr("largest", 1):
            keys = -keys
        order = np.argsort(keys, axis=axis, kind="stable")
        index = np.take(order, np.arange(k), axis=axis).astype(np.int64)
        return np.take_along_axis(x, index, axis=axis), index


OPS = {
    ("", "Add"): Add,
    ("", "And"): And,
    ("", "ArgMax"): ArgMax,
    ("", "Cast"): Cast,
    ("", "Concat"): Concat,
    ("", "Constant"): Constant,
    ("", "ConstantOfShape"): ConstantOfShape,
    ("", "Div"): Div,
    ("", "Equal"): Equal,
    ("", "Exp"): Exp,
    ("", "Expand"): Expand,
    ("", "Gather"): Gather,
    ("", "GatherElements"): GatherElements,
    ("", "Gemm"): Gemm,
    ("", "Greater"): Greater,
    ("", "GreaterOrEqual"): GreaterOrEqual,
    ("", "Identity"): Identity,
    ("", "Less"): Less,
    ("", "LessOrEqual"): LessOrEqual,
    ("", "Log"): Log,
    ("", "LogSoftmax"): LogSoftmax,
    ("", "Mul"): Mul,
    ("", "Neg"): Neg,
    ("", "Not"): Not,
    ("", "Or"): Or,
    ("", "Range"): Range,
    ("", "ReduceMax"): ReduceMax,
    ("", "ReduceMean"): ReduceMean,
    ("", "ReduceSum"): ReduceSum,
    ("", "Relu"): Relu,
    ("", "Reshape"): Reshape,
    ("", "Shape"): Shape,
    ("", "Sigmoid"): Sigmoid,
    ("", "Size"): Size,
    ("", "Slice"): Slice,
    ("", "Softmax"): Softmax,
    ("", "Split"): Split,
    ("", "Squeeze"): Squeeze,
    ("", "Sub"): Sub,
    ("", "Tanh"): Tanh,
    ("", "TopK"): TopK,
    ("", "Transpose"): Transpose,
    ("", "Unsqueeze"): Unsqueeze,
    ("", "Where"): Where,
    ("", "Xor"): Xor,
}
