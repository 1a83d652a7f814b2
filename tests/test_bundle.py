"""Bundle verification: corrupted, truncated, tampered, unsafe or inconsistent bundles are refused,
before the first prediction and with a message that names the file, what is wrong and what to do."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import edit_manifest, rehash
from onnx import TensorProto, helper, numpy_helper

from rnnkit.runtime import BundleError, load, open_bundle
from rnnkit.runtime import bundle as bundle_module
from rnnkit.runtime.manifest import DIGEST_KEY, MANIFEST_FILE, MODEL_FP32, MODEL_INT8, canonical_json, manifest_digest
from rnnkit.runtime.tokenizer import DEFAULT_PATTERN

TEXTS = ["a boring , dull film", "a wonderful and moving story", "the plot"]


@pytest.fixture
def bundle(gru_bundle, tmp_path) -> Path:
    copy = tmp_path / "b"
    shutil.copytree(gru_bundle, copy)
    return copy


def _answers(path: Path, int8: bool = False) -> list[dict]:
    return [p.to_dict() for p in load(path, backend="onnxruntime", int8=int8, threads=1).predict(TEXTS)]


def _edit_graph(bundle: Path, change, file: str = MODEL_FP32) -> None:
    """Apply ``change(graph)`` to a graph and record its new sha256 (so only the deeper checks can catch it)."""
    model = onnx.load(str(bundle / file))
    change(model.graph)
    onnx.save_model(model, str(bundle / file))
    rehash(bundle, file)


def _set(graph: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    next(t for t in graph.initializer if t.name == name).CopyFrom(numpy_helper.from_array(array, name))


def _get(graph: onnx.GraphProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in graph.initializer if t.name == name))


@pytest.mark.slow
def test_good_bundle_opens(bundle):
    b = open_bundle(bundle)
    assert b.task == "classify" and b.has_int8 and b.labels == ["neg", "pos"]
    assert set(b.graphs) == {MODEL_FP32, MODEL_INT8}  # every graph checked before the first prediction


def test_missing_directory():
    with pytest.raises(BundleError, match=r"no such bundle; create one with `rnnkit export"):
        open_bundle("/nonexistent/bundle")


def test_missing_manifest(bundle):
    (bundle / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match=r"manifest.json: missing; this is not an rnnkit bundle"):
        open_bundle(bundle)


def test_manifest_not_json(bundle):
    (bundle / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest.json: not valid JSON .* re-export it"):
        open_bundle(bundle)


def test_manifest_missing_key(bundle):
    edit_manifest(bundle, lambda m: m.pop("labels"))
    with pytest.raises(BundleError, match=r"missing key 'labels'"):
        open_bundle(bundle)


# -- the manifest's own checksum ---------------------------------------------------------------


def test_a_vocabulary_edit_is_caught_by_the_manifest_checksum(bundle):
    """The issue's case: "boring" -> "borinf" in manifest.json flipped a prediction and passed inspect."""

    def edit(m):
        vocab = m["tokenizer"]["vocab"]
        vocab[vocab.index("boring")] = "borinf"

    edit_manifest(bundle, edit, seal=False)
    with pytest.raises(
        BundleError,
        match=r"manifest.json: 'manifest_sha256' is '[0-9a-f]{16}'\.\.\. but the "
        r"manifest's content hashes to .* corrupted or was edited",
    ):
        open_bundle(bundle)


def test_manifest_without_checksum_is_refused_with_re_export(bundle):
    edit_manifest(bundle, lambda m: m.pop(DIGEST_KEY), seal=False)
    with pytest.raises(BundleError, match=r"no 'manifest_sha256' .* not covered by a checksum .* re-export the bundle"):
        open_bundle(bundle)


def test_checksum_covers_content_not_layout(bundle, gru_bundle):
    manifest = json.loads((bundle / MANIFEST_FILE).read_text(encoding="utf-8"))
    reformatted = json.dumps(manifest, indent=7, sort_keys=True)  # other order, indentation, \u escapes
    (bundle / MANIFEST_FILE).write_text(reformatted, encoding="utf-8")
    assert open_bundle(bundle).manifest == manifest
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    assert canonical_json(manifest) == json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert manifest[DIGEST_KEY] == manifest_digest(manifest)


