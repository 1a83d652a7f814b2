"""The tagging task (many-to-many) on the export pipeline: graph writer, checker, ``Exportable``, oracle.

Same approach and reasons as ``rnnkit.export.task_classify`` (no ``torch.onnx.export``; written from
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

Imports onnx and numpy (torch only inside the oracle).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..runtime.charset import encode_sentences
from ..runtime.manifest import TaggerIO as IO
from ..runtime.tokenizer import WordTokenizer
from .architecture import TaggerConfig
from .check import contract_problems, raise_problems
from .graph_builder import (
    BATCH,
    TIME,
    GraphBuilder,
    Signature,
    batch_major,
    embed,
    graph_metadata,
    linear,
    make_model,
    merge_metadata,
    require,
    time_mask,
    write_stack,
)
from .oracle import torch_forward
from .pipeline import DEV_BATCH, DevSet, Exportable, numpy_weights, single_graph
from .validate import Forward

TASK = "tag"
CHARS = "chars"  # dim_param of the characters-per-word axis
INT64_MAX = np.iinfo(np.int64).max


def signature(config: TaggerConfig) -> tuple[Signature, Signature]:
    """The graph's inputs and outputs (``TaggerIO``; ``char_ids`` with character features)."""
    inputs = {IO.input_ids: (TensorProto.INT64, (BATCH, TIME)), IO.sequence_lens: (TensorProto.INT32, (BATCH,))}
    if config.use_chars:
        inputs[IO.char_ids] = (TensorProto.INT64, (BATCH, TIME, CHARS))
    return inputs, {IO.logits: (TensorProto.FLOAT, (BATCH, TIME, config.num_tags))}


def expected_matmuls(config: TaggerConfig) -> int:
    """MatMul-like nodes outside the recurrent ops: the head, plus the char CNN's im2col MatMul."""
    return 1 + (1 if config.use_chars else 0)


def _char_features(g: GraphBuilder, config: TaggerConfig, weights, zero: str) -> str:
    """char_ids (B, T, C) -> (B, T, F); ``zero`` is the float 0 initializer."""
    k, p = config.char_kernel, config.char_kernel // 2
    table = np.array(weights["char_embedding.weight"], dtype=np.float32)
    table[0] = 0.0  # <pad> = Conv1d's zero padding
    ids = IO.char_ids
    if p:
        shape = g.op("Shape", [ids], "char_ids_shape")
        bt = g.op("Slice", [shape, g.ints("zero_1d", [0]), g.ints("two_1d", [2])], "char_bt_shape")
        pad_shape = g.op("Concat", [bt, g.ints("char_pad_width", [p])], "char_pad_shape", axis=0)
        zeros = g.op(
            "ConstantOfShape",
            [pad_shape],
            "char_pad",
            value=helper.make_tensor("zero_i64", TensorProto.INT64, [1], [0]),
        )  # (B, T, p)
        ids = g.op("Concat", [zeros, ids, zeros], "char_ids_padded", axis=2)  # (B, T, C+2p)
    e = g.op("Gather", [g.const("char_embedding.weight", table), ids], "char_embedding", axis=0)
    windows = []
    axis2 = g.ints("axes_chars", [2])
    for j in range(k):  # window j: padded positions [j, j + C)
        end = j - (k - 1) if j < k - 1 else INT64_MAX
        windows.append(
            g.op(
                "Slice",
                [e, g.ints(f"char_win{j}_start", [j]), g.ints(f"char_win{j}_end", [end]), axis2],
                f"char_window_{j}",
            )
        )  # (B, T, C, Ec)
    cols = g.op("Concat", windows, "char_im2col", axis=3) if k > 1 else windows[0]  # (B, T, C, k*Ec)
    w = np.asarray(weights["char_conv.weight"], dtype=np.float32)  # (F, Ec, k)
    w = w.transpose(2, 1, 0).reshape(k * config.char_embed, config.char_filters)  # row j*Ec + e
    conv = g.op("MatMul", [cols, g.const("char_conv.W_im2col", w)], "char_conv_matmul")
    conv = g.op("Add", [conv, g.const("char_conv.bias", weights["char_conv.bias"])], "char_conv")  # (B, T, C, F)
    real = g.op(
        "Not", [g.op("Equal", [IO.char_ids, g.ints("zero_i64_scalar", 0)], "char_is_pad")], "char_is_real"
    )  # (B, T, C)
    real4 = g.op("Unsqueeze", [real, g.ints("axes_3", [3])], "char_is_real_4d")  # (B, T, C, 1)
    neg = g.op("Where", [real4, conv, g.const("neg_inf", -np.inf)], "char_conv_masked")
    best = g.op("ReduceMax", [neg], "char_max", axes=[2], keepdims=0)  # (B, T, F)
    feats = g.op("Tanh", [best], "char_tanh")
    real_f = g.op("Cast", [real], "char_is_real_f32", to=TensorProto.FLOAT)
    has = g.op("ReduceMax", [real_f], "word_has_chars_f32", axes=[2], keepdims=1)  # (B, T, 1)
    has = g.op("Cast", [has], "word_has_chars", to=TensorProto.BOOL)
    return g.op("Where", [has, feats, zero], "char_features")


