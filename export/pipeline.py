"""The export pipeline: one ``Exportable`` -> a validated (and optionally int8) bundle, for every task.

Stages, per graph of the task, in the order of ``Exportable.graphs``::

    build     weights -> ONNX graph (native RNN/LSTM/GRU ops, written directly, never traced)
    check     the written graph against the task's contract (``GraphSpec.check``)
    write     into the bundle's temporary folder (``BundleWriter``)
    validate  parity of onnxruntime and numba against the torch oracle, up to ``max_length``
    quantize  (int8) the int8 sibling -> check -> write -> numba int8 vs onnxruntime int8 (the
              onnxruntime int8 format), or both backends' int8 vs onnxruntime fp32 (the portable one)
    consumers (``validate_on``) each graph on other ONNX consumers (``rnnkit.export.consumer_check``),
              every failure collected into one ParityError after the last graph

The graph form (``graph_form``) and int8 format (``int8_format``) are ``rnnkit.export.forms``'s;
the manifest records, per graph file, its form, precision, ops per domain and the consumers it
was validated on with their versions (``graph_files``).  Provenance (``source``, the dev set's
name, attachments' ``from``) is stored without machine paths (``rnnkit.export.provenance``).

then, for the bundle: the dev metrics (fp32, int8) and the int8 gate (``min_agreement``, or the
task's own), attachments (a lexicon), the manifest with hashes, and the atomic rename.  Any
failure leaves nothing at ``out``.

A task contributes an ``Exportable`` (``rnnkit.export.task_*``): its config, weights, graphs
(one ``GraphSpec`` each: writer, checker, torch oracle, parity cases), manifest entries and dev
metrics.  Every graph is validated at the bundle's ``max_length`` too (``rnnkit.export.validate``):
what a bundle accepts is what was validated.  A task may validate less and then records that as
its ``max_length`` (``Exportable.max_length_cap``: a language model's step graph, whose runtime
feeds longer texts in chunks of that size).  Messages name the caller's arguments as the Python
API spells them (``max_length=256``), or as ``flags`` say (the CLI: ``--max-length 256``).

Imports onnx, numpy and the runtime; torch only through the task's oracles.
"""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from ..runtime import backends
from ..runtime.errors import InputError, ParityError
from ..runtime.manifest import FORMAT_VERSION, GRAPH_FILES_KEY, MODEL_FP32, MODEL_INT8, OPSET
from ..runtime.tolerance import FP32, INT8_SEQUENCE
from . import consumers
from .bundle import BundleWriter
from .consumer_check import ConsumerChecks, requested
from .forms import (
    DEFAULT_GRAPH_FORM,
    DEFAULT_INT8_FORMAT,
    GRAPH_FORMS,
    INT8_FORMATS,
    check_choice,
    file_record,
    int8_graph,
    to_form,
)
from .provenance import portable_provenance
from .validate import LENGTHS, LENS, Arguments, Forward, ParityReport, check_parity, outputs, raise_on_failures

DEFAULT_MAX_LENGTH = 10_000  # tokens per text/sentence at run time: bounds memory on absurd input; validated
VALIDATION_BACKENDS = ("onnxruntime", "numba")
DEV_BATCH = 64


@dataclass
class DevSet:
    items: list  # texts (classify, seq2seq sources) or token lists (tag)
    labels: list | None  # gold labels / tag lists / reference outputs when known: accuracy is recorded too
    source: str


@dataclass
class GraphSpec:
    """One ONNX graph of a bundle: how the pipeline writes, checks and validates it."""

    name: str  # "model" (single-graph tasks) | "encoder" | "decoder"
    file: str  # fp32 file name in the bundle
    int8_file: str  # its int8 sibling
    build: Callable[[Any, dict], onnx.ModelProto]  # (config, weights) -> graph, metadata included
    check: Callable[[onnx.ModelProto, Any], None]
    oracle: Forward  # the torch module on this graph's feeds
    # (oracle name, oracle, {backend: forward}, tolerance, int8?, max_length=, args=) -> the parity report
    # over this graph's cases (fp32: also at max_length; args: how its advice names arguments)
    parity: Callable[..., ParityReport]
    # fp32 parity failed: a better diagnosis than the row pattern's, or None (a user module's one-direction probe)
    explain: Callable[[ParityReport], list[str] | None] | None = None


