"""A recurrent language-model step graph run as one compiled call.

The plan (``plan.py``) runs any graph as one Python call per node.  For the language-model step
graph rnnkit exports (``export/graph_lm.py``) those calls, their wrappers and the allocations
between them were what kept a one-token numba step above the numpy GEMV floor (issue 3:
``benchmarks/lm_step_fused.py`` measured the step's kernels in one call at 0.83x the floor while
the plan ran at 1.0x).  ``match`` recognises that graph, node by node, and returns a
``FusedLMStep``: a few checks in Python, then one ``@njit`` function (``_fused_entry``, compiled
per cell kind and cached like every kernel) that gathers the embedding rows in time-major order,
runs every layer through the RNN driver ``rnn.run`` uses (``rnn._project_rows_serial``), the head's
packed MatMul with its bias (``_project``, as the MatMul op) and the time mask.  Same kernels, same
order of operations, compiled again inside one function: the outputs equal the plan's to fp32
rounding (with numba's fastmath contraction LLVM may fuse a multiply-add differently there; 1-ulp
differences were seen), tested at the FP32 tolerance.

What is recognised (fp32 weights; anything else runs on the plan)::

    X = Transpose[1,0,2](Gather(E, ids))                   E: a constant fp32 (V, E) table
    per layer l: Y, Y_h[, Y_c] = RNN/GRU/LSTM(X, W, R, B, lens, h_l[, c_l])
                 forward, layout 0, weights constant (packed once by the op), no P input
                 h_l = initial_h (one layer) or Slice(initial_h, [l], [l+1], [0]); c_l likewise
                 next X = Reshape[0,0,H](Transpose[0,2,1,3](Y))
    final_h = Y_h (one layer) or Concat[axis 0](Y_h of every layer); final_c likewise
    logits = Where(mask, Add(MatMul(Reshape[0,0,H](Transpose[2,0,1,3](Y)), W_head), bias), 0)
    mask = Unsqueeze[2](Less(Unsqueeze[0](Range(0, Gather(Shape(ids), 1), 1)),
                             Unsqueeze[1](Cast[int64](lens))))          i.e. t < lens[b]

with ``ids``, ``lens`` and the states graph inputs and every other value used by nothing else.
A call that is not the plain case returns None and the plan runs it instead (it then raises the
errors the plan raises): several threads with a batch above 1 (the plan's ops split the batch),
ids outside the table, states of another shape.  int8 graphs (DynamicQuantizeLSTM, the int8
embedding and head) run on the plan: their step is already faster than onnxruntime's.  Equality
with the plan is tested on every cell, 1-2 layers, ragged batches and chunks
(``tests/test_numba_fused.py``).

Must not import torch or onnxruntime.
"""

from __future__ import annotations

from . import config  # noqa: F401  (sets NUMBA_CACHE_DIR before numba is imported)

import numba
import numpy as np
from numba import njit

from . import rnn
from .matvec import _project_any
from .matmul import MatMul
from .rnn_ops import _Recurrent


def _const(st, i):
    """The constant at input ``i`` of a plan step (None if runtime or absent)."""
    return st.template[i] if i < len(st.template) else None


def _ints(v, expected) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind == "i" and v.reshape(-1).tolist() == list(expected)


class _Graph:
    """Who produces and who reads each value, over the plan's steps."""

    def __init__(self, steps):
        self.steps = steps
        self.users: dict[str, list] = {}
        for st in steps:
            for name in st.op.node.input:
                if name:
                    self.users.setdefault(name, []).append(st)
        self.producer = {n: st for st in steps for n in st.op.node.output if n}
        self.seen: set[int] = set()

    def user(self, name, op_type, **attrs):
        """The one step reading ``name``, if it is ``op_type`` with these attribute values."""
        us = self.users.get(name, [])
        if len(us) != 1:
            return None
        return self.take(us[0], op_type, **attrs)

    def made(self, name, op_type, **attrs):
        """The step producing ``name``, if it is ``op_type`` (and ``name`` has no other reader)."""
        st = self.producer.get(name)
        if st is None or len(self.users.get(name, [])) != 1:
            return None
        return self.take(st, op_type, **attrs)

    def take(self, st, op_type, **attrs):
        if st.key != ("", op_type) or any(getattr(st.op, k, None) != v for k, v in attrs.items()):
            return None
        self.seen.add(id(st))
        return st


