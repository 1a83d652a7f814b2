"""Opening a bundle directory and refusing anything corrupted, tampered with or unsafe.

A bundle is a folder: ``manifest.json`` (task, architecture, tokenizer(s), labels, graph
contract, sha256 of every file, validation and quantization results) and the ONNX
files it lists: ``model.onnx`` [+ ``model.int8.onnx``], or for an encoder-decoder
``encoder.onnx`` and ``decoder.onnx`` [+ both ``*.int8.onnx``].  ``open_bundle`` checks all of
it before any backend sees a byte of a graph, and refuses with a ``BundleError`` that names the
file, what was found, what was expected and what to do:

1. ``manifest.json`` is JSON (at most ``MAX_MANIFEST_BYTES``, no duplicate keys) whose
   ``manifest_sha256`` matches its canonical form (``manifest.canonical_json``), so the vocabulary,
   labels and contract are covered like the files are; every listed file exists inside the
   folder with the recorded size and sha256.
2. The manifest agrees with itself: every key has its type; labels, tokenizers and their
   vocabularies (bounded: ``tokenizer.py``), the state contract, and the graph contract's names,
   dtypes (``manifest.VALUE_DTYPES``), ranks and fixed widths follow from the architecture.
3. Every graph (fp32 and int8; both graphs of seq2seq) is read without trusting it
   (``graph_file.py``: tensors in subgraphs included, external data only from listed files,
   only ops rnnkit writes) and checked against the manifest (``graph_contract.py``: inputs and
   outputs, precision, head width, embedding rows, recurrent nodes, int8 parameters; and
   ``graph_shapes.py``: the shapes it computes at two input sizes).

This stops corruption, truncation, accidental edits, files from different exports, and a hostile
bundle's attempts at resource exhaustion, path traversal or a hang.  It cannot tell a well-formed
model that was re-hashed with a re-sealed manifest from a genuine one: that needs a signature
(docs/threat-model.md).

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .charset import CharVocab
from .errors import BundleError
from .graph_contract import check_graph
from .graph_file import MAX_DIM, REEXPORT, brief, inside, is_int, load_graph
from .manifest import (
    DIGEST_KEY,
    FORMAT_VERSION,
    GRAPH_FILES_KEY,
    GRAPH_FORMS,
    MANIFEST_FILE,
    PRECISIONS,
    VALUE_DTYPES,
    ClassifierIO,
    LanguageModelIO,
    Seq2SeqIO,
    TaggerIO,
    graph_form,
    graph_ops,
    manifest_digest,
)
from .tasks import TASKS
from .tokenizer import BOS, EOS, CharTokenizer, WordTokenizer, tokenizer_from_dict

CELLS = ("rnn", "lstm", "gru")
ATTENTIONS = ("none", "additive", "dot")
# integer architecture keys, each in 0..MAX_DIM when present (0: a tagger without characters)
ARCH_INTS = (
    "vocab_size",
    "num_labels",
    "num_tags",
    "embed",
    "hidden",
    "layers",
    "source_vocab_size",
    "target_vocab_size",
    "char_vocab_size",
    "char_embed",
    "char_filters",
    "char_kernel",
    "bos_id",
    "eos_id",
    "padding_idx",
)
MAX_MANIFEST_BYTES = 256 << 20  # a million-word vocabulary is about 20 MB of JSON


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    path: Path
    manifest: dict
    tokenizer: WordTokenizer | CharTokenizer  # the input's (seq2seq: the source tokenizer)
    labels: list[str]  # classes (classify) or tags (tag), in output order; [] for lm and seq2seq
    charset: CharVocab | None = None  # character vocabulary of taggers with character features
    target_tokenizer: WordTokenizer | CharTokenizer | None = None  # seq2seq: the output's
    graphs: dict[str, onnx.ModelProto] = field(default_factory=dict, repr=False)

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def graph_names(self) -> list[str]:
        """``["model"]``, or ``["encoder", "decoder"]`` for seq2seq (the task's contract's ``files``)."""
        return list(TASKS[self.task].io.files)

    @property
    def has_int8(self) -> bool:
        return all(int8 in self.manifest["files"] for _, int8 in TASKS[self.task].io.files.values())

    def model_path(self, int8: bool = False, name: str = "model") -> Path:
        files = TASKS[self.task].io.files
        if name not in files:
            raise BundleError(
                f"{self.path / MANIFEST_FILE}: a {self.task} bundle has no graph {name!r} (it has {list(files)})"
            )
        file = files[name][int(int8)]
        if file not in self.manifest["files"]:
            raise BundleError(
                f"{self.path / MANIFEST_FILE}: this bundle has no int8 model ('files' lists "
                f"{sorted(self.manifest['files'])}); re-export with --int8 or drop --int8"
            )
        return self.path / file

    def graph(self, int8: bool = False, name: str = "model") -> onnx.ModelProto:
        """The verified ModelProto (every graph is loaded and checked by ``open_bundle``)."""
        path = self.model_path(int8, name)
        if path.name not in self.graphs:
            model = load_graph(path, self.path, self.manifest["files"])
            check_graph(self, model, name, path, int8)
            _check_graph_record(self.manifest, model, path)
            self.graphs[path.name] = model
        return self.graphs[path.name]


def _require(manifest: dict, key: str, kind, where: Path):
    value = manifest
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise BundleError(f"{where}: missing key '{key}'; the bundle is incomplete, re-export it")
        value = value[part]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(
            f"{where}: '{key}' must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}; {REEXPORT}"
        )
    return value


def open_bundle(path: str | os.PathLike, verify_hashes: bool = True) -> Bundle:
    path = Path(path)
    if not path.exists():  # a bare name: a bundle installed as a package (g2p-cmudict: rnnkit[g2p])
        from .builtin import resolve_bundle  # here: importlib.metadata is only needed for a name

        path = resolve_bundle(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle; create one with `rnnkit export CKPT --out {path}`")
    if not path.is_dir():
        raise BundleError(
            f"{path}: a bundle is a directory with {MANIFEST_FILE} and model.onnx; pass the directory, not a file"
        )
    where = path / MANIFEST_FILE
    manifest = _read_manifest(where)
    task = _require(manifest, "task", str, where)
    if task not in TASKS:
        raise BundleError(f"{where}: 'task' is {task!r}; this rnnkit runs {list(TASKS)}")
    spec = TASKS[task]
    files = _require(manifest, "files", dict, where)
    expected = spec.io.files
    for fp32, _ in expected.values():
        if fp32 not in files:
            raise BundleError(f"{where}: 'files' does not list {fp32}; {REEXPORT}")
    int8_files = [int8 for _, int8 in expected.values()]
    if any(f in files for f in int8_files) and not all(f in files for f in int8_files):
        raise BundleError(f"{where}: 'files' lists only part of the int8 graphs {int8_files}; {REEXPORT}")
    for name, entry in files.items():
        _check_file(path, name, entry, where, verify_hashes)
    arch = _check_architecture(manifest, where)
    labels = _require(manifest, "labels", list, where) if spec.labels_key else []
    if spec.labels_key and (
        not labels
        or not all(isinstance(x, str) and 0 < len(x) <= 1024 for x in labels)
        or len(set(labels)) != len(labels)
    ):
        raise BundleError(
            f"{where}: 'labels' must be a non-empty list of distinct strings of 1..1024 characters; {REEXPORT}"
        )
    key = spec.labels_key
    if key is not None and arch.get(key) != len(labels):
        raise BundleError(
            f"{where}: 'architecture.{key}' is {arch.get(key)} but 'labels' has {len(labels)} entries; {REEXPORT}"
        )
    tokenizer, *targets = [_tokenizer(manifest, k, size_key, where) for k, size_key in spec.tokenizers]
    target = targets[0] if targets else None
    if target is not None:  # a decoder: its <s> and </s>
        _check_special_ids(manifest, target, where)
    charset = None
    if manifest.get("charset") is not None:
        charset = CharVocab.from_dict(_require(manifest, "charset", dict, where), source=str(where))
        if spec.io is not TaggerIO or charset.size != arch.get("char_vocab_size"):
            raise BundleError(
                f"{where}: 'charset' has {charset.size} entries but 'architecture.char_vocab_size' "
                f"is {arch.get('char_vocab_size')} (only taggers have one); {REEXPORT}"
            )
    _check_graph_contract(manifest, labels, where)
    _check_graph_files(manifest, [f for pair in expected.values() for f in pair], files, where)
    bundle = Bundle(path, manifest, tokenizer, labels, charset, target)
    for name in bundle.graph_names:  # every graph, before the first prediction
        for int8 in (False, True) if bundle.has_int8 else (False,):
            bundle.graph(int8, name)
    return bundle


def _check_graph_files(manifest: dict, graph_files: list[str], files: dict, where: Path) -> None:
    """The ``graph_files`` record (bundles written before it have none): an entry for every graph file
    that ``files`` lists (and none for a file the task does not have), each with its form, precision,
    ops per domain and validated consumers, typed as ``manifest.py`` says.  Its agreement with each
    graph is checked when the graph is loaded (``_check_graph_record``)."""
    records = manifest.get(GRAPH_FILES_KEY)
    if records is None:
        return
    present = sorted(f for f in graph_files if f in files)
    if (
        not isinstance(records, dict)
        or any(f not in records for f in present)
        or any(f not in graph_files for f in records)
    ):
        listed = sorted(records) if isinstance(records, dict) else type(records).__name__
        raise BundleError(
            f"{where}: '{GRAPH_FILES_KEY}' lists {listed} but the bundle's graph files are {present}; {REEXPORT}"
        )
    for file, record in records.items():
        key = f"{GRAPH_FILES_KEY}.{file}"
        ok = (
            isinstance(record, dict)
            and record.get("form") in GRAPH_FORMS
            and record.get("precision") == ("int8" if ".int8." in file else "fp32")
            and isinstance(record.get("ops"), dict)
            and all(
                isinstance(d, str) and isinstance(v, list) and all(isinstance(o, str) for o in v)
                for d, v in record["ops"].items()
            )
            and isinstance(record.get("validated_on"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in record["validated_on"].items())
        )
        if not ok:
            raise BundleError(
                f"{where}: '{key}' must be {{'form': one of {list(GRAPH_FORMS)}, 'precision': "
                f"{'int8' if '.int8.' in file else 'fp32'!r} (of {list(PRECISIONS)}), 'ops': "
                f"{{domain: [op, ...]}}, 'validated_on': {{consumer: version}}}}, got {record!r:.200}; "
                f"{REEXPORT}"
            )


def _check_graph_record(manifest: dict, model: onnx.ModelProto, path: Path) -> None:
    """The graph's ops per domain and form are what ``graph_files`` records for it: a consumer chosen by
    that record (a runtime without com.microsoft ops) must be able to load the file."""
    record = (manifest.get(GRAPH_FILES_KEY) or {}).get(path.name)
    if record is None:
        return
    where = path.parent / MANIFEST_FILE
    ops, form = graph_ops(model), graph_form(model)
    if ops != record["ops"]:
        raise BundleError(
            f"{path}: uses ops {ops} but '{GRAPH_FILES_KEY}.{path.name}.ops' in {where.name} records "
            f"{record['ops']}; the graph and its manifest do not belong together (a graph was "
            f"replaced or the record edited), {REEXPORT}"
        )
    if form != record["form"]:
        raise BundleError(
            f"{path}: is in the {form} graph form but '{GRAPH_FILES_KEY}.{path.name}.form' in "
            f"{where.name} records {record['form']!r}; {REEXPORT}"
        )


def _no_duplicate_keys(pairs: list) -> dict:
    """json object hook: two parsers may disagree on which of two equal keys wins, so none may repeat."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _read_manifest(where: Path) -> dict:
    """Parse manifest.json and check ``manifest_sha256`` before reading anything else from it."""
    if not where.is_file():
        raise BundleError(f"{where}: missing; this is not an rnnkit bundle (or the export was interrupted)")
    size = where.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"{where}: {size} bytes, more than the {MAX_MANIFEST_BYTES >> 20} MiB a manifest may have; "
            f"the file is corrupted or not an rnnkit manifest, {REEXPORT}"
        )
    try:
        manifest = json.loads(where.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BundleError(
            f"{where}: not valid JSON ({brief(exc, 200)}); the bundle is corrupted, re-export it"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != "rnnkit-bundle":
        raise BundleError(f"{where}: 'format' must be 'rnnkit-bundle'; this is not an rnnkit bundle")
    version = _require(manifest, "format_version", int, where)
    if version != FORMAT_VERSION:  # first: the version says how to read the rest, the digest included
        raise BundleError(
            f"{where}: 'format_version' is {version} but this rnnkit reads {FORMAT_VERSION}; "
            f"upgrade rnnkit or re-export the bundle"
        )
    recorded = manifest.get(DIGEST_KEY)
    if not isinstance(recorded, str):
        raise BundleError(
            f"{where}: no '{DIGEST_KEY}' (got {type(recorded).__name__}): the manifest is not "
            f"covered by a checksum (bundles written before rnnkit checked it); {REEXPORT}"
        )
    try:
        actual = manifest_digest(manifest)
    except ValueError:  # a lone surrogate: no UTF-8 encoding, so no canonical form
        raise BundleError(
            f"{where}: holds a string that is not valid Unicode; the manifest is corrupted, {REEXPORT}"
        ) from None
    if actual != recorded:
        raise BundleError(
            f"{where}: '{DIGEST_KEY}' is {recorded[:16]!r}... but the manifest's content hashes to "
            f"{actual[:16]!r}...: manifest.json is corrupted or was edited (its vocabulary, labels "
            f"and contract decide every answer); re-export or re-copy the bundle"
        )
    return manifest


def _check_architecture(manifest: dict, where: Path) -> dict:
    arch = _require(manifest, "architecture", dict, where)
    spec = TASKS[manifest["task"]]
    decoder = len(spec.tokenizers) > 1  # an encoder-decoder: <s>/</s> ids and an attention kind
    needed = (
        ["layers", "hidden"] + [size_key for _, size_key in spec.tokenizers] + (["bos_id", "eos_id"] if decoder else [])
    )
    if spec.labels_key:
        needed.append(spec.labels_key)
    for key in needed:
        _require(manifest, f"architecture.{key}", int, where)
    bad = {k: arch[k] for k in ARCH_INTS if k in arch and (not is_int(arch[k]) or not 0 <= arch[k] <= MAX_DIM)}
    bad.update({k: arch[k] for k in ("layers", "hidden") if k not in bad and arch[k] < 1})
    if bad:
        raise BundleError(
            f"{where}: 'architecture' has {bad}; sizes are integers in 0..{MAX_DIM} (layers and hidden "
            f"at least 1); {REEXPORT}"
        )
    if _require(manifest, "architecture.cell", str, where) not in CELLS:
        raise BundleError(
            f"{where}: 'architecture.cell' is {arch['cell']!r}, expected one of {list(CELLS)}; {REEXPORT}"
        )
    if decoder and _require(manifest, "architecture.attention", str, where) not in ATTENTIONS:
        raise BundleError(
            f"{where}: 'architecture.attention' is {arch['attention']!r}, expected one of "
            f"{list(ATTENTIONS)}; {REEXPORT}"
        )
    return arch


def _tokenizer(manifest: dict, key: str, size_key: str, where: Path) -> WordTokenizer | CharTokenizer:
    """The tokenizer at ``key``, whose vocabulary must have 'architecture.{size_key}' entries."""
    tokenizer = tokenizer_from_dict(_require(manifest, key, dict, where), source=str(where))
    size = _require(manifest, f"architecture.{size_key}", int, where)
    if tokenizer.vocab_size != size:
        raise BundleError(
            f"{where}: '{key}.vocab' has {tokenizer.vocab_size} entries but "
            f"'architecture.{size_key}' is {size}; {REEXPORT}"
        )
    return tokenizer


def _check_special_ids(manifest: dict, target, where: Path) -> None:
    """seq2seq: bos_id and eos_id are the target vocabulary's <s> and </s> (ids 2 and 3)."""
    ids = {k: _require(manifest, f"architecture.{k}", int, where) for k in ("bos_id", "eos_id")}
    tokens = {k: target.vocab[v] if 0 <= v < target.vocab_size else None for k, v in ids.items()}
    if tokens != {"bos_id": BOS, "eos_id": EOS}:
        raise BundleError(
            f"{where}: 'architecture' has bos_id={ids['bos_id']}, eos_id={ids['eos_id']}, which are "
            f"{tokens['bos_id']!r} and {tokens['eos_id']!r} in 'target_tokenizer.vocab'; they must be "
            f"{BOS!r} and {EOS!r}; {REEXPORT}"
        )


def _check_file(root: Path, name: str, entry, where: Path, verify_hashes: bool) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not is_int(entry.get("bytes")):
        raise BundleError(f"{where}: 'files.{name}' must be {{'sha256': str, 'bytes': int}}; {REEXPORT}")
    target = inside(root, name)
    if target is None:
        raise BundleError(
            f"{where}: 'files' names {name!r}, which is outside the bundle directory (or not a file name); refusing it"
        )
    if not target.is_file():
        raise BundleError(
            f"{root / name}: listed in {MANIFEST_FILE} but missing; the bundle is incomplete, re-export it"
        )
    size = target.stat().st_size
    if size != entry["bytes"]:
        raise BundleError(
            f"{root / name}: {size} bytes but {MANIFEST_FILE} records {entry['bytes']}; the file is "
            f"truncated or was changed, re-export or re-copy the bundle"
        )
    if verify_hashes and sha256_file(target) != entry["sha256"]:
        raise BundleError(
            f"{root / name}: sha256 does not match 'files.{name}.sha256' in {MANIFEST_FILE}; "
            f"the file is corrupted or was modified, re-export or re-copy the bundle"
        )


def _contract(manifest: dict, labels: list[str]) -> dict[str, dict[str, list]]:
    """Graph name -> {input/output name: expected dims}: an int is a fixed width from the
    architecture, a string one of the axes the runtime varies, by the name the exporters give it
    (graph_shapes.AXIS_SIZES sizes them by these names).  A name means the same in every task
    (manifest.VALUE_DTYPES) except the head, whose width and rank the task's registry entry gives."""
    spec, arch = TASKS[manifest["task"]], manifest["architecture"]
    b, t, s, hidden = "batch", "time", "source_time", arch["hidden"]
    state = [arch["layers"], b, hidden]
    dims = {
        Seq2SeqIO.input_ids: [b, t],
        LanguageModelIO.sequence_lens: [b],
        TaggerIO.char_ids: [b, t, "chars"],
        Seq2SeqIO.source_ids: [b, s],
        Seq2SeqIO.source_lens: [b],
        Seq2SeqIO.memory: [b, s, hidden],
        Seq2SeqIO.keys: [b, s, hidden],
        Seq2SeqIO.attention: [b, t, s],
        ClassifierIO.pooling_weights: [b, t],
        **{n: state for pair in LanguageModelIO.STATE_PAIRS.items() for n in pair},
    }
    width = len(labels) if spec.labels_key else arch[spec.head.width]
    dims[spec.head.output] = [b, t, width] if spec.head.per_token else [b, width]
    return {graph: {n: dims[n] for n in inputs + outputs} for graph, (inputs, outputs) in _io_names(manifest).items()}


def _io_names(manifest: dict) -> dict[str, tuple[tuple, tuple]]:
    """Graph name -> (input names, output names) of the task's contract (manifest.py); the 'graph'
    section's output names choose between a contract's forms (a pooling="attention" classifier with
    or without ``pooling_weights``), and are then held to the form they chose."""
    return TASKS[manifest["task"]].io.graph_io(
        manifest["architecture"], bool(manifest.get("charset")), manifest.get("graph")
    )


def _check_graph_contract(manifest: dict, labels: list[str], where: Path) -> None:
    """The manifest's 'graph' section against the task's contract: names (in order), dtypes, ranks,
    symbolic axes where the runtime varies them, and fixed widths equal to the architecture's."""
    graph = _require(manifest, "graph", dict, where)
    task, spec = manifest["task"], TASKS[manifest["task"]]
    if spec.state is not None:  # the recurrent state the runtime carries, and where it starts
        _check_state_contract(manifest, spec.state, where)
    if spec.state == "encoder":  # a decoder also reads the encoder's context at every step
        _check_context(manifest, where)
    contract = _contract(manifest, labels)
    for gname, (inputs, outputs) in _io_names(manifest).items():
        prefix = "" if gname == "model" else f"{gname}."
        for side, expected in (("inputs", inputs), ("outputs", outputs)):
            declared = _require(manifest, f"graph.{prefix}{side}", list, where)
            names = [d.get("name") if isinstance(d, dict) else None for d in declared]
            if names != list(expected):
                raise BundleError(
                    f"{where}: 'graph.{prefix}{side}' names {names} but a {task} bundle has "
                    f"{list(expected)}; {REEXPORT}"
                )
            for d in declared:
                dtype = VALUE_DTYPES[d["name"]]
                want = contract[gname][d["name"]]
                shape = d.get("shape")
                if (
                    d.get("dtype") != dtype
                    or not isinstance(shape, list)
                    or len(shape) != len(want)
                    or any(type(x) is not type(w) or x != w for x, w in zip(shape, want))
                ):  # noqa: E721 -- 1 is not True
                    raise BundleError(
                        f"{where}: 'graph.{prefix}{side}' declares {d['name']!r} as {d.get('dtype')!r} "
                        f"{shape!r}; this {task} model's contract is {dtype!r} {want!r} (named axes "
                        f"where the runtime varies the size); the manifest is corrupted, {REEXPORT}"
                    )
    max_length = graph.get("max_length")
    if not is_int(max_length) or not 0 < max_length <= MAX_DIM:
        raise BundleError(f"{where}: 'graph.max_length' is {max_length!r}; expected an integer in 1..{MAX_DIM}")


def _check_state_contract(manifest: dict, initial: str, where: Path) -> None:
    """The ``state`` section: one entry per state input, fed by the matching output, shaped
    (architecture.layers, 'batch', architecture.hidden), float32, starting from ``initial``
    (zeros for a language model; the encoder's output of the same name for seq2seq)."""
    state = _require(manifest, "state", list, where)
    arch = manifest["architecture"]
    cell = arch["cell"]
    want = [
        {
            "input": i,
            "output": o,
            "dtype": "float32",
            "shape": [arch["layers"], "batch", arch["hidden"]],
            "initial": initial,
        }
        for i, o in zip(LanguageModelIO.state_inputs(cell), LanguageModelIO.state_outputs(cell))
    ]
    if state != want:
        raise BundleError(
            f"{where}: 'state' is {state!r} but a {manifest['task']} {cell} model with this "
            f"architecture has {want!r}; the manifest is inconsistent, {REEXPORT}"
        )


def _check_context(manifest: dict, where: Path) -> None:
    """seq2seq's ``context`` section: the decoder inputs fixed for a whole decode (none without attention)."""
    hidden = manifest["architecture"]["hidden"]
    want = (
        []
        if manifest["architecture"]["attention"] == "none"
        else [
            {"input": n, "from": f"encoder {side}", "dtype": dtype, "shape": shape}
            for n, side, dtype, shape in (
                (Seq2SeqIO.memory, "output", "float32", ["batch", "source_time", hidden]),
                (Seq2SeqIO.keys, "output", "float32", ["batch", "source_time", hidden]),
                (Seq2SeqIO.source_lens, "input", "int32", ["batch"]),
            )
        ]
    )
    if manifest.get("context") != want:
        raise BundleError(
            f"{where}: 'context' is {manifest.get('context')!r} but this architecture has {want!r}; "
            f"the manifest is inconsistent, {REEXPORT}"
        )
