"""``restore_sequence_lens``: a portable graph's recurrent layers back to native ``sequence_lens`` nodes.

``rnnkit.export.portable`` rewrites each recurrent node that reads ``sequence_lens`` so that runtimes
which ignore it give the same answers: the node runs all T steps, ``Y_h`` is gathered at each row's
last step, ``Y`` is masked past each row's length, an LSTM whose ``Y_c`` is read gets a "hold"
input column, and a reverse direction becomes a forward run on per-row reversed input whose ``Y``
is reversed back (``docs/portable-graphs.md``).  The numba backend honours ``sequence_lens``, so
for it those extra nodes are pure overhead, and they hide the layers from ``fuse_recurrent_step``
(the portable LM step ran 1.2-1.3x slower, a bidirectional classifier 1.1x).  This pass matches,
per run (a one-direction node reading no ``sequence_lens``)::

    [x' = Concat[axis 2](x, pad)]                 pad = Unsqueeze(Cast<float>(Not(valid)), [2])
    [r = Gather[axis 0](Reshape(x or x', [-1, I]), flat(order))]              (a reverse half)
    Y, _[, Y_c] = RNN/GRU/LSTM(x or x' or r, W[|hold], R, B, -, h0, c0)
    [Y_flat = Reshape(Y, [-1, H])]                (T*B, H): row t*B + b
    [Y_h = Gather[axis 0](Y_flat, flat(Sub(lens_row, 1)))]                     (1, B, H)
    [Y_dir = Unsqueeze(Gather[axis 0](Y_flat, flat(order)), [1])]              (a reverse half)
    valid = Less(steps, lens_row)                 steps = Unsqueeze(Range(0, Gather(Shape(src), a), 1), [1])
    order = Where(valid, Sub(Sub(lens_row, 1), steps), steps)
    flat(i) = Add(Mul(i, n), Range(0, n, 1))      n = Gather(Shape(L), 0): B
    lens_row = Unsqueeze(Cast<int64>(L), [0])     L: a 1-D integer graph input

then how the runs' outputs are put together: one run alone (forward, or a ``direction="reverse"``
node's reverse half) ends in ``Y' = Where(Unsqueeze(valid, [1, 3]), Y_dir, 0)`` (a forward run's
``Y_dir`` is its Y itself, (T, 1, B, H)); a bidirectional layer is a forward half and a reverse half
on the same ``x`` / ``x'`` whose outputs are joined
``Y' = Where(Unsqueeze(valid, [1, 3]), Concat[axis 1](Y_f, Y_dir_r), 0)``,
``Y_h = Concat[axis 0](Y_h_f, Y_h_r)``, ``Y_c = Concat[axis 0](Y_c_f, Y_c_r)``, forward first.
Every ``steps`` has axis ``a`` of ``src`` provably x's time axis (followed back through
Transpose, the embedding Gather, Concat along another axis, Reshape-copies and earlier restored
layers), every ``lens_row`` and every ``n`` read the same L (so ``flat`` addresses row b of the
batch that L describes), and a hold column is -h on the input gate's rows,
+h on the forget gate's, 0 elsewhere (h >= ``MIN_HOLD``).

The match is replaced by one node ``RNN/GRU/LSTM(x, W, R, B, L, h0, c0) -> Y', Y_h, Y_c`` with
direction forward, reverse or bidirectional (the halves' W, R, B, constant initial states and P
concatenated on the direction axis, forward first, as ONNX orders them), which computes the same
values: below each row's length both run the same steps, the reverse half on
``x[len-1], ..., x[0]`` (``order`` maps t -> len-1-t there, and back again for its Y);
``sequence_lens`` leaves Y zero past the length (the Where's 0) and returns each direction's state
after its last step: the forward run's output at len-1, the reversed run's at its own position
len-1, which has just read x[0] (the gathers); the hold column keeps c unchanged past the length
(sigmoid(+-h) is exactly 1 / 0 in float32; ``order`` maps padding to itself, so the reversed run's
padding is also at the end), so Y_c is the state at the last step too.  Index nodes that only the
replaced nodes read go too; the rest depend on input shapes and ``sequence_lens`` only
(``schedule_prelude`` memoises them).  A bidirectional pair with computed initial states (rnnkit's
bidirectional graphs have none) is not joined; anything that does not match runs as written.

Must not import torch or onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import helper

from .program import Program, Step

MIN_HOLD = 100.0  # sigmoid(100 - |rest|) == 1.0 and sigmoid(|rest| - 100) < 1e-30 in float32 for |rest| < 30
RECURRENT = {("", "RNN"), ("", "GRU"), ("", "LSTM")}


class _Graph:
    """The program's steps with their producers and readers, and the restorations so far."""

    def __init__(self, program: Program):
        self.p = program
        self.steps: list = list(program.steps)  # Step, or None once replaced
        self.producers = program.producers()
        self.readers = program.readers()
        self.outputs = program.output_slots()
        self.time: dict[int, tuple[int, int]] = {}  # restored Y slot -> (input slot, axis) of its time

    def step(self, slot, key: str):
        """The step producing ``slot`` if it is ``("", key)``, else None."""
        k = self.producers.get(slot) if isinstance(slot, int) else None
        st = self.steps[k] if k is not None else None
        return st if st is not None and st.key == ("", key) else None

    def only_reader(self, slot: int, key: str, ignore=()):
        """The one step reading ``slot`` (besides the steps in ``ignore``) if it is ``("", key)``."""
        r = [k for k in self.readers.get(slot, []) if k not in ignore]
        if len(r) != 1 or slot in self.outputs or self.steps[r[0]].key != ("", key):
            return None
        return r[0]


