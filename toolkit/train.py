"""Training loop for the recurrent text classifier.

Reads the data (``rnnkit.toolkit.data``), builds the word vocabulary on the training
split only, trains ``RecurrentClassifier`` with Adam, gradient-norm clipping and
length-bucketed batches, evaluates dev accuracy / macro-F1 after every epoch, keeps the
best epoch's weights (by dev accuracy, earliest on ties) and writes a checkpoint
(``rnnkit.toolkit.checkpoint``) with its training curves: after every epoch with the state to
``resume`` from (a kill loses at most one epoch), at the end without it.  The epoch loop,
seeding and determinism settings are ``rnnkit.toolkit.loop``'s (shared with the tagger); this
module supplies the classifier's batches, loss, dev metrics and log line.

Imports torch; the CLI imports this module inside the command body only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from rnnkit.runtime.errors import InputError
from rnnkit.runtime.tokenizer import WordTokenizer, pad_ids
from rnnkit.toolkit import ddp, metrics
from rnnkit.toolkit.checkpoint import save_checkpoint
from rnnkit.toolkit.configs import ClassifierConfig
from rnnkit.toolkit.configs import TrainConfig as TrainConfig
from rnnkit.toolkit.data import Example, check_labels, read_examples, split_dev
from rnnkit.toolkit.loop import batches, drop_words, fit, read_splits, training_record
from rnnkit.toolkit.models import RecurrentClassifier
from rnnkit.toolkit.resume import check_resume, fingerprint, read_resume_state, run_identity


@dataclass
class TrainResult:
    out_dir: Path
    best_epoch: int
    dev_accuracy: float
    dev_macro_f1: float
    history: list[dict] = field(default_factory=list)  # one dict per epoch run
    train_time_s: float = 0.0
    labels: list[str] = field(default_factory=list)
    num_train: int = 0
    num_dev: int = 0


def _encode(examples: list[Example], tok: WordTokenizer, max_length: int) -> list[np.ndarray]:
    out = []
    for ex in examples:
        ids = tok.encode(ex.text)
        if not ids:
            raise InputError(f"{ex.source}: the text has no tokens ({ex.text!r}) -- remove the line")
        out.append(np.asarray(ids[:max_length] if max_length else ids, dtype=np.int64))
    return out


def _collate(seqs: list[np.ndarray], idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    ids, lengths = pad_ids([seqs[i] for i in idx])
    return torch.from_numpy(ids), torch.from_numpy(lengths.astype(np.int64))


@torch.no_grad()
def evaluate(model: RecurrentClassifier, seqs: list[np.ndarray], y: np.ndarray, batch_size: int = 256) -> dict:
    """-> accuracy, macro_f1, confusion, n, loss (mean cross-entropy) on already-encoded data."""
    model.eval()
    lengths = np.array([len(s) for s in seqs])
    preds = np.zeros(len(seqs), dtype=np.int64)
    loss_sum = 0.0
    for idx in batches(lengths, batch_size, None):
        ids, lens = _collate(seqs, idx)
        logits = model(ids, lens)
        target = torch.from_numpy(y[idx])
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        preds[idx] = logits.argmax(dim=1).numpy()
    result = metrics.evaluate(y, preds, model.config.num_labels)
    result["loss"] = loss_sum / max(1, len(seqs))
    return result


def evaluate_file(
    checkpoint,
    data_path,
    text_field: str = "text",
    label_field: str = "label",
    encoding: str = "utf-8",
    max_length: int = 0,
) -> dict:
    """Score a checkpoint (path or loaded ``Checkpoint``) on a labelled file or folder ->
    accuracy, macro_f1, confusion (rows: true, columns: predicted, in ``labels`` order),
    n, loss, labels."""
    from rnnkit.toolkit.checkpoint import Checkpoint, load_checkpoint

    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    examples = read_examples(data_path, text_field=text_field, label_field=label_field, encoding=encoding)
    label_id = {lab: i for i, lab in enumerate(ck.labels)}
    unknown = sorted({ex.label for ex in examples} - label_id.keys())
    if unknown:
        first = next(ex.source for ex in examples if ex.label in unknown)
        raise InputError(
            f"labels {unknown} are not among the checkpoint's labels {ck.labels} "
            f"(first at {first}) -- evaluate on data with the training label set"
        )
    seqs = _encode(examples, ck.tokenizer, max_length)
    y = np.array([label_id[ex.label] for ex in examples], dtype=np.int64)
    result = evaluate(ck.model, seqs, y)
    result["labels"] = list(ck.labels)
    return result


def train_classifier(
    train_path,
    out_dir,
    config: TrainConfig | None = None,
    dev_path=None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    resume: bool = False,
    force: bool | None = None,
) -> TrainResult:
    """Train on ``train_path`` (dev from ``dev_path`` or a ``config.dev_split`` of TRAIN) and
    write the best epoch's checkpoint to ``out_dir`` (``resume``: continue the interrupted run
    there, with the same options and data; only ``epochs`` may change).
    ``force``: what to do with an earlier run in ``out_dir`` (``resume.read_resume_state``)."""
    config = ddp.prepare(config or TrainConfig())  # under torchrun: join its process group
    log = log if log and ddp.is_main() else (lambda _msg: None)
    out = Path(out_dir)
    interrupted = read_resume_state(out, resume, force)  # fail now, not after an hour of training
    read = dict(text_field=config.text_field, label_field=config.label_field, encoding=config.encoding)
    train_ex, dev_ex, split = read_splits(
        lambda p: read_examples(p, **read), train_path, dev_path, config, split_dev, stratified=True
    )
    labels = check_labels(train_ex, dev_ex)
    label_id = {lab: i for i, lab in enumerate(labels)}

    tok = WordTokenizer.build(
        (ex.text for ex in train_ex), lowercase=config.lowercase, max_size=config.max_vocab, min_freq=config.min_freq
    )
    train_x = _encode(train_ex, tok, config.max_length)
    dev_x = _encode(dev_ex, tok, config.max_length)
    train_y = np.array([label_id[ex.label] for ex in train_ex], dtype=np.int64)
    dev_y = np.array([label_id[ex.label] for ex in dev_ex], dtype=np.int64)
    log(f"{len(train_ex)} train / {len(dev_ex)} dev examples, labels {labels}, vocabulary {tok.vocab_size}")
    soft, distilled = None, None
    if config.teacher:  # soft targets (toolkit.distill): computed once and cached, before any process starts
        from rnnkit.toolkit.distill import open_teacher, teacher_logits

        teacher = open_teacher(config.teacher, "classify")
        logits, distilled = teacher_logits(
            teacher, [ex.text for ex in train_ex], labels, config.distill_temperature, log=log
        )
        soft = torch.from_numpy(logits)
        distilled |= {"temperature": config.distill_temperature, "alpha": config.distill_alpha}
    identity = run_identity(
        "classify",
        config,
        fingerprint([[ex.text, ex.label] for ex in train_ex], [[ex.text, ex.label] for ex in dev_ex]),
        **({"teacher_sha": distilled["teacher"]["sha256"]} if distilled else {}),
    )
    if interrupted is not None:
        check_resume(out, interrupted, identity, config.epochs)
    if ddp.needs_launch(config.nproc):  # --nproc N: N processes run this function again, rank 0's result
        return ddp.launch(
            train_classifier,
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

    model_config = ClassifierConfig(
        vocab_size=tok.vocab_size,
        num_labels=len(labels),
        cell=config.cell,
        embed=config.embed,
        hidden=config.hidden,
        layers=config.layers,
        bidirectional=config.bidirectional,
        pooling=config.pooling,
        dropout=config.dropout,
    )

    def step(model, idx):
        ids, lens = _collate(train_x, idx)
        if config.word_dropout > 0:
            ids = drop_words(ids, config.word_dropout)
        target = torch.from_numpy(train_y[idx])
        if soft is not None:
            from rnnkit.toolkit.distill import soft_target_loss

            teacher = soft[torch.from_numpy(np.asarray(idx))]
            loss = soft_target_loss(model(ids, lens), teacher, target, config.distill_temperature, config.distill_alpha)
            return loss, len(idx)
        return nn.functional.cross_entropy(model(ids, lens), target), len(idx)

    def report(dev):
        return (
            {"dev_accuracy": dev["accuracy"], "dev_macro_f1": dev["macro_f1"]},
            f"dev macro-F1 {dev['macro_f1']:.4f}",
        )

    def save(result, snapshot=None):  # after each epoch: with the resume state, no plots; at the end: None
        training = training_record(
            config,
            result,
            train_path,
            dev_path,
            split,
            len(train_ex),
            len(dev_ex),
            {k: result.best_dev[k] for k in ("accuracy", "macro_f1", "loss", "confusion")},
        )
        training["processes"] = config.nproc
        if distilled is not None:
            training["distill"] = distilled
        return save_checkpoint(out, result.model, tok, labels, training, plot=snapshot is None, resume=snapshot)

    result = fit(
        config,
        lambda: RecurrentClassifier(model_config),
        np.array([len(s) for s in train_x]),
        step,
        lambda model: evaluate(model, dev_x, dev_y),
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
        f"best epoch {best_epoch}: dev accuracy {best_dev['accuracy']:.4f}, macro-F1 "
        f"{best_dev['macro_f1']:.4f}; checkpoint written to {path} ({elapsed:.1f}s)"
    )
    return TrainResult(
        path,
        best_epoch,
        best_dev["accuracy"],
        best_dev["macro_f1"],
        result.history,
        elapsed,
        labels,
        len(train_ex),
        len(dev_ex),
    )
