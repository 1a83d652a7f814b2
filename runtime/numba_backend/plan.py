"""The compiled plan of a ``NumbaSession``: the runtime nodes of a graph as one Python function.

``graph.py`` folds constants and builds one op per runtime node; this module turns that list of
``Step``s into straight-line Python source, compiled once per session, so that a run is a
sequence of plain calls on local variables -- no per-node loop, argument list, dict or slot list
(a 16-node language-model step spent ~0.1 ms in the interpreted loop)::

    def _body(v0, v1, v2, v3):                   # graph inputs, in graph-input order
        k = -1
        try:
            _key = (v0.shape,)                   # shape prelude, see below
            _pre = _memo.get(_key)
            if _pre is None:
                k = 0; v4 = F0(v0)               # Shape(input_ids)
                k = 1; v5 = F1(v4, K1_1)         # Gather(., constant)
                _pre = (v5,); _keep(_key, _pre)
            else:
                (v5,) = _pre
            k = 2; v6 = F2(K2_0, v0)             # constants are bound names, never looked up
            k = 3; _r = F3(v6, K3_1, ...); v7 = _r[0]; v8 = _r[1]   # a multi-output op
            del v6                               # last use: freed as early as the loop did
            ...
        except (ValueError, IndexError) as e:    # numpy's shape errors: the node k is named
            raise _error(k, e) from e
        return (_asarray(v9), _asarray(v8))      # every graph output, in graph-output order

Ops are called exactly as the interpreted loop called them (every input positionally: runtime
values, the constant object, ``None`` for an omitted optional input); a ``NumpyOp`` whose
``__call__`` is the standard 1-tuple wrapper is called through ``compute`` directly.

Shape prelude: nodes that depend only on constants and the *shapes* of graph inputs
(``Shape``/``Size`` of a graph input, then anything computed from those alone, e.g. the
``Range`` of a time mask) are run first and their results kept per input-shape signature in a
small memo (``MEMO_ENTRIES`` signatures, values of at most ``MEMO_BYTES`` in all per signature);
a repeated shape skips them.  Every op is a pure function of its inputs, so the memo changes
nothing but time.  A graph output that comes from the memo is returned as a copy.

Two fusions save a pass over the largest intermediate (the 10,000 logits of an LM step):
a ``MatMul`` whose op offers ``with_bias`` and whose only consumer is an ``Add`` of a constant
takes the bias into its own kernel (the ``Add`` step disappears from the plan); and an
``Add``/``Mul`` whose input is a fresh array (from an op with ``fresh_output``) used nowhere else
computes into that array instead of allocating (when shapes and dtypes allow; else as usual).

Feeds: ``feed_checker`` compiles the checks of the graph inputs (ndarray of the declared dtype,
rank and fixed dims) into one function that returns the positional arguments of ``_body``, or
None when anything is off, so that the caller falls back to the full check with its messages.

Must not import torch or onnxruntime.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .base import Op
from .ops import NumpyOp

MEMO_ENTRIES = 16  # input signatures remembered by the prelude memo
MEMO_BYTES = 1 << 20  # a signature whose prelude values are larger is not remembered
KEY_ELEMENTS = 64  # a keyed input (1-D integers: sequence lengths) with more values is not memoised
_SHAPE_OPS = frozenset({("", "Shape"), ("", "Size")})
_INPLACE = {("", "Add"): np.add, ("", "Mul"): np.multiply}  # commutative: either input may be reused


class Step(NamedTuple):
    """One runtime node: its op, constant inputs by index, and where its values live."""

    op: Op
    template: list  # per input index: the constant (array or QuantizedWeight), or None
    dynamic: list  # (input index, slot) of the runtime inputs
    outs: list  # slot per node output, -1 for an unnamed one
    key: tuple  # (domain, op_type)


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


def _direct(op) -> bool:
    """A NumpyOp with the standard ``(compute(...),)`` wrapper: call ``compute`` itself."""
    return isinstance(op, NumpyOp) and type(op).__call__ is NumpyOp.__call__


def _inplace(ufunc):
    """``ufunc(a, b)`` written into ``a`` (a fresh array nobody else holds) when the result has
    ``a``'s shape and dtype; else the ordinary call."""
    def run(a, b):
        if (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == b.dtype and a.flags.writeable
                and (b.size == 1 and b.ndim <= a.ndim or b.shape == a.shape[a.ndim - b.ndim:])):
            return ufunc(a, b, out=a)
        return np.asarray(ufunc(a, b))
    return run


