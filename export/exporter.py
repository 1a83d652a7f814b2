"""Export: a trained classifier -> a validated (and optionally int8) bundle.

Two entry points share one pipeline:

* ``export_checkpoint(CKPT_DIR, out)`` for models trained with ``rnnkit train``;
* ``export_module(module, tokenizer, labels, out)`` for users' own ``nn.Module``s.

Pipeline: weights -> ``build_classifier_graph`` (native ONNX RNN/LSTM/GRU ops, written
directly, never traced) -> ``check_graph`` on what was written -> parity on both
backends against the torch module -> optional int8 graph -> its own checks, parity of
numba int8 against onnxruntime int8, and label agreement with fp32 on the dev set
(export fails below ``min_agreement``) -> manifest with hashes -> atomic rename.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from ..runtime import backends
from ..runtime.errors import InputError, ParityError
from ..runtime.manifest import FORMAT_VERSION, MODEL_FP32, MODEL_INT8, OPSET, ClassifierIO
from ..runtime.model import length_buckets, pad
from ..runtime.tokenizer import WordTokenizer
from ..runtime.tolerance import FP32, INT8
from ..toolkit.configs import ClassifierConfig
from .bundle import BundleWriter
from .check import check_graph
from .graph import build_classifier_graph
from .quantize import quantize_classifier
from .validate import Forward, check_parity, raise_on_failures

DEFAULT_MAX_LENGTH = 10_000  # tokens kept per text at run time: bounds memory on absurd input
VALIDATION_BACKENDS = ("onnxruntime", "numba")


@dataclass
class DevSet:
    texts: list[str]
    labels: list[str] | None  # gold labels when known: accuracy is recorded beside agreement
    source: str


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, int8: bool = False,
                      dev: DevSet | None = None, min_agreement: float = 0.99,
                      max_length: int = DEFAULT_MAX_LENGTH, log: Callable[[str], None] = print) -> dict:
    from ..toolkit.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    weights = {k: v.detach().cpu().numpy() for k, v in ckpt.model.state_dict().items()}
    return _export(ckpt.config, weights, ckpt.tokenizer, list(ckpt.labels), _torch_forward(ckpt.model), out,
                   int8=int8, dev=dev, min_agreement=min_agreement, max_length=max_length, log=log,
                   source={"checkpoint": str(Path(checkpoint).resolve()), "training": ckpt.meta.get("training", {})})


def export_module(module, tokenizer: WordTokenizer, labels: Sequence[str], out: str | os.PathLike,
                  pooling: str = "last", forward: Callable | None = None, int8: bool = False,
                  dev: DevSet | None = None, min_agreement: float = 0.99, max_length: int = DEFAULT_MAX_LENGTH,
                  log: Callable[[str], None] = print) -> dict:
    """Export a user's own trained ``nn.Module`` (Embedding -> RNN/LSTM/GRU -> Linear and glue).

    ``forward(module, input_ids, lengths) -> logits`` tells validation how to call it
    (default ``module(input_ids, lengths)``); the written graph must match it on ragged
    padded batches or the export fails.
    """
    from .module import config_from_module

    config, weights = config_from_module(module, pooling=pooling, padding_idx=0)
    if config.vocab_size != tokenizer.vocab_size:
        raise InputError(f"the module's embedding has {config.vocab_size} rows but the tokenizer has "
                         f"{tokenizer.vocab_size} entries; pass the tokenizer the model was trained with")
    if config.num_labels != len(labels):
        raise InputError(f"the module's head has {config.num_labels} outputs but {len(labels)} labels were given")
    module.eval()
    call = forward or (lambda m, ids, lens: m(ids, lens))
    return _export(config, weights, tokenizer, list(labels), _torch_forward(module, call), out, int8=int8,
                   dev=dev, min_agreement=min_agreement, max_length=max_length, log=log,
                   source={"module": type(module).__name__})


def _torch_forward(module, call=None) -> Forward:
    import torch

    module.eval()
    call = call or (lambda m, ids, lens: m(ids, lens))

    def forward(feed: dict) -> np.ndarray:
        ids = torch.from_numpy(feed[ClassifierIO.input_ids])
        lens = torch.from_numpy(feed[ClassifierIO.sequence_lens].astype(np.int64))
        with torch.no_grad():
            out = call(module, ids, lens)
        return out.detach().cpu().numpy().astype(np.float32)

    return forward


def session_forward(session) -> Forward:
    """A backend session as a parity forward: feeds only the inputs the graph declares."""
    names = [i.name for i in session.get_inputs()]
    return lambda feed: session.run(None, {k: feed[k] for k in names})[0]


def _sessions(model: onnx.ModelProto, path: Path) -> dict[str, Forward]:
    missing = [b for b in VALIDATION_BACKENDS if not backends.available(b)]
    if missing:
        raise InputError(f"export validates on both backends, but {missing} not installed; "
                         f"run `pip install {' '.join(backends.PACKAGES[b] for b in missing)}`")
    return {b: session_forward(backends.open_session(model, path, b)) for b in VALIDATION_BACKENDS}


def _export(config: ClassifierConfig, weights: dict[str, np.ndarray], tokenizer: WordTokenizer, labels: list[str],
            oracle: Forward, out, *, int8: bool, dev: DevSet | None, min_agreement: float, max_length: int,
            log: Callable[[str], None], source: dict) -> dict:
    if not 0.0 <= min_agreement <= 1.0:
        raise InputError(f"--min-agreement must be in [0, 1], got {min_agreement}")
    if int8 and dev is None:
        raise InputError("an int8 export checks label agreement with fp32 on a dev set, and none was found: "
                         "pass --dev FILE (or export without --int8)")
    metadata = {"rnnkit.task": "classify", "rnnkit.format_version": str(FORMAT_VERSION),
                "rnnkit.architecture": f"{config.cell} x{config.layers}"
                                       f"{' bi' if config.bidirectional else ''} pool={config.pooling}"}
    manifest: dict = {
        "format": "rnnkit-bundle", "format_version": FORMAT_VERSION, "task": "classify",
        "architecture": config.to_dict(), "tokenizer": tokenizer.to_dict(), "labels": labels,
        "producer": _versions(), "source": source,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with BundleWriter(out) as writer:
        graph = build_classifier_graph(config, weights, metadata)
        check_graph(graph, config)
        path = writer.save_model(MODEL_FP32, graph)
        log(f"validating {MODEL_FP32}: torch vs onnxruntime vs numba ...")
        fp32 = _sessions(graph, path)
        report = check_parity("torch", oracle, fp32, FP32, config.vocab_size)
        raise_on_failures(report, what=f"{MODEL_FP32} vs torch")
        manifest["graph"] = _graph_contract(graph, max_length)
        manifest["validation"] = {"fp32": report.to_dict()}
        if dev is not None:
            manifest["validation"]["dev"] = _dev_metrics({"fp32": fp32["onnxruntime"]}, dev, tokenizer, labels,
                                                         max_length)
        if int8:
            qgraph, params = quantize_classifier(graph)
            check_graph(qgraph, config)
            qpath = writer.save_model(MODEL_INT8, qgraph)
            log(f"validating {MODEL_INT8}: numba int8 vs onnxruntime int8, and agreement with fp32 ...")
            q = _sessions(qgraph, qpath)
            qreport = check_parity("onnxruntime-int8", q["onnxruntime"], {"numba": q["numba"]}, INT8,
                                   config.vocab_size, probabilities=True)
            raise_on_failures(qreport, what=f"{MODEL_INT8}: numba vs onnxruntime")
            dev_metrics = _dev_metrics({"fp32": fp32["onnxruntime"], "int8": q["onnxruntime"]}, dev, tokenizer,
                                       labels, max_length)
            manifest["validation"]["int8"] = qreport.to_dict()
            manifest["validation"]["dev"] = dev_metrics
            params["size_ratio"] = round(qpath.stat().st_size / path.stat().st_size, 4)
            manifest["quantization"] = params
            if dev_metrics["int8_agreement"] < min_agreement:
                raise ParityError(f"{MODEL_INT8}: int8 agrees with fp32 on {dev_metrics['int8_agreement']:.2%} of "
                                  f"{dev.source} ({dev_metrics['examples']} texts), below --min-agreement "
                                  f"{min_agreement:.2%}; nothing was written. Export without --int8, or lower "
                                  f"--min-agreement if that is acceptable")
        else:
            manifest["quantization"] = None
        return {"path": str(writer.commit(manifest)), "manifest": manifest}


def _graph_contract(graph: onnx.ModelProto, max_length: int) -> dict:
    def describe(values):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return {"opset": OPSET, "max_length": int(max_length),
            "inputs": describe(graph.graph.input), "outputs": describe(graph.graph.output)}


def _dev_metrics(forwards: dict[str, Forward], dev: DevSet, tokenizer: WordTokenizer, labels: list[str],
                 max_length: int) -> dict:
    encoded = [tokenizer.encode(t)[:max_length] for t in dev.texts]
    keep = [i for i, ids in enumerate(encoded) if ids]
    encoded = [encoded[i] for i in keep]
    batches = [dict(zip(ClassifierIO.inputs, pad([encoded[r] for r in rows])))
               for rows in length_buckets([len(e) for e in encoded], 64)]
    order = np.concatenate(list(length_buckets([len(e) for e in encoded], 64))) if encoded else np.array([], int)
    result = {"source": dev.source, "examples": len(encoded)}
    predictions = {}
    for name, forward in forwards.items():
        predictions[name] = np.concatenate([forward(feed).argmax(-1) for feed in batches])
    if dev.labels is not None:
        gold = np.array([labels.index(dev.labels[keep[i]]) if dev.labels[keep[i]] in labels else -1 for i in order])
        for name, pred in predictions.items():
            result[f"{name}_accuracy"] = round(float((pred == gold).mean()), 6)
    if "int8" in predictions:
        result["int8_agreement"] = round(float((predictions["int8"] == predictions["fp32"]).mean()), 6)
        if dev.labels is not None:
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
