"""Training and checkpoints for encoder-decoders (``rnnkit train seq2seq``): G2P, translation.

Pairs in (``rnnkit.toolkit.pairs``: TSV, CMUdict, Tatoeba), every ``(source, reference)`` pair a
training example.  Dev is the ``--dev`` file or, without one, a seeded split of TRAIN grouped by
source (all references of a source on one side).  The source tokenizer and the target tokenizer
(``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3, ...) are built on the training pairs only.

Loss: token cross-entropy (``<pad>`` ignored, optional label smoothing) of the decoder fed the
reference shifted by ``<s>``: with ``teacher_forcing`` 1 in one parallel decoder call, below 1
in a step loop that feeds the model's own previous arg-max with probability ``1 - ratio``
(scheduled sampling).  Each epoch, dev is scored two ways: the teacher-forced loss, and
batched greedy decoding (``seq2seq.greedy_decode``) against all references of each source:
``token_error_rate`` (PER for G2P), ``sequence_error_rate`` (G2P WER), ``accuracy`` (exact
match) and BLEU.  Outputs and references are compared in the target tokenizer's form
(normalised, lower-cased if it lower-cases, tokens joined by spaces -- characters joined
without, at char level), so the scores measure the model, not detokenization.

The epoch loop is ``loop.fit`` (best epoch by ``best_by``); the checkpoint directory has
``config.json`` with ``"task": "seq2seq"`` (``tokenizer`` = source tokenizer, ``target_tokenizer``),
``weights.pt``, ``curves.png`` and ``dev.tsv`` (the dev pairs used, so later scripts can
evaluate).  ``load_seq2seq_checkpoint`` reads it back.

Imports torch; the CLI imports this module inside the command body only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from rnnkit.runtime.errors import BundleError, InputError
from rnnkit.runtime.tokenizer import (BOS_ID, EOS_ID, PAD_ID, TARGET_SPECIALS, CharTokenizer, WordTokenizer,
                                      pad_ids, tokenizer_from_dict)
from rnnkit.toolkit.checkpoint import (CONFIG_FILE, CURVES_FILE, FORMAT, FORMAT_VERSION, check_out_dir,
                                       load_weights, read_checkpoint, write_checkpoint)
from rnnkit.toolkit.configs import Seq2SeqTrainConfig as Seq2SeqTrainConfig
from rnnkit.toolkit.loop import fit, lower_loss, training_record
from rnnkit.toolkit.pairs import Example, Pair, group_pairs, group_split, read_pairs, write_pairs
from rnnkit.toolkit.seq2seq import Seq2Seq, Seq2SeqConfig, greedy_decode
from rnnkit.toolkit.seq_metrics import evaluate_outputs

DEV_FILE = "dev.tsv"
EVAL_BATCH = 256   # pairs per no-grad batch (dev loss and greedy decoding)

Tokenizer = CharTokenizer | WordTokenizer


@dataclass
class Seq2SeqTrainResult:
    out_dir: Path
    best_epoch: int
    dev: dict                      # the best epoch's dev evaluation
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0
    num_train: int = 0             # training pairs kept
    num_dev: int = 0               # dev sources


@dataclass
class Seq2SeqCheckpoint:
    model: Seq2Seq                 # eval mode
    config: Seq2SeqConfig
    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    meta: dict                     # the whole config.json
    path: Path

    def translate(self, sources: Sequence[str], max_len: int | None = None) -> list[str]:
        """Greedy outputs (in the target tokenizer's form) of ``sources``, in order."""
        return decode_texts(self.model, self.source_tokenizer, self.target_tokenizer, sources, max_len)


# -- tokens ------------------------------------------------------------------------------------

def build_tokenizers(pairs: Sequence[Pair], config: Seq2SeqTrainConfig) -> tuple[Tokenizer, Tokenizer]:
    """(source, target) tokenizers from the training pairs; the target's ids 2, 3 are <s>, </s>."""
    sources = dict.fromkeys(s for s, _ in pairs)   # a source with 3 references counts once
    targets = [t for _, t in pairs]

    def build(texts, level, lowercase, max_size, specials):
        if level == "char":
            return CharTokenizer.build(texts, lowercase=lowercase, specials=specials)
        return WordTokenizer.build(texts, lowercase=lowercase, max_size=max_size, min_freq=config.min_freq,
                                   specials=specials)

    return (build(sources, config.source_level, config.source_lowercase, config.source_max_vocab,
                  TARGET_SPECIALS[:2]),
            build(targets, config.target_level, config.target_lowercase, config.target_max_vocab, TARGET_SPECIALS))


def reference_form(tokenizer: Tokenizer, text: str) -> str:
    """``text`` as the target tokenizer would give it back: normalised, tokens joined like ``decode``."""
    if tokenizer.level == "char":
        return tokenizer.normalize(text)
    return " ".join(tokenizer.tokenize(text))


def encode_pairs(pairs: Sequence[Pair], src_tok: Tokenizer, tgt_tok: Tokenizer, max_source: int = 0,
                 max_target: int = 0) -> tuple[list[list[int]], list[list[int]], int]:
    """-> (source id rows, target id rows without <s>/</s>, pairs dropped: empty or over a limit)."""
    sources, targets, dropped = [], [], 0
    for s, t in pairs:
        si, ti = src_tok.encode(s), tgt_tok.encode(t)
        if not si or not ti or (max_source and len(si) > max_source) or (max_target and len(ti) > max_target):
            dropped += 1
            continue
        sources.append(si)
        targets.append(ti)
    return sources, targets, dropped


def tensors(sources: list[list[int]], targets: list[list[int]] | None = None):
    """Padded batch: source ids (B, S), lengths int64 (B,), and with targets the decoder input
    ``<s> t`` and the expected output ``t </s>`` (B, T+1)."""
    src, lens = pad_ids(sources)
    out = (torch.from_numpy(src), torch.from_numpy(lens).long())
    if targets is None:
        return out
    inp, _ = pad_ids([[BOS_ID] + t for t in targets])
    gold, _ = pad_ids([t + [EOS_ID] for t in targets])
    return out + (torch.from_numpy(inp), torch.from_numpy(gold))


def sampled_logits(model: Seq2Seq, src, lens, inp, ratio: float) -> torch.Tensor:
    """Scheduled sampling: step by step, each row's next input is the reference token with
    probability ``ratio``, else the model's own arg-max (no gradient through the choice)."""
    memory, keys, state = model.encode(src, lens)
    prev, steps = inp[:, :1], []
    for t in range(inp.shape[1]):
        logits, state, _ = model.decode(prev, state, memory, keys, lens)
        steps.append(logits)
        if t + 1 < inp.shape[1]:
            use_ref = torch.rand(inp.shape[0], 1) < ratio
            prev = torch.where(use_ref, inp[:, t + 1:t + 2], logits.argmax(-1).detach())
    return torch.cat(steps, 1)


# -- evaluation -------------------------------------------------------------------------------

def _by_length(rows: list[list[int]]) -> list[np.ndarray]:
    order = np.argsort([len(r) for r in rows], kind="stable")
    return [order[i:i + EVAL_BATCH] for i in range(0, len(order), EVAL_BATCH)]


def decode_texts(model: Seq2Seq, src_tok: Tokenizer, tgt_tok: Tokenizer, sources: Sequence[str],
                 max_len: int | None = None) -> list[str]:
    """Greedy outputs of ``sources`` (batched by length, returned in input order); a source
    with no tokens gives ''."""
    rows = [src_tok.encode(s) for s in sources]
    out = [""] * len(rows)
    keep = [i for i, r in enumerate(rows) if r]
    for idx in _by_length([rows[i] for i in keep]):
        ids = [keep[i] for i in idx]
        src, lens = tensors([rows[i] for i in ids])
        for i, hyp in zip(ids, greedy_decode(model, src, lens, max_len)):
            out[i] = tgt_tok.decode_target(hyp)
    return out


@torch.no_grad()
def teacher_forced_loss(model: Seq2Seq, sources: list[list[int]], targets: list[list[int]]) -> tuple[float, float]:
    """(mean token cross-entropy in nats, token accuracy) of the teacher-forced decoder."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for idx in _by_length(sources):
        src, lens, inp, gold = tensors([sources[i] for i in idx], [targets[i] for i in idx])
        logits = model(src, lens, inp)
        loss_sum += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1),
                                                ignore_index=PAD_ID, reduction="sum").item()
        mask = gold != PAD_ID
        correct += int(((logits.argmax(-1) == gold) & mask).sum())
        n += int(mask.sum())
    return loss_sum / max(n, 1), correct / max(n, 1)


def evaluate_seq2seq(model: Seq2Seq, src_tok: Tokenizer, tgt_tok: Tokenizer, dev_pairs: Sequence[Pair],
                     examples: Sequence[Example] | None = None, limit: int = 0) -> dict:
    """Teacher-forced ``loss`` over every dev pair, greedy-output scores (``evaluate_outputs``)
    over the dev sources (the first ``limit`` of them when > 0)."""
    sources, targets, _ = encode_pairs(dev_pairs, src_tok, tgt_tok)
    loss, token_acc = teacher_forced_loss(model, sources, targets) if sources else (float("nan"), 0.0)
    examples = list(examples if examples is not None else group_pairs(dev_pairs))
    if limit:
        examples = examples[:limit]
    hyps = decode_texts(model, src_tok, tgt_tok, [e.source for e in examples])
    refs = [[reference_form(tgt_tok, r) for r in e.references] for e in examples]
    return {"loss": loss, "token_accuracy": token_acc, **evaluate_outputs(hyps, refs),
            "samples": [{"source": e.source, "output": h, "references": list(r)}
                        for e, h, r in list(zip(examples, hyps, refs))[:5]]}


BETTER = {"accuracy": lambda dev, best: dev["accuracy"] > best["accuracy"],
          "bleu": lambda dev, best: dev["bleu"] > best["bleu"],
          "loss": lower_loss}


# -- training ---------------------------------------------------------------------------------

def split_dev(pairs: Sequence[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded dev split of TRAIN grouped by source (no source on both sides)."""
    train, dev = group_split(pairs, (1.0 - fraction, fraction), seed)
    if not train or not dev:
        raise InputError(f"{len({s for s, _ in pairs})} distinct sources cannot be split into train and a "
                         f"{fraction:.0%} dev part -- give more pairs or a --dev file")
    return train, dev


def train_seq2seq(train_path, out_dir, config: Seq2SeqTrainConfig | None = None, dev_path=None, fmt: str = "tsv",
                  keep_stress: bool = False, progress: bool = True,
                  log: Callable[[str], None] | None = print) -> Seq2SeqTrainResult:
    """Train on the pairs of ``train_path`` (format ``fmt``: tsv | cmudict | tatoeba; dev:
    ``dev_path`` in the same format, or a grouped ``dev_split`` of TRAIN) and write the best
    epoch's checkpoint to ``out_dir``."""
    config = config or Seq2SeqTrainConfig()
    log = log or (lambda _msg: None)
    out = check_out_dir(out_dir)
    pairs = read_pairs(train_path, fmt, config.encoding, keep_stress)
    if dev_path is not None:
        train_pairs, dev_pairs = pairs, read_pairs(dev_path, fmt, config.encoding, keep_stress)
        split = {"dev": str(dev_path)}
    else:
        train_pairs, dev_pairs = split_dev(pairs, config.dev_split, config.seed)
        split = {"dev_split": config.dev_split, "split_seed": config.seed, "grouped_by": "source"}
    split["dev_file"] = DEV_FILE
    init = load_seq2seq_checkpoint(config.init) if config.init else None
    if init is not None:  # fine-tuning keeps the model's vocabularies: its embeddings are indexed by them
        src_tok, tgt_tok = init.source_tokenizer, init.target_tokenizer
    else:
        src_tok, tgt_tok = build_tokenizers(train_pairs, config)
    sources, targets, dropped = encode_pairs(train_pairs, src_tok, tgt_tok, config.max_source_len,
                                             config.max_target_len)
    if not sources:
        raise InputError(f"{train_path}: no training pair left after the length filters "
                         f"(max_source_len {config.max_source_len}, max_target_len {config.max_target_len})")
    dev_examples = group_pairs(dev_pairs)
    log(f"{len(sources)} train pairs ({dropped} dropped by the length filters or empty), "
        f"{len(dev_examples)} dev sources ({len(dev_pairs)} pairs); vocabulary {src_tok.vocab_size} source / "
        f"{tgt_tok.vocab_size} target")
    if init is not None:
        model_config = Seq2SeqConfig(**{**init.config.to_dict(), "dropout": config.dropout})
        c = model_config
        log(f"fine-tuning {config.init}: {c.cell} {c.layers}x{c.hidden}, embed {c.embed}, attention {c.attention} "
            "(architecture and vocabularies from the checkpoint)")
    else:
        model_config = Seq2SeqConfig(source_vocab_size=src_tok.vocab_size, target_vocab_size=tgt_tok.vocab_size,
                                     cell=config.cell, embed=config.embed, hidden=config.hidden, layers=config.layers,
                                     bidirectional=config.bidirectional, attention=config.attention,
                                     dropout=config.dropout, bos_id=BOS_ID, eos_id=EOS_ID)
    lengths = np.array([len(s) for s in sources], dtype=np.float64)

    def step(model, idx):
        src, lens, inp, gold = tensors([sources[i] for i in idx], [targets[i] for i in idx])
        if config.teacher_forcing >= 1.0:
            logits = model(src, lens, inp)
        else:
            logits = sampled_logits(model, src, lens, inp, config.teacher_forcing)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1),
                                           ignore_index=PAD_ID, label_smoothing=config.label_smoothing)
        return loss, int((gold != PAD_ID).sum())

    def evaluate(model):
        return evaluate_seq2seq(model, src_tok, tgt_tok, dev_pairs, dev_examples, config.dev_decode)

    def report(dev):
        return ({"dev_accuracy": dev["accuracy"], "dev_token_error_rate": dev["token_error_rate"],
                 "dev_sequence_error_rate": dev["sequence_error_rate"], "dev_bleu": dev["bleu"]},
                f"dev token err {dev['token_error_rate']:.4f}  seq err {dev['sequence_error_rate']:.4f}  "
                f"BLEU {dev['bleu']:.2f}")

    def make_model():
        model = Seq2Seq(model_config)
        if init is not None:
            model.load_state_dict(init.model.state_dict())
        return model

    result = fit(config, make_model, lengths, step, evaluate, report, progress, log, better=BETTER[config.best_by])
    best = result.best_dev
    training = training_record(config, result, train_path, dev_path, split, len(sources), len(dev_examples),
                               best)
    training["format"] = fmt
    training["keep_stress"] = keep_stress
    path = save_seq2seq_checkpoint(out, result.model, src_tok, tgt_tok, training, dev_pairs)
    log(f"best epoch {result.best_epoch}: dev token err {best['token_error_rate']:.4f}, seq err "
        f"{best['sequence_error_rate']:.4f}, BLEU {best['bleu']:.2f}, loss {best['loss']:.4f}; "
        f"checkpoint written to {path} ({result.elapsed:.1f}s)")
    return Seq2SeqTrainResult(path, result.best_epoch, best, result.history, result.elapsed, len(sources),
                              len(dev_examples))


