"""Reading labelled text-classification data and splitting off a dev set.

Formats (picked by the path): ``.csv`` / ``.tsv`` (csv module, header row required),
``.jsonl`` / ``.json`` (one JSON object per line), or a folder of plain-text files, one
file per label, one example per line (the MR layout: ``rt-polarity.pos`` -> label ``pos``).
Every problem raises ``InputError`` naming the file, the line and the column/key, and what
to do.  Files are decoded strictly with ``encoding`` (default utf-8): an invalid byte is
reported with its line and byte offset instead of being replaced silently, because a
replaced character changes tokens without anyone noticing.  (The MR copy in
``shared/datasets/mr_polarity`` is valid UTF-8; the Latin-1 copy used by Kim 2014 needs
``encoding="latin-1"``.)  A leading byte-order mark is dropped.  The folder reader skips
sub-folders, hidden files and documentation (README*, LICENSE*, CHANGELOG*, *.md, *.rst).

Pure stdlib; no torch (the CLI imports this module to validate data cheaply).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rnnkit.runtime.errors import InputError

# Folder reader: these names are documentation, not labels (the MR folder has a README.md).
IGNORED_PREFIXES = ("readme", "license", "licence", "changelog")
IGNORED_SUFFIXES = (".md", ".rst")
# Files named like `pos.txt` take their label from the stem, not from the text extension.
TEXT_SUFFIXES = (".txt", ".text")


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    source: str  # "file:line", for error messages and error analysis


def read_examples(path, text_field: str = "text", label_field: str = "label",
                  encoding: str = "utf-8") -> list[Example]:
    """Read a CSV/TSV/JSONL file or a folder of one-file-per-label texts."""
    path = Path(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r} -- use a Python codec name such as "
                         "'utf-8' or 'latin-1'") from None
    if not path.exists():
        raise InputError(f"{path}: no such file or folder -- check the path")
    if path.is_dir():
        return _read_folder(path, encoding)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _read_table(path, text_field, label_field, encoding,
                           delimiter="\t" if suffix == ".tsv" else ",")
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, text_field, label_field, encoding)
    raise InputError(f"{path}: unknown data format {suffix or '(no extension)'!r} -- use a .csv, "
                     ".tsv, .jsonl/.json file or a folder with one text file per label")


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(
            f"{path}:{line}: invalid {encoding} byte 0x{data[e.start]:02X} at byte offset {e.start} "
            f"(line {line}, byte {column} of the line) -- re-save the file as UTF-8 or pass the "
            "file's real encoding (encoding='latin-1' / --encoding latin-1)") from None
    if text.startswith("\ufeff"):  # byte-order mark written by some editors / Excel
        text = text[1:]
    if not text.strip():
        raise InputError(f"{path}: the file is empty -- it needs at least one example")
    return text


def _check(path: Path, line: int, text, label, text_field: str, label_field: str) -> Example:
    if text is None or not str(text).strip():
        raise InputError(f"{path}:{line}: {text_field!r} is empty -- remove the line or give it a text")
    if label is None or not str(label).strip():
        raise InputError(f"{path}:{line}: {label_field!r} is empty -- every example needs a label")
    return Example(str(text), str(label).strip(), f"{path}:{line}")


def _read_table(path: Path, text_field: str, label_field: str, encoding: str,
                delimiter: str) -> list[Example]:
    reader = csv.reader(io.StringIO(_decode(path, encoding), newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as e:
        raise InputError(f"{path}:1: cannot parse the header row ({e})") from None
    header = [h.strip() for h in header]
    missing = [f for f in (text_field, label_field) if f not in header]
    if missing:
        raise InputError(
            f"{path}:1: header has no column {' or '.join(map(repr, missing))}; available columns: "
            f"{', '.join(map(repr, header))} -- the first row must be a header; choose others with "
            "text_field=/label_field= (--text-field / --label-field)")
    ti, li = header.index(text_field), header.index(label_field)
    examples = []
    line = reader.line_num
    try:
        for row in reader:
            start, line = line + 1, reader.line_num
            if not row or not any(c.strip() for c in row):
                continue  # blank line
            if len(row) != len(header):
                raise InputError(f"{path}:{start}: row has {len(row)} fields but the header has "
                                 f"{len(header)} -- quote fields containing {delimiter!r}")
            examples.append(_check(path, start, row[ti], row[li], text_field, label_field))
    except csv.Error as e:
        raise InputError(f"{path}:{reader.line_num}: cannot parse the row ({e})") from None
    if not examples:
        raise InputError(f"{path}: the file has a header but no examples")
    return examples


def _read_jsonl(path: Path, text_field: str, label_field: str, encoding: str) -> list[Example]:
    examples = []
    for line, raw in enumerate(_decode(path, encoding).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{line}: invalid JSON at column {e.colno} ({e.msg}) -- "
                             "the file must hold one JSON object per line") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{line}: expected a JSON object per line, got {type(obj).__name__}")
        for field in (text_field, label_field):
            if field not in obj:
                raise InputError(
                    f"{path}:{line}: object has no key {field!r}; available keys: "
                    f"{', '.join(map(repr, obj))} -- choose others with text_field=/label_field= "
                    "(--text-field / --label-field)")
        text, label = obj[text_field], obj[label_field]
        if not isinstance(text, str):
            raise InputError(f"{path}:{line}: {text_field!r} is {type(text).__name__}, expected a string")
        if isinstance(label, (dict, list)):
            raise InputError(f"{path}:{line}: {label_field!r} is {type(label).__name__}, "
                             "expected a string or number")
        examples.append(_check(path, line, text, label, text_field, label_field))
    return examples


def folder_label(name: str) -> str:
    """``rt-polarity.pos`` -> ``pos``; ``pos.txt`` / ``pos`` -> ``pos``."""
    p = Path(name)
    if p.suffix and p.suffix.lower() not in TEXT_SUFFIXES:
        return p.suffix[1:]
    return p.stem


def _ignored(p: Path) -> bool:
    n = p.name.lower()
    return (not p.is_file() or n.startswith(".") or n.startswith(IGNORED_PREFIXES)
            or n.endswith(IGNORED_SUFFIXES))


def _read_folder(path: Path, encoding: str) -> list[Example]:
    files = sorted(p for p in path.iterdir() if not _ignored(p))
    if not files:
        raise InputError(f"{path}: the folder has no data files -- put one text file per label "
                         "in it (e.g. reviews.pos, reviews.neg), one example per line")
    examples = []
    for f in files:
        label = folder_label(f.name)
        lines = _decode(f, encoding).split("\n")  # not splitlines(): U+2028 etc. are not line ends
        if lines[-1] == "":
            lines.pop()  # the "" after the final newline is not a line
        for line, raw in enumerate(lines, start=1):
            raw = raw.rstrip("\r")
            if not raw.strip():
                raise InputError(f"{f}:{line}: empty or whitespace-only line -- remove it "
                                 "(every line is one example)")
            examples.append(Example(raw, label, f"{f}:{line}"))
    return examples


def split_dev(examples: list[Example], fraction: float = 0.1, seed: int = 0
              ) -> tuple[list[Example], list[Example]]:
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
        raise InputError(f"dev split of {fraction} leaves no dev examples from {len(examples)} "
                         "examples -- give a dev file or more data")
    train = [ex for i, ex in enumerate(examples) if i not in dev_idx]
    dev = [ex for i, ex in enumerate(examples) if i in dev_idx]
    return train, dev


def check_labels(train: list[Example], dev: list[Example]) -> list[str]:
    """-> sorted label set of train; ``InputError`` if dev has labels train never shows."""
    labels = sorted({ex.label for ex in train})
    if len(labels) < 2:
        raise InputError(f"training data has {len(labels)} label(s) {labels} -- a classifier needs "
                         "at least 2; check the label column / file names")
    unseen = sorted({ex.label for ex in dev} - set(labels))
    if unseen:
        first = next(ex.source for ex in dev if ex.label in unseen)
        raise InputError(f"dev labels {unseen} never occur in training (first at {first}); training "
                         f"labels are {labels} -- fix the labels or add training examples for them")
    return labels
