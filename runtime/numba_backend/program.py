"""What the numba backend's passes rewrite and its planner compiles: the runtime nodes of a graph.

A graph becomes a ``Program`` once its constants are folded (``graph.py``): a list of ``Step``s in
topological order, each one op with its constant inputs bound and its runtime inputs and outputs
named by integer *slots* (the graph inputs are slots ``0 .. n_inputs-1``; every other value gets
the next free number).  The passes (``passes.py``) take a ``Program`` and return one, replacing,
removing or reordering steps and filling in the analyses the planner reads (``prelude``,
``last_use``); the planner (``plan.py``) only writes source for the steps it is given.

Must not import torch or onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .base import Op


class Step(NamedTuple):
    """One runtime node: its op, constant inputs by index, and where its values live."""

    op: Op
    template: list  # per input index: the constant (array or QuantizedWeight), or None
    dynamic: list  # (input index, slot) of the runtime inputs
    outs: list  # slot per node output, -1 for an unnamed one
    key: tuple  # (domain, op_type)


@dataclass
class Program:
    """The runtime steps of one graph and what the passes found out about them."""

    steps: list[Step]
    n_inputs: int  # graph inputs are slots 0 .. n_inputs-1, the arguments of the compiled function
    outputs: list  # per graph output: ("slot", slot) or ("const", value)
    keyed: frozenset = frozenset()  # graph-input slots whose *values* may key the prelude memo
    prelude: int = 0  # the first ``prelude`` steps run once per input signature (passes.schedule_prelude)
    last_use: dict | None = None  # slot -> index of the last step reading it (passes.liveness)
    fired: dict = field(default_factory=dict)  # pass name -> rewrites it made (for tests and docs)

    def output_slots(self) -> set[int]:
        return {v for kind, v in self.outputs if kind == "slot"}

    def readers(self) -> dict[int, list[int]]:
        """slot -> indices of the steps reading it, once per reading input (a step may repeat)."""
        readers: dict[int, list[int]] = {}
        for k, st in enumerate(self.steps):
            for _, s in st.dynamic:
                readers.setdefault(s, []).append(k)
        return readers

    def producers(self) -> dict[int, int]:
        """slot -> index of the step writing it."""
        return {s: k for k, st in enumerate(self.steps) for s in st.outs if s >= 0}

    def next_slot(self) -> int:
        return 1 + max([self.n_inputs - 1] + [s for st in self.steps for s in st.outs])


class StepFailed(ValueError):
    """A numpy error inside a step that a fused step ran as its fallback: the session's error then
    names ``step``'s node (not the fused one) and the cause."""

    def __init__(self, step: Step, cause: Exception):
        super().__init__(str(cause))
        self.step, self.cause = step, cause
