"""A bundle's manifest as aligned, human lines: what ``rnnkit inspect`` and ``rnnkit export`` print.

``rnnkit inspect --json`` prints the manifest itself for programs; this is for people: every nested
section (state, files, parity, dev results) becomes one line per entry with its columns aligned,
numbers rounded to what can be read, no Python lists or dicts.  Torch-free and numpy-free.
"""

from __future__ import annotations

from typing import Any, Sequence


def summary(manifest: dict, path) -> str:
    """The lines of ``rnnkit inspect`` for a verified bundle's ``manifest`` at ``path``."""
    a = manifest["architecture"]
    task = manifest["task"]
    if task == "seq2seq":
        src, tgt = manifest["source_tokenizer"], manifest["target_tokenizer"]
        lines = [
            f"bundle {path}: task=seq2seq source={src['level']} ({len(src['vocab'])} entries) "
            f"target={tgt['level']} ({len(tgt['vocab'])} entries) <s>={a['bos_id']} </s>={a['eos_id']}",
            f"  model: {a['cell']} x{a['layers']} encoder{' bidirectional' if a['bidirectional'] else ''} -> "
            f"decoder, attention={a['attention']} embed={a['embed']} hidden={a['hidden']}",
        ]
    else:
        head = (
            f"tokenizer={manifest['tokenizer']['level']}"
            + (" (whitespace)" if manifest["tokenizer"].get("splitter") == "whitespace" else "")
            if task == "lm"
            else f"{len(manifest['labels'])} labels: {_some(manifest['labels'])}"
        )
        extra = f" pooling={a['pooling']}" if "pooling" in a else ""
        if a.get("char_vocab_size"):
            extra += f" char-cnn={a['char_filters']}"
        lines = [
            f"bundle {path}: task={task} {head}",
            f"  model: {a['cell']} x{a['layers']}{' bidirectional' if a['bidirectional'] else ''} "
            f"embed={a['embed']} hidden={a['hidden']}{extra} vocab={a['vocab_size']}",
        ]
    lines += _made(manifest)
    lines += _table(
        [
            (
                f"state: {e['output']} -> {e['input']}",
                e["dtype"],
                _shape(e["shape"]),
                f"starts as the encoder's {e['input']}" if e["initial"] == "encoder" else f"starts as {e['initial']}",
            )
            for e in manifest.get("state") or []
        ],
        "  ",
    )
    lines += _table(
        [
            (f"context: {c['input']}", c.get("dtype", ""), _shape(c["shape"]), "fixed per source, from the encoder")
            for c in manifest.get("context") or []
        ],
        "  ",
    )
    graph_files = manifest.get("graph_files") or {}
    lines += _table(
        [
            (
                f"file {name}",
                f"{e['bytes'] / 1e6:.2f} MB",
                f"sha256 {e['sha256'][:12]}",
                _graph_file(graph_files.get(name)),
            )
            for name, e in sorted(manifest["files"].items())
        ],
        "  ",
    )
    validation = manifest.get("validation") or {}
    lines += _table(_parity_rows(task, validation), "  ")  # largest |difference| over the export's test cases
    lines += _dev(validation.get("dev"))
    q = manifest.get("quantization")
    if q:
        ratio = (
            ", ".join(f"{g} {p.get('size_ratio')}" for g, p in q.items()) if task == "seq2seq" else q.get("size_ratio")
        )
        lines.append(f"  int8 size ratio: {ratio} (of the fp32 file)")
    return "\n".join(lines)


def _graph_file(record: dict | None) -> str:
    """``portable fp32, runs on onnxruntime 1.32.0, numba 0.68.1`` (a graph file's manifest record), or ""."""
    if not isinstance(record, dict):
        return ""
    runtimes = ", ".join(f"{k} {v}" for k, v in (record.get("validated_on") or {}).items())
    domains = sorted(d for d in (record.get("ops") or {}) if d != "ai.onnx")
    text = f"{record.get('form', '?')} {record.get('precision', '?')}"
    text += f" (+{', '.join(domains)} ops)" if domains else ""
    return text + (f", validated on {runtimes}" if runtimes else "")


def _parity_rows(task: str, validation: dict) -> list[tuple]:
    what = {"fp32": "fp32 vs torch", "int8": "int8 numba vs onnxruntime"}
    rows = []
    for variant in ("fp32", "int8"):
        reports = validation.get(variant) or {}
        per_graph = reports.items() if task == "seq2seq" else [("", reports)] if reports else []
        for graph, report in per_graph:
            diffs = report.get("max_abs_diff")
            diffs = diffs if isinstance(diffs, dict) else {"": diffs}
            cases = report.get("cases")
            for backend, diff in diffs.items():
                rows.append(
                    (
                        " ".join(w for w in ("parity", graph, what[variant]) if w),
                        report.get("compared", "logits"),
                        backend,
                        f"max|diff| {diff:.2e}" if isinstance(diff, float) else f"max|diff| {diff}",
                        f"{cases} cases" if cases is not None else "",
                    )
                )
            for output, record in (report.get("outputs") or {}).items():  # per-token outputs (pooling weights)
                for backend, diff in (record.get("max_abs_diff") or {}).items():
                    rows.append(
                        (
                            " ".join(w for w in ("parity", graph, what[variant]) if w),
                            output,
                            backend,
                            f"max|diff| {diff:.2e}",
                            f"{cases} cases" if cases is not None else "",
                        )
                    )
    return rows


def _dev(dev: dict | None) -> list[str]:
    if not dev:
        return []
    count = next((f"{dev[k]} {k}" for k in ("sentences", "examples", "texts") if k in dev), "")
    unit = dev.get("unit")
    head = f"  dev: {count}{f', scored per {unit[:-1]}' if unit and unit.endswith('s') else ''}"
    head += f" ({dev['source']})" if dev.get("source") else ""
    skip = {"source", "unit", "sentences", "examples", "texts"}
    return [head] + _table([(k, _number(v)) for k, v in dev.items() if k not in skip], "    ")


def _made(manifest: dict) -> list[str]:
    producer = manifest.get("producer") or {}
    if not producer:
        return []
    tools = ", ".join(f"{k} {v}" for k, v in producer.items() if k in ("rnnkit", "torch", "onnx"))
    when = f" on {manifest['created'][:10]}" if isinstance(manifest.get("created"), str) else ""
    return [f"  made by: {tools}{when}"]


def _table(rows: Sequence[tuple], indent: str) -> list[str]:
    """Rows of cells, each column padded to its widest cell (numbers right-aligned)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(map(len, cells), default=0))]
    out = []
    for row, raw in zip(cells, rows):
        padded = [
            c.rjust(w) if isinstance(v, (int, float)) or _numeric(c) else c.ljust(w)
            for c, w, v in zip(row, widths, raw)
        ]
        out.append((indent + "  ".join(padded)).rstrip())
    return out


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(value: Any) -> str:
    """Floats to 4 significant digits (parity differences in scientific notation); others as text."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.2e}" if value and abs(value) < 1e-3 else f"{value:.4g}"


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _some(labels: list, limit: int = 10) -> str:
    shown = ", ".join(map(str, labels[:limit]))
    return shown + (f", ... ({len(labels) - limit} more)" if len(labels) > limit else "")