def _ints(v, expected) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind == "i" and v.reshape(-1).tolist() == list(expected)


def _dyn(st: Step) -> dict:
    return dict(st.dynamic)


def _unsqueezed(g: _Graph, slot, axes) -> int | None:
    """x for ``slot = Unsqueeze(x, axes)``."""
    st = g.step(slot, "Unsqueeze")
    if st is None or list(st.op.axes or []) != list(axes) or list(_dyn(st)) != [0]:
        return None
    return _dyn(st)[0]


def _lens_row(g: _Graph, slot) -> int | None:
    """L (a graph input) for ``slot = Unsqueeze(Cast<int64>(L), [0])``."""
    cast = g.step(_unsqueezed(g, slot, [0]), "Cast")
    if cast is None or cast.op.to != np.dtype(np.int64) or list(_dyn(cast)) != [0]:
        return None
    return _lens_input(g, _dyn(cast)[0])


def _lens_input(g: _Graph, slot: int) -> int | None:
    """``slot`` when it is an integer graph input (one whose values may key the prelude memo)."""
    return slot if slot < g.p.n_inputs and slot in g.p.keyed else None


def _time_of(g: _Graph, slot: int) -> tuple[int, int] | None:
    """(graph input slot, axis) whose size is axis 0 of ``slot``, or None when not provable."""
    axis = 0
    for _ in range(64):
        if slot in g.time:
            src, a = g.time[slot]
            return (src, a) if axis == 0 else None
        if slot < g.p.n_inputs:
            return slot, axis
        k = g.producers.get(slot)
        if k is None:
            return None
        st, dyn = g.steps[k], _dyn(g.steps[k])
        if st.key == ("", "Transpose") and st.op.perm is not None and list(dyn) == [0]:
            axis = st.op.perm[axis]
        elif st.key == ("", "Gather") and st.op.axis == 0 and list(dyn) == [1] and st.template[0] is not None:
            slot = dyn[1]  # an embedding lookup: output axes before the table's width are the ids' axes
            continue
        elif st.key == ("", "Reshape") and list(dyn) == [0] and st.op.copy_zeros and st.op.shape is not None:
            if axis >= len(st.op.shape) or st.op.shape[axis] != 0:
                return None
        elif st.key == ("", "Concat") and dyn:  # along another axis (a non-negative one: ranks are unknown here)
            cat = st.op.attr("axis")
            if not isinstance(cat, int) or cat < 0 or cat == axis:
                return None
            slot = next(iter(dyn.values()))
            continue
        else:
            return None
        slot = dyn[0]
    return None


