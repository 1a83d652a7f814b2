"""Seeded fixtures: tiny tokenizers, checkpoints and bundles built in the test session (never downloaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"

POSITIVE = "good great fine superb lovely wonderful brilliant moving".split()
NEGATIVE = "bad awful dull boring terrible weak poor tedious".split()
FILLER = "the film movie plot was is a an and very quite it story acting".split()


def synthetic_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """A separable two-class corpus: the label is which sentiment words dominate."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = list(rng.choice(FILLER, size=rng.integers(2, 12)))
        cue = POSITIVE if label == "pos" else NEGATIVE
        for _ in range(rng.integers(1, 3)):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(cue)))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def make_checkpoint(out: Path, cell: str = "gru", bidirectional: bool = False, pooling: str = "last",
                    layers: int = 1, seed: int = 0) -> Path:
    """An untrained but seeded classifier saved as an rnnkit checkpoint (export/runtime tests need no training)."""
    import torch

    from rnnkit.runtime.tokenizer import WordTokenizer
    from rnnkit.toolkit.checkpoint import save_checkpoint
    from rnnkit.toolkit.models import ClassifierConfig, RecurrentClassifier

    texts, _ = synthetic_texts(200, seed)
    tokenizer = WordTokenizer.build(texts)
    torch.manual_seed(seed)
    config = ClassifierConfig(vocab_size=tokenizer.vocab_size, num_labels=2, cell=cell, embed=8, hidden=6,
                              layers=layers, bidirectional=bidirectional, pooling=pooling, dropout=0.0)
    model = RecurrentClassifier(config).eval()
    return save_checkpoint(out, model, tokenizer, ["neg", "pos"], training={}, plot=False)


def write_dev(path: Path, n: int = 60, seed: int = 1) -> Path:
    texts, labels = synthetic_texts(n, seed)
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in zip(texts, labels)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def gru_bundle(tmp_path_factory) -> Path:
    """A validated fp32 + int8 GRU bundle (built once per session)."""
    pytest.importorskip("torch")
    from rnnkit.export.exporter import DevSet, export_checkpoint

    root = tmp_path_factory.mktemp("bundle")
    ckpt = make_checkpoint(root / "ckpt", cell="gru", bidirectional=True, pooling="max")
    texts, labels = synthetic_texts(60, 1)
    result = export_checkpoint(ckpt, root / "gru.bundle", int8=True, dev=DevSet(texts, labels, "synthetic"),
                               min_agreement=0.0, log=lambda m: None)
    return Path(result["path"])