def save_seq2seq_checkpoint(out_dir, model: Seq2Seq, source_tokenizer: Tokenizer, target_tokenizer: Tokenizer,
                            training: dict | None = None, dev_pairs: Sequence[Pair] | None = None,
                            plot: bool = True) -> Path:
    c = model.config
    if source_tokenizer.vocab_size != c.source_vocab_size or target_tokenizer.vocab_size != c.target_vocab_size:
        raise ValueError(f"tokenizers have {source_tokenizer.vocab_size} / {target_tokenizer.vocab_size} entries "
                         f"but the model's vocab sizes are {c.source_vocab_size} / {c.target_vocab_size}")
    training = training or {}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "task": "seq2seq", "model": c.to_dict(),
            "tokenizer": source_tokenizer.to_dict(), "target_tokenizer": target_tokenizer.to_dict(),
            "training": training}

    def extras(tmp: Path) -> None:
        if dev_pairs is not None:
            write_pairs(tmp / DEV_FILE, dev_pairs)
        if plot and training.get("history"):
            from rnnkit.toolkit.plots import plot_curves
            best = training.get("dev", {})
            plot_curves(training["history"], tmp / CURVES_FILE,
                        title=f"best epoch {training.get('best_epoch')}: dev exact match "
                              f"{best.get('accuracy', float('nan')):.4f}, token err "
                              f"{best.get('token_error_rate', float('nan')):.4f}")

    return write_checkpoint(out_dir, meta, model.state_dict(), plot=False, extras=extras)


