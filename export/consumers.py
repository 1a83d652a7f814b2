"""ONNX consumers: run one graph on a named ONNX runtime, the way a user of that runtime would.

rnnkit's own backends (``onnxruntime``, ``numba``) and three others a bundle may be moved to:
``reference`` (``onnx.reference.ReferenceEvaluator``, ONNX's executable spec), ``openvino`` and
``tract`` (PyPI ``tract``).  Export validation (``--validate-on``), the interop tests and
``benchmarks/interop.py`` all drive a graph through ``run`` so that what each runtime needs is
written once:

* OpenVINO's CPU plugin computes in bf16 on CPUs with AMX/AVX512-BF16 unless asked for f32
  (``INFERENCE_PRECISION_HINT``): without the hint its answers are ~1e-3 off, a precision choice,
  not a graph problem.
* tract's recurrent ops need concrete input shapes (a symbolic batch axis aborts the process in
  tract 0.23), so each call declares its feeds' shapes as the input facts.

A consumer that cannot load or run the graph raises ``ConsumerRefused`` with its own words: a
refusal is a finding about the graph (an op it lacks), not a crash of the caller.

Imports onnx and numpy only; each consumer's package is imported when it is asked for.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

from rnnkit.runtime.errors import InputError, RnnkitError

CONSUMERS = ("onnxruntime", "numba", "reference", "openvino", "tract")
# The distribution whose version identifies each consumer.
DISTRIBUTIONS = {
    "onnxruntime": "onnxruntime",
    "numba": "numba",
    "reference": "onnx",
    "openvino": "openvino",
    "tract": "tract",
}
# What a user installs to get it (the ``interop`` extra installs openvino and tract).
MODULES = {
    "onnxruntime": "onnxruntime",
    "numba": "numba",
    "reference": "onnx.reference",
    "openvino": "openvino",
    "tract": "tract",
}


class ConsumerRefused(RnnkitError):
    """A consumer could not load or run a graph; the message carries the consumer's own reason."""

    def __init__(self, consumer: str, reason: str):
        self.consumer = consumer
        self.reason = reason
        super().__init__(f"{consumer} refused the graph: {reason}")


def version(name: str) -> str | None:
    """The installed version of ``name``'s package, or None when it is not installed."""
    check_name(name)
    try:
        importlib.import_module(MODULES[name])
        return metadata.version(DISTRIBUTIONS[name])
    except (ImportError, metadata.PackageNotFoundError):
        return None


def available() -> dict[str, str]:
    """Every installed consumer -> its version, in ``CONSUMERS`` order."""
    found = {name: version(name) for name in CONSUMERS}
    return {name: v for name, v in found.items() if v is not None}


def check_name(name: str) -> str:
    if name not in CONSUMERS:
        raise InputError(f"ONNX consumer {name!r} is unknown; choose from {', '.join(CONSUMERS)}")
    return name


def parse(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"reference,openvino"`` (the ``--validate-on`` value) or a list -> known names, each once."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if item and check_name(item) not in out:
            out.append(item)
    return out


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split("Stack backtrace")[0].split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def run(
    name: str, model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray], output_names: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Run ``model`` (a ModelProto or a path; external data must sit beside a path) on consumer
    ``name`` with ``feeds`` -> graph output name -> array (all outputs, or ``output_names``).

    Raises ``BackendUnavailableError``-like ``InputError`` for an unknown name, ``ConsumerRefused``
    when the consumer is not installed, cannot load the graph or fails to run it."""
    check_name(name)
    if version(name) is None:
        raise ConsumerRefused(
            name,
            f"not installed (pip install {DISTRIBUTIONS[name]}, or the "
            f"'interop' extra: pip install \"rnnkit[interop]\")",
        )
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    names = list(output_names or [o.name for o in proto.graph.output])
    try:
        values = _RUNNERS[name](model, proto, feeds, names)
    except ConsumerRefused:
        raise
    except Exception as exc:  # noqa: BLE001 -- every consumer has its own exception types
        raise ConsumerRefused(name, _one_line(exc)) from exc
    return dict(zip(names, (np.asarray(v) for v in values)))


def _path_or_bytes(model, proto: onnx.ModelProto):
    return str(model) if not isinstance(model, onnx.ModelProto) else proto.SerializeToString()


def _onnxruntime(model, proto, feeds, names):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        _path_or_bytes(model, proto), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return session.run(names, feeds)


def _numba(model, proto, feeds, names):
    from rnnkit.runtime.numba_backend.graph import NumbaSession

    return NumbaSession(proto).run(names, feeds)


def _reference(model, proto, feeds, names):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(proto).run(names, feeds)


def _openvino(model, proto, feeds, names):
    import openvino as ov

    core = ov.Core()
    source = (
        core.read_model(str(model))
        if not isinstance(model, onnx.ModelProto)
        else core.read_model(proto.SerializeToString(), ov.Tensor(np.empty(0, np.uint8)))
    )
    # f32: see the module docstring; group size 0: OpenVINO would otherwise quantize the activations
    # feeding int8-weight MatMuls on the fly (G2P decoder log-probs 0.026 off instead of 3e-6), which
    # the graph does not say.
    compiled = core.compile_model(
        source, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
    )
    result = compiled({k: np.ascontiguousarray(v) for k, v in feeds.items()})
    by_name = {}
    for port, value in result.items():
        for port_name in port.get_names():
            by_name[port_name] = value
    return [by_name[n] for n in names]


_TRACT_TYPES = {
    np.dtype(np.float32): "f32",
    np.dtype(np.int64): "i64",
    np.dtype(np.int32): "i32",
    np.dtype(np.int8): "i8",
    np.dtype(np.bool_): "bool",
}


def _tract(model, proto, feeds, names):
    import tempfile

    import tract

    with tempfile.TemporaryDirectory() as tmp:
        path = model
        if isinstance(model, onnx.ModelProto):
            path = Path(tmp) / "model.onnx"
            onnx.save(proto, str(path))
        inference = tract.onnx().load(str(path))
        inputs = [i.name for i in proto.graph.input]
        initializers = {t.name for t in proto.graph.initializer}
        inputs = [n for n in inputs if n not in initializers]
        arrays = []
        for slot, input_name in enumerate(inputs):
            value = np.ascontiguousarray(feeds[input_name])
            if value.dtype not in _TRACT_TYPES:
                raise ConsumerRefused(
                    "tract",
                    f"input {input_name!r} has dtype {value.dtype}, which this driver does not declare to tract",
                )
            # concrete facts: tract's recurrent ops cannot run on a symbolic batch axis
            inference.set_input_fact(slot, ",".join([*map(str, value.shape), _TRACT_TYPES[value.dtype]]))
            arrays.append(value)
        runnable = inference.into_model().into_runnable()
        outputs = [t.to_numpy() for t in runnable.run(arrays)]
    graph_outputs = [o.name for o in proto.graph.output]
    return [outputs[graph_outputs.index(n)] for n in names]


_RUNNERS = {
    "onnxruntime": _onnxruntime,
    "numba": _numba,
    "reference": _reference,
    "openvino": _openvino,
    "tract": _tract,
}
