"""Seq2seq training: greedy decoding against the teacher-forced model, a tiny learnable task,
checkpoints (round trip, tampering), the CLI.  Tiny seeded data, 1 torch thread."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rnnkit.runtime.errors import BundleError, InputError  # noqa: E402
from rnnkit.toolkit.configs import Seq2SeqTrainConfig  # noqa: E402
from rnnkit.toolkit.seq2seq import Seq2Seq, Seq2SeqConfig, greedy_decode  # noqa: E402

LETTERS = {"a": "AH", "b": "B", "c": "K", "d": "D", "e": "EH", "o": "OW", "x": "K S"}  # x: two phones


def toy_g2p(n: int, seed: int) -> list[tuple[str, str]]:
    """Words over 7 letters -> phones letter by letter ('x' -> 'K S'); some words get a second
    pronunciation (final 'e' silent), like CMUdict alternates."""
    rng = np.random.default_rng(seed)
    pairs, seen = [], set()
    while len(seen) < n:
        word = "".join(rng.choice(list(LETTERS), size=int(rng.integers(2, 7))))
        if word in seen:
            continue
        seen.add(word)
        pairs.append((word, " ".join(LETTERS[c] for c in word)))
        if word.endswith("e") and len(word) > 2:
            pairs.append((word, " ".join(LETTERS[c] for c in word[:-1])))
    return pairs


def write_cmudict(path, pairs):
    counts: dict[str, int] = {}
    lines = [";;; toy dictionary"]
    for w, p in pairs:
        counts[w] = counts.get(w, 0) + 1
        name = w if counts[w] == 1 else f"{w}({counts[w]})"
        lines.append(f"{name} " + " ".join(ph + ("1" if ph in ("AH", "EH", "OW") else "") for ph in p.split()))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_model(attention="dot", cell="lstm", bidirectional=True, seed=0):
    torch.manual_seed(seed)
    return Seq2Seq(
        Seq2SeqConfig(
            source_vocab_size=11,
            target_vocab_size=9,
            cell=cell,
            embed=8,
            hidden=12,
            layers=2,
            bidirectional=bidirectional,
            attention=attention,
            dropout=0.0,
        )
    ).eval()


@pytest.mark.parametrize(
    "attention, cell, bidirectional", [("dot", "lstm", True), ("additive", "gru", False), ("none", "rnn", True)]
)
def test_greedy_decode_agrees_with_the_teacher_forced_model(attention, cell, bidirectional):
    """Feeding greedy's own outputs back through the parallel teacher-forced forward must give
    the same arg-max tokens, in a ragged batch (padding must not leak between rows)."""
    torch.set_num_threads(1)
    model = tiny_model(attention, cell, bidirectional)
    # untrained weights rarely emit </s>: bias the head so rows stop at different steps
    with torch.no_grad():
        model.head.bias[3] += 1.5
    rows = [[4, 5, 6, 7, 8, 9], [4], [10, 9, 8], [5, 5]]
    src = torch.zeros(4, 6, dtype=torch.long)
    for i, r in enumerate(rows):
        src[i, : len(r)] = torch.tensor(r)
    lens = torch.tensor([len(r) for r in rows])
    out = greedy_decode(model, src, lens)
    for i, r in enumerate(rows):
        alone = greedy_decode(model, src[i : i + 1, : len(r)], lens[i : i + 1])[0]
        assert alone == out[i], "a row's output depends on the other rows of its batch"
        inp = torch.tensor([[2] + out[i]])
        forced = model(src[i : i + 1, : len(r)], lens[i : i + 1], inp).argmax(-1)[0].tolist()
        stopped = len(out[i]) < 2 * len(r) + 10
        assert forced == out[i] + ([3] if stopped else [forced[-1]])
    assert all(len(o) <= 3 for o in greedy_decode(model, src, lens, max_len=3))


def test_scheduled_sampling_at_ratio_one_is_teacher_forcing():
    from rnnkit.toolkit.train_seq2seq import sampled_logits

    model = tiny_model()
    src, lens = torch.tensor([[4, 5, 6], [7, 8, 0]]), torch.tensor([3, 2])
    inp = torch.tensor([[2, 5, 6, 7], [2, 4, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(
            sampled_logits(model, src, lens, inp, 1.0), model(src, lens, inp), atol=1e-5, rtol=1e-4
        )


def test_config_range_checks():
    with pytest.raises(InputError, match="teacher_forcing must be in"):
        Seq2SeqTrainConfig(teacher_forcing=0.0)
    with pytest.raises(InputError, match=r"attention must be one of.*; hidden must be even"):
        Seq2SeqTrainConfig(hidden=33, attention="luong")
    with pytest.raises(InputError, match="label_smoothing"):
        Seq2SeqTrainConfig(label_smoothing=1.0)


FAST = dict(cell="gru", layers=1, hidden=32, embed=16, dropout=0.0, batch_size=16, lr=1e-2, threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from rnnkit.toolkit.train_seq2seq import train_seq2seq

    tmp = tmp_path_factory.mktemp("s2s")
    path = write_cmudict(tmp / "toy.dict", toy_g2p(360, 0))
    config = Seq2SeqTrainConfig(epochs=8, teacher_forcing=0.9, label_smoothing=0.05, dev_split=0.15, **FAST)
    result = train_seq2seq(path, tmp / "ckpt", config, fmt="cmudict", progress=False, log=None)
    return tmp, result


@pytest.mark.slow
def test_training_learns_the_toy_g2p_and_reports_per_wer(trained):
    tmp, result = trained
    assert result.dev["token_error_rate"] < 0.15, result.history  # 0.076 when written
    assert result.dev["accuracy"] > 0.5, result.history  # 0.76 when written
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert {"dev_token_error_rate", "dev_sequence_error_rate", "dev_bleu"} <= result.history[0].keys()


def test_checkpoint_round_trip_and_split_files(trained):
    from rnnkit.toolkit.pairs import group_pairs, read_tsv
    from rnnkit.toolkit.train_seq2seq import load_seq2seq_checkpoint

    tmp, result = trained
    ckpt = load_seq2seq_checkpoint(result.out_dir)
    assert ckpt.meta["task"] == "seq2seq" and not ckpt.model.training
    assert ckpt.config.bos_id == 2 and ckpt.config.eos_id == 3
    assert ckpt.target_tokenizer.vocab[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert ckpt.source_tokenizer.level == "char" and ckpt.source_tokenizer.lowercase
    assert "AH" in ckpt.target_tokenizer.vocab and "AH1" not in ckpt.target_tokenizer.vocab  # stress stripped
    assert (result.out_dir / "curves.png").stat().st_size > 0
    dev = group_pairs(read_tsv(result.out_dir / "dev.tsv"))
    assert len(dev) == result.num_dev and ckpt.meta["training"]["split"]["dev_file"] == "dev.tsv"
    # the grouped dev split: no dev word was trained on
    train_words = {w for w, _ in toy_g2p(360, 0)} - {e.source for e in dev}
    assert len(train_words) + len(dev) == 360
    # the loaded model reproduces the dev score that picked the best epoch
    from rnnkit.toolkit.seq_metrics import evaluate_outputs

    hyps = ckpt.translate([e.source.upper() for e in dev])  # the source is lower-cased
    assert evaluate_outputs(hyps, [list(e.references) for e in dev])["accuracy"] == pytest.approx(
        result.dev["accuracy"]
    )


def test_fine_tuning_starts_from_the_checkpoint(trained, tmp_path):
    """--init: the checkpoint's weights, vocabularies and architecture are the starting point (the
    config's model options are ignored); its dev score before any update is the checkpoint's."""
    from rnnkit.toolkit.pairs import read_tsv, write_pairs
    from rnnkit.toolkit.train_seq2seq import load_seq2seq_checkpoint, train_seq2seq

    _, result = trained
    base = load_seq2seq_checkpoint(result.out_dir)
    dev = tmp_path / "dev.tsv"
    write_pairs(dev, read_tsv(result.out_dir / "dev.tsv"))
    train = write_cmudict(tmp_path / "more.dict", toy_g2p(120, 1))
    lines = []
    config = Seq2SeqTrainConfig(epochs=1, init=str(result.out_dir), **{**FAST, "hidden": 8, "cell": "lstm", "lr": 1e-9})
    tuned = train_seq2seq(train, tmp_path / "ft", config, dev_path=dev, fmt="cmudict", progress=False, log=lines.append)
    assert any(line.startswith(f"fine-tuning {result.out_dir}: gru 1x32") for line in lines), lines
    ckpt = load_seq2seq_checkpoint(tuned.out_dir)
    assert ckpt.config == base.config
    assert ckpt.source_tokenizer.vocab == base.source_tokenizer.vocab
    assert ckpt.target_tokenizer.vocab == base.target_tokenizer.vocab
    for name, w in base.model.state_dict().items():  # lr 1e-9: one epoch moves nothing visible
        np.testing.assert_allclose(ckpt.model.state_dict()[name].numpy(), w.numpy(), atol=1e-6, err_msg=name)
    assert tuned.dev["accuracy"] == pytest.approx(result.dev["accuracy"])
    with pytest.raises(BundleError, match="nope"):
        train_seq2seq(
            train,
            tmp_path / "ft2",
            Seq2SeqTrainConfig(epochs=1, init=str(tmp_path / "nope"), **FAST),
            dev_path=dev,
            fmt="cmudict",
            progress=False,
            log=None,
        )


def test_tampered_checkpoint_is_refused(trained, tmp_path):
    import shutil

    from rnnkit.toolkit.train_seq2seq import load_seq2seq_checkpoint

    _, result = trained
    bad = tmp_path / "bad"
    shutil.copytree(result.out_dir, bad)
    meta = json.loads((bad / "config.json").read_text(encoding="utf-8"))
    meta["target_tokenizer"]["vocab"].append("ZZ")
    (bad / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BundleError, match=r"'target_tokenizer.vocab' has \d+ entries but 'model.target_vocab_size'"):
        load_seq2seq_checkpoint(bad)
    meta["task"] = "lm"
    (bad / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BundleError, match="'task' is 'lm', expected 'seq2seq'"):
        load_seq2seq_checkpoint(bad)


def test_cli_train_seq2seq(tmp_path):
    from click.testing import CliRunner

    from rnnkit.toolkit.cli import cli

    pairs = toy_g2p(80, 1)
    (tmp_path / "train.tsv").write_text("".join(f"{w}\t{p}\n" for w, p in pairs), encoding="utf-8")
    args = [
        "train",
        "seq2seq",
        "--train",
        str(tmp_path / "train.tsv"),
        "--out",
        str(tmp_path / "ckpt"),
        "--format",
        "tsv",
        "--cell",
        "lstm",
        "--layers",
        "1",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--attention",
        "additive",
        "--unidirectional",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--dev-split",
        "0.2",
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "best epoch 1: dev exact match" in r.output
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text(encoding="utf-8"))
    assert meta["task"] == "seq2seq" and meta["model"]["attention"] == "additive"
    assert not meta["model"]["bidirectional"] and meta["training"]["split"]["grouped_by"] == "source"
    (tmp_path / "bad.tsv").write_text("ab\tAH B\nno tab\n", encoding="utf-8")
    r = CliRunner().invoke(cli, args[:3] + [str(tmp_path / "bad.tsv")] + args[4:5] + [str(tmp_path / "c2")])
    assert r.exit_code == 1 and "bad.tsv:2: no tab" in r.output
    r = CliRunner().invoke(cli, args + ["--teacher-forcing", "0"])
    assert r.exit_code == 2


@pytest.mark.slow
def test_cli_train_export_predict_end_to_end(tmp_path):
    """The user's path: train on a CMUdict file, export with int8 (its dev set found beside the
    checkpoint), predict a words file to JSONL; the bundle's dev record has references."""
    from click.testing import CliRunner

    from rnnkit.toolkit.cli import cli
    from rnnkit.toolkit.devset import dev_set_for

    write_cmudict(tmp_path / "toy.dict", toy_g2p(120, 2))
    run = CliRunner().invoke
    r = run(
        cli,
        [
            "train",
            "seq2seq",
            "--train",
            str(tmp_path / "toy.dict"),
            "--format",
            "cmudict",
            "--out",
            str(tmp_path / "ckpt"),
            "--layers",
            "1",
            "--hidden",
            "16",
            "--embed",
            "8",
            "--epochs",
            "2",
            "--threads",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    dev = dev_set_for(tmp_path / "ckpt")
    assert dev is not None and dev.source.endswith("dev.tsv") and len(dev.items) == len(dev.labels) > 0
    assert all(not any(ch.isdigit() for ch in ref) for ref in dev.labels)  # stress stripped, as trained
    r = run(
        cli,
        [
            "export",
            str(tmp_path / "ckpt"),
            "--out",
            str(tmp_path / "g2p.bundle"),
            "--int8",
            "--min-agreement",
            "0",
            "--lexicon",
            str(tmp_path / "toy.dict"),
        ],
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "g2p.bundle" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["task"] == "seq2seq" and "fp32_exact_match" in manifest["validation"]["dev"]
    (tmp_path / "words.txt").write_text("abc\nxo\n", encoding="utf-8")
    r = run(
        cli,
        [
            "predict",
            str(tmp_path / "g2p.bundle"),
            "--input",
            str(tmp_path / "words.txt"),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--beam",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["input"] for x in lines] == ["abc", "xo"]
    assert all(isinstance(x["output"], str) and x["score"] <= 0 for x in lines)

    # the lexicon: looked up only when asked, stress stripped as in training, case-insensitive
    from rnnkit.runtime import load
    from rnnkit.runtime.errors import BundleError, InputError

    model = load(tmp_path / "g2p.bundle", backend="onnxruntime")
    assert manifest["lexicon"]["sources"] == len({w for w, _ in toy_g2p(120, 2)})
    word, phones = toy_g2p(120, 2)[0]
    assert model.translate([word.upper(), "zzz"], beam=1, lookup=True)[0] == phones
    hyps = model.nbest([word.upper()], n=2, beam=2, lookup=True)[0]
    assert hyps[0].output == phones and hyps[0].score == 0.0
    assert model.translate(["zzz"], beam=1, lookup=True) == model.translate(["zzz"], beam=1)
    r = run(cli, ["predict", str(tmp_path / "g2p.bundle"), word, "--lookup"])
    assert r.exit_code == 0 and json.loads(r.output)["output"] == phones, r.output
    r = run(cli, ["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "plain.bundle")])
    assert r.exit_code == 0, r.output
    with pytest.raises(InputError, match="no lexicon to look words up in"):
        load(tmp_path / "plain.bundle", backend="onnxruntime").translate([word], lookup=True)
    lexicon = tmp_path / "g2p.bundle" / "lexicon.tsv"
    lexicon.write_text(lexicon.read_text(encoding="utf-8").replace(phones, "B B B", 1), encoding="utf-8")
    with pytest.raises(BundleError, match="lexicon.tsv"):
        load(tmp_path / "g2p.bundle", backend="onnxruntime")