def load_seq2seq_checkpoint(path) -> Seq2SeqCheckpoint:
    """A ``train_seq2seq`` checkpoint -> model (eval mode), config, both tokenizers, config.json."""
    path = Path(path)
    meta, config, src_tok = read_checkpoint(path, "seq2seq", Seq2SeqConfig)
    cfg = path / CONFIG_FILE
    tgt_tok = tokenizer_from_dict(meta["target_tokenizer"], source=f"{cfg} (target_tokenizer)")
    problems = []
    if src_tok.vocab_size != config.source_vocab_size:
        problems.append(f"'tokenizer.vocab' has {src_tok.vocab_size} entries but 'model.source_vocab_size' "
                        f"is {config.source_vocab_size}")
    if tgt_tok.vocab_size != config.target_vocab_size:
        problems.append(f"'target_tokenizer.vocab' has {tgt_tok.vocab_size} entries but "
                        f"'model.target_vocab_size' is {config.target_vocab_size}")
    specials = tgt_tok.vocab[:len(TARGET_SPECIALS)]
    if specials != list(TARGET_SPECIALS) or (config.bos_id, config.eos_id) != (BOS_ID, EOS_ID):
        problems.append(f"'target_tokenizer.vocab' starts {specials} with bos_id/eos_id "
                        f"{config.bos_id}/{config.eos_id}, expected {list(TARGET_SPECIALS)} and {BOS_ID}/{EOS_ID}")
    if problems:
        raise BundleError(f"{cfg}: " + "; ".join(problems) + " -- the checkpoint is inconsistent; retrain it")
    model = load_weights(path, Seq2Seq(config), {"source_embedding.weight": "source_vocab_size",
                                                 "target_embedding.weight": "target_vocab_size",
                                                 "head.weight": "target_vocab_size"})
    return Seq2SeqCheckpoint(model, config, src_tok, tgt_tok, meta, path)


__all__ = ["Seq2SeqTrainConfig", "Seq2SeqTrainResult", "Seq2SeqCheckpoint", "train_seq2seq", "evaluate_seq2seq",
           "decode_texts", "reference_form", "build_tokenizers", "save_seq2seq_checkpoint",
           "load_seq2seq_checkpoint", "split_dev", "DEV_FILE"]
