"""A seq2seq bundle's optional lexicon: known sources with their known outputs (a G2P dictionary).

A G2P model guesses; for a word that is in CMUdict the dictionary is right.  ``rnnkit export
--lexicon FILE`` stores the pairs as ``lexicon.tsv`` inside the bundle (hashed in the manifest
like every other file, so a tampered lexicon is refused with the bundle), and
``Model.translate(..., lookup=True)`` / ``rnnkit predict --lookup`` answer those sources from it
and decode the rest.  Keys are normalised with the bundle's source tokenizer (NFKC, lower-cased
when it lower-cases), so ``Hello`` finds ``hello``.  Lookup is opt-in: without it every output is
the model's, which is what evaluation must measure.

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .errors import BundleError

LEXICON_FILE = "lexicon.tsv"


def write_lexicon(path: Path, pairs: Iterable[tuple[str, str]], normalize) -> int:
    """Write ``source<TAB>output`` lines (first output of a source first) -> the number of sources."""
    seen: dict[str, list[str]] = {}
    for source, output in pairs:
        key = normalize(source)
        if key and output and output not in seen.setdefault(key, []):
            seen[key].append(output)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for key, outputs in seen.items():
            for output in outputs:
                handle.write(f"{key}\t{output}\n")
    return len(seen)


class Lexicon:
    def __init__(self, entries: dict[str, list[str]], normalize):
        self.entries = entries
        self._normalize = normalize

    @classmethod
    def read(cls, path: Path, normalize) -> "Lexicon":
        entries: dict[str, list[str]] = {}
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2 or not parts[0] or not parts[1]:
                    raise BundleError(
                        f"{path}:{number}: expected 'source<TAB>output'; the bundle's lexicon is "
                        f"corrupted, re-export it"
                    )
                entries.setdefault(parts[0], []).append(parts[1])
        return cls(entries, normalize)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, text: str) -> list[str] | None:
        """The known outputs of ``text`` (preferred first), or None."""
        return self.entries.get(self._normalize(text.strip()))
