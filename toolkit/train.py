"""Training loop for the recurrent text classifier.

Reads the data (``rnnkit.toolkit.data``), builds the word vocabulary on the training
split only, trains ``RecurrentClassifier`` with Adam, gradient-norm clipping and
length-bucketed batches, evaluates dev accuracy / macro-F1 after every epoch, keeps the
best epoch's weights (by dev accuracy, earliest on ties) and writes a checkpoint
(``rnnkit.toolkit.checkpoint``) with its training curves.  A run is reproducible from its
seed: Python, numpy and torch are seeded and torch's deterministic algorithms are on for
the duration of the run (same seed, same machine -> identical dev metrics).

Imports torch; the CLI imports this module inside the command body only.
"""

from __future__ import annotations

import os
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from rnnkit.runtime.errors import InputError
from rnnkit.runtime.tokenizer import PAD_ID, UNK_ID, WordTokenizer
from rnnkit.toolkit import metrics
from rnnkit.toolkit.checkpoint import check_out_dir, save_checkpoint
from rnnkit.toolkit.data import Example, check_labels, read_examples, split_dev
from rnnkit.toolkit.configs import ClassifierConfig, TrainConfig as TrainConfig
from rnnkit.toolkit.models import RecurrentClassifier


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


@contextmanager
def _torch_settings(threads: int):
    """Deterministic kernels and a thread count for the run; restore the caller's afterwards."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads or min(4, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _seed_all(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _encode(examples: list[Example], tok: WordTokenizer, max_length: int) -> list[np.ndarray]:
    out = []
    for ex in examples:
        ids = tok.encode(ex.text)
        if not ids:
            raise InputError(f"{ex.source}: the text has no tokens ({ex.text!r}) -- remove the line")
        out.append(np.asarray(ids[:max_length] if max_length else ids, dtype=np.int64))
    return out


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None):
    """Index batches of similar length (less padding, faster on CPU).  With ``rng``: lengths
    are jittered before sorting and the batch order is shuffled, so batches differ per epoch."""
    key = lengths + (rng.uniform(-2.0, 2.0, size=len(lengths)) if rng is not None else 0.0)
    order = np.argsort(key, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _collate(seqs: list[np.ndarray], idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = np.array([len(seqs[i]) for i in idx], dtype=np.int64)
    ids = np.full((len(idx), lengths.max()), PAD_ID, dtype=np.int64)
    for row, i in enumerate(idx):
        ids[row, : lengths[row]] = seqs[i]
    return torch.from_numpy(ids), torch.from_numpy(lengths)


@torch.no_grad()
def evaluate(model: RecurrentClassifier, seqs: list[np.ndarray], y: np.ndarray,
             batch_size: int = 256) -> dict:
    """-> accuracy, macro_f1, confusion, n, loss (mean cross-entropy) on already-encoded data."""
    model.eval()
    lengths = np.array([len(s) for s in seqs])
    preds = np.zeros(len(seqs), dtype=np.int64)
    loss_sum = 0.0
    for idx in _batches(lengths, batch_size, None):
        ids, lens = _collate(seqs, idx)
        logits = model(ids, lens)
        target = torch.from_numpy(y[idx])
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        preds[idx] = logits.argmax(dim=1).numpy()
    result = metrics.evaluate(y, preds, model.config.num_labels)
    result["loss"] = loss_sum / max(1, len(seqs))
    return result


def evaluate_file(checkpoint, data_path, text_field: str = "text", label_field: str = "label",
                  encoding: str = "utf-8", max_length: int = 0) -> dict:
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
        raise InputError(f"labels {unknown} are not among the checkpoint's labels {ck.labels} "
                         f"(first at {first}) -- evaluate on data with the training label set")
    seqs = _encode(examples, ck.tokenizer, max_length)
    y = np.array([label_id[ex.label] for ex in examples], dtype=np.int64)
    result = evaluate(ck.model, seqs, y)
    result["labels"] = list(ck.labels)
    return result


class _Progress:
    """Per-epoch bar on stderr with the running loss (click's bar; silent when disabled)."""

    def __init__(self, enabled: bool, length: int, label: str):
        self.loss = float("nan")
        self.bar = None
        if enabled:
            import click
            self.bar = click.progressbar(length=length, label=label, file=sys.stderr, width=30,
                                         item_show_func=lambda _: None if self.loss != self.loss else f"loss {self.loss:.4f}")

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def update(self, loss: float):
        self.loss = loss
        if self.bar is not None:
            self.bar.update(1, loss)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def train_classifier(train_path, out_dir, config: TrainConfig | None = None, dev_path=None,
                     progress: bool = True, log: Callable[[str], None] | None = print) -> TrainResult:
    """Train on ``train_path`` (dev from ``dev_path`` or a ``config.dev_split`` of TRAIN) and
    write the best epoch's checkpoint to ``out_dir``."""
    config = config or TrainConfig()
    log = log or (lambda _msg: None)
    out = check_out_dir(out_dir)  # fail now, not after an hour of training
    read = dict(text_field=config.text_field, label_field=config.label_field, encoding=config.encoding)
    examples = read_examples(train_path, **read)
    if dev_path is not None:
        train_ex, dev_ex = examples, read_examples(dev_path, **read)
        split = {"dev": str(dev_path)}
    else:
        train_ex, dev_ex = split_dev(examples, config.dev_split, config.seed)
        split = {"dev_split": config.dev_split, "split_seed": config.seed, "stratified": True}
    labels = check_labels(train_ex, dev_ex)
    label_id = {lab: i for i, lab in enumerate(labels)}

    tok = WordTokenizer.build((ex.text for ex in train_ex), lowercase=config.lowercase,
                              max_size=config.max_vocab, min_freq=config.min_freq)
    train_x = _encode(train_ex, tok, config.max_length)
    dev_x = _encode(dev_ex, tok, config.max_length)
    train_y = np.array([label_id[ex.label] for ex in train_ex], dtype=np.int64)
    dev_y = np.array([label_id[ex.label] for ex in dev_ex], dtype=np.int64)
    log(f"{len(train_ex)} train / {len(dev_ex)} dev examples, labels {labels}, vocabulary {tok.vocab_size}")

    with _torch_settings(config.threads):
        rng = _seed_all(config.seed)
        model_config = ClassifierConfig(
            vocab_size=tok.vocab_size, num_labels=len(labels), cell=config.cell, embed=config.embed,
            hidden=config.hidden, layers=config.layers, bidirectional=config.bidirectional,
            pooling=config.pooling, dropout=config.dropout)
        model = RecurrentClassifier(model_config)
        optim = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        lengths = np.array([len(s) for s in train_x])
        history: list[dict] = []
        best, best_state, stale = None, None, 0
        start = time.perf_counter()
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            batches = _batches(lengths, config.batch_size, rng)
            loss_sum, seen = 0.0, 0
            with _Progress(progress, len(batches), f"epoch {epoch}/{config.epochs}") as bar:
                for idx in batches:
                    ids, lens = _collate(train_x, idx)
                    if config.word_dropout > 0:
                        drop = (torch.rand(ids.shape) < config.word_dropout) & (ids != PAD_ID)
                        ids = ids.masked_fill(drop, UNK_ID)
                    target = torch.from_numpy(train_y[idx])
                    loss = nn.functional.cross_entropy(model(ids, lens), target)
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), config.clip)
                    optim.step()
                    loss_sum += loss.item() * len(idx)
                    seen += len(idx)
                    bar.update(loss_sum / seen)
            dev = evaluate(model, dev_x, dev_y)
            record = {"epoch": epoch, "train_loss": loss_sum / seen, "dev_loss": dev["loss"],
                      "dev_accuracy": dev["accuracy"], "dev_macro_f1": dev["macro_f1"],
                      "seconds": round(time.perf_counter() - t0, 2)}
            history.append(record)
            improved = best is None or dev["accuracy"] > best[1]["accuracy"]
            if improved:
                best = (epoch, dev)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                stale = 0
            else:
                stale += 1
            log(f"epoch {epoch}/{config.epochs}  train loss {record['train_loss']:.4f}  dev loss "
                f"{dev['loss']:.4f}  dev acc {dev['accuracy']:.4f}  dev macro-F1 {dev['macro_f1']:.4f}  "
                f"({record['seconds']:.1f}s){'  *' if improved else ''}")
            if config.patience and stale >= config.patience:
                log(f"no better dev accuracy for {stale} epochs: stopping early")
                break
        elapsed = time.perf_counter() - start
        model.load_state_dict(best_state)
        model.eval()

    best_epoch, best_dev = best
    training = {
        "seed": config.seed, "train_path": str(train_path),
        "dev_path": str(dev_path) if dev_path is not None else None, "split": split,
        "num_train": len(train_ex), "num_dev": len(dev_ex), "epochs": config.epochs,
        "epochs_run": len(history), "best_epoch": best_epoch,
        "dev": {"accuracy": best_dev["accuracy"], "macro_f1": best_dev["macro_f1"],
                "loss": best_dev["loss"], "confusion": best_dev["confusion"]},
        "history": history, "time_s": round(elapsed, 2), "config": asdict(config),
        "torch": torch.__version__,
    }
    path = save_checkpoint(out, model, tok, labels, training)
    log(f"best epoch {best_epoch}: dev accuracy {best_dev['accuracy']:.4f}, macro-F1 "
        f"{best_dev['macro_f1']:.4f}; checkpoint written to {path} ({elapsed:.1f}s)")
    return TrainResult(path, best_epoch, best_dev["accuracy"], best_dev["macro_f1"], history,
                       elapsed, labels, len(train_ex), len(dev_ex))
