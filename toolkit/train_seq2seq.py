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
evaluate); written after every epoch with the state to ``resume`` from, at the end without it.
``load_seq2seq_checkpoint`` reads it back.

Imports torch; the CLI imports this module inside the command body only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from rnnkit.runtime.errors import InputError
from rnnkit.runtime.tokenizer import BOS_ID, EOS_ID, PAD_ID, TARGET_SPECIALS, CharTokenizer, WordTokenizer
from rnnkit.toolkit import ddp
from rnnkit.toolkit.checkpoint import DEV_FILE, Seq2SeqCheckpoint, save_seq2seq_checkpoint
from rnnkit.toolkit.checkpoint import load_seq2seq_checkpoint as load_seq2seq_checkpoint
from rnnkit.toolkit.configs import Seq2SeqTrainConfig as Seq2SeqTrainConfig
from rnnkit.toolkit.loop import fit, lower_loss, training_record
from rnnkit.toolkit.pairs import Example, Pair, group_pairs, group_split, read_pairs, reference_form
from rnnkit.toolkit.resume import check_resume, fingerprint, read_resume_state, run_identity
from rnnkit.toolkit.seq2seq import Seq2Seq, Seq2SeqConfig, Tokenizer, by_length, decode_texts, tensors
from rnnkit.toolkit.seq_metrics import evaluate_outputs


@dataclass
class Seq2SeqTrainResult:
    out_dir: Path
    best_epoch: int
    dev: dict  # the best epoch's dev evaluation
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0
    num_train: int = 0  # training pairs kept
    num_dev: int = 0  # dev sources


# -- tokens ------------------------------------------------------------------------------------


def build_tokenizers(pairs: Sequence[Pair], config: Seq2SeqTrainConfig) -> tuple[Tokenizer, Tokenizer]:
    """(source, target) tokenizers from the training pairs; the target's ids 2, 3 are <s>, </s>."""
    sources = dict.fromkeys(s for s, _ in pairs)  # a source with 3 references counts once
    targets = [t for _, t in pairs]

    def build(texts, level, lowercase, max_size, specials):
        if level == "char":
            return CharTokenizer.build(texts, lowercase=lowercase, specials=specials)
        return WordTokenizer.build(
            texts, lowercase=lowercase, max_size=max_size, min_freq=config.min_freq, specials=specials
        )

    return (
        build(sources, config.source_level, config.source_lowercase, config.source_max_vocab, TARGET_SPECIALS[:2]),
        build(targets, config.target_level, config.target_lowercase, config.target_max_vocab, TARGET_SPECIALS),
    )


def encode_pairs(
    pairs: Sequence[Pair], src_tok: Tokenizer, tgt_tok: Tokenizer, max_source: int = 0, max_target: int = 0
) -> tuple[list[list[int]], list[list[int]], int]:
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
            prev = torch.where(use_ref, inp[:, t + 1 : t + 2], logits.argmax(-1).detach())
    return torch.cat(steps, 1)


# -- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def teacher_forced_loss(model: Seq2Seq, sources: list[list[int]], targets: list[list[int]]) -> tuple[float, float]:
    """(mean token cross-entropy in nats, token accuracy) of the teacher-forced decoder."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for idx in by_length(sources):
        src, lens, inp, gold = tensors([sources[i] for i in idx], [targets[i] for i in idx])
        logits = model(src, lens, inp)
        loss_sum += nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=PAD_ID, reduction="sum"
        ).item()
        mask = gold != PAD_ID
        correct += int(((logits.argmax(-1) == gold) & mask).sum())
        n += int(mask.sum())
    return loss_sum / max(n, 1), correct / max(n, 1)


def evaluate_seq2seq(
    model: Seq2Seq,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    dev_pairs: Sequence[Pair],
    examples: Sequence[Example] | None = None,
    limit: int = 0,
) -> dict:
    """Teacher-forced ``loss`` over every dev pair, greedy-output scores (``evaluate_outputs``)
    over the dev sources (the first ``limit`` of them when > 0)."""
    sources, targets, _ = encode_pairs(dev_pairs, src_tok, tgt_tok)
    loss, token_acc = teacher_forced_loss(model, sources, targets) if sources else (float("nan"), 0.0)
    examples = list(examples if examples is not None else group_pairs(dev_pairs))
    if limit:
        examples = examples[:limit]
    hyps = decode_texts(model, src_tok, tgt_tok, [e.source for e in examples])
    refs = [[reference_form(tgt_tok, r) for r in e.references] for e in examples]
    return {
        "loss": loss,
        "token_accuracy": token_acc,
        **evaluate_outputs(hyps, refs),
        "samples": [
            {"source": e.source, "output": h, "references": list(r)} for e, h, r in list(zip(examples, hyps, refs))[:5]
        ],
    }


BETTER = {
    "accuracy": lambda dev, best: dev["accuracy"] > best["accuracy"],
    "bleu": lambda dev, best: dev["bleu"] > best["bleu"],
    "loss": lower_loss,
}


# -- training ---------------------------------------------------------------------------------


def split_dev(pairs: Sequence[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded dev split of TRAIN grouped by source (no source on both sides)."""
    train, dev = group_split(pairs, (1.0 - fraction, fraction), seed)
    if not train or not dev:
        raise InputError(
            f"{len({s for s, _ in pairs})} distinct sources cannot be split into train and a "
            f"{fraction:.0%} dev part -- give more pairs or a --dev file"
        )
    return train, dev


