"""The recurrent step fusion: embedding -> recurrent layers -> [head] as one compiled call.

The plan (``plan.py``) runs a graph as one Python call per node.  Around the recurrent layers of
rnnkit's graphs those calls (their wrappers, an allocation per node) cost more than the arithmetic
of a one-token step: the LM step's ~7 + 4L runtime nodes kept it at 0.99-1.13x the numpy GEMV floor
while the same kernels in one ``@njit`` call ran at 0.83x (issue 3, ``benchmarks/lm_step_fused.py``).
``fuse_recurrent_step`` finds the pattern wherever it occurs and replaces it with one step::

    X = Transpose[1,0,2](Gather(E, ids))          E a constant table, axis 0
    per layer l: Y, Y_h[, Y_c] = RNN/GRU/LSTM(X, W, R, B[, lens][, h_l][, c_l][, P])
                 (``Op.recurrent_layer``: constant weights, layout 0, fp32 activations; the same
                 cell, direction and weight types in every layer; ``lens`` the same value or absent)
                 h_l: absent, any value, or Slice(state, [j], [j+1], [0]) (absorbed); c_l likewise
                 next X = Reshape[0,0,D*H](Transpose[0,2,1,3](Y))
    out = Reshape[0,0,D*H](Transpose[2,0,1,3](Y_last))                       (B, T, D*H)
          [-> MatMul(A, constant M) [-> Add(constant bias (N,))]]             (B, T, N)
    final states: each layer's Y_h (Y_c) as it is, or Concat[axis 0] of all of them (absorbed)

with every intermediate read by the next node of the pattern only.  It fires on rnnkit's LM step
(then the time mask's ``Where`` and the mask itself stay plan steps, memoised), on the G2P decoder
step (the stack up to ``y_batch``; the attention, its MatMuls and the ``LogSoftmax`` stay plan
steps) and on word-level taggers (bidirectional, no carried state).  The fused op reuses the ops'
kernels: the ``Gather`` op's own ``compute`` (on ``ids.T``: the time-major rows directly), the
serial RNN driver ``rnn.run`` calls (``rnn._run_rows``, each direction) and the MatMul's ``project``
with its bias, in the order the plan runs them, so results equal the plan's to fp32 rounding
(compiled again inside one function, fastmath contraction may differ by an ulp).

A call that is not the plain case runs the replaced steps themselves (a plan of their own,
compiled from the original steps, with their errors): several threads with a batch above 1 (the
ops split the batch), ids outside the table, states of another shape or dtype.

Must not import torch or onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
from numba import njit
from onnx import helper

from . import (
    config,  # noqa: F401  (sets NUMBA_CACHE_DIR before numba is imported)
    rnn,
)
from .base import Op, QuantizedWeight
from .matvec import project_jit
from .plan import compile_plan
from .program import Program, Step, StepFailed


# --------------------------------------------------------------------- matching
@dataclass
class _Match:
    """What one occurrence of the pattern replaces and how the fused op is called."""

    gather: int  # step index of the embedding Gather
    covered: list = field(default_factory=list)  # step indices replaced
    layers: list = field(default_factory=list)  # rnn_ops.RecurrentLayer per layer
    layer_steps: list = field(default_factory=list)  # their step indices
    lens: int | None = None  # slot of sequence_lens (None: absent in every layer)
    states: list = field(default_factory=list)  # per layer: [(slot, row or None) or None for h, c]
    out: int = -1  # slot of the batch-major rows or of the head's output
    head: tuple | None = None  # (matmul.PackedMatrix, bias) when the head is fused
    finals: list = field(default_factory=list)  # output slots after ``out``: h then c, concat or per layer


def _single(program, readers, slot, op_type):
    """The index of the one step reading ``slot`` if it is ``op_type`` and the value is no graph output."""
    r = readers.get(slot, [])
    if len(r) != 1 or slot in program.output_slots() or program.steps[r[0]].key != ("", op_type):
        return None
    return r[0]


def _ints(v, expected) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind == "i" and v.reshape(-1).tolist() == list(expected)


def _reshape_to(program, readers, slot, perm, width):
    """The slot of ``Reshape[0, 0, width](Transpose[perm](slot))``, and the two step indices."""
    t = _single(program, readers, slot, "Transpose")
    if t is None or program.steps[t].op.perm != perm:
        return None
    r = _single(program, readers, program.steps[t].outs[0], "Reshape")
    if r is None or not _ints(program.steps[r].template[1], [0, 0, width]):
        return None
    return program.steps[r].outs[0], [t, r]


def _state(program, readers, producers, slot, layer_step):
    """A layer's initial state: None (absent), (slot, None) (a value used as it is) or (slot, j) for
    ``Slice(slot, [j], [j+1], [0])`` read by this layer only (then the Slice step is covered too)."""
    if slot is None:
        return None, []
    k = producers.get(slot)
    st = program.steps[k] if k is not None else None
    if st is None or st.key != ("", "Slice") or readers.get(slot) != [layer_step] or slot in program.output_slots():
        return (slot, None), []
    t = st.template + [None] * (5 - len(st.template))
    j = int(t[1].reshape(-1)[0]) if isinstance(t[1], np.ndarray) and t[1].dtype.kind == "i" and t[1].size == 1 else None
    if (
        j is None
        or j < 0
        or not (_ints(t[2], [j + 1]) and _ints(t[3], [0]) and (t[4] is None or _ints(t[4], [1])))
        or [i for i, _ in st.dynamic] != [0]
    ):
        return (slot, None), []
    return (st.dynamic[0][1], j), [k]


def _layers(program, readers, producers, m: _Match, x: int, width: int):
    """Follow the recurrent layers from the time-major input slot ``x``; returns Y of the last."""
    while True:
        r = readers.get(x, [])
        st = program.steps[r[0]] if len(r) == 1 and x not in program.output_slots() else None
        layer = st.op.recurrent_layer() if st is not None and st.key[0] == "" else None
        dyn = dict(st.dynamic) if st is not None else {}
        if layer is None or dyn.get(0) != x or set(dyn) - {0, 4, 5, 6} or layer.inputs != width:
            return None
        assert st is not None  # the layer is its op's
        if m.layers and (
            layer.kind != m.layers[0].kind
            or not np.array_equal(layer.dirs, m.layers[0].dirs)
            or any(a.dtype != b.dtype or a.ndim != b.ndim for a, b in zip(layer.weights, m.layers[0].weights))
        ):
            return None
        if m.layers and numba.typeof(tuple(layer.weights)) != numba.typeof(tuple(m.layers[0].weights)):
            return None  # the compiled step indexes the layers' records at run time: one type for all
        if not m.layers:
            m.lens = dyn.get(4)
        elif dyn.get(4) != m.lens:
            return None
        states = []
        for i in (5, 6):
            s, covered = _state(program, readers, producers, dyn.get(i), r[0])
            states.append(s)
            m.covered += covered
        m.layers.append(layer)
        m.layer_steps.append(r[0])
        m.states.append(states)
        m.covered.append(r[0])
        width = layer.directions * layer.hidden
        nxt = _reshape_to(program, readers, st.outs[0], (0, 2, 1, 3), width)
        if nxt is None:
            return st.outs[0], width
        x = nxt[0]
        m.covered += nxt[1]


def _head(program, readers, m: _Match, rows: int, width: int) -> None:
    """Take a following MatMul with a packed constant weight (and its constant bias Add)."""
    k = _single(program, readers, rows, "MatMul")
    packed = program.steps[k].op.packed_matrix() if k is not None else None
    if packed is None or dict(program.steps[k].dynamic).get(0) != rows or len(program.steps[k].dynamic) != 1:
        return
    n = packed.scale.shape[0]
    mm_out = program.steps[k].outs[0]
    bias, out, covered = np.zeros(n, np.float32), mm_out, [k]
    a = _single(program, readers, mm_out, "Add")
    add = program.steps[a] if a is not None else None
    if add is not None and len(add.dynamic) == 1 and len(add.template) == 2 and add.outs[0] >= 0:
        b = add.template[1 - add.dynamic[0][0]]
        if isinstance(b, np.ndarray) and b.dtype == np.float32 and b.shape == (n,):
            bias, out, covered = b, add.outs[0], [k, a]
    m.head, m.out = (packed, bias), out
    m.covered += covered


def _finals(program, readers, m: _Match) -> None:
    """The output slots of the final states: one Concat[axis 0] of every layer's (absorbed), or per layer."""
    kinds = (1, 2) if m.layers[0].kind == rnn.LSTM else (1,)
    for j in kinds:
        slots = [program.steps[k].outs[j] if len(program.steps[k].outs) > j else -1 for k in m.layer_steps]
        c = _single(program, readers, slots[0], "Concat") if len(slots) > 1 and slots[0] >= 0 else None
        cat = program.steps[c] if c is not None else None
        if (
            cat is not None
            and cat.op.attr("axis") == 0
            and [s for _, s in cat.dynamic] == slots
            and len(cat.template) == len(slots)
            and all(readers.get(s) == [c] for s in slots)
            and not program.output_slots() & set(slots)
        ):
            m.finals.append([cat.outs[0]])
            m.covered.append(c)
        else:
            m.finals.append(slots)


