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
atomically after every epoch with the state to ``resume`` from, at the end without it.
Imports torch; the CLI imports this module inside the command body only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from rnnkit.runtime.charset import CharVocab
from rnnkit.runtime.errors import InputError
from rnnkit.runtime.tokenizer import WordTokenizer, ranked_vocab
from rnnkit.toolkit import ddp
from rnnkit.toolkit.checkpoint import TagCheckpoint as TagCheckpoint
from rnnkit.toolkit.checkpoint import load_tagger_checkpoint as load_tagger_checkpoint
from rnnkit.toolkit.checkpoint import save_tagger_checkpoint
from rnnkit.toolkit.configs import TagTrainConfig as TagTrainConfig
from rnnkit.toolkit.conll import TaggedSentence, read_tagged
from rnnkit.toolkit.loop import drop_words, fit, read_splits, training_record
from rnnkit.toolkit.resume import check_resume, fingerprint, read_resume_state, run_identity
from rnnkit.toolkit.tag_metrics import evaluate_tags
from rnnkit.toolkit.tagger import Encoded, RecurrentTagger, TaggerConfig, predict_encoded
from rnnkit.toolkit.tagger import predict_tag_ids as predict_tag_ids


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


# -- vocabularies and encoding ------------------------------------------------------------


def build_word_vocab(sentences: list[TaggedSentence], lowercase: bool, max_size: int, min_freq: int) -> WordTokenizer:
    """Whole-token vocabulary (frequency, then code point), normalised like WordTokenizer."""
    tok = WordTokenizer(lowercase=lowercase)
    counts = Counter(tok.normalize(t) for s in sentences for t in s.tokens)
    return WordTokenizer(ranked_vocab(counts, max_size, min_freq), lowercase=lowercase)


def evaluate_tagger(model: RecurrentTagger, data: Encoded) -> dict:
    preds, loss = predict_encoded(model, data)
    result = evaluate_tags(data.tags, preds, data.unseen, model.config.num_tags)
    result["loss"] = loss
    return result


def _drop_probabilities(data: Encoded, vocab_size: int, config: TagTrainConfig) -> torch.Tensor | None:
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


def train_tagger(
    train_path,
    out_dir,
    config: TagTrainConfig | None = None,
    dev_path=None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    resume: bool = False,
    force: bool | None = None,
) -> TagTrainResult:
    """Train on ``train_path`` (dev from ``dev_path`` or a ``config.dev_split`` of TRAIN) and
    write the best epoch's checkpoint to ``out_dir`` (``resume``: continue the interrupted run
    there, with the same options and data; only ``epochs`` may change).
    ``force``: what to do with an earlier run in ``out_dir`` (``resume.read_resume_state``)."""
    config = ddp.prepare(config or TagTrainConfig())  # under torchrun: join its process group
    log = log if log and ddp.is_main() else (lambda _msg: None)
    out = Path(out_dir)
    interrupted = read_resume_state(out, resume, force)
    train_s, dev_s, split = read_splits(
        lambda p: read_tagged(p, column=config.column, encoding=config.encoding),
        train_path,
        dev_path,
        config,
        split_sentences,
    )
    tags = sorted({t for s in train_s for t in s.tags})
    unknown = sorted({t for s in dev_s for t in s.tags} - set(tags))
    if unknown:
        first = next(s.source for s in dev_s if set(s.tags) & set(unknown))
        raise InputError(
            f"dev tags {unknown} never occur in training (first in the sentence at {first}) -- training tags are {tags}"
        )
    tag_id = {t: i for i, t in enumerate(tags)}
    tok = build_word_vocab(train_s, config.lowercase, config.max_vocab, config.min_freq)
    charset = (
        CharVocab.build((t for s in train_s for t in s.tokens), max_chars=config.max_chars) if config.chars else None
    )
    seen = {tok.normalize(t) for s in train_s for t in s.tokens}
    train_x = Encoded(train_s, tok, charset, tag_id, seen)
    drop_p = _drop_probabilities(train_x, tok.vocab_size, config)
    dev_x = Encoded(dev_s, tok, charset, tag_id, seen)
    log(
        f"{len(train_s)} train / {len(dev_s)} dev sentences ({int(train_x.lengths.sum())} / "
        f"{int(dev_x.lengths.sum())} tokens), {len(tags)} tags, vocabulary {tok.vocab_size}"
        + (f", {charset.size} chars" if charset else "")
    )
    identity = run_identity(
        "tag", config, fingerprint([[s.tokens, s.tags] for s in train_s], [[s.tokens, s.tags] for s in dev_s])
    )
    if interrupted is not None:
        check_resume(out, interrupted, identity, config.epochs)
    if ddp.needs_launch(config.nproc):  # --nproc N: N processes run this function again, rank 0's result
        return ddp.launch(
            train_tagger,
            config.nproc,
            train_path,
            out_dir,
            config,
            dev_path=dev_path,
            progress=progress,
            log=log,
            resume=resume,
            force=force,
        )

    model_config = TaggerConfig(
        vocab_size=tok.vocab_size,
        num_tags=len(tags),
        cell=config.cell,
        embed=config.embed,
        hidden=config.hidden,
        layers=config.layers,
        bidirectional=config.bidirectional,
        dropout=config.dropout,
        char_vocab_size=charset.size if charset else 0,
        char_embed=config.char_embed,
        char_filters=config.char_filters,
        char_kernel=config.char_kernel,
    )

    def step(model, idx):
        ids, lens, chars, target = train_x.batch(idx)
        if drop_p is not None:
            ids = drop_words(ids, drop_p)
        logits = model(ids, lens, chars)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        return loss, int(lens.sum())  # weighted by tokens, not sentences

    def report(dev):
        unseen = dev["unseen_accuracy"]
        return (
            {"dev_accuracy": dev["accuracy"], "dev_unseen_accuracy": unseen},
            f"unseen {'-' if unseen is None else f'{unseen:.4f}'} ({dev['n_unseen']})",
        )

    def save(result, snapshot=None):  # after each epoch: with the resume state, no plots; at the end: None
        training = training_record(
            config,
            result,
            train_path,
            dev_path,
            split,
            len(train_s),
            len(dev_s),
            {k: result.best_dev[k] for k in ("accuracy", "unseen_accuracy", "n", "n_unseen", "loss", "confusion")},
        )
        return save_tagger_checkpoint(
            out, result.model, tok, charset, tags, training, plot=snapshot is None, resume=snapshot
        )

    result = fit(
        config,
        lambda: RecurrentTagger(model_config),
        train_x.lengths,
        step,
        lambda model: evaluate_tagger(model, dev_x),
        report,
        progress,
        log,
        save=save,
        identity=identity,
        resume=interrupted,
    )
    best_epoch, best_dev, elapsed = result.best_epoch, result.best_dev, result.elapsed
    path = save(result) if ddp.is_main() else out  # the checkpoint is written once, by rank 0
    log(
        f"best epoch {best_epoch}: dev accuracy {best_dev['accuracy']:.4f}; checkpoint written to {path} "
        f"({elapsed:.1f}s)"
    )
    return TagTrainResult(
        path,
        best_epoch,
        best_dev["accuracy"],
        best_dev["unseen_accuracy"],
        result.history,
        elapsed,
        tags,
        len(train_s),
        len(dev_s),
    )