@dataclass
class Exportable:
    """What the pipeline needs from one task: its graphs and how to judge them."""

    task: str  # "classify" | "tag" | "lm" | "seq2seq"
    config: Any  # the task's config dataclass (rnnkit.export.architecture)
    weights: dict[str, np.ndarray]  # keyed like the torch state_dict
    graphs: list[GraphSpec]  # written, checked and validated in this order
    encode_dev: Callable[[DevSet, int], tuple[list[dict], np.ndarray | None]] | None = None  # feeds, flat gold ids
    entries: dict = field(default_factory=dict)  # manifest entries: tokenizer(s), labels, charset, state
    unit: str = "texts"  # what one dev prediction is: a text or a token
    # the task's own dev metrics from {"fp32": {graph: forward}[, "int8": {...}]} (default: label agreement/accuracy)
    dev_metrics: Callable[[dict, DevSet, int], dict] | None = None
    # the task's int8 gate on its dev metrics (and how to name arguments) -> a failure message or None
    # (default: min_agreement)
    int8_gate: Callable[[dict, Arguments], str | None] | None = None
    # the longest input this task validates: a larger max_length is recorded as this (None: no limit)
    max_length_cap: int | None = None


def single_graph(
    build,
    check,
    oracle: Forward,
    vocab_size: int,
    char_vocab_size: int = 0,
    state_shapes: dict | None = None,
    int8_lengths: tuple = LENGTHS,
    oracle_output: str | None = None,
    explain=None,
    per_token: tuple[str, ...] = (),
) -> list[GraphSpec]:
    """The one ``model.onnx`` of a classifier, tagger or language model, validated by ``check_parity``
    on ragged (ids, lengths[, chars][, state]) feeds up to ``max_length``; int8 on probabilities up
    to ``int8_lengths`` (longer int8 runs are gated on the dev set).  ``oracle_output``: what the
    torch oracle returns when detected (``output_space``), recorded and compared in its space.
    ``per_token``: outputs after the scores compared too (a classifier's ``pooling_weights``)."""

    def parity(oracle_name, oracle, candidates, tol, int8, max_length=None, args=None):
        if int8:
            return check_parity(
                oracle_name,
                oracle,
                candidates,
                tol,
                vocab_size=vocab_size,
                char_vocab_size=char_vocab_size,
                state_shapes=state_shapes,
                probabilities=True,
                lengths=tuple(t for t in int8_lengths if max_length is None or t <= max_length),
                diagnose=False,
                per_token=per_token,
            )
        return check_parity(
            oracle_name,
            oracle,
            candidates,
            tol,
            vocab_size=vocab_size,
            char_vocab_size=char_vocab_size,
            state_shapes=state_shapes,
            max_length=max_length,
            oracle_output=oracle_output,
            args=args,
            per_token=per_token,
        )

    return [GraphSpec("model", MODEL_FP32, MODEL_INT8, build, check, oracle, parity, explain)]


