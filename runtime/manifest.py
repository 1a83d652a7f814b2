"""The bundle's manifest: file names, graph input/output names and the schema of manifest.json.

Graph input/output names are declared here once and read everywhere else (exporter,
validation, both backends), so the writer and the reader can never disagree.

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FP32 = "model.onnx"
MODEL_INT8 = "model.int8.onnx"
OPSET = 17  # LSTM/GRU/RNN with `layout`, DynamicQuantizeLinear, Softmax over one axis


class ClassifierIO:
    """Graph contract of a many-to-one (text classification) bundle."""

    input_ids = "input_ids"          # int64 (batch, time), padded with <pad> = 0
    sequence_lens = "sequence_lens"  # int32 (batch,), 1 <= len <= time (ONNX RNN's own name)
    logits = "logits"                # float32 (batch, num_labels)

    inputs = (input_ids, sequence_lens)
    outputs = (logits,)


# Keys mirrored into the ONNX file's metadata_props, so a stray .onnx identifies itself.
METADATA_KEYS = ("rnnkit.task", "rnnkit.format_version", "rnnkit.architecture")


class TaggerIO:
    """Graph contract of a many-to-many (sequence labelling) bundle."""

    input_ids = "input_ids"          # int64 (batch, time), padded with <pad> = 0
    sequence_lens = "sequence_lens"  # int32 (batch,)
    char_ids = "char_ids"            # int64 (batch, time, chars), only with character features; 0 = padding
    logits = "logits"                # float32 (batch, time, num_tags); rows past a sentence's length are 0

    inputs = (input_ids, sequence_lens)
    inputs_with_chars = (input_ids, sequence_lens, char_ids)
    outputs = (logits,)
