"""Graph forms and int8 formats an export (or a re-form) can write, and the manifest's record of each file.

Graph form (the fp32 graphs):

* ``"onnxruntime"``: the recurrent ops read ``sequence_lens``.  onnxruntime and rnnkit's numba honour
  it; onnx.reference and OpenVINO (dynamic shapes) ignore it, so padded rows are wrong there, and
  tract refuses a non-constant one.
* ``"portable"``: ``rnnkit.export.portable.make_portable`` applied -- no ``sequence_lens`` on the
  recurrent nodes; every ONNX runtime computes padded rows correctly.

int8 format (the ``*.int8.onnx`` files):

* ``"onnxruntime"``: ``rnnkit.export.quantize`` -- ``com.microsoft`` DynamicQuantizeLSTM /
  DynamicQuantizeMatMul and weight-only DequantizeLinear: int8 compute in onnxruntime; runs on
  onnxruntime and numba only.
* ``"portable"``: ``rnnkit.export.weight_int8`` on the portable fp32 graph -- int8 weights
  dequantized by Cast and Mul at opset 17: runs on every consumer (``rnnkit.export.consumers``).
  It implies the portable graph form for the int8 files, whatever the fp32 files' form.

Imports onnx only (``make_portable`` when asked for).
"""

from __future__ import annotations

import onnx

from ..runtime.errors import InputError
from ..runtime.manifest import graph_form as form_of
from ..runtime.manifest import graph_ops
from .quantize import quantize_graph
from .weight_int8 import quantize_weights

GRAPH_FORMS = ("onnxruntime", "portable")
INT8_FORMATS = ("onnxruntime", "portable")
# The graph form an export writes unless told otherwise.  Portable, because it gives the same answers on
# every ONNX runtime and costs onnxruntime and numba under 5% (docs/portable-graphs.md: measured with
# benchmarks/classifier_latency.py and benchmarks/lm_step.py, both forms side by side in one run).
DEFAULT_GRAPH_FORM = "portable"
DEFAULT_INT8_FORMAT = "onnxruntime"


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise InputError(f"{what} is {value!r}; choose one of {', '.join(choices)}")
    return value


def rewritten(model: onnx.ModelProto) -> bool:
    """Whether ``make_portable`` rewrote this graph (its nodes are named ``portable.*``).  A graph whose
    recurrent nodes never read ``sequence_lens`` (a decoder step) is in both forms without a rewrite."""
    return any(n.name.startswith("portable.") for n in model.graph.node)


def to_form(model: onnx.ModelProto, form: str) -> onnx.ModelProto:
    """An fp32 graph in ``form``; a graph already in it is returned as it is.  A rewritten graph cannot
    be turned back (its recurrent nodes no longer read the lengths): export again for that."""
    check_choice(form, GRAPH_FORMS, "the graph form")
    if form == "onnxruntime":
        if rewritten(model):
            raise InputError(
                "this graph is in the portable form already and cannot be turned back into the "
                "onnxruntime (sequence_lens) form; export the checkpoint again with that graph form"
            )
        return model
    if form_of(model) == "portable":
        return model
    from .portable import make_portable  # the portable rewrite; only graphs that need it import it

    return make_portable(model)


def int8_graph(
    fp32: onnx.ModelProto, int8_format: str, unrewritten: onnx.ModelProto | None = None
) -> tuple[onnx.ModelProto, dict]:
    """The int8 sibling of an fp32 graph in ``int8_format`` -> (graph, quantization record).

    The onnxruntime format quantizes the sequence_lens form (its DynamicQuantizeLSTM reads the lengths,
    and the portable form's hold column would ruin the per-tensor activation scale): when ``fp32`` is
    a portable rewrite, ``unrewritten`` is the graph it was rewritten from (the export default pairs a
    portable fp32 graph with the fast onnxruntime int8 sibling)."""
    check_choice(int8_format, INT8_FORMATS, "the int8 format")
    if int8_format == "portable":
        return quantize_weights(to_form(fp32, "portable"))
    if rewritten(fp32):
        if unrewritten is None or rewritten(unrewritten):
            raise InputError(
                "the onnxruntime int8 format quantizes the onnxruntime (sequence_lens) graph form, and this "
                "graph is a portable rewrite; choose the portable int8 format, or export the checkpoint again"
            )
        fp32 = unrewritten
    graph, params = quantize_graph(fp32)
    return graph, {"format": "onnxruntime", **params}


def file_record(model: onnx.ModelProto, precision: str, validated_on: dict[str, str]) -> dict:
    """The manifest's ``graph_files`` entry of one graph file: its ops per domain, form, precision and
    the consumers (with versions) it was validated on."""
    return {"form": form_of(model), "precision": precision, "ops": graph_ops(model), "validated_on": dict(validated_on)}
