"""Re-forming an existing bundle: the same model in another graph form / int8 format, without torch.

``reform_bundle(source, out, graph_form="portable", int8_format="portable")`` opens ``source``
(verified like any bundle), rewrites its fp32 graphs (``rnnkit.export.forms.to_form``: the
portable rewrite) and, when the source has int8 graphs, writes new int8 siblings from the
rewritten fp32 graphs (``int8_format``), then validates what it wrote against the source's own
fp32 graphs on onnxruntime, on the same ragged padded batches as an export (fp32: ``FP32`` on
onnxruntime and numba, up to the bundle's ``max_length``; int8: ``INT8_SEQUENCE`` on probabilities,
an int8 encoder through the new fp32 decoder), and optionally on other consumers (``validate_on``).
The manifest is the source's with the graph records, files, validation and quantization of the
new graphs, ``reformed`` (the source's manifest digest and the choices), and is sealed again;
every other file (a lexicon) is copied.  Written atomically (``BundleWriter``): any failure leaves
nothing at ``out``.

The source's dev metrics stay for fp32 (same answers within FP32); a new int8 graph has no dev set
here, so the int8 dev metrics are dropped and the manifest says so (export the checkpoint again with
``--int8 --dev`` to measure them).  Imports onnx, numpy and the runtime; never torch.
"""

from __future__ import annotations

import copy
import datetime as _dt
import shutil
import types
from typing import Callable

from ..runtime.bundle import open_bundle
from ..runtime.errors import InputError
from ..runtime.manifest import DIGEST_KEY, GRAPH_FILES_KEY, ClassifierIO, LanguageModelIO
from ..runtime.tasks import TASKS
from ..runtime.tolerance import FP32, INT8_SEQUENCE
from .bundle import BundleWriter
from .consumer_check import ConsumerChecks, requested
from .forms import GRAPH_FORMS, INT8_FORMATS, check_choice, int8_graph, to_form
from .pipeline import _sessions, graph_files, single_graph
from .provenance import portable_provenance
from .validate import raise_on_failures
from .validate_seq2seq import INT8_LENGTHS, check_seq2seq_parity

INT8_PARITY_LENGTHS = (1, 7, 33)  # int8 parity lengths of every task (longer runs are a dev-set matter)