def _read_splits(
    train_path, dev_path, fmt: str, keep_stress: bool, config: Seq2SeqTrainConfig
) -> tuple[list[Pair], list[Pair], dict]:
    """-> (training pairs, dev pairs, the split's record): ``dev_path``'s pairs, or a grouped split of TRAIN."""
    pairs = read_pairs(train_path, fmt, config.encoding, keep_stress)
    if dev_path is not None:
        train_pairs, dev_pairs = pairs, read_pairs(dev_path, fmt, config.encoding, keep_stress)
        split = {"dev": str(dev_path)}
    else:
        train_pairs, dev_pairs = split_dev(pairs, config.dev_split, config.seed)
        split = {"dev_split": config.dev_split, "split_seed": config.seed, "grouped_by": "source"}
    return train_pairs, dev_pairs, {**split, "dev_file": DEV_FILE}


def _model_config(
    config: Seq2SeqTrainConfig,
    init: Seq2SeqCheckpoint | None,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    log: Callable[[str], None],
) -> Seq2SeqConfig:
    """The architecture to train: the options' (new vocabularies), or ``--init``'s checkpoint's with
    the options' dropout (fine-tuning keeps the shapes its weights have)."""
    if init is None:
        return Seq2SeqConfig(
            source_vocab_size=src_tok.vocab_size,
            target_vocab_size=tgt_tok.vocab_size,
            cell=config.cell,
            embed=config.embed,
            hidden=config.hidden,
            layers=config.layers,
            bidirectional=config.bidirectional,
            attention=config.attention,
            dropout=config.dropout,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
        )
    c = Seq2SeqConfig(**{**init.config.to_dict(), "dropout": config.dropout})
    log(
        f"fine-tuning {config.init}: {c.cell} {c.layers}x{c.hidden}, embed {c.embed}, attention {c.attention} "
        "(architecture and vocabularies from the checkpoint)"
    )
    return c


