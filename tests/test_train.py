"""Training loop, reproducibility and checkpoints on tiny seeded synthetic data."""

import json
import random

import pytest

torch = pytest.importorskip("torch")

from rnnkit.runtime.errors import BundleError, InputError  # noqa: E402
from rnnkit.toolkit import checkpoint as ckpt_mod  # noqa: E402
from rnnkit.toolkit.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from rnnkit.toolkit.train import TrainConfig, train_classifier  # noqa: E402

POS = ["great", "superb", "lovely", "brilliant", "fun"]
NEG = ["awful", "boring", "dull", "terrible", "bad"]
FILLER = ["the", "movie", "plot", "was", "a", "and", "actors", "story", "it", "really"]
FAST = dict(cell="gru", embed=16, hidden=16, epochs=4, batch_size=16, lr=0.02, dropout=0.1, threads=1)


def synthetic_jsonl(path, n=240, seed=0):
    """Separable sentiment: each text has filler words and one or two cue words of its class."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            label = "pos" if i % 2 else "neg"
            words = rng.choices(FILLER, k=rng.randint(2, 8))
            for _ in range(rng.randint(1, 2)):
                words.insert(rng.randint(0, len(words)), rng.choice(POS if label == "pos" else NEG))
            f.write(json.dumps({"text": " ".join(words).capitalize() + " .", "label": label}) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ckpt"
    logs = []
    result = train_classifier(data, out, TrainConfig(**FAST), progress=False, log=logs.append)
    return result, out, logs


def test_training_learns_separable_data(trained):
    result, out, logs = trained
    assert result.dev_accuracy >= 0.95
    assert result.num_train == 216 and result.num_dev == 24 and result.labels == ["neg", "pos"]
    assert len(result.history) == 4 and result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert any("dev acc" in line and "macro-F1" in line for line in logs)
    assert result.best_epoch == max(result.history, key=lambda h: h["dev_accuracy"])["epoch"]
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "weights.pt",
        "curves.png",
        "gradients.jsonl",
        "gradients.png",
    }
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_differs(data, trained, tmp_path):
    result, _, _ = trained
    again = train_classifier(data, tmp_path / "again", TrainConfig(**FAST), progress=False, log=None)
    assert [h["dev_loss"] for h in again.history] == [h["dev_loss"] for h in result.history]
    assert again.dev_accuracy == result.dev_accuracy
    other = train_classifier(
        data, tmp_path / "other", TrainConfig(**{**FAST, "seed": 1, "epochs": 1}), progress=False, log=None
    )
    assert other.history[0]["train_loss"] != result.history[0]["train_loss"]


def test_checkpoint_round_trip_with_weights_only(trained, monkeypatch):
    result, out, _ = trained
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ck = load_checkpoint(out)
    assert seen.get("weights_only") is True
    assert not ck.model.training
    assert ck.labels == ["neg", "pos"] and ck.config.vocab_size == ck.tokenizer.vocab_size
    meta = ck.meta
    assert meta["format"] == "rnnkit-checkpoint" and meta["format_version"] == 1 and meta["task"] == "classify"
    tr = meta["training"]
    assert tr["best_epoch"] == result.best_epoch and tr["seed"] == 0
    assert tr["dev"]["accuracy"] == result.dev_accuracy and len(tr["history"]) == 4
    assert tr["split"] == {"dev_split": 0.1, "split_seed": 0, "stratified": True}
    # the loaded model predicts the cue words
    ids, lengths = ck.tokenizer.encode_batch(["What a brilliant movie", "the plot was dull"])
    with torch.no_grad():
        pred = ck.model(torch.from_numpy(ids), torch.from_numpy(lengths).long()).argmax(1).tolist()
    assert [ck.labels[i] for i in pred] == ["pos", "neg"]
    assert ck.predict(["What a brilliant movie", "the plot was dull"]) == ["pos", "neg"]


def test_evaluate_file(trained, tmp_path):
    from rnnkit.toolkit.train import evaluate_file

    test = tmp_path / "test.tsv"
    test.write_text("text\tlabel\nsuperb fun\tpos\nawful and boring\tneg\nit was bad\tneg\n", encoding="utf-8")
    r = evaluate_file(trained[1], test)
    assert r["n"] == 3 and r["accuracy"] == 1.0 and r["labels"] == ["neg", "pos"]
    assert r["confusion"] == [[2, 0], [0, 1]]
    test.write_text("text\tlabel\nsuperb\tpos\nok\tmixed\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"labels \['mixed'\] are not among the checkpoint's labels"):
        evaluate_file(trained[1], test)


def test_dev_file_and_unseen_dev_label(data, tmp_path):
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\ngreat fun,pos\nmeh,neutral\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"dev labels \['neutral'\] never occur in training \(first at .*dev.csv:3\)"):
        train_classifier(data, tmp_path / "out", TrainConfig(**FAST), dev_path=dev, progress=False, log=None)
    assert not (tmp_path / "out").exists()


def test_invalid_config_is_reported_at_once():
    with pytest.raises(InputError) as e:
        TrainConfig(cell="transformer", epochs=0, dropout=1.5)
    msg = str(e.value)
    assert "cell must be one of ['gru', 'lstm', 'rnn'], got 'transformer'" in msg
    assert "epochs must be >= 1, got 0" in msg and "dropout must be in [0, 1), got 1.5" in msg


def test_refuses_to_overwrite_a_non_checkpoint_dir(data, tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("...")
    with pytest.raises(InputError, match="precious: exists and is not an rnnkit checkpoint"):
        train_classifier(data, target, TrainConfig(**FAST), progress=False, log=None)
    assert (target / "thesis.tex").exists()


class Evil:  # a pickled object other than tensors: refused by weights_only=True
    pass


def _copy_ckpt(trained, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(trained[1], dst)
    return dst


def test_interrupted_save_leaves_nothing(trained, tmp_path, monkeypatch):
    ck = load_checkpoint(trained[1])

    def boom(*a, **k):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the weights are written

    monkeypatch.setattr(ckpt_mod.torch, "save", boom)
    target = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, ck.model, ck.tokenizer, ck.labels, {"history": []})
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_checkpoint(trained, tmp_path, monkeypatch):
    dst = _copy_ckpt(trained, tmp_path)
    before = (dst / "config.json").read_bytes()
    ck = load_checkpoint(dst)
    monkeypatch.setattr(ckpt_mod, "plot_curves", None, raising=False)
    monkeypatch.setattr("rnnkit.toolkit.plots.plot_curves", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_checkpoint(dst, ck.model, ck.tokenizer, ck.labels, {"history": [{"epoch": 1}]})
    assert (dst / "config.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
    # a successful save replaces it
    save_checkpoint(dst, ck.model, ck.tokenizer, ck.labels, {"note": "v2"}, plot=False)
    assert load_checkpoint(dst).meta["training"] == {"note": "v2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def _edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_load_errors(trained, tmp_path):
    dst = _copy_ckpt(trained, tmp_path)
    with pytest.raises(BundleError, match="nowhere: no such checkpoint directory"):
        load_checkpoint(tmp_path / "nowhere")

    _edit_config(dst, lambda c: c.update(format_version=2))
    with pytest.raises(BundleError, match=r"config.json: 'format_version' is 2 but this rnnkit reads version 1"):
        load_checkpoint(dst)

    _edit_config(dst, lambda c: c.update(format_version=1, labels=["neg", "pos", "meh"]))
    with pytest.raises(BundleError, match=r"'labels' has 3 entries but 'model.num_labels' is 2"):
        load_checkpoint(dst)

    def shrink_vocab(c):
        c["labels"] = ["neg", "pos"]
        c["tokenizer"]["vocab"] = c["tokenizer"]["vocab"][:10]
        c["model"]["vocab_size"] = 10

    _edit_config(dst, shrink_vocab)
    real_rows = load_checkpoint(trained[1]).config.vocab_size
    with pytest.raises(BundleError) as e:
        load_checkpoint(dst)
    assert (
        f"weights.pt: does not match config.json: 'embedding.weight' has {real_rows} rows but "
        "config.json 'model.vocab_size' is 10" in str(e.value)
    )

    (dst / "config.json").write_text('{"format": "rnnkit-checkpoint",\n "model": }')
    with pytest.raises(BundleError, match=r"config.json: invalid JSON at line 2 column 11"):
        load_checkpoint(dst)

    (dst / "config.json").unlink()
    with pytest.raises(BundleError, match=r"config.json: missing"):
        load_checkpoint(dst)


def test_weights_file_problems(trained, tmp_path):
    dst = _copy_ckpt(trained, tmp_path)
    (dst / "weights.pt").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=r"weights.pt: cannot be read as a plain state_dict"):
        load_checkpoint(dst)

    torch.save({"x": Evil()}, dst / "weights.pt")
    with pytest.raises(BundleError, match=r"weights.pt: cannot be read as a plain state_dict \(UnpicklingError"):
        load_checkpoint(dst)

    (dst / "weights.pt").unlink()
    with pytest.raises(BundleError, match=r"weights.pt: missing"):
        load_checkpoint(dst)