def _steps(g: _Graph, slot) -> tuple[int, int] | None:
    """(src, a) for ``slot = Unsqueeze(Range(0, Gather(Shape(src), a), 1), [1])``: (T, 1), 0 .. T-1."""
    rng = g.step(_unsqueezed(g, slot, [1]), "Range")
    if rng is None or not (_ints(rng.template[0], [0]) and _ints(rng.template[2], [1])) or list(_dyn(rng)) != [1]:
        return None
    gather = g.step(_dyn(rng)[1], "Gather")
    if (
        gather is None
        or gather.op.axis != 0
        or list(_dyn(gather)) != [0]
        or not (isinstance(gather.template[1], np.ndarray) and gather.template[1].ndim == 0)
    ):
        return None
    shape = g.step(_dyn(gather)[0], "Shape")
    if shape is None or shape.op.attrs or list(_dyn(shape)) != [0]:
        return None
    return _dyn(shape)[0], int(gather.template[1])


def _valid(g: _Graph, slot) -> tuple[int, tuple[int, int]] | None:
    """(L, (source slot, axis)) for ``slot = Less(steps, lens_row)``: (T, B), t < len_b."""
    less = g.step(slot, "Less")
    if less is None or sorted(_dyn(less)) != [0, 1]:
        return None
    source = _steps(g, _dyn(less)[0])
    lens = _lens_row(g, _dyn(less)[1])
    if source is None or lens is None:
        return None
    return lens, source


def _last_row(g: _Graph, slot) -> int | None:
    """L for ``slot = Sub(lens_row, 1)``: (1, B), len_b - 1."""
    sub = g.step(slot, "Sub")
    if sub is None or not _ints(sub.template[1], [1]) or list(_dyn(sub)) != [0]:
        return None
    return _lens_row(g, _dyn(sub)[0])


def _batch(g: _Graph, slot) -> int | None:
    """L for ``slot = Gather(Shape(L), 0)``: the scalar B."""
    gather = g.step(slot, "Gather")
    if (
        gather is None
        or gather.op.axis != 0
        or list(_dyn(gather)) != [0]
        or not (_ints(gather.template[1], [0]) and gather.template[1].ndim == 0)
    ):
        return None
    shape = g.step(_dyn(gather)[0], "Shape")
    if shape is None or shape.op.attrs or list(_dyn(shape)) != [0]:
        return None
    return _lens_input(g, _dyn(shape)[0])


def _batch_steps(g: _Graph, slot) -> int | None:
    """L for ``slot = Range(0, Gather(Shape(L), 0), 1)``: (B,), 0 .. B-1."""
    rng = g.step(slot, "Range")
    if rng is None or not (_ints(rng.template[0], [0]) and _ints(rng.template[2], [1])) or list(_dyn(rng)) != [1]:
        return None
    return _batch(g, _dyn(rng)[1])


def _flat(g: _Graph, slot) -> tuple[int, int] | None:
    """(rows, L) for ``slot = Add(Mul(rows, B), batch_steps)``, B and batch_steps from the same L: time
    indices ``rows`` (..., B) as rows ``t*B + b`` of a (T, B, F) tensor flattened to (T*B, F)."""
    add = g.step(slot, "Add")
    if add is None or sorted(_dyn(add)) != [0, 1]:
        return None
    mul = g.step(_dyn(add)[0], "Mul")
    if mul is None or sorted(_dyn(mul)) != [0, 1]:
        return None
    lens = _batch(g, _dyn(mul)[1])
    if lens is None or _batch_steps(g, _dyn(add)[1]) != lens:
        return None
    return _dyn(mul)[0], lens


def _last_index(g: _Graph, slot) -> int | None:
    """L for ``slot = flat(Sub(lens_row, 1))`` (``_flat``): (1, B), (len_b - 1)*B + b; one L throughout."""
    flat = _flat(g, slot)
    if flat is None or _last_row(g, flat[0]) != flat[1]:
        return None
    return flat[1]


def _order_index(g: _Graph, slot) -> tuple[int, tuple[int, int]] | None:
    """(L, (source slot, axis)) for ``slot = flat(order)`` (``_flat``, module docstring): (T, B),
    t -> len_b - 1 - t for t < len_b, t -> t past it, as flat rows; every part reading the same L and time."""
    flat = _flat(g, slot)
    if flat is None:
        return None
    where = g.step(flat[0], "Where")
    if where is None or sorted(_dyn(where)) != [0, 1, 2]:
        return None
    cond, mirrored, kept = _dyn(where)[0], _dyn(where)[1], _dyn(where)[2]
    valid = _valid(g, cond)
    sub = g.step(mirrored, "Sub")  # len - 1 - t
    if valid is None or sub is None or sorted(_dyn(sub)) != [0, 1]:
        return None
    lens, source = valid
    if (
        lens != flat[1]
        or _last_row(g, _dyn(sub)[0]) != lens
        or _steps(g, _dyn(sub)[1]) != source
        or _steps(g, kept) != source
    ):
        return None
    return lens, source


