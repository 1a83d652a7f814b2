"""Reading many input files as one stream of rows with stable ids, cut into fixed-size partitions.

Used by the distributed engine (``rnnkit.runtime.distributed``).  Unlike ``io.read_records``,
which stops at the first bad line (right for a local run a user is watching), these readers
turn a bad record -- invalid bytes, invalid JSON, a missing key, an empty text -- into an
error row and carry on, so one bad line in a crawl does not fail a million-row job.

Ids: ``"<file index>:<line number>"``, where the file index is the position of the file in
the sorted, de-duplicated expansion of the input patterns (written to ``_job.json``) and the
line number is 1-based and physical (a CSV row is numbered by its first line, the header
being line 1) -- the same numbers local ``rnnkit predict`` error messages use.  Partition
``k`` holds rows ``k*size .. (k+1)*size - 1`` of that stream, bad rows included, so the same
inputs always cut into the same partitions (what ``--resume`` relies on).

Pure stdlib; must not import torch or dask.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import InputError
from .io import JSONL, TABULAR


@dataclass
class Partition:
    index: int
    ids: list[str] = field(default_factory=list)       # one per good row, "file:line"
    sources: list[str] = field(default_factory=list)   # "path:line" of each good row (for error rows)
    items: list = field(default_factory=list)          # text, or a token list for tagging
    errors: list[dict] = field(default_factory=list)   # {"id", "source", "error"} rejected while reading

    @property
    def rows(self) -> int:
        return len(self.ids) + len(self.errors)


def expand_inputs(patterns: list[str] | tuple[str, ...] | str) -> list[Path]:
    """Glob each pattern (a plain path is its own pattern); sorted, de-duplicated, files only."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    files: list[Path] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if not Path(m).is_dir()] if glob.has_magic(pattern) else matches
        if not matches or not Path(matches[0]).exists():
            raise InputError(f"--input {pattern!r}: matches no file; check the path or quote the glob "
                             f"(e.g. --input 'data/*.jsonl')")
        for m in matches:
            if Path(m).is_dir():
                raise InputError(f"--input {m}: is a directory; give files or a glob such as '{m}/*.jsonl'")
        files.extend(Path(m) for m in matches)
    seen, unique = set(), []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def iter_rows(files: list[Path], text_field: str = "text", encoding: str = "utf-8", tagging: bool = False,
              pretokenized: bool = False) -> Iterator[tuple[str, str, object, str | None]]:
    """Yield ``(id, source, item, error)`` for every record of every file; ``error`` is None for a good row.

    Problems with a whole file (no header, a missing column) raise ``InputError``: they are
    configuration mistakes, not bad records.
    """
    for index, path in enumerate(files):
        suffix = path.suffix.lower()
        if suffix in TABULAR:
            rows = _tabular(path, text_field, encoding, TABULAR[suffix])
        elif suffix in JSONL:
            rows = _jsonl(path, text_field, encoding, tagging)
        else:
            rows = _plain(path, encoding)
        for line, item, error in rows:
            if error is None:
                if tagging and pretokenized and isinstance(item, str):
                    item = item.split()
                elif not tagging and not item.strip():
                    error = "empty text; remove it or give it some words"
            yield f"{index}:{line}", f"{path}:{line}", (None if error else item), error


def partitions(rows: Iterator[tuple[str, str, object, str | None]], size: int) -> Iterator[Partition]:
    """Cut the row stream into partitions of ``size`` rows (good and bad rows both count)."""
    if size < 1:
        raise InputError(f"--partition-size must be >= 1, got {size}")
    part = Partition(0)
    for row_id, source, item, error in rows:
        if error is None:
            part.ids.append(row_id)
            part.sources.append(source)
            part.items.append(item)
        else:
            part.errors.append({"id": row_id, "source": source, "error": error})
        if part.rows == size:
            yield part
            part = Partition(part.index + 1)
    if part.rows:
        yield part


def _decoded_lines(path: Path, encoding: str) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text or None, error or None) for each physical line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, raw.decode(encoding).rstrip("\r\n"), None
            except UnicodeDecodeError as exc:
                near = raw.rstrip(b"\r\n")[max(0, exc.start - 10):exc.start + 10]
                yield number, None, f"invalid {encoding} at byte {exc.start} of the line ({near!r})"


def _plain(path: Path, encoding: str):
    for number, line, error in _decoded_lines(path, encoding):
        if error or line.strip():       # blank lines are skipped, as by local `rnnkit predict`
            yield number, line, error


def _jsonl(path: Path, text_field: str, encoding: str, tagging: bool):
    for number, line, error in _decoded_lines(path, encoding):
        if error:
            yield number, None, error
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"invalid JSON ({exc.msg} at column {exc.colno})"
            continue
        if not isinstance(record, dict):
            yield number, None, f"expected a JSON object, got {type(record).__name__}"
            continue
        tokens = record.get("tokens")
        if tagging and isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
            yield number, tokens, None
        elif isinstance(record.get(text_field), str):
            yield number, record[text_field], None
        elif isinstance(record.get(text_field), (int, float)) and not isinstance(record.get(text_field), bool):
            yield number, str(record[text_field]), None
        else:
            yield number, None, (f"no string {text_field!r} (keys: {sorted(record)}); "
                                 f"choose the field with --text-field")


def _tabular(path: Path, text_field: str, encoding: str, delimiter: str):
    lines = _decoded_lines(path, encoding)
    pending: list[tuple[int, str]] = []     # bad lines met while csv pulled the next row
    consumed: list[int] = []                # physical line numbers pulled for the current row

    def good_lines():
        for number, line, error in lines:
            if error:
                pending.append((number, error))
                continue
            consumed.append(number)
            yield line + "\n"     # csv needs the newline of a quoted multi-line field

    reader = csv.reader(good_lines(), delimiter=delimiter)
    header = next(reader, None)
    if pending and (header is None or pending[0][0] < consumed[0]):
        raise InputError(f"{path}:{pending[0][0]}: the header line is not valid {encoding}; re-encode the "
                         f"file as UTF-8 or pass --encoding (e.g. latin-1)")
    if not header:
        raise InputError(f"{path}: empty file; expected a header row with a {text_field!r} column")
    header = [h.strip() for h in header]
    if text_field not in header:
        raise InputError(f"{path}: no column {text_field!r} in the header (columns: {header}); "
                         f"choose the column with --text-field")
    column = header.index(text_field)
    while True:
        consumed.clear()
        try:
            row = next(reader)
        except StopIteration:
            row = None
        except csv.Error as exc:
            row, bad = None, str(exc)
            yield (consumed[0] if consumed else 0), None, f"unreadable CSV row ({bad})"
            continue
        for number, error in pending:
            yield number, None, error
        pending.clear()
        if row is None:
            return
        if not row or not any(cell.strip() for cell in row):
            continue
        number = consumed[0]
        if len(row) < len(header):
            yield number, None, (f"{len(row)} columns but the header has {len(header)}; "
                                 f"quote fields that contain the delimiter")
        else:
            yield number, row[column], None
