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
    attention pooling, with ``pooling_weights=True``: also the weights, the softmax over each
    row's real tokens that the pooled state sums by -> pooling_weights (B, T), 0 past each length

The weights are an output only when they are validated against the torch module like the logits
(``from_module``: ``AttentionPooling.weights``); a user's module (``export_module``) has no such
oracle, so its graph declares logits only (the older contract, which ``explain`` answers with
occlusion only).

Only ops the numba backend runs are written.  The embedding, the recurrent layers and the mask are
the graph builder's (``rnnkit.export.graph_builder``); the pooling is this task's own.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from ..runtime.manifest import MODEL_FP32, MODEL_INT8
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
from .pipeline import DEV_BATCH, DevSet, Exportable, GraphSpec, numpy_weights, single_graph
from .validate import LENGTHS, Forward

TASK = "classify"


def signature(config: ClassifierConfig, pooling_weights: bool = False) -> tuple[Signature, Signature]:
    """The graph's inputs and outputs (``ClassifierIO``), as written and as checked; with
    ``pooling_weights`` (attention pooling only) the weights follow the logits."""
    outputs: Signature = {IO.logits: (TensorProto.FLOAT, (BATCH, config.num_labels))}
    if pooling_weights:
        if config.pooling != "attention":
            raise ValueError(f"pooling_weights=True needs pooling='attention', not {config.pooling!r}")
        outputs[IO.pooling_weights] = (TensorProto.FLOAT, (BATCH, TIME))
    return (
        {IO.input_ids: (TensorProto.INT64, (BATCH, TIME)), IO.sequence_lens: (TensorProto.INT32, (BATCH,))},
        outputs,
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
    # the softmax runs on (B, T), over its last axis: that tensor is the graph output pooling_weights
    # when declared (the bundle check reads an output distribution off a Softmax over its last axis)
    axis_w = g.ints("attention_weights_axis", [2])
    scores = g.op("Squeeze", [scores, axis_w], "attention_masked_bt")  # (B, T)
    weights_bt = g.op("Softmax", [scores], "attention_softmax", outputs=[IO.pooling_weights], axis=1)
    alpha = g.op("Unsqueeze", [weights_bt, axis_w], "attention_alpha")  # (B, T, 1)
    weighted = g.op("Mul", [alpha, y0], "attention_weighted")
    return g.op("ReduceSum", [weighted, axis_t], "pool_attention", keepdims=0)


def build_classifier_graph(
    config: ClassifierConfig,
    weights: dict[str, np.ndarray],
    metadata: dict[str, str] | None = None,
    pooling_weights: bool = False,
) -> onnx.ModelProto:
    """Numpy weights (``RecurrentClassifier.state_dict()`` keys) -> ONNX classifier graph; with
    ``pooling_weights`` (attention pooling) the weights are its second output."""
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
    return make_model(g, f"rnnkit_{config.cell}_classifier", *signature(config, pooling_weights), meta)


def check_classifier_graph(model: onnx.ModelProto, config: ClassifierConfig, pooling_weights: bool = False) -> None:
    """Raise one ``UnsupportedError`` listing every way ``model`` breaks the classifier contract
    (fp32 graphs and their int8 siblings); ``pooling_weights``: the form that declares them."""
    parts = "head + attention" if config.pooling == "attention" else "head"
    raise_problems(
        contract_problems(
            model,
            config,
            *signature(config, pooling_weights),
            "ClassifierIO",
            "num_labels",
            expected_matmuls(config),
            parts,
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
    pooling_weights: bool = False,
) -> Exportable:
    """``oracle``: the torch module on (input_ids, sequence_lens) feeds (``oracle.torch_forward``);
    ``oracle_output`` and ``explain``: see ``single_graph`` and ``GraphSpec`` (users' modules);
    ``pooling_weights`` (attention pooling): the graph declares the weights as its second output and
    ``oracle`` returns (logits, weights (B, T)) (``torch_forward_with_weights``): they are validated
    together, on both backends, fp32 and int8, per row and alone (``check_parity``'s ``per_token``)."""

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

    if pooling_weights:
        signature(config, True)  # refuses pooling_weights without attention pooling, before any work
        graphs = [_graph_with_weights(config, oracle, oracle_output, explain)]
    else:
        graphs = single_graph(
            build_classifier_graph,
            check_classifier_graph,
            oracle,
            config.vocab_size,
            oracle_output=oracle_output,
            explain=explain,
        )
    return Exportable(TASK, config, weights, graphs, encode_dev, {"tokenizer": tokenizer.to_dict(), "labels": labels})


def _graph_with_weights(config: ClassifierConfig, oracle: Forward, oracle_output, explain) -> GraphSpec:
    """``single_graph``'s spec for the graph that also outputs ``pooling_weights``."""

    def build(config, weights, metadata=None):
        return build_classifier_graph(config, weights, metadata, pooling_weights=True)

    def check(model, config):
        check_classifier_graph(model, config, pooling_weights=True)

    parity = pooling_weights_parity(config.vocab_size, oracle_output)
    return GraphSpec("model", MODEL_FP32, MODEL_INT8, build, check, oracle, parity, explain)


def pooling_weights_parity(vocab_size: int, oracle_output: str | None = None, int8_lengths: tuple = LENGTHS):
    """``GraphSpec.parity`` of a classifier graph with ``pooling_weights``: ``single_graph``'s cases
    with the weights compared as a per-token output.  What a re-form of such a bundle validates
    with too (its forwards return (logits, weights))."""
    (spec,) = single_graph(
        None,
        None,
        None,
        vocab_size,
        int8_lengths=int8_lengths,
        oracle_output=oracle_output,
        per_token=(IO.pooling_weights,),
    )
    return spec.parity


def from_module(module, tokenizer: WordTokenizer, labels: list[str]) -> Exportable:
    """A ``RecurrentClassifier`` (its own forward is the oracle) with its tokenizer and label names;
    attention pooling also exports its weights (``torch_forward_with_weights``)."""
    if module.config.pooling == "attention":
        oracle, weights = torch_forward_with_weights(module), True
    else:
        oracle, weights = torch_forward(module), False
    return classifier_exportable(
        module.config, numpy_weights(module), tokenizer, list(labels), oracle, pooling_weights=weights
    )


def torch_forward_with_weights(module) -> Forward:
    """A ``RecurrentClassifier`` with attention pooling on parity feeds -> (logits, weights (B, T)):
    one forward (``torch_forward``), with a hook on its ``AttentionPooling`` that keeps
    ``weights(y, mask)``, the softmax its pooling sums by."""
    seen: list = []

    def keep(pooling, args, output):
        seen.append(pooling.weights(*args).detach().cpu().numpy().astype(np.float32))

    forward = torch_forward(module)

    def both(feed: dict) -> tuple[np.ndarray, np.ndarray]:
        seen.clear()
        handle = module.attention.register_forward_hook(keep)
        try:
            logits = forward(feed)  # torch_forward runs under no_grad
        finally:
            handle.remove()
        return logits, seen[0]

    return both