def compile_plan(steps: list[Step], n_inputs: int, outputs: list, error: Callable, *,
                 keyed: frozenset = frozenset(), optimize: bool = True) -> tuple[Callable, list[Step]]:
    """``steps`` in topological order -> (``_body(*inputs) -> tuple of graph outputs``, the steps in
    the order run).  ``outputs``: per graph output, ``("slot", index)`` or ``("const", value)``;
    ``error(step, exc)`` builds the exception raised for a numpy error inside ``step``;
    ``keyed``: graph inputs (slots) whose values may key the prelude memo.  The steps returned
    leave out an ``Add`` fused into the ``MatMul`` before it (see module docstring).
    ``optimize=False``: no prelude memo and no fusion, every node called as it is (the tests' twin)."""
    pre = prelude_steps(steps, n_inputs, keyed) if optimize else []
    pre_set = set(pre)
    order = [steps[k] for k in pre] + [st for k, st in enumerate(steps) if k not in pre_set]
    n_pre = len(pre)
    pre_slots = {s for st in order[:n_pre] for s in st.outs if s >= 0}
    out_slots = {v for kind, v in outputs if kind == "slot"}
    # values the prelude hands to the rest of the graph (or to the outputs)
    used_after = {s for st in order[n_pre:] for _, s in st.dynamic} | out_slots
    exported = sorted(pre_slots & used_after)
    read = {s for st in order[:n_pre] for _, s in st.dynamic if s < n_inputs}
    by_value, by_shape = sorted(read & keyed), sorted(read - keyed)
    last_use: dict[int, int] = {}
    uses: dict[int, int] = {}
    for k, st in enumerate(order):
        for _, s in st.dynamic:
            last_use[s] = k
            uses[s] = uses.get(s, 0) + 1
    fresh = {s for st in order[n_pre:] if optimize and getattr(st.op, "fresh_output", False)
             for s in st.outs if s >= 0}
    fused: dict[int, tuple] = {}  # MatMul step -> (its Add step, MatMul + bias in one call)
    consumer = {s: j for j, st in enumerate(order) for _, s in st.dynamic}
    for k in range(n_pre, len(order) if optimize else 0):
        st = order[k]
        out = st.outs[0] if len(st.outs) == 1 else -1
        if not hasattr(st.op, "with_bias") or out < 0 or uses.get(out) != 1 or out in out_slots:
            continue
        j = consumer[out]
        add = order[j]
        if add.key != ("", "Add") or len(add.template) != 2 or len(add.dynamic) != 1 or add.outs[0] < 0:
            continue
        fn = st.op.with_bias(add.template[1 - add.dynamic[0][0]])
        if fn is not None:
            fused[k] = (j, fn)
    skipped = {j for j, _ in fused.values()}

    ns: dict = {"_asarray": np.asarray, "_array": np.array, "_error": lambda k, e: error(order[k], e)}
    body: list[str] = []
    emit = body.append

    def reusable(k: int, st: Step) -> int | None:
        """The input index of an Add/Mul whose value is a fresh, otherwise dead array."""
        if st.key not in _INPLACE or len(st.template) != 2 or len(st.outs) != 1 or k < n_pre:
            return None
        for i, s in st.dynamic:
            if s in fresh and uses[s] == 1 and s not in out_slots:
                return i
        return None

    def call(k: int, st: Step, indent: str) -> None:
        dyn = dict(st.dynamic)
        args = []
        for i, c in enumerate(st.template):
            if i in dyn:
                args.append(f"v{dyn[i]}")
            elif c is None:
                args.append("None")
            else:
                ns[f"K{k}_{i}"] = c
                args.append(f"K{k}_{i}")
        named = [(j, s) for j, s in enumerate(st.outs) if s >= 0]
        into = reusable(k, st)
        if k in fused:  # MatMul + Add(bias): writes the Add's output
            j, ns[f"F{k}"] = fused[k]
            emit(f"{indent}k = {k}; v{order[j].outs[0]} = F{k}({', '.join(args)})")
        elif into is not None and named:
            ns[f"F{k}"] = _inplace(_INPLACE[st.key])
            emit(f"{indent}k = {k}; v{named[0][1]} = F{k}({args[into]}, {args[1 - into]})")
            fresh.add(named[0][1])
        elif _direct(st.op) and len(st.outs) == 1:
            ns[f"F{k}"] = st.op.compute
            target = f"v{named[0][1]}" if named else "_r"
            emit(f"{indent}k = {k}; {target} = F{k}({', '.join(args)})")
        else:
            ns[f"F{k}"] = st.op
            emit(f"{indent}k = {k}; _r = F{k}({', '.join(args)})")
            for j, s in named:
                emit(f"{indent}v{s} = _r[{j}]")
        if k >= n_pre:
            dead = [s for _, s in st.dynamic if last_use[s] == k and s not in out_slots]
            for s in sorted(set(dead)):
                emit(f"{indent}del v{s}")

    if n_pre:
        memo: dict = {}

        def keep(key, values):
            if key is None or sum(getattr(v, "nbytes", 0) for v in values) > MEMO_BYTES:
                return
            for v in values:  # shared by later runs: an op or a caller writing into one must fail loudly
                if isinstance(v, np.ndarray):
                    v.flags.writeable = False
            if len(memo) >= MEMO_ENTRIES:
                memo.pop(next(iter(memo)))
            memo[key] = values

        ns.update(_memo=memo, _keep=keep)
        pack = "(" + "".join(f"v{s}, " for s in exported) + ")"
        key = "".join(f"v{s}.shape, " for s in by_shape) + "".join(f"v{s}.shape, v{s}.tobytes(), "
                                                                    for s in by_value)
        if by_value:
            emit(f"        if {' and '.join(f'v{s}.size <= {KEY_ELEMENTS}' for s in by_value)}:")
            emit(f"            _key = ({key})")
            emit("            _pre = _memo.get(_key)")
            emit("        else:")
            emit("            _key = _pre = None")
        else:
            emit(f"        _key = ({key})")
            emit("        _pre = _memo.get(_key)")
        emit("        if _pre is None:")
        for k in range(n_pre):
            call(k, order[k], " " * 12)
        emit(f"            _pre = {pack}")
        emit("            _keep(_key, _pre)")
        emit("        else:")
        emit(f"            {pack} = _pre")
    for k in range(n_pre, len(order)):
        if k not in skipped:
            call(k, order[k], " " * 8)
    rets = []
    for j, (kind, o) in enumerate(outputs):
        if kind == "slot":
            rets.append(f"_array(v{o})" if o in pre_slots else f"_asarray(v{o})")
        else:
            ns[f"C{j}"] = o
            rets.append(f"_asarray(C{j})")
    params = ", ".join(f"v{i}" for i in range(n_inputs))
    src = "\n".join([f"def _body({params}):", "    k = -1", "    try:", *body, "        pass",
                     "    except (ValueError, IndexError) as e:", "        raise _error(k, e) from e",
                     f"    return ({''.join(r + ', ' for r in rets)})"])
    exec(compile(src, "<numba-backend plan>", "exec"), ns)  # noqa: S102 - our own generated source
    fn = ns["_body"]
    fn.source = src
    return fn, [st for k, st in enumerate(order) if k not in skipped]


