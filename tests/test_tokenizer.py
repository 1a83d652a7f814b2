"""WordTokenizer: tokenization, deterministic vocabulary, batching, JSON round trip, validation."""

import json
import subprocess
import sys

import numpy as np
import pytest

from rnnkit.runtime import tokenizer as tokenizer_module
from rnnkit.runtime.errors import BundleError, InputError
from rnnkit.runtime.tokenizer import DEFAULT_PATTERN, PAD_ID, UNK_ID, WordTokenizer


def test_tokenize_words_punctuation_and_apostrophes():
    tok = WordTokenizer()
    assert tok.tokenize("It's GREAT, isn’t it?!") == ["it's", "great", ",", "isn’t", "it", "?", "!"]
    assert tok.tokenize("  \t\n ") == []


def test_tokenize_unicode_and_nfkc():
    tok = WordTokenizer(lowercase=False)
    # NFKC: the "ﬁ" ligature becomes "fi", full-width letters become ASCII
    assert tok.tokenize("ﬁne ＡＢＣ") == ["fine", "ABC"]
    assert tok.tokenize("Café naïve — 東京です") == ["Café", "naïve", "—", "東京です"]


def test_build_order_is_frequency_then_alphabetical():
    tok = WordTokenizer.build(["b a c", "a b", "d"], max_size=None)
    # a:2 b:2 then c:1 d:1 ; ties alphabetical
    assert tok.vocab == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert WordTokenizer.build(["d", "a b", "b a c"], max_size=None).vocab == tok.vocab


def test_build_max_size_and_min_freq():
    texts = ["x x x y y z"]
    assert WordTokenizer.build(texts, max_size=4).vocab == ["<pad>", "<unk>", "x", "y"]
    assert WordTokenizer.build(texts, min_freq=2).vocab == ["<pad>", "<unk>", "x", "y"]
    with pytest.raises(ValueError, match="max_size must be >= 2"):
        WordTokenizer.build(texts, max_size=1)


def test_build_never_duplicates_specials():
    tok = WordTokenizer.build(["<unk> <pad> word"], lowercase=True)
    assert tok.vocab.count("<pad>") == 1 and tok.vocab.count("<unk>") == 1


def test_encode_decode_and_unknown():
    tok = WordTokenizer.build(["the movie is good", "the plot is bad"])
    ids = tok.encode("The movie is AWFUL")
    assert ids[-1] == UNK_ID and UNK_ID not in ids[:-1]
    assert tok.decode(ids) == "the movie is <unk>"


def test_encode_batch_pads_and_truncates():
    tok = WordTokenizer.build(["a b c d e"])
    ids, lengths = tok.encode_batch(["a b c", "d", "a b c d e"])
    assert ids.dtype == np.int64 and lengths.dtype == np.int32
    assert ids.shape == (3, 5)
    assert lengths.tolist() == [3, 1, 5]
    assert (ids[1, 1:] == PAD_ID).all()
    ids, lengths = tok.encode_batch(["a b c d e", "a"], max_length=2)
    assert ids.shape == (2, 2) and lengths.tolist() == [2, 1]


def test_encode_tokens_does_not_resplit():
    tok = WordTokenizer.build(["New York is big", "it's"])
    assert tok.encode_tokens(["NEW", "it's", "New-York"]) == [tok.token_id("new"), tok.token_id("it's"), UNK_ID]
    assert tok.token_id("nope") == UNK_ID and tok.token_id("<pad>") == PAD_ID


@pytest.mark.parametrize("bad", ["", "   \n"])
def test_encode_batch_names_the_empty_item(bad):
    tok = WordTokenizer.build(["a b"])
    with pytest.raises(InputError, match=r"text #2 has no tokens"):
        tok.encode_batch(["a", "b", bad])


def test_round_trip_through_json():
    tok = WordTokenizer.build(["Hello, World!", "héllo again"], lowercase=False)
    d = json.loads(json.dumps(tok.to_dict()))
    back = WordTokenizer.from_dict(d)
    assert back.vocab == tok.vocab and back.lowercase is False and back.level == "word"
    assert back.encode("Hello again, World") == tok.encode("Hello again, World")


