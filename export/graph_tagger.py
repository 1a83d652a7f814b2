"""Write a ``RecurrentTagger`` as an ONNX graph with native RNN/LSTM/GRU ops, and check it.

Same approach and reasons as ``rnnkit.export.graph`` (no ``torch.onnx.export``; written from
numpy weights keyed like ``RecurrentTagger.state_dict()``; only ops the numba backend runs;
``Conv`` is not one of them, so the char CNN is an im2col: k shifted ``Slice``s of the
zero-padded char embeddings, ``Concat``, ``MatMul``).  Graph (D = directions, H = hidden,
K = tags, k = char kernel, p = k // 2)::

    input_ids (B, T) -Gather-> (B, T, E)
    [char_ids (B, T, C) -Concat zeros (B, T, p) both sides-> (B, T, C+2p) -Gather char table->
     (B, T, C+2p, Ec) -k Slices [j, j+C) -Concat-> (B, T, C, k*Ec) -MatMul+Add-> (B, T, C, F)
     -Where(char != 0, ., -inf) -ReduceMax chars-> (B, T, F) -Tanh -Where(word has chars, ., 0)
     -Concat with the word embedding-> (B, T, E+F)]
    -Transpose-> (T, B, I) -> RNN/LSTM/GRU per layer reading sequence_lens -> Y (T, D, B, H)
    -Transpose/Reshape-> (B, T, D*H) -MatMul+Add-> (B, T, K) -Where(t < sequence_lens, ., 0)-> logits

The im2col window ``j`` of output position ``c`` reads padded position ``c + j``, i.e. original
``c + j - p``: torch's ``Conv1d(padding=p)`` weight ``(F, Ec, k)`` becomes ``(k*Ec, F)`` with row
``j*Ec + e``.  Char table row 0 is <pad>; it is written as zeros (``padding_idx`` keeps it zero
in torch) so padded positions equal Conv1d's zero padding.

Imports onnx and numpy only (no torch, no onnxruntime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from rnnkit.export.check import contract_problems, raise_problems
from rnnkit.export.recurrent import (BATCH, TIME, GraphBuilder, batch_major, make_model, merge_metadata,
                                     time_mask, write_recurrent_stack)
from rnnkit.runtime.errors import UnsupportedError
from rnnkit.runtime.manifest import FORMAT_VERSION, TaggerIO

if TYPE_CHECKING:  # toolkit.tagger imports torch; only the dataclass fields are read here
    from rnnkit.toolkit.tagger import TaggerConfig

CHARS = "chars"  # dim_param of the characters-per-word axis
INT64_MAX = np.iinfo(np.int64).max


def default_metadata(config: TaggerConfig) -> dict[str, str]:
    """e.g. ``bilstm-1x128-char64`` for ``rnnkit.architecture``."""
    bi = "bi" if config.bidirectional else ""
    chars = f"-char{config.char_filters}" if config.use_chars else ""
    return {"rnnkit.task": "tag", "rnnkit.format_version": str(FORMAT_VERSION),
            "rnnkit.architecture": f"{bi}{config.cell}-{config.layers}x{config.hidden}{chars}"}


def _char_features(g: GraphBuilder, config: TaggerConfig, weights, zero: str) -> str:
    """char_ids (B, T, C) -> (B, T, F); ``zero`` is the float 0 initializer."""
    k, p = config.char_kernel, config.char_kernel // 2
    table = np.array(weights["char_embedding.weight"], dtype=np.float32)
    table[0] = 0.0                                                                # <pad> = Conv1d's zero padding
    ids = TaggerIO.char_ids
    if p:
        shape = g.op("Shape", [ids], "char_ids_shape")
        bt = g.op("Slice", [shape, g.ints("zero_1d", [0]), g.ints("two_1d", [2])], "char_bt_shape")
        pad_shape = g.op("Concat", [bt, g.ints("char_pad_width", [p])], "char_pad_shape", axis=0)
        zeros = g.op("ConstantOfShape", [pad_shape], "char_pad",
                     value=helper.make_tensor("zero_i64", TensorProto.INT64, [1], [0]))  # (B, T, p)
        ids = g.op("Concat", [zeros, ids, zeros], "char_ids_padded", axis=2)     # (B, T, C+2p)
    e = g.op("Gather", [g.const("char_embedding.weight", table), ids], "char_embedding", axis=0)
    windows = []
    axis2 = g.ints("axes_chars", [2])
    for j in range(k):                         # window j: padded positions [j, j + C)
        end = j - (k - 1) if j < k - 1 else INT64_MAX
        windows.append(g.op("Slice", [e, g.ints(f"char_win{j}_start", [j]), g.ints(f"char_win{j}_end", [end]),
                                      axis2], f"char_window_{j}"))              # (B, T, C, Ec)
    cols = g.op("Concat", windows, "char_im2col", axis=3) if k > 1 else windows[0]  # (B, T, C, k*Ec)
    w = np.asarray(weights["char_conv.weight"], dtype=np.float32)               # (F, Ec, k)
    w = w.transpose(2, 1, 0).reshape(k * config.char_embed, config.char_filters)  # row j*Ec + e
    conv = g.op("MatMul", [cols, g.const("char_conv.W_im2col", w)], "char_conv_matmul")
    conv = g.op("Add", [conv, g.const("char_conv.bias", weights["char_conv.bias"])], "char_conv")  # (B, T, C, F)
    real = g.op("Not", [g.op("Equal", [TaggerIO.char_ids, g.ints("zero_i64_scalar", 0)], "char_is_pad")],
                "char_is_real")                                                  # (B, T, C)
    real4 = g.op("Unsqueeze", [real, g.ints("axes_3", [3])], "char_is_real_4d")   # (B, T, C, 1)
    neg = g.op("Where", [real4, conv, g.const("neg_inf", -np.inf)], "char_conv_masked")
    best = g.op("ReduceMax", [neg], "char_max", axes=[2], keepdims=0)            # (B, T, F)
    feats = g.op("Tanh", [best], "char_tanh")
    real_f = g.op("Cast", [real], "char_is_real_f32", to=TensorProto.FLOAT)
    has = g.op("ReduceMax", [real_f], "word_has_chars_f32", axes=[2], keepdims=1)  # (B, T, 1)
    has = g.op("Cast", [has], "word_has_chars", to=TensorProto.BOOL)
    return g.op("Where", [has, feats, zero], "char_features")


def build_tagger_graph(config: TaggerConfig, weights: dict[str, np.ndarray],
                       metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Numpy weights (``RecurrentTagger.state_dict()`` keys) -> ONNX tagger graph."""
    meta = merge_metadata(default_metadata(config), metadata)
    needed = ["embedding.weight", "head.weight", "head.bias"]
    if config.use_chars:
        needed += ["char_embedding.weight", "char_conv.weight", "char_conv.bias"]
    missing = [k for k in needed if k not in weights]
    if missing:
        raise UnsupportedError(f"weights: missing {missing} (keys must follow RecurrentTagger.state_dict())")

    g = GraphBuilder()
    zero = g.const("zero_f32", 0.0)
    x = g.op("Gather", [g.const("embedding.weight", weights["embedding.weight"]), TaggerIO.input_ids],
             "embedding", axis=0)                                                # (B, T, E)
    if config.use_chars:
        x = g.op("Concat", [x, _char_features(g, config, weights, zero)], "token_features", axis=2)  # (B, T, E+F)
    x = g.op("Transpose", [x], "time_major", perm=[1, 0, 2])                       # (T, B, I)
    y, _ = write_recurrent_stack(g, config, weights, x, TaggerIO.sequence_lens)
    ybt = batch_major(g, config, y)                                               # (B, T, D*H)
    head_w = np.ascontiguousarray(np.asarray(weights["head.weight"], dtype=np.float32).T)  # (D*H, K)
    z = g.op("MatMul", [ybt, g.const("head.W_t", head_w)], "head_matmul")
    z = g.op("Add", [z, g.const("head.bias", weights["head.bias"])], "head")      # (B, T, K)
    # Where, not Mul, so a NaN at padding cannot leak
    mask, _ = time_mask(g, TaggerIO.input_ids, TaggerIO.sequence_lens)           # (B, T, 1)
    g.op("Where", [mask, z, zero], "logits_masked", outputs=[TaggerIO.logits])

    inputs = [helper.make_tensor_value_info(TaggerIO.input_ids, TensorProto.INT64, [BATCH, TIME]),
              helper.make_tensor_value_info(TaggerIO.sequence_lens, TensorProto.INT32, [BATCH])]
    if config.use_chars:
        inputs.append(helper.make_tensor_value_info(TaggerIO.char_ids, TensorProto.INT64, [BATCH, TIME, CHARS]))
    outputs = [helper.make_tensor_value_info(TaggerIO.logits, TensorProto.FLOAT, [BATCH, TIME, config.num_tags])]
    return make_model(g, f"rnnkit_{config.cell}_tagger", inputs, outputs, meta)


