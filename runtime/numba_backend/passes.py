"""The numba backend's graph rewrites, as explicit passes run in a fixed order at load.

Each pass is a function with a docstring saying what it matches and why; it takes the graph and
returns it rewritten, recording in ``Program.fired`` how many rewrites it made.  In order:

1. ``fold_quantized_weights`` (ONNX nodes, before ops are built): ``DequantizeLinear`` of an int8
   constant [-> ``Reshape``] becomes a ``QuantizedWeight`` constant, so kernels read int8.
2a. ``restore_sequence_lens`` (``unportable.py``): a portable graph's recurrent layer (runs of all T
   steps, gathered ``Y_h``, masked ``Y``, LSTM hold column, a reverse direction run on per-row
   reversed input; ``rnnkit.export.portable``) becomes the one forward, reverse or bidirectional
   node reading ``sequence_lens`` it stands for (same values: numba honours ``sequence_lens``), so
   the fusion below sees the layers again.
2. ``fuse_recurrent_step`` (``recurrent_fusion.py``): embedding ``Gather`` -> recurrent layers ->
   batch-major rows [-> constant ``MatMul`` head [+ bias]] becomes one compiled call.
3. ``schedule_prelude``: steps computed from input shapes and 1-D integer inputs only go first, to
   be run once per input signature (the planner memoises them).
4. ``fuse_matmul_bias``: ``MatMul`` + ``Add`` of a constant bias -> one pass over the output.
5. ``reuse_inplace``: an ``Add``/``Mul`` whose input is a fresh array nobody else reads computes
   into it.
6. ``liveness`` (always): the last step reading each value, so the planner frees it there.

Passes 2a-5 are optional (``NumbaSession(passes=...)`` names those to run; ``()`` runs none, the
tests' reference); none changes what a graph computes (bit for bit, except the recurrent fusion
and ``restore_sequence_lens``, whose W lacks the hold column: fp32 rounding).  How to add an op or
a pass: ``docs/numba-passes.md``.  Must not import torch or onnxruntime.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from .base import QuantizedWeight
from .ops import NumpyOp
from .program import Program, Step
from .recurrent_fusion import fuse_recurrent_step
from .unportable import restore_sequence_lens

_SHAPE_OPS = frozenset({("", "Shape"), ("", "Size")})
_INPLACE = {("", "Add"): np.add, ("", "Mul"): np.multiply}  # commutative: either input may be reused


class Rewritten(NumpyOp):
    """An op a pass made: ``compute`` is ``fn``; errors name ``node``, the node it stands for."""

    def __init__(self, node: onnx.NodeProto, fn, fresh: bool):
        self.node, self.consts, self.attrs = node, {}, {}
        self.compute = fn  # type: ignore[method-assign]  # per instance: the function the pass made
        self.fresh_output = fresh  # type: ignore[misc]  # per instance: what that function returns


# --------------------------------------------------------------------- 1. on ONNX nodes
def fold_quantized_weights(nodes: list, consts: dict) -> tuple[list, dict]:
    """``DequantizeLinear(int8|uint8 initializer, fp32 scale, zero point)``, optionally followed by
    ``Reshape`` to a constant shape, is taken out of ``nodes`` and returned as a ``QuantizedWeight``
    (name -> weight) instead of being folded into a float array: an op that lists the input in its
    ``quantized_inputs`` receives it and runs on the int8 values (a quarter of the memory traffic);
    other consumers get the dequantized array.  rnnkit's int8 RNN graphs write
    ``DequantizeLinear(W_q [D*G*H, I], scale [D*G*H], zp zeros, axis=0) -> Reshape([D, G*H, I])``;
    the GRU then receives ``QuantizedWeight(q [D, G*H, I], scale [D, G*H], None, axis=-1)``.
    Only initializers count as constant here (a scale computed by other nodes is folded to floats,
    correct but dequantized).  Returns (the other nodes, the weights)."""
    quant: dict[str, QuantizedWeight] = {}
    kept = []
    for node in nodes:
        ins = list(node.input)
        w = None
        if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx") and all(n in consts for n in ins if n):
            args = [consts[n] if n else None for n in ins] + [None] * (3 - len(ins))
            w = _quantized_constant(node, *args[:3])
        elif (
            node.op_type == "Reshape"
            and node.domain in ("", "ai.onnx")
            and ins[0] in quant
            and len(ins) > 1
            and ins[1] in consts
        ):
            w = _reshape_quantized(quant[ins[0]], node, consts[ins[1]])
        if w is None:
            kept.append(node)
        else:
            quant[node.output[0]] = w
    return kept, quant


def _quantized_constant(node, x, scale, zero_point) -> QuantizedWeight | None:
    """The ``QuantizedWeight`` of ``DequantizeLinear(x int8|uint8, scale, zp)``, or None."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if (
        x.dtype not in (np.int8, np.uint8)
        or scale.dtype != np.float32
        or attrs.get("block_size", 0)
        or attrs.get("output_dtype", 0)
    ):
        return None
    zp = None if zero_point is None or not np.any(zero_point) else zero_point
    if scale.size == 1 and scale.ndim <= 1:
        return QuantizedWeight(x, scale.reshape(()), None if zp is None else zp.reshape(()), axis=1)
    if scale.ndim != 1 or x.ndim == 0:
        return None
    axis = attrs.get("axis", 1) % x.ndim
    return QuantizedWeight(x, scale, zp, axis=axis)


