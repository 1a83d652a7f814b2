"""The two graph forms of one bundle graph, as sessions: ``sequence_lens`` (as exported) and portable
(``rnnkit.export.portable.make_portable``), on onnxruntime and numba, 1 thread each.

``classifier_latency.py`` and ``lm_step.py`` time them side by side with their other contenders and
print ``ratio_rows``: portable's median over sequence_lens' per backend (the issue's rule: portable
is the default form if that ratio is at most 1.05 on both backends).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from common import WORK

FORMS = ("sequence_lens", "portable")
BACKENDS = ("onnxruntime", "numba")


def form_sessions(model: onnx.ModelProto, name: str) -> dict[tuple[str, str], object]:
    """(form, backend) -> a session with ``.run(names, feeds)`` over that form of ``model``."""
    from rnnkit.export.portable import make_portable
    from rnnkit.runtime.backends import open_session

    graphs = {"sequence_lens": model, "portable": make_portable(model)}
    sessions = {}
    for form, graph in graphs.items():
        path = Path(WORK) / f"{name}.{form}.onnx"
        onnx.save(graph, str(path))
        for backend in BACKENDS:
            sessions[form, backend] = open_session(graph, path, backend, threads=1)
    return sessions


def label(form: str, backend: str) -> str:
    return f"graph {backend} fp32, {form} form"


def ratio_rows(times: dict, prefix: list) -> list[list]:
    """``prefix + [backend, sequence_lens ms, portable ms, portable / sequence_lens]`` per backend;
    ``times``: label -> (median ms, p99 ms)."""
    rows = []
    for backend in BACKENDS:
        current, portable = (times[label(form, backend)][0] for form in FORMS)
        rows.append(prefix + [backend, current, portable, portable / current])
    return rows


RATIO_HEADERS = ["backend", "sequence_lens median ms", "portable median ms", "portable / sequence_lens"]
