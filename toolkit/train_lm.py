"""Training and checkpoints for recurrent language models (``rnnkit train lm``).

Plain text in, next-token prediction out.  The training text is tokenized (``CharTokenizer`` or
``WordTokenizer``, built on the training text only), cut into ``batch_size`` contiguous streams
(rows) and read in ``bptt``-token windows in order: truncated backpropagation through time, the
recurrent state carried from one window to the next (detached: gradients stop at the window, the
context does not).  Dev is the ``--dev`` file or, without one, the last ``dev_split`` of TRAIN by
position (nanoGPT's 90/10 split of tinyshakespeare); its loss is reported in nats per token
(nats/char at char level) with perplexity ``exp(loss)``.  The epoch loop (seeding, clipping,
progress, best epoch by dev loss, patience) is ``rnnkit.toolkit.loop.fit``; checkpoints are
``rnnkit.toolkit.checkpoint.write_checkpoint``'s directory with ``"task": "lm"`` and ``curves.png``,
written after every epoch with the state to ``resume`` from (every epoch starts its streams from
zeros, so no recurrent state crosses an epoch: the state is the loop's alone).

Imports torch; the CLI imports this module inside the command body only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from rnnkit.runtime.errors import InputError
from rnnkit.runtime.io import read_text_file
from rnnkit.runtime.tokenizer import DEFAULT_EOS, CharTokenizer, WhitespaceTokenizer, WordTokenizer
from rnnkit.toolkit.checkpoint import CONFIG_FILE, save_lm_checkpoint
from rnnkit.toolkit.checkpoint import LMCheckpoint as LMCheckpoint
from rnnkit.toolkit.checkpoint import load_lm_checkpoint as load_lm_checkpoint
from rnnkit.toolkit.configs import LMTrainConfig as LMTrainConfig
from rnnkit.toolkit.lm import LMConfig, RecurrentLM
from rnnkit.toolkit.loop import fit, lower_loss, training_record
from rnnkit.toolkit.resume import check_resume, fingerprint, read_resume_state, run_identity

DEV_STREAMS, DEV_WINDOW = 16, 256  # dev evaluation: parallel streams and window (state carried, no grad)


@dataclass
class LMTrainResult:
    out_dir: Path
    best_epoch: int
    dev_loss: float  # nats per token at the best epoch
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0
    num_train: int = 0  # tokens
    num_dev: int = 0


def read_text(path, encoding: str = "utf-8") -> str:
    return read_text_file(path, encoding, "give a plain-text file a language model can train on (--train / --dev)")


def split_by_position(text: str, fraction: float) -> tuple[str, str]:
    """The first ``1 - fraction`` of the characters train, the rest dev (nanoGPT's split)."""
    cut = int(len(text) * (1.0 - fraction))
    return text[:cut], text[cut:]


def build_tokenizer(text: str, config: LMTrainConfig):
    if config.level == "char":
        return CharTokenizer.build([text])
    if config.tokenizer == "whitespace":
        eos = DEFAULT_EOS if config.eos_per_line else None
        return WhitespaceTokenizer.build([text], config.unk_token, eos, config.max_vocab, config.min_freq)
    return WordTokenizer.build([text], lowercase=config.lowercase, max_size=config.max_vocab, min_freq=config.min_freq)


def streams(ids: np.ndarray, rows: int) -> torch.Tensor:
    """Token ids -> (rows, N) contiguous streams (the tail that does not divide evenly is dropped)."""
    n = len(ids) // rows
    if n < 2:
        raise InputError(
            f"{len(ids)} tokens cannot fill {rows} streams of at least 2 tokens -- "
            "give more text or a smaller --batch-size"
        )
    return torch.from_numpy(np.ascontiguousarray(ids[: rows * n].reshape(rows, n)))


def windows(data: torch.Tensor, bptt: int) -> list[int]:
    """Start columns of the truncated-BPTT windows (each predicts columns start+1 .. start+bptt)."""
    return list(range(0, data.shape[1] - 1, bptt))


def detach(state):
    return tuple(s.detach() for s in state)


def make_lm(model_config: LMConfig, tie_weights: bool) -> RecurrentLM:
    """A ``RecurrentLM``; ``tie_weights``: its head reads the embedding's matrix (one parameter,
    Press & Wolf 2017), initialised U(-0.1, 0.1) as Zaremba et al. 2014 initialise every weight
    (the embedding's default N(0, 1) would give a head logits of std ~sqrt(hidden)).  The
    checkpoint stores the matrix under both names, so the exported graph has two equal
    initializers and a reloaded (untied) model computes the same function."""
    model = RecurrentLM(model_config)
    if tie_weights:
        if model_config.embed != model_config.hidden:
            raise InputError(
                f"--tie-weights needs --embed equal to --hidden (got {model_config.embed} and {model_config.hidden})"
            )
        with torch.no_grad():
            model.embedding.weight.uniform_(-0.1, 0.1)
            model.embedding.weight[model_config.padding_idx].zero_()
            model.head.bias.zero_()
        model.head.weight = model.embedding.weight
    return model


@torch.no_grad()
def evaluate_lm(model: RecurrentLM, ids: np.ndarray, rows: int = DEV_STREAMS, window: int = DEV_WINDOW) -> dict:
    """Mean next-token cross-entropy (nats) and accuracy over ``ids``, state carried across windows."""
    model.eval()
    data = streams(ids, min(rows, max(1, len(ids) // 2)))
    state, loss_sum, correct, n = None, 0.0, 0, 0
    for s in windows(data, window):
        x, y = data[:, s : s + window], data[:, s + 1 : s + 1 + window]
        logits, state = model(x[:, : y.shape[1]], None, state)
        loss_sum += nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
        ).item()
        correct += int((logits.argmax(-1) == y).sum())
        n += y.numel()
    loss = loss_sum / n
    return {"loss": loss, "perplexity": math.exp(min(loss, 700)), "accuracy": correct / n, "tokens": n}


def train_lm(
    train_path,
    out_dir,
    config: LMTrainConfig | None = None,
    dev_path=None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    resume: bool = False,
    force: bool | None = None,
) -> LMTrainResult:
    """Train on the text of ``train_path`` (dev: ``dev_path`` or the last ``dev_split`` of it) and
    write the best epoch's checkpoint (lowest dev loss) to ``out_dir`` (``resume``: continue the
    interrupted run there, with the same options and data; only ``epochs`` may change).
    ``force``: what to do with an earlier run in ``out_dir`` (``resume.read_resume_state``)."""
    config = config or LMTrainConfig()
    log = log or (lambda _msg: None)
    out = Path(out_dir)
    interrupted = read_resume_state(out, resume, force)
    text = read_text(train_path, config.encoding)
    whitespace = config.level == "word" and config.tokenizer == "whitespace"
    if dev_path is not None:
        train_text, dev_text, split = text, read_text(dev_path, config.encoding), {"dev": str(dev_path)}
    else:
        train_text, dev_text = split_by_position(text, config.dev_split)
        split = {"dev_split": config.dev_split, "by": "position"}
    if whitespace and config.eos_per_line:  # every line, the last one too, ends with its token
        train_text, dev_text = (t if t.endswith("\n") else t + "\n" for t in (train_text, dev_text))
    tok = build_tokenizer(train_text, config)
    train_ids = np.asarray(tok.encode(train_text), dtype=np.int64)
    if config.max_train_tokens:
        train_ids = train_ids[: config.max_train_tokens]
    dev_ids = np.asarray(tok.encode(dev_text), dtype=np.int64)
    unit = "char" if config.level == "char" else "token"
    log(f"{len(train_ids)} train / {len(dev_ids)} dev {unit}s, vocabulary {tok.vocab_size}")
    identity = run_identity("lm", config, fingerprint(train_ids, dev_ids))
    if interrupted is not None:
        check_resume(out, interrupted, identity, config.epochs)
    data = streams(train_ids, config.batch_size)  # (B, N)
    starts = windows(data, config.bptt)
    model_config = LMConfig(
        vocab_size=tok.vocab_size,
        cell=config.cell,
        embed=config.embed,
        hidden=config.hidden,
        layers=config.layers,
        dropout=config.dropout,
    )
    state = None

    def step(model, start):
        nonlocal state
        if start == 0:
            state = None  # a new epoch starts every stream from zeros
        x = data[:, start : start + config.bptt]
        y = data[:, start + 1 : start + 1 + config.bptt]
        logits, new = model(x[:, : y.shape[1]], None, state)
        state = detach(new)  # context crosses the window, gradients do not
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return loss, y.numel()

    def report(dev):
        return (
            {"dev_perplexity": dev["perplexity"], "dev_accuracy": dev["accuracy"]},
            f"dev perplexity {dev['perplexity']:.3f}",
        )

    def save(result, snapshot=None):  # after each epoch: with the resume state, no plots; at the end: None
        training = training_record(
            config, result, train_path, dev_path, split, len(train_ids), len(dev_ids), {**result.best_dev, "unit": unit}
        )
        return save_lm_checkpoint(out, result.model, tok, training, plot=snapshot is None, resume=snapshot)

    result = fit(
        config,
        lambda: make_lm(model_config, config.tie_weights),
        None,
        step,
        lambda m: evaluate_lm(m, dev_ids),
        report,
        progress,
        log,
        epoch_batches=lambda _rng: starts,
        better=lower_loss,
        save=save,
        identity=identity,
        resume=interrupted,
    )
    best = result.best_dev
    path = save(result)
    log(
        f"best epoch {result.best_epoch}: dev loss {best['loss']:.4f} nats/{unit} (perplexity "
        f"{best['perplexity']:.3f}); checkpoint written to {path} ({result.elapsed:.1f}s)"
    )
    return LMTrainResult(
        path, result.best_epoch, best["loss"], result.history, result.elapsed, len(train_ids), len(dev_ids)
    )


__all__ = [
    "LMTrainConfig",
    "LMTrainResult",
    "LMCheckpoint",
    "train_lm",
    "evaluate_lm",
    "save_lm_checkpoint",
    "load_lm_checkpoint",
    "split_by_position",
    "CONFIG_FILE",
]
