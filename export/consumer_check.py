"""Export validation on other ONNX consumers (``--validate-on reference,openvino,tract``).

Each written graph is run on each named consumer (``rnnkit.export.consumers``) with the same ragged
padded batches as the graph's parity check (the task's ``GraphSpec.parity``: batch sizes {1, 3, 8},
lengths {1, 7, 33, 200}, every row also alone), against the graph's onnxruntime answers, which the
pipeline has already validated against torch: fp32 graphs within ``FP32``, int8 graphs against the
fp32 graph's onnxruntime answers on probabilities within ``INT8_SEQUENCE`` (as rnnkit's own int8
check).  Lengths go up to the bundle's ``max_length`` or ``MAX_LENGTH`` (200, the grid's longest),
whichever is lower: onnxruntime and numba validate the bundle's full ``max_length``; onnx.reference
runs a Python loop per step, so 10,000 steps would take minutes per graph.

``ConsumerChecks`` collects every miss -- consumer x graph x output with the worst difference, or
the consumer's refusal in its own words -- and ``raise_if_failed`` raises one ``ParityError``
listing them all, after every graph was tried.  A consumer asked for but not installed is an
``InputError`` before any work, naming the ``interop`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx

from ..runtime.errors import InputError, ParityError
from ..runtime.tolerance import Tolerance
from . import consumers
from .validate import Arguments, Forward, ParityReport

OWN = ("onnxruntime", "numba")  # rnnkit's backends: every export validates on both already
MAX_LISTED = 40  # failures listed in the one error (the count is always given)
MAX_LENGTH = 200  # the longest input validated on other consumers (the parity grid's longest)


def requested(names: str | list[str] | tuple[str, ...] | None, args: Arguments | None = None) -> dict[str, str]:
    """``validate_on`` value -> {consumer: installed version}, the consumers beyond rnnkit's own;
    refuses an unknown or missing one before any export work (``args`` names the argument)."""
    args = args or Arguments()
    wanted = [n for n in consumers.parse(names or []) if n not in OWN]
    found = {name: consumers.version(name) for name in wanted}
    missing = [name for name, v in found.items() if v is None]
    if missing:
        packages = " ".join(consumers.DISTRIBUTIONS[n] for n in missing)
        raise InputError(
            f"{args('validate_on')} asks for {missing}, which {'is' if len(missing) == 1 else 'are'} "
            f'not installed: `pip install "rnnkit[interop]"` (openvino, tract; onnx.reference comes '
            f"with onnx), or `pip install {packages}`; or drop them from {args('validate_on')}"
        )
    return {name: v for name, v in found.items() if v is not None}


def consumer_forward(name: str, model: onnx.ModelProto) -> Forward:
    """A parity forward running ``model`` on consumer ``name``: feeds only the graph's inputs; returns
    the first output, or every output (a tuple) when the graph has several (as ``session_forward``)."""
    inputs = [i.name for i in model.graph.input]

    def forward(feed: dict):
        out = list(consumers.run(name, model, {k: feed[k] for k in inputs}).values())
        return out[0] if len(out) == 1 else tuple(out)

    return forward


@dataclass
class ConsumerChecks:
    """Every consumer x graph file outcome of one export: what passed (for the manifest) and every miss."""

    versions: dict[str, str]
    passed: dict[str, dict[str, str]] = field(default_factory=dict)  # file -> {consumer: version}
    reports: dict[str, dict[str, dict]] = field(default_factory=dict)  # file -> {consumer: parity record}
    failures: list[str] = field(default_factory=list)

    def check(
        self,
        file: str,
        model: onnx.ModelProto,
        parity: Callable[..., ParityReport],
        oracle_name: str,
        oracle: Forward,
        tol: Tolerance,
        int8: bool,
        max_length: int,
        args=None,
    ) -> None:
        """Run ``parity`` (a ``GraphSpec.parity``) for each consumer on ``model`` against ``oracle``, on
        inputs up to ``max_length`` (the bundle's) or ``MAX_LENGTH`` tokens."""
        for name, version in self.versions.items():
            try:
                report = parity(
                    oracle_name,
                    oracle,
                    {name: consumer_forward(name, model)},
                    tol,
                    int8,
                    max_length=min(max_length, MAX_LENGTH),
                    args=args,
                )
            except consumers.ConsumerRefused as exc:
                self.failures.append(f"{name} {version} x {file}: refused: {exc.reason}")
                continue
            self.reports.setdefault(file, {})[name] = report.to_dict()
            if report.failures:
                worst = report.worst.get(name, float("nan"))
                self.failures.append(
                    f"{name} {version} x {file}: {len(report.failures)} miss(es) beyond "
                    f"{tol.name} against {oracle_name}, worst |diff| {worst:.3g}; first: "
                    f"{report.failures[0]}"
                )
            else:
                self.passed.setdefault(file, {})[name] = version

    def raise_if_failed(self, args: Arguments | None = None) -> None:
        if not self.failures:
            return
        args = args or Arguments()
        listed = self.failures[:MAX_LISTED]
        more = f"\n  ... and {len(self.failures) - MAX_LISTED} more" if len(self.failures) > MAX_LISTED else ""
        raise ParityError(
            f"{len(self.failures)} consumer check(s) failed; nothing was written:\n  "
            + "\n  ".join(listed)
            + more
            + f"\nA refusal names an op or input the consumer lacks: export with "
            f"{args('graph_form', 'portable')} (and {args('int8_format', 'portable')}), or drop the "
            f"consumer from {args('validate_on')}"
        )
