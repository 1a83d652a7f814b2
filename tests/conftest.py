"""Seeded fixtures: tiny tokenizers, checkpoints and bundles built in the test session (never downloaded)."""

from __future__ import annotations

import json
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


def make_checkpoint(
    out: Path, cell: str = "gru", bidirectional: bool = False, pooling: str = "last", layers: int = 1, seed: int = 0
) -> Path:
    """An untrained but seeded classifier saved as an rnnkit checkpoint (export/runtime tests need no training)."""
    import torch

    from rnnkit.runtime.tokenizer import WordTokenizer
    from rnnkit.toolkit.checkpoint import save_checkpoint
    from rnnkit.toolkit.models import ClassifierConfig, RecurrentClassifier

    texts, _ = synthetic_texts(200, seed)
    tokenizer = WordTokenizer.build(texts)
    torch.manual_seed(seed)
    config = ClassifierConfig(
        vocab_size=tokenizer.vocab_size,
        num_labels=2,
        cell=cell,
        embed=8,
        hidden=6,
        layers=layers,
        bidirectional=bidirectional,
        pooling=pooling,
        dropout=0.0,
    )
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
    from rnnkit.toolkit.export_checkpoint import DevSet, export_checkpoint

    root = tmp_path_factory.mktemp("bundle")
    ckpt = make_checkpoint(root / "ckpt", cell="gru", bidirectional=True, pooling="max")
    texts, labels = synthetic_texts(60, 1)
    result = export_checkpoint(
        ckpt,
        root / "gru.bundle",
        int8=True,
        dev=DevSet(texts, labels, "synthetic"),
        min_agreement=0.0,
        log=lambda m: None,
    )
    return Path(result["path"])


def run_python(code: str, *args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (import-isolation tests)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )


TAGS = ["DET", "NOUN", "VERB", "ADJ", "PUNCT"]
WORDS = {
    "DET": ["the", "a", "this"],
    "NOUN": ["film", "plot", "actor", "Ünïcode", "映画"],
    "VERB": ["runs", "is", "moves"],
    "ADJ": ["good", "bad", "dull"],
    "PUNCT": [".", "!"],
}


def synthetic_sentences(n: int, seed: int = 0) -> tuple[list[list[str]], list[list[str]]]:
    """DET ADJ* NOUN VERB ADJ PUNCT sentences: a tiny, learnable tagging corpus."""
    rng = np.random.default_rng(seed)
    sentences, tags = [], []
    for _ in range(n):
        seq = ["DET"] + ["ADJ"] * int(rng.integers(0, 3)) + ["NOUN", "VERB", "ADJ", "PUNCT"]
        sentences.append([str(rng.choice(WORDS[t])) for t in seq])
        tags.append(seq)
    return sentences, tags


def make_tagger_checkpoint(
    out: Path, cell: str = "lstm", bidirectional: bool = True, chars: bool = True, layers: int = 1, seed: int = 0
) -> Path:
    """An untrained, seeded tagger saved as an rnnkit tagging checkpoint."""
    import torch

    from rnnkit.runtime.charset import CharVocab
    from rnnkit.toolkit.conll import TaggedSentence
    from rnnkit.toolkit.tagger import RecurrentTagger, TaggerConfig
    from rnnkit.toolkit.train_tag import build_word_vocab, save_tagger_checkpoint

    sentences, tags = synthetic_sentences(50, seed)
    tokenizer = build_word_vocab([TaggedSentence(s, t, "x") for s, t in zip(sentences, tags)], True, 1000, 1)
    charset = CharVocab.build(w for s in sentences for w in s) if chars else None
    torch.manual_seed(seed)
    config = TaggerConfig(
        vocab_size=tokenizer.vocab_size,
        num_tags=len(TAGS),
        cell=cell,
        embed=6,
        hidden=5,
        layers=layers,
        bidirectional=bidirectional,
        dropout=0.0,
        char_vocab_size=charset.size if chars else 0,
        char_embed=4,
        char_filters=5,
    )
    model = RecurrentTagger(config).eval()
    return save_tagger_checkpoint(out, model, tokenizer, charset, TAGS, training={}, plot=False)


@pytest.fixture(scope="session")
def tag_bundle(tmp_path_factory) -> Path:
    """A validated fp32 + int8 tagging bundle with character features (built once per session)."""
    pytest.importorskip("torch")
    from rnnkit.toolkit.export_checkpoint import DevSet, export_checkpoint

    root = tmp_path_factory.mktemp("tagbundle")
    ckpt = make_tagger_checkpoint(root / "ckpt")
    sentences, tags = synthetic_sentences(40, 1)
    result = export_checkpoint(
        ckpt,
        root / "tag.bundle",
        int8=True,
        dev=DevSet(sentences, tags, "synthetic"),
        min_agreement=0.0,
        log=lambda m: None,
    )
    return Path(result["path"])


