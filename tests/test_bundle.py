"""Bundle verification: corrupted, truncated, tampered, unsafe or inconsistent bundles are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import edit_manifest, rehash
from rnnkit.runtime import BundleError, load, open_bundle
from rnnkit.runtime.manifest import MANIFEST_FILE, MODEL_FP32


@pytest.fixture
def bundle(gru_bundle, tmp_path) -> Path:
    copy = tmp_path / "b"
    shutil.copytree(gru_bundle, copy)
    return copy


def test_good_bundle_opens(bundle):
    b = open_bundle(bundle)
    assert b.task == "classify" and b.has_int8 and b.labels == ["neg", "pos"]


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


def test_truncated_model(bundle):
    data = (bundle / MODEL_FP32).read_bytes()
    (bundle / MODEL_FP32).write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"model.onnx: \d+ bytes but manifest.json records \d+; the file is truncated"):
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


def test_vocab_size_mismatch(bundle):
    edit_manifest(bundle, lambda m: m["architecture"].update(vocab_size=m["architecture"]["vocab_size"] + 1))
    with pytest.raises(BundleError, match=r"'tokenizer.vocab' has (\d+) entries but 'architecture.vocab_size' is \d+"):
        open_bundle(bundle)


def test_embedding_rows_mismatch(bundle):
    def grow(m):
        m["tokenizer"]["vocab"].append("zzz-new-word")
        m["architecture"]["vocab_size"] += 1
    edit_manifest(bundle, grow)
    with pytest.raises(BundleError, match=r"embedding has \d+ rows but manifest.json 'architecture.vocab_size' is"):
        open_bundle(bundle)


def test_absurd_declared_shape(bundle):
    edit_manifest(bundle, lambda m: m["graph"]["inputs"][0].update(shape=["batch", 10 ** 12]))
    with pytest.raises(BundleError, match=r"declares 'input_ids' with dimension 1000000000000"):
        open_bundle(bundle)


def test_file_outside_bundle_listed(bundle):
    edit_manifest(bundle, lambda m: m["files"].update({"../evil.onnx": {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(BundleError, match=r"outside the bundle directory"):
        open_bundle(bundle)


def test_external_data_path_traversal(bundle, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.zeros(1000, np.float32).tobytes())
    model = onnx.load(str(bundle / MODEL_FP32))
    tensor = next(t for t in model.graph.initializer if t.name == "embedding.weight")
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    tensor.external_data.add(key="location", value="../secret.bin")
    onnx.save_model(model, str(bundle / MODEL_FP32))
    rehash(bundle, MODEL_FP32)
    with pytest.raises(BundleError, match=r"points at external data '../secret.bin' outside the bundle directory"):
        open_bundle(bundle)


def test_int8_missing_gives_clear_error(bundle):
    edit_manifest(bundle, lambda m: m["files"].pop("model.int8.onnx"))
    with pytest.raises(BundleError, match=r"this bundle has no int8 model .* re-export with --int8"):
        load(bundle, backend="onnxruntime", int8=True)


def test_unknown_format_version(bundle):
    edit_manifest(bundle, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match=r"'format_version' is 99 but this rnnkit reads 1"):
        open_bundle(bundle)