def _match(program: Program, k: int) -> _Match | None:
    """The pattern starting at the Gather step ``k``, or None."""
    g = program.steps[k]
    table = g.template[0] if g.template else None
    if g.key != ("", "Gather") or g.op.axis != 0 or [i for i, _ in g.dynamic] != [1] or g.outs[0] < 0:
        return None
    if not (
        isinstance(table, QuantizedWeight)
        or isinstance(table, np.ndarray)
        and table.dtype == np.float32
        and table.ndim == 2
    ):
        return None
    readers, producers = program.readers(), program.producers()
    t = _single(program, readers, g.outs[0], "Transpose")
    if t is None or program.steps[t].op.perm != (1, 0, 2):
        return None
    m = _Match(k, [k, t])
    width = (table.q if isinstance(table, QuantizedWeight) else table).shape[1]
    found = _layers(program, readers, producers, m, program.steps[t].outs[0], width)
    if found is None:
        return None
    rows = _reshape_to(program, readers, found[0], (2, 0, 1, 3), found[1])
    if rows is None:
        return None
    m.out = rows[0]
    m.covered += rows[1]
    _head(program, readers, m, rows[0], found[1])
    _finals(program, readers, m)
    return m


def fuse_recurrent_step(program: Program) -> Program:
    """Replace every occurrence of the recurrent step pattern (module docstring) with one
    ``FusedRecurrentStep``: the node calls around the layers cost more than a one-token step's
    arithmetic.  The steps it replaces stay with it, compiled as its fallback plan."""
    fired, k = 0, 0
    while k < len(program.steps):
        m = _match(program, k)
        if m is None:
            k += 1
            continue
        program.steps = _replace(program, m)
        fired += 1
    program.fired["fuse_recurrent_step"] = fired
    return program


