"""Mutation fuzzing of bundle verification: a damaged bundle never answers.

Tiny bundles of every task (classify, tag, lm, seq2seq; fp32 and int8) are mutated in every file
and every manifest key: truncated, emptied, deleted, renamed, bit-flipped, appended to; manifest
values retyped, nulled, deleted, edited, shortened, reversed, renumbered and keys renamed, both
un-sealed (the manifest checksum must catch them) and re-sealed (the consistency checks must);
graphs bit-flipped and truncated, then re-hashed so that only the checks past the checksums can
catch them; and graphs cut by hand, re-hashed (renamed inputs, a narrower head or embedding, fp32
and int8 swapped, huge dims, unlisted or outside external data, a subgraph with a bad tensor,
foreign ops, changed recurrent attributes, a backtracking tokenizer pattern...).

Each mutant must give a ``RnnkitError`` (a clear message) or exactly the unmutated bundle's
answers, never another exception (a traceback) and never a hang.  The one exception is a
*well-formed* edit that a re-hash or re-seal makes indistinguishable from a genuine bundle of
another model (a vocabulary word or label renamed, a weight's value changed, a node rewired to a
value of the same shape): only a signature would catch it (docs/threat-model.md), so it may answer
differently -- but still within the contract (probabilities over every label summing to 1, one
tag per token) -- and is counted apart.

Deterministic (``SEED``) and bounded: each mutant runs in a worker process with a deadline (a hang
in C code, e.g. a regex, cannot be interrupted in-process); about 35 s on 2 cores once the session
fixtures are built.  Print the counts:

    .venv/bin/python -m pytest -q -s tests/test_bundle_fuzz.py
    RNNKIT_FUZZ_SEED=3 RNNKIT_FUZZ_FLIPS=150 .venv/bin/python -m pytest -q -s tests/test_bundle_fuzz.py  # a hunt
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import select
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from conftest import edit_manifest, rehash, synthetic_sentences, synthetic_texts
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.slow  # subprocesses, compiles or many exports: not in the fast subset

SEED = int(os.environ.get("RNNKIT_FUZZ_SEED", 15))
FLIPS = int(os.environ.get("RNNKIT_FUZZ_FLIPS", 8))  # re-hashed bit flips per graph file (150 to hunt)
DEADLINE_S = 30.0  # per mutant; every real one takes well under a second
BACKENDS = ("onnxruntime", "numba")
NUMBA_EVERY = 20  # also run every 20th mutant (and every graph surgery) on the numba backend
TESTS = Path(__file__).resolve().parent
TEXTS = synthetic_texts(4, seed=3)[0] + ["boring, boring film"]
SENTENCES = synthetic_sentences(2, seed=3)[0] + ["The plot is dull .", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!"]
WORDS = ["cat", "horse", "frog", "bee"]
LONG = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!"  # what a backtracking pattern chokes on
LEGACY = r"\w+(?:['’]\w+)*|[^\w\s]"  # the regex manifests stored before splitters had names


# -- the answers compared -----------------------------------------------------------------------


def answer(model) -> object:
    """Everything a task answers on a few fixed inputs, as JSON (floats exact)."""
    task = model.bundle.task
    if task == "classify":
        return [p.to_dict() for p in model.predict(TEXTS + [LONG], truncate=True)]
    if task == "tag":
        return [t.to_dict() for t in model.tag(SENTENCES)]
    if task == "lm":
        return {
            "score": model.score("the cat sat on"),
            "next": model.next_tokens("the ", k=3),
            "greedy": model.generate_text("a ", max_tokens=6, temperature=0),
        }
    return {"beam": model.translate(WORDS, beam=2), "greedy": model.translate(WORDS[:2], beam=1)}


def _serve() -> None:
    """Worker: one JSON request per line -> one JSON reply per line (on the original stdout)."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the replies
    from rnnkit.runtime import RnnkitError, load

    for line in sys.stdin:
        req = json.loads(line)
        try:
            model = load(req["path"], backend=req["backend"], int8=req["int8"], threads=1)
            reply = {"kind": "answer", "value": json.loads(json.dumps(answer(model)))}
        except RnnkitError as exc:
            reply = {"kind": "error", "type": type(exc).__name__, "message": str(exc)}
        except BaseException as exc:  # noqa: BLE001 -- exactly what the fuzzer hunts for
            reply = {
                "kind": "traceback",
                "type": type(exc).__name__,
                "message": "".join(traceback.format_exception(exc))[-3000:],
            }
        out.write(json.dumps(reply) + "\n")
        out.flush()