def expected_matmuls(config: TaggerConfig) -> int:
    """MatMul-like nodes outside the recurrent ops: the head, plus the char CNN's im2col MatMul."""
    return 1 + (1 if config.use_chars else 0)


def check_tagger_graph(model: onnx.ModelProto, config: TaggerConfig) -> None:
    """Raise one ``UnsupportedError`` listing every way ``model`` breaks the tagger contract
    (fp32 graphs and the int8 graphs of ``quantize_classifier``)."""
    inputs = {TaggerIO.input_ids: (TensorProto.INT64, (BATCH, TIME)),
              TaggerIO.sequence_lens: (TensorProto.INT32, (BATCH,))}
    if config.use_chars:
        inputs[TaggerIO.char_ids] = (TensorProto.INT64, (BATCH, TIME, CHARS))
    outputs = {TaggerIO.logits: (TensorProto.FLOAT, (BATCH, TIME, config.num_tags))}
    problems = contract_problems(model, config, inputs, outputs, "TaggerIO", "num_tags", expected_matmuls(config),
                                 "head + char CNN" if config.use_chars else "head")
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("rnnkit.task") != "tag":
        problems.append(f"metadata 'rnnkit.task' is {props.get('rnnkit.task')!r}, expected 'tag'")
    if any(n.op_type == "Conv" for n in model.graph.node):
        problems.append("Conv node in the graph; the numba backend has no Conv (write the char CNN as im2col)")
    raise_problems(problems, f"{config.cell} tagger")


__all__ = ["build_tagger_graph", "check_tagger_graph", "default_metadata", "expected_matmuls"]