def _replace(program: Program, m: _Match) -> list:
    """The steps with ``m.covered`` replaced by the fused step, in a topological order."""
    covered = sorted(set(m.covered))
    inputs = [program.steps[m.gather].dynamic[0][1]] + ([m.lens] if m.lens is not None else [])
    for layer in m.states:
        inputs += [s[0] for s in layer if s is not None and s[0] not in inputs]
    outs = [m.out] + [s for group in m.finals for s in group]
    fallback = _fallback([program.steps[k] for k in covered], inputs, outs)
    op = FusedRecurrentStep(program.steps[m.gather], m, inputs, outs, fallback)
    step = Step(op, [None] * len(inputs), list(enumerate(inputs)), outs, ("rnnkit", "FusedRecurrentStep"))
    rest = [st for k, st in enumerate(program.steps) if k not in set(covered)]
    return _toposort(rest + [step], program.n_inputs)


def _toposort(steps: list, n_inputs: int) -> list:
    """``steps`` in a topological order, each as early as the original order allows."""
    ready, order, pending = set(range(n_inputs)), [], list(steps)
    while pending:
        k = next(k for k, st in enumerate(pending) if all(s in ready for _, s in st.dynamic))
        order.append(pending.pop(k))
        ready.update(order[-1].outs)
    return order


