"""End-to-end export: every cell x direction x pooling validates on both backends; failures write nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import make_checkpoint, synthetic_texts  # noqa: E402

from rnnkit.export.exporter import export_module  # noqa: E402
from rnnkit.runtime import InputError, ParityError, load  # noqa: E402
from rnnkit.runtime.tokenizer import WordTokenizer  # noqa: E402
from rnnkit.toolkit.export_checkpoint import CLI_FLAGS, DevSet, export_checkpoint  # noqa: E402
from rnnkit.toolkit.models import CELLS, POOLINGS  # noqa: E402

MATRIX = [(cell, bi, pooling) for cell in sorted(CELLS) for bi in (False, True) for pooling in POOLINGS]
QUIET = dict(log=lambda m: None)


def test_matrix_is_complete():
    """Every registered cell and pooling is in the parity matrix (a new one must be added here)."""
    assert {m[0] for m in MATRIX} == set(CELLS) and {m[2] for m in MATRIX} == set(POOLINGS)
    assert len(MATRIX) == len(CELLS) * 2 * len(POOLINGS)


@pytest.mark.slow
@pytest.mark.parametrize("cell,bidirectional,pooling", MATRIX)
def test_export_validates_on_both_backends(tmp_path, cell, bidirectional, pooling):
    ckpt = make_checkpoint(
        tmp_path / "ckpt", cell=cell, bidirectional=bidirectional, pooling=pooling, layers=2 if pooling == "last" else 1
    )
    result = export_checkpoint(ckpt, tmp_path / "b", **QUIET)
    v = result["manifest"]["validation"]["fp32"]
    assert v["passed"] and v["cases"] == 28  # (12 shapes + 2 at max_length) x 2 backends
    assert v["max_length"] == result["manifest"]["graph"]["max_length"] == 10_000  # what it accepts was validated
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
    from rnnkit.export import pipeline

    ckpt = make_checkpoint(tmp_path / "ckpt", cell="lstm")
    texts, labels = synthetic_texts(40, 2)
    real = pipeline.dev_metrics

    def disagreeing(*args, **kwargs):  # the measured metrics, with agreement forced below the gate
        return dict(real(*args, **kwargs), int8_agreement=0.985)

    monkeypatch.setattr(pipeline, "dev_metrics", disagreeing)
    with pytest.raises(
        ParityError,
        match=r"int8 agrees with fp32 on 98.50% of syn \(40 texts\), below min_agreement "
        r"99.00%; nothing was written. Export without int8=True, or lower "
        r"min_agreement",
    ):
        export_checkpoint(ckpt, tmp_path / "b", int8=True, dev=DevSet(texts, labels, "syn"), **QUIET)
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".b.tmp-*"))


def test_int8_without_dev_is_refused(tmp_path):
    """The API's messages name its own arguments; the CLI's (flags=CLI_FLAGS) name its flags."""
    ckpt = make_checkpoint(tmp_path / "ckpt")
    with pytest.raises(InputError, match=r"pass dev=DevSet\(items, labels, source\) \(or export without int8=True\)"):
        export_checkpoint(ckpt, tmp_path / "b", int8=True, **QUIET)
    with pytest.raises(InputError, match=r"pass --dev FILE \(or export without --int8\)"):
        export_checkpoint(ckpt, tmp_path / "b", int8=True, flags=CLI_FLAGS, **QUIET)
    for flags, name in ((None, "max_length"), (CLI_FLAGS, "--max-length")):
        with pytest.raises(InputError, match=rf"^{name} must be an integer >= 1 \(tokens per input\), got 0$"):
            export_checkpoint(ckpt, tmp_path / "b", max_length=0, flags=flags, **QUIET)
    with pytest.raises(InputError, match=r"^lexicon: only encoder-decoder"):
        export_checkpoint(ckpt, tmp_path / "b", lexicon="x.dict", **QUIET)
    assert not (tmp_path / "b").exists()


def test_no_flag_names_in_api_messages():
    """The strings of export/ and of the runtime's model, decode and state modules (docstrings aside) name API
    arguments, never CLI flags: only CLI_FLAGS holds those (a message may quote a whole `rnnkit ...` command)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    found = []
    for path in [
        *(root / "export").glob("*.py"),
        *(root / "runtime" / name for name in ("model.py", "decode.py", "state.py")),
    ]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        skip |= {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CLI_FLAGS" for t in node.targets)
            for n in ast.walk(node.value)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
                and re.search(r"(^|\s|\()--[a-z]", node.value)
                and "rnnkit " not in node.value
            ):
                found.append(f"{path.name}:{node.lineno}: {node.value.strip()}")
    assert not found, found


