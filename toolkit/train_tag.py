"""Training loop and checkpoints for the recurrent sequence tagger (``rnnkit train tag``).

Reads tagged sentences (``rnnkit.toolkit.conll``), builds the word vocabulary (whole tokens,
normalised as ``WordTokenizer`` normalises text) and the char vocabulary on the training
split only, trains ``RecurrentTagger`` with token-level cross-entropy, Adam, gradient-norm
clipping, length-bucketed batches and optional word dropout (tokens replaced by ``<unk>``
during training, their characters kept, so the model learns to tag from spelling), evaluates
dev token accuracy and unseen-word accuracy after each epoch and keeps the best epoch.  The
epoch loop (seeding, batching, progress, determinism, best epoch) is ``rnnkit.toolkit.loop``'s
and the checkpoint directory rules are ``rnnkit.toolkit.checkpoint``'s, shared with the classifier.

Checkpoint directory: ``config.json`` (``"task": "tag"``, ``TaggerConfig``, tokenizer,
charset, tags, training record), ``weights.pt`` (state_dict, read with ``weights_only=True``),
``curves.png``, ``confusion.png`` and ``confusion.tsv`` (best epoch, dev set); written
atomically.  Imports torch; the CLI imports this module inside the command body only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from rnnkit.runtime.charset import CharVocab, word_ids
from rnnkit.runtime.errors import InputError
from rnnkit.runtime.tokenizer import PAD_ID, WordTokenizer, ranked_vocab
from rnnkit.toolkit.checkpoint import (CONFIG_FILE, FORMAT, FORMAT_VERSION, check_out_dir, load_weights,
                                       raise_inconsistent, read_checkpoint, write_checkpoint)
from rnnkit.toolkit.configs import TagTrainConfig as TagTrainConfig
from rnnkit.toolkit.conll import TaggedSentence, read_tagged
from rnnkit.toolkit.tag_metrics import confusion_table, evaluate_tags
from rnnkit.toolkit.tagger import RecurrentTagger, TaggerConfig
from rnnkit.toolkit.loop import batches, drop_words, fit, read_splits, training_record

CONFUSION_PNG, CONFUSION_TSV = "confusion.png", "confusion.tsv"


@dataclass
class TagTrainResult:
    out_dir: Path
    best_epoch: int
    dev_accuracy: float
    dev_unseen_accuracy: float | None
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0
    tags: list[str] = field(default_factory=list)
    num_train: int = 0
    num_dev: int = 0


@dataclass
class TagCheckpoint:
    model: RecurrentTagger         # eval mode
    config: TaggerConfig
    tokenizer: WordTokenizer
    charset: CharVocab | None      # None without character features
    tags: list[str]                # tag id i -> tags[i]
    meta: dict                     # the whole config.json
    path: Path

    def predict(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        return [[self.tags[i] for i in row] for row in
                predict_tag_ids(self.model, self.tokenizer, self.charset, sentences)]


# -- vocabularies and encoding ------------------------------------------------------------

def build_word_vocab(sentences: list[TaggedSentence], lowercase: bool, max_size: int,
                     min_freq: int) -> WordTokenizer:
    """Whole-token vocabulary (frequency, then code point), normalised like WordTokenizer."""
    tok = WordTokenizer(lowercase=lowercase)
    counts = Counter(tok.normalize(t) for s in sentences for t in s.tokens)
    return WordTokenizer(ranked_vocab(counts, max_size, min_freq), lowercase=lowercase)


class _Encoded:
    """Sentences as word-id arrays (+ char-id arrays), tag ids and unseen-word masks."""

    def __init__(self, sentences, tok, charset, tag_id, seen: set[str]):
        self.ids = [np.asarray(word_ids(tok, s.tokens), dtype=np.int64) for s in sentences]
        self.chars = [charset.encode_words(s.tokens) for s in sentences] if charset else None
        self.tags = [np.asarray([tag_id[t] for t in s.tags], dtype=np.int64) for s in sentences]
        self.unseen = [np.asarray([tok.normalize(t) not in seen for t in s.tokens]) for s in sentences]
        self.lengths = np.array([len(x) for x in self.ids])

    def batch(self, idx):
        lens = self.lengths[idx]
        t = int(lens.max())
        ids = np.full((len(idx), t), PAD_ID, dtype=np.int64)
        tags = np.full((len(idx), t), -100, dtype=np.int64)  # cross_entropy's ignore_index
        chars = None
        if self.chars is not None:
            chars = np.zeros((len(idx), t, max(self.chars[i].shape[1] for i in idx)), dtype=np.int64)
        for r, i in enumerate(idx):
            ids[r, : lens[r]] = self.ids[i]
            tags[r, : lens[r]] = self.tags[i]
            if chars is not None:
                c = self.chars[i]
                chars[r, : c.shape[0], : c.shape[1]] = c
        as_t = torch.from_numpy
        return as_t(ids), as_t(lens.astype(np.int64)), (as_t(chars) if chars is not None else None), as_t(tags)


@torch.no_grad()
def _predict_encoded(model: RecurrentTagger, data: _Encoded, batch_size: int = 128):
    model.eval()
    preds: list[np.ndarray] = [np.zeros(0, np.int64)] * len(data.ids)
    loss_sum, n = 0.0, 0
    for idx in batches(data.lengths, batch_size, None):
        ids, lens, chars, tags = data.batch(idx)
        logits = model(ids, lens, chars)
        loss_sum += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tags.reshape(-1),
                                                ignore_index=-100, reduction="sum").item()
        n += int(lens.sum())
        best = logits.argmax(-1).numpy()
        for r, i in enumerate(idx):
            preds[i] = best[r, : lens[r]]
    return preds, loss_sum / max(n, 1)


def evaluate_tagger(model: RecurrentTagger, data: _Encoded) -> dict:
    preds, loss = _predict_encoded(model, data)
    result = evaluate_tags(data.tags, preds, data.unseen, model.config.num_tags)
    result["loss"] = loss
    return result


@torch.no_grad()
def predict_tag_ids(model: RecurrentTagger, tokenizer: WordTokenizer, charset: CharVocab | None,
                    sentences: Sequence[Sequence[str]], batch_size: int = 128) -> list[list[int]]:
    """Tag ids per token; an empty sentence gives []. (The torch oracle of ``Model.tag``.)"""
    fake = [TaggedSentence(list(s), ["_"] * len(s), "") for s in sentences]
    live = [i for i, s in enumerate(fake) if s.tokens]
    out: list[list[int]] = [[] for _ in sentences]
    if live:
        data = _Encoded([fake[i] for i in live], tokenizer, charset, {"_": 0}, set())
        preds, _ = _predict_encoded(model, data, batch_size)
        for i, p in zip(live, preds):
            out[i] = p.tolist()
    return out


def _drop_probabilities(data: _Encoded, vocab_size: int, config: TagTrainConfig) -> torch.Tensor | None:
    """Per word id: probability of replacing it by <unk> in a training batch (None: never)."""
    if config.word_dropout == 0 and config.unk_alpha == 0:
        return None
    counts = np.bincount(np.concatenate(data.ids), minlength=vocab_size).astype(np.float64)
    rare = config.unk_alpha / np.maximum(config.unk_alpha + counts, 1e-12) if config.unk_alpha else 0.0
    p = 1.0 - (1.0 - config.word_dropout) * (1.0 - rare)  # either kind of dropout
    return torch.from_numpy(np.asarray(p, dtype=np.float32) * np.ones(vocab_size, np.float32))


def split_sentences(sentences, fraction, seed):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))
    n_dev = max(1, int(round(len(sentences) * fraction)))
    if len(sentences) - n_dev < 1:
        raise InputError(f"{len(sentences)} sentence(s) cannot be split into train and dev -- give --dev")
    dev = set(order[:n_dev].tolist())
    return ([s for i, s in enumerate(sentences) if i not in dev], [s for i, s in enumerate(sentences) if i in dev])


# -- training -----------------------------------------------------------------------------

def train_tagger(train_path, out_dir, config: TagTrainConfig | None = None, dev_path=None,
                 progress: bool = True, log: Callable[[str], None] | None = print) -> TagTrainResult:
    """Train on ``train_path`` (dev from ``dev_path`` or a ``config.dev_split`` of TRAIN) and
    write the best epoch's checkpoint to ``out_dir``."""
    config = config or TagTrainConfig()
    log = log or (lambda _msg: None)
    out = check_out_dir(out_dir)
    train_s, dev_s, split = read_splits(lambda p: read_tagged(p, column=config.column, encoding=config.encoding),
                                        train_path, dev_path, config, split_sentences)
    tags = sorted({t for s in train_s for t in s.tags})
    unknown = sorted({t for s in dev_s for t in s.tags} - set(tags))
    if unknown:
        first = next(s.source for s in dev_s if set(s.tags) & set(unknown))
        raise InputError(f"dev tags {unknown} never occur in training (first in the sentence at {first}) "
                         f"-- training tags are {tags}")
    tag_id = {t: i for i, t in enumerate(tags)}
    tok = build_word_vocab(train_s, config.lowercase, config.max_vocab, config.min_freq)
    charset = (CharVocab.build((t for s in train_s for t in s.tokens), max_chars=config.max_chars)
               if config.chars else None)
    seen = {tok.normalize(t) for s in train_s for t in s.tokens}
    train_x = _Encoded(train_s, tok, charset, tag_id, seen)
    drop_p = _drop_probabilities(train_x, tok.vocab_size, config)
    dev_x = _Encoded(dev_s, tok, charset, tag_id, seen)
    log(f"{len(train_s)} train / {len(dev_s)} dev sentences ({int(train_x.lengths.sum())} / "
        f"{int(dev_x.lengths.sum())} tokens), {len(tags)} tags, vocabulary {tok.vocab_size}"
        + (f", {charset.size} chars" if charset else ""))

    model_config = TaggerConfig(
        vocab_size=tok.vocab_size, num_tags=len(tags), cell=config.cell, embed=config.embed,
        hidden=config.hidden, layers=config.layers, bidirectional=config.bidirectional,
        dropout=config.dropout, char_vocab_size=charset.size if charset else 0,
        char_embed=config.char_embed, char_filters=config.char_filters, char_kernel=config.char_kernel)

    def step(model, idx):
        ids, lens, chars, target = train_x.batch(idx)
        if drop_p is not None:
            ids = drop_words(ids, drop_p)
        logits = model(ids, lens, chars)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=-100)
        return loss, int(lens.sum())  # weighted by tokens, not sentences

    def report(dev):
        unseen = dev["unseen_accuracy"]
        return ({"dev_accuracy": dev["accuracy"], "dev_unseen_accuracy": unseen},
                f"unseen {'-' if unseen is None else f'{unseen:.4f}'} ({dev['n_unseen']})")

    result = fit(config, lambda: RecurrentTagger(model_config), train_x.lengths, step,
                 lambda model: evaluate_tagger(model, dev_x), report, progress, log)
    model, best_epoch, best_dev, elapsed = result.model, result.best_epoch, result.best_dev, result.elapsed
    training = training_record(config, result, train_path, dev_path, split, len(train_s), len(dev_s),
                               {k: best_dev[k] for k in ("accuracy", "unseen_accuracy", "n", "n_unseen",
                                                         "loss", "confusion")})
    path = save_tagger_checkpoint(out, model, tok, charset, tags, training)
    log(f"best epoch {best_epoch}: dev accuracy {best_dev['accuracy']:.4f}; checkpoint written to {path} "
        f"({elapsed:.1f}s)")
    return TagTrainResult(path, best_epoch, best_dev["accuracy"], best_dev["unseen_accuracy"], result.history,
                          elapsed, tags, len(train_s), len(dev_s))


