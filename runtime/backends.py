"""Choosing and opening a backend: onnxruntime or the numba ONNX executor.

Both sessions answer ``run(output_names, feeds) -> list[np.ndarray]`` (onnxruntime's own
call shape), so everything above this module is backend-agnostic.  A backend's package
is imported only when that backend is chosen, and a missing package is reported by
name with the ``rnnkit[...]`` extra that installs it.

Must not import torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BackendUnavailableError, InputError

if TYPE_CHECKING:
    import onnx

BACKENDS = ("onnxruntime", "numba")
PACKAGES = {"onnxruntime": "onnxruntime", "numba": "numba"}
EXTRAS = {"onnxruntime": "rnnkit[onnxruntime]", "numba": "rnnkit[numba]"}  # pyproject's extras


def available(backend: str) -> bool:
    try:
        importlib.import_module(PACKAGES[backend])
    except ImportError:
        return False
    return True


def resolve(backend: str) -> str:
    """'auto' -> onnxruntime if installed, else numba; a named backend must be installed."""
    if backend == "auto":
        for name in BACKENDS:
            if available(name):
                return name
        raise BackendUnavailableError(
            "no backend is installed: rnnkit needs onnxruntime or numba; run "
            '`pip install "rnnkit[onnxruntime]"` (or "rnnkit[numba]", or both: '
            '"rnnkit[runtime]")'
        )
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r} is unknown; choose one of auto, {', '.join(BACKENDS)}")
    if not available(backend):
        other = "numba" if backend == "onnxruntime" else "onnxruntime"
        raise BackendUnavailableError(
            f"backend {backend!r} needs the package {PACKAGES[backend]!r}, which is "
            f'not installed; run `pip install "{EXTRAS[backend]}"` (the package alone: '
            f"pip install {PACKAGES[backend]}) or use --backend {other} (backend={other!r})"
        )
    return backend


def open_session(model: onnx.ModelProto, path: Path, backend: str, threads: int | None = None, name: str | None = None):
    """A session over a verified graph (``path`` is the file it came from, for onnxruntime).  ``name``:
    the bundle as the user calls it, for numba's notice of a cold compile (default: ``path``'s folder)."""
    backend = resolve(backend)
    if backend == "onnxruntime":
        return _onnxruntime_session(path, threads)
    from .numba_backend import load_session

    return load_session(model, threads=threads, name=name or str(path.parent))


def _onnxruntime_session(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One request at a time on a small device: intra-op threads only, no inter-op pool.
    options.intra_op_num_threads = int(threads or 0)  # 0 = onnxruntime's default (all cores)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # rnnkit's int8 graphs say what they compute (DynamicQuantizeLSTM / DynamicQuantizeMatMul for
    # int8 compute; DequantizeLinear for weight-only GRU/RNN weights).  onnxruntime's QDQ passes
    # would keep DequantizeLinear in the graph and run it on every call (int8 GRU 1.2x slower
    # than fp32) or rewrite DequantizeLinear -> MatMul into MatMulNBits (activations quantized:
    # numbers the graph does not say).  Without them, constant folding turns weight-only weights
    # into fp32 once at load, as the ONNX graph means.
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
