"""One reader for every file of user records: ``rnnkit predict`` (local and Dask), training and dev sets.

Formats, picked by the file's extension (a stream such as stdin is plain text unless told):

* ``.tsv``: one record per line, tab-separated, header row required.  TSV has no quoting: a
  quote is a character like any other (a sentence may start with ``"``), so a text cannot hold
  a tab or a newline.
* ``.csv``: RFC 4180 with a header row: a field in double quotes may hold commas, newlines and
  doubled quotes (``""``).  Parsed here, not by ``csv.reader``, so that a malformed record (text
  after a closing quote, a quote never closed) costs that record only: it is reported at its
  first line and parsing resumes at the next line instead of swallowing the rows after it.  A
  quote inside an unquoted field is kept as text (as Excel and ``csv.reader`` do).
* ``.jsonl`` / ``.json`` / ``.ndjson``: one JSON object per line.  A field must be a JSON string
  (a label may also be an integer); ``NaN``/``Infinity`` and a needed key given twice are refused.
* anything else: plain text, one record per line; the line is the field.

Lines end at ``\\n`` only; a ``\\r`` right before it belongs to a CRLF ending and is dropped.  Any
other ``\\r``, U+2028, ``\\x0b``, ``\\x1c`` ... is text, so a file and the same bytes on stdin give
the same records.  A UTF-8 byte-order mark at the start is dropped.  Blank lines (nothing but
spaces, tabs and ``\\r``) are skipped in every format and are not records.

Each record is a ``Record(source, values, error)``: ``source`` is ``"path:line"``, the 1-based
physical line where the record starts; ``values`` the requested fields of a good record (None for
a bad one); ``error`` why a record is bad (invalid bytes, invalid JSON, a missing key, a wrong
type, a lone surrogate, a wrong number of columns, a malformed CSV record).  Every non-blank
record comes out exactly once, good or bad: rows in = good + bad, always.  Problems with the whole
input -- a missing file, a folder, no header, a field that is not a column, an unreadable header,
an unknown encoding -- raise ``InputError`` at once: they are configuration mistakes, not bad
records.

Pure stdlib; must not import torch.
"""

from __future__ import annotations

import codecs
import json
import os
from collections import deque
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping, NamedTuple, Sequence

from .errors import InputError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
BLANK = " \t\r"  # a line of only these is blank: skipped, never a record
MAX_QUOTED = 1 << 20  # characters a quoted CSV field may hold; past that its quote counts as never closed
# (bounds the read-ahead a stray quote costs on a huge file)


class Record(NamedTuple):
    source: str  # "path:line": the 1-based physical line the record starts on
    values: dict | None  # {field: value} of a good record; None for a bad one
    error: str | None  # why the record is bad; None for a good one


def format_of(path: str | os.PathLike) -> str:
    """``csv``, ``tsv``, ``jsonl`` or ``txt`` (any other extension) for ``path``."""
    return FORMATS.get(Path(path).suffix.lower(), "txt")


def read_records(
    source: str | os.PathLike | BinaryIO,
    fields: Sequence[str] = ("text",),
    *,
    encoding: str = "utf-8",
    format: str | None = None,
    name: str | None = None,  # noqa: A002
    hint: Mapping[str, str] | None = None,
    labels: Sequence[str] = (),
    tokens: str | None = None,
) -> Iterator[Record]:
    """Records of a file (by path) or of a binary stream (``sys.stdin.buffer``), see the module doc.

    ``fields``: the columns/keys every record needs (a plain-text line is the one field).
    ``format``: ``csv``/``tsv``/``jsonl``/``txt``; default: by extension, ``txt`` for a stream.
    ``name``: how sources name the input (default: the path; ``stdin`` for a stream).
    ``hint``: how the caller's user sets each field and the encoding, e.g. ``{"text": "--text-field",
    "encoding": "--encoding"}`` on the command line, ``{"text": "text_field="}`` from Python; the
    messages then say how to fix a mistake in the user's own terms.
    ``labels``: fields whose JSON value may also be an integer (returned as its decimal string).
    ``tokens``: JSONL: a key whose list of strings, when present, is taken instead of the fields
    (``{tokens: [...]}``; tagging input).

    Checks the path and the encoding now; the header is read on the first ``next()``.
    """
    fields = tuple(fields)
    hint = dict(hint or {})
    codec = _codec(encoding, hint)
    if hasattr(source, "read"):
        name, path = name or "stdin", None
        fmt = format or "txt"
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"{path}: no such file; check the path")
        if path.is_dir():
            raise InputError(f"{path}: is a directory; give a .txt, .csv, .tsv or .jsonl file")
        name, fmt = name or str(path), format or format_of(path)
    if fmt not in _READERS:
        raise InputError(f"{name}: unknown record format {fmt!r}; expected one of {sorted(_READERS)}")
    if fmt == "txt" and len(fields) != 1:
        raise InputError(
            f"{name}: a plain-text line is one field but {list(fields)} are needed; give a .csv, .tsv or .jsonl file"
        )
    return _records(source, path, name, fmt, codec, encoding, fields, hint, tuple(labels), tokens)


