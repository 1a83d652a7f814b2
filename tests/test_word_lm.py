"""Word-level language models on pre-tokenized corpora (PTB / WikiText layout): the whitespace
tokenizer, its place in bundles, perplexity as the literature counts it (``rnnkit eval-lm``),
weight tying and the plateau learning-rate schedule."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import run_python

from rnnkit.runtime.errors import BundleError, InputError
from rnnkit.runtime.tokenizer import (
    UNK_ID,
    CharTokenizer,
    WhitespaceTokenizer,
    WordTokenizer,
    tokenizer_from_dict,
)
from rnnkit.runtime.tolerance import FP32

PTB_LINE = " the <unk> co. 's shares rose N cents to $ N in new york stock exchange trading yesterday \n"


def test_whitespace_round_trips_a_ptb_line_token_for_token():
    tok = WhitespaceTokenizer.build([PTB_LINE])
    fields = PTB_LINE.split()
    assert tok.tokenize(PTB_LINE) == [*fields, "<eos>"]  # exactly the fields, case kept, one <eos> per line
    ids = tok.encode(PTB_LINE)
    assert ids[1] == UNK_ID and tok.vocab[ids[fields.index("N")]] == "N"  # N stays N (not lower-cased)
    assert {"<unk>", "N", "'s", "$", "co."} <= set(tok.tokens(ids))
    assert tok.tokens(ids) == [*fields, "<eos>"]
    assert tok.decode(ids) == " ".join(fields) + "\n"
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))  # as a bundle manifest stores it
    assert isinstance(again, WhitespaceTokenizer) and again.encode(PTB_LINE) == ids and again.vocab == tok.vocab


def test_case_is_kept_and_newlines_count_in_any_chunking():
    tok = WhitespaceTokenizer.build(["The the THE\n"])
    assert tok.vocab[2:] == ["<eos>", "THE", "The", "the"]
    text = "a b\n\nc d\n"  # a blank line is one <eos>, as the PTB readers count it
    assert tok.tokenize(text) == ["a", "b", "<eos>", "<eos>", "c", "d", "<eos>"]
    whole = tok.encode(text)
    rng = random.Random(0)
    for _ in range(20):  # cutting a text at whitespace never changes its ids (streaming-safe)
        cuts = sorted(rng.sample([i for i, c in enumerate(text) if c.isspace()], 2))
        pieces = [text[: cuts[0]], text[cuts[0] : cuts[1]], text[cuts[1] :]]
        assert sum((tok.encode(p) for p in pieces), []) == whole


def test_the_corpus_unknown_token_is_the_models_unk_and_eos_can_be_off():
    tok = WhitespaceTokenizer.build(["a UNK b\nb UNK\n"], unk_token="UNK", eos_token=None)
    assert "UNK" not in tok.vocab and "<eos>" not in tok.vocab and tok.vocab[:2] == ["<pad>", "<unk>"]
    ids = tok.encode("a UNK zzz\nb")  # no <eos>: the newline is a separator like a space
    assert ids == [tok.token_id("a"), UNK_ID, UNK_ID, tok.token_id("b")]
    assert tok.tokens(ids) == ["a", "UNK", "UNK", "b"]  # written back as the corpus writes it
    assert tokenizer_from_dict(tok.to_dict()).encode("a UNK zzz\nb") == ids


def test_vocabulary_is_exactly_the_training_types_up_to_max_vocab():
    text = "a a a b b c <unk>\nd\n"  # types: a b c d <unk> <eos>  (6)
    full = WhitespaceTokenizer.build([text], max_types=6)
    assert set(full.vocab) == {"<pad>", "<unk>", "<eos>", "a", "b", "c", "d"} and full.vocab_size == 7
    cut = WhitespaceTokenizer.build([text], max_types=4)  # <unk> + the 3 most frequent others
    assert cut.vocab == ["<pad>", "<unk>", "a", "<eos>", "b"]
    assert cut.encode("c d") == [UNK_ID, UNK_ID]


def test_older_tokenizer_dicts_load_unchanged_and_bad_whitespace_dicts_are_refused():
    word = WordTokenizer.build(["The cat"]).to_dict()
    assert type(tokenizer_from_dict(word)) is WordTokenizer and tokenizer_from_dict(word).to_dict() == word
    char = CharTokenizer.build(["abc"]).to_dict()
    assert type(tokenizer_from_dict(char)) is CharTokenizer
    good = WhitespaceTokenizer.build(["a b\n"], unk_token="UNK").to_dict()
    bad = [
        ({**good, "eos_token": "two words"}, "'tokenizer.eos_token'"),
        ({**good, "unk_token": 7}, "'tokenizer.unk_token'"),
        ({**good, "vocab": [*good["vocab"], "UNK"]}, "has the unk_token 'UNK'"),
        ({**good, "pattern": ".*"}, "has keys"),
        ({**good, "vocab": ["<unk>", "<pad>", "a"]}, "'tokenizer.vocab[0]'"),
        ({**good, "eos_token": "UNK"}, "are the same token"),
    ]
    for d, expected in bad:
        with pytest.raises(BundleError, match="manifest.json: .*" + expected.replace("[", r"\[").replace("]", r"\]")):
            tokenizer_from_dict(d)


def test_config_refuses_inconsistent_word_lm_options():
    from rnnkit.toolkit.configs import LMTrainConfig

    for options, message in (
        (dict(level="word", tie_weights=True, embed=8, hidden=16), "embed must equal hidden"),
        (dict(level="char", tokenizer="whitespace"), "give level word"),
        (dict(level="word", tokenizer="whitespace", lowercase=True), "drop lowercase"),
        (dict(level="word", lr_schedule="plateau", lr_decay=0.0), "lr_decay must be in"),
        (dict(level="word", unk_token="a b"), "unk_token must be one token"),
    ):
        with pytest.raises(InputError, match=message):
            LMTrainConfig(**options)


# -- trained, exported and evaluated ------------------------------------------------------------

WORDS = "the a cat dog <unk> N 's $ sat on mat ran fast and slow".split()


def corpus(path, lines: int, seed: int) -> str:
    rng = random.Random(seed)
    text = "".join(" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + " \n" for _ in range(lines))
    path.write_text(text, encoding="utf-8")
    return text


TRAIN_ARGS = [
    "--level", "word", "--tokenizer", "whitespace", "--tie-weights", "--embed", "12", "--hidden", "12",
    "--layers", "2", "--dropout", "0.1", "--batch-size", "4", "--bptt", "8", "--threads", "1",
    "--lr-schedule", "plateau", "--lr-decay", "0.5", "--lr", "0.01",
]  # fmt: skip


@pytest.fixture(scope="module")
def word_bundle(tmp_path_factory):
    """A tied 2-layer word LSTM trained with the plateau schedule, exported fp32 + int8."""
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from rnnkit.toolkit.cli import cli

    root = tmp_path_factory.mktemp("wordlm")
    corpus(root / "train.txt", 150, 0)
    corpus(root / "valid.txt", 20, 1)
    corpus(root / "test.txt", 20, 2)
    args = ["train", "lm", "--train", str(root / "train.txt"), "--dev", str(root / "valid.txt")]
    r = CliRunner().invoke(cli, [*args, "--out", str(root / "ckpt"), "--epochs", "3", *TRAIN_ARGS])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["export", str(root / "ckpt"), "--out", str(root / "bundle"), "--int8"])
    assert r.exit_code == 0, r.output
    return root


@pytest.mark.slow
def test_tied_checkpoint_shares_one_matrix_and_exports_on_both_backends(word_bundle):
    import onnx
    import torch

    from rnnkit.runtime import load

    weights = torch.load(word_bundle / "ckpt" / "weights.pt", weights_only=True)
    assert torch.equal(weights["embedding.weight"], weights["head.weight"])
    matrix = weights["embedding.weight"].numpy()
    graph = onnx.load(str(word_bundle / "bundle" / "model.onnx"))
    shaped = [onnx.numpy_helper.to_array(i) for i in graph.graph.initializer]
    shaped = [w for w in shaped if sorted(w.shape) == sorted(matrix.shape)]  # the embedding and the head
    assert len(shaped) in (1, 2) and all(np.array_equal(w if w.shape == matrix.shape else w.T, matrix) for w in shaped)
    text = (word_bundle / "test.txt").read_text(encoding="utf-8")
    scores = {}
    for backend in ("onnxruntime", "numba"):
        for int8 in (False, True):
            model = load(word_bundle / "bundle", backend=backend, int8=int8)
            scores[backend, int8] = model.score(text)  # the bundle tokenizes as training did
            assert scores[backend, int8]["tokens"] == model.tokenizer.tokenize(text)
    for int8 in (False, True):
        a, b = scores["onnxruntime", int8], scores["numba", int8]
        assert FP32.close(np.array(a["logprobs"]), np.array(b["logprobs"]))


@pytest.mark.slow
def test_eval_lm_counts_every_token_with_one_state_across_the_file(word_bundle):
    from click.testing import CliRunner

    from rnnkit.runtime import load
    from rnnkit.runtime.generate import log_probs
    from rnnkit.runtime.perplexity import perplexity
    from rnnkit.toolkit.cli import cli

    text = (word_bundle / "test.txt").read_text(encoding="utf-8")
    model = load(word_bundle / "bundle", backend="onnxruntime")
    tok = model.tokenizer
    ids = tok.encode(text)
    assert len(ids) == len(text.split()) + text.count("\n")  # every field and one <eos> per line
    # independently: one State fed <eos> then the whole file, one token at a time
    state, lp = model.spawn_state(), []
    logits = state.run([tok.token_id("<eos>")])
    for i in ids:
        lp.append(log_probs(logits[-1:])[0, i])
        logits = state.run([i])
    expected = -float(np.mean(lp))
    result = perplexity(model, text, streams=1, window=7)  # windows of 7: the state crosses calls
    assert result.tokens == len(ids) and result.unknown == ids.count(UNK_ID)
    assert FP32.close(np.array(result.loss), np.array(expected))
    four = perplexity(model, text, streams=4)
    assert four.tokens == len(ids) // 4 * 4 and four.streams == 4
    no_newline = perplexity(model, text.rstrip("\n"))  # the last line still gets its <eos>
    assert no_newline.tokens == result.tokens and FP32.close(np.array(no_newline.loss), np.array(result.loss))

    outputs = {}
    for backend in ("onnxruntime", "numba"):
        for int8 in ([], ["--int8"]):
            r = CliRunner().invoke(
                cli, ["eval-lm", str(word_bundle / "bundle"), "--data", str(word_bundle / "test.txt"),
                      "--backend", backend, "--json", *int8],
            )  # fmt: skip
            assert r.exit_code == 0, r.output
            outputs[backend, bool(int8)] = json.loads(r.output.strip().splitlines()[-1])
    assert FP32.close(np.array(outputs["onnxruntime", False]["loss"]), np.array(expected))
    for int8 in (False, True):
        a, b = outputs["onnxruntime", int8], outputs["numba", int8]
        assert a["tokens"] == b["tokens"] == len(ids) and FP32.close(np.array(a["loss"]), np.array(b["loss"]))
    assert abs(outputs["onnxruntime", True]["loss"] - expected) < 0.02  # the export's int8 gate


def test_eval_lm_never_imports_torch(tmp_path):
    r = run_python(
        "import sys\nfrom rnnkit.toolkit.cli import cli\n"
        "try:\n    cli(['eval-lm', '--help'], prog_name='rnnkit')\nexcept SystemExit:\n    pass\n"
        "import rnnkit.runtime.perplexity, rnnkit.toolkit.cli_lm\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    assert r.returncode == 0, r.stderr
    assert "--streams" in r.stdout


@pytest.mark.slow
def test_plateau_decays_the_rate_and_a_killed_run_resumes_exactly(tmp_path):
    pytest.importorskip("torch")
    from test_resume import assert_same_checkpoint, train, train_killed

    corpus(tmp_path / "train.txt", 60, 0)
    # a dev text of rare words: its loss rises while training fits the frequent ones, so the rate decays
    (tmp_path / "valid.txt").write_text(" <unk> $ 's <unk> slow \n" * 10, encoding="utf-8")
    args = ["lm", "--train", str(tmp_path / "train.txt"), "--dev", str(tmp_path / "valid.txt"), *TRAIN_ARGS]
    r = train([*args, "--out", str(tmp_path / "whole"), "--epochs", "4"])
    assert r.exit_code == 0, r.output
    history = json.loads((tmp_path / "whole" / "config.json").read_text())["training"]["history"]
    lrs = [h["lr"] for h in history]
    assert lrs[0] == 0.01 and lrs[-1] < lrs[0]
    for e in range(1, len(lrs)):  # halved exactly after each epoch that did not lower the dev loss
        improved = e == 1 or history[e - 1]["dev_loss"] < min(h["dev_loss"] for h in history[: e - 1])
        assert lrs[e] == (lrs[e - 1] if improved else lrs[e - 1] * 0.5)
    killed = train_killed([*args, "--out", str(tmp_path / "cut"), "--epochs", "4"], 4)
    assert killed.returncode != 0
    r = train([*args, "--out", str(tmp_path / "cut"), "--epochs", "4", "--resume"])
    assert r.exit_code == 0, r.output
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "cut")


@pytest.mark.slow
def test_generated_words_read_as_text_with_line_ends_as_newlines(word_bundle):
    """A word LM trained on lines emits <eos> for each line end: ``generate_text``, the CLI's stream
    and the stop strings see it as a newline (no "<eos>" in the text, no space around it)."""
    from click.testing import CliRunner

    from rnnkit.runtime import load
    from rnnkit.toolkit.cli import cli

    model = load(word_bundle / "bundle", backend="numba")
    eos = model.tokenizer.eos_token
    assert model.render(["a", "b", eos, "c", eos, eos, "d"]) == "a b\nc\n\nd"
    assert model.render([eos, "a"]) == "\na" and model.render([]) == ""
    seed = next(s for s in range(50) if eos in model.generate("the", 30, seed=s))  # a sample with a line end
    tokens = list(model.generate("the", 30, seed=seed))
    text = model.generate_text("the", 30, seed=seed)
    assert text == model.render(tokens) and "\n" in text and eos not in text
    args = ["generate", str(word_bundle / "bundle"), "--prompt", "the", "--max-tokens", "30", "--seed", str(seed)]
    r = CliRunner().invoke(cli, [*args, "--backend", "numba"])
    assert r.exit_code == 0, r.output
    assert "the " + text + "\n" in r.output and eos not in r.output
    cut = model.generate_text("the", 30, seed=seed, stop="\n")  # the line end completes the stop string
    assert cut.endswith("\n") and cut == text[: text.index("\n") + 1]