def build_tagger_graph(
    config: TaggerConfig, weights: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """Numpy weights (``RecurrentTagger.state_dict()`` keys) -> ONNX tagger graph."""
    meta = merge_metadata(graph_metadata(TASK, config), metadata)
    needed = ["embedding.weight", "head.weight", "head.bias"]
    if config.use_chars:
        needed += ["char_embedding.weight", "char_conv.weight", "char_conv.bias"]
    require(weights, needed, "RecurrentTagger.state_dict()")
    g = GraphBuilder()
    zero = g.const("zero_f32", 0.0)
    x = embed(g, weights, "embedding", IO.input_ids)  # (B, T, E)
    if config.use_chars:
        x = g.op("Concat", [x, _char_features(g, config, weights, zero)], "token_features", axis=2)  # (B, T, E+F)
    x = g.op("Transpose", [x], "time_major", perm=[1, 0, 2])  # (T, B, I)
    y, _ = write_stack(g, config, weights, x, IO.sequence_lens)
    z = linear(g, batch_major(g, config, y), weights, "head", "head")  # (B, T, K)
    # Where, not Mul, so a NaN at padding cannot leak
    mask, _ = time_mask(g, IO.input_ids, IO.sequence_lens)  # (B, T, 1)
    g.op("Where", [mask, z, zero], "logits_masked", outputs=[IO.logits])
    return make_model(g, f"rnnkit_{config.cell}_tagger", *signature(config), meta)


def check_tagger_graph(model: onnx.ModelProto, config: TaggerConfig) -> None:
    """Raise one ``UnsupportedError`` listing every way ``model`` breaks the tagger contract
    (fp32 graphs and their int8 siblings)."""
    problems = contract_problems(
        model,
        config,
        *signature(config),
        "TaggerIO",
        "num_tags",
        expected_matmuls(config),
        "head + char CNN" if config.use_chars else "head",
        task=TASK,
    )
    if any(n.op_type == "Conv" for n in model.graph.node):
        problems.append("Conv node in the graph; the numba backend has no Conv (write the char CNN as im2col)")
    raise_problems(problems, f"{config.cell} tagger")


def tagger_exportable(
    config, weights, tokenizer: WordTokenizer, charset, tags: list[str], oracle: Forward
) -> Exportable:
    def encode_dev(dev: DevSet, max_length: int):
        sentences = [s[:max_length] for s in dev.items if len(s)]
        gold_tags = [g[:max_length] for s, g in zip(dev.items, dev.labels or dev.items) if len(s)]
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        feeds, gold = [], []
        for start in range(0, len(order), DEV_BATCH):
            rows = [sentences[i] for i in order[start : start + DEV_BATCH]]
            ids, lens = encode_sentences(tokenizer, rows)
            feed = {IO.input_ids: ids, IO.sequence_lens: lens}
            if charset is not None:
                feed[IO.char_ids] = charset.encode_batch(rows)
            feeds.append(feed)
            if dev.labels is not None:
                gold += [
                    tags.index(t) if t in tags else -1 for i in order[start : start + DEV_BATCH] for t in gold_tags[i]
                ]
        return feeds, (np.array(gold) if dev.labels is not None else None)

    entries = {
        "tokenizer": tokenizer.to_dict(),
        "labels": list(tags),
        "charset": charset.to_dict() if charset is not None else None,
    }
    graphs = single_graph(build_tagger_graph, check_tagger_graph, oracle, config.vocab_size, config.char_vocab_size)
    return Exportable(TASK, config, weights, graphs, encode_dev, entries, unit="tokens")


def torch_tagger_forward(module) -> Forward:
    chars = None

    def call(m, ids, lens):
        import torch

        return m(ids, lens, None if chars is None else torch.from_numpy(chars))

    inner = torch_forward(module, call)

    def forward(feed: dict) -> np.ndarray:
        nonlocal chars
        chars = feed.get(IO.char_ids)
        return inner(feed)

    return forward


def from_module(module, tokenizer: WordTokenizer, charset, tags: list[str]) -> Exportable:
    """A ``RecurrentTagger`` (its own forward is the oracle) with its tokenizer, charset and tag names."""
    return tagger_exportable(
        module.config, numpy_weights(module), tokenizer, charset, list(tags), torch_tagger_forward(module)
    )