def _mask_is_time_mask(g: _Graph, mask: str, ids: str, lens: str) -> bool:
    """``mask`` is ``Unsqueeze[2](Less(Unsqueeze[0](Range(0, T, 1)), Unsqueeze[1](Cast(lens))))``
    with T = ``Gather(Shape(ids), 1)``: (B, T, 1), true where t < lens[b]."""
    u2 = g.made(mask, "Unsqueeze")
    less = u2 and _ints(_const(u2, 1), [2]) and g.made(u2.op.node.input[0], "Less")
    if not less:
        return False
    u0, u1 = g.made(less.op.node.input[0], "Unsqueeze"), g.made(less.op.node.input[1], "Unsqueeze")
    if not (u0 and u1 and _ints(_const(u0, 1), [0]) and _ints(_const(u1, 1), [1])):
        return False
    rng, cast = g.made(u0.op.node.input[0], "Range"), g.made(u1.op.node.input[0], "Cast")
    if not (rng and cast and cast.op.node.input[0] == lens and cast.op.attr("to") == 7   # INT64
            and _ints(_const(rng, 0), [0]) and _ints(_const(rng, 2), [1])):
        return False
    time = g.made(rng.op.node.input[1], "Gather")
    shape = time and _ints(_const(time, 1), [1]) and time.op.axis == 0 and g.made(time.op.node.input[0], "Shape")
    return bool(shape) and shape.op.node.input[0] == ids and not shape.op.attrs