def train_seq2seq(
    train_path,
    out_dir,
    config: Seq2SeqTrainConfig | None = None,
    dev_path=None,
    fmt: str = "tsv",
    keep_stress: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    resume: bool = False,
    force: bool | None = None,
) -> Seq2SeqTrainResult:
    """Train on the pairs of ``train_path`` (format ``fmt``: tsv | cmudict | tatoeba; dev:
    ``dev_path`` in the same format, or a grouped ``dev_split`` of TRAIN) and write the best
    epoch's checkpoint to ``out_dir`` (``resume``: continue the interrupted run there, with the
    same options and data; only ``epochs`` may change).
    ``force``: what to do with an earlier run in ``out_dir`` (``resume.read_resume_state``)."""
    config = ddp.prepare(config or Seq2SeqTrainConfig())  # under torchrun: join its process group
    log = log if log and ddp.is_main() else (lambda _msg: None)
    out = Path(out_dir)
    interrupted = read_resume_state(out, resume, force)
    train_pairs, dev_pairs, split = _read_splits(train_path, dev_path, fmt, keep_stress, config)
    distilled = None
    if config.teacher:  # sequence-level distillation (toolkit.distill): decoded once, cached
        from rnnkit.toolkit.distill import mix_pairs, open_teacher, teacher_outputs

        teacher = open_teacher(config.teacher, "seq2seq")
        distinct = list(dict.fromkeys(s for s, _ in train_pairs))
        outputs, distilled = teacher_outputs(teacher, distinct, config.distill_beam, log=log, int8=config.distill_int8)
        train_pairs, counts = mix_pairs(train_pairs, dict(zip(distinct, outputs)), config.distill_mix)
        distilled |= counts
        log(
            f"distilling from {teacher.path}: {counts['teacher_pairs']} teacher pairs ({config.distill_mix}), "
            f"{counts['agree_with_a_reference']} of {counts['sources']} outputs equal a reference"
        )
    init = load_seq2seq_checkpoint(config.init) if config.init else None
    if init is not None:  # fine-tuning keeps the model's vocabularies: its embeddings are indexed by them
        src_tok, tgt_tok = init.source_tokenizer, init.target_tokenizer
    else:
        src_tok, tgt_tok = build_tokenizers(train_pairs, config)
    sources, targets, dropped = encode_pairs(
        train_pairs, src_tok, tgt_tok, config.max_source_len, config.max_target_len
    )
    if not sources:
        raise InputError(
            f"{train_path}: no training pair left after the length filters "
            f"(max_source_len {config.max_source_len}, max_target_len {config.max_target_len})"
        )
    dev_examples = group_pairs(dev_pairs)
    log(
        f"{len(sources)} train pairs ({dropped} dropped by the length filters or empty), "
        f"{len(dev_examples)} dev sources ({len(dev_pairs)} pairs); vocabulary {src_tok.vocab_size} source / "
        f"{tgt_tok.vocab_size} target"
    )
    model_config = _model_config(config, init, src_tok, tgt_tok, log)
    lengths = np.array([len(s) for s in sources], dtype=np.float64)
    # the encoded pairs: the vocabularies (built here, or --init's) are covered too
    identity = run_identity(
        "seq2seq",
        config,
        fingerprint(sources, targets, encode_pairs(dev_pairs, src_tok, tgt_tok)),
        format=fmt,
        keep_stress=keep_stress,
        **({"teacher_sha": distilled["teacher"]["sha256"]} if distilled else {}),
    )
    if interrupted is not None:
        check_resume(out, interrupted, identity, config.epochs)
    if ddp.needs_launch(config.nproc):  # --nproc N: N processes run this function again, rank 0's result
        return ddp.launch(
            train_seq2seq,
            config.nproc,
            train_path,
            out_dir,
            config,
            dev_path,
            fmt,
            keep_stress,
            progress=progress,
            log=log,
            resume=resume,
            force=force,
        )

    def step(model, idx):
        src, lens, inp, gold = tensors([sources[i] for i in idx], [targets[i] for i in idx])
        if config.teacher_forcing >= 1.0:
            logits = model(src, lens, inp)
        else:
            logits = sampled_logits(model, src, lens, inp, config.teacher_forcing)
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            gold.reshape(-1),
            ignore_index=PAD_ID,
            label_smoothing=config.label_smoothing,
        )
        return loss, int((gold != PAD_ID).sum())

    def evaluate(model):
        return evaluate_seq2seq(model, src_tok, tgt_tok, dev_pairs, dev_examples, config.dev_decode)

    def report(dev):
        return (
            {
                "dev_accuracy": dev["accuracy"],
                "dev_token_error_rate": dev["token_error_rate"],
                "dev_sequence_error_rate": dev["sequence_error_rate"],
                "dev_bleu": dev["bleu"],
            },
            f"dev token err {dev['token_error_rate']:.4f}  seq err {dev['sequence_error_rate']:.4f}  "
            f"BLEU {dev['bleu']:.2f}",
        )

    def make_model():
        model = Seq2Seq(model_config)
        if init is not None:
            model.load_state_dict(init.model.state_dict())
        return model

    def save(result, snapshot=None):  # after each epoch: with the resume state, no plots; at the end: None
        training = training_record(
            config, result, train_path, dev_path, split, len(sources), len(dev_examples), result.best_dev
        )
        training["format"] = fmt
        training["keep_stress"] = keep_stress
        training["processes"] = config.nproc
        if distilled is not None:
            training["distill"] = distilled
        return save_seq2seq_checkpoint(
            out, result.model, src_tok, tgt_tok, training, dev_pairs, plot=snapshot is None, resume=snapshot
        )

    result = fit(
        config,
        make_model,
        lengths,
        step,
        evaluate,
        report,
        progress,
        log,
        better=BETTER[config.best_by],
        save=save,
        identity=identity,
        resume=interrupted,
    )
    best = result.best_dev
    path = save(result) if ddp.is_main() else out  # the checkpoint is written once, by rank 0
    log(
        f"best epoch {result.best_epoch}: dev token err {best['token_error_rate']:.4f}, seq err "
        f"{best['sequence_error_rate']:.4f}, BLEU {best['bleu']:.2f}, loss {best['loss']:.4f}; "
        f"checkpoint written to {path} ({result.elapsed:.1f}s)"
    )
    return Seq2SeqTrainResult(
        path, result.best_epoch, best, result.history, result.elapsed, len(sources), len(dev_examples)
    )


__all__ = [
    "Seq2SeqTrainConfig",
    "Seq2SeqTrainResult",
    "Seq2SeqCheckpoint",
    "train_seq2seq",
    "evaluate_seq2seq",
    "decode_texts",
    "reference_form",
    "build_tokenizers",
    "save_seq2seq_checkpoint",
    "load_seq2seq_checkpoint",
    "split_dev",
    "DEV_FILE",
]