def _flattened(g: _Graph, slot, width: int) -> int | None:
    """x for ``slot = Reshape(x, [-1, width])``: a (T, B, width) or (T, 1, B, width) tensor as (T*B, width)."""
    st = g.step(slot, "Reshape")
    if st is None or list(_dyn(st)) != [0] or st.op.shape != [-1, width]:
        return None
    return _dyn(st)[0]


def _time_gather(g: _Graph, k: int, data: int) -> int | None:
    """The index slot of step ``k`` when it is ``Gather[axis 0](data, index)`` with both computed."""
    st = g.steps[k]
    sdyn = _dyn(st)
    if st.key != ("", "Gather") or st.op.axis != 0 or sorted(sdyn) != [0, 1] or sdyn[0] != data:
        return None
    return sdyn[1]


def _hold(w, hidden: int) -> bool:
    """W (1, 4H, I+1) whose last column is -h on the input gate's rows, +h on the forget gate's, 0 elsewhere."""
    if not (isinstance(w, np.ndarray) and w.dtype == np.float32 and w.ndim == 3 and w.shape[1] == 4 * hidden):
        return False
    col = w[0, :, -1]
    h = float(col[2 * hidden])
    expected = np.zeros_like(col)
    expected[:hidden], expected[2 * hidden : 3 * hidden] = -h, h
    return h >= MIN_HOLD and bool(np.array_equal(col, expected))


@dataclass
class _Half:
    """One portable run (a one-direction node reading no ``sequence_lens``) and what was checked
    around it; joined into a restored node by ``_single`` or ``_bidirectional``."""

    k: int  # the run's step index
    run: Step
    reverse: bool  # reads Gather(Reshape(run_x), order_index): a reverse direction
    run_x: int  # what the run (or its input reversal) reads: x, or x' = Concat(x, pad)
    x: int  # the layer's input (without the hold column)
    weights: dict  # input index -> constant (W without the hold column)
    states: dict  # input index -> slot of a computed initial state (5, 6)
    y_h: int = -1  # slot of the gathered Y_h (1, B, H)
    y_time: int = -1  # slot of Y in time order (T, 1, B, H): the run's Y (forward), Y_dir (reverse)
    y_c: int = -1  # the run's Y_c slot (LSTM with the hold column)
    flat_k: int = -1  # step index of Y_flat = Reshape(Y, [-1, H]), which the gathers read
    covered: list = field(default_factory=list)  # steps the restored node replaces
    lens: set = field(default_factory=set)  # the L every index chain reads (must be one)
    sources: set = field(default_factory=set)  # the time axes every index chain reads (must be x's)