def match(steps, input_names: list[str], output_names: list[str], threads: int | None):
    """The ``FusedLMStep`` for a plan's ``steps`` (all of them, in order, before fusions), or None."""
    g = _Graph(steps)
    inputs = set(input_names)
    emb = next((st for st in steps if st.key == ("", "Gather") and st.op.node.input[1] in inputs), None)
    table = emb and _const(emb, 0)
    if not (isinstance(table, np.ndarray) and table.dtype == np.float32 and table.ndim == 2 and emb.op.axis == 0):
        return None
    g.seen.add(id(emb))
    ids = emb.op.node.input[1]
    x = g.user(emb.op.node.output[0], "Transpose", perm=(1, 0, 2))
    layers, lens, state_in = [], None, [None, None]
    while x is not None:
        readers = g.users.get(x.op.node.output[0], [])
        rec = readers[0] if len(readers) == 1 else None
        if rec is None or not isinstance(rec.op, _Recurrent):
            return None
        op, node = rec.op, rec.op.node
        ins = list(node.input) + [""] * (8 - len(node.input))
        if (op._packed is None or op._packed.aq or op.direction != "forward" or op.layout != 0 or ins[7]
                or rec.key[0] != ""):
            return None
        g.seen.add(id(rec))
        lens = lens or ins[4]
        if ins[4] != lens or lens not in inputs:
            return None
        for k, name in enumerate(ins[5:7] if op.cell == "LSTM" else ins[5:6]):
            source = _layer_state(g, name, len(layers), inputs)
            if source is None or state_in[k] not in (None, source):
                return None
            state_in[k] = source
        layers.append(rec)
        y = node.output[0]
        t = g.user(y, "Transpose", perm=(0, 2, 1, 3))
        if t is None:
            break
        r = g.user(t.op.node.output[0], "Reshape")
        if r is None or not _ints(_const(r, 1), [0, 0, op._packed.H]):
            return None
        x = r
    if not layers:
        return None
    cell = layers[0].op.cell
    if any(r.op.cell != cell or r.op.n_out != len(r.op.node.output) for r in layers):
        return None
    # the head: Transpose[2,0,1,3] -> Reshape[0,0,H] -> MatMul(prepared) -> Add(bias) -> Where(mask, ., 0)
    H = layers[-1].op._packed.H
    t = g.user(layers[-1].op.node.output[0], "Transpose", perm=(2, 0, 1, 3))
    r = t and g.user(t.op.node.output[0], "Reshape")
    mm = r and _ints(_const(r, 1), [0, 0, H]) and g.user(r.op.node.output[0], "MatMul")
    if not (mm and isinstance(mm.op, MatMul) and mm.op.q is not None and mm.op.q.dtype == np.float32):
        return None
    add = g.user(mm.op.node.output[0], "Add")
    bias = add and _const(add, 1)
    if not (isinstance(bias, np.ndarray) and bias.dtype == np.float32 and bias.shape == (mm.op.N,)
            and add.op.node.input[0] == mm.op.node.output[0]):
        return None
    where = g.user(add.op.node.output[0], "Where")
    zero = where and _const(where, 2)
    if not (where and where.op.node.input[1] == add.op.node.output[0] and isinstance(zero, np.ndarray)
            and zero.size == 1 and zero.dtype == np.float32 and float(zero.reshape(-1)[0]) == 0.0
            and _mask_is_time_mask(g, where.op.node.input[0], ids, lens)):
        return None
    # the final states: the layers' Y_h (Y_c) as they are (one layer) or concatenated
    finals = []
    for k in range(2 if cell == "LSTM" else 1):
        names = [r.op.node.output[1 + k] for r in layers]
        if len(layers) == 1:
            finals.append(names[0])
            continue
        cat = g.user(names[0], "Concat")
        if cat is None or list(cat.op.node.input) != names or cat.op.attr("axis") != 0 \
                or any(len(g.users.get(n, [])) != 1 for n in names):
            return None
        finals.append(cat.op.node.output[0])
    wanted = [where.op.node.output[0], *finals]
    if sorted(wanted) != sorted(output_names) or len(g.seen) != len(steps):
        return None  # other outputs or other nodes: not (only) this graph
    order = [input_names.index(n) for n in (ids, lens, *[s for s in state_in if s])]
    if sorted(order) != list(range(len(input_names))):
        return None
    return FusedLMStep(table, [r.op for r in layers], mm.op, bias, order,
                       [wanted.index(n) for n in output_names], threads)


def _layer_state(g: _Graph, name: str, layer: int, inputs: set) -> str | None:
    """The graph input a layer's initial state comes from: the input itself (``layer`` 0 of a
    one-layer graph) or ``Slice(input, [layer], [layer + 1], [0])``."""
    if name in inputs:
        return name if layer == 0 else None
    sl = g.made(name, "Slice")
    if sl is None or sl.op.node.input[0] not in inputs:
        return None
    starts, ends, axes = (_const(sl, i) for i in (1, 2, 3))
    steps = _const(sl, 4)
    if not (_ints(starts, [layer]) and _ints(ends, [layer + 1]) and _ints(axes, [0])
            and (len(sl.op.node.input) < 5 or not sl.op.node.input[4] or _ints(steps, [1]))):
        return None
    return sl.op.node.input[0]


