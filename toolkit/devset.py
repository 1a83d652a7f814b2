"""Finding the dev set an export checks int8 agreement (and accuracy) on.

``--dev FILE`` wins; otherwise the checkpoint's own record of its training data is used
when those files are still on disk: its dev file, or the same seeded split of its
training file that training held out.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..export.pipeline import DevSet
from ..runtime.errors import BundleError


def dev_set_for(checkpoint, dev_path=None, text_field="text", label_field="label") -> DevSet | None:
    config_path = Path(checkpoint) / "config.json"
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(
            f"{config_path}: cannot read the checkpoint config ({exc}); is {checkpoint} a checkpoint?"
        ) from None
    training, task = meta.get("training", {}), meta.get("task", "classify")
    config = training.get("config", {})
    if task == "lm":
        read = _text_reader(config)
    elif task == "seq2seq":
        # training wrote the dev pairs it used beside the weights, in their final (normalised) form
        own = Path(checkpoint) / "dev.tsv"
        if dev_path:
            return _read_pairs_dev(dev_path, training.get("format", "tsv"))
        return _read_pairs_dev(own, "tsv") if own.is_file() else None
    else:
        read = _tagged_reader(config) if task == "tag" else _labelled_reader(config, text_field, label_field, dev_path)
    if dev_path:
        return read(dev_path, str(dev_path))
    if training.get("dev_path") and Path(training["dev_path"]).exists():
        return read(training["dev_path"], training["dev_path"])
    split, train_path = training.get("split", {}), training.get("train_path")
    if train_path and Path(train_path).exists() and split.get("dev_split"):
        seed = split.get("split_seed", 0)
        where = "last" if split.get("by") == "position" else f"seed {seed}"
        return read(train_path, f"{train_path} (dev split {split['dev_split']}, {where})", split["dev_split"], seed)
    return None


def _labelled_reader(config: dict, text_field: str, label_field: str, explicit: bool):
    from .data import read_examples, split_dev

    fields = dict(
        text_field=text_field if explicit else config.get("text_field", "text"),
        label_field=label_field if explicit else config.get("label_field", "label"),
        encoding=config.get("encoding", "utf-8"),
    )

    def read(path, source, fraction=None, seed=0):
        examples = read_examples(path, **fields)
        if fraction:
            _, examples = split_dev(examples, fraction, seed)
        return DevSet([e.text for e in examples], [e.label for e in examples], source)

    return read


def _tagged_reader(config: dict):
    from .conll import read_tagged
    from .train_tag import split_sentences

    def read(path, source, fraction=None, seed=0):
        sentences = read_tagged(path, column=config.get("column", "upos"), encoding=config.get("encoding", "utf-8"))
        if fraction:
            _, sentences = split_sentences(sentences, fraction, seed)
        return DevSet([s.tokens for s in sentences], [s.tags for s in sentences], source)

    return read


def _text_reader(config: dict):
    """Language models: the dev text as one item (without a dev file: the last fraction of TRAIN)."""
    from .train_lm import read_text, split_by_position

    def read(path, source, fraction=None, seed=0):
        text = read_text(path, config.get("encoding", "utf-8"))
        if fraction:
            _, text = split_by_position(text, fraction)
        if config.get("tokenizer") == "whitespace" and config.get("eos_per_line", True) and not text.endswith("\n"):
            text += "\n"  # as training read it: the last line ends with its end-of-line token too
        return DevSet([text], None, source)

    return read


def _read_pairs_dev(path, fmt: str) -> DevSet:
    """Encoder-decoders: sources with their first reference (the int8 gate compares decisions along
    fp32's own outputs; the references only add exact match / token error rate to the record)."""
    from .pairs import group_pairs, read_pairs

    examples = group_pairs(read_pairs(path, fmt))
    return DevSet([e.source for e in examples], [e.references[0] for e in examples], str(path))
