"""Load an ONNX graph into a precomputed plan and run it: the numba backend's session.

At load: initializers and ``Constant`` nodes become numpy arrays; nodes are put in
topological order; every node's ``(domain, op_type)`` must be in ``OPS`` (the whole graph is
refused with one error listing every unsupported node otherwise); ``passes.fold_quantized_weights``
keeps int8 weights int8 (``QuantizedWeight``, handed only to the inputs an op lists in
``quantized_inputs``; other consumers get the dequantized array); nodes whose inputs are all
constant are folded; the rest become ``program.Step``s, which the passes rewrite (``passes.py``:
the recurrent step fusion, the prelude, MatMul + bias, in-place Add/Mul, liveness) and
``plan.compile_plan`` turns into one generated Python function: a run is a feed check and
straight-line calls.

Ops are called with every input positionally: runtime values, the constant (array or
``QuantizedWeight``, the object the op left in its ``consts``: None if it packed the weight
into its own copy) where the input is constant, ``None`` where an optional input is omitted.
Initializers that are also listed as graph inputs are treated as constants (not overridable by
feeds).

Must not import torch or onnxruntime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import BundleError, InputError, RnnkitError, UnsupportedError
from . import compile_notice, config
from . import matmul as _matmul
from . import ops as _ops
from . import passes as _passes
from . import quant_ops as _quant_ops
from .base import QuantizedWeight, node_label
from .ops import numpy_dtype
from .plan import compile_plan, feed_checker
from .program import Program, Step, StepFailed


def _rnn_ops() -> dict:
    try:
        from . import rnn_ops
    except ModuleNotFoundError as e:  # the RNN kernels are not installed / written yet
        if e.name and e.name.endswith("rnn_ops"):
            return {}
        raise
    return rnn_ops.OPS


OPS = {**_ops.OPS, **_matmul.OPS, **_quant_ops.OPS, **_rnn_ops()}
"""Every op the numba backend runs, keyed by ``(domain, op_type)``; the claimed set."""

_DOMAINS = {"": "", "ai.onnx": "", "com.microsoft": "com.microsoft"}


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output, like onnxruntime's ``NodeArg``."""

    name: str
    type: str  # onnxruntime spelling, e.g. 'tensor(float)'
    dtype: np.dtype | None  # None when the graph does not say
    shape: list | None  # ints, dim_param strings, None for unknown dims; None if rank unknown


def unsupported_types(model: onnx.ModelProto) -> list[str]:
    """Graph inputs/outputs/initializers whose type numpy cannot hold (``'x: BFLOAT16'``)."""
    g = model.graph
    problems = []
    for vi in list(g.input) + list(g.output):
        kind = vi.type.WhichOneof("value")
        if kind is None:
            continue  # untyped output: fine
        if kind != "tensor_type":
            problems.append(f"{vi.name}: {kind}")
        elif vi.type.tensor_type.elem_type and numpy_dtype(vi.type.tensor_type.elem_type) is None:
            problems.append(f"{vi.name}: {onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}")
    for t in g.initializer:
        if numpy_dtype(t.data_type) is None:
            problems.append(f"{t.name}: {onnx.TensorProto.DataType.Name(t.data_type)}")
    return problems


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    dtype = numpy_dtype(tt.elem_type) if tt.elem_type else None
    shape = None
    if tt.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    type_name = (
        onnx.helper.tensor_dtype_to_string(tt.elem_type).replace("TensorProto.", "").lower()
        if tt.elem_type
        else "unknown"
    )
    return TensorInfo(vi.name, f"tensor({type_name})", dtype, shape)


def _load_model(model) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, "<model>"
    if isinstance(model, bytes):
        try:
            return onnx.load_from_string(model), "<bytes>"
        except Exception as e:
            raise BundleError(f"<bytes>: not an ONNX model ({e})") from e
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise BundleError(f"{path}: no such ONNX file -- check the bundle path")
    try:
        return onnx.load(path), path
    except Exception as e:
        raise BundleError(f"{path}: cannot read the ONNX model ({e}) -- re-export the bundle") from e


def _topological(graph: onnx.GraphProto, available: set[str], where: str) -> list[onnx.NodeProto]:
    available = set(available) | {""}
    pending, order = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            missing = sorted({i for n in pending for i in n.input if i not in available})
            raise BundleError(
                f"{where}: tensor(s) {missing} are used but produced by no node, "
                "input or initializer (or the graph has a cycle)"
            )
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for n in ready:
            order.append(n)
            available.update(n.output)
    return order


