"""Portable graphs: the same answers on every ONNX runtime, padded batches included.

rnnkit's graphs hand the graph input ``sequence_lens`` to every native RNN/LSTM/GRU node.
onnxruntime and rnnkit's numba backend honour it; ``onnx.reference`` and OpenVINO (dynamic
shapes) ignore it, so a padded row's reverse direction starts on padding and its ``Y_h`` / ``Y_c``
are the states after the padding; tract refuses a ``sequence_lens`` that is not a constant.
``make_portable`` rewrites every recurrent node that reads ``sequence_lens`` into standard ops
whose result does not depend on whether a runtime honours it (``docs/portable-graphs.md``)::

    order (T, B) = t -> len_b - 1 - t for t < len_b, else t        (Shape/Gather/Range/Less/Sub/Where)
    flat(i) = i * B + b: time indices as rows of a (T, B, F) tensor flattened to (T*B, F)  (Mul/Add)
    forward run:  node(X) with no sequence_lens, every row all T steps
    reverse run:  a direction="forward" node with the reverse weights on Gather(Reshape(X, [-1, I]),
                  flat(order)), its Y put back in time order the same way (``order`` is an involution)
    Y_h:          each run's own-time Y at len_b - 1: Gather(Reshape(Y, [-1, H]), flat(len - 1)),
                  (1, B, H) directly; Concat over directions
    Y_c (LSTM):   a "hold" input column, 1.0 where t >= len_b: +HOLD on the forget gate's weights,
                  -HOLD on the input gate's, so c stops changing past each row's end
    Y:            Where(t < len_b, Y, 0), as the sequence_lens form leaves it

The time gathers are ``Gather`` on axis 0 (every runtime implements it for any number of steps;
``GatherElements`` is ``np.choose`` in onnx.reference, limited to 64).  I (from W's shape) and H
are static, so each Reshape's shape is a constant.

Every graph it rewrites has nodes named ``portable.*`` (the shared index nodes): how a graph in the
portable form is told from one that never read ``sequence_lens``.  The graph's inputs, outputs and
output names are unchanged; nodes without ``sequence_lens`` and
``com.microsoft`` nodes are left as they are (the onnxruntime int8 form is not portable).  A row of
length 0 is outside the contract (rnnkit's runtime never feeds one).

Imports onnx and numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rnnkit.runtime.errors import UnsupportedError
from rnnkit.runtime.graph_contract import REVERSE_SUFFIX

RECURRENT = {"RNN", "LSTM", "GRU"}
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
# The hold column's weight.  At a padded step the forget gate's pre-activation is >= HOLD - |rest|
# and the input gate's <= |rest| - HOLD; with trained weights |rest| is far below 100, so in fp32
# sigmoid gives exactly 1 and 0 (or within 1e-8 on runtimes that clamp sigmoid's input): c_t = c_{t-1}.
HOLD = 1e4
# attributes copied onto the rewritten nodes; any other (activations, ...) is refused, because a
# per-direction attribute would have to be split between the two runs
KEPT_ATTRIBUTES = {"hidden_size", "linear_before_reset", "clip", "input_forget"}


@dataclass
class _Rewrite:
    """The graph being rebuilt: new nodes in order, new initializers, names already used."""

    graph: onnx.GraphProto
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    used: set = field(default_factory=set)
    consts: dict = field(default_factory=dict)  # (dtype, values) -> initializer name
    indices: dict = field(default_factory=dict)  # (sequence_lens, time source) -> _Index
    producers: dict = field(default_factory=dict)  # the original graph's tensor -> node
    inputs: dict = field(default_factory=dict)  # graph input -> rank
    time_source: dict = field(default_factory=dict)  # rewritten Y -> (tensor, axis) of its time axis

    def name(self, base: str) -> str:
        """A fresh tensor/node name starting with ``base``."""
        candidate, k = base, 1
        while candidate in self.used:
            candidate, k = f"{base}_{k}", k + 1
        self.used.add(candidate)
        return candidate

    def init(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.array(value, order="C"), name))  # keeps 0-d
        return name

    def ints(self, values) -> str:
        """A shared int64 constant (axes, 0, 1, shapes)."""
        arr = np.asarray(values, np.int64)
        key = ("i64", arr.shape, tuple(arr.reshape(-1).tolist()))
        if key not in self.consts:
            self.consts[key] = self.init(
                f"portable.const_{'_'.join(map(str, arr.reshape(-1).tolist())) or 's'}".replace("-", "m"), arr
            )
        return self.consts[key]

    def zero_f32(self) -> str:
        if "f32_zero" not in self.consts:
            self.consts["f32_zero"] = self.init("portable.zero_f32", np.array(0.0, np.float32))
        return self.consts["f32_zero"]

    def op(self, op_type: str, inputs: list[str], base: str, n_out: int = 1, outputs=None, **attrs):
        node_name = self.name(base)
        outs = (
            list(outputs)
            if outputs
            else ([node_name] if n_out == 1 else [self.name(f"{node_name}.{i}") for i in range(n_out)])
        )
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, **attrs))
        return outs[0] if len(outs) == 1 else outs


class _Index:
    """The index tensors of one (sequence_lens, time axis) pair, each written on first use and
    shared by every node that reads the same pair (unused ones are never written: numba runs every
    node it is given).  When the time axis is a graph input's (``input_ids`` axis 1), everything
    here depends on input shapes and ``sequence_lens`` alone, which numba memoises per call signature.

    The time gathers read a (T, B, F) tensor flattened to (T*B, F) with ``Gather`` (axis 0) at flat
    indices ``t*B + b``: every runtime implements Gather for any index count (onnx.reference's
    ``GatherElements`` is ``np.choose``, limited to 64 steps), and the output has the index's shape
    followed by F, so no index is spread over F columns."""

    def __init__(self, rw: _Rewrite, lens: str, source: tuple[str, int]):
        self.rw, self.lens, self.source = rw, lens, source
        self.made: dict[str, str] = {}  # key -> tensor name

    def _get(self, key: str, make) -> str:
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    def steps(self) -> str:  # (T, 1)
        def make():
            rw, (tensor, axis) = self.rw, self.source
            shape = rw.op("Shape", [tensor], "portable.time_shape")
            time = rw.op("Gather", [shape, rw.ints(axis)], "portable.time", axis=0)  # scalar T
            steps = rw.op("Range", [rw.ints(0), time, rw.ints(1)], "portable.steps")  # (T,)
            return rw.op("Unsqueeze", [steps, rw.ints([1])], "portable.steps_col")

        return self._get("steps", make)

    def lengths(self) -> str:  # (1, B)
        def make():
            length = self.rw.op("Cast", [self.lens], "portable.lens_i64", to=TensorProto.INT64)
            return self.rw.op("Unsqueeze", [length, self.rw.ints([0])], "portable.lens_row")

        return self._get("lengths", make)

    def valid(self) -> str:  # (T, B) bool, t < len
        return self._get("valid", lambda: self.rw.op("Less", [self.steps(), self.lengths()], "portable.valid"))

    def last_row(self) -> str:  # (1, B) len - 1
        return self._get("last_row", lambda: self.rw.op("Sub", [self.lengths(), self.rw.ints(1)], "portable.last_row"))

    def batch(self) -> tuple[str, str]:  # scalar B, (B,) 0..B-1
        def make():
            rw = self.rw
            shape = rw.op("Shape", [self.lens], "portable.batch_shape")
            size = rw.op("Gather", [shape, rw.ints(0)], "portable.batch", axis=0)
            return size, rw.op("Range", [rw.ints(0), size, rw.ints(1)], "portable.batch_steps")

        return self._get("batch", make)

    def _flat(self, rows: str, base: str) -> str:
        """``rows * B + b``: time indices (any shape ending in B) as rows of the (T*B, F) flattening."""
        size, offsets = self.batch()
        scaled = self.rw.op("Mul", [rows, size], f"{base}_scaled")
        return self.rw.op("Add", [scaled, offsets], base)

    def last_index(self) -> str:  # (1, B) (len-1)*B + b
        return self._get("last_index", lambda: self._flat(self.last_row(), "portable.last_index"))

    def order_index(self) -> str:  # (T, B) order*B + b
        def make():
            rw = self.rw
            mirrored = rw.op("Sub", [self.last_row(), self.steps()], "portable.mirrored")  # len-1-t
            # t >= len maps to itself: padding stays where it is, so the reversal is its own inverse
            # and the hold column (read at the same positions) is right for the reversed run too
            order = rw.op("Where", [self.valid(), mirrored, self.steps()], "portable.order")
            return self._flat(order, "portable.order_index")

        return self._get("order_index", make)

    def valid4(self) -> str:  # (T, 1, B, 1)
        return self._get(
            "valid4", lambda: self.rw.op("Unsqueeze", [self.valid(), self.rw.ints([1, 3])], "portable.valid4")
        )

    def pad(self) -> str:  # (T, B, 1) 1.0 past len
        def make():
            rw = self.rw
            padded = rw.op("Not", [self.valid()], "portable.padded")
            pad = rw.op("Cast", [padded], "portable.pad_f32", to=TensorProto.FLOAT)
            return rw.op("Unsqueeze", [pad, rw.ints([2])], "portable.pad")

        return self._get("pad", make)


def make_portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every RNN/LSTM/GRU node that reads ``sequence_lens`` rewritten as described in
    the module docstring; a new ModelProto (``model`` is not changed).  Raises ``UnsupportedError``
    for a node the rewrite does not cover (layout 1, per-direction activations, a reverse
    direction whose W is not an initializer)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    targets = [n for n in graph.node if _reads_sequence_lens(n)]
    if not targets:
        return out
    target_inputs = {i for n in targets for i in n.input}
    consumed = {i for n in graph.node for i in n.input if i} | {o.name for o in graph.output}
    rw = _Rewrite(graph)
    rw.used |= {t.name for t in graph.initializer} | {v.name for v in graph.input} | {v.name for v in graph.output}
    rw.used |= {o for n in graph.node for o in n.output} | {n.name for n in graph.node if n.name}
    inits = {t.name: t for t in graph.initializer}
    rw.producers = {o: n for n in graph.node for o in n.output}
    rw.inputs = {v.name: len(v.type.tensor_type.shape.dim) for v in graph.input if v.name not in inits}
    for node in graph.node:
        if _reads_sequence_lens(node):
            _rewrite(rw, node, inits, consumed)
        else:
            rw.nodes.append(node)
    del graph.node[:]
    graph.node.extend(rw.nodes)
    graph.initializer.extend(rw.inits)
    # initializers only the rewritten nodes read (a bidirectional node's W/R/B, sliced into new ones) go
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dropped = {i for i in target_inputs if i in inits} - read
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph_inputs = [v for v in graph.input if v.name not in dropped]
    del graph.input[:]
    graph.input.extend(graph_inputs)
    return out


def _reads_sequence_lens(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in RECURRENT and len(node.input) > 4 and bool(node.input[4])


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _time_axis(rw: _Rewrite, x: str, inits: dict) -> tuple[str, int]:
    """(tensor, axis) whose size is the time axis 0 of ``x``: followed back through the nodes that
    move it (Transpose, an embedding Gather, Concat and Reshape that keep it, a rewritten layer's Y)
    to a graph input where possible (``input_ids`` axis 1), else ``x`` itself."""
    name, axis = x, 0
    for _ in range(64):
        if name in rw.time_source:
            return rw.time_source[name]
        if name in rw.inputs:
            return name, axis
        node = rw.producers.get(name)
        if node is None:
            break
        attrs = _attrs(node)
        if node.op_type == "Transpose" and attrs.get("perm"):
            axis = attrs["perm"][axis]
        elif node.op_type == "Gather" and attrs.get("axis", 0) == 0 and node.input[0] in inits:
            rank = rw.inputs.get(node.input[1])  # an embedding lookup of ids: (B, T) -> (B, T, E)
            if rank is None or axis >= rank:
                break
            name = node.input[1]
            continue
        elif node.op_type == "Concat":
            if attrs.get("axis", 0) in (axis, *range(-8, 0)):  # along it, or an axis whose rank is unknown here
                break
        elif node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).reshape(-1)
            if attrs.get("allowzero") or axis >= shape.size or shape[axis] != 0:  # 0 copies the input's dim
                break
        elif node.op_type not in ("Identity", "Cast"):
            break
        name = node.input[0]
    return x, 0


def _index(rw: _Rewrite, lens: str, x: str, inits: dict) -> _Index:
    """The index tensors for lengths ``lens`` (B,) and the time axis of ``x`` (T, B, I), shared."""
    source = _time_axis(rw, x, inits)
    key = (lens, source)
    if key not in rw.indices:
        rw.indices[key] = _Index(rw, lens, source)
    return rw.indices[key]


def _direction_slice(rw: _Rewrite, name: str, inits: dict, d: int, directions: int, base: str) -> str:
    """Direction ``d`` of a (D, ...) weight or state: the initializer itself (one direction), a new
    initializer (a constant), or a Slice (a computed tensor)."""
    if not name or directions == 1:
        return name
    if name in inits:
        return rw.init(base, numpy_helper.to_array(inits[name])[d : d + 1])
    return rw.op("Slice", [name, rw.ints([d]), rw.ints([d + 1]), rw.ints([0])], base)


def _hold_column(op_type: str, hidden: int) -> np.ndarray:
    """(1, 4H, 1): +HOLD on the forget gate's rows, -HOLD on the input gate's (ONNX LSTM order i, o, f, c)."""
    column = np.zeros((1, 4 * hidden, 1), np.float32)
    column[0, 0:hidden] = -HOLD  # i
    column[0, 2 * hidden : 3 * hidden] = HOLD  # f
    return column


def _rewrite(rw: _Rewrite, node: onnx.NodeProto, inits: dict, consumed: set) -> None:
    attrs = _attrs(node)
    if attrs.get("layout", 0) != 0:
        raise UnsupportedError(
            f"make_portable: {node.op_type} node {node.name!r} has layout={attrs['layout']}; only "
            f"layout 0 (time-major, what rnnkit writes) is rewritten"
        )
    unknown = sorted(set(attrs) - KEPT_ATTRIBUTES - {"direction", "layout"})
    if unknown:
        raise UnsupportedError(
            f"make_portable: {node.op_type} node {node.name!r} has attribute(s) {unknown}, which "
            f"the rewrite does not split between directions; export without them"
        )
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    hidden = int(attrs["hidden_size"])
    ins = list(node.input) + [""] * (8 - len(node.input))
    outs = list(node.output) + [""] * (3 - len(node.output))
    x, w, r, b, lens, h0, c0, peep = ins[:8]
    y_name, yh_name, yc_name = outs[:3]
    lstm = node.op_type == "LSTM"
    need_y, need_yh = y_name in consumed, yh_name in consumed
    need_yc = lstm and yc_name in consumed
    idx = _index(rw, lens, x, inits)
    base = node.name or rw.name(node.op_type.lower())
    kept = {k: v for k, v in attrs.items() if k in KEPT_ATTRIBUTES}
    runs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    n_dirs = len(runs)

    # the hold column (LSTM whose Y_c is read): X' = Concat(X, pad), W' = Concat(W, hold) in-graph,
    # the hold values a separate initializer so a per-channel int8 pass quantizing W never sees them
    run_x, hold = x, ""
    if need_yc:
        run_x = rw.op("Concat", [x, idx.pad()], f"{base}.x_hold", axis=2)
        hold = rw.init(f"{base}.hold", _hold_column(node.op_type, hidden))
    reversed_x = ""
    if "reverse" in runs:
        if w not in inits or len(inits[w].dims) != 3:
            raise UnsupportedError(
                f"make_portable: {node.op_type} node {node.name!r} reads a computed W ({w!r}); "
                f"its reverse direction is rewritten only with W an initializer, whose shape "
                f"gives X's width; make W a float initializer (quantize after make_portable)"
            )
        # X as (T*B, width), width from W (D, G*H, I): a constant shape, nothing computed per call
        width = int(inits[w].dims[2]) + (1 if hold else 0)
        flat_x = rw.op("Reshape", [run_x, rw.ints([-1, width])], f"{base}.x_flat")
        reversed_x = rw.op("Gather", [flat_x, idx.order_index()], f"{base}.x_reversed", axis=0)  # (T, B, width)
    ys, yhs, ycs = [], [], []
    rw.used.discard(node.name)  # the node goes; its forward run takes its name
    for d, run in enumerate(runs):
        # a bidirectional node's forward half keeps the node's name, its reverse half gets
        # REVERSE_SUFFIX (graph_contract pairs them into one layer); weights are named after the half
        run_name = rw.name(base + REVERSE_SUFFIX if run == "reverse" and n_dirs > 1 else base)
        prefix = f"{base}.{run}." if n_dirs > 1 else f"{base}."
        wd = _direction_slice(rw, w, inits, d, n_dirs, f"{prefix}W")
        if hold:
            wd = rw.op("Concat", [wd, hold], f"{prefix}W_hold", axis=2)
        run_ins = [
            reversed_x if run == "reverse" else run_x,
            wd,
            _direction_slice(rw, r, inits, d, n_dirs, f"{prefix}R"),
            _direction_slice(rw, b, inits, d, n_dirs, f"{prefix}B"),
            "",
            _direction_slice(rw, h0, inits, d, n_dirs, f"{prefix}initial_h"),
            _direction_slice(rw, c0, inits, d, n_dirs, f"{prefix}initial_c") if lstm else "",
            _direction_slice(rw, peep, inits, d, n_dirs, f"{prefix}P") if lstm else "",
        ]
        while not run_ins[-1]:
            run_ins.pop()
        single = n_dirs == 1  # the run's state is the node's: it takes the original output names
        run_outs = [rw.name(f"{run_name}.Y_run"), rw.name(f"{run_name}.Y_h_run")]
        if need_yc:
            run_outs.append(yc_name if single else rw.name(f"{run_name}.Y_c_run"))
            ycs.append(run_outs[2])
        rw.nodes.append(
            helper.make_node(node.op_type, run_ins, run_outs, name=run_name, direction="forward", layout=0, **kept)
        )
        if not (need_y or need_yh):
            continue
        y_run = run_outs[0]  # (T, 1, B, H)
        flat = ""
        if need_yh or (need_y and run == "reverse"):  # the run's Y as (T*B, H) rows t*B + b
            flat = rw.op("Reshape", [y_run, rw.ints([-1, hidden])], f"{run_name}.Y_flat")
        # Y_h: the run's output at its position len-1: the state after each row's last token (forward)
        # or after reading t=0 (reverse), what ONNX and torch call the reverse direction's Y_h
        if need_yh:
            yhs.append(
                rw.op(
                    "Gather",
                    [flat, idx.last_index()],
                    f"{run_name}.Y_h_row",
                    axis=0,
                    outputs=[yh_name] if single else None,
                )
            )  # (1, B, H)
        if need_y:
            if run == "reverse":  # back in time order (order is its own inverse)
                own = rw.op("Gather", [flat, idx.order_index()], f"{run_name}.Y_time", axis=0)  # (T, B, H)
                y_run = rw.op("Unsqueeze", [own, rw.ints([1])], f"{run_name}.Y_dir")  # (T, 1, B, H)
            ys.append(y_run)
    if n_dirs > 1:  # (D, B, H) under the original output names
        if need_yh:
            rw.op("Concat", yhs, f"{base}.Y_h_concat", outputs=[yh_name], axis=0)
        if need_yc:
            rw.op("Concat", ycs, f"{base}.Y_c_concat", outputs=[yc_name], axis=0)
    if need_y:
        y = ys[0] if n_dirs == 1 else rw.op("Concat", ys, f"{base}.Y_concat", axis=1)  # (T, D, B, H)
        # past each row's end: 0, as the sequence_lens form leaves Y (Where: nothing computed there leaks)
        rw.op("Where", [idx.valid4(), y, rw.zero_f32()], f"{base}.Y_masked", outputs=[y_name])
        rw.time_source[y_name] = idx.source