def check_text(value: str) -> str | None:
    """Why ``value`` cannot be written as UTF-8 (a lone surrogate, e.g. from a JSON ``\\ud800``), or None.

    Checked on every field of every record: such a string reads fine but crashes the writer of
    the output -- after hours of work, and again on every ``--resume``.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"contains a lone surrogate U+{ord(value[exc.start]):04X} at character {exc.start + 1}; not valid Unicode"
        )
    return None


# -- lines ---------------------------------------------------------------------------------
def _codec(encoding: str, hint: Mapping[str, str]) -> str:
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise InputError(
            f"unknown encoding {encoding!r}; use a Python codec name such as 'utf-8' or "
            f"'latin-1'{_with(hint, 'encoding')}"
        ) from None
    if info.name in ("utf-8", "utf-8-sig"):
        return "utf-8"  # utf-8-sig per line would eat a U+FEFF at the start of any line
    probe = '\n\r\t," azAZ09{}[]:'
    try:
        compatible = probe.encode(info.name) == probe.encode("ascii")
    except (UnicodeError, LookupError):
        compatible = False
    if not compatible:  # lines are split on the byte \n; UTF-16/32 would be cut mid-character
        raise InputError(
            f"encoding {encoding!r} is not ASCII-compatible, so lines cannot be split on the byte "
            f"\\n; convert the input to UTF-8 (e.g. iconv -f {encoding} -t utf-8)"
        )
    return info.name


def _lines(stream: BinaryIO, codec: str, encoding: str, hint) -> Iterator[tuple[int, str, str | None]]:
    """(number, text, error) per physical line: text without its ``\\n`` (a ``\\r`` kept), decoded with
    surrogateescape where it is not valid (so CSV structure is still found), error saying where."""
    for number, raw in enumerate(stream, 1):
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        skipped = 0
        if number == 1 and codec == "utf-8" and raw.startswith(codecs.BOM_UTF8):
            raw, skipped = raw[3:], 3
        try:
            text, error = raw.decode(codec), None
        except UnicodeDecodeError as exc:
            try:
                text = raw.decode(codec, "surrogateescape")
            except UnicodeDecodeError:
                text = raw.decode(codec, "replace")
            near = raw[max(0, exc.start - 10) : exc.start + 10]
            error = (
                f"invalid {encoding} at byte {exc.start + skipped} of the line ({near!r}); re-encode the "
                f"input as UTF-8 or pass its real encoding{_with(hint, 'encoding')} (e.g. latin-1)"
            )
        if number == 1 and codec != "utf-8" and text.startswith("\ufeff"):
            text = text[1:]  # a codec that can spell U+FEFF itself (UTF-8's three bytes went above)
        yield number, text, error


def _records(source, path, name, fmt, codec, encoding, fields, hint, labels, tokens) -> Iterator[Record]:
    if path is None:
        yield from _READERS[fmt](_lines(source, codec, encoding, hint), name, fields, hint, labels, tokens)
        return
    with open(path, "rb") as stream:
        yield from _READERS[fmt](_lines(stream, codec, encoding, hint), name, fields, hint, labels, tokens)


def _crlf(text: str) -> str:
    return text[:-1] if text.endswith("\r") else text


def _with(hint: Mapping[str, str], key: str) -> str:
    return f" with {hint[key]}" if key in hint else ""


def _good(source: str, values: dict) -> Record:
    for key, value in values.items():
        if type(value) is str:
            if value.isascii():  # O(1) in CPython: the common case costs nothing
                continue
            problem = check_text(value)
        else:
            problem = next(filter(None, map(check_text, value)), None)
        if problem:
            return Record(source, None, f"{key!r} {problem}")
    return Record(source, values, None)


# -- plain text, TSV -------------------------------------------------------------------------
def _read_txt(lines, name, fields, hint, labels, tokens) -> Iterator[Record]:
    field = fields[0]
    for number, text, error in lines:
        if error:
            yield Record(f"{name}:{number}", None, error)
            continue
        if text.endswith("\r"):
            text = text[:-1]
        if text.strip(BLANK):
            source = f"{name}:{number}"
            yield Record(source, {field: text}, None) if text.isascii() else _good(source, {field: text})


def _columns(name: str, number: int, header: list[str], fields, hint) -> dict[str, int]:
    missing = [f for f in fields if f not in header]
    if missing:
        ways = [hint[f] for f in missing if f in hint]
        how = f"choose the column with {' / '.join(ways)}" if ways else "rename the column in the file"
        raise InputError(
            f"{name}:{number}: header has no column {' or '.join(map(repr, missing))}; available "
            f"columns: {', '.join(map(repr, header))} -- the first row must be a header; {how}"
        )
    for f in fields:
        if header.count(f) > 1:
            raise InputError(
                f"{name}:{number}: header names column {f!r} {header.count(f)} times; rename the "
                f"others so it is clear which one to read"
            )
    return {f: header.index(f) for f in fields}


def _empty(name: str, fields) -> InputError:
    return InputError(
        f"{name}: the file is empty; expected a header row naming the columns "
        f"({', '.join(map(repr, fields))}) and a record per row"
    )


def _read_tsv(lines, name, fields, hint, labels, tokens) -> Iterator[Record]:
    header: list[str] | None = None  # until the header row is read
    index: dict[str, int] = {}
    for number, text, error in lines:
        source = f"{name}:{number}"
        if header is None:
            if error:
                raise InputError(f"{source}: the header row is unreadable: {error}")
            text = _crlf(text)
            if text.strip(BLANK):
                header = [c.strip(BLANK) for c in text.split("\t")]
                index = _columns(name, number, header, fields, hint)
            continue
        if error:
            yield Record(source, None, error)
            continue
        text = _crlf(text)
        if not text.strip(BLANK):
            continue
        cells = text.split("\t")
        if len(cells) != len(header):
            yield Record(
                source,
                None,
                f"row has {len(cells)} fields but the header has {len(header)} -- TSV has "
                f"no quoting: a tab inside a text splits it (remove it, or use CSV)",
            )
        else:
            yield _good(source, {f: cells[i] for f, i in index.items()})
    if header is None:
        raise _empty(name, fields)


# -- CSV (RFC 4180) --------------------------------------------------------------------------
def _read_csv(lines, name, fields, hint, labels, tokens) -> Iterator[Record]:
    pending: deque = deque()  # (number, text, error) read ahead and not yet consumed

    def more() -> bool:
        line = next(lines, None)
        if line is None:
            return False
        pending.append(line)
        return True

    header: list[str] | None = None  # until the header row is read
    index: dict[str, int] = {}
    while pending or more():
        number, text, error = pending[0]
        source = f"{name}:{number}"
        if error is None and not text.strip(BLANK):
            pending.popleft()  # a blank line between records
            continue
        if header is not None and error is None:
            cells = _csv_line(text)  # fast path: a record on one line (most are)
        else:
            cells = None
        if cells is not None:
            assert header is not None  # the one-line fast path runs once the header is read
            pending.popleft()
            if len(cells) != len(header):
                yield Record(source, None, _csv_count(len(cells), len(header)))
            else:
                yield _good(source, {f: cells[i] for f, i in index.items()})
            continue
        cells, used, problem = _csv_record(pending, more)
        if problem:  # cost only this record: resume at its next physical line
            if header is None:
                raise InputError(f"{source}: cannot parse the header row: {problem}")
            pending.popleft()
            yield Record(source, None, problem)
            continue
        assert cells is not None  # _csv_record gives the cells or a problem
        errors = [pending.popleft()[2] for _ in range(used)]
        error = next((e for e in errors if e), None)
        if header is None:
            if error:
                raise InputError(f"{source}: the header row is unreadable: {error}")
            header = [c.strip(BLANK) for c in cells]
            index = _columns(name, number, header, fields, hint)
        elif error:
            yield Record(source, None, error)
        elif len(cells) != len(header):
            yield Record(source, None, _csv_count(len(cells), len(header)))
        else:
            yield _good(source, {f: cells[i] for f, i in index.items()})
    if header is None:
        raise _empty(name, fields)


def _csv_line(text: str) -> list[str] | None:
    """The cells of a record that is exactly the line ``text`` (most records), found with str.split;
    None when the line needs ``_csv_record`` (a quote left open, a quote inside an unquoted field,
    text after a closing quote).  Must agree with ``_csv_record`` whenever it answers (tested)."""
    text = _crlf(text)
    if '"' not in text:
        return text.split(",")
    parts = text.split('"')  # even indices: outside quotes; odd: inside
    last = len(parts) - 1
    if last % 2:  # an odd number of quotes: one is still open at the end of the line
        return None
    head = parts[0]
    if head and head[-1] != ",":  # a quote inside an unquoted field
        return None
    cells = head.split(",")[:-1] if head else []
    i = 1
    while True:
        field = parts[i]
        i += 1
        while i < last and not parts[i]:  # "" inside quotes is one quote
            field += '"' + parts[i + 1]
            i += 2
        cells.append(field)
        between = parts[i]
        if i == last:
            if not between:
                return cells
            if between[0] != ",":
                return None
            cells.extend(between[1:].split(","))
            return cells
        if between[0] != "," or between[-1] != ",":  # text after a closing quote / before an opening one
            return None
        if len(between) > 1:
            cells.extend(between[1:-1].split(","))
        i += 1


def _csv_count(cells: int, header: int) -> str:
    return f"row has {cells} fields but the header has {header} -- quote fields that contain ',' (\"like, this\")"


def _csv_record(pending: deque, more: Callable[[], bool]) -> tuple[list[str] | None, int, str | None]:
    """Parse the record starting at ``pending[0]`` -> (cells, physical lines used, None) or (None, 0, why)."""
    cells: list[str] = []
    k, line, pos = 0, pending[0][1], 0
    while True:  # at the start of a field
        if not line.startswith('"', pos):  # unquoted: up to the next comma or the end of the line
            comma = line.find(",", pos)
            if comma < 0:
                cells.append(_crlf(line[pos:]))
                return cells, k + 1, None
            cells.append(line[pos:comma])
            pos = comma + 1
            continue
        opened, column = pending[k][0], pos + 1
        parts, size, pos = [], 0, pos + 1
        while True:  # inside quotes: commas, \r and newlines are text
            quote = line.find('"', pos)
            if quote < 0:
                parts.append(line[pos:])
                parts.append("\n")
                size += len(line) - pos + 1
                k += 1
                if k == len(pending) and not more():
                    return (
                        None,
                        0,
                        (
                            f"the quote opened at line {opened}, column {column} is never closed "
                            f'before the end of the file; close it, or double it ("") if it is text'
                        ),
                    )
                if size > MAX_QUOTED:
                    return (
                        None,
                        0,
                        (
                            f"the quote opened at line {opened}, column {column} is still open after "
                            f'{MAX_QUOTED} characters; close it, or double it ("") if it is text'
                        ),
                    )
                line, pos = pending[k][1], 0
                continue
            parts.append(line[pos:quote])
            if line.startswith('"', quote + 1):  # "" is one quote character
                parts.append('"')
                pos = quote + 2
                continue
            pos = quote + 1
            break
        cells.append("".join(parts))
        rest = line[pos:]
        if rest in ("", "\r"):
            return cells, k + 1, None
        if rest[0] == ",":
            pos += 1
            continue
        if pending[k][0] != opened:  # most likely a stray quote that opened a field by mistake
            return (
                None,
                0,
                (
                    f"the quote opened at line {opened}, column {column} is closed at line {pending[k][0]} "
                    f'and followed by text ({rest[:20]!r}); a quote inside a field must be doubled ("") '
                    f"and the field quoted"
                ),
            )
        return (
            None,
            0,
            (
                f"text after the closing quote at column {pos + 1} ({rest[:20]!r}); quote the whole "
                f"field and double the quotes inside it"
            ),
        )


# -- JSON lines ------------------------------------------------------------------------------
def _read_jsonl(lines, name, fields, hint, labels, tokens) -> Iterator[Record]:
    keys = [json.dumps(k) for k in (*fields, *([tokens] if tokens else []))]
    for number, text, error in lines:
        source = f"{name}:{number}"
        if error:
            yield Record(source, None, error)
            continue
        if not text.strip(BLANK):
            continue
        values, problem = _json_values(text, fields, hint, labels, tokens, keys)
        if problem or values is None:  # _json_values gives the values or a problem
            yield Record(source, None, problem)
        else:
            yield _good(source, values)


def _constant(name: str):
    raise ValueError(f"{name} is not a JSON value (JSON has no NaN or Infinity)")


_DECODER = json.JSONDecoder(parse_constant=_constant)  # one decoder: json.loads(**options) builds one per call


def _duplicate(line: str, wanted, keys: list[str]) -> str | None:
    """A key of ``wanted`` given twice in the top-level object of ``line`` (json.loads keeps the last
    silently).  Parsed again with the pairs kept only when the line may hold one: a key's JSON
    spelling occurs twice, or an escape could spell it another way."""
    if "\\u" not in line:
        for k in keys:
            if line.count(k) > 1:
                break
        else:
            return None
    objects: list = []

    def keep(pairs: list) -> dict:
        objects.append(pairs)
        return dict(pairs)

    json.loads(line, parse_constant=_constant, object_pairs_hook=keep)
    names = [k for k, _ in objects[-1]]  # the top-level object closes last
    return next((k for k in wanted if names.count(k) > 1), None)


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        shown = repr(value)
        return f"a number ({shown if len(shown) <= 20 else shown[:17] + '...'})"
    kinds: dict[type, str] = {list: "an array", dict: "an object", str: "a string"}
    return kinds.get(type(value), type(value).__name__)


def _json_values(line: str, fields, hint, labels, tokens, keys) -> tuple[dict | None, str | None]:
    try:
        obj = _DECODER.decode(line)
    except RecursionError:
        return None, "invalid JSON: nested too deeply to read; flatten the record"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON at column {exc.colno} ({exc.msg}); expected one JSON object per line"
    except ValueError as exc:  # NaN/Infinity, an integer of over 4300 digits
        return None, f"invalid JSON: {exc}"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object per line, got {_kind(obj)}"
    duplicate = _duplicate(line, (*fields, tokens), keys)
    if duplicate:
        return None, f"invalid JSON: key {duplicate!r} given twice in the object (which value is meant?)"
    if tokens is not None and tokens in obj:
        value = obj[tokens]
        if isinstance(value, list) and all(isinstance(t, str) for t in value):
            return {tokens: value}, None
        return None, f"{tokens!r} is {_kind(value)}; expected an array of strings"
    values = {}
    for field in fields:
        if field not in obj:
            alternative = f" (or a {tokens!r} array)" if tokens else ""
            how = f" -- choose the key with {hint[field]}" if field in hint else ""
            return None, (
                f"object has no key {field!r}{alternative}; available keys: "
                f"{', '.join(map(repr, obj)) or '(none)'}{how}"
            )
        value = obj[field]
        if isinstance(value, str):
            values[field] = value
        elif field in labels and type(value) is int:
            values[field] = str(value)
        else:
            expected = "a string or an integer" if field in labels else "a string"
            return None, f"{field!r} is {_kind(value)}; expected {expected}"
    return values, None


_READERS = {"txt": _read_txt, "tsv": _read_tsv, "csv": _read_csv, "jsonl": _read_jsonl}
