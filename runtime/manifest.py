"""The bundle's manifest: file names, graph input/output names and the schema of manifest.json.

Graph input/output names are declared here once and read everywhere else (exporter,
validation, both backends), so the writer and the reader can never disagree.

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

import hashlib
import json

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
# sha256 of the manifest's canonical form (``canonical_json``), stored in the manifest itself:
# the files' digests cover the graphs, this one covers the vocabulary, labels and contract.
DIGEST_KEY = "manifest_sha256"
MODEL_FP32 = "model.onnx"
MODEL_INT8 = "model.int8.onnx"
OPSET = 17  # LSTM/GRU/RNN with `layout`, DynamicQuantizeLinear, Softmax over one axis


class ClassifierIO:
    """Graph contract of a many-to-one (text classification) bundle."""

    input_ids = "input_ids"  # int64 (batch, time), padded with <pad> = 0
    sequence_lens = "sequence_lens"  # int32 (batch,), 1 <= len <= time (ONNX RNN's own name)
    logits = "logits"  # float32 (batch, num_labels)
    # float32 (batch, time): a pooling="attention" classifier's pooling weights, the softmax over each
    # row's real tokens that the pooled state sums by (exactly 0 past a row's length).  Declared by the
    # manifest's 'graph.outputs' of bundles exported from a checkpoint since rnnkit wrote it; older
    # bundles (and export_module's, whose attention has no torch oracle to validate it against) list
    # logits only and load under that contract.
    pooling_weights = "pooling_weights"

    inputs = (input_ids, sequence_lens)
    outputs = (logits,)
    outputs_with_weights = (logits, pooling_weights)
    files = {"model": (MODEL_FP32, MODEL_INT8)}  # graph name -> (fp32 file, int8 file)

    @classmethod
    def graph_io(cls, arch: dict, chars: bool = False, record: dict | None = None) -> dict[str, tuple[tuple, tuple]]:
        """Graph name -> (input names, output names), as every contract answers it.  ``record``: the
        manifest's 'graph' section, whose output names say whether a pooling="attention" graph
        carries its ``pooling_weights`` (``declares_pooling_weights``)."""
        weights = arch.get("pooling") == "attention" and cls.declares_pooling_weights(record)
        return {"model": (cls.inputs, cls.outputs_with_weights if weights else cls.outputs)}

    @classmethod
    def declares_pooling_weights(cls, record) -> bool:
        """Whether a manifest's 'graph' section lists ``pooling_weights`` among the outputs (the
        contract check then holds the graph to it; anything malformed reads as no)."""
        outputs = record.get("outputs") if isinstance(record, dict) else None
        return isinstance(outputs, list) and any(
            isinstance(o, dict) and o.get("name") == cls.pooling_weights for o in outputs
        )


# Keys mirrored into the ONNX file's metadata_props, so a stray .onnx identifies itself.
METADATA_KEYS = ("rnnkit.task", "rnnkit.format_version", "rnnkit.architecture")


class TaggerIO:
    """Graph contract of a many-to-many (sequence labelling) bundle."""

    input_ids = "input_ids"  # int64 (batch, time), padded with <pad> = 0
    sequence_lens = "sequence_lens"  # int32 (batch,)
    char_ids = "char_ids"  # int64 (batch, time, chars), only with character features; 0 = padding
    logits = "logits"  # float32 (batch, time, num_tags); rows past a sentence's length are 0

    inputs = (input_ids, sequence_lens)
    inputs_with_chars = (input_ids, sequence_lens, char_ids)
    outputs = (logits,)
    files = ClassifierIO.files

    @classmethod
    def graph_io(cls, arch: dict, chars: bool = False, record: dict | None = None) -> dict[str, tuple[tuple, tuple]]:
        return {"model": (cls.inputs_with_chars if chars else cls.inputs, cls.outputs)}


class LanguageModelIO:
    """Graph contract of a language model (a step function with explicit recurrent state).

    One call runs one step or a chunk: ``input_ids, sequence_lens, initial_h[, initial_c] ->
    logits, final_h[, final_c]``; the caller feeds each ``final_*`` back as the matching
    ``initial_*`` of the next call (``STATE_PAIRS``), starting from zeros.  The manifest's
    ``state`` section records names, shapes (concrete layers and hidden), dtype and initial value.
    """

    input_ids = "input_ids"  # int64 (batch, time), padded with <pad> = 0
    sequence_lens = "sequence_lens"  # int32 (batch,), 1 <= len <= time
    initial_h = "initial_h"  # float32 (layers, batch, hidden): state before the chunk
    initial_c = "initial_c"  # float32 (layers, batch, hidden): LSTM cell state only
    logits = "logits"  # float32 (batch, time, vocab); 0 past each row's length
    final_h = "final_h"  # float32 (layers, batch, hidden): state after each row's last real token
    final_c = "final_c"  # LSTM only

    STATE_PAIRS = {final_h: initial_h, final_c: initial_c}  # output -> the input it feeds next call
    files = ClassifierIO.files

    @classmethod
    def graph_io(cls, arch: dict, chars: bool = False, record: dict | None = None) -> dict[str, tuple[tuple, tuple]]:
        return {"model": (cls.inputs(arch["cell"]), cls.outputs(arch["cell"]))}

    @classmethod
    def state_inputs(cls, cell: str) -> tuple[str, ...]:
        return (cls.initial_h, cls.initial_c) if cell == "lstm" else (cls.initial_h,)

    @classmethod
    def state_outputs(cls, cell: str) -> tuple[str, ...]:
        return (cls.final_h, cls.final_c) if cell == "lstm" else (cls.final_h,)

    @classmethod
    def inputs(cls, cell: str) -> tuple[str, ...]:
        return (cls.input_ids, cls.sequence_lens) + cls.state_inputs(cell)

    @classmethod
    def outputs(cls, cell: str) -> tuple[str, ...]:
        return (cls.logits,) + cls.state_outputs(cell)


class Seq2SeqIO:
    """Graph contract of an encoder-decoder bundle: two graphs, run by the runtime's decode loop.

    ``encoder.onnx``: ``source_ids, source_lens -> memory[, keys], initial_h[, initial_c]``.
    ``decoder.onnx`` (one step, or a teacher-forced chunk): ``input_ids, initial_h[, initial_c]
    [, memory, keys, source_lens] -> log_probs, final_h[, final_c][, attention]``; the caller
    feeds ``final_*`` back as ``initial_*`` (``LanguageModelIO.STATE_PAIRS``), starting from the
    encoder's ``initial_*``, and passes the encoder's ``memory``/``keys``/``source_lens`` unchanged
    (reordered along the batch axis as beams are), so a step never re-reads the source.
    Graphs without attention have no memory/keys/source_lens inputs and no attention output.
    """

    encoder_file = "encoder.onnx"
    decoder_file = "decoder.onnx"
    encoder_int8_file = "encoder.int8.onnx"
    decoder_int8_file = "decoder.int8.onnx"

    source_ids = "source_ids"  # int64 (batch, source_time), padded with <pad> = 0
    source_lens = "source_lens"  # int32 (batch,), 1 <= len <= source_time
    memory = "memory"  # float32 (batch, source_time, hidden); 0 past each row's length
    keys = "keys"  # float32 (batch, source_time, hidden): the attention's key projection
    input_ids = "input_ids"  # int64 (batch, time): previous target tokens, <s> first
    initial_h = LanguageModelIO.initial_h
    initial_c = LanguageModelIO.initial_c
    final_h = LanguageModelIO.final_h
    final_c = LanguageModelIO.final_c
    log_probs = "log_probs"  # float32 (batch, time, target_vocab): log-softmax of the next token
    attention = "attention"  # float32 (batch, time, source_time): attention weights (0 on padding)

    graphs = ("encoder", "decoder")  # graph names in the manifest's per-graph records, in run order
    files = {"encoder": (encoder_file, encoder_int8_file), "decoder": (decoder_file, decoder_int8_file)}

    @classmethod
    def graph_io(cls, arch: dict, chars: bool = False, record: dict | None = None) -> dict[str, tuple[tuple, tuple]]:
        cell, attention = arch["cell"], arch["attention"]
        return {
            "encoder": (cls.encoder_inputs(), cls.encoder_outputs(cell, attention)),
            "decoder": (cls.decoder_inputs(cell, attention), cls.decoder_outputs(cell, attention)),
        }

    @classmethod
    def encoder_inputs(cls) -> tuple[str, ...]:
        return (cls.source_ids, cls.source_lens)

    @classmethod
    def encoder_outputs(cls, cell: str, attention: str) -> tuple[str, ...]:
        memory = (cls.memory, cls.keys) if attention != "none" else ()
        return memory + LanguageModelIO.state_inputs(cell)

    @classmethod
    def decoder_inputs(cls, cell: str, attention: str) -> tuple[str, ...]:
        memory = (cls.memory, cls.keys, cls.source_lens) if attention != "none" else ()
        return (cls.input_ids,) + LanguageModelIO.state_inputs(cell) + memory

    @classmethod
    def decoder_outputs(cls, cell: str, attention: str) -> tuple[str, ...]:
        weights = (cls.attention,) if attention != "none" else ()
        return (cls.log_probs,) + LanguageModelIO.state_outputs(cell) + weights


# dtype of each graph input/output name: one meaning per name in every task (ids int64, lengths
# int32, everything computed float32); their ranks and widths follow from the architecture
# (runtime/bundle.py, ``_contract``).
VALUE_DTYPES = {
    "input_ids": "int64",
    "sequence_lens": "int32",
    "char_ids": "int64",
    "source_ids": "int64",
    "source_lens": "int32",
    "initial_h": "float32",
    "initial_c": "float32",
    "final_h": "float32",
    "final_c": "float32",
    "memory": "float32",
    "keys": "float32",
    "attention": "float32",
    "log_probs": "float32",
    "logits": "float32",
    "pooling_weights": "float32",
}


def canonical_json(manifest: dict) -> bytes:
    """The bytes ``manifest_sha256`` covers: the manifest without that key, as
    ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` encoded as UTF-8
    (Python's float repr, NaN as ``NaN``).  Key order, indentation and escapes in the file do not
    matter: the digest is of the parsed content, so re-indenting a manifest keeps it valid and
    editing any value does not.  Raises ValueError for a string no UTF-8 can hold (a lone surrogate)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def seal(manifest: dict) -> dict:
    """Set ``manifest_sha256`` for the manifest as a reader will parse it (after a JSON round trip:
    tuples are lists, keys are strings), so the writer and ``open_bundle`` hash the same thing."""
    manifest.pop(DIGEST_KEY, None)
    manifest[DIGEST_KEY] = manifest_digest(json.loads(json.dumps(manifest)))
    return manifest


def graph_files(task: str) -> dict[str, tuple[str, str]]:
    """Graph name -> (fp32 file, int8 file) of a task's bundle: ``model`` for single-graph tasks."""
    return dict(Seq2SeqIO.files) if task == "seq2seq" else {"model": (MODEL_FP32, MODEL_INT8)}


# Per graph file (``files`` names it): {"form": "onnxruntime" | "portable", "precision": "fp32" | "int8",
# "ops": {domain: [op types]}, "validated_on": {consumer: version}}.  Written by every export since
# rnnkit records interop (``rnnkit.export.forms``); a bundle without it loads as before.
GRAPH_FILES_KEY = "graph_files"
GRAPH_FORMS = ("onnxruntime", "portable")
PRECISIONS = ("fp32", "int8")
RECURRENT_OPS = ("RNN", "GRU", "LSTM", "DynamicQuantizeLSTM")


def graph_ops(model) -> dict[str, list[str]]:
    """A graph's op types per domain (the default domain as ``ai.onnx``), sorted: what a consumer must
    implement to load it.  ``model``: an ``onnx.ModelProto`` (duck-typed: no onnx import here)."""
    ops: dict[str, set] = {}
    for node in model.graph.node:
        ops.setdefault(node.domain or "ai.onnx", set()).add(node.op_type)
    return {domain: sorted(types) for domain, types in sorted(ops.items())}


def graph_form(model) -> str:
    """``onnxruntime`` when a recurrent node reads ``sequence_lens`` (input 4), else ``portable``."""
    reads = any(n.op_type in RECURRENT_OPS and len(n.input) > 4 and n.input[4] for n in model.graph.node)
    return "onnxruntime" if reads else "portable"