def test_parity_failure_lists_every_miss_and_writes_nothing(tmp_path, monkeypatch):
    from rnnkit.export import task_classify

    ckpt = make_checkpoint(tmp_path / "ckpt")
    real = task_classify.torch_forward

    def skewed(module, call=None):
        forward = real(module, call)
        return lambda feed: forward(feed) + 1e-3  # an oracle the graph cannot match

    monkeypatch.setattr(task_classify, "torch_forward", skewed)
    with pytest.raises(ParityError) as info:
        export_checkpoint(ckpt, tmp_path / "b", **QUIET)
    message = str(info.value)
    assert "28 parity failure(s)" in message.splitlines()[0]  # every shape on both backends, max_length too
    assert message.splitlines()[1].startswith("  diagnosis: every row differs, full-length and padded")
    assert "onnxruntime @ batch=8 time=200" in message and "numba @ batch=1 time=1" in message
    assert "onnxruntime @ batch=2 time=10000 lengths=[10000," in message
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.tmp-*"))


def test_refuses_to_overwrite_non_bundle(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.txt").write_text("do not delete")
    with pytest.raises(InputError, match=r"exists and is not an rnnkit bundle; refusing to overwrite it"):
        export_checkpoint(ckpt, target, **QUIET)
    assert (target / "thesis.txt").exists()


@pytest.mark.slow
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


@pytest.mark.slow
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


class VariantNet(torch.nn.Module):
    """UserNet's layout with one deliberate difference from what rnnkit writes, chosen by ``mode``."""

    def __init__(self, vocab: int, mode: str = "ok", bidirectional: bool = True):
        super().__init__()
        self.mode = mode
        self.emb = torch.nn.Embedding(vocab, 10, padding_idx=0)
        self.gru = torch.nn.GRU(10, 12, num_layers=2, bidirectional=bidirectional)
        self.fc = torch.nn.Linear(24 if bidirectional else 12, 3)

    def forward(self, ids, lengths):
        if self.mode == "truncate":  # reads at most 256 tokens
            ids, lengths = ids[:, :256], lengths.clamp(max=256)
        x = self.emb(ids).transpose(0, 1)
        if self.mode == "padding":  # no packing: reads the padding
            _, h = self.gru(x)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=self.mode == "sorted")
            out, h = self.gru(packed)
        if self.mode == "backward":  # backward half after one token, not its end
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
            return self.fc(out[lengths - 1, torch.arange(len(lengths))])
        z = self.fc(torch.cat([h[-2], h[-1]], dim=1) if self.gru.bidirectional else h[-1])
        return {
            "log_softmax": lambda: torch.log_softmax(z, -1),
            "softmax": lambda: torch.softmax(z, -1),
            "hot": lambda: torch.log_softmax(2 * z, -1),
        }.get(self.mode, lambda: z)()


def _net(mode: str, bidirectional: bool = True):
    texts, _ = synthetic_texts(100, 4)
    tokenizer = WordTokenizer.build(texts)
    torch.manual_seed(3)
    return VariantNet(tokenizer.vocab_size, mode, bidirectional), tokenizer, texts


def test_truncating_forward_fails_at_max_length_and_exports_at_its_cut(tmp_path):
    """A forward that reads 256 tokens validated below 200 and answered differently on a 400-token text;
    validation at max_length catches it and names the length, and max_length=256 exports it."""
    net, tokenizer, texts = _net("truncate", bidirectional=False)
    with pytest.raises(ParityError) as info:
        export_module(net, tokenizer, ["a", "b", "c"], tmp_path / "b", **QUIET)
    message = str(info.value)
    assert (
        "diagnosis: the forward changes past 256 tokens (truncation?): a text of 256 tokens agrees with the "
        "graph, one of 257 does not, and the bundle accepts up to 10000 tokens. Remove the cut from the forward, "
        "or export with max_length=256"
    ) in message
    assert "@ batch=2 time=10000" in message and "time=200" not in message  # only the max_length cases differ
    assert not (tmp_path / "b").exists()
    result = export_module(net, tokenizer, ["a", "b", "c"], tmp_path / "b", max_length=256, **QUIET)
    manifest = result["manifest"]
    assert manifest["graph"]["max_length"] == 256
    v = manifest["validation"]["fp32"]
    assert v["passed"] and v["max_length"] == 256 and v["lengths"] == [1, 7, 33, 200]
    model = load(tmp_path / "b", backend="numba")
    long_text = " ".join(texts)  # > 256 tokens: refused, not cut
    with pytest.raises(InputError, match=r"text #0 has \d+ tokens, more than this bundle's max_length 256"):
        model.predict([long_text])
    assert model.predict([long_text], truncate=True)[0].truncated == len(tokenizer.encode(long_text)) - 256


