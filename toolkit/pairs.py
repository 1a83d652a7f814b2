"""Sequence pairs for encoder-decoder training: readers, reference grouping, grouped splits.

A pair is ``(source, target)``; several pairs may share a source (CMUdict words with alternate
pronunciations, Tatoeba sentences with several translations).  Training uses every pair;
scoring needs every reference of a source at once, so ``group_pairs`` turns pairs into
``Example(source, references)``, and ``group_split`` keeps all pairs of one source on the
same side of a split -- otherwise a test word's second pronunciation would be learnt in
training and the held-out numbers would be optimistic.

Formats (``read_pairs(path, fmt)``):

* ``tsv``: ``source<TAB>target[<TAB>ignored...]``, ``.gz`` read transparently;
* ``cmudict``: ``word  PH ON EMES``; ``;;;`` lines are comments, a trailing ``# comment`` is
  dropped, ``word(2)`` is an alternate of ``word``; stress digits are stripped unless
  ``keep_stress`` (published CMUdict G2P numbers are stress-free);
* ``tatoeba``: the manythings.org ``English<TAB>French`` file (gzip or not) -- a TSV whose
  narrow/no-break/thin spaces (U+202F, U+00A0, U+2009, before ``!?:;`` in French) become
  plain spaces, so the word tokenizer does not see two kinds of space.

Pure stdlib + numpy (torch-free).
"""

from __future__ import annotations

import gzip
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..runtime.errors import InputError
from ..runtime.tokenizer import CharTokenizer, WordTokenizer

Pair = tuple[str, str]
FORMATS = ("tsv", "cmudict", "tatoeba")
ODD_SPACES = str.maketrans({"\u202f": " ", "\u00a0": " ", "\u2009": " "})
_ALTERNATE = re.compile(r"\(\d+\)$")  # word(2) -> word
_STRESS = re.compile(r"(?<=[A-Z])[012]$")  # AH0 -> AH


@dataclass(frozen=True)
class Example:
    source: str
    references: tuple[str, ...]  # every distinct target of this source, in file order


def _open_text(path, encoding: str):
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such pairs file -- give a TSV (source<TAB>target) or CMUdict file")
    raw = gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")
    # lines end at \n only (newline="" would also end them at a lone \r, cutting a pair in two)
    return p, io.TextIOWrapper(raw, encoding=encoding, newline="\n")


def _lines(path, encoding: str):
    """(path, line number, line without its newline); decoding errors name the file."""
    p, f = _open_text(path, encoding)
    with f:
        try:
            for n, line in enumerate(f, 1):
                yield p, n, line.rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise InputError(f"{p}: not {encoding} text ({e.reason} at byte {e.start}) -- pass --encoding") from None


def read_tsv(path, encoding: str = "utf-8", spaces: bool = False) -> list[Pair]:
    """``source<TAB>target`` lines (extra columns ignored, blank lines skipped); ``spaces``:
    map U+202F/U+00A0/U+2009 to a plain space first."""
    pairs = []
    for p, n, line in _lines(path, encoding):
        if spaces:
            line = line.translate(ODD_SPACES)
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise InputError(
                f"{p}:{n}: no tab in {line[:60]!r} -- each line must be source<TAB>target "
                "(use --format cmudict for a pronouncing dictionary)"
            )
        source, target = cols[0].strip(), cols[1].strip()
        if not source or not target:
            side = "source" if not source else "target"
            raise InputError(f"{p}:{n}: empty {side} in {line[:60]!r} -- remove the line or fill in both sides")
        pairs.append((source, target))
    if not pairs:
        raise InputError(f"{path}: has no source<TAB>target pairs")
    return pairs


def read_tatoeba(path, encoding: str = "utf-8") -> list[Pair]:
    return read_tsv(path, encoding, spaces=True)


def read_cmudict(path, encoding: str = "utf-8", keep_stress: bool = False) -> list[Pair]:
    """(word, space-separated phones) for every pronunciation; ``word(2)`` -> ``word``."""
    pairs = []
    for p, n, line in _lines(path, encoding):
        if line.startswith(";;;"):
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            raise InputError(
                f"{p}:{n}: {line[:60]!r} has a word but no phones -- CMUdict lines are "
                "'word PH1 PH2 ...' (use --format tsv for source<TAB>target pairs)"
            )
        word = _ALTERNATE.sub("", parts[0])
        phones = parts[1:] if keep_stress else [_STRESS.sub("", ph) for ph in parts[1:]]
        pairs.append((word, " ".join(phones)))
    if not pairs:
        raise InputError(f"{path}: has no pronunciations")
    return pairs


def read_pairs(path, fmt: str = "tsv", encoding: str = "utf-8", keep_stress: bool = False) -> list[Pair]:
    if fmt == "tsv":
        return read_tsv(path, encoding)
    if fmt == "tatoeba":
        return read_tatoeba(path, encoding)
    if fmt == "cmudict":
        return read_cmudict(path, encoding, keep_stress)
    raise InputError(f"unknown pairs format {fmt!r} -- expected one of {list(FORMATS)}")


def write_pairs(path, pairs: Iterable[Pair]) -> Path:
    """``source<TAB>target`` lines (readable back with ``read_tsv``)."""
    path = Path(path)
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


def group_pairs(pairs: Iterable[Pair]) -> list[Example]:
    """One ``Example`` per distinct source (first-seen order), its distinct targets as references."""
    refs: dict[str, dict[str, None]] = {}
    for s, t in pairs:
        refs.setdefault(s, {})[t] = None
    return [Example(s, tuple(r)) for s, r in refs.items()]


def group_split(pairs: Sequence[Pair], fractions: Sequence[float], seed: int = 0) -> list[list[Pair]]:
    """Split ``pairs`` into ``len(fractions)`` parts by *source*: the distinct sources (sorted, so
    the file order does not matter) are shuffled with ``seed`` and cut by ``fractions`` (which
    are normalised to sum 1); every pair follows its source.  Pair order within a part is kept."""
    if not fractions or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise InputError(f"split fractions must be >= 0 with a positive sum, got {list(fractions)}")
    sources = sorted({s for s, _ in pairs})
    order = np.random.default_rng(seed).permutation(len(sources))
    cum = np.cumsum(np.asarray(fractions, dtype=float) / sum(fractions))
    cuts = [0] + [int(round(c * len(sources))) for c in cum]
    part_of = {}
    for k in range(len(fractions)):
        for i in order[cuts[k] : cuts[k + 1]]:
            part_of[sources[i]] = k
    parts: list[list[Pair]] = [[] for _ in fractions]
    for s, t in pairs:
        parts[part_of[s]].append((s, t))
    return parts


__all__ = [
    "Example",
    "FORMATS",
    "Pair",
    "read_pairs",
    "read_tsv",
    "read_cmudict",
    "read_tatoeba",
    "write_pairs",
    "group_pairs",
    "group_split",
]


def reference_form(tokenizer: CharTokenizer | WordTokenizer, text: str) -> str:
    """``text`` as the target tokenizer would give it back: normalised, tokens joined like ``decode``."""
    if tokenizer.level == "char":
        return tokenizer.normalize(text)
    return " ".join(tokenizer.tokenize(text))
