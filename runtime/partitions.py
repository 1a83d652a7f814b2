"""Reading many input files as one stream of rows with stable ids, cut into fixed-size partitions.

Used by the distributed engine (``rnnkit.runtime.distributed``).  Files are read by the one
record reader (``rnnkit.runtime.records``) and turned into model inputs by ``batch.items_of``,
exactly as local ``rnnkit predict`` does: a bad record -- invalid bytes, invalid JSON, a missing
key, a non-string text, an empty text -- becomes an error row and the job carries on, so one bad
line in a crawl does not fail a million-row job.

Ids: ``"<file index>:<line number>"``, where the file index is the position of the file in
the sorted, de-duplicated expansion of the input patterns (written to ``_job.json``) and the
line number is 1-based and physical (a CSV row is numbered by its first line, the header
being line 1) -- the same numbers local ``rnnkit predict`` error messages use.  Partition
``k`` holds rows ``k*size .. (k+1)*size - 1`` of that stream, bad rows included, so the same
inputs always cut into the same partitions (what ``--resume`` relies on).

Pure stdlib; must not import torch or dask.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .batch import items_of
from .errors import InputError
from .records import read_records


@dataclass
class Partition:
    index: int
    ids: list[str] = field(default_factory=list)  # one per good row, "file:line"
    sources: list[str] = field(default_factory=list)  # "path:line" of each good row (for error rows)
    items: list = field(default_factory=list)  # text, or a token list for tagging
    errors: list[dict] = field(default_factory=list)  # {"id", "source", "error"} rejected while reading

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
            raise InputError(
                f"--input {pattern!r}: matches no file; check the path or quote the glob (e.g. --input 'data/*.jsonl')"
            )
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


def iter_rows(
    files: list[Path],
    text_field: str = "text",
    encoding: str = "utf-8",
    tagging: bool = False,
    pretokenized: bool = False,
    hint: dict | None = None,
) -> Iterator[tuple[str, str, object, str | None]]:
    """Yield ``(id, source, item, error)`` for every record of every file; ``error`` is None for a good row.

    Problems with a whole file (no header, a missing column) raise ``InputError``: they are
    configuration mistakes, not bad records.  ``hint``: see ``records.read_records``.
    """
    for index, path in enumerate(files):
        records = read_records(path, (text_field,), encoding=encoding, hint=hint, tokens="tokens" if tagging else None)
        for source, item, error in items_of(records, text_field, tagging, pretokenized):
            yield f"{index}:{source.rpartition(':')[2]}", source, item, error


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
