"""Build a PTB-format word-LM corpus (Mikolov's ``ptb.*.txt`` layout) from UD English-EWT's token column.

PTB's language-modelling files (Mikolov et al. 2010, the ones Zaremba et al. 2014 report on) are one
sentence per line, tokens separated by single spaces (each line starts and ends with a space),
lower-cased, numbers replaced by ``N``, punctuation dropped (``$``, ``&``, ``%``, ``#`` and words with
inner punctuation such as ``'s``, ``n't``, ``u.s.`` kept), and every word outside the 10,000 most
frequent training types written ``<unk>``.  This script does the same to EWT's gold tokenization
(train / dev / test -> ``train.txt`` / ``valid.txt`` / ``test.txt``), so ``scripts/word_lm.py`` and
``rnnkit train lm --tokenizer whitespace`` can be developed on a corpus in exactly that format.
EWT (web text, 204k training tokens) is 4.5x smaller than PTB's 930k: its perplexities are not PTB's.

    .venv/bin/python scripts/make_word_corpus.py --out runs/ewt-ptb
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "ud_english_ewt_pos"
SPLITS = {"train": "en_ewt-ud-train.upos.tsv", "valid": "en_ewt-ud-dev.upos.tsv", "test": "en_ewt-ud-test.upos.tsv"}
UNK, NUMBER = "<unk>", "N"
# a number as PTB writes one: digits with inner separators (1,000  3.5  1/2  10:30  2-3); "2nd", "mp3" stay words
NUMBER_RE = re.compile(r"^[+-]?\d[\d,.:/-]*$|^[+-]?[.,]\d[\d,.:/-]*$")
KEPT_SYMBOLS = {"$", "&", "%", "#"}  # PTB keeps these symbols as words; other punctuation-only tokens go


def sentences(path: Path) -> list[list[str]]:
    """The WORD column of a WORD<TAB>TAG file, one list per sentence (blank lines end sentences)."""
    out, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                out.append(current)
            current = []
            continue
        current.append(line.split("\t", 1)[0])
    if current:
        out.append(current)
    return out


def ptb_token(word: str) -> str | None:
    """A word as PTB writes it (None: dropped): lower-cased, numbers -> N, punctuation-only dropped."""
    w = word.lower().replace(" ", "")
    if not w:
        return None
    if NUMBER_RE.match(w):
        return NUMBER
    if w in KEPT_SYMBOLS or any(c.isalnum() for c in w):
        return w
    return None


def build(out: Path, vocab_size: int) -> dict:
    from rnnkit.runtime.io import atomic_writer

    lines = {}
    for split, name in SPLITS.items():
        lines[split] = [[t for t in map(ptb_token, s) if t is not None] for s in sentences(DATA / name)]
        lines[split] = [s for s in lines[split] if s]
    counts = Counter(t for s in lines["train"] for t in s)
    # the vocabulary is vocab_size types with <unk>; <eos> is the reader's (PTB: 9,999 words + <unk>)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))[: vocab_size - 1]
    keep = set(ranked)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict = {"source": str(DATA), "vocab": vocab_size, "train_types_before_unk": len(counts)}
    for split, sents in lines.items():
        with atomic_writer(out / f"{split}.txt") as f:
            for s in sents:
                f.write(" " + " ".join(t if t in keep else UNK for t in s) + " \n")
        tokens = sum(len(s) for s in sents)
        unk = sum(t not in keep for s in sents for t in s)
        stats[split] = {"sentences": len(sents), "tokens": tokens, "with_eos": tokens + len(sents), "unk": unk}
    with atomic_writer(out / "corpus.json") as f:
        f.write(json.dumps(stats, indent=1) + "\n")
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ewt-ptb")
    ap.add_argument("--vocab", type=int, default=10000, help="types including <unk> (PTB: 10,000)")
    args = ap.parse_args()
    print(json.dumps(build(args.out, args.vocab), indent=1))


if __name__ == "__main__":
    main()
