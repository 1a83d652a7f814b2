"""The classification task (many-to-one) on the export pipeline: graph writer, checker, ``Exportable``.

The graph is written from numpy weights keyed like ``RecurrentClassifier.state_dict()``, never
traced (``docs/design.md``: ``torch.onnx.export`` unrolls ``nn.RNN`` with a frozen time axis,
loses the dynamic time axis on a second export, reads ``c0`` for both states when the example
tensors are equal, and writes GRU with ``linear_before_reset`` other than 1).  Torch is only the
parity oracle.  Graph (shapes inline; D = directions, H = hidden, L = labels)::

    input_ids (B, T) -Gather-> (B, T, E) -Transpose-> (T, B, E)
      -> per layer one RNN/LSTM/GRU node reading sequence_lens, layout 0: Y (T, D, B, H), Y_h (D, B, H)
         between layers Y -> (T, B, D*H)
      -> pooling: last = Y_h (D, B, H) -> (B, D*H) (what torch's packed h_n holds);
         mean / max / attention over the time mask ``arange(T) < sequence_lens``
      -> Gemm head -> logits (B, L)

Only ops the numba backend runs are written.  The embedding, the recurrent layers and the mask are
the graph builder's (``rnnkit.export.graph_builder``); the pooling is this task's own.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from ..runtime.manifest import ClassifierIO as IO
from ..runtime.model import length_buckets, pad
from ..runtime.tokenizer import WordTokenizer
from .architecture import ClassifierConfig
from .check import contract_problems, raise_problems
from .graph_builder import (
    BATCH,
    TIME,
    GraphBuilder,
    Signature,
    batch_major,
    embed,
    graph_metadata,
    make_model,
    merge_metadata,
    require,
    time_mask,
    write_stack,
)
from .oracle import torch_forward
from .pipeline import DEV_BATCH, DevSet, Exportable, numpy_weights, single_graph
from .validate import Forward

TASK = "classify"


def signature(config: ClassifierConfig) -> tuple[Signature, Signature]:
    """The graph's inputs and outputs (``ClassifierIO``), as written and as checked."""
    return (
        {IO.input_ids: (TensorProto.INT64, (BATCH, TIME)), IO.sequence_lens: (TensorProto.INT32, (BATCH,))},
        {IO.logits: (TensorProto.FLOAT, (BATCH, config.num_labels))},
    )


def expected_matmuls(config: ClassifierConfig) -> int:
    """MatMul-like nodes outside the recurrent ops: the head, plus proj and v for attention."""
    return 1 + (2 if config.pooling == "attention" else 0)


def _pool(g: GraphBuilder, config: ClassifierConfig, weights, y: str, y_h: str) -> str:
    """Last layer's outputs -> pooled (B, D*H)."""
    width = config.directions * config.hidden
    if config.pooling == "last":
        # Y_h (D, B, H): forward = state at each row's last real token, reverse = state at t=0
        bdh = g.op("Transpose", [y_h], "pool_last_transpose", perm=[1, 0, 2])  # (B, D, H)
        return g.op("Reshape", [bdh, g.ints("pool_last_shape", [0, width])], "pool_last")

    ybt = batch_major(g, config, y)  # (B, T, DH)
    mask, lens = time_mask(g, IO.input_ids, IO.sequence_lens)  # (B, T, 1), (B, 1)
    if config.pooling == "max":
        neg = g.op("Where", [mask, ybt, g.const("neg_inf", -np.inf)], "y_masked_neg_inf")
        return g.op("ReduceMax", [neg], "pool_max", axes=[1], keepdims=0)  # opset 17: attr
    # Where rather than Mul: padding positions never leak, even if a backend leaves NaN there
    y0 = g.op("Where", [mask, ybt, g.const("zero_f32", 0.0)], "y_masked")
    axis_t = g.ints("reduce_axes_time", [1])
    if config.pooling == "mean":
        total = g.op("ReduceSum", [y0, axis_t], "pool_sum", keepdims=0)  # (B, DH)
        count = g.op("Cast", [lens], "lens_f32", to=TensorProto.FLOAT)  # (B, 1)
        return g.op("Div", [total, count], "pool_mean")
    # attention: alpha = softmax_t(v . tanh(proj(y))), pooled = sum_t alpha * y
    proj_w = g.const("attention.proj.W_t", np.asarray(weights["attention.proj.weight"]).T)
    proj_b = g.const("attention.proj.bias", weights["attention.proj.bias"])
    v_w = g.const("attention.v.W_t", np.asarray(weights["attention.v.weight"]).T)  # (DH, 1)
    p = g.op("MatMul", [ybt, proj_w], "attention_proj_matmul")
    p = g.op("Add", [p, proj_b], "attention_proj")
    p = g.op("Tanh", [p], "attention_tanh")
    scores = g.op("MatMul", [p, v_w], "attention_scores")  # (B, T, 1)
    scores = g.op("Where", [mask, scores, g.const("neg_inf", -np.inf)], "attention_masked")
    alpha = g.op("Softmax", [scores], "attention_alpha", axis=1)
    weighted = g.op("Mul", [alpha, y0], "attention_weighted")
    return g.op("ReduceSum", [weighted, axis_t], "pool_attention", keepdims=0)


