"""End-to-end export: every cell x direction x pooling validates on both backends; failures write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import make_checkpoint, synthetic_texts  # noqa: E402
from rnnkit.export.exporter import DevSet, export_checkpoint, export_module  # noqa: E402
from rnnkit.runtime import InputError, ParityError, load  # noqa: E402
from rnnkit.runtime.tokenizer import WordTokenizer  # noqa: E402
from rnnkit.toolkit.models import CELLS, POOLINGS  # noqa: E402

MATRIX = [(cell, bi, pooling) for cell in sorted(CELLS) for bi in (False, True) for pooling in POOLINGS]
QUIET = dict(log=lambda m: None)


def test_matrix_is_complete():
    """Every registered cell and pooling is in the parity matrix (a new one must be added here)."""
    assert {m[0] for m in MATRIX} == set(CELLS) and {m[2] for m in MATRIX} == set(POOLINGS)
    assert len(MATRIX) == len(CELLS) * 2 * len(POOLINGS)


@pytest.mark.parametrize("cell,bidirectional,pooling", MATRIX)
def test_export_validates_on_both_backends(tmp_path, cell, bidirectional, pooling):
    ckpt = make_checkpoint(tmp_path / "ckpt", cell=cell, bidirectional=bidirectional, pooling=pooling,
                           layers=2 if pooling == "last" else 1)
    result = export_checkpoint(ckpt, tmp_path / "b", **QUIET)
    v = result["manifest"]["validation"]["fp32"]
    assert v["passed"] and v["cases"] == 24  # 12 shapes x 2 backends
    assert set(v["max_abs_diff"]) == {"onnxruntime", "numba"}
    assert max(v["max_abs_diff"].values()) < 1e-5


def test_int8_manifest_records_quantization(gru_bundle):
    manifest = json.loads((gru_bundle / "manifest.json").read_text())
    q = manifest["quantization"]
    assert 0 < q["size_ratio"] < 1
    dev = manifest["validation"]["dev"]
    assert {"fp32_accuracy", "int8_accuracy", "int8_agreement", "int8_accuracy_drop_pt"} <= set(dev)
    assert manifest["validation"]["int8"]["passed"]
    assert set(manifest["files"]) == {"model.onnx", "model.int8.onnx"}


def test_agreement_threshold_fails_export_and_writes_nothing(tmp_path, monkeypatch):
    from rnnkit.export import exporter

    ckpt = make_checkpoint(tmp_path / "ckpt", cell="lstm")
    texts, labels = synthetic_texts(40, 2)
    real = exporter._dev_metrics

    def disagreeing(*args, **kwargs):  # the measured metrics, with agreement forced below the gate
        return dict(real(*args, **kwargs), int8_agreement=0.985)
    monkeypatch.setattr(exporter, "_dev_metrics", disagreeing)
    with pytest.raises(ParityError, match=r"int8 agrees with fp32 on 98.50% of syn \(40 texts\), below --min-agreement 99.00%"):
        export_checkpoint(ckpt, tmp_path / "b", int8=True, dev=DevSet(texts, labels, "syn"), **QUIET)
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".b.tmp-*"))


def test_int8_without_dev_is_refused(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    with pytest.raises(InputError, match=r"pass --dev FILE"):
        export_checkpoint(ckpt, tmp_path / "b", int8=True, **QUIET)


def test_parity_failure_lists_every_miss_and_writes_nothing(tmp_path, monkeypatch):
    from rnnkit.export import exporter

    ckpt = make_checkpoint(tmp_path / "ckpt")
    real = exporter._torch_forward

    def skewed(module, call=None):
        forward = real(module, call)
        return lambda feed: forward(feed) + 1e-3  # an oracle the graph cannot match
    monkeypatch.setattr(exporter, "_torch_forward", skewed)
    with pytest.raises(ParityError) as info:
        export_checkpoint(ckpt, tmp_path / "b", **QUIET)
    message = str(info.value)
    assert "24 parity failure(s)" in message.splitlines()[0]  # every shape on both backends
    assert "onnxruntime @ batch=8 time=200" in message and "numba @ batch=1 time=1" in message
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.tmp-*"))


def test_refuses_to_overwrite_non_bundle(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.txt").write_text("do not delete")
    with pytest.raises(InputError, match=r"exists and is not an rnnkit bundle; refusing to overwrite it"):
        export_checkpoint(ckpt, target, **QUIET)
    assert (target / "thesis.txt").exists()


def test_reexport_replaces_bundle(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    export_checkpoint(ckpt, tmp_path / "b", **QUIET)
    export_checkpoint(ckpt, tmp_path / "b", **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "ckpt"]


class UserNet(torch.nn.Module):
    """A model trained outside rnnkit: time-major GRU, its own glue, takes (ids, lengths)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 10, padding_idx=0)
        self.drop = torch.nn.Dropout(0.2)
        self.gru = torch.nn.GRU(10, 12, num_layers=2, bidirectional=True)
        self.fc = torch.nn.Linear(24, 3)

    def forward(self, ids, lengths):
        x = self.drop(self.emb(ids)).transpose(0, 1)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.fc(torch.cat([h[-2], h[-1]], dim=1))


def test_export_users_own_module(tmp_path):
    texts, _ = synthetic_texts(100, 4)
    tokenizer = WordTokenizer.build(texts)
    torch.manual_seed(3)
    net = UserNet(tokenizer.vocab_size)
    result = export_module(net, tokenizer, ["a", "b", "c"], tmp_path / "user.bundle", pooling="last", **QUIET)
    assert result["manifest"]["validation"]["fp32"]["passed"]
    model = load(tmp_path / "user.bundle", backend="numba")
    net.eval()
    ids, lens = tokenizer.encode_batch(texts[:5])
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(ids), torch.from_numpy(lens.astype(np.int64))), -1).numpy()
    got = np.array([list(p.scores.values()) for p in model.predict(texts[:5])])
    assert np.allclose(got, expected, atol=1e-5)


def test_user_module_mismatched_tokenizer(tmp_path):
    tokenizer = WordTokenizer.build(["a b c"])
    with pytest.raises(InputError, match=r"embedding has 50 rows but the tokenizer has 5 entries"):
        export_module(UserNet(50), tokenizer, ["a", "b", "c"], tmp_path / "x", **QUIET)