def test_max_length_below_the_grid_skips_longer_lengths(tmp_path):
    net, tokenizer, _ = _net("truncate", bidirectional=False)
    v = export_module(net, tokenizer, ["a", "b", "c"], tmp_path / "b", max_length=20, **QUIET)["manifest"]["validation"]
    assert v["fp32"]["lengths"] == [1, 7] and v["fp32"]["max_length"] == 20 and v["fp32"]["cases"] == 2 * (6 + 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode,space", [("ok", "logits"), ("log_softmax", "log_probabilities"), ("softmax", "probabilities")]
)
def test_forward_may_return_logits_log_probabilities_or_probabilities(tmp_path, mode, space):
    net, tokenizer, texts = _net(mode, bidirectional=False)
    logged = []
    result = export_module(net, tokenizer, ["a", "b", "c"], tmp_path / "b", log=logged.append)
    v = result["manifest"]["validation"]["fp32"]
    assert v["passed"] and v["oracle_output"] == space
    assert v["compared"] == ("logits" if mode == "ok" else "probabilities")
    assert f"VariantNet.forward returns {space.replace('_', '-')}" in logged[0]
    net.eval()
    ids, lens = tokenizer.encode_batch(texts[:5])
    with torch.no_grad():
        out = net(torch.from_numpy(ids), torch.from_numpy(lens.astype(np.int64))).numpy()
    expected = {
        "logits": lambda: torch.softmax(torch.from_numpy(out), -1).numpy(),
        "probabilities": lambda: out,
        "log_probabilities": lambda: np.exp(out),
    }[space]()
    got = np.array([list(p.scores.values()) for p in load(tmp_path / "b", backend="numba").predict(texts[:5])])
    assert np.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    "mode,diagnosis",
    [
        (
            "padding",
            r"only padded rows differ \((\d+) of \1 rows shorter than their batch; every row as long as its "
            r"batch agrees\): your forward reads padding: pack the sequence "
            r"\(nn\.utils\.rnn\.pack_padded_sequence",
        ),
        (
            "backward",
            r"only the backward direction differs: with its weights zeroed \(last layer, in the module and in "
            r"the graph\) every row agrees",
        ),
        ("hot", r"every row differs, full-length and padded, from 1 token on"),  # log-probabilities of other logits
    ],
)
@pytest.mark.slow
def test_parity_error_diagnoses_the_pattern(tmp_path, mode, diagnosis):
    net, tokenizer, _ = _net(mode)
    with pytest.raises(ParityError) as info:
        export_module(net, tokenizer, ["a", "b", "c"], tmp_path / "b", **QUIET)
    lines = str(info.value).splitlines()
    assert re.match(f"  diagnosis: {diagnosis}", lines[1]), lines[1]
    assert any(" @ batch=" in line and "max |diff|" in line for line in lines[2:])  # shapes and diffs still listed
    assert not (tmp_path / "b").exists()


def test_forward_errors_name_the_module_and_the_fix(tmp_path):
    net, tokenizer, _ = _net("sorted")
    with pytest.raises(
        InputError,
        match=r"^test_export\.VariantNet\.forward raised RuntimeError during export "
        r"validation \(batch=8, time=33, lengths=\[33, .*\]\): `lengths` array must "
        r"be sorted.*; validation runs ragged batches whose lengths come in any "
        r"order: pass enforce_sorted=False to nn.utils.rnn.pack_padded_sequence",
    ):
        export_module(net, tokenizer, ["a", "b", "c"], tmp_path / "b", **QUIET)
    with pytest.raises(
        InputError,
        match=r"VariantNet\.forward raised TypeError .*forward=lambda module, input_ids, "
        r"lengths: \.\.\.",
    ):
        export_module(net, tokenizer, ["a", "b", "c"], tmp_path / "b", forward=lambda m, ids, lens: m(ids), **QUIET)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_every_task_validates_at_max_length(tag_bundle, lm_bundles, s2s_bundles):
    """Tagger and encoder-decoder bundles are validated at the max_length they accept; a language model
    records (and validates) its chunk, MAX_CHUNK tokens per step-graph call."""
    from rnnkit.export.task_lm import MAX_CHUNK

    for bundle, graphs in (
        (tag_bundle, None),
        (s2s_bundles("gru", "additive", False), ("encoder", "decoder")),
        (lm_bundles("gru", 1), None),
    ):
        manifest = json.loads((bundle / "manifest.json").read_text())
        expected = MAX_CHUNK if manifest["task"] == "lm" else 10_000
        assert manifest["graph"]["max_length"] == expected
        for v in [manifest["validation"]["fp32"][g] for g in graphs] if graphs else [manifest["validation"]["fp32"]]:
            assert v["passed"] and v["max_length"] == expected, (manifest["task"], v)