def test_duplicate_keys_are_refused(bundle):
    text = (bundle / MANIFEST_FILE).read_text(encoding="utf-8")
    (bundle / MANIFEST_FILE).write_text(
        text.replace('"labels": [', '"labels": ["pos", "neg"], "labels": [', 1), encoding="utf-8"
    )
    with pytest.raises(BundleError, match=r"not valid JSON \(duplicate key 'labels'\)"):
        open_bundle(bundle)


def test_lone_surrogate_is_refused(bundle):
    text = (bundle / MANIFEST_FILE).read_text(encoding="utf-8")
    (bundle / MANIFEST_FILE).write_text(text.replace('"neg"', '"neg\\ud800"', 1), encoding="utf-8")
    with pytest.raises(BundleError, match=r"holds a string that is not valid Unicode"):
        open_bundle(bundle)


def test_oversized_manifest_is_refused_before_parsing(bundle, monkeypatch):
    monkeypatch.setattr(bundle_module, "MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(BundleError, match=r"manifest.json: \d+ bytes, more than the 0 MiB a manifest may have"):
        open_bundle(bundle)


def test_unknown_format_version(bundle):
    edit_manifest(bundle, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match=r"'format_version' is 99 but this rnnkit reads 1"):
        open_bundle(bundle)


# -- files -----------------------------------------------------------------------------------


def test_truncated_model(bundle):
    data = (bundle / MODEL_FP32).read_bytes()
    (bundle / MODEL_FP32).write_bytes(data[: len(data) // 2])
    with pytest.raises(
        BundleError,
        match=r"model.onnx: \d+ bytes but manifest.json records \d+; the file is "
        r"truncated",
    ):
        open_bundle(bundle)


def test_sha256_mismatch(bundle):
    data = bytearray((bundle / MODEL_FP32).read_bytes())
    data[-5] ^= 0xFF
    (bundle / MODEL_FP32).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.onnx: sha256 does not match 'files.model.onnx.sha256'"):
        open_bundle(bundle)


def test_garbage_onnx_with_matching_hash(bundle):
    (bundle / MODEL_FP32).write_bytes(b"\x08\x07garbage" * 100)
    rehash(bundle, MODEL_FP32)
    with pytest.raises(BundleError, match=r"model.onnx: not a readable ONNX file"):
        open_bundle(bundle)


def test_file_outside_bundle_listed(bundle):
    edit_manifest(bundle, lambda m: m["files"].update({"../evil.onnx": {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(BundleError, match=r"outside the bundle directory"):
        open_bundle(bundle)


def test_int8_missing_gives_clear_error(bundle):
    edit_manifest(bundle, lambda m: m["files"].pop(MODEL_INT8))
    with pytest.raises(BundleError, match=r"this bundle has no int8 model .* re-export with --int8"):
        load(bundle, backend="onnxruntime", int8=True)


def test_fp32_and_int8_swapped(bundle):
    (bundle / MODEL_FP32).rename(bundle / "tmp")
    (bundle / MODEL_INT8).rename(bundle / MODEL_FP32)
    (bundle / "tmp").rename(bundle / MODEL_INT8)
    rehash(bundle, MODEL_FP32)
    rehash(bundle, MODEL_INT8)
    with pytest.raises(BundleError, match=r"model.onnx: holds int8 weights, but model.onnx is the bundle's fp32 graph"):
        open_bundle(bundle)


# -- the manifest agrees with itself ------------------------------------------------------------


def test_vocab_size_mismatch(bundle):
    edit_manifest(bundle, lambda m: m["architecture"].update(vocab_size=m["architecture"]["vocab_size"] + 1))
    with pytest.raises(BundleError, match=r"'tokenizer.vocab' has (\d+) entries but 'architecture.vocab_size' is \d+"):
        open_bundle(bundle)


def test_absurd_declared_shape(bundle):
    edit_manifest(bundle, lambda m: m["graph"]["inputs"][0].update(shape=["batch", 10**12]))
    with pytest.raises(
        BundleError,
        match=r"declares 'input_ids' as 'int64' \['batch', 1000000000000\]; this classify "
        r"model's contract is 'int64' \['batch', 'time'\] \(named axes",
    ):
        open_bundle(bundle)


def test_declared_head_width_must_match_the_labels(bundle):
    edit_manifest(bundle, lambda m: m["graph"]["outputs"][0].update(shape=["batch", 1]))
    with pytest.raises(
        BundleError,
        match=r"declares 'logits' as 'float32' \['batch', 1\]; this classify model's "
        r"contract is 'float32' \['batch', 2\]",
    ):
        open_bundle(bundle)


def test_architecture_types_are_strict(bundle):
    edit_manifest(bundle, lambda m: m["architecture"].update(hidden=True))
    with pytest.raises(BundleError, match=r"'architecture.hidden' must be int, got bool"):
        open_bundle(bundle)


# -- every graph against the manifest (re-hashed, so only these checks can catch it) -----------


def test_one_wide_head_never_answers(bundle):
    """The issue's case: a re-hashed graph with a one-wide head answered {"neg": 1.0, "pos": 1.0}, exit 0."""

    def shrink(g):
        _set(g, "head.weight", _get(g, "head.weight")[:1])
        _set(g, "head.bias", _get(g, "head.bias")[:1])

    _edit_graph(bundle, shrink)
    with pytest.raises(
        BundleError,
        match=r"model.onnx: the head 'head' \(Gemm\) is .*1.* wide but manifest.json has 2 "
        r"classes for 'logits'; the graph does not belong to this manifest",
    ):
        load(bundle, backend="onnxruntime")


def test_renamed_graph_input(bundle):
    def rename(g):
        for node in g.node:
            node.input[:] = ["ids" if x == "input_ids" else x for x in node.input]
        g.input[0].name = "ids"

    _edit_graph(bundle, rename)
    with pytest.raises(
        BundleError,
        match=r"model.onnx: graph inputs are \[\('ids', 'int64', \['batch', 'time'\]\).* "
        r"but manifest.json 'graph' declares \[\('input_ids'",
    ):
        open_bundle(bundle)


def test_embedding_rows_mismatch(bundle):
    def grow(m):
        m["tokenizer"]["vocab"].append("zzz-new-word")
        m["architecture"]["vocab_size"] += 1

    edit_manifest(bundle, grow)
    with pytest.raises(BundleError, match=r"embedding has \d+ rows but manifest.json 'architecture.vocab_size' is"):
        open_bundle(bundle)


def test_shorter_int8_embedding(bundle):
    def shrink(g):
        for name in ("embedding.weight_quantized", "embedding.weight_scale"):
            _set(g, name, _get(g, name)[:-1])

    _edit_graph(bundle, shrink, MODEL_INT8)
    with pytest.raises(
        BundleError,
        match=r"model.int8.onnx: embedding has 31 rows but manifest.json "
        r"'architecture.vocab_size' is 32 \(tensor 'embedding.weight_",
    ):
        open_bundle(bundle)


def _first_w(bundle: Path, file: str = MODEL_FP32) -> str:
    """The name of the W initializer of the graph's first GRU node (whatever the graph form names it)."""
    graph = onnx.load(str(bundle / file)).graph
    return next(n for n in graph.node if n.op_type == "GRU").input[1]


def test_huge_initializer_dims_give_an_error_not_a_traceback(bundle):
    w = _first_w(bundle)

    def huge(g):
        next(t for t in g.initializer if t.name == w).dims[:] = [1 << 40, 1 << 40]

    _edit_graph(bundle, huge)
    with pytest.raises(
        BundleError,
        match=rf"initializer '{re.escape(w)}' declares shape \[1099511627776, "
        r"1099511627776\]; rnnkit's tensors have at most 8 dimensions of 0..16777216",
    ):
        open_bundle(bundle)


def test_dims_must_match_the_data(bundle):
    w = _first_w(bundle)

    def smaller(g):
        tensor = next(t for t in g.initializer if t.name == w)
        tensor.dims[1] = tensor.dims[1] // 2  # declares half the rows it holds

    _edit_graph(bundle, smaller)
    with pytest.raises(
        BundleError,
        match=rf"initializer '{re.escape(w)}' declares shape \[\d+, 9, 8\] \(\d+ values\) "
        r"but holds \d+ bytes",
    ):
        open_bundle(bundle)


def test_recurrent_direction_must_be_the_architecture(bundle):
    def reverse(g):
        node = next(n for n in g.node if n.op_type == "GRU")
        next(a for a in node.attribute if a.name == "direction").s = b"reverse"

    _edit_graph(bundle, reverse)
    with pytest.raises(
        BundleError,
        match=r"recurrent node 'gru_0' \(GRU\) has .*'direction': b'[^']*reverse'.* where "
        r"the architecture \(gru, hidden 6, bidirectional True\) gives",
    ):
        open_bundle(bundle)


@pytest.mark.parametrize("file", [MODEL_FP32, MODEL_INT8])
def test_a_constant_that_fixes_the_time_axis(bundle, file):
    """A Reshape to a fixed time axis type-checks symbolically and fails at run time for every other
    length: shapes are inferred at two concrete input sizes, with the time mask computed."""

    def fix_time(g):
        shape = _get(g, "y_batch_shape").copy()
        shape[1] = 64
        _set(g, "y_batch_shape", shape)

    _edit_graph(bundle, fix_time, file)
    with pytest.raises(
        BundleError,
        match=rf"{file}: shapes do not fit together for inputs sized \{{'batch': 2, "
        r"'time': 5.*Incompatible dimensions.* corrupted or was changed",
    ):
        open_bundle(bundle)


def test_ops_rnnkit_never_writes_are_refused(bundle):
    _edit_graph(bundle, lambda g: setattr(next(n for n in g.node if n.op_type == "Transpose"), "op_type", "Relu"))
    with pytest.raises(BundleError, match=r"model.onnx: has \['ai.onnx.Relu'\], which rnnkit's exporters never write"):
        open_bundle(bundle)


def test_nonfinite_weight_is_refused(bundle):
    def poison(g):
        w = _get(g, "head.weight").copy()
        w[0, 0] = np.nan
        _set(g, "head.weight", w)

    _edit_graph(bundle, poison)
    with pytest.raises(BundleError, match=r"tensor 'head.weight' holds nan, outside \+-1e\+06 \(or NaN\)"):
        open_bundle(bundle)


# -- external data and subgraphs -----------------------------------------------------------------


def _externalize(bundle: Path, name: str, location: str, file: str = MODEL_FP32) -> None:
    model = onnx.load(str(bundle / file))
    tensor = next(t for t in model.graph.initializer if t.name == name)
    (bundle / location).write_bytes(tensor.raw_data) if not location.startswith("..") else None
    size = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        tensor.external_data.add(key=key, value=value)
    onnx.save_model(model, str(bundle / file))
    rehash(bundle, file)


def test_external_data_path_traversal(bundle, tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.zeros(1000, np.float32).tobytes())
    _externalize(bundle, "embedding.weight", "../secret.bin")
    with pytest.raises(BundleError, match=r"points at external data '../secret.bin' outside the bundle directory"):
        open_bundle(bundle)


def test_external_data_must_be_listed_and_hashed(bundle):
    before = _answers(bundle)
    w = _first_w(bundle)
    _externalize(bundle, w, "weights.bin")
    with pytest.raises(
        BundleError,
        match=rf"initializer '{re.escape(w)}' reads external data from 'weights.bin', which "
        r"manifest.json 'files' does not list, so no checksum covers it",
    ):
        open_bundle(bundle)
    rehash(bundle, "weights.bin")  # listed (and hashed): a valid bundle
    assert _answers(bundle) == before
    (bundle / "weights.bin").write_bytes((bundle / "weights.bin").read_bytes()[:-4])
    with pytest.raises(BundleError, match=r"weights.bin: \d+ bytes but manifest.json records"):
        open_bundle(bundle)


def test_tensors_inside_subgraphs_are_checked(bundle):
    """An If body's initializer is followed like any other: here, external data outside the bundle."""

    def add_if(g):
        tensor = numpy_helper.from_array(np.zeros(4, np.float32), "hidden")
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="../../../../etc/hostname")
        body = helper.make_graph(
            [helper.make_node("Identity", ["hidden"], ["out"])],
            "body",
            [],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
            [tensor],
        )
        cond = next(n.output[0] for n in g.node if n.op_type == "Less")
        g.node.append(helper.make_node("If", [cond], ["unused"], then_branch=body, else_branch=body))

    _edit_graph(bundle, add_if)
    with pytest.raises(
        BundleError,
        match=r"initializer 'hidden' points at external data '../../../../etc/hostname' "
        r"outside the bundle directory",
    ):
        open_bundle(bundle)


# -- the tokenizer is data, never code -----------------------------------------------------------------


def test_a_backtracking_pattern_is_refused_at_once(bundle):
    def hostile(m):
        m["tokenizer"].pop("splitter")
        m["tokenizer"]["pattern"] = r"(\w+\s?)+$"

    edit_manifest(bundle, hostile)
    started = time.perf_counter()
    with pytest.raises(
        BundleError,
        match=r"'tokenizer.pattern' is '\(\\\\w\+\\\\s\?\)\+\$', which is not a pattern "
        r"rnnkit writes; the tokenizer names one of rnnkit's splitters \('words'\)",
    ):
        open_bundle(bundle)
    assert time.perf_counter() - started < 5


def test_the_legacy_pattern_string_still_opens(bundle):
    before = _answers(bundle)

    def legacy(m):
        m["tokenizer"].pop("splitter")
        m["tokenizer"]["pattern"] = DEFAULT_PATTERN

    edit_manifest(bundle, legacy)
    assert open_bundle(bundle).tokenizer.splitter == "words" and _answers(bundle) == before


def test_unknown_splitter_is_refused(bundle):
    edit_manifest(bundle, lambda m: m["tokenizer"].update(splitter="sentencepiece"))
    with pytest.raises(BundleError, match=r"'tokenizer.splitter' is 'sentencepiece', expected one of 'words'"):
        open_bundle(bundle)


def test_absurd_vocabulary_entry_is_refused(bundle):
    edit_manifest(bundle, lambda m: m["tokenizer"]["vocab"].__setitem__(5, "x" * 5000))
    with pytest.raises(BundleError, match=r"'tokenizer.vocab' has entries longer than 1024 characters at index \[5\]"):
        open_bundle(bundle)


# -- writing ----------------------------------------------------------------------------------------


def test_shipped_bundle_is_in_the_current_form():
    b = open_bundle("g2p-cmudict")
    assert b.manifest[DIGEST_KEY] == manifest_digest(b.manifest)
    assert b.manifest["target_tokenizer"]["splitter"] == "words" and "pattern" not in b.manifest["target_tokenizer"]


@pytest.mark.parametrize("umask, folder, file", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_bundle_modes_follow_the_umask(tmp_path, umask, folder, file):
    from rnnkit.export.bundle import BundleWriter

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    previous = os.umask(umask)
    try:
        with BundleWriter(tmp_path / "out") as writer:
            writer.save_model("model.onnx", helper.make_model(graph))
            (writer.tmp / "extra.txt").write_text("x")
            os.chmod(writer.tmp / "extra.txt", 0o600)  # as a mkstemp-written attachment would be
            out = writer.commit({"format": "rnnkit-bundle"})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == folder
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {
        "model.onnx": file,
        "extra.txt": file,
        MANIFEST_FILE: file,
    }
    manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest[DIGEST_KEY] == manifest_digest(manifest) and set(manifest["files"]) == {"model.onnx", "extra.txt"}
    assert not list(tmp_path.glob(".out.tmp-*"))
