"""Reading labelled text-classification data and splitting off a dev set.

Formats (picked by the path): ``.csv`` / ``.tsv`` / ``.jsonl`` (``.json``, ``.ndjson``) read by the
one record reader (``rnnkit.runtime.records``: header row required for CSV/TSV, RFC 4180 quoting
in CSV, none in TSV, blank lines skipped), or a folder of plain-text files, one file per label,
one example per line (the MR layout: ``rt-polarity.pos`` -> label ``pos``).  A JSONL label may be
a string or an integer.  Files are decoded strictly with ``encoding`` (default utf-8): an invalid
byte is reported with its line and byte offset instead of being replaced silently, because a
replaced character changes tokens without anyone noticing.  (The MR copy in
``shared/datasets/mr_polarity`` is valid UTF-8; the Latin-1 copy used by Kim 2014 needs
``encoding="latin-1"``.)  A leading byte-order mark is dropped.  The folder reader skips
sub-folders, hidden files and documentation (README*, LICENSE*, CHANGELOG*, *.md, *.rst).

Bad records stop the read with one ``InputError`` giving their count and the first five (file:line
and why): training data is curated, and training on the rest would silently give another model
(``rnnkit predict``, by contrast, reports bad records and goes on; see docs/records.md).

Pure stdlib; no torch (the CLI imports this module to validate data cheaply).
"""

from __future__ import annotations

import codecs
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rnnkit.runtime.errors import InputError
from rnnkit.runtime.records import FORMATS, read_records

# Folder reader: these names are documentation, not labels (the MR folder has a README.md).
IGNORED_PREFIXES = ("readme", "license", "licence", "changelog")
IGNORED_SUFFIXES = (".md", ".rst")
# Files named like `pos.txt` take their label from the stem, not from the text extension.
TEXT_SUFFIXES = (".txt", ".text")
SHOWN = 5  # bad records listed in the error (the count covers all of them)
# Training runs from Python (TrainConfig) and from `rnnkit train` / `rnnkit export`: name both.
HINT = {"encoding": "encoding= (--encoding)"}


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    source: str  # "file:line", for error messages and error analysis


def read_examples(path, text_field: str = "text", label_field: str = "label", encoding: str = "utf-8") -> list[Example]:
    """Read a CSV/TSV/JSONL file or a folder of one-file-per-label texts."""
    path = Path(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise InputError(
            f"unknown encoding {encoding!r} -- use a Python codec name such as 'utf-8' or 'latin-1'"
        ) from None
    if not path.exists():
        raise InputError(f"{path}: no such file or folder -- check the path")
    if path.is_dir():
        return _read_folder(path, encoding)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(
            f"{path}: unknown data format {suffix or '(no extension)'!r} -- use a .csv, "
            ".tsv, .jsonl/.json file or a folder with one text file per label"
        )
    hint = {**HINT, text_field: "text_field= (--text-field)", label_field: "label_field= (--label-field)"}
    examples, bad = [], []
    for source, values, error in read_records(
        path, (text_field, label_field), encoding=encoding, hint=hint, labels=(label_field,)
    ):
        error = error or _problem(values[text_field], values[label_field], text_field, label_field)
        if error:
            bad.append((source, error))
        else:
            examples.append(Example(values[text_field], values[label_field].strip(), source))
    _refuse(path, bad)
    if not examples:
        what = "has a header but no examples" if FORMATS[suffix] in ("csv", "tsv") else "is empty"
        raise InputError(f"{path}: the file {what} -- it needs at least one example")
    return examples


def _problem(text: str, label: str, text_field: str, label_field: str) -> str | None:
    if not text.strip():
        return f"{text_field!r} is empty -- remove the line or give it a text"
    if not label.strip():
        return f"{label_field!r} is empty -- every example needs a label"
    return None


def _refuse(path: Path, bad: list[tuple[str, str]]) -> None:
    if bad:
        shown = "".join(f"\n  {source}: {error}" for source, error in bad[:SHOWN])
        more = f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise InputError(
            f"{path}: {len(bad)} bad record{'s' if len(bad) > 1 else ''}; training data is used whole "
            f"(training on the rest would silently give another model) -- fix or remove "
            f"{'them' if len(bad) > 1 else 'it'}:{shown}{more}"
        )


def folder_label(name: str) -> str:
    """``rt-polarity.pos`` -> ``pos``; ``pos.txt`` / ``pos`` -> ``pos``."""
    p = Path(name)
    if p.suffix and p.suffix.lower() not in TEXT_SUFFIXES:
        return p.suffix[1:]
    return p.stem


def _ignored(p: Path) -> bool:
    n = p.name.lower()
    return not p.is_file() or n.startswith(".") or n.startswith(IGNORED_PREFIXES) or n.endswith(IGNORED_SUFFIXES)


def _read_folder(path: Path, encoding: str) -> list[Example]:
    files = sorted(p for p in path.iterdir() if not _ignored(p))
    if not files:
        raise InputError(
            f"{path}: the folder has no data files -- put one text file per label "
            "in it (e.g. reviews.pos, reviews.neg), one example per line"
        )
    examples, bad = [], []
    for f in files:
        label = folder_label(f.name)
        # plain text whatever the extension: one example per line, blank lines skipped
        for source, values, error in read_records(f, ("text",), encoding=encoding, format="txt", hint=HINT):
            if error:
                bad.append((source, error))
            else:
                examples.append(Example(values["text"], label, source))
    _refuse(path, bad)
    if not examples:
        raise InputError(f"{path}: the data files are empty -- put one example per line in them")
    return examples


def split_dev(examples: list[Example], fraction: float = 0.1, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Seeded split stratified by label -> (train, dev), each in the input order.

    Each label keeps round(n * fraction) examples for dev (at least 1 when it has 2+).
    The order comes from sha256(seed, label, index), not from a RNG, so the split is the
    same on every platform and every numpy/Python version.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"dev split fraction must be between 0 and 1 (exclusive), got {fraction}")
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    dev_idx: set[int] = set()
    for label, idx in by_label.items():
        n = len(idx)
        k = min(n - 1, max(1, round(n * fraction))) if n >= 2 else 0
        key = lambda j: hashlib.sha256(f"{seed}\0{label}\0{j}".encode()).digest()  # noqa: E731
        dev_idx.update(sorted(idx, key=key)[:k])
    if not dev_idx:
        raise InputError(
            f"dev split of {fraction} leaves no dev examples from {len(examples)} "
            "examples -- give a dev file or more data"
        )
    train = [ex for i, ex in enumerate(examples) if i not in dev_idx]
    dev = [ex for i, ex in enumerate(examples) if i in dev_idx]
    return train, dev


def check_labels(train: list[Example], dev: list[Example]) -> list[str]:
    """-> sorted label set of train; ``InputError`` if dev has labels train never shows."""
    labels = sorted({ex.label for ex in train})
    if len(labels) < 2:
        raise InputError(
            f"training data has {len(labels)} label(s) {labels} -- a classifier needs "
            "at least 2; check the label column / file names"
        )
    unseen = sorted({ex.label for ex in dev} - set(labels))
    if unseen:
        first = next(ex.source for ex in dev if ex.label in unseen)
        raise InputError(
            f"dev labels {unseen} never occur in training (first at {first}); training "
            f"labels are {labels} -- fix the labels or add training examples for them"
        )
    return labels