class NumbaSession:
    """An ONNX model loaded for the numba backend; ``run`` has onnxruntime's call shape."""

    def __init__(self, model, threads: int | None = None, passes=_passes.NAMES, name: str | None = None):
        """``passes``: the names of the optional passes to run (``passes.NAMES``, the default: all of
        them; ``()``: none, every node runs as it is written).  ``name``: the bundle folder, named by
        the notice of a cold compile (``compile_notice``)."""
        model, self.path = _load_model(model)
        self._name = name or (os.path.dirname(self.path) if os.path.isfile(self.path) else "BUNDLE")
        self._cold = True  # the first run compiles (or loads from the cache) what the plan calls
        with compile_notice.watch(self._name):  # constant folding may call kernels too
            self._load(model, threads, passes)

    def _load(self, model, threads, passes) -> None:
        config.set_threads(threads)
        self._threads = threads
        self.opsets = {_DOMAINS.get(o.domain, o.domain): o.version for o in model.opset_import}
        g = model.graph
        bad_types = unsupported_types(model)
        if bad_types:
            raise UnsupportedError(
                f"{self.path}: the numba backend supports numpy tensor types only; "
                f"unsupported: {', '.join(bad_types)} (use the onnxruntime backend)"
            )
        unsupported = [node_label(n) for n in g.node if (_DOMAINS.get(n.domain, n.domain), n.op_type) not in OPS]
        if unsupported:
            opsets = ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in sorted(self.opsets.items()))
            raise UnsupportedError(
                f"{self.path}: the numba backend has no implementation for "
                f"{len(unsupported)} node(s): {', '.join(unsupported)} (opsets: {opsets}); "
                "use the onnxruntime backend or re-export with rnnkit"
            )
        consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        inputs = [vi for vi in g.input if vi.name not in consts]
        self._inputs = [_tensor_info(vi) for vi in inputs]
        self._outputs = [_tensor_info(vi) for vi in g.output]
        self.input_names = [i.name for i in self._inputs]
        self.output_names = [o.name for o in self._outputs]
        order = _topological(g, set(consts) | set(self.input_names), self.path)
        quant: dict[str, QuantizedWeight] = {}
        if "fold_quantized_weights" in passes:
            order, quant = _passes.fold_quantized_weights(order, consts)
        program = self._build(order, consts, quant)
        if "fold_quantized_weights" in passes:
            program.fired["fold_quantized_weights"] = len(quant)
        self.program = _passes.run_passes(program, passes)
        self._body = compile_plan(self.program, self._node_error)
        self._plan = self.program.steps
        self._fast_feeds = feed_checker(
            self.input_names, [i.dtype for i in self._inputs], [i.shape for i in self._inputs]
        )
        self._all_outputs = tuple(range(len(self.output_names)))
        self._picks: dict[tuple, tuple] = {}

    # ---------------------------------------------------------------- load
    def _build(self, order, consts: dict, quant: dict) -> Program:
        """One op per node; nodes with constant inputs only are folded, the rest become steps."""

        def const(name):
            if name not in consts:
                consts[name] = quant[name].dequantize()  # a consumer that wants floats
            return consts[name]

        slots = {name: i for i, name in enumerate(self.input_names)}
        steps = []
        for node in order:
            key = (_DOMAINS.get(node.domain, node.domain), node.op_type)
            ins = list(node.input)
            const_at = [i for i, n in enumerate(ins) if n and (n in consts or n in quant)]
            accepts = OPS[key].quantized_inputs
            op_consts = {i: quant[ins[i]] if ins[i] in quant and i in accepts else const(ins[i]) for i in const_at}
            op = OPS[key](node, dict(op_consts))
            op.opset = self.opsets.get(key[0], 0)
            if len(const_at) == sum(1 for n in ins if n):
                consts.update(self._fold(op, node, [op_consts.get(i) for i in range(len(ins))]))
                continue
            template = [op.consts.get(i) for i in range(len(ins))]  # what the op kept (see base.Op)
            dynamic = [(i, slots[n]) for i, n in enumerate(ins) if n and i not in op_consts]
            outs = []
            for name in node.output:
                if name:
                    slots[name] = len(slots)
                outs.append(slots[name] if name else -1)
            steps.append(Step(op, template, dynamic, outs, key))
        # Graph outputs that are constants (or int8 weights) are materialised once here.
        outputs = [("slot", slots[n]) if n in slots else ("const", const(n)) for n in self.output_names]
        # 1-D integer inputs (sequence lengths) may key the memo of the nodes computed from them and shapes
        keyed = frozenset(
            i
            for i, info in enumerate(self._inputs)
            if info.dtype is not None and info.dtype.kind in "biu" and info.shape is not None and len(info.shape) <= 1
        )
        return Program(steps, len(self.input_names), outputs, keyed)

    def _fold(self, op, node, args) -> dict:
        """The values of a node whose inputs are all constant, by output name."""
        try:
            outs = op(*args)
        except RnnkitError:
            raise
        except Exception as e:
            raise BundleError(f"{self.path}: constant folding of {node_label(node)} failed: {e}") from e
        return {name: np.asarray(value) for name, value in zip(node.output, outs) if name}

    def _node_error(self, step: Step, e: Exception) -> InputError:
        if isinstance(e, StepFailed):  # inside a fused step's fallback: name the node that failed
            step, e = e.step, e.cause
        return InputError(
            f"{self.path}: {node_label(step.op.node)} failed on the given inputs "
            f"({type(e).__name__}: {e}); check the input shapes"
        )

    # ---------------------------------------------------------------- run
    def get_inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def _check_feeds(self, feeds: dict) -> list:
        """Every problem with ``feeds`` in one ``InputError``; else the input arrays in graph-input order."""
        problems = []
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            problems.append(f"unknown input(s) {unknown}")
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            problems.append(f"missing input(s) {missing}")
        values: list = [None] * len(self._inputs)
        for k, info in enumerate(self._inputs):
            if info.name not in feeds:
                continue
            x = feeds[info.name]
            x = x if isinstance(x, np.ndarray) else np.asarray(x)
            if info.dtype is not None and x.dtype != info.dtype:
                problems.append(f"input '{info.name}' has dtype {x.dtype}, expected {info.dtype}")
            if info.shape is not None:
                if x.ndim != len(info.shape):
                    problems.append(
                        f"input '{info.name}' has shape {list(x.shape)} (rank {x.ndim}), "
                        f"expected rank {len(info.shape)} {info.shape}"
                    )
                elif any(isinstance(d, int) and d and d != s for d, s in zip(info.shape, x.shape)):
                    problems.append(f"input '{info.name}' has shape {list(x.shape)}, expected {info.shape}")
            values[k] = x
        if problems:
            raise InputError(
                f"{self.path}: bad feed: "
                + "; ".join(problems)
                + f" (the graph's inputs: {[(i.name, str(i.dtype), i.shape) for i in self._inputs]})"
            )
        return values

    def _pick(self, output_names) -> tuple:
        key = tuple(output_names)
        pick = self._picks.get(key)
        if pick is None:
            unknown = [n for n in key if n not in self.output_names]
            if unknown:
                raise InputError(
                    f"{self.path}: unknown output(s) {unknown}; the graph's outputs are {self.output_names}"
                )
            pick = tuple(self.output_names.index(n) for n in key)
            if len(self._picks) < 64:
                self._picks[key] = pick
        return pick

    def run(self, output_names: list[str] | None, input_feed: dict, run_options=None) -> list[np.ndarray]:
        """Run the graph: ``output_names`` (None = all graph outputs) from ``input_feed``."""
        pick = self._all_outputs if output_names is None else self._pick(output_names)
        args = self._fast_feeds(input_feed)
        if args is None:  # not the plain case: the full check names every problem (or converts lists)
            args = self._check_feeds(input_feed)
        if self._cold:
            with compile_notice.watch(self._name):
                results = self._body(*args)
            self._cold = False
        else:
            results = self._body(*args)
        return [results[i] for i in pick]


def load_session(model_or_path, threads: int | None = None, name: str | None = None) -> NumbaSession:
    """Load an ONNX model (``ModelProto``, path or bytes) for the numba backend; ``name``: its bundle
    folder, for the notice of a cold compile."""
    return NumbaSession(model_or_path, threads=threads, name=name)