def feed_checker(names: list[str], dtypes: list, shapes: list) -> Callable:
    """``check(feeds) -> tuple of input arrays in graph-input order``, or None unless every feed is
    an ndarray of the declared dtype, rank and fixed dims and no other name is given."""
    ns: dict = {"_nd": np.ndarray}
    lines = ["def _check(feeds):", f"    if len(feeds) != {len(names)}:", "        return None", "    try:"]
    lines += [f"        x{i} = feeds[N{i}]" for i in range(len(names))] or ["        pass"]
    lines += ["    except KeyError:", "        return None"]
    for i, (name, dtype, shape) in enumerate(zip(names, dtypes, shapes)):
        ns[f"N{i}"] = name
        cond = [f"type(x{i}) is not _nd"]
        if dtype is not None:
            ns[f"D{i}"] = dtype
            cond.append(f"x{i}.dtype != D{i}")
        if shape is not None:
            cond.append(f"x{i}.ndim != {len(shape)}")
            cond += [f"x{i}.shape[{a}] != {d}" for a, d in enumerate(shape) if isinstance(d, int) and d]
        lines += [f"    if {' or '.join(cond)}:", "        return None"]
    lines.append(f"    return ({''.join(f'x{i}, ' for i in range(len(names)))})")
    exec(compile("\n".join(lines), "<numba-backend feeds>", "exec"), ns)  # noqa: S102
    return ns["_check"]
