"""Check a written classifier graph instead of trusting it: op types, symbolic axes, attributes.

Each check targets a trap we measured in ``torch.onnx.export`` (torch 2.13): recurrent cells
unrolled into MatMul chains with a frozen time axis, a fixed ``time`` dim on a second export,
``initial_h``/``initial_c`` read from one tensor, GRU with ``linear_before_reset`` other than 1,
and recurrent nodes that ignore ``sequence_lens`` (so a bidirectional pass reads padding).
Every task's checker (``check_*_graph`` in ``rnnkit.export.task_*``) runs the checks all graphs
share (``contract_problems``: IO against the task's ``Signature``, the task in the metadata,
recurrent nodes, initial state, MatMul count), adds its own, and raises one ``UnsupportedError``
listing every problem (``raise_problems``).  Works on fp32 graphs and on the int8 graphs of
``rnnkit.export.quantize``.

Imports onnx only (no torch, no onnxruntime).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from rnnkit.runtime.errors import UnsupportedError
from rnnkit.runtime.manifest import ClassifierIO

MS_DOMAIN = "com.microsoft"
RECURRENT = {"RNN", "LSTM", "GRU", "DynamicQuantizeLSTM"}
ALLOWED_RECURRENT = {"rnn": {"RNN"}, "lstm": {"LSTM", "DynamicQuantizeLSTM"}, "gru": {"GRU"}}
MATMULS = {"MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
CONTROL_FLOW = {"Loop", "Scan", "If"}
# ONNX defaults, i.e. what torch computes (Operators.md: RNN f=Tanh, GRU f,g, LSTM f,g,h)
DEFAULT_ACTIVATIONS = {
    "RNN": ["Tanh"],
    "GRU": ["Sigmoid", "Tanh"],
    "LSTM": ["Sigmoid", "Tanh", "Tanh"],
    "DynamicQuantizeLSTM": ["Sigmoid", "Tanh", "Tanh"],
}
# ops that pass one tensor through unchanged in value, for tracing where an input comes from
PASS_THROUGH = {"Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Transpose"}


def _root(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """Follow pass-through ops back to the tensor a value comes from."""
    seen = set()
    while name in producers and producers[name].op_type in PASS_THROUGH and name not in seen:
        seen.add(name)
        name = producers[name].input[0]
    return name


def dims(vi: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    return list(vi.type.tensor_type.shape.dim)


def dim_text(d) -> str:
    return repr(d.dim_param) if d.dim_param else (str(d.dim_value) if d.HasField("dim_value") else "?")


def check_io(
    graph: onnx.GraphProto, inputs: dict, outputs: dict, contract: str, count: str, problems: list[str]
) -> None:
    """Graph inputs / outputs against ``{name: (dtype, axes)}`` in order; an axis is a dim_param
    (symbolic, must stay so) or an int (the config value ``count``, e.g. num_labels)."""
    inits = {t.name for t in graph.initializer}
    real = [vi for vi in graph.input if vi.name not in inits]
    names = [vi.name for vi in real]
    if names != list(inputs):
        problems.append(f"graph inputs are {names}, expected {list(inputs)} ({contract})")
    names = [vi.name for vi in graph.output]
    if names != list(outputs):
        problems.append(f"graph outputs are {names}, expected {list(outputs)} ({contract})")
    expected = {**inputs, **outputs}
    for vi in real + list(graph.output):
        if vi.name not in expected:
            continue
        dtype, axes = expected[vi.name]
        got = vi.type.tensor_type.elem_type
        if got != dtype:
            problems.append(
                f"'{vi.name}' has dtype {TensorProto.DataType.Name(got)}, expected {TensorProto.DataType.Name(dtype)}"
            )
        shape = dims(vi)
        if len(shape) != len(axes):
            problems.append(f"'{vi.name}' has rank {len(shape)}, expected {len(axes)} {axes}")
            continue
        for d, want in zip(shape, axes):
            if isinstance(want, int):
                if d.dim_value != want:
                    problems.append(f"'{vi.name}' has dim {dim_text(d)} where {count}={want} is expected")
            elif d.dim_param != want:
                problems.append(
                    f"'{vi.name}' axis '{want}' is {dim_text(d)}, expected the symbolic "
                    f"dim_param '{want}' (a fixed value freezes the shape)"
                )


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def check_recurrent(
    node: onnx.NodeProto,
    config,
    producers: dict[str, onnx.NodeProto],
    problems: list[str],
    sequence_lens: str | None = ClassifierIO.sequence_lens,
) -> None:
    """One RNN/LSTM/GRU node: the attributes torch's cell implies, and it reads the graph input
    ``sequence_lens`` (None: a graph whose rows all run every step, e.g. a decoder step graph)."""
    where = f"{node.op_type} node '{node.name}'"
    if node.op_type == "DynamicQuantizeLSTM" and node.domain != MS_DOMAIN:
        problems.append(f"{where} has domain {node.domain!r}, expected {MS_DOMAIN!r}")
    hidden = _attr(node, "hidden_size")
    if hidden != config.hidden:
        problems.append(f"{where}: hidden_size={hidden}, expected {config.hidden}")
    direction = _attr(node, "direction")
    direction = "forward" if direction is None else direction.decode()
    want = "bidirectional" if config.bidirectional else "forward"
    if direction != want:
        problems.append(f"{where}: direction={direction!r}, expected {want!r}")
    if (_attr(node, "layout") or 0) != 0:
        problems.append(f"{where}: layout={_attr(node, 'layout')}, expected 0 (time-major)")
    if node.op_type == "GRU" and _attr(node, "linear_before_reset") != 1:
        problems.append(
            f"{where}: linear_before_reset={_attr(node, 'linear_before_reset')}, expected 1 "
            "(torch applies the reset gate after the hidden matmul)"
        )
    if _attr(node, "clip") is not None:
        problems.append(f"{where}: clip={_attr(node, 'clip')} set; torch never clips")
    if _attr(node, "input_forget"):
        problems.append(f"{where}: input_forget=1; torch has no coupled gates")
    acts = _attr(node, "activations")
    if acts is not None:
        acts = [a.decode() for a in acts]
        default = DEFAULT_ACTIVATIONS[node.op_type] * config.directions
        if acts != default:
            problems.append(f"{where}: activations={acts}, expected the defaults {default}")
    for extra in ("activation_alpha", "activation_beta"):
        if _attr(node, extra) is not None:
            problems.append(f"{where}: unexpected attribute {extra}")
    ins = list(node.input) + [""] * 8
    if sequence_lens is not None and (not ins[4] or _root(ins[4], producers) != sequence_lens):
        problems.append(
            f"{where} does not read '{sequence_lens}' (input 4 is {ins[4]!r}); padding would be read as tokens"
        )
    h0, c0 = ins[5], ins[6] if node.op_type in ("LSTM", "DynamicQuantizeLSTM") else ""
    if h0 and c0 and _root(h0, producers) == _root(c0, producers):
        problems.append(f"{where}: initial_h {h0!r} and initial_c {c0!r} are the same tensor {_root(h0, producers)!r}")
    if node.op_type in ("LSTM", "DynamicQuantizeLSTM") and ins[7]:
        problems.append(f"{where}: peephole input P {ins[7]!r}; torch LSTM has no peepholes")


def contract_problems(
    model: onnx.ModelProto,
    config,
    inputs: dict,
    outputs: dict,
    contract: str,
    count: str,
    matmuls: int,
    matmul_parts: str,
    sequence_lens: str | None = ClassifierIO.sequence_lens,
    task: str | None = None,
    initial_state: str | None = None,
) -> list[str]:
    """Every problem shared by all tasks' graphs: onnx.checker, IO (``check_io``), ``task`` in the
    metadata (when given), no control flow, one allowed recurrent node per layer (``check_recurrent``
    each, reading the graph input ``sequence_lens``; with ``initial_state``, what goes wrong when a
    node reads no initial_h), ``matmuls`` MatMul-like nodes outside them (``matmul_parts`` says which).
    Returns the list; the caller adds its own."""
    problems: list[str] = []
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        problems.append(f"onnx.checker.check_model failed: {str(exc).splitlines()[0]}")
    graph = model.graph
    check_io(graph, inputs, outputs, contract, count, problems)
    nodes = list(graph.node)
    producers = {out: n for n in nodes for out in n.output}
    flow = sorted({n.op_type for n in nodes if n.op_type in CONTROL_FLOW})
    if flow:
        problems.append(f"control flow {flow} in the graph; rnnkit expects native recurrent ops, no loops")
    rec = [n for n in nodes if n.op_type in RECURRENT]
    allowed = ALLOWED_RECURRENT[config.cell]
    wrong = [f"{n.op_type} '{n.name}'" for n in rec if n.op_type not in allowed]
    if wrong:
        problems.append(f"recurrent nodes {wrong} do not match cell={config.cell!r} (expected {sorted(allowed)})")
    if len(rec) != config.layers:
        problems.append(
            f"{len(rec)} recurrent nodes, expected {config.layers} ({'/'.join(sorted(allowed))}, "
            "one per layer); an unrolled cell has none"
        )
    mm = [n for n in nodes if n.op_type in MATMULS]
    if len(mm) != matmuls:
        problems.append(
            f"{len(mm)} MatMul/Gemm nodes, expected {matmuls} ({matmul_parts}); more means the recurrence was unrolled"
        )
    for n in rec:
        if n.op_type in allowed:
            check_recurrent(n, config, producers, problems, sequence_lens)
        if initial_state and (len(n.input) < 6 or not n.input[5]):
            problems.append(f"{n.op_type} node '{n.name}' does not read an initial_h; {initial_state}")
    if task is not None:
        found = {p.key: p.value for p in model.metadata_props}.get("rnnkit.task")
        if found != task:
            problems.append(f"metadata 'rnnkit.task' is {found!r}, expected {task!r}")
    return problems


def raise_problems(problems: list[str], what: str) -> None:
    """One ``UnsupportedError`` listing them all (``what``: e.g. 'gru classifier')."""
    if problems:
        raise UnsupportedError(
            f"ONNX graph for a {what} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems)
        )