def _fallback(steps: list, inputs: list, outs: list):
    """The replaced steps as a plan of their own: ``f(*inputs) -> outputs`` (None for unnamed ones);
    a numpy error is raised as ``StepFailed`` naming the original step."""
    renumber = {s: i for i, s in enumerate(inputs)}
    for st in steps:
        renumber.update((s, len(renumber)) for s in st.outs if s >= 0)
    sub = [
        Step(
            st.op,
            st.template,
            [(i, renumber[s]) for i, s in st.dynamic],
            [renumber[s] if s >= 0 else -1 for s in st.outs],
            st.key,
        )
        for st in steps
    ]
    outputs = [("slot", renumber[s]) if s >= 0 else ("const", None) for s in outs]
    program = Program(sub, len(inputs), outputs)
    program.last_use = {s: k for k, st in enumerate(sub) for _, s in st.dynamic}
    return compile_plan(program, lambda st, e: StepFailed(st, e))


# --------------------------------------------------------------------- running
def _stack_entry(kind: int, head: bool):
    """The fused step for cell ``kind`` as one compiled function (constants typed as literals, like
    ``rnn._entries``): every layer through the serial RNN driver, the batch-major rows, and with
    ``head`` the packed MatMul + bias (``matvec.project``).  ``records``: one ``RNNWeights`` tuple per
    layer; ``h0s``/``c0s``: per layer (nd, B, H) C-contiguous fp32."""

    @njit(**rnn.JIT)
    def step(x, lens, h0s, c0s, records, dirs, clips, flags, hq, hs, hz, hb, ahead):
        T, B = x.shape[0], x.shape[1]
        nd, H = h0s[0].shape[0], h0s[0].shape[2]
        L = len(records)
        hn = np.empty((L * nd, B, H), np.float32)
        cn = np.empty((L * nd, B, H), np.float32)
        for layer in range(L):
            w, h0 = rnn.RNNWeights(*records[layer]), h0s[layer]
            Y, h1, c1 = rnn._outputs(x, 0, h0)
            for d in range(nd):  # the driver directly: no level of calls between (see rnn._entries)
                rnn._run_rows(
                    kind,
                    d,
                    0,
                    B,
                    dirs[d],
                    0,
                    x,
                    (),
                    w,
                    False,
                    lens,
                    h0,
                    c0s[layer],
                    Y,
                    h1,
                    c1,
                    clips[layer],
                    flags[layer],
                )
            for d in range(nd):  # element loops: a slice assignment compiles numba's error formatting
                for b in range(B):
                    for j in range(H):
                        hn[layer * nd + d, b, j] = h1[d, b, j]
                        cn[layer * nd + d, b, j] = c1[d, b, j]
            x = np.empty((T, B, nd * H), np.float32)  # Transpose[0,2,1,3] + Reshape: (T, B, nd*H)
            for t in range(T):
                for b in range(B):
                    for d in range(nd):
                        for j in range(H):
                            x[t, b, d * H + j] = Y[t, d, b, j]
        rows = np.empty((B * T, nd * H), np.float32)  # batch-major, as Transpose[2,0,1,3] + Reshape
        for b in range(B):
            for t in range(T):
                for j in range(nd * H):
                    rows[b * T + t, j] = x[t, b, j]
        if not head:
            return rows.reshape(B, T, nd * H), hn, cn
        out = np.empty((B * T, hb.shape[0]), np.float32)
        project_jit(rows, hq, hs, hz, hb, out, ahead)
        return out.reshape(B, T, hb.shape[0]), hn, cn

    return step


_ENTRIES = {(kind, head): _stack_entry(kind, head) for kind in (rnn.RNN, rnn.GRU, rnn.LSTM) for head in (False, True)}
_NO_HEAD = (
    np.zeros((1, 1, 1), np.float32),
    np.zeros(1, np.float32),
    np.zeros(1, np.float32),
    np.zeros(1, np.float32),
    False,
)