def numpy_weights(module) -> dict[str, np.ndarray]:
    """A torch module's ``state_dict()`` as numpy arrays, the graph writers' input."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def session_forward(session) -> Forward:
    """A backend session as a parity forward: feeds only the inputs the graph declares; returns
    the first output, or every output (a tuple) when the graph has state outputs."""
    names = [i.name for i in session.get_inputs()]

    def forward(feed: dict):
        out = session.run(None, {k: feed[k] for k in names})
        return out[0] if len(out) == 1 else tuple(out)

    return forward


def _sessions(model: onnx.ModelProto, path: Path, bundle: Path | None = None) -> dict[str, Forward]:
    """Both backends over ``path`` (a file in the bundle's temporary folder); ``bundle``, the folder
    it becomes, is what numba's cold-compile notice names."""
    missing = [b for b in VALIDATION_BACKENDS if not backends.available(b)]
    if missing:
        raise InputError(
            f"export validates on both backends, but {missing} not installed; "
            f"run `pip install {' '.join(backends.PACKAGES[b] for b in missing)}`"
        )
    return {
        b: session_forward(backends.open_session(model, path, b, name=str(bundle) if bundle else None))
        for b in VALIDATION_BACKENDS
    }


# -- the pipeline ----------------------------------------------------------------------------


@dataclass
class _Records:
    """What the graphs' stages leave for the manifest and the dev set, per graph name."""

    io: dict = field(default_factory=dict)
    fp32: dict = field(default_factory=dict)
    int8: dict = field(default_factory=dict)
    quantization: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # graph file -> (graph, "fp32" | "int8")
    forwards: dict = field(default_factory=lambda: {"fp32": {}})  # {"fp32"|"int8": {graph: onnxruntime forward}}


def export(
    item: Exportable,
    out,
    *,
    int8: bool = False,
    dev: DevSet | None = None,
    min_agreement: float = 0.99,
    max_length: int = DEFAULT_MAX_LENGTH,
    log: Callable[[str], None] = print,
    source: dict | None = None,
    attachments: dict[str, Callable[[Path], dict]] | None = None,
    flags: dict[str, str] | None = None,
    graph_form: str = DEFAULT_GRAPH_FORM,
    int8_format: str | None = None,
    validate_on: str | list[str] | tuple[str, ...] | None = None,
) -> dict:
    """Build, check, write and validate every graph of ``item`` (and its int8 sibling), measure the dev
    set, and commit the bundle; any failure leaves nothing at ``out``.

    Per-graph records (the graph's IO in ``graph``, ``validation.fp32`` / ``validation.int8``,
    ``quantization``) are stored flat for a single-graph bundle (``model.onnx``) and keyed by graph
    name (``encoder``, ``decoder``) for a bundle with several.  ``attachments``: manifest key -> a
    function that writes its file(s) into the bundle folder and returns the key's record (a lexicon).
    ``max_length``: every fp32 graph is validated at it (``check_parity``), or at the task's cap,
    which is then recorded instead.  ``flags``: how messages name the arguments (``Arguments``).
    ``graph_form``, ``int8_format``: ``rnnkit.export.forms.GRAPH_FORMS`` / ``INT8_FORMATS`` (an
    ``int8_format`` needs ``int8``; None: ``DEFAULT_INT8_FORMAT``);
    ``validate_on``: other consumers to validate every graph on (``"reference,openvino,tract"``)."""
    args = Arguments(flags)
    max_length = _check_arguments(item, int8, dev, min_agreement, max_length, log, args)
    check_choice(graph_form, GRAPH_FORMS, args("graph_form"))
    if int8_format is not None and not int8:  # a format without int8 graphs: the user expects some
        raise InputError(f"{args('int8_format', int8_format)} chooses how int8 graphs are written; add {args('int8')}")
    int8_format = check_choice(int8_format or DEFAULT_INT8_FORMAT, INT8_FORMATS, args("int8_format"))
    checks = ConsumerChecks(requested(validate_on, args))
    manifest: dict = {
        "format": "rnnkit-bundle",
        "format_version": FORMAT_VERSION,
        "task": item.task,
        "architecture": item.config.to_dict(),
        **item.entries,
        "producer": _versions(),
        "source": portable_provenance(source or {}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    records = _Records()
    with BundleWriter(out) as writer:
        for spec in item.graphs:
            _export_graph(spec, item, writer, records, int8, max_length, log, args, graph_form, int8_format, checks)
        checks.raise_if_failed(args)
        manifest[GRAPH_FILES_KEY] = graph_files(records.files, checks)
        manifest["graph"] = {"opset": OPSET, "max_length": max_length, **_flat_or_named(records.io)}
        manifest["validation"] = {
            "fp32": _flat_or_named(records.fp32),
            **({"int8": _flat_or_named(records.int8)} if int8 else {}),
        }
        manifest["quantization"] = _flat_or_named(records.quantization) if int8 else None
        if dev is not None:
            manifest["validation"]["dev"] = portable_provenance(
                _dev_gate(item, records.forwards, dev, int8, min_agreement, max_length, args)
            )
        if checks.reports:
            manifest["validation"]["consumers"] = checks.reports
        for key, write in (attachments or {}).items():
            manifest[key] = portable_provenance(write(writer.tmp))
        return {"path": str(writer.commit(manifest)), "manifest": manifest}


def _check_arguments(
    item: Exportable,
    int8: bool,
    dev: DevSet | None,
    min_agreement: float,
    max_length,
    log: Callable[[str], None],
    args: Arguments,
) -> int:
    """Refuse bad arguments before any work; -> the max_length to validate and record."""
    if not 0.0 <= min_agreement <= 1.0:
        raise InputError(f"{args('min_agreement')} must be in [0, 1], got {min_agreement}")
    if int8 and dev is None:
        raise InputError(
            "an int8 export checks agreement with fp32 on a dev set, and none was found: "
            f"pass {args('dev')} (or export without {args('int8')})"
        )
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise InputError(f"{args('max_length')} must be an integer >= 1 (tokens per input), got {max_length!r}")
    if item.max_length_cap is not None and max_length > item.max_length_cap:
        log(
            f"max_length {max_length} -> {item.max_length_cap}: a {item.task} bundle validates and records at most "
            f"{item.max_length_cap} tokens per graph call (longer inputs run in chunks of that size)"
        )
        max_length = item.max_length_cap
    return int(max_length)


def graph_files(files: dict, checks: ConsumerChecks) -> dict:
    """The manifest's ``graph_files``: per file its form, precision, ops and validated consumers."""
    own = {b: consumers.version(b) or "" for b in VALIDATION_BACKENDS}
    return {
        file: file_record(graph, precision, {**own, **checks.passed.get(file, {})})
        for file, (graph, precision) in files.items()
    }


def _export_graph(
    spec: GraphSpec,
    item: Exportable,
    writer: BundleWriter,
    records: _Records,
    int8: bool,
    max_length: int,
    log: Callable[[str], None],
    args: Arguments,
    graph_form: str = DEFAULT_GRAPH_FORM,
    int8_format: str = DEFAULT_INT8_FORMAT,
    checks: ConsumerChecks | None = None,
) -> None:
    """build -> check -> write -> validate one graph; with ``int8`` its quantized sibling likewise."""
    checks = checks or ConsumerChecks({})
    built = spec.build(item.config, item.weights)
    spec.check(built, item.config)  # the task's checker reads the form it writes (sequence_lens)
    graph = to_form(built, graph_form)  # a rewrite the parity below validates like the graph itself
    path = writer.save_model(spec.file, graph)
    log(f"validating {spec.file}: torch vs onnxruntime vs numba, up to max_length {max_length} ...")
    sessions = _sessions(graph, path, writer.out)
    report = spec.parity("torch", spec.oracle, sessions, FP32, False, max_length=max_length, args=args)
    if report.failures and spec.explain:
        report.diagnosis = spec.explain(report) or report.diagnosis
    raise_on_failures(report, what=f"{spec.file} vs torch")
    several = len(item.graphs) > 1
    records.io[spec.name] = {**({"file": spec.file} if several else {}), **_graph_io(graph)}
    records.fp32[spec.name] = report.to_dict()
    records.forwards["fp32"][spec.name] = sessions["onnxruntime"]
    records.files[spec.file] = (graph, "fp32")
    if checks.versions:
        log(f"validating {spec.file} on {', '.join(checks.versions)} against onnxruntime ...")
    checks.check(spec.file, graph, spec.parity, "onnxruntime", sessions["onnxruntime"], FP32, False, max_length, args)
    if not int8:
        return
    qgraph, params = int8_graph(graph, int8_format, unrewritten=built)
    if int8_format == "onnxruntime":
        spec.check(qgraph, item.config)
    qpath = writer.save_model(spec.int8_file, qgraph)
    q = _sessions(qgraph, qpath, writer.out)
    if int8_format == "portable":  # standard ops only: both backends against the fp32 graph
        log(f"validating {spec.int8_file}: onnxruntime and numba int8 vs onnxruntime fp32 ...")
        qreport = spec.parity(
            "onnxruntime-fp32", sessions["onnxruntime"], q, INT8_SEQUENCE, True, max_length=max_length, args=args
        )
        raise_on_failures(qreport, what=f"{spec.int8_file} vs {spec.file}")
    else:
        log(f"validating {spec.int8_file}: numba int8 vs onnxruntime int8 ...")
        qreport = spec.parity(
            "onnxruntime-int8",
            q["onnxruntime"],
            {"numba": q["numba"]},
            INT8_SEQUENCE,
            True,
            max_length=max_length,
            args=args,
        )
        raise_on_failures(qreport, what=f"{spec.int8_file}: numba vs onnxruntime")
    records.files[spec.int8_file] = (qgraph, "int8")
    checks.check(
        spec.int8_file,
        qgraph,
        spec.parity,
        "onnxruntime-fp32",
        sessions["onnxruntime"],
        INT8_SEQUENCE,
        True,
        max_length,
        args,
    )
    records.int8[spec.name] = qreport.to_dict()
    records.quantization[spec.name] = {**params, "size_ratio": round(qpath.stat().st_size / path.stat().st_size, 4)}
    records.forwards.setdefault("int8", {})[spec.name] = q["onnxruntime"]


def _dev_gate(
    item: Exportable, forwards: dict, dev: DevSet, int8: bool, min_agreement: float, max_length: int, args: Arguments
) -> dict:
    """The dev metrics of the written graphs; with ``int8``, refuse the export below the task's gate."""
    if item.dev_metrics:
        metrics = item.dev_metrics(forwards, dev, max_length)
    else:
        (only,) = (spec.name for spec in item.graphs)
        metrics = dev_metrics(
            {v: fs[only] for v, fs in forwards.items()}, *item.encode_dev(dev, max_length), dev.source, item.unit
        )
    files = ", ".join(spec.int8_file for spec in item.graphs)
    gate = item.int8_gate(metrics, args) if int8 and item.int8_gate else None
    if gate:
        raise ParityError(
            f"{files}: {gate}; nothing was written. Export without {args('int8')}, or raise "
            f"{args('max_loss_delta')} if that is acceptable"
        )
    if int8 and item.int8_gate is None and metrics["int8_agreement"] < min_agreement:
        raise ParityError(
            f"{files}: int8 agrees with fp32 on {metrics['int8_agreement']:.2%} of "
            f"{dev.source} ({metrics['examples']} {metrics['unit']}), below "
            f"{args('min_agreement')} {min_agreement:.2%}; nothing was written. Export without "
            f"{args('int8')}, or lower {args('min_agreement')} if that is acceptable"
        )
    return metrics


def _flat_or_named(per_graph: dict[str, Any]) -> Any:
    """A single-graph bundle's record as it is (the format of model.onnx bundles); several keyed by graph name."""
    return per_graph["model"] if list(per_graph) == ["model"] else per_graph


def _graph_io(graph: onnx.ModelProto) -> dict:
    def describe(values):
        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    return {"inputs": describe(graph.graph.input), "outputs": describe(graph.graph.output)}


def _predictions(forward: Forward, feed: dict) -> np.ndarray:
    """Argmax per row (classify) or per real token (tag), flattened."""
    out = outputs(forward(feed))[0].argmax(-1)
    if out.ndim == 2:
        return out[np.arange(out.shape[1])[None, :] < feed[LENS][:, None]]
    return out


def dev_metrics(
    forwards: dict[str, Forward], feeds: list[dict], gold: np.ndarray | None, source: str, unit: str
) -> dict:
    """Label (classify) or tag (tag) accuracy of fp32 [and int8] on the encoded dev set, and int8's
    agreement with fp32: the default dev metrics, gated by ``min_agreement``."""
    predictions = {
        name: np.concatenate([_predictions(f, feed) for feed in feeds]) if feeds else np.zeros(0, int)
        for name, f in forwards.items()
    }
    n = len(predictions["fp32"])
    result = {"source": source, "examples": n, "unit": unit}
    if gold is not None:
        for name, pred in predictions.items():
            result[f"{name}_accuracy"] = round(float((pred == gold).mean()), 6) if n else 0.0
    if "int8" in predictions:
        result["int8_agreement"] = round(float((predictions["int8"] == predictions["fp32"]).mean()), 6) if n else 1.0
        if gold is not None:
            result["int8_accuracy_drop_pt"] = round(100 * (result["fp32_accuracy"] - result["int8_accuracy"]), 3)
    return result


def _versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for package in ("rnnkit", "torch", "onnx", "onnxruntime", "numba", "numpy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return versions
