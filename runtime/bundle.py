"""Opening a bundle directory and refusing anything corrupted, tampered with or unsafe.

A bundle is a folder: ``manifest.json`` (task, architecture, tokenizer(s), labels, graph
contract, sha256 of every file, validation and quantization results) and the ONNX
files it lists: ``model.onnx`` [+ ``model.int8.onnx``], or for an encoder-decoder
``encoder.onnx`` and ``decoder.onnx`` [+ both ``*.int8.onnx``].  ``open_bundle`` checks, before any backend sees a byte of the graph:
the manifest parses and has every key with the right type; every listed file exists
with the recorded size and sha256; no ONNX tensor points at external data outside the
bundle folder (path traversal); declared shapes and sizes are sane; the tokenizer
agrees with the architecture and the embedding.

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .errors import BundleError
from .charset import CharVocab
from .manifest import (FORMAT_VERSION, MANIFEST_FILE, ClassifierIO, LanguageModelIO, Seq2SeqIO, TaggerIO,
                       graph_files)
from .tokenizer import PAD_ID, UNK_ID, CharTokenizer, WordTokenizer, tokenizer_from_dict

TASKS = ("classify", "tag", "lm", "seq2seq")
CLASSES_KEY = {"classify": "num_labels", "tag": "num_tags", "lm": None, "seq2seq": None}  # sized like 'labels'
# embedding initializer -> (the graph holding it, the architecture key giving its rows)
EMBEDDINGS = {"seq2seq": {"source_embedding.weight": ("encoder", "source_vocab_size"),
                          "target_embedding.weight": ("decoder", "target_vocab_size")}}
DEFAULT_EMBEDDINGS = {"embedding.weight": ("model", "vocab_size")}
MAX_DIM = 1 << 24  # no declared size in an rnnkit graph comes near 16 M; larger is corruption


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
    labels: list[str]                  # classes (classify) or tags (tag), in output order; [] for lm and seq2seq
    charset: CharVocab | None = None   # character vocabulary of taggers with character features
    target_tokenizer: WordTokenizer | CharTokenizer | None = None  # seq2seq: the output's
    graphs: dict[str, onnx.ModelProto] = field(default_factory=dict, repr=False)

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def graph_names(self) -> list[str]:
        """``["model"]``, or ``["encoder", "decoder"]`` for seq2seq."""
        return list(graph_files(self.task))

    @property
    def has_int8(self) -> bool:
        return all(int8 in self.manifest["files"] for _, int8 in graph_files(self.task).values())

    def model_path(self, int8: bool = False, name: str = "model") -> Path:
        files = graph_files(self.task)
        if name not in files:
            raise BundleError(f"{self.path / MANIFEST_FILE}: a {self.task} bundle has no graph {name!r} "
                              f"(it has {list(files)})")
        file = files[name][int(int8)]
        if file not in self.manifest["files"]:
            raise BundleError(f"{self.path / MANIFEST_FILE}: this bundle has no int8 model ('files' lists "
                              f"{sorted(self.manifest['files'])}); re-export with --int8 or drop --int8")
        return self.path / file

    def graph(self, int8: bool = False, name: str = "model") -> onnx.ModelProto:
        """The verified ModelProto (external data already checked to stay inside the bundle)."""
        path = self.model_path(int8, name)
        if path.name not in self.graphs:
            self.graphs[path.name] = _load_graph(path, self.path)
        return self.graphs[path.name]


def _require(manifest: dict, key: str, kind, where: Path):
    value = manifest
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise BundleError(f"{where}: missing key '{key}'; the bundle is incomplete, re-export it")
        value = value[part]
    if not isinstance(value, kind):
        raise BundleError(f"{where}: '{key}' must be {getattr(kind, '__name__', kind)}, "
                          f"got {type(value).__name__}; re-export the bundle")
    return value


# Bundles shipped inside the package, opened by name when no such path exists (see runtime/assets/README.md).
ASSETS = Path(__file__).resolve().parent / "assets"
BUILTIN = ("g2p-cmudict",)


def open_bundle(path: str | os.PathLike, verify_hashes: bool = True) -> Bundle:
    path = Path(path)
    if not path.exists() and str(path) in BUILTIN:
        path = ASSETS / str(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle; create one with `rnnkit export CKPT --out {path}`")
    if not path.is_dir():
        raise BundleError(f"{path}: a bundle is a directory with {MANIFEST_FILE} and model.onnx; "
                          f"pass the directory, not a file")
    where = path / MANIFEST_FILE
    if not where.is_file():
        raise BundleError(f"{where}: missing; this is not an rnnkit bundle (or the export was interrupted)")
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc}); the bundle is corrupted, re-export it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "rnnkit-bundle":
        raise BundleError(f"{where}: 'format' must be 'rnnkit-bundle'; this is not an rnnkit bundle")
    version = _require(manifest, "format_version", int, where)
    if version != FORMAT_VERSION:
        raise BundleError(f"{where}: 'format_version' is {version} but this rnnkit reads {FORMAT_VERSION}; "
                          f"upgrade rnnkit or re-export the bundle")
    task = _require(manifest, "task", str, where)
    if task not in TASKS:
        raise BundleError(f"{where}: 'task' is {task!r}; this rnnkit runs {list(TASKS)}")
    files = _require(manifest, "files", dict, where)
    expected = graph_files(task)
    for fp32, int8 in expected.values():
        if fp32 not in files:
            raise BundleError(f"{where}: 'files' does not list {fp32}; re-export the bundle")
    int8_files = [int8 for _, int8 in expected.values()]
    if any(f in files for f in int8_files) and not all(f in files for f in int8_files):
        raise BundleError(f"{where}: 'files' lists only part of the int8 graphs {int8_files}; re-export the bundle")
    for name, entry in files.items():
        _check_file(path, name, entry, where, verify_hashes)
    _check_graph_contract(manifest, where)
    labels = _require(manifest, "labels", list, where) if task in ("classify", "tag") else []
    if task in ("classify", "tag") and (not labels or not all(isinstance(x, str) for x in labels)
                                        or len(set(labels)) != len(labels)):
        raise BundleError(f"{where}: 'labels' must be a non-empty list of distinct strings; re-export the bundle")
    arch = _require(manifest, "architecture", dict, where)
    if task == "seq2seq":
        tokenizer = _tokenizer(manifest, "source_tokenizer", "source_vocab_size", where)
        target = _tokenizer(manifest, "target_tokenizer", "target_vocab_size", where)
        _check_special_ids(manifest, target, where)
    else:
        tokenizer, target = _tokenizer(manifest, "tokenizer", "vocab_size", where), None
    key = CLASSES_KEY[task]
    if key is not None and arch.get(key) != len(labels):
        raise BundleError(f"{where}: 'architecture.{key}' is {arch.get(key)} but 'labels' has "
                          f"{len(labels)} entries; re-export the bundle")
    charset = None
    if manifest.get("charset") is not None:
        charset = CharVocab.from_dict(_require(manifest, "charset", dict, where), source=str(where))
        if charset.size != arch.get("char_vocab_size"):
            raise BundleError(f"{where}: 'charset' has {charset.size} entries but 'architecture.char_vocab_size' "
                              f"is {arch.get('char_vocab_size')}; re-export the bundle")
    bundle = Bundle(path, manifest, tokenizer, labels, charset, target)
    _check_embeddings(bundle, where)
    return bundle


def _tokenizer(manifest: dict, key: str, size_key: str, where: Path) -> WordTokenizer | CharTokenizer:
    """The tokenizer at ``key``, whose vocabulary must have 'architecture.{size_key}' entries."""
    tokenizer = tokenizer_from_dict(_require(manifest, key, dict, where), source=str(where))
    size = _require(manifest, f"architecture.{size_key}", int, where)
    if tokenizer.vocab_size != size:
        raise BundleError(f"{where}: '{key}.vocab' has {tokenizer.vocab_size} entries but "
                          f"'architecture.{size_key}' is {size}; re-export the bundle")
    return tokenizer


def _check_special_ids(manifest: dict, target, where: Path) -> None:
    """seq2seq: <s> and </s> are two distinct target ids, neither <pad> nor <unk>."""
    ids = {k: _require(manifest, f"architecture.{k}", int, where) for k in ("bos_id", "eos_id")}
    bad = {k: v for k, v in ids.items() if not 0 <= v < target.vocab_size or v in (PAD_ID, UNK_ID)}
    if bad or ids["bos_id"] == ids["eos_id"]:
        raise BundleError(f"{where}: 'architecture' has bos_id={ids['bos_id']}, eos_id={ids['eos_id']}; they must be "
                          f"two distinct target ids in 2..{target.vocab_size - 1} (0 and 1 are <pad> and <unk>); "
                          f"re-export the bundle")


def _check_file(root: Path, name: str, entry, where: Path, verify_hashes: bool) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("bytes"), int):
        raise BundleError(f"{where}: 'files.{name}' must be {{'sha256': str, 'bytes': int}}; re-export the bundle")
    target = (root / name).resolve()
    if root.resolve() not in target.parents:
        raise BundleError(f"{where}: 'files' names {name!r}, which is outside the bundle directory; refusing it")
    if not target.is_file():
        raise BundleError(f"{root / name}: listed in {MANIFEST_FILE} but missing; the bundle is incomplete, re-export it")
    size = target.stat().st_size
    if size != entry["bytes"]:
        raise BundleError(f"{root / name}: {size} bytes but {MANIFEST_FILE} records {entry['bytes']}; the file is "
                          f"truncated or was changed, re-export or re-copy the bundle")
    if verify_hashes and sha256_file(target) != entry["sha256"]:
        raise BundleError(f"{root / name}: sha256 does not match 'files.{name}.sha256' in {MANIFEST_FILE}; "
                          f"the file is corrupted or was modified, re-export or re-copy the bundle")


def _check_graph_contract(manifest: dict, where: Path) -> None:
    graph = _require(manifest, "graph", dict, where)
    task = manifest["task"]
    if task == "classify":
        io = {"": (ClassifierIO.inputs, ClassifierIO.outputs)}
    elif task == "lm":
        cell = _require(manifest, "architecture.cell", str, where)
        io = {"": (LanguageModelIO.inputs(cell), LanguageModelIO.outputs(cell))}
        _check_state_contract(manifest, LanguageModelIO.state_inputs(cell), LanguageModelIO.state_outputs(cell),
                              "zeros", where)
    elif task == "seq2seq":
        cell = _require(manifest, "architecture.cell", str, where)
        attention = _require(manifest, "architecture.attention", str, where)
        io = {"encoder.": (Seq2SeqIO.encoder_inputs(), Seq2SeqIO.encoder_outputs(cell, attention)),
              "decoder.": (Seq2SeqIO.decoder_inputs(cell, attention), Seq2SeqIO.decoder_outputs(cell, attention))}
        _check_state_contract(manifest, LanguageModelIO.state_inputs(cell), LanguageModelIO.state_outputs(cell),
                              "encoder", where)
    else:
        io = {"": (TaggerIO.inputs_with_chars if manifest.get("charset") else TaggerIO.inputs, TaggerIO.outputs)}
    for prefix, sides in io.items():
        for side, expected in zip(("inputs", "outputs"), sides):
            declared = _require(manifest, f"graph.{prefix}{side}", list, where)
            names = [d.get("name") for d in declared if isinstance(d, dict)]
            if names != list(expected):
                raise BundleError(f"{where}: 'graph.{prefix}{side}' names {names} but a {task} bundle has "
                                  f"{list(expected)}; re-export the bundle")
            for d in declared:
                for dim in d.get("shape", []):
                    if isinstance(dim, int) and not 0 < dim <= MAX_DIM or not isinstance(dim, (int, str)):
                        raise BundleError(f"{where}: 'graph.{prefix}{side}' declares {d['name']!r} with dimension "
                                          f"{dim!r}; dimensions are names or 1..{MAX_DIM}; the manifest is corrupted")
    max_length = graph.get("max_length")
    if not isinstance(max_length, int) or not 0 < max_length <= MAX_DIM:
        raise BundleError(f"{where}: 'graph.max_length' is {max_length!r}; expected an integer in 1..{MAX_DIM}")


def _check_state_contract(manifest: dict, inputs: tuple, outputs: tuple, initial: str, where: Path) -> None:
    """The ``state`` section: one entry per state input, fed by the matching output, shaped
    (architecture.layers, 'batch', architecture.hidden), float32, starting from ``initial``
    (zeros for a language model; the encoder's output of the same name for seq2seq)."""
    state = _require(manifest, "state", list, where)
    arch = manifest["architecture"]
    want = [{"input": i, "output": o, "dtype": "float32", "shape": [arch.get("layers"), "batch", arch.get("hidden")],
             "initial": initial} for i, o in zip(inputs, outputs)]
    if state != want:
        raise BundleError(f"{where}: 'state' is {state!r} but a {manifest['task']} {arch.get('cell')} model with this "
                          f"architecture has {want!r}; the manifest is inconsistent, re-export the bundle")


def _load_graph(model_path: Path, root: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError family
        raise BundleError(f"{model_path}: not a readable ONNX file ({type(exc).__name__}); "
                          f"the bundle is corrupted, re-export it") from None
    external = [t for t in _all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if os.path.isabs(location) or root.resolve() not in target.parents:
            raise BundleError(f"{model_path}: tensor {tensor.name!r} points at external data {location!r} "
                              f"outside the bundle directory; refusing to read it (path traversal)")
        if not target.is_file():
            raise BundleError(f"{model_path}: tensor {tensor.name!r} needs external data {location!r}, "
                              f"which is missing; re-copy the whole bundle directory")
    if external:
        onnx.load_external_data_for_model(model, str(root))
    for tensor in _all_tensors(model):
        if any(d < 0 or d > MAX_DIM for d in tensor.dims):
            raise BundleError(f"{model_path}: initializer {tensor.name!r} declares shape {list(tensor.dims)}; "
                              f"the file is corrupted, re-export the bundle")
    return model


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def _check_embeddings(bundle: Bundle, where: Path) -> None:
    """Each embedding table must have one row per vocabulary entry."""
    arch = bundle.manifest["architecture"]
    for tensor_name, (graph_name, size_key) in EMBEDDINGS.get(bundle.task, DEFAULT_EMBEDDINGS).items():
        graph = bundle.graph(int8=False, name=graph_name)
        for tensor in graph.graph.initializer:
            if tensor.name == tensor_name:
                rows = tensor.dims[0] if tensor.dims else None
                if rows != arch[size_key]:
                    raise BundleError(f"{bundle.model_path(False, graph_name)}: {tensor_name.split('.')[0]} has {rows} "
                                      f"rows but {where.name} 'architecture.{size_key}' is {arch[size_key]}; the model "
                                      f"and its vocabulary do not belong together, re-export the bundle")
                break
