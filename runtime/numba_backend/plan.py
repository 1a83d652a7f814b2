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

Ops are called exactly as an interpreter would call them (every input positionally: runtime
values, the constant object, ``None`` for an omitted optional input); a ``NumpyOp`` whose
``__call__`` is the standard 1-tuple wrapper is called through ``compute`` directly.

This module only writes source: the steps arrive already rewritten by the passes
(``passes.py``: fusions, in-place reuse), with ``Program.prelude`` (the first steps, computed from
input shapes and 1-D integer inputs only) and ``Program.last_use`` (where each value dies) filled
in.  The prelude's results are kept per input-shape signature in a small memo (``MEMO_ENTRIES``
signatures, values of at most ``MEMO_BYTES`` in all per signature); a repeated shape skips them.
A graph output that comes from the memo is returned as a copy.

Feeds: ``feed_checker`` compiles the checks of the graph inputs (ndarray of the declared dtype,
rank and fixed dims) into one function that returns the positional arguments of ``_body``, or
None when anything is off, so that the caller falls back to the full check with its messages.

Must not import torch or onnxruntime.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .ops import NumpyOp
from .program import Program

MEMO_ENTRIES = 16  # input signatures remembered by the prelude memo
MEMO_BYTES = 1 << 20  # a signature whose prelude values are larger is not remembered
KEY_ELEMENTS = 64  # a keyed input (1-D integers: sequence lengths) with more values is not memoised


def _direct(op) -> bool:
    """A NumpyOp with the standard ``(compute(...),)`` wrapper: call ``compute`` itself."""
    return isinstance(op, NumpyOp) and type(op).__call__ is NumpyOp.__call__


def compile_plan(program: Program, error: Callable) -> Callable:
    """``_body(*inputs) -> tuple of graph outputs`` for ``program`` (after ``passes.liveness``);
    ``error(step, exc)`` builds the exception raised for a numpy error inside ``step``."""
    ns: dict = {"_asarray": np.asarray, "_array": np.array, "_error": lambda k, e: error(program.steps[k], e)}
    body: list[str] = []
    if program.prelude:
        _emit_prelude(program, ns, body)
    for k in range(program.prelude, len(program.steps)):
        _emit_call(program, k, ns, body, " " * 8)
    pre_slots = {s for st in program.steps[: program.prelude] for s in st.outs if s >= 0}
    rets = []
    for j, (kind, o) in enumerate(program.outputs):
        if kind == "slot":
            rets.append(f"_array(v{o})" if o in pre_slots else f"_asarray(v{o})")
        else:
            ns[f"C{j}"] = o
            rets.append(f"_asarray(C{j})")
    params = ", ".join(f"v{i}" for i in range(program.n_inputs))
    src = "\n".join(
        [
            f"def _body({params}):",
            "    k = -1",
            "    try:",
            *body,
            "        pass",
            "    except (ValueError, IndexError) as e:",
            "        raise _error(k, e) from e",
            f"    return ({''.join(r + ', ' for r in rets)})",
        ]
    )
    exec(compile(src, "<numba-backend plan>", "exec"), ns)  # noqa: S102 - our own generated source
    fn = ns["_body"]
    fn.source = src
    return fn


def _emit_call(program: Program, k: int, ns: dict, body: list, indent: str) -> None:
    """The line(s) running step ``k``, then the ``del`` of the values it read last."""
    st = program.steps[k]
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
    if _direct(st.op) and len(st.outs) == 1:
        ns[f"F{k}"] = st.op.compute  # type: ignore[attr-defined]  # _direct: a NumpyOp
        target = f"v{named[0][1]}" if named else "_r"
        body.append(f"{indent}k = {k}; {target} = F{k}({', '.join(args)})")
    else:
        ns[f"F{k}"] = st.op
        body.append(f"{indent}k = {k}; _r = F{k}({', '.join(args)})")
        body.extend(f"{indent}v{s} = _r[{j}]" for j, s in named)
    if k >= program.prelude:
        assert program.last_use is not None  # passes.liveness ran before planning
        out_slots = program.output_slots()
        dead = {s for _, s in st.dynamic if program.last_use[s] == k and s not in out_slots}
        body.extend(f"{indent}del v{s}" for s in sorted(dead))


def _emit_prelude(program: Program, ns: dict, body: list) -> None:
    """The memo lookup and, on a miss, the prelude steps; their values the rest reads are unpacked."""
    n_pre, n_inputs = program.prelude, program.n_inputs
    pre_slots = {s for st in program.steps[:n_pre] for s in st.outs if s >= 0}
    used_after = {s for st in program.steps[n_pre:] for _, s in st.dynamic} | program.output_slots()
    exported = sorted(pre_slots & used_after)  # what the prelude hands to the rest of the graph
    read = {s for st in program.steps[:n_pre] for _, s in st.dynamic if s < n_inputs}
    by_value, by_shape = sorted(read & program.keyed), sorted(read - program.keyed)
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
    key = "".join(f"v{s}.shape, " for s in by_shape) + "".join(f"v{s}.shape, v{s}.tobytes(), " for s in by_value)
    if by_value:
        body.append(f"        if {' and '.join(f'v{s}.size <= {KEY_ELEMENTS}' for s in by_value)}:")
        body += [
            f"            _key = ({key})",
            "            _pre = _memo.get(_key)",
            "        else:",
            "            _key = _pre = None",
        ]
    else:
        body += [f"        _key = ({key})", "        _pre = _memo.get(_key)"]
    body.append("        if _pre is None:")
    for k in range(n_pre):
        _emit_call(program, k, ns, body, " " * 12)
    body += [
        f"            _pre = {pack}",
        "            _keep(_key, _pre)",
        "        else:",
        f"            {pack} = _pre",
    ]


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
