"""Readers for tagged sentences: CoNLL-U (``.conllu``) and ``word<TAB>tag`` files.

CoNLL-U (https://universaldependencies.org/format.html): 10 tab-separated columns, ``#``
comment lines, a blank line after each sentence.  Only syntactic words are kept: multi-word
token ranges (``1-2``, the surface form ``don't`` over its words ``do`` + ``n't``) and empty
nodes (``3.1``, enhanced dependencies only) carry no tag of their own and are skipped.  The tag
is column 4 (UPOS) or 5 (XPOS).  The ``word<TAB>tag`` format has exactly two columns and a
blank line between sentences (no comments: ``#`` is a word there).  Every problem raises
``InputError`` naming ``file:line``.  Pure stdlib: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rnnkit.runtime.errors import InputError

COLUMNS = {"upos": 3, "xpos": 4}  # 0-based CoNLL-U column of each tag kind
FORMATS = ("auto", "conllu", "tsv")


@dataclass
class TaggedSentence:
    tokens: list[str]
    tags: list[str]
    source: str  # "file:line" of the sentence's first token, for messages


def _read_text(path: Path, encoding: str) -> str:
    if not path.exists():
        raise InputError(f"{path}: no such file -- check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a .conllu or word<TAB>tag file")
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(
            f"{path}:{line}: not valid {encoding} ({e.reason} at byte {e.start}) -- "
            f"re-encode the file as UTF-8 or pass the right encoding"
        ) from None
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r} -- use a Python codec name such as utf-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def _conllu_row(cols: list[str], where: str, column: str) -> tuple[str, str, str] | None:
    """-> (id, form, tag) for a syntactic word, None for a range / empty node."""
    if len(cols) != 10:
        raise InputError(
            f"{where}: {len(cols)} tab-separated column(s), expected 10 (CoNLL-U) "
            "-- columns must be separated by single tabs"
        )
    wid = cols[0]
    if "-" in wid or "." in wid:  # 1-2 multi-word token range; 3.1 empty node
        lo, _, hi = wid.partition("-" if "-" in wid else ".")
        if not (lo.isdigit() and hi.isdigit()):
            raise InputError(f"{where}: ID {wid!r} is neither an integer, a range like 1-2 nor an empty node like 3.1")
        return None
    if not wid.isdigit():
        raise InputError(f"{where}: ID {wid!r} is not an integer")
    form, tag = cols[1], cols[COLUMNS[column]]
    if not form:
        raise InputError(f"{where}: empty FORM (column 2)")
    if not tag or tag == "_":
        raise InputError(
            f"{where}: no {column.upper()} tag (column {COLUMNS[column] + 1} is {tag!r}) "
            f"-- choose the other column (upos/xpos) or fix the file"
        )
    return wid, form, tag


def _read_conllu(path: Path, text: str, column: str) -> list[TaggedSentence]:
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0

    def flush():
        if tokens:  # a block of comments only is not a sentence
            sentences.append(TaggedSentence(list(tokens), list(tags), f"{path}:{start}"))
        tokens.clear()
        tags.clear()

    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            flush()
            continue
        if line.startswith("#"):
            if tokens:
                raise InputError(
                    f"{path}:{n}: comment line inside a sentence -- comments go before "
                    "the first token; is a blank line missing above?"
                )
            continue
        row = _conllu_row(line.split("\t"), f"{path}:{n}", column)
        if row is None:
            continue
        wid, form, tag = row
        if int(wid) != len(tokens) + 1:
            raise InputError(
                f"{path}:{n}: word ID {wid} but {len(tokens) + 1} expected (IDs count "
                "1, 2, ... within a sentence) -- is a blank line missing between sentences?"
            )
        if not tokens:
            start = n
        tokens.append(form)
        tags.append(tag)
    flush()
    return sentences


def _read_tsv(path: Path, text: str) -> list[TaggedSentence]:
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    lines = text.split("\n")
    for n, line in enumerate(lines + [""], 1):
        line = line.rstrip("\r")
        if not line.strip():
            if tokens:
                sentences.append(TaggedSentence(tokens, tags, f"{path}:{start}"))
            tokens, tags = [], []
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            hint = " -- is this a CoNLL-U file? name it .conllu" if len(cols) == 10 else ""
            raise InputError(f"{path}:{n}: {len(cols)} tab-separated column(s), expected 2 (word<TAB>tag){hint}")
        word, tag = cols[0].strip(), cols[1].strip()
        if not word or not tag:
            raise InputError(f"{path}:{n}: empty {'word' if not word else 'tag'} in {line!r}")
        if not tokens:
            start = n
        tokens.append(word)
        tags.append(tag)
    return sentences


def read_tagged(path, column: str = "upos", encoding: str = "utf-8", format: str = "auto") -> list[TaggedSentence]:  # noqa: A002 -- the CLI flag's name
    """Sentences of ``path``; ``format`` auto = CoNLL-U for ``.conllu``, word<TAB>tag otherwise.
    ``column`` (upos | xpos) applies to CoNLL-U only."""
    if column not in COLUMNS:
        raise InputError(f"column must be one of {sorted(COLUMNS)}, got {column!r}")
    if format not in FORMATS:
        raise InputError(f"format must be one of {list(FORMATS)}, got {format!r}")
    path = Path(path)
    text = _read_text(path, encoding)
    conllu = format == "conllu" or (format == "auto" and path.suffix.lower() == ".conllu")
    sentences = _read_conllu(path, text, column) if conllu else _read_tsv(path, text)
    if not sentences:
        raise InputError(
            f"{path}: no sentences (the file is empty or holds only comments/blank "
            "lines) -- give a file with tagged tokens"
        )
    return sentences