def _half(g: _Graph, k: int) -> _Half | None:
    """Step ``k`` as a portable run with its input side (hold column, reversal), Y_h gather and
    (reverse) output reversal checked, or None."""
    from .rnn_ops import OPS

    run = g.steps[k]
    op, dyn = run.op, _dyn(run)
    if (
        run.key not in RECURRENT
        or type(op) is not OPS[run.key]
        or op.direction != "forward"
        or 4 in dyn
        or set(dyn) - {0, 5, 6}
        or op.attr("layout", 0) != 0
        or run.outs[0] < 0
    ):
        return None
    hidden = int(op.attr("hidden_size"))
    if len(run.outs) > 1 and run.outs[1] >= 0 and (g.readers.get(run.outs[1]) or run.outs[1] in g.outputs):
        return None  # the state after all T steps is read: not the portable pattern
    y_run = run.outs[0]
    if y_run in g.outputs:
        return None
    # every constant input but sequence_lens (none): W, R, B, and a constant initial state or P
    weights = {i: w for i, w in enumerate(run.template) if w is not None and i != 4}
    half = _Half(k, run, False, dyn[0], dyn[0], weights, {i: s for i, s in dyn.items() if i in (5, 6)})
    w = weights.get(1)
    reversal = g.step(dyn[0], "Gather")
    if reversal is not None and reversal.template[0] is None:  # the reverse direction: x (or x') reordered per row
        rdyn = _dyn(reversal)
        run_x = _flattened(g, rdyn.get(0), w.shape[-1]) if isinstance(w, np.ndarray) and w.ndim == 3 else None
        order = _order_index(g, rdyn.get(1)) if reversal.op.axis == 0 and sorted(rdyn) == [0, 1] else None
        if run_x is None or order is None:
            return None
        half.reverse, half.run_x = True, run_x
        half.lens.add(order[0])
        half.sources.add(order[1])
    half.x = half.run_x
    concat = g.step(half.run_x, "Concat")
    cdyn = _dyn(concat) if concat is not None else {}
    pad = g.step(_unsqueezed(g, cdyn.get(1), [2]), "Cast") if len(cdyn) == 2 else None
    padded = g.step(_dyn(pad)[0], "Not") if pad is not None and pad.op.to == np.dtype(np.float32) else None
    valid = _valid(g, _dyn(padded)[0]) if padded is not None else None
    if (
        run.key == ("", "LSTM")
        and concat is not None
        and concat.op.attr("axis") == 2
        and 0 in cdyn
        and valid is not None
        and isinstance(w, np.ndarray)
        and _hold(w, hidden)
    ):  # the hold column
        half.lens.add(valid[0])
        half.sources.add(valid[1])
        half.x = cdyn[0]
        weights[1] = np.ascontiguousarray(w[..., :-1])
        half.y_c = run.outs[2] if len(run.outs) > 2 else -1
    elif len(run.outs) > 2 and run.outs[2] >= 0:
        return None  # an LSTM's Y_c without the hold column is the state after all T steps
    # Y's readers: Y_flat (the gathers' input) and, for a forward run, the one step joining or masking Y
    direct = []
    for r in g.readers.get(y_run, []):
        if half.flat_k < 0 and _flattened(g, g.steps[r].outs[0], hidden) == y_run:
            half.flat_k = r
        else:
            direct.append(r)
    if direct:
        if half.reverse or len(direct) > 1:
            return None  # a reversed run's Y is read only in time order again, through the gather
        half.y_time = y_run  # checked by the mask or the join (_single, _bidirectional)
    if half.flat_k >= 0:
        flat = g.steps[half.flat_k].outs[0]
        if flat in g.outputs:
            return None
        half.covered.append(half.flat_k)
        for r in g.readers.get(flat, []):
            index = _time_gather(g, r, flat)
            last = _last_index(g, index) if index is not None else None
            if last is not None and half.y_h < 0:  # Y_h: the run's output at its position len - 1
                half.y_h = g.steps[r].outs[0]
                half.lens.add(last)
                half.covered.append(r)
                continue
            order = _order_index(g, index) if index is not None and half.reverse and half.y_time < 0 else None
            y_dir = g.only_reader(g.steps[r].outs[0], "Unsqueeze") if order is not None else None
            if (
                order is None
                or y_dir is None
                or list(g.steps[y_dir].op.axes or []) != [1]
                or list(_dyn(g.steps[y_dir])) != [0]
            ):
                return None
            half.y_time = g.steps[y_dir].outs[0]  # the reversed run's Y back in time order (order is its own inverse)
            half.lens.add(order[0])
            half.sources.add(order[1])
            half.covered += [r, y_dir]
    return half


def _masked(g: _Graph, slot: int, ignore=()) -> tuple[int, int, tuple[int, int]] | None:
    """(step index, L, time source) of ``Where(Unsqueeze(valid, [1, 3]), slot, 0)``, slot's only reader
    besides the steps in ``ignore``."""
    where_k = g.only_reader(slot, "Where", ignore)
    where = g.steps[where_k] if where_k is not None else None
    fill = where.template[2] if where is not None else None
    if (
        where is None
        or _dyn(where).get(1) != slot
        or set(_dyn(where)) != {0, 1}
        or not (isinstance(fill, np.ndarray) and fill.dtype == np.float32 and fill.size == 1 and fill == 0)
    ):
        return None
    valid = _valid(g, _unsqueezed(g, _dyn(where)[0], [1, 3]))
    return None if valid is None else (where_k, valid[0], valid[1])


