"""Export a checkpoint written by ``rnnkit train`` (any task): what ``rnnkit export`` runs.

Reads the checkpoint (``rnnkit.toolkit.checkpoint``: the torch module, its tokenizer(s), labels),
lets the task's export module make its ``Exportable`` from them (``rnnkit.export.task_*``'s
``from_module``) and runs the one export pipeline (``rnnkit.export.pipeline.export``).  The
export side never reads checkpoints, so the imports run one way: toolkit -> export -> runtime.
Messages name the arguments as the Python API does; the CLI passes ``flags=CLI_FLAGS``.

Imports torch (through the checkpoint); the CLI imports this module inside the command body only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from rnnkit.export import task_classify, task_lm, task_seq2seq, task_tag
from rnnkit.export.forms import DEFAULT_GRAPH_FORM
from rnnkit.export.pipeline import DEFAULT_MAX_LENGTH, export
from rnnkit.export.pipeline import DevSet as DevSet
from rnnkit.export.validate import Arguments
from rnnkit.runtime.errors import InputError
from rnnkit.runtime.lexicon import LEXICON_FILE, write_lexicon
from rnnkit.toolkit.checkpoint import LOADERS, checkpoint_task
from rnnkit.toolkit.pairs import read_pairs, reference_form

# How `rnnkit export` names the arguments of export_checkpoint in messages (``flags=CLI_FLAGS``).
CLI_FLAGS = {
    "dev": "--dev FILE",
    "int8": "--int8",
    "min_agreement": "--min-agreement",
    "max_loss_delta": "--max-loss-delta",
    "max_length": "--max-length",
    "lexicon": "--lexicon",
    "lexicon_format": "--lexicon-format",
    "graph_form": "--graph-form",
    "int8_format": "--int8-format",
    "validate_on": "--validate-on",
}


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    int8: bool = False,
    dev: DevSet | None = None,
    min_agreement: float = 0.99,
    max_length: int = DEFAULT_MAX_LENGTH,
    log: Callable[[str], None] = print,
    max_loss_delta: float = 0.02,
    lexicon: str | os.PathLike | None = None,
    lexicon_format: str | None = None,
    flags: dict[str, str] | None = None,
    graph_form: str = DEFAULT_GRAPH_FORM,
    int8_format: str | None = None,
    validate_on: str | list[str] | None = None,
) -> dict:
    """``max_loss_delta``: language models only, the int8 gate (nats/token of dev loss above fp32);
    ``min_agreement``: classifiers and taggers (share of dev labels/tags int8 agrees with fp32 on);
    ``lexicon``: encoder-decoders only, pairs stored in the bundle for ``translate(lookup=True)``
    (format ``lexicon_format``, default the training data's; CMUdict stress as in training);
    ``max_length``: the most tokens per input the bundle accepts, validated (a language model
    records at most ``rnnkit.export.task_lm.MAX_CHUNK``, the chunk its runtime feeds at once);
    ``flags``: how messages name these arguments (``CLI_FLAGS`` for the CLI; default: as here);
    ``graph_form`` / ``int8_format``: ``rnnkit.export.forms`` ("onnxruntime" or "portable"; an int8 format
    needs ``int8``, default ``DEFAULT_INT8_FORMAT``);
    ``validate_on``: other ONNX consumers to validate every graph on ("reference,openvino,tract").
    The manifest names the checkpoint and training files without their folders (with a sha256 for
    files still on disk: ``rnnkit.export.provenance``)."""
    args = Arguments(flags)
    task = checkpoint_task(checkpoint)
    if lexicon is not None and task != "seq2seq":
        raise InputError(
            f"{args('lexicon')}: only encoder-decoder (seq2seq) bundles carry a lexicon; {checkpoint} "
            f"is a {task} checkpoint"
        )
    ckpt = LOADERS[task](checkpoint)
    if task == "seq2seq":
        item = task_seq2seq.from_module(ckpt.model, ckpt.source_tokenizer, ckpt.target_tokenizer)
    elif task == "lm":
        item = task_lm.from_module(ckpt.model, ckpt.tokenizer, max_loss_delta)
    elif task == "tag":
        item = task_tag.from_module(ckpt.model, ckpt.tokenizer, ckpt.charset, ckpt.tags)
    else:
        item = task_classify.from_module(ckpt.model, ckpt.tokenizer, ckpt.labels)
    attachments = {"lexicon": _lexicon_attachment(lexicon, lexicon_format, ckpt, args)} if lexicon is not None else {}
    source = {"checkpoint": str(Path(checkpoint).resolve()), "training": _training_summary(ckpt.meta)}
    return export(
        item,
        out,
        int8=int8,
        dev=dev,
        min_agreement=min_agreement,
        max_length=max_length,
        log=log,
        source=source,
        attachments=attachments,
        flags=flags,
        graph_form=graph_form,
        int8_format=int8_format,
        validate_on=validate_on,
    )


def _lexicon_attachment(path, fmt: str | None, ckpt, args: Arguments) -> Callable[[Path], dict]:
    training = ckpt.meta.get("training", {})
    lexicon_path, fmt = Path(path), fmt or training.get("format", "tsv")
    try:
        pairs = read_pairs(lexicon_path, fmt, keep_stress=bool(training.get("keep_stress", False)))
    except InputError as exc:
        raise InputError(
            f"{args('lexicon')} (read as {fmt}, the training data's format): {exc}; give "
            f"{args('lexicon_format', 'tsv|cmudict|tatoeba')} to read it otherwise"
        ) from None
    target = ckpt.target_tokenizer

    def write(folder: Path) -> dict:
        count = write_lexicon(
            folder / LEXICON_FILE, ((s, reference_form(target, t)) for s, t in pairs), ckpt.source_tokenizer.normalize
        )
        return {"file": LEXICON_FILE, "sources": count, "from": str(lexicon_path.resolve())}

    return write


def _training_summary(meta: dict) -> dict:
    training = dict(meta.get("training", {}))
    training.pop("history", None)  # the checkpoint keeps the curves; the bundle keeps the outcome
    return training
