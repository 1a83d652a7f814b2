"""Export: a trained model -> a validated (and optionally int8) bundle.

One pipeline serves every task; a task contributes an ``Exportable`` (its config, weights,
its graphs -- one ``GraphSpec`` each: writer, checker, torch oracle, parity cases --, manifest
entries, dev metrics):

* ``export_checkpoint(CKPT_DIR, out)`` for models trained with ``rnnkit train`` (any task);
* ``export_module(module, tokenizer, labels, out)`` for users' own classifier ``nn.Module``s;
* ``export_seq2seq(module, source_tokenizer, target_tokenizer, out)`` for users' own ``Seq2Seq``.

Pipeline, per graph: weights -> graph (native ONNX RNN/LSTM/GRU ops, written directly, never
traced) -> graph check on what was written -> parity on both backends against the torch module
-> optional int8 graph -> its own check and parity of numba int8 against onnxruntime int8; then
agreement with fp32 on the dev set (export fails below ``min_agreement``, or the task's own gate)
-> manifest with hashes -> atomic rename.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from ..runtime import backends
from ..runtime.errors import BundleError, InputError, ParityError
from ..runtime.manifest import FORMAT_VERSION, MODEL_FP32, MODEL_INT8, OPSET, ClassifierIO, TaggerIO
from ..runtime.model import length_buckets, pad
from ..runtime.tokenizer import WordTokenizer
from ..runtime.tolerance import FP32, INT8_SEQUENCE, Tolerance
from .bundle import BundleWriter
from .quantize import quantize_graph
from .validate import LENGTHS, LENS, Forward, ParityReport, check_parity, outputs, raise_on_failures

DEFAULT_MAX_LENGTH = 10_000  # tokens per text/sentence at run time: bounds memory on absurd input
VALIDATION_BACKENDS = ("onnxruntime", "numba")
DEV_BATCH = 64


@dataclass
class DevSet:
    items: list                       # texts (classify, seq2seq sources) or token lists (tag)
    labels: list | None               # gold labels / tag lists / reference outputs when known: accuracy is recorded too
    source: str


@dataclass
class GraphSpec:
    """One ONNX graph of a bundle: how the pipeline writes, checks and validates it."""

    name: str                                         # "model" (single-graph tasks) | "encoder" | "decoder"
    file: str                                         # fp32 file name in the bundle
    int8_file: str                                    # its int8 sibling
    build: Callable[[Any, dict, dict], onnx.ModelProto]
    check: Callable[[onnx.ModelProto, Any], None]
    oracle: Forward                                   # the torch module on this graph's feeds
    # (oracle name, oracle, {backend: forward}, tolerance, int8?) -> the parity report over this graph's cases
    parity: Callable[[str, Forward, dict, Tolerance, bool], ParityReport]


@dataclass
class Exportable:
    """What the shared pipeline needs from one task: its graphs and how to judge them."""

    task: str                                         # "classify" | "tag" | "lm" | "seq2seq"
    config: Any                                       # the task's config dataclass
    weights: dict[str, np.ndarray]                    # keyed like the torch state_dict
    graphs: list[GraphSpec]                           # written, checked and validated in this order
    encode_dev: Callable[[DevSet, int], tuple[list[dict], np.ndarray | None]] | None = None  # feeds, flat gold ids
    entries: dict = field(default_factory=dict)       # manifest entries: tokenizer(s), labels, charset, state
    unit: str = "texts"                               # what one dev prediction is: a text or a token
    # the task's own dev metrics from {"fp32": {graph: forward}[, "int8": {...}]} (default: label agreement/accuracy)
    dev_metrics: Callable[[dict, DevSet, int], dict] | None = None
    # the task's int8 gate on its dev metrics -> a failure message or None (default: --min-agreement)
    int8_gate: Callable[[dict], str | None] | None = None


def single_graph(build, check, oracle: Forward, vocab_size: int, char_vocab_size: int = 0,
                 state_shapes: dict | None = None, int8_lengths: tuple = LENGTHS) -> list[GraphSpec]:
    """The one ``model.onnx`` of a classifier, tagger or language model, validated by ``check_parity``
    on ragged (ids, lengths[, chars][, state]) feeds; int8 on probabilities up to ``int8_lengths``."""
    def parity(oracle_name, oracle, candidates, tol, int8):
        return check_parity(oracle_name, oracle, candidates, tol, vocab_size=vocab_size,
                            char_vocab_size=char_vocab_size, state_shapes=state_shapes, probabilities=int8,
                            lengths=int8_lengths if int8 else LENGTHS)

    return [GraphSpec("model", MODEL_FP32, MODEL_INT8, build, check, oracle, parity)]


# -- entry points --------------------------------------------------------------------------

def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, int8: bool = False,
                      dev: DevSet | None = None, min_agreement: float = 0.99,
                      max_length: int = DEFAULT_MAX_LENGTH, log: Callable[[str], None] = print,
                      max_loss_delta: float = 0.02, lexicon: str | os.PathLike | None = None,
                      lexicon_format: str | None = None) -> dict:
    """``max_loss_delta``: language models only, the int8 gate (nats/token of dev loss above fp32);
    ``min_agreement``: classifiers and taggers (share of dev labels/tags int8 agrees with fp32 on);
    ``lexicon``: encoder-decoders only, pairs stored in the bundle for ``translate(lookup=True)``
    (format ``lexicon_format``, default the training data's; CMUdict stress as in training)."""
    task = checkpoint_task(checkpoint)
    if lexicon is not None and task != "seq2seq":
        raise InputError(f"--lexicon: only encoder-decoder (seq2seq) bundles carry a lexicon; {checkpoint} is "
                         f"a {task} checkpoint")
    attachments = {}
    if task == "seq2seq":
        from ..toolkit.train_seq2seq import load_seq2seq_checkpoint
        from .task_seq2seq import seq2seq_exportable

        ckpt = load_seq2seq_checkpoint(checkpoint)
        item = seq2seq_exportable(ckpt.config, _numpy(ckpt.model), ckpt.source_tokenizer, ckpt.target_tokenizer,
                                  ckpt.model)
        if lexicon is not None:
            attachments["lexicon"] = _lexicon_attachment(lexicon, lexicon_format, ckpt)
    elif task == "lm":
        from ..toolkit.train_lm import load_lm_checkpoint
        from .task_lm import lm_exportable

        ckpt = load_lm_checkpoint(checkpoint)
        item = lm_exportable(ckpt.config, _numpy(ckpt.model), ckpt.tokenizer, ckpt.model, max_loss_delta)
    elif task == "tag":
        from ..toolkit.train_tag import load_tagger_checkpoint

        ckpt = load_tagger_checkpoint(checkpoint)
        item = tagger_exportable(ckpt.config, _numpy(ckpt.model), ckpt.tokenizer, ckpt.charset, ckpt.tags,
                                 _torch_tagger_forward(ckpt.model))
    else:
        from ..toolkit.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        item = classifier_exportable(ckpt.config, _numpy(ckpt.model), ckpt.tokenizer, list(ckpt.labels),
                                     _torch_forward(ckpt.model))
    source = {"checkpoint": str(Path(checkpoint).resolve()), "training": _training_summary(ckpt.meta)}
    return export(item, out, int8=int8, dev=dev, min_agreement=min_agreement, max_length=max_length, log=log,
                  source=source, attachments=attachments)


def _lexicon_attachment(path, fmt: str | None, ckpt) -> Callable[[Path], dict]:
    from ..runtime.lexicon import LEXICON_FILE, write_lexicon
    from ..toolkit.pairs import read_pairs
    from ..toolkit.train_seq2seq import reference_form

    training = ckpt.meta.get("training", {})
    lexicon_path, fmt = Path(path), fmt or training.get("format", "tsv")
    try:
        pairs = read_pairs(lexicon_path, fmt, keep_stress=bool(training.get("keep_stress", False)))
    except InputError as exc:
        raise InputError(f"--lexicon (read as {fmt}, the training data's format): {exc}; give "
                         f"--lexicon-format tsv|cmudict|tatoeba to read it otherwise") from None
    target = ckpt.target_tokenizer

    def write(folder: Path) -> dict:
        count = write_lexicon(folder / LEXICON_FILE, ((s, reference_form(target, t)) for s, t in pairs),
                              ckpt.source_tokenizer.normalize)
        return {"file": LEXICON_FILE, "sources": count, "from": str(lexicon_path.resolve())}

    return write


def export_module(module, tokenizer: WordTokenizer, labels: Sequence[str], out: str | os.PathLike,
                  pooling: str = "last", forward: Callable | None = None, int8: bool = False,
                  dev: DevSet | None = None, min_agreement: float = 0.99, max_length: int = DEFAULT_MAX_LENGTH,
                  log: Callable[[str], None] = print) -> dict:
    """Export a user's own trained classifier ``nn.Module`` (Embedding -> RNN/LSTM/GRU -> Linear and glue).

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
    item = classifier_exportable(config, weights, tokenizer, list(labels), _torch_forward(module, forward))
    return export(item, out, int8=int8, dev=dev, min_agreement=min_agreement, max_length=max_length, log=log,
                  source={"module": type(module).__name__})


def export_seq2seq(module, source_tokenizer, target_tokenizer, out: str | os.PathLike, int8: bool = False,
                   dev: DevSet | None = None, min_agreement: float = 0.99, max_length: int = DEFAULT_MAX_LENGTH,
                   log: Callable[[str], None] = print) -> dict:
    """Export a user's trained ``rnnkit.toolkit.seq2seq.Seq2Seq`` (its ``config`` says the shape) with
    the tokenizers it was trained with (``WordTokenizer`` or ``CharTokenizer``; the target's ids
    must put ``<s>``/``</s>`` at the config's ``bos_id``/``eos_id``).

    ``dev``: source texts with reference outputs (``labels``, optional) for the dev metrics; with
    ``int8``, the export fails when int8 picks another next token than fp32 (along fp32's greedy
    outputs) on more than ``1 - min_agreement`` of the dev tokens."""
    from .task_seq2seq import seq2seq_exportable

    item = seq2seq_exportable(module.config, _numpy(module), source_tokenizer, target_tokenizer, module)
    return export(item, out, int8=int8, dev=dev, min_agreement=min_agreement, max_length=max_length, log=log,
                  source={"module": type(module).__name__})


def checkpoint_task(checkpoint) -> str:
    path = Path(checkpoint) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("task", "classify")
    except FileNotFoundError:
        raise BundleError(f"{path}: missing; {checkpoint} is not an rnnkit checkpoint directory") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise BundleError(f"{path}: unreadable ({exc}); the checkpoint is corrupted, retrain it") from None


# -- tasks -----------------------------------------------------------------------------------

def classifier_exportable(config, weights, tokenizer: WordTokenizer, labels: list[str], oracle: Forward) -> Exportable:
    from .check import check_graph
    from .graph import build_classifier_graph

    def encode_dev(dev: DevSet, max_length: int):
        encoded = [tokenizer.encode(t)[:max_length] for t in dev.items]
        keep = [i for i, ids in enumerate(encoded) if ids]
        buckets = list(length_buckets([len(encoded[i]) for i in keep], DEV_BATCH))
        feeds = [dict(zip(ClassifierIO.inputs, pad([encoded[keep[r]] for r in rows]))) for rows in buckets]
        gold = None
        if dev.labels is not None:
            order = [keep[r] for rows in buckets for r in rows]
            gold = np.array([labels.index(dev.labels[i]) if dev.labels[i] in labels else -1 for i in order])
        return feeds, gold

    graphs = single_graph(build_classifier_graph, check_graph, oracle, config.vocab_size)
    return Exportable("classify", config, weights, graphs, encode_dev, {"tokenizer": tokenizer.to_dict(), "labels": labels})


def tagger_exportable(config, weights, tokenizer: WordTokenizer, charset, tags: list[str], oracle: Forward
                      ) -> Exportable:
    from ..runtime.charset import encode_sentences
    from .graph_tagger import build_tagger_graph, check_tagger_graph

    def encode_dev(dev: DevSet, max_length: int):
        sentences = [s[:max_length] for s in dev.items if len(s)]
        gold_tags = [g[:max_length] for s, g in zip(dev.items, dev.labels or dev.items) if len(s)]
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        feeds, gold = [], []
        for start in range(0, len(order), DEV_BATCH):
            rows = [sentences[i] for i in order[start:start + DEV_BATCH]]
            ids, lens = encode_sentences(tokenizer, rows)
            feed = {TaggerIO.input_ids: ids, TaggerIO.sequence_lens: lens}
            if charset is not None:
                feed[TaggerIO.char_ids] = charset.encode_batch(rows)
            feeds.append(feed)
            if dev.labels is not None:
                gold += [tags.index(t) if t in tags else -1 for i in order[start:start + DEV_BATCH]
                         for t in gold_tags[i]]
        return feeds, (np.array(gold) if dev.labels is not None else None)

    entries = {"tokenizer": tokenizer.to_dict(), "labels": list(tags),
               "charset": charset.to_dict() if charset is not None else None}
    graphs = single_graph(build_tagger_graph, check_tagger_graph, oracle, config.vocab_size, config.char_vocab_size)
    return Exportable("tag", config, weights, graphs, encode_dev, entries, unit="tokens")


def _numpy(module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


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


def _torch_tagger_forward(module) -> Forward:
    chars = None

    def call(m, ids, lens):
        import torch

        return m(ids, lens, None if chars is None else torch.from_numpy(chars))

    inner = _torch_forward(module, call)

    def forward(feed: dict) -> np.ndarray:
        nonlocal chars
        chars = feed.get(TaggerIO.char_ids)
        return inner(feed)

    return forward


def session_forward(session) -> Forward:
    """A backend session as a parity forward: feeds only the inputs the graph declares; returns
    the first output, or every output (a tuple) when the graph has state outputs."""
    names = [i.name for i in session.get_inputs()]

    def forward(feed: dict):
        out = session.run(None, {k: feed[k] for k in names})
        return out[0] if len(out) == 1 else tuple(out)

    return forward


def _sessions(model: onnx.ModelProto, path: Path) -> dict[str, Forward]:
    missing = [b for b in VALIDATION_BACKENDS if not backends.available(b)]
    if missing:
        raise InputError(f"export validates on both backends, but {missing} not installed; "
                         f"run `pip install {' '.join(backends.PACKAGES[b] for b in missing)}`")
    return {b: session_forward(backends.open_session(model, path, b)) for b in VALIDATION_BACKENDS}


# -- the pipeline ----------------------------------------------------------------------------

def export(item: Exportable, out, *, int8: bool = False, dev: DevSet | None = None, min_agreement: float = 0.99,
           max_length: int = DEFAULT_MAX_LENGTH, log: Callable[[str], None] = print, source: dict | None = None,
           attachments: dict[str, Callable[[Path], dict]] | None = None) -> dict:
    """Write, check and validate every graph of ``item`` (and its int8 sibling), measure the dev set,
    and commit the bundle; any failure leaves nothing at ``out``.

    Per-graph records (the graph's IO in ``graph``, ``validation.fp32`` / ``validation.int8``,
    ``quantization``) are stored flat for a single-graph bundle (``model.onnx``) and keyed by graph
    name (``encoder``, ``decoder``) for a bundle with several.  ``attachments``: manifest key -> a
    function that writes its file(s) into the bundle folder and returns the key's record (a lexicon)."""
    if not 0.0 <= min_agreement <= 1.0:
        raise InputError(f"--min-agreement must be in [0, 1], got {min_agreement}")
    if int8 and dev is None:
        raise InputError("an int8 export checks agreement with fp32 on a dev set, and none was found: "
                         "pass --dev FILE (or export without --int8)")
    c = item.config
    several = len(item.graphs) > 1
    manifest: dict = {"format": "rnnkit-bundle", "format_version": FORMAT_VERSION, "task": item.task,
                      "architecture": c.to_dict(), **item.entries, "producer": _versions(), "source": source or {},
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    io, reports, qreports, params = {}, {}, {}, {}
    forwards: dict[str, dict[str, Forward]] = {"fp32": {}}
    with BundleWriter(out) as writer:
        for spec in item.graphs:
            metadata = {"rnnkit.task": item.task, "rnnkit.format_version": str(FORMAT_VERSION),
                        "rnnkit.architecture": f"{c.cell} x{c.layers}{' bi' if c.bidirectional else ''}"
                                               + (f" {spec.name}" if several else "")}
            graph = spec.build(c, item.weights, metadata)
            spec.check(graph, c)
            path = writer.save_model(spec.file, graph)
            log(f"validating {spec.file}: torch vs onnxruntime vs numba ...")
            sessions = _sessions(graph, path)
            report = spec.parity("torch", spec.oracle, sessions, FP32, False)
            raise_on_failures(report, what=f"{spec.file} vs torch")
            io[spec.name] = {**({"file": spec.file} if several else {}), **_graph_io(graph)}
            reports[spec.name] = report.to_dict()
            forwards["fp32"][spec.name] = sessions["onnxruntime"]
            if int8:
                qgraph, params[spec.name] = quantize_graph(graph)
                spec.check(qgraph, c)
                qpath = writer.save_model(spec.int8_file, qgraph)
                log(f"validating {spec.int8_file}: numba int8 vs onnxruntime int8 ...")
                q = _sessions(qgraph, qpath)
                qreport = spec.parity("onnxruntime-int8", q["onnxruntime"], {"numba": q["numba"]}, INT8_SEQUENCE, True)
                raise_on_failures(qreport, what=f"{spec.int8_file}: numba vs onnxruntime")
                qreports[spec.name] = qreport.to_dict()
                params[spec.name]["size_ratio"] = round(qpath.stat().st_size / path.stat().st_size, 4)
                forwards.setdefault("int8", {})[spec.name] = q["onnxruntime"]
        manifest["graph"] = {"opset": OPSET, "max_length": int(max_length), **_flat_or_named(io)}
        manifest["validation"] = {"fp32": _flat_or_named(reports), **({"int8": _flat_or_named(qreports)} if int8 else {})}
        manifest["quantization"] = _flat_or_named(params) if int8 else None
        if dev is not None:
            if item.dev_metrics:
                metrics = item.dev_metrics(forwards, dev, max_length)
            else:
                (only,) = (spec.name for spec in item.graphs)
                metrics = _dev_metrics({v: fs[only] for v, fs in forwards.items()}, *item.encode_dev(dev, max_length),
                                       dev.source, item.unit)
            manifest["validation"]["dev"] = metrics
            files = ", ".join(spec.int8_file for spec in item.graphs)
            gate = item.int8_gate(metrics) if int8 and item.int8_gate else None
            if gate:
                raise ParityError(f"{files}: {gate}; nothing was written. Export without --int8, or raise "
                                  f"--max-loss-delta if that is acceptable")
            if int8 and item.int8_gate is None and metrics["int8_agreement"] < min_agreement:
                raise ParityError(f"{files}: int8 agrees with fp32 on {metrics['int8_agreement']:.2%} of "
                                  f"{dev.source} ({metrics['examples']} {metrics['unit']}), below --min-agreement "
                                  f"{min_agreement:.2%}; nothing was written. Export without --int8, or lower "
                                  f"--min-agreement if that is acceptable")
        for key, write in (attachments or {}).items():
            manifest[key] = write(writer.tmp)
        return {"path": str(writer.commit(manifest)), "manifest": manifest}


def _flat_or_named(per_graph: dict[str, Any]) -> Any:
    """A single-graph bundle's record as it is (the format of model.onnx bundles); several keyed by graph name."""
    return per_graph["model"] if list(per_graph) == ["model"] else per_graph


def _graph_io(graph: onnx.ModelProto) -> dict:
    def describe(values):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return {"inputs": describe(graph.graph.input), "outputs": describe(graph.graph.output)}


def _predictions(forward: Forward, feed: dict) -> np.ndarray:
    """Argmax per row (classify) or per real token (tag), flattened."""
    out = outputs(forward(feed))[0].argmax(-1)
    if out.ndim == 2:
        return out[np.arange(out.shape[1])[None, :] < feed[LENS][:, None]]
    return out


def _dev_metrics(forwards: dict[str, Forward], feeds: list[dict], gold: np.ndarray | None, source: str,
                 unit: str) -> dict:
    predictions = {name: np.concatenate([_predictions(f, feed) for feed in feeds]) if feeds else np.zeros(0, int)
                   for name, f in forwards.items()}
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


def _training_summary(meta: dict) -> dict:
    training = dict(meta.get("training", {}))
    training.pop("history", None)  # the checkpoint keeps the curves; the bundle keeps the outcome
    return training


def _versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for package in ("rnnkit", "torch", "onnx", "onnxruntime", "numba", "numpy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return versions