class Worker:
    """A ``_serve`` process; replaced when a request passes its deadline (counted as a hang)."""

    def __init__(self):
        self.proc = None

    def ask(self, path: Path, backend: str, int8: bool) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_bundle_fuzz as f; f._serve()"
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        self.proc.stdin.write(json.dumps({"path": str(path), "backend": backend, "int8": int8}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            return {"kind": "hang" if not ready else "traceback", "type": "worker", "message": "no reply"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait()
            self.proc = None


# -- mutations --------------------------------------------------------------------------------------


@dataclass
class Mutant:
    name: str  # what was done, for the failure report
    apply: Callable[[Path], None]  # mutates a copy of the bundle in place
    int8: bool = False  # which variant's answers it affects
    # "error or same": caught, or changes nothing; "error": a contract violation, must be refused;
    # "same": must answer as before; "any": a well-formed edit that a re-hash or re-seal makes
    # indistinguishable from a genuine bundle (only a signature catches it): it may answer
    # differently, but never fail, hang, or answer outside the contract
    expect: str = "error or same"
    surgery: bool = False  # hand-made graph damage: also run on numba


def _graph(bundle: Path, file: str) -> onnx.ModelProto:
    return onnx.load(str(bundle / file))


def _save(bundle: Path, file: str, model: onnx.ModelProto) -> None:
    onnx.save_model(model, str(bundle / file))
    rehash(bundle, file)


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for v in list(graph.input) + list(graph.output):
        if v.name == old:
            v.name = new


def _set_init(graph: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    t = next(t for t in graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(array, name))


def _init(graph: onnx.GraphProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in graph.initializer if t.name == name))


def file_mutants(files: list[str], rng: random.Random, int8_files: set[str]) -> list[Mutant]:
    """Raw damage to every file (no re-hash: the checksums must catch it), then re-hashed damage to
    the graphs (the checks past the checksums must)."""
    out = []
    for f in files:
        i8 = f in int8_files

        def truncate(b, f=f, keep=0.5):
            data = (b / f).read_bytes()
            (b / f).write_bytes(data[: int(len(data) * keep)])

        def flip(b, f=f, seed=rng.random()):
            data = bytearray((b / f).read_bytes())
            data[int(seed * len(data))] ^= 1 << int(seed * 8)
            (b / f).write_bytes(bytes(data))

        out += [
            Mutant(f"{f}: truncated to half", truncate, i8),
            Mutant(f"{f}: emptied", lambda b, f=f: (b / f).write_bytes(b""), i8),
            Mutant(f"{f}: deleted", lambda b, f=f: (b / f).unlink(), i8),
            Mutant(f"{f}: renamed", lambda b, f=f: (b / f).rename(b / (f + ".orig")), i8),
            Mutant(
                f"{f}: 16 bytes appended",
                lambda b, f=f: (b / f).write_bytes((b / f).read_bytes() + b"\x08\x01" * 8),
                i8,
            ),
        ]
        out += [Mutant(f"{f}: a bit flipped", flip, i8) for _ in range(6 if f == "manifest.json" else 2)]
    return out


def _only_values_differ(before: onnx.ModelProto, data: bytes) -> bool:
    """Whether ``data`` parses to ``before`` with only some initializers' values changed: a
    well-formed model with other numbers (weights, or constants like a slice's start)."""
    try:
        after = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 -- unreadable: damage the checks must catch
        return False
    if len(after.graph.initializer) != len(before.graph.initializer):
        return False
    for a, b in zip(before.graph.initializer, after.graph.initializer):
        if (a.name, list(a.dims), a.data_type, len(a.raw_data)) != (b.name, list(b.dims), b.data_type, len(b.raw_data)):
            return False
    del after.graph.initializer[:]
    stripped = onnx.ModelProto()
    stripped.CopyFrom(before)
    del stripped.graph.initializer[:]
    return after == stripped


def rehashed_flips(
    bundle: Path, graph_files: list[str], rng: random.Random, int8_files: set[str], per_file: int
) -> list[Mutant]:
    """Bit flips in graphs, re-hashed.  Most are caught; one that only changes a tensor's values (a
    weight, a constant) or rewires a node to another value of the same shape gives a well-formed
    model that answers as it computes: it may answer differently, never fail or break the contract."""
    out = []
    for f in graph_files:
        data = (bundle / f).read_bytes()
        before = _graph(bundle, f)
        for _ in range(per_file):
            at, bit = rng.randrange(len(data)), rng.randrange(8)
            flipped = bytearray(data)
            flipped[at] ^= 1 << bit
            free = _only_values_differ(before, bytes(flipped))

            def mutate(b, f=f, flipped=bytes(flipped)):
                (b / f).write_bytes(flipped)
                rehash(b, f)

            out.append(
                Mutant(
                    f"{f}: bit {bit} of byte {at} flipped{' (a value)' if free else ''}, re-hashed",
                    mutate,
                    f in int8_files,
                    expect="any",
                )
            )
        out.append(
            Mutant(
                f"{f}: truncated to 3/4, re-hashed",
                lambda b, f=f, n=len(data) * 3 // 4: ((b / f).write_bytes((b / f).read_bytes()[:n]), rehash(b, f)),
                f in int8_files,
                expect="error",
            )
        )
    return out


# manifest paths whose re-sealed edits are well-formed data (only a signature tells them from genuine)
FREE_PATHS = re.compile(
    r"^((source_|target_)?tokenizer\.vocab\[\d+\]|labels(\[\d+\])?|charset\.chars\[\d+\]"
    r"|(source_|target_)?tokenizer\.(lowercase|normalization)|charset\.normalization"
    r"|graph\.max_length|charset\.max_chars)$"
)


def _paths(value, prefix: tuple = ()):
    """(key path, value) for every key of the manifest; long lists sampled (first two, middle, last)."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        idx = range(len(value)) if len(value) <= 4 else sorted({0, 1, len(value) // 2, len(value) - 1})
        for i in idx:
            yield from _paths(value[i], prefix + (i,))


def _shown(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _set(manifest: dict, path: tuple, change) -> None:
    """Apply ``change(container, key)`` at a key path."""
    node = manifest
    for p in path[:-1]:
        node = node[p]
    change(node, path[-1])


def _edits(value) -> list[tuple[str, Callable]]:
    """(label, change(container, key)) for a value: retype, delete, and edits by type."""

    def put(v):
        return lambda c, k: c.__setitem__(k, copy.deepcopy(v))

    other = {str: 7, int: "7", float: "0.5", bool: "true", list: {}, dict: [], type(None): 0}[type(value)]
    edits = [("retyped", put(other)), ("null", put(None)), ("deleted", lambda c, k: c.pop(k))]
    if isinstance(value, str):
        edits += [
            ("string edited", put(value[:-1] + chr(ord(value[-1]) ^ 1) if value else "x")),
            ("string lengthened", put(value + "x")),
        ]
    elif isinstance(value, bool):
        edits += [("flipped", put(not value))]
    elif isinstance(value, (int, float)):
        edits += [
            ("plus one", put(value + 1)),
            ("negated", put(-value - 1)),
            ("huge", put(value * 1000003 + 10**12)),
            ("made float", put(float(value) + 0.5)),
        ]
    elif isinstance(value, list) and value:
        edits += [("shortened", lambda c, k: c[k].pop()), ("reversed", lambda c, k: c[k].reverse())]
    return edits


def manifest_mutants(bundle: Path, rng: random.Random) -> list[Mutant]:
    """Every manifest key: one raw edit (the manifest checksum must catch it) and every typed edit
    re-sealed (the consistency checks must, unless the edit is well-formed data: ``FREE_PATHS``)."""
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    out = []
    for path, value in _paths(manifest):
        if not path or path == ("manifest_sha256",):
            continue
        edits = _edits(value)
        if isinstance(path[-1], int):
            edits = [e for e in edits if e[0] != "deleted"]  # a deleted list entry is 'shortened' on its list
        label, change = rng.choice(edits)
        out.append(
            Mutant(
                f"manifest {_shown(path)}: {label}, not re-sealed",
                lambda b, p=path, c=change: edit_manifest(b, lambda m: _set(m, p, c), seal=False),
            )
        )
        if isinstance(path[-1], str):  # the key itself: renamed, made a path, or given a NUL
            label, new = rng.choice(
                [
                    ("key renamed", path[-1] + "_"),
                    ("key made a path", "../" + path[-1]),
                    ("key given a NUL", path[-1] + "\0"),
                ]
            )
            out.append(
                Mutant(
                    f"manifest {_shown(path)}: {label}, re-sealed",
                    lambda b, p=path, n=new: edit_manifest(
                        b, lambda m: _set(m, p, lambda c, k: c.__setitem__(n, c.pop(k)))
                    ),
                )
            )
        for label, change in edits[:1] + rng.sample(edits[1:], min(2, len(edits) - 1)):  # a retype and two more
            free = bool(FREE_PATHS.match(_shown(path))) and label not in ("retyped", "null", "deleted")
            out.append(
                Mutant(
                    f"manifest {_shown(path)}: {label}, re-sealed",
                    lambda b, p=path, c=change: edit_manifest(b, lambda m: _set(m, p, c)),
                    expect="any" if free else "error or same",
                )
            )
    return out


def surgery_mutants(task: str, graphs: dict[str, str], int8_graphs: dict[str, str]) -> list[Mutant]:
    """Hand-made, re-hashed graph damage: every case the contract checks exist for."""
    head_file = graphs["decoder" if task == "seq2seq" else "model"]
    first = graphs["encoder" if task == "seq2seq" else "model"]
    out = []

    def shrink_head(b, file=head_file, keep_declared=False):
        m = _graph(b, file)
        g = m.graph
        names = {t.name for t in g.initializer}
        if "head.weight" in names:  # classify: Gemm, transB=1
            _set_init(g, "head.weight", _init(g, "head.weight")[:1])
        else:
            _set_init(g, "head.W_t", _init(g, "head.W_t")[:, :1])
        _set_init(g, "head.bias", _init(g, "head.bias")[:1])
        if not keep_declared:
            g.output[0].type.tensor_type.shape.dim[-1].dim_value = 1
        _save(b, file, m)

    def shrink_embedding(b, file=first, int8=False):
        m = _graph(b, file)
        g = m.graph
        for t in list(g.initializer):
            if "embedding.weight" in t.name and not t.name.startswith("char_") and t.dims and len(t.dims) == 2:
                _set_init(g, t.name, _init(g, t.name)[:-1])
        _save(b, file, m)

    def rename_input(b, file=first):
        m = _graph(b, file)
        _rename_value(m.graph, m.graph.input[0].name, m.graph.input[0].name + "_renamed")
        _save(b, file, m)

    def huge_dims(b, file=first):
        m = _graph(b, file)
        t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        t.dims[:] = [1 << 40, 1 << 40]
        _save(b, file, m)

    def dims_without_data(b, file=first):
        m = _graph(b, file)
        t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        t.dims[0] += 1
        _save(b, file, m)

    def external(b, file=first, listed=False, location="extra.bin"):
        m = _graph(b, file)
        t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        (b / location).parent.mkdir(parents=True, exist_ok=True)
        (b / location).write_bytes(t.raw_data)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=location)
        t.external_data.add(key="offset", value="0")
        t.external_data.add(key="length", value=str((b / location).stat().st_size))
        _save(b, file, m)
        if listed:
            rehash(b, location)

    def subgraph(b, file=first, bad="external"):
        m = _graph(b, file)
        tensor = numpy_helper.from_array(np.zeros(4, np.float32), "sub_w")
        if bad == "external":
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            tensor.external_data.add(key="location", value="../../../../etc/hostname")
        elif bad == "huge":
            tensor.dims[:] = [1 << 40]
        branch = helper.make_graph(
            [helper.make_node("Identity", ["sub_w"], ["sub_out"])],
            "branch",
            [],
            [helper.make_tensor_value_info("sub_out", TensorProto.FLOAT, [4])],
            [tensor],
        )
        cond = next(n.output[0] for n in m.graph.node if n.op_type == "Less")  # a bool the graph computes
        m.graph.node.append(helper.make_node("If", [cond], ["sub_if"], then_branch=branch, else_branch=branch))
        _save(b, file, m)

    def node_edit(b, file, edit):
        m = _graph(b, file)
        edit(m.graph)
        _save(b, file, m)

    def recurrent(g, name, value):
        node = next(n for n in g.node if n.op_type in ("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"))
        attrs = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(attrs + [helper.make_attribute(name, value)])

    def swap_op(g, old, new):
        next(n for n in g.node if n.op_type == old).op_type = new

    def input_dtype(g):
        g.input[1].type.tensor_type.elem_type = TensorProto.INT64

    def static_batch(g):
        g.input[0].type.tensor_type.shape.dim[0].dim_value = 1

    def string_tensor(g):
        g.initializer.append(helper.make_tensor("stray_strings", TensorProto.STRING, [1], [b"x"]))

    cases = [
        ("head shrunk to one class", shrink_head, head_file),
        ("head shrunk, output still declared full width", lambda b: shrink_head(b, keep_declared=True), head_file),
        ("embedding one row short", shrink_embedding, first),
        ("first input renamed", rename_input, first),
        ("an initializer declared [2^40, 2^40]", huge_dims, first),
        ("an initializer declared one row longer than its data", dims_without_data, first),
        ("weights moved to an unlisted external file", external, first),
        ("weights moved to a listed external file", lambda b: external(b, listed=True), first),
        ("weights moved to external data outside the bundle", lambda b: external(b, location="../outside.bin"), first),
        ("an If node whose subgraph reads external data outside the bundle", subgraph, first),
        ("an If node whose subgraph holds a [2^40] tensor", lambda b: subgraph(b, bad="huge"), first),
        ("an If node with a valid subgraph", lambda b: subgraph(b, bad=""), first),
        (
            "recurrent hidden_size + 1",
            lambda b: node_edit(
                b,
                first,
                lambda g: recurrent(
                    g, "hidden_size", next(a.i for n in g.node for a in n.attribute if a.name == "hidden_size") + 1
                ),
            ),
            first,
        ),
        (
            "recurrent direction reversed",
            lambda b: node_edit(b, first, lambda g: recurrent(g, "direction", "reverse")),
            first,
        ),
        (
            "recurrent activations set",
            lambda b: node_edit(b, first, lambda g: recurrent(g, "activations", ["Relu"] * 6)),
            first,
        ),
        (
            "Transpose replaced by an unknown op",
            lambda b: node_edit(b, first, lambda g: swap_op(g, "Transpose", "Frobnicate")),
            first,
        ),
        ("a Cast replaced by Relu", lambda b: node_edit(b, first, lambda g: swap_op(g, "Cast", "Relu")), first),
        ("second input's dtype changed", lambda b: node_edit(b, first, input_dtype), first),
        ("first input's batch axis made static", lambda b: node_edit(b, first, static_batch), first),
        ("a STRING initializer added", lambda b: node_edit(b, first, string_tensor), first),
    ]
    if task == "classify":
        cases.append(
            (
                "head Gemm transB=0",
                lambda b: node_edit(
                    b,
                    first,
                    lambda g: next(
                        a for n in g.node if n.op_type == "Gemm" for a in n.attribute if a.name == "transB"
                    ).__setattr__("i", 0),
                ),
                first,
            )
        )
    for name, mutate, file in cases:
        out.append(Mutant(f"{file}: {name}", mutate, expect="same" if "a listed" in name else "error", surgery=True))
    for name, int8 in int8_graphs.items():  # the int8 tables and heads are other tensors
        out.append(
            Mutant(
                f"{int8}: embedding one row short",
                lambda b, f=int8: shrink_embedding(b, f),
                True,
                "error",
                surgery=True,
            )
        )
        out.append(
            Mutant(
                f"{int8}: swapped with {graphs[name]}",
                lambda b, n=name: _swap(b, graphs[n], int8_graphs[n]),
                expect="error",
                surgery=True,
            )
        )
    if int8_graphs:
        out.append(
            Mutant(
                f"{int8_graphs[_head(task)]}: head shrunk to one class",
                lambda b: shrink_head(b, int8_graphs[_head(task)]),
                True,
                "error",
                surgery=True,
            )
        )
    for key in ("tokenizer", "target_tokenizer"):

        def pattern(m, key=key, value=r"(\w+\s?)+$"):
            if m.get(key, {}).get("level") == "word":
                m[key].pop("splitter")
                m[key]["pattern"] = value

        out.append(
            Mutant(
                f"manifest {key}: a catastrophically backtracking pattern, re-sealed",
                lambda b, f=pattern: edit_manifest(b, f),
                expect="error or same",
            )
        )  # same: no such key
        out.append(
            Mutant(
                f"manifest {key}: the legacy pattern string, re-sealed",
                lambda b, f=pattern: edit_manifest(b, lambda m: f(m, value=LEGACY)),
                expect="same",
            )
        )
    if task == "seq2seq":
        out.append(
            Mutant(
                "encoder.onnx and decoder.onnx swapped",
                lambda b: _swap(b, graphs["encoder"], graphs["decoder"]),
                expect="error",
                surgery=True,
            )
        )
    return out


def _head(task: str) -> str:
    return "decoder" if task == "seq2seq" else "model"


def _swap(b: Path, one: str, other: str) -> None:
    (b / one).rename(b / "swap.tmp")
    (b / other).rename(b / one)
    (b / "swap.tmp").rename(b / other)
    rehash(b, one)
    rehash(b, other)


# -- the run ------------------------------------------------------------------------------------------


def all_mutants(bundle: Path, rng: random.Random) -> list[Mutant]:
    from rnnkit.runtime.manifest import graph_files

    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    task = manifest["task"]
    pairs = graph_files(task)
    graphs = {name: fp32 for name, (fp32, _) in pairs.items()}
    int8_graphs = {name: i8 for name, (_, i8) in pairs.items() if i8 in manifest["files"]}
    files = ["manifest.json", *sorted(manifest["files"])]
    int8_files = set(int8_graphs.values())
    return (
        [Mutant("unchanged (control)", lambda b: None, expect="same")]
        + file_mutants(files, rng, int8_files)
        + rehashed_flips(bundle, sorted(set(graphs.values()) | int8_files), rng, int8_files, per_file=FLIPS)
        + manifest_mutants(bundle, rng)
        + surgery_mutants(task, graphs, int8_graphs)
    )


@pytest.fixture(scope="module")
def bases(gru_bundle, tag_bundle, lm_bundles, s2s_bundles) -> dict[str, Path]:
    return {
        "classify": gru_bundle,
        "tag": tag_bundle,
        "lm": lm_bundles("lstm", 2),
        "seq2seq": s2s_bundles("lstm", "dot", True),
    }


def test_mutated_bundles_never_answer_wrong(bases, tmp_path):
    rng = random.Random(SEED)
    worker = Worker()
    counts = {
        "mutated bundles": 0,
        "clear errors": 0,
        "unchanged answers": 0,
        "well-formed re-hashed edits answering differently": 0,
        "numba runs": 0,
        "tracebacks": 0,
        "hangs": 0,
        "wrong answers": 0,
    }
    failures = []
    started = time.perf_counter()
    try:
        for task, base in bases.items():
            baseline = {}
            for backend in BACKENDS:
                for int8 in (False, True):
                    reply = worker.ask(base, backend, int8)
                    assert reply["kind"] == "answer", (task, backend, int8, reply)
                    baseline[backend, int8] = reply["value"]
            for i, mutant in enumerate(all_mutants(base, rng)):
                work = tmp_path / f"{task}-{i}"
                shutil.copytree(base, work)
                mutant.apply(work)
                backends = [b for b in BACKENDS if b == "onnxruntime" or mutant.surgery or i % NUMBA_EVERY == 0]
                for backend in backends:
                    counts["numba runs"] += backend == "numba"
                    reply = worker.ask(work, backend, mutant.int8)
                    outcome = _outcome(task, reply, baseline[backend, mutant.int8], mutant.expect)
                    counts[outcome] += 1
                    if outcome in ("tracebacks", "hangs", "wrong answers"):
                        failures.append(
                            f"{task} [{backend}] {mutant.name} (expected {mutant.expect}): {outcome}: "
                            f"{reply.get('type')} {reply.get('message', '')[-1500:]}"
                        )
                counts["mutated bundles"] += 1
                shutil.rmtree(work, ignore_errors=True)
    finally:
        worker.close()
    counts["seconds"] = round(time.perf_counter() - started, 1)
    print(
        "\nbundle fuzzing (seed %d, %d flips per graph): %s"
        % (SEED, FLIPS, ", ".join(f"{k} {v}" for k, v in counts.items()))
    )
    assert not failures, (
        "\n".join(f.splitlines()[0][:240] for f in failures)
        + "\n\n"
        + "\n\n".join(failures[:3])
        + f"\n\n{len(failures)} failure(s)"
    )
    assert counts["tracebacks"] == 0 and counts["hangs"] == 0 and counts["wrong answers"] == 0


def _outcome(task: str, reply: dict, baseline, expect: str) -> str:
    if reply["kind"] in ("hang", "traceback"):
        return reply["kind"] + "s"
    if reply["kind"] == "error":
        return "wrong answers" if expect == "same" else "clear errors"  # "same": a refused good bundle
    if reply["value"] == baseline:
        return "wrong answers" if expect == "error" else "unchanged answers"  # "error": a violation answered
    if expect == "any" and _within_contract(task, reply["value"]):
        return "well-formed re-hashed edits answering differently"
    return "wrong answers"


def _within_contract(task: str, value) -> bool:
    """Answers shaped as the task promises: probabilities over every label summing to 1 (not a
    one-wide head's {"neg": 1.0, "pos": 1.0}), one tag per token, finite log-probabilities, text."""

    def prob(x) -> bool:
        return isinstance(x, float) and 0.0 <= x <= 1.0

    if task == "classify":
        return all(
            all(map(prob, p["scores"].values()))
            and abs(sum(p["scores"].values()) - 1) < 1e-4
            and p["scores"][p["label"]] == p["score"] == max(p["scores"].values())
            for p in value
        )
    if task == "tag":
        return all(
            len(t["tags"]) == len(t["tokens"]) == len(t["scores"]) and all(map(prob, t["scores"])) for t in value
        )
    if task == "lm":
        score, nxt = value["score"], value["next"]
        return (
            len(score["logprobs"]) == len(score["tokens"]) - 1
            and all(np.isfinite(score["logprobs"]))
            and max(score["logprobs"]) <= 1e-6
            and all(prob(p) for _, p in nxt)
            and isinstance(value["greedy"], str)
        )
    return (
        len(value["beam"]) == len(WORDS)
        and len(value["greedy"]) == 2
        and all(isinstance(x, str) for x in value["beam"] + value["greedy"])
    )
