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

from rnnkit.export.check import (CONTROL_FLOW, MATMULS, RECURRENT, ALLOWED_RECURRENT, _check_recurrent,
                                 _dim_text, _dims)
from rnnkit.export.graph import (BATCH, RECURRENT_OPS, TIME, _Graph, _producer_version,
                                 onnx_rnn_weights)
from rnnkit.runtime.errors import UnsupportedError
from rnnkit.runtime.manifest import FORMAT_VERSION, METADATA_KEYS, OPSET, TaggerIO

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


def _char_features(g: _Graph, config: TaggerConfig, weights, zero: str) -> str:
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


def _recurrent_stack(g: _Graph, config: TaggerConfig, weights, x: str) -> str:
    """x (T, B, I) -> last layer's Y (T, D, B, H); same nodes as the classifier writer."""
    d, h = config.directions, config.hidden
    direction = "bidirectional" if config.bidirectional else "forward"
    y = ""
    for layer in range(config.layers):
        name = f"{config.cell}_{layer}"
        W, R, B = onnx_rnn_weights(config, weights, layer)
        attrs = dict(hidden_size=h, direction=direction, layout=0)
        if config.cell == "gru":
            attrs["linear_before_reset"] = 1
        y, _ = g.op(RECURRENT_OPS[config.cell], [x, g.const(f"{name}.W", W), g.const(f"{name}.R", R),
                                                 g.const(f"{name}.B", B), TaggerIO.sequence_lens],
                    name, outputs=[f"{name}.Y", f"{name}.Y_h"], **attrs)
        if layer + 1 < config.layers:  # Y (T, D, B, H) -> (T, B, D*H) for the next layer
            t = g.op("Transpose", [y], f"{name}_out_transpose", perm=[0, 2, 1, 3])
            x = g.op("Reshape", [t, g.ints(f"{name}_out_shape", [0, 0, d * h])], f"{name}_out")
    return y


def build_tagger_graph(config: TaggerConfig, weights: dict[str, np.ndarray],
                       metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Numpy weights (``RecurrentTagger.state_dict()`` keys) -> ONNX tagger graph."""
    meta = default_metadata(config)
    unknown = sorted(set(metadata or {}) - set(METADATA_KEYS))
    if unknown:
        raise UnsupportedError(f"metadata: keys {unknown} are not in METADATA_KEYS "
                               f"{list(METADATA_KEYS)}; put other facts in manifest.json")
    meta.update(metadata or {})
    needed = ["embedding.weight", "head.weight", "head.bias"]
    if config.use_chars:
        needed += ["char_embedding.weight", "char_conv.weight", "char_conv.bias"]
    missing = [k for k in needed if k not in weights]
    if missing:
        raise UnsupportedError(f"weights: missing {missing} (keys must follow RecurrentTagger.state_dict())")

    g = _Graph()
    zero = g.const("zero_f32", 0.0)
    x = g.op("Gather", [g.const("embedding.weight", weights["embedding.weight"]), TaggerIO.input_ids],
             "embedding", axis=0)                                                # (B, T, E)
    if config.use_chars:
        x = g.op("Concat", [x, _char_features(g, config, weights, zero)], "token_features", axis=2)  # (B, T, E+F)
    x = g.op("Transpose", [x], "time_major", perm=[1, 0, 2])                       # (T, B, I)
    y = _recurrent_stack(g, config, weights, x)
    width = config.directions * config.hidden
    ybt = g.op("Transpose", [y], "y_batch_major", perm=[2, 0, 1, 3])              # (B, T, D, H)
    ybt = g.op("Reshape", [ybt, g.ints("y_batch_shape", [0, 0, width])], "y_batch")  # (B, T, D*H)
    head_w = np.ascontiguousarray(np.asarray(weights["head.weight"], dtype=np.float32).T)  # (D*H, K)
    z = g.op("MatMul", [ybt, g.const("head.W_t", head_w)], "head_matmul")
    z = g.op("Add", [z, g.const("head.bias", weights["head.bias"])], "head")      # (B, T, K)
    # time mask (B, T, 1): arange(T) < sequence_lens; Where, not Mul, so a NaN at padding cannot leak
    shape = g.op("Shape", [TaggerIO.input_ids], "ids_shape")
    time = g.op("Gather", [shape, g.ints("axis_time", 1)], "time", axis=0)
    steps = g.op("Range", [g.ints("zero_i64", 0), time, g.ints("one_i64", 1)], "steps")
    steps = g.op("Unsqueeze", [steps, g.ints("axes_0", [0])], "steps_row")        # (1, T)
    lens = g.op("Cast", [TaggerIO.sequence_lens], "lens_i64", to=TensorProto.INT64)
    lens = g.op("Unsqueeze", [lens, g.ints("axes_1", [1])], "lens_col")           # (B, 1)
    mask = g.op("Less", [steps, lens], "time_mask")
    mask = g.op("Unsqueeze", [mask, g.ints("axes_2", [2])], "time_mask_3d")       # (B, T, 1)
    g.op("Where", [mask, z, zero], "logits_masked", outputs=[TaggerIO.logits])

    inputs = [helper.make_tensor_value_info(TaggerIO.input_ids, TensorProto.INT64, [BATCH, TIME]),
              helper.make_tensor_value_info(TaggerIO.sequence_lens, TensorProto.INT32, [BATCH])]
    if config.use_chars:
        inputs.append(helper.make_tensor_value_info(TaggerIO.char_ids, TensorProto.INT64, [BATCH, TIME, CHARS]))
    graph = helper.make_graph(
        g.nodes, f"rnnkit_{config.cell}_tagger", inputs=inputs,
        outputs=[helper.make_tensor_value_info(TaggerIO.logits, TensorProto.FLOAT, [BATCH, TIME, config.num_tags])],
        initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="rnnkit", producer_version=_producer_version())
    model.ir_version = 8  # opset 17's IR; lets onnxruntime >= 1.17 load it
    helper.set_model_props(model, {k: str(meta[k]) for k in METADATA_KEYS})
    return model


def expected_matmuls(config: TaggerConfig) -> int:
    """MatMul-like nodes outside the recurrent ops: the head, plus the char CNN's im2col MatMul."""
    return 1 + (1 if config.use_chars else 0)


def _check_io(graph: onnx.GraphProto, config: TaggerConfig, problems: list[str]) -> None:
    inits = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in inits]
    want_in = list(TaggerIO.inputs_with_chars if config.use_chars else TaggerIO.inputs)
    if [vi.name for vi in inputs] != want_in:
        problems.append(f"graph inputs are {[vi.name for vi in inputs]}, expected {want_in} (TaggerIO)")
    if [vi.name for vi in graph.output] != list(TaggerIO.outputs):
        problems.append(f"graph outputs are {[vi.name for vi in graph.output]}, expected {list(TaggerIO.outputs)}")
    expected = {TaggerIO.input_ids: (TensorProto.INT64, (BATCH, TIME)),
                TaggerIO.sequence_lens: (TensorProto.INT32, (BATCH,)),
                TaggerIO.char_ids: (TensorProto.INT64, (BATCH, TIME, CHARS)),
                TaggerIO.logits: (TensorProto.FLOAT, (BATCH, TIME, config.num_tags))}
    for vi in list(inputs) + list(graph.output):
        if vi.name not in expected:
            continue
        dtype, axes = expected[vi.name]
        if vi.type.tensor_type.elem_type != dtype:
            problems.append(f"'{vi.name}' has dtype {TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}, "
                            f"expected {TensorProto.DataType.Name(dtype)}")
        dims = _dims(vi)
        if len(dims) != len(axes):
            problems.append(f"'{vi.name}' has rank {len(dims)}, expected {len(axes)} {axes}")
            continue
        for dim, want in zip(dims, axes):
            if isinstance(want, int):
                if dim.dim_value != want:
                    problems.append(f"'{vi.name}' has dim {_dim_text(dim)} where num_tags={want} is expected")
            elif dim.dim_param != want:
                problems.append(f"'{vi.name}' axis '{want}' is {_dim_text(dim)}, expected the symbolic "
                                f"dim_param '{want}' (a fixed value freezes the shape)")