def _checked(g: _Graph, halves, lens: set, sources: set, y: int, y_h: int):
    """x's time source when every index chain reads one L and x's time axis, else None."""
    time = _time_of(g, halves[0].x)
    if len(lens) != 1 or None in lens or (sources and sources != {time}) or (y < 0 and y_h < 0) or time is None:
        return None
    return time


def _single(g: _Graph, half: _Half):
    """A run alone (a one-direction layer): (restored step, covered steps, Y slot, time) or None."""
    lens, sources, covered, y = set(half.lens), set(half.sources), list(half.covered), -1
    if half.y_time >= 0:
        masked = _masked(g, half.y_time, {half.flat_k})
        if masked is None:
            return None
        y = g.steps[masked[0]].outs[0]
        lens.add(masked[1])
        sources.add(masked[2])
        covered.append(masked[0])
    time = _checked(g, [half], lens, sources, y, half.y_h)
    if time is None:
        return None
    outs = [y, half.y_h] + ([half.y_c] if len(half.run.outs) > 2 else [])
    step = _restored(
        half.run, "reverse" if half.reverse else "forward", half.weights, half.x, next(iter(lens)), half.states, outs
    )
    return step, covered, y, time


def _joined(g: _Graph, slot: int, axis: int, ignore=()) -> tuple[int, int] | None:
    """(step index, other input) of ``Concat[axis](slot, other)``, slot's only reader besides ``ignore``."""
    k = g.only_reader(slot, "Concat", ignore)
    st = g.steps[k] if k is not None else None
    if (
        st is None
        or st.op.attr("axis") != axis
        or len(st.template) != 2
        or any(t is not None for t in st.template)
        or sorted(_dyn(st)) != [0, 1]
        or _dyn(st)[0] != slot
    ):
        return None
    return k, _dyn(st)[1]


def _run_of(g: _Graph, slot: int) -> int | None:
    """The recurrent step a reverse half's output slot comes from (through input 0 of what is between)."""
    for _ in range(4):
        k = g.producers.get(slot)
        if k is None or g.steps[k] is None:
            return None
        if g.steps[k].key in RECURRENT:
            return k
        slot = _dyn(g.steps[k]).get(0, -1)
    return None


def _bidirectional(g: _Graph, fwd: _Half):
    """A forward half joined with a reverse half into one layer: (restored step, covered steps, Y slot,
    time) or None."""
    if fwd.reverse or fwd.states:
        return None
    # the forward half's outputs, each joined with the reverse half's by its only reader
    parts = {"y_h": (fwd.y_h, 0), "y_time": (fwd.y_time, 1), "y_c": (fwd.y_c, 0)}
    joins: dict[str, tuple[int, int]] = {}
    for name, (slot, axis) in parts.items():
        if slot >= 0:
            join = _joined(g, slot, axis, {fwd.flat_k})
            if join is None:
                return None
            joins[name] = join
    if not joins:
        return None
    k2 = _run_of(g, next(iter(joins.values()))[1])
    rev = _half(g, k2) if k2 is not None and k2 != fwd.k else None
    if (
        rev is None
        or not rev.reverse
        or rev.states
        or rev.run_x != fwd.run_x
        or rev.x != fwd.x
        or rev.run.key != fwd.run.key
        or rev.run.op.attrs != fwd.run.op.attrs
        or "activations" in fwd.run.op.attrs
        or getattr(rev.run.op, "opset", None) != getattr(fwd.run.op, "opset", None)
    ):
        return None
    theirs = {"y_h": rev.y_h, "y_time": rev.y_time, "y_c": rev.y_c}
    for name, slot in theirs.items():
        join = joins.get(name)
        if (
            (join is None) != (slot < 0)
            or join is not None
            and (join[1] != slot or g.only_reader(slot, "Concat") != join[0])
        ):
            return None
    if set(fwd.weights) != set(rev.weights):
        return None
    weights = {}
    for i, a in fwd.weights.items():
        b = rev.weights[i]
        if not (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.ndim >= 2
            and a.shape[0] == 1
        ):
            return None  # int8 weights, or not one direction each
        weights[i] = np.concatenate([a, b], axis=0)  # (2, ...), forward first as ONNX orders directions
    lens, sources = fwd.lens | rev.lens, fwd.sources | rev.sources
    covered = fwd.covered + rev.covered + [rev.k] + [j[0] for j in joins.values()]
    y = -1
    if "y_time" in joins:
        masked = _masked(g, g.steps[joins["y_time"][0]].outs[0])
        if masked is None:
            return None
        y = g.steps[masked[0]].outs[0]
        lens.add(masked[1])
        sources.add(masked[2])
        covered.append(masked[0])
    y_h = g.steps[joins["y_h"][0]].outs[0] if "y_h" in joins else -1
    time = _checked(g, [fwd, rev], lens, sources, y, y_h)
    if time is None:
        return None
    outs = [y, y_h] + ([g.steps[joins["y_c"][0]].outs[0] if "y_c" in joins else -1] if len(fwd.run.outs) > 2 else [])
    step = _restored(fwd.run, "bidirectional", weights, fwd.x, next(iter(lens)), {}, outs)
    return step, covered, y, time