class FusedRecurrentStep(Op):
    """The op of a fused step: ``(ids[, lens], *states) -> (out, *final states)`` (see the module
    docstring); the node it names in errors is a synthetic ``rnnkit.FusedRecurrentStep``."""

    def __init__(self, gather: Step, m: _Match, inputs: list, outs: list, fallback):
        node = helper.make_node(
            "FusedRecurrentStep",
            [f"v{s}" for s in inputs],
            [f"v{s}" for s in outs],
            name=f"fused_{gather.op.node.name or gather.op.node.output[0]}",
            domain="rnnkit",
        )
        super().__init__(node, {})
        self.gather, self.table = gather.op, gather.template[0]
        self.lens, self.fallback = m.lens is not None, fallback
        first = m.layers[0]
        self.nd, self.H, self.L = first.directions, first.hidden, len(m.layers)
        self.states = [[None if s is None else (inputs.index(s[0]), s[1]) for s in layer] for layer in m.states]
        self.lstm = first.kind == rnn.LSTM
        self.records = tuple(tuple(layer.weights) for layer in m.layers)
        self.layer_args = (first.dirs, tuple(layer.clip for layer in m.layers), tuple(layer.flag for layer in m.layers))
        self.head = _NO_HEAD if m.head is None else (*m.head[0][:3], m.head[1], m.head[0].ahead)
        self.entry = _ENTRIES[first.kind, m.head is not None]
        self.per_layer = [len(group) > 1 for group in m.finals]  # else one Concat of every layer's

    def __call__(self, *args):
        out = self._fast(args)
        if out is None:
            out = self.fallback(*args)
        return out

    def _fast(self, args):
        ids = args[0]
        if type(ids) is not np.ndarray or ids.ndim != 2 or ids.dtype.kind not in "iu":
            return None
        B, T = ids.shape
        if B > 1 and numba.get_num_threads() > 1:
            return None  # the plan's RNN ops run the batch in parallel
        # no lengths: every row runs T steps; int32 as the graphs' lengths, so that the G2P encoder (with
        # lengths) and decoder (without) share one compiled step (the first G2P load, cold cache: 6.3 -> 2.1 s)
        lens = args[1] if self.lens else np.full(B, T, np.int32)
        if type(lens) is not np.ndarray or lens.dtype not in rnn.LENGTH_TYPES or lens.shape != (B,):
            return None
        h0s, c0s = self._states(args, B)
        if h0s is None:
            return None
        try:
            x = self.gather.compute(self.table, ids.T)  # (T, B, E): the op's own lookup, time-major
        except IndexError:
            return None  # the fallback's Gather names the node and the index
        out, hn, cn = self.entry(x, lens, h0s, c0s, self.records, *self.layer_args, *self.head)
        return (out, *self._split(hn, 0), *(self._split(cn, 1) if self.lstm else ()))

    def _states(self, args, B):
        """Per layer (nd, B, H) C-contiguous fp32 initial states, or (None, None) if any is not."""
        shape, h0s, c0s = (self.nd, B, self.H), [], []
        for layer in self.states:
            got = []
            for s in layer if self.lstm else layer[:1]:
                v = (
                    np.zeros(shape, np.float32)
                    if s is None
                    else args[s[0]]
                    if s[1] is None
                    else args[s[0]][s[1] : s[1] + 1]
                )
                if type(v) is not np.ndarray or v.dtype != np.float32 or v.shape != shape or not v.flags.c_contiguous:
                    return None, None
                got.append(v)
            h0s.append(got[0])
            c0s.append(got[-1])
        return tuple(h0s), tuple(c0s)

    def _split(self, states, j):
        """Final states ``j`` (0: h, 1: c) as the graph reads them: one (L*nd, B, H) array, or one per layer."""
        if not self.per_layer[j]:
            return (states,)
        return tuple(states[k * self.nd : (k + 1) * self.nd] for k in range(self.L))