def _dict(**changes):
    d = WordTokenizer.build(["the cat sat on the mat"]).to_dict()
    d.update(changes)
    return d


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"vocab": ["<pad>", "<unk>", "the", "cat", "the"]},
            "manifest.json: 'tokenizer.vocab' has duplicate entry 'the'",
        ),
        ({"vocab": ["<unk>", "<pad>", "the"]}, "'tokenizer.vocab[0]' is '<unk>', expected '<pad>'"),
        ({"vocab": ["<pad>"]}, "'tokenizer.vocab' has 1 entries, expected at least 2"),
        ({"vocab": "the cat"}, "'tokenizer.vocab' is str, expected a list of strings"),
        ({"vocab": ["<pad>", "<unk>", 3]}, "non-string or empty entries at index [2]"),
        ({"level": "char"}, "'tokenizer.level' is 'char', expected 'word'"),
        ({"lowercase": "yes"}, "'tokenizer.lowercase' is 'yes', expected true or false"),
        ({"splitter": "regex"}, "'tokenizer.splitter' is 'regex', expected one of 'words'"),
        ({"splitter": ["words"]}, "'tokenizer.splitter' is ['words'], expected one of 'words'"),
        ({"pattern": DEFAULT_PATTERN}, "unknown key(s) 'pattern'"),  # a legacy key, but next to 'splitter': ambiguous
        ({"vocab": ["<pad>", "<unk>", "w" * 1025]}, "entries longer than 1024 characters at index [2]"),
        ({"extra": 1}, "unknown key(s) 'extra'"),
    ],
)
def test_from_dict_rejects(changes, message):
    with pytest.raises(BundleError) as e:
        WordTokenizer.from_dict(_dict(**changes))
    assert message in str(e.value)


def test_from_dict_reports_missing_keys_and_source():
    d = _dict()
    del d["vocab"], d["lowercase"]
    with pytest.raises(BundleError, match=r"^ckpt/config.json: 'tokenizer' lacks key\(s\) 'lowercase', 'vocab'"):
        WordTokenizer.from_dict(d, source="ckpt/config.json")


def _legacy(pattern):
    d = _dict()
    del d["splitter"]
    d["pattern"] = pattern
    return d


def test_legacy_pattern_string_maps_to_its_splitter():
    """Checkpoints and bundles written before splitters had names stored rnnkit's own regex."""
    tok = WordTokenizer.from_dict(_legacy(DEFAULT_PATTERN))
    assert tok.splitter == "words" and tok.to_dict()["splitter"] == "words" and "pattern" not in tok.to_dict()
    assert tok.tokenize("It's GREAT!") == ["it's", "great", "!"]


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(\w+\s?)+$", "(", 42, r"\w+"])
def test_any_other_pattern_is_refused_without_being_compiled(pattern, monkeypatch):
    """A manifest's regex is never run: a catastrophically backtracking one cannot make predict hang."""
    d = _legacy(pattern)

    class NoRegex:  # the tokenizer module's view of `re`: compiling anything fails the test
        @staticmethod
        def compile(*args):
            raise AssertionError(f"compiled a regex: {args!r}")

    monkeypatch.setattr(tokenizer_module, "re", NoRegex)
    with pytest.raises(
        BundleError,
        match=r"'tokenizer.pattern' is .*, which is not a pattern rnnkit writes; the "
        r"tokenizer names one of rnnkit's splitters \('words'\)",
    ):
        WordTokenizer.from_dict(d)


def test_unknown_splitter_in_code_is_a_value_error():
    with pytest.raises(ValueError, match=r"splitter must be one of \['words'\], got 'spaces'"):
        WordTokenizer(splitter="spaces")


def test_vocabulary_size_is_bounded(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "MAX_VOCAB", 5)
    with pytest.raises(BundleError, match=r"'tokenizer.vocab' has 6 entries, more than rnnkit's limit of 5"):
        WordTokenizer.from_dict(_dict(vocab=["<pad>", "<unk>", "a", "b", "c", "d"]))


@pytest.mark.slow
def test_runtime_tokenizer_does_not_import_torch():
    code = "import sys, rnnkit.runtime.tokenizer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
