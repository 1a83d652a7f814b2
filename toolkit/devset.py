"""Finding the dev set an export checks int8 agreement (and accuracy) on.

``--dev FILE`` wins; otherwise the checkpoint's own record of its training data is
used when those files are still on disk: its dev file, or the same seeded split of its
training file that training held out.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..export.exporter import DevSet
from ..runtime.errors import BundleError


def dev_set_for(checkpoint, dev_path=None, text_field="text", label_field="label") -> DevSet | None:
    from .data import read_examples, split_dev

    if dev_path:
        examples = read_examples(dev_path, text_field=text_field, label_field=label_field)
        return DevSet([e.text for e in examples], [e.label for e in examples], str(dev_path))
    config_path = Path(checkpoint) / "config.json"
    try:
        training = json.loads(config_path.read_text(encoding="utf-8")).get("training", {})
    except (OSError, ValueError) as exc:
        raise BundleError(f"{config_path}: cannot read the checkpoint config ({exc}); is {checkpoint} a checkpoint?") from None
    config = training.get("config", {})
    fields = dict(text_field=config.get("text_field", "text"), label_field=config.get("label_field", "label"),
                  encoding=config.get("encoding", "utf-8"))
    if training.get("dev_path") and Path(training["dev_path"]).exists():
        examples = read_examples(training["dev_path"], **fields)
        return DevSet([e.text for e in examples], [e.label for e in examples], training["dev_path"])
    split = training.get("split", {})
    train_path = training.get("train_path")
    if train_path and Path(train_path).exists() and split.get("dev_split"):
        _, dev = split_dev(read_examples(train_path, **fields), split["dev_split"], split.get("split_seed", 0))
        return DevSet([e.text for e in dev], [e.label for e in dev],
                      f"{train_path} (dev split {split['dev_split']}, seed {split.get('split_seed', 0)})")
    return None