def _reshape_quantized(w: QuantizedWeight, node, shape: np.ndarray) -> QuantizedWeight | None:
    """Reshape keeps a weight int8 when the scales still map to whole rows of the last axis."""
    allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
    dims = [int(d) for d in shape]
    if not allowzero:
        dims = [w.q.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    try:
        q = np.ascontiguousarray(w.q.reshape(dims))
    except ValueError:
        return None
    scale = np.asarray(w.scale)
    if scale.ndim == 0:
        return QuantizedWeight(q, w.scale, w.zero_point, axis=w.axis)
    rows = w.q.ndim == 2 and w.axis == 0 or w.axis == -1  # one scale per row of the last axis
    if rows and q.ndim >= 2 and q.shape[-1] == w.q.shape[-1]:
        lead = q.shape[:-1]
        zp = None if w.zero_point is None else np.asarray(w.zero_point).reshape(lead)
        return QuantizedWeight(q, scale.reshape(lead), zp, axis=-1)
    return None


# --------------------------------------------------------------------- 3-6. on runtime steps
def prelude_steps(steps: list[Step], n_inputs: int, keyed: frozenset = frozenset()) -> list[int]:
    """Indices of the steps computed only from constants, the shapes of graph inputs and the
    values of the ``keyed`` graph inputs (slots)."""
    derived: set[int] = set(keyed)
    chosen = []
    for k, st in enumerate(steps):
        slots = [s for _, s in st.dynamic]
        if st.key in _SHAPE_OPS:
            ok = all(s < n_inputs or s in derived for s in slots)
        else:
            ok = bool(slots) and all(s in derived for s in slots)
        if ok:
            chosen.append(k)
            derived.update(s for s in st.outs if s >= 0)
    return chosen


def schedule_prelude(program: Program) -> Program:
    """Steps that depend only on constants, the *shapes* of graph inputs (``Shape``/``Size`` of an
    input, then anything computed from those alone: the ``Range`` of a time mask) and the values of
    1-D integer inputs (``program.keyed``: sequence lengths) move to the front and
    ``program.prelude`` counts them: the planner runs them once per input signature and memoises
    their values (a one-token LM step spent a third of its Python time on its mask).  Every op is a
    pure function of its inputs, so this changes nothing but time."""
    pre = prelude_steps(program.steps, program.n_inputs, program.keyed)
    chosen = set(pre)
    program.steps = [program.steps[k] for k in pre] + [st for k, st in enumerate(program.steps) if k not in chosen]
    program.prelude = len(pre)
    program.fired["schedule_prelude"] = len(pre)
    return program


def fuse_matmul_bias(program: Program) -> Program:
    """A step whose op offers ``with_bias`` (``MatMul`` with a prepared constant weight) and whose
    only reader is an ``Add`` of a constant takes the bias into its own kernel and writes the
    ``Add``'s output; the ``Add`` step goes.  Saves a pass over the largest intermediate of an LM
    step (10,000 logits per token)."""
    steps, out_slots, readers = list(program.steps), program.output_slots(), program.readers()
    gone = set()
    for k in range(program.prelude, len(steps)):
        st = steps[k]
        out = st.outs[0] if len(st.outs) == 1 else -1
        if out < 0 or out in out_slots or len(readers.get(out, ())) != 1:
            continue
        add = steps[readers[out][0]]
        if add.key != ("", "Add") or len(add.template) != 2 or len(add.dynamic) != 1 or add.outs[0] < 0:
            continue
        fn = st.op.with_bias(add.template[1 - add.dynamic[0][0]])
        if fn is not None:
            steps[k] = Step(
                Rewritten(st.op.node, fn, fresh=True), st.template, st.dynamic, list(add.outs), ("rnnkit", "MatMulAdd")
            )
            gone.add(readers[out][0])
    program.steps = [st for k, st in enumerate(steps) if k not in gone]
    program.fired["fuse_matmul_bias"] = len(gone)
    return program


def _inplace(ufunc):
    """``ufunc(a, b)`` written into ``a`` (a fresh array nobody else holds) when the result has
    ``a``'s shape and dtype; else the ordinary call."""

    def run(a, b):
        if (
            type(a) is np.ndarray
            and type(b) is np.ndarray
            and a.dtype == b.dtype
            and a.flags.writeable
            and (b.size == 1 and b.ndim <= a.ndim or b.shape == a.shape[a.ndim - b.ndim :])
        ):
            return ufunc(a, b, out=a)
        return np.asarray(ufunc(a, b))

    return run


def reuse_inplace(program: Program) -> Program:
    """An ``Add``/``Mul`` (after the prelude) with an input that a ``fresh_output`` op (or an earlier
    rewrite of this pass) produced and that nothing else reads, not a graph output, computes into
    that array instead of allocating (when shapes and dtypes allow at run time; else as usual).
    The reused input becomes input 0 of the rewritten step (both ops commute bit for bit)."""
    out_slots = program.output_slots()
    uses = Counter(s for st in program.steps for _, s in st.dynamic)
    steps = program.steps
    fresh = {s for st in steps[program.prelude :] if st.op.fresh_output for s in st.outs if s >= 0}
    fired = 0
    for k in range(program.prelude, len(steps)):
        st = steps[k]
        if st.key not in _INPLACE or len(st.template) != 2 or len(st.outs) != 1 or st.outs[0] < 0:
            continue
        into = next((i for i, s in st.dynamic if s in fresh and uses[s] == 1 and s not in out_slots), None)
        if into is None:
            continue
        template = [st.template[into], st.template[1 - into]]
        dynamic = [(0 if i == into else 1, s) for i, s in st.dynamic]
        steps[k] = Step(
            Rewritten(st.op.node, _inplace(_INPLACE[st.key]), fresh=True), template, dynamic, st.outs, st.key
        )
        fresh.add(st.outs[0])
        fired += 1
    program.fired["reuse_inplace"] = fired
    return program


def liveness(program: Program) -> Program:
    """``program.last_use``: for each value read by a step, the index of the last step reading it.
    The planner frees a value (``del``) right after that step, as early as an interpreter would, so
    a long graph does not hold every intermediate to the end."""
    program.last_use = {s: k for k, st in enumerate(program.steps) for _, s in st.dynamic}
    return program


STEP_PASSES = (restore_sequence_lens, fuse_recurrent_step, schedule_prelude, fuse_matmul_bias, reuse_inplace)
"""The optional passes over runtime steps, in the order they run (``liveness`` always runs last)."""
NAMES = frozenset([fold_quantized_weights.__name__] + [p.__name__ for p in STEP_PASSES])
"""Every optional pass, by name: what ``NumbaSession(passes=...)`` chooses from."""


def run_passes(program: Program, names=NAMES) -> Program:
    """``program`` through the step passes named in ``names`` (in pipeline order), then liveness."""
    for p in STEP_PASSES:
        if p.__name__ in names:
            program = p(program)
    return liveness(program)
