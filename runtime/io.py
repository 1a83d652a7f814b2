"""Reading inputs and writing outputs without ever losing data.

``atomic_writer`` writes next to the target and renames into place only when the
whole file is written and fsynced: an interrupted run (Ctrl-C, kill -9, a full disk)
leaves the previous file or nothing, never half a file.  ``read_records`` reads the
text/CSV/TSV/JSONL files that ``rnnkit predict`` and ``rnnkit train`` take, with errors
that name the file and line.

Pure stdlib; must not import torch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError

TABULAR = {".csv": ",", ".tsv": "\t"}
JSONL = {".jsonl", ".json", ".ndjson"}


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Yield a file handle; the target appears (or is replaced) only on success."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise InputError(f"{path}: is a directory; give a file path for the output")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: the folder {parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (no-op where directories can't be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, line without newline); invalid bytes raise InputError naming the line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path}:{number}: invalid {encoding} at byte {exc.start} of the line "
                    f"({raw[max(0, exc.start - 10):exc.start + 10]!r}); re-encode the file as UTF-8 "
                    f"or pass --encoding (e.g. latin-1)") from None
            yield number, line.rstrip("\r\n")


def read_records(path: str | os.PathLike, fields: tuple[str, ...], encoding: str = "utf-8",
                 ) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (``file:line``, {field: value}) from a CSV, TSV, JSONL or plain-text file.

    A plain-text file (any other extension) is one record per line with the line as the
    first of ``fields``.  Blank lines of plain-text and JSONL files are skipped.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a .txt, .csv, .tsv or .jsonl file")
    suffix = path.suffix.lower()
    if suffix in TABULAR:
        yield from _read_tabular(path, fields, encoding, TABULAR[suffix])
    elif suffix in JSONL:
        yield from _read_jsonl(path, fields, encoding)
    else:
        for number, line in read_lines(path, encoding):
            if line.strip():
                yield f"{path}:{number}", {fields[0]: line}


def _read_tabular(path, fields, encoding, delimiter):
    lines = read_lines(path, encoding)
    text = io.StringIO("\n".join(line for _, line in lines))
    reader = csv.reader(text, delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise InputError(f"{path}: empty file; expected a header row with columns {list(fields)}")
    header = [h.strip() for h in header]
    missing = [f for f in fields if f not in header]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r} in the header (columns: {header}); "
                         f"choose the column with --text-field / --label-field")
    index = {f: header.index(f) for f in fields}
    for number, row in enumerate(reader, 2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise InputError(f"{path}:{number}: {len(row)} columns but the header has {len(header)}; "
                             f"quote fields that contain the delimiter")
        yield f"{path}:{number}", {f: row[i] for f, i in index.items()}


def _read_jsonl(path, fields, encoding):
    for number, line in read_lines(path, encoding):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno}); "
                             f"expected one JSON object per line") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        for f in fields:
            if f not in record:
                raise InputError(f"{path}:{number}: no key {f!r} (keys: {sorted(record)}); "
                                 f"choose the field with --text-field / --label-field")
            if not isinstance(record[f], (str, int, float)):
                raise InputError(f"{path}:{number}: {f!r} must be a string, got {type(record[f]).__name__}")
        yield f"{path}:{number}", {f: str(record[f]) for f in fields}