def run_python(code: str, *args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (import-isolation tests)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


TAGS = ["DET", "NOUN", "VERB", "ADJ", "PUNCT"]
WORDS = {"DET": ["the", "a", "this"], "NOUN": ["film", "plot", "actor", "Ünïcode", "映画"],
         "VERB": ["runs", "is", "moves"], "ADJ": ["good", "bad", "dull"], "PUNCT": [".", "!"]}


def synthetic_sentences(n: int, seed: int = 0) -> tuple[list[list[str]], list[list[str]]]:
    """DET ADJ* NOUN VERB ADJ PUNCT sentences: a tiny, learnable tagging corpus."""
    rng = np.random.default_rng(seed)
    sentences, tags = [], []
    for _ in range(n):
        seq = ["DET"] + ["ADJ"] * int(rng.integers(0, 3)) + ["NOUN", "VERB", "ADJ", "PUNCT"]
        sentences.append([str(rng.choice(WORDS[t])) for t in seq])
        tags.append(seq)
    return sentences, tags


def make_tagger_checkpoint(out: Path, cell: str = "lstm", bidirectional: bool = True, chars: bool = True,
                           layers: int = 1, seed: int = 0) -> Path:
    """An untrained, seeded tagger saved as an rnnkit tagging checkpoint."""
    import torch

    from rnnkit.runtime.charset import CharVocab
    from rnnkit.toolkit.tagger import RecurrentTagger, TaggerConfig
    from rnnkit.toolkit.train_tag import build_word_vocab, save_tagger_checkpoint
    from rnnkit.toolkit.conll import TaggedSentence

    sentences, tags = synthetic_sentences(50, seed)
    tokenizer = build_word_vocab([TaggedSentence(s, t, "x") for s, t in zip(sentences, tags)], True, 1000, 1)
    charset = CharVocab.build(w for s in sentences for w in s) if chars else None
    torch.manual_seed(seed)
    config = TaggerConfig(vocab_size=tokenizer.vocab_size, num_tags=len(TAGS), cell=cell, embed=6, hidden=5,
                          layers=layers, bidirectional=bidirectional, dropout=0.0,
                          char_vocab_size=charset.size if chars else 0, char_embed=4, char_filters=5)
    model = RecurrentTagger(config).eval()
    return save_tagger_checkpoint(out, model, tokenizer, charset, TAGS, training={}, plot=False)


@pytest.fixture(scope="session")
def tag_bundle(tmp_path_factory) -> Path:
    """A validated fp32 + int8 tagging bundle with character features (built once per session)."""
    pytest.importorskip("torch")
    from rnnkit.export.exporter import DevSet, export_checkpoint

    root = tmp_path_factory.mktemp("tagbundle")
    ckpt = make_tagger_checkpoint(root / "ckpt")
    sentences, tags = synthetic_sentences(40, 1)
    result = export_checkpoint(ckpt, root / "tag.bundle", int8=True, dev=DevSet(sentences, tags, "synthetic"),
                               min_agreement=0.0, log=lambda m: None)
    return Path(result["path"])


LM_TEXT = ("the cat sat on the mat. the dog sat on the log. a cat and a dog ran to the mat!\n"
           "To be, or not to be: that is the question.\n")


def make_lm_checkpoint(out: Path, cell: str = "lstm", layers: int = 1, level: str = "char", seed: int = 0) -> Path:
    """An untrained, seeded language model saved as an rnnkit lm checkpoint."""
    import torch

    from rnnkit.runtime.tokenizer import CharTokenizer, WordTokenizer
    from rnnkit.toolkit.lm import LMConfig, RecurrentLM
    from rnnkit.toolkit.train_lm import save_lm_checkpoint

    tokenizer = CharTokenizer.build([LM_TEXT]) if level == "char" else WordTokenizer.build([LM_TEXT])
    torch.manual_seed(seed)
    config = LMConfig(vocab_size=tokenizer.vocab_size, cell=cell, embed=6, hidden=7, layers=layers, dropout=0.0)
    model = RecurrentLM(config).eval()
    with torch.no_grad():  # larger weights than the default init: decisive, varied logits
        for p in model.parameters():
            p.mul_(3.0)
    return save_lm_checkpoint(out, model, tokenizer, training={}, plot=False)


@pytest.fixture(scope="session")
def lm_bundles(tmp_path_factory):
    """Validated fp32 char-LM bundles for every (cell, layers) in {rnn, lstm, gru} x {1, 2}; the
    lstm x2 one also int8 (built lazily, once per session)."""
    pytest.importorskip("torch")
    from rnnkit.export.exporter import DevSet, export_checkpoint

    root = tmp_path_factory.mktemp("lm")
    cache: dict = {}

    def get(cell: str, layers: int, level: str = "char") -> Path:
        key = (cell, layers, level)
        if key not in cache:
            name = f"{cell}{layers}{level}"
            ckpt = make_lm_checkpoint(root / f"{name}.ckpt", cell, layers, level, seed=layers)
            int8 = (cell, layers, level) == ("lstm", 2, "char")
            result = export_checkpoint(ckpt, root / f"{name}.bundle", int8=int8, dev=DevSet([LM_TEXT * 3], None, "lm"),
                                       min_agreement=0.0, log=lambda m: None)
            cache[key] = Path(result["path"])
        return cache[key]

    return get