def _match(g: _Graph, k: int):
    """The restoration of recurrent step ``k``: (new step, covered step indices, Y slot, time), or None.
    A forward half is first tried as a bidirectional layer's; a reverse half that belongs to one is
    met as the partner of its forward half, which comes first."""
    half = _half(g, k)
    if half is None:
        return None
    return (None if half.reverse else _bidirectional(g, half)) or _single(g, half)


def _restored(run: Step, direction: str, weights: dict, x: int, lens: int, states: dict, outs: list) -> Step:
    """The run as one node reading ``sequence_lens``, built like the loader builds ops."""
    from .rnn_ops import OPS

    node = run.op.node
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
    inputs = [n if i in states or i in (0, 4) or i in weights else "" for i, n in enumerate(names)]
    while not inputs[-1]:
        inputs.pop()
    restored = helper.make_node(node.op_type, inputs, [f"{node.name}.{i}" for i in range(len(outs))], name=node.name)
    restored.attribute.extend(a for a in node.attribute if a.name != "direction")
    restored.attribute.append(helper.make_attribute("direction", direction))
    op = OPS[run.key](restored, dict(weights))
    op.opset = run.op.opset
    template = [op.consts.get(i) for i in range(len(inputs))]
    dynamic = [(0, x), (4, lens)] + [(i, s) for i, s in sorted(states.items())]
    return Step(op, template, dynamic, outs, run.key)


def restore_sequence_lens(program: Program) -> Program:
    """Every portable run or bidirectional pair (module docstring) back to one node reading
    ``sequence_lens``, in graph order (a restored layer's Y carries its time axis to the next
    layer's match).  ``fired`` counts restored nodes (a bidirectional layer is one)."""
    g, fired = _Graph(program), 0
    steps: list = list(program.steps)  # Step, or None once replaced
    g.steps = steps
    dead_before = _dead(steps, g.outputs)
    for k in range(len(steps)):
        if steps[k] is None:
            continue
        found = _match(g, k)
        if found is None:
            continue
        step, covered, y, time = found
        steps[k] = step
        for c in covered:
            steps[c] = None
        if y >= 0:
            g.time[y] = time
        g.producers = {s: j for j, st in enumerate(steps) if st is not None for s in st.outs if s >= 0}
        g.readers = {}
        for j, st in enumerate(steps):
            for _, s in st.dynamic if st is not None else ():
                g.readers.setdefault(s, []).append(j)
        fired += 1
    program.steps = [st for st in steps if st is not None]
    if fired:  # the index nodes only the replaced ones read go too (dead before: left as they were)
        while True:
            gone = _dead(program.steps, g.outputs) - dead_before
            if not gone:
                break
            dead_before = {id(st) for st in program.steps if id(st) in dead_before}
            program.steps = [st for st in program.steps if id(st) not in gone]
    program.fired["restore_sequence_lens"] = fired
    return program


def _dead(steps: list, outputs: set) -> set:
    """ids of the steps none of whose outputs is read or a graph output."""
    read = {s for st in steps if st is not None for _, s in st.dynamic} | outputs
    return {id(st) for st in steps if st is not None and not any(s in read for s in st.outs if s >= 0)}