def build_classifier_graph(
    config: ClassifierConfig, weights: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """Numpy weights (``RecurrentClassifier.state_dict()`` keys) -> ONNX classifier graph."""
    meta = merge_metadata(graph_metadata(TASK, config), metadata)
    needed = ["embedding.weight", "head.weight", "head.bias"]
    if config.pooling == "attention":
        needed += ["attention.proj.weight", "attention.proj.bias", "attention.v.weight"]
    require(weights, needed, f"RecurrentClassifier.state_dict() for pooling={config.pooling!r}")
    g = GraphBuilder()
    x = embed(g, weights, "embedding", IO.input_ids, time_major="time_major")  # (T, B, E)
    y, y_h = write_stack(g, config, weights, x, IO.sequence_lens)
    pooled = _pool(g, config, weights, y, y_h)
    g.op(
        "Gemm",
        [pooled, g.const("head.weight", weights["head.weight"]), g.const("head.bias", weights["head.bias"])],
        "head",
        outputs=[IO.logits],
        transB=1,
    )
    return make_model(g, f"rnnkit_{config.cell}_classifier", *signature(config), meta)


def check_classifier_graph(model: onnx.ModelProto, config: ClassifierConfig) -> None:
    """Raise one ``UnsupportedError`` listing every way ``model`` breaks the classifier contract
    (fp32 graphs and their int8 siblings)."""
    parts = "head + attention" if config.pooling == "attention" else "head"
    raise_problems(
        contract_problems(
            model, config, *signature(config), "ClassifierIO", "num_labels", expected_matmuls(config), parts
        ),
        f"{config.cell} classifier",
    )


def classifier_exportable(
    config: ClassifierConfig,
    weights,
    tokenizer: WordTokenizer,
    labels: list[str],
    oracle: Forward,
    oracle_output: str | None = None,
    explain=None,
) -> Exportable:
    """``oracle``: the torch module on (input_ids, sequence_lens) feeds (``oracle.torch_forward``);
    ``oracle_output`` and ``explain``: see ``single_graph`` and ``GraphSpec`` (users' modules)."""

    def encode_dev(dev: DevSet, max_length: int):
        encoded = [tokenizer.encode(t)[:max_length] for t in dev.items]
        keep = [i for i, ids in enumerate(encoded) if ids]
        buckets = list(length_buckets([len(encoded[i]) for i in keep], DEV_BATCH))
        feeds = [dict(zip(IO.inputs, pad([encoded[keep[r]] for r in rows]))) for rows in buckets]
        gold = None
        if dev.labels is not None:
            order = [keep[r] for rows in buckets for r in rows]
            gold = np.array([labels.index(dev.labels[i]) if dev.labels[i] in labels else -1 for i in order])
        return feeds, gold

    graphs = single_graph(
        build_classifier_graph,
        check_classifier_graph,
        oracle,
        config.vocab_size,
        oracle_output=oracle_output,
        explain=explain,
    )
    return Exportable(TASK, config, weights, graphs, encode_dev, {"tokenizer": tokenizer.to_dict(), "labels": labels})


def from_module(module, tokenizer: WordTokenizer, labels: list[str]) -> Exportable:
    """A ``RecurrentClassifier`` (its own forward is the oracle) with its tokenizer and label names."""
    return classifier_exportable(module.config, numpy_weights(module), tokenizer, list(labels), torch_forward(module))