def check_tagger_graph(model: onnx.ModelProto, config: TaggerConfig) -> None:
    """Raise one ``UnsupportedError`` listing every way ``model`` breaks the tagger contract
    (fp32 graphs and the int8 graphs of ``quantize_classifier``)."""
    problems: list[str] = []
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        problems.append(f"onnx.checker.check_model failed: {str(exc).splitlines()[0]}")
    graph = model.graph
    _check_io(graph, config, problems)
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("rnnkit.task") != "tag":
        problems.append(f"metadata 'rnnkit.task' is {props.get('rnnkit.task')!r}, expected 'tag'")
    nodes = list(graph.node)
    producers = {out: n for n in nodes for out in n.output}
    flow = sorted({n.op_type for n in nodes if n.op_type in CONTROL_FLOW})
    if flow:
        problems.append(f"control flow {flow} in the graph; rnnkit expects native recurrent ops, no loops")
    if any(n.op_type == "Conv" for n in nodes):
        problems.append("Conv node in the graph; the numba backend has no Conv (write the char CNN as im2col)")
    rec = [n for n in nodes if n.op_type in RECURRENT]
    allowed = ALLOWED_RECURRENT[config.cell]
    wrong = [f"{n.op_type} '{n.name}'" for n in rec if n.op_type not in allowed]
    if wrong:
        problems.append(f"recurrent nodes {wrong} do not match cell={config.cell!r} (expected {sorted(allowed)})")
    if len(rec) != config.layers:
        problems.append(f"{len(rec)} recurrent nodes, expected {config.layers} (one per layer); "
                        "an unrolled cell has none")
    mm = [n for n in nodes if n.op_type in MATMULS]
    if len(mm) != expected_matmuls(config):
        problems.append(f"{len(mm)} MatMul/Gemm nodes, expected {expected_matmuls(config)} "
                        f"(head{' + char CNN' if config.use_chars else ''}); more means the recurrence was unrolled")
    for n in rec:
        if n.op_type in allowed:
            _check_recurrent(n, config, producers, problems)
    if problems:
        raise UnsupportedError(f"ONNX graph for a {config.cell} tagger has {len(problems)} "
                               "problem(s):\n  - " + "\n  - ".join(problems))


__all__ = ["build_tagger_graph", "check_tagger_graph", "default_metadata", "expected_matmuls"]