# -- checkpoints --------------------------------------------------------------------------

def save_tagger_checkpoint(out_dir, model: RecurrentTagger, tokenizer: WordTokenizer, charset: CharVocab | None,
                           tags: list[str], training: dict | None = None, plot: bool = True) -> Path:
    """Write ``out_dir`` atomically (``rnnkit.toolkit.checkpoint.write_checkpoint``), adding the
    best epoch's dev confusion as ``confusion.tsv`` (and ``confusion.png`` when plotting)."""
    c = model.config
    if tokenizer.vocab_size != c.vocab_size or len(tags) != c.num_tags:
        raise ValueError("tokenizer / tags do not match the model config")
    if (charset is None) == c.use_chars or (charset is not None and charset.size != c.char_vocab_size):
        raise ValueError("charset does not match the model's char_vocab_size")
    training = training or {}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "task": "tag", "model": c.to_dict(),
            "tokenizer": tokenizer.to_dict(), "charset": charset.to_dict() if charset else None,
            "tags": list(tags), "training": training}
    dev = training.get("dev", {})

    def confusion(tmp: Path) -> None:
        if "confusion" not in dev:
            return
        (tmp / CONFUSION_TSV).write_text(confusion_table(dev["confusion"], tags), encoding="utf-8")
        if plot and training.get("history"):
            from rnnkit.toolkit.tag_metrics import plot_confusion
            plot_confusion(dev["confusion"], tags, tmp / CONFUSION_PNG,
                           title=f"dev, best epoch {training.get('best_epoch')}: accuracy {dev['accuracy']:.4f}")

    return write_checkpoint(out_dir, meta, model.state_dict(), plot=plot, extras=confusion)


def load_tagger_checkpoint(path) -> TagCheckpoint:
    meta, config, tokenizer = read_checkpoint(path, "tag", TaggerConfig)
    source = str(Path(path) / CONFIG_FILE)
    charset = CharVocab.from_dict(meta["charset"], source=source) if meta["charset"] is not None else None
    tags = meta["tags"]
    problems = []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags) or len(tags) != config.num_tags:
        problems.append(f"'tags' must be a list of {config.num_tags} strings ('model.num_tags')")
    if (charset.size if charset else 0) != config.char_vocab_size:
        problems.append(f"'charset.chars' has {charset.size if charset else 0} entries but "
                        f"'model.char_vocab_size' is {config.char_vocab_size}")
    raise_inconsistent(path, problems, tokenizer, config)
    rows = {"embedding.weight": "vocab_size", "head.weight": "num_tags", "char_embedding.weight": "char_vocab_size"}
    model = load_weights(Path(path), RecurrentTagger(config), rows)
    return TagCheckpoint(model, config, tokenizer, charset, list(tags), meta, Path(path))