LM_TEXT = (
    "the cat sat on the mat. the dog sat on the log. a cat and a dog ran to the mat!\n"
    "To be, or not to be: that is the question.\n"
)


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
    from rnnkit.toolkit.export_checkpoint import DevSet, export_checkpoint

    root = tmp_path_factory.mktemp("lm")
    cache: dict = {}

    def get(cell: str, layers: int, level: str = "char") -> Path:
        key = (cell, layers, level)
        if key not in cache:
            name = f"{cell}{layers}{level}"
            ckpt = make_lm_checkpoint(root / f"{name}.ckpt", cell, layers, level, seed=layers)
            int8 = (cell, layers, level) == ("lstm", 2, "char")
            result = export_checkpoint(
                ckpt,
                root / f"{name}.bundle",
                int8=int8,
                dev=DevSet([LM_TEXT * 3], None, "lm"),
                min_agreement=0.0,
                log=lambda m: None,
            )
            cache[key] = Path(result["path"])
        return cache[key]

    return get


G2P = {
    "cat": "K AE T",
    "dog": "D AO G",
    "bird": "B ER D",
    "fish": "F IH SH",
    "horse": "HH AO R S",
    "cow": "K AW",
    "sheep": "SH IY P",
    "goat": "G OW T",
    "mouse": "M AW S",
    "duck": "D AH K",
    "frog": "F R AO G",
    "bee": "B IY",
}
PHONES = sorted({p for ph in G2P.values() for p in ph.split()})


_SEQ2SEQ: dict = {}


def make_seq2seq(
    cell: str = "lstm",
    attention: str = "dot",
    bidirectional: bool = True,
    layers: int = 2,
    seed: int = 0,
    train_steps: int = 100,
):
    """A seeded grapheme-to-phoneme Seq2Seq (char source, phone-word target) and its tokenizers, fitted
    for ``train_steps`` full-batch steps on ``G2P`` (about a second): peaked log-probabilities and
    outputs that end in </s> at different lengths, as a trained model's (0 steps: untrained).
    Built once per session and argument set (the same seeds give the same model); do not modify it."""
    key = (cell, attention, bidirectional, layers, seed, train_steps)
    if key not in _SEQ2SEQ:
        _SEQ2SEQ[key] = _fit_seq2seq(*key)
    return _SEQ2SEQ[key]


def _fit_seq2seq(cell, attention, bidirectional, layers, seed, train_steps):
    import torch

    from rnnkit.runtime.tokenizer import CharTokenizer, WordTokenizer, pad_ids
    from rnnkit.toolkit.seq2seq import Seq2Seq, Seq2SeqConfig

    source = CharTokenizer.build(G2P)
    target = WordTokenizer(["<pad>", "<unk>", "<s>", "</s>", *PHONES], lowercase=False)
    torch.manual_seed(seed)
    config = Seq2SeqConfig(
        source_vocab_size=source.vocab_size,
        target_vocab_size=target.vocab_size,
        cell=cell,
        embed=6,
        hidden=8,
        layers=layers,
        bidirectional=bidirectional,
        attention=attention,
        dropout=0.0,
    )
    model = Seq2Seq(config)
    ids, lens = pad_ids([source.encode(w) for w in G2P])
    phones = [target.encode(p) for p in G2P.values()]
    inputs, _ = pad_ids([[config.bos_id, *p] for p in phones])
    gold, _ = pad_ids([[*p, config.eos_id] for p in phones])
    ids, lens, inputs, gold = (torch.from_numpy(a) for a in (ids, lens.astype(np.int64), inputs, gold))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread
    try:
        for _ in range(train_steps):
            logits = model(ids, lens, inputs)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=0
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), source, target


@pytest.fixture(scope="session")
def s2s_bundles(tmp_path_factory):
    """Validated seq2seq bundles per (cell, attention, bidirectional), built lazily once per session;
    ('lstm', 'dot', True) with int8 and dev metrics."""
    pytest.importorskip("torch")
    from rnnkit.export.exporter import DevSet, export_seq2seq

    root = tmp_path_factory.mktemp("s2s")
    cache: dict = {}

    def get(cell: str = "lstm", attention: str = "dot", bidirectional: bool = True) -> Path:
        key = (cell, attention, bidirectional)
        if key not in cache:
            model, source, target = make_seq2seq(cell, attention, bidirectional)
            int8 = key == ("lstm", "dot", True)
            dev = DevSet(list(G2P), list(G2P.values()), "g2p") if int8 else None
            result = export_seq2seq(
                model,
                source,
                target,
                root / f"{cell}-{attention}-{bidirectional}.bundle",
                int8=int8,
                dev=dev,
                min_agreement=0.0,
                log=lambda m: None,
            )
            cache[key] = Path(result["path"])
        return cache[key]

    return get


def edit_manifest(bundle: Path, change, seal: bool = True) -> Path:
    """Apply ``change`` to a bundle's manifest.json in place (tests of bundle verification) and, with
    ``seal``, record the edited manifest's own digest (``manifest_sha256``), so that the check under
    test is the deeper one; ``seal=False`` leaves the old digest: an edit the checksum must catch."""
    from rnnkit.runtime.manifest import MANIFEST_FILE
    from rnnkit.runtime.manifest import seal as seal_manifest

    manifest = json.loads((bundle / MANIFEST_FILE).read_text(encoding="utf-8"))
    change(manifest)
    if seal:
        seal_manifest(manifest)
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    return bundle


def rehash(bundle: Path, name: str) -> None:
    """Record a bundle file's new digest and size in its manifest, and re-seal the manifest (so that only
    the checks past the checksums can fail)."""
    from rnnkit.runtime.bundle import sha256_file

    edit_manifest(
        bundle,
        lambda m: m["files"].update(
            {name: {"sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size}}
        ),
    )