def _fused_entry(kind: int):
    """The whole step for cell ``kind`` as one compiled function (a constant ``kind``, typed as a
    literal like ``rnn._entries``): embedding rows, every layer through the RNN driver (what
    ``rnn.run`` runs on one thread), the head's packed MatMul + bias into one (B*T, V) array, the time mask.
    Per-layer weights come as tuples (one entry per layer, the same array types)."""

    @njit(**rnn.JIT)
    def step(ids, lens, h0, c0, table, Wb, ws, wz, wzt, bias, T1, T2, rs, rz, rzt, rbh, P, clips, flags,
             Hq, hs, hz, hb, ahead):
        B, T = ids.shape
        L, _, H = h0.shape
        V, E = table.shape
        N = hb.shape[0]
        x = np.empty((T, B, E), np.float32)
        for t in range(T):
            for b in range(B):
                i = ids[b, t]
                if i < -V or i >= V:  # not a row: the caller lets the plan's Gather name the node and the index
                    return np.empty((0, 0, N), np.float32), h0, c0, False
                i = i + V if i < 0 else i  # counted from the end, as np.take
                for k in range(E):
                    x[t, b, k] = table[i, k]
        hn = np.empty((L, B, H), np.float32)
        cn = np.empty((L, B, H), np.float32)
        for layer in range(L):
            Y, h1, c1 = rnn._project_rows_serial(kind, _FORWARD, 0, x, Wb[layer], ws[layer], wz[layer], wzt[layer],
                                                 bias[layer], T1[layer], T2[layer], rs[layer], rz[layer],
                                                 rzt[layer], False, rbh[layer], P[layer], lens,
                                                 h0[layer:layer + 1].copy(), c0[layer:layer + 1].copy(),
                                                 clips[layer], flags[layer])
            for b in range(B):
                for j in range(H):
                    hn[layer, b, j] = h1[0, b, j]
                    cn[layer, b, j] = c1[0, b, j]
            x = Y.reshape(T, B, H)
        rows = np.empty((B * T, H), np.float32)  # batch-major, as the graph's Transpose + Reshape
        for b in range(B):
            for t in range(T):
                for j in range(H):
                    rows[b * T + t, j] = x[t, b, j]
        logits = np.empty((B * T, N), np.float32)
        _project_any(rows, Hq, hs, hz, hb, logits, ahead)
        for b in range(B):  # Where(t < lens, ., 0)
            for t in range(max(lens[b], 0), T):
                for j in range(N):
                    logits[b * T + t, j] = 0.0
        return logits.reshape(B, T, N), hn, cn, True

    return step


_FORWARD = np.array([0], np.int64)
_ENTRIES = {kind: _fused_entry(kind) for kind in (rnn.RNN, rnn.GRU, rnn.LSTM)}


class FusedLMStep:
    """``__call__(*graph inputs) -> graph outputs`` (tuple, graph-output order), or None to let the
    plan run the call."""

    def __init__(self, table, ops, head, bias, order, out_order, threads):
        self.table, self.head, self.bias = table, head, bias
        self.order, self.out_order = order, out_order
        self.lstm = ops[0].cell == "LSTM"
        packed = [op._packed for op in ops]
        self.H, self.L = packed[0].H, len(ops)
        self.threads = threads
        self.weights = tuple(tuple(getattr(p, k) for p in packed) for k in
                             ("Wb", "ws", "wz", "wzt", "bias", "T1", "T2", "rs", "rz", "rzt", "rbh", "P"))
        clips, flags = zip(*(rnn.kernel_scalars(p, op.clip, op.flag) for op, p in zip(ops, packed)))
        self.layer_args = (clips, flags)
        self.entry = _ENTRIES[packed[0].kind]

    def __call__(self, *args):
        a = [args[i] for i in self.order]
        ids, lens, h0 = a[0], a[1], a[2]
        c0 = a[3] if self.lstm else h0
        if (ids.ndim != 2 or ids.dtype.kind not in "iu" or lens.dtype not in rnn._LENGTH_TYPES
                or lens.shape != (ids.shape[0],)):
            return None
        B, T = ids.shape
        shape = (self.L, B, self.H)
        if (h0.shape != shape or c0.shape != shape or h0.dtype != np.float32 or c0.dtype != np.float32
                or not (h0.flags.c_contiguous and c0.flags.c_contiguous)):
            return None
        if B > 1 and (numba.get_num_threads() if self.threads is None else self.threads) > 1:
            return None  # the plan's ops run the batch in parallel
        logits, hn, cn, ok = self.entry(ids, lens, h0, c0, self.table, *self.weights, *self.layer_args,
                                        self.head.q, self.head.scale, self.head.zp, self.bias, self.head.ahead)
        if not ok:
            return None
        out = (logits, hn, cn) if self.lstm else (logits, hn)
        return tuple(out[i] for i in self.out_order)
