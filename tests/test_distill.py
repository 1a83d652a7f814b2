"""Knowledge distillation (toolkit.distill): the soft-target loss, the cached teacher targets and
their provenance, a bundle teacher run without torch, and `rnnkit train classify|seq2seq --teacher`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import G2P, make_checkpoint, run_python, synthetic_texts, write_dev

from rnnkit.runtime.errors import InputError
from rnnkit.runtime.tolerance import FP32

torch = pytest.importorskip("torch")

from rnnkit.toolkit import distill  # noqa: E402
from rnnkit.toolkit.cli import cli  # noqa: E402

TINY = ["--embed", "8", "--hidden", "8", "--epochs", "1", "--batch-size", "16", "--threads", "1"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "distill"


def write_train(path: Path, n: int = 64, seed: int = 0) -> Path:
    texts, labels = synthetic_texts(n, seed)
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in zip(texts, labels)), encoding="utf-8")
    return path


def test_soft_target_loss_is_hintons():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    target = torch.tensor([0, 2, 1, 1, 0])
    ce = torch.nn.functional.cross_entropy(student, target)
    assert FP32.close(distill.soft_target_loss(student, teacher, target, 3.0, 0.0).numpy(), ce.numpy())
    # alpha 1: T^2 * mean over rows of sum_c p_t (log p_t - log p_s), both at temperature T
    pt = torch.softmax(teacher / 3.0, -1).numpy().astype(np.float64)
    ps = torch.softmax(student / 3.0, -1).numpy().astype(np.float64)
    kl = 9.0 * float(np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1)))
    assert FP32.close(np.array(distill.soft_target_loss(student, teacher, target, 3.0, 1.0).item()), np.array(kl))
    assert distill.soft_target_loss(teacher, teacher, target, 2.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_classify_teacher_checkpoint_cached_with_provenance(tmp_path, cache):
    train, dev = write_train(tmp_path / "train.tsv"), write_dev(tmp_path / "dev.tsv")
    teacher = make_checkpoint(tmp_path / "teacher", bidirectional=True, pooling="max")
    args = ["train", "classify", "--train", str(train), "--dev", str(dev), *TINY, "--teacher", str(teacher)]
    args += ["--distill-temperature", "3", "--distill-alpha", "0.7"]
    first = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    entries = list(cache.iterdir())
    assert len(entries) == 1
    prov = json.loads((entries[0] / distill.PROVENANCE_FILE).read_text())
    assert prov["count"] == 64 and prov["temperature"] == 3.0
    assert prov["teacher"]["kind"] == "checkpoint" and prov["teacher"]["sha256"] == distill.hash_tree(teacher)
    record = json.loads((tmp_path / "a" / "config.json").read_text())["training"]["distill"]
    assert record["cached"] is False and record["alpha"] == 0.7 and record["labels"] == ["neg", "pos"]
    # the cached logits are the teacher's own
    from rnnkit.toolkit.checkpoint import load_checkpoint

    texts, _ = synthetic_texts(64, 0)
    assert FP32.close(np.load(entries[0] / distill.LOGITS_FILE), load_checkpoint(teacher).logits(texts))

    second = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "b" / "config.json").read_text())["training"]["distill"]["cached"] is True
    a, b = torch.load(tmp_path / "a" / "weights.pt"), torch.load(tmp_path / "b" / "weights.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same cached targets: the same run
    plain = CliRunner().invoke(cli, [*args[:-6], "--out", str(tmp_path / "c")])
    assert plain.exit_code == 0, plain.output
    c = torch.load(tmp_path / "c" / "weights.pt")
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the teacher's targets changed the updates


@pytest.mark.slow  # a fresh interpreter and a bundle export (session fixture)
def test_bundle_teacher_runs_without_torch_and_matches_its_checkpoint(gru_bundle, tmp_path, cache):
    texts, _ = synthetic_texts(40, 3)
    code = (
        "import json, sys\n"
        "from rnnkit.toolkit import distill\n"
        "t = distill.open_teacher(sys.argv[1], 'classify')\n"
        "logits, prov = distill.teacher_logits(t, json.loads(sys.argv[2]), ['pos', 'neg'], 2.0, log=lambda m: None)\n"
        "assert 'torch' not in sys.modules, 'the bundle teacher imported torch'\n"
        "print(json.dumps({'logits': logits.tolist(), 'kind': prov['teacher']['kind']}))\n"
    )
    proc = run_python(code, str(gru_bundle), json.dumps(texts), env={"RNNKIT_CACHE_DIR": str(tmp_path / "c2")})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["kind"] == "bundle"
    from rnnkit.toolkit.checkpoint import load_checkpoint

    ck = load_checkpoint(gru_bundle.parent / "ckpt")  # the checkpoint the bundle was exported from
    expected = ck.logits(texts)[:, [1, 0]]  # asked for in the order pos, neg
    assert FP32.close(np.array(out["logits"], dtype=np.float32), expected)


def test_a_teacher_of_other_labels_or_task_is_refused(tmp_path, gru_bundle):
    teacher = distill.open_teacher(gru_bundle, "classify")
    with pytest.raises(InputError, match="labels"):
        distill.teacher_logits(teacher, ["good film"], ["a", "b"], 2.0, log=lambda m: None)
    with pytest.raises(InputError, match="classify bundle"):
        distill.open_teacher(gru_bundle, "seq2seq")
    with pytest.raises(InputError, match="no such checkpoint or bundle"):
        distill.open_teacher(tmp_path / "missing", "classify")


def test_mix_pairs():
    pairs = [("cat", "K AE T"), ("dog", "D AO G"), ("dog", "D AA G")]
    outputs = {"cat": "K AE T", "dog": "D AO K"}
    kept, counts = distill.mix_pairs(pairs, outputs, "keep-references")
    assert kept == [*pairs, ("dog", "D AO K")]
    assert counts["teacher_pairs"] == 1 and counts["agree_with_a_reference"] == 1
    replaced, counts = distill.mix_pairs(pairs, {"cat": "K AE T", "dog": ""}, "replace")
    assert replaced == [("cat", "K AE T"), ("dog", "D AO G"), ("dog", "D AA G")]  # empty output: references kept
    assert counts["empty_outputs_kept_references"] == 1


@pytest.mark.slow  # a seq2seq bundle export (session fixture) and beam decoding
def test_seq2seq_teacher_bundle_beam_outputs_cached(s2s_bundles, tmp_path, cache):
    train = tmp_path / "train.tsv"
    train.write_text("".join(f"{w}\t{p}\n" for w, p in G2P.items()) * 2, encoding="utf-8")
    dev = tmp_path / "dev.tsv"
    dev.write_text("".join(f"{w}\t{p}\n" for w, p in list(G2P.items())[:4]), encoding="utf-8")
    bundle = s2s_bundles("lstm", "dot", True)
    args = ["train", "seq2seq", "--train", str(train), "--dev", str(dev), "--teacher", str(bundle)]
    args += ["--distill-beam", "3", "--distill-mix", "replace", "--layers", "1", "--hidden", "8", "--embed", "8"]
    args += ["--epochs", "1", "--threads", "1"]
    first = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    (entry,) = cache.iterdir()
    prov = json.loads((entry / distill.PROVENANCE_FILE).read_text())
    assert prov["beam"] == 3 and prov["count"] == len(G2P) and prov["teacher"]["kind"] == "bundle"
    from rnnkit.runtime import load

    expected = load(bundle).translate(list(G2P), beam=3)
    assert json.loads((entry / distill.OUTPUTS_FILE).read_text()) == expected
    record = json.loads((tmp_path / "a" / "config.json").read_text())["training"]
    assert record["distill"]["cached"] is False and record["distill"]["mix"] == "replace"
    nonempty = sum(1 for o in expected if o.strip())
    assert record["num_train"] == nonempty + 2 * (len(G2P) - nonempty)  # one teacher pair per source
    second = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "b" / "config.json").read_text())["training"]["distill"]["cached"] is True


def test_distill_options_are_checked():
    from rnnkit.toolkit.configs import Seq2SeqTrainConfig, TrainConfig

    with pytest.raises(InputError, match="distill_temperature"):
        TrainConfig(distill_temperature=0.0)
    with pytest.raises(InputError, match="distill_alpha"):
        TrainConfig(distill_alpha=1.5)
    with pytest.raises(InputError, match="scheduled sampling"):
        Seq2SeqTrainConfig(nproc=2, teacher_forcing=0.5)
    assert math.isclose(TrainConfig().distill_temperature, 2.0)