def reform_bundle(
    source,
    out,
    *,
    graph_form: str = "portable",
    int8_format: str | None = None,
    validate_on: str | list[str] | None = None,
    max_length: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write ``out``: ``source`` with its graphs in ``graph_form`` and its int8 graphs (if it has any) in
    ``int8_format`` (default: portable when the graph form is).  ``max_length``: validate fp32 up to
    this length instead of the bundle's own (recorded as validated: lower only to save time).
    Returns {"path", "manifest"} like ``pipeline.export``."""
    check_choice(graph_form, GRAPH_FORMS, "graph_form")
    bundle = open_bundle(source)
    int8_format = int8_format or (graph_form if bundle.has_int8 else None)
    if int8_format is not None:
        check_choice(int8_format, INT8_FORMATS, "int8_format")
        if not bundle.has_int8:
            raise InputError(
                f"{bundle.path} has no int8 graphs, and int8 needs a dev-set gate a re-form cannot "
                f"run: export the checkpoint with int8=True, int8_format={int8_format!r} and a dev set "
                f"instead"
            )
    checks = ConsumerChecks(requested(validate_on))
    manifest = copy.deepcopy(bundle.manifest)
    for key in ("source", "lexicon"):  # older bundles recorded the exporting machine's paths
        if key in manifest:
            manifest[key] = portable_provenance(manifest[key])
    if isinstance(manifest.get("validation", {}).get("dev"), dict):
        manifest["validation"]["dev"] = portable_provenance(manifest["validation"]["dev"])
    recorded = manifest["graph"]["max_length"]
    max_length = min(int(max_length or recorded), recorded)
    manifest["graph"]["max_length"] = max_length
    task, arch = bundle.task, manifest["architecture"]
    io_files = TASKS[task].io.files
    several = len(io_files) > 1
    records: dict = {"files": {}, "fp32": {}, "int8": {}, "quantization": {}}
    with BundleWriter(out) as writer:
        graph_names = set(f for pair in io_files.values() for f in pair)
        for file in manifest["files"]:
            if file not in graph_names:  # a lexicon: copied as it is (its digest stays valid)
                shutil.copy2(bundle.path / file, writer.tmp / file)
        new_fp32, fp32_forward, source_fp32 = {}, {}, {}
        for name, (fp32_file, _) in io_files.items():
            src = source_fp32[name] = bundle.graph(False, name)
            graph = to_form(src, graph_form)
            writer.save_model(fp32_file, graph)
            before = _sessions(src, bundle.path / fp32_file)
            oracle = before["onnxruntime"]
            sessions = _sessions(graph, writer.tmp / fp32_file)
            log(f"validating {fp32_file} ({graph_form}) against the source's {fp32_file} on each backend ...")
            parity = _parity(task, arch, name, manifest)
            # each backend against the source graph on the same backend: at max_length (10,000 steps) the two
            # backends' rounding differs by more than FP32 on the source graph itself, and that is not the rewrite
            report = parity(
                f"source {fp32_file} on the same backend",
                oracle,
                {"onnxruntime": sessions["onnxruntime"]},
                FP32,
                False,
                max_length=max_length,
            )
            other = parity("", before["numba"], {"numba": sessions["numba"]}, FP32, False, max_length=max_length)
            report.worst.update(other.worst)
            for output, worst in other.outputs.items():
                report.outputs.setdefault(output, {}).update(worst)
            report.cases += other.cases
            report.failures += other.failures
            raise_on_failures(report, what=f"{fp32_file} vs the source's")
            records["fp32"][name] = report.to_dict()
            records["files"][fp32_file] = (graph, "fp32")
            new_fp32[name], fp32_forward[name] = graph, oracle
            checks.check(fp32_file, graph, parity, "onnxruntime", oracle, FP32, False, max_length)
        for name, (_, int8_file) in io_files.items() if int8_format else ():
            qgraph, params = int8_graph(new_fp32[name], int8_format, unrewritten=source_fp32[name])
            qpath = writer.save_model(int8_file, qgraph)
            q = _sessions(qgraph, qpath)
            parity = _parity(task, arch, name, manifest, readout=fp32_forward.get("decoder"))
            log(f"validating {int8_file} ({int8_format}) against the source's fp32 graph on onnxruntime ...")
            candidates = q if int8_format == "portable" else {"numba": q["numba"]}
            oracle = fp32_forward[name] if int8_format == "portable" else q["onnxruntime"]
            report = parity(
                "source fp32 (onnxruntime)" if int8_format == "portable" else "onnxruntime-int8",
                oracle,
                candidates,
                INT8_SEQUENCE,
                True,
                max_length=max_length,
            )
            raise_on_failures(report, what=f"{int8_file}")
            records["int8"][name] = report.to_dict()
            records["quantization"][name] = params
            records["files"][int8_file] = (qgraph, "int8")
            checks.check(
                int8_file, qgraph, parity, "onnxruntime-fp32", fp32_forward[name], INT8_SEQUENCE, True, max_length
            )
        checks.raise_if_failed()
        flat = (lambda d: d) if several else (lambda d: d["model"])
        manifest["validation"]["fp32"] = flat(records["fp32"])
        if int8_format:
            manifest["validation"]["int8"] = flat(records["int8"])
            manifest["quantization"] = flat(records["quantization"])
            dev = manifest["validation"].get("dev")
            if isinstance(dev, dict):
                manifest["validation"]["dev"] = {k: v for k, v in dev.items() if not k.startswith("int8")}
                manifest["validation"]["dev"]["int8"] = (
                    "not measured: the int8 graphs were re-formed without a dev set; their parity is in validation.int8"
                )
        if checks.reports:
            manifest["validation"]["consumers"] = checks.reports
        else:
            manifest["validation"].pop("consumers", None)
        manifest[GRAPH_FILES_KEY] = graph_files(records["files"], checks)
        manifest["reformed"] = {
            "from_manifest_sha256": bundle.manifest.get(DIGEST_KEY),
            "graph_form": graph_form,
            "int8_format": int8_format,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        return {"path": str(writer.commit(manifest)), "manifest": manifest}


def _parity(task: str, arch: dict, name: str, manifest: dict, readout=None):
    """The task's parity check of graph ``name`` without torch (``GraphSpec.parity``'s signature)."""
    if task == "seq2seq":
        config = types.SimpleNamespace(**arch)

        def run(oracle_name, oracle, candidates, tol, int8, max_length=None, args=None):
            return check_seq2seq_parity(
                name,
                config,
                oracle_name,
                oracle,
                candidates,
                tol,
                int8,
                readout=readout if int8 and name == "encoder" else None,
                lengths=INT8_LENGTHS if int8 else None,
                max_length=None if int8 else max_length,
            )

        return run
    if task == "classify" and ClassifierIO.declares_pooling_weights(manifest["graph"]):
        from .task_classify import pooling_weights_parity  # its forwards return (logits, pooling_weights)

        return pooling_weights_parity(arch["vocab_size"], int8_lengths=INT8_PARITY_LENGTHS)
    state = None
    if task == "lm":
        state = {n: (arch["layers"], arch["hidden"]) for n in LanguageModelIO.state_inputs(arch["cell"])}
    chars = arch.get("char_vocab_size", 0) if manifest.get("charset") else 0
    spec = single_graph(
        None, None, None, arch["vocab_size"], chars, state_shapes=state, int8_lengths=INT8_PARITY_LENGTHS
    )[0]
    return spec.parity
