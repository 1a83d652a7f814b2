"""Word tokenizer shared by training (``rnnkit.toolkit``) and serving (``rnnkit.runtime``).

Text -> NFKC-normalised (optionally lower-cased) string -> words and single punctuation
marks by one Unicode-aware regex -> ids, with ``<pad>`` = 0 and ``<unk>`` = 1.  The regex is
rnnkit's own, chosen by name (``SPLITTERS``): a manifest says ``"splitter": "words"`` and can
never supply a pattern, so a bundle from an untrusted source cannot make ``predict`` hang on a
catastrophically backtracking regex.  The
vocabulary is built deterministically (frequency, then alphabetical order) so the same
corpus gives the same ids on every platform.  ``to_dict`` / ``from_dict`` is the JSON form
stored in checkpoints and bundle manifests; ``from_dict`` validates every key and raises
``BundleError`` naming the file and key.  ``CharTokenizer`` (``level: "char"``) is the
character-level tokenizer of language models: one id per character, no lower-casing;
``tokenizer_from_dict`` rebuilds either from its ``level``.

Pure stdlib + numpy: must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Iterable, Literal, Sequence

import numpy as np

from .errors import BundleError, InputError

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
SPECIALS = (PAD, UNK)
# An encoder-decoder's target vocabulary also has the decoder's start and stop tokens, at fixed
# ids so that a model config's bos_id / eos_id never depend on the corpus.
BOS, EOS = "<s>", "</s>"
BOS_ID, EOS_ID = 2, 3
TARGET_SPECIALS = (PAD, UNK, BOS, EOS)

# Words (letters/digits/underscore in any script, with inner apostrophes: "it's", "don’t")
# or any single non-space, non-word character (punctuation, symbols).
DEFAULT_PATTERN = r"\w+(?:['’]\w+)*|[^\w\s]"
# The word splitters rnnkit writes, by name.  A name's pattern never changes (another pattern gets
# another name): a bundle's ids are only right with the exact splitting it was trained with.
SPLITTERS = {"words": DEFAULT_PATTERN}
DEFAULT_SPLITTER = "words"
# Checkpoints and bundles written before splitters had names stored the regex itself under
# "pattern"; only the strings rnnkit wrote are accepted, mapped to their names.
LEGACY_PATTERNS = {DEFAULT_PATTERN: "words"}
NORMALIZATIONS = ("NFC", "NFKC", "NFD", "NFKD")  # unicodedata's forms
Normalization = Literal["NFC", "NFKC", "NFD", "NFKD"]  # the same, as a type (from_dict refuses others)
TOKENIZER_KEYS = {"level", "lowercase", "normalization", "splitter", "vocab"}
# A vocabulary is data from the bundle: bounded so that a hostile one cannot exhaust memory or
# time on lookups (a real entry is a word, a character or a special; 1024 characters is generous).
MAX_TOKEN_CHARS = 1024
MAX_VOCAB = 1 << 24  # the embedding table's rows; bundle.MAX_DIM bounds them the same way


def pad_ids(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id rows with ``<pad>`` = 0 -> (ids int64 (B, T), lengths int32 (B,))."""
    lengths = np.array([len(r) for r in rows], dtype=np.int32)
    ids = np.full((len(rows), int(lengths.max(initial=0))), PAD_ID, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, lengths


def ranked_vocab(
    counts: Counter, max_size: int | None = None, min_freq: int = 1, specials: Sequence[str] = SPECIALS
) -> list[str]:
    """``specials`` (``<pad>``, ``<unk>``; a seq2seq target adds ``<s>``, ``</s>``), then the entries
    seen at least ``min_freq`` times, most frequent first, ties by code point (the same corpus gives
    the same ids on every platform); at most ``max_size`` entries in all, specials included."""
    for special in specials:
        counts.pop(special, None)
    ranked = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
    if max_size is not None:
        ranked = ranked[: max(0, max_size - len(specials))]
    return list(specials) + ranked


def target_ids(ids: Iterable[int]) -> list[int]:
    """A decoder's output ids up to (not including) the first ``</s>``, without ``<s>`` / ``<pad>``."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            out.append(i)
    return out


def _tokens(
    vocab: Sequence[str], ids: Iterable[int], skip_pad: bool, unknown: str, unk_id_is_unknown: bool = False
) -> list[str]:
    """``decode``'s id -> token mapping: ``unknown`` for ids outside ``vocab`` (and for ``<unk>``
    itself when ``unk_id_is_unknown``: a character model shows it as U+FFFD, not as "<unk>")."""
    out = []
    for i in ids:
        i = int(i)
        if skip_pad and i == PAD_ID:
            continue
        known = 0 <= i < len(vocab) and not (unk_id_is_unknown and i == UNK_ID)
        out.append(vocab[i] if known else unknown)
    return out


class WordTokenizer:
    """Word-level tokenizer; ``vocab[i]`` is the token with id ``i``."""

    level = "word"

    def __init__(
        self,
        vocab: Sequence[str] = SPECIALS,
        lowercase: bool = True,
        splitter: str = DEFAULT_SPLITTER,
        normalization: Normalization = "NFKC",
    ):
        if splitter not in SPLITTERS:
            raise ValueError(f"splitter must be one of {sorted(SPLITTERS)}, got {splitter!r}")
        self.vocab = list(vocab)
        self.lowercase = bool(lowercase)
        self.splitter = splitter
        self.pattern = SPLITTERS[splitter]  # rnnkit's own regex: never text from a file
        self.normalization = normalization
        self._regex = re.compile(self.pattern)
        self._index = {tok: i for i, tok in enumerate(self.vocab)}

    # -- building ---------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        lowercase: bool = True,
        max_size: int | None = 20000,
        min_freq: int = 1,
        specials: Sequence[str] = SPECIALS,
    ) -> "WordTokenizer":
        """Vocabulary of the ``max_size`` most frequent tokens (specials included) seen
        at least ``min_freq`` times; ties broken alphabetically (by code point).
        ``specials=TARGET_SPECIALS`` for a seq2seq target (``<s>`` = 2, ``</s>`` = 3)."""
        if max_size is not None and max_size < len(specials):
            raise ValueError(f"max_size must be >= {len(specials)} ({', '.join(specials)}), got {max_size}")
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        tok = cls(lowercase=lowercase)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tok.tokenize(text))
        return cls(ranked_vocab(counts, max_size, min_freq, specials), lowercase=lowercase)

    # -- text <-> ids -----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def normalize(self, text: str) -> str:
        if not text.isascii():  # ASCII is already NFKC: skip the copy on the serving hot path
            text = unicodedata.normalize(self.normalization, text)
        return text.lower() if self.lowercase else text

    def tokenize(self, text: str) -> list[str]:
        return self._regex.findall(self.normalize(text))

    def split(self, text: str) -> list[str]:
        """The same tokens as ``tokenize`` in their surface form (NFKC, case kept): what a
        tagger shows and feeds to its character features."""
        return self._regex.findall(unicodedata.normalize(self.normalization, text))

    def encode(self, text: str) -> list[int]:
        index = self._index
        return [index.get(t, UNK_ID) for t in self.tokenize(text)]

    def unknown(self, text: str) -> list[str]:
        """Distinct tokens of ``text`` outside the vocabulary (read as ``<unk>``), in order of appearance."""
        index = self._index
        return list(dict.fromkeys(t for t in self.tokenize(text) if t not in index))

    def encode_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Ids of already-split tokens (e.g. CoNLL words): each is normalised like a text
        (NFKC, optional lower-casing) and looked up whole, never re-split by the regex."""
        index = self._index
        return [index.get(self.normalize(t), UNK_ID) for t in tokens]

    def token_id(self, token: str) -> int:
        """Id of one vocabulary entry as stored (no normalisation); <unk> if absent."""
        return self._index.get(token, UNK_ID)

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> ids int64 (B, T) padded with <pad>=0, lengths int32 (B,); rows longer than
        ``max_length`` are truncated (their first ``max_length`` tokens are kept)."""
        if isinstance(texts, str):
            raise InputError("encode_batch expects a list of texts, got one string -- wrap it in a list")
        if max_length is not None and max_length < 1:
            raise InputError(f"max_length must be >= 1, got {max_length}")
        rows = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text #{i} is {type(text).__name__}, expected str")
            ids = self.encode(text)
            if not ids:
                raise InputError(f"text #{i} has no tokens ({text!r}) -- remove empty or whitespace-only texts")
            rows.append(ids[:max_length] if max_length is not None else ids)
        return pad_ids(rows)

    def decode(self, ids: Iterable[int], skip_pad: bool = True) -> str:
        """Tokens joined by spaces (tokenization is lossy: spacing is not restored)."""
        return " ".join(_tokens(self.vocab, ids, skip_pad, unknown=UNK))

    def decode_target(self, ids: Iterable[int]) -> str:
        """Text of a seq2seq decoder's output: stops at ``</s>``, drops ``<s>`` / ``<pad>``."""
        return self.decode(target_ids(ids))

    # -- serialisation ----------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "lowercase": self.lowercase,
            "normalization": self.normalization,
            "splitter": self.splitter,
            "vocab": list(self.vocab),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "manifest.json") -> "WordTokenizer":
        """Validate every key (all problems reported at once) and rebuild the tokenizer."""
        if not isinstance(d, dict):
            raise BundleError(
                f"{source}: 'tokenizer' is {type(d).__name__}, expected an object -- re-export the bundle"
            )
        problems = []
        key = lambda k: f"'tokenizer.{k}'"  # noqa: E731
        d = dict(d)
        if "pattern" in d and "splitter" not in d:  # written before splitters had names
            pattern = d.pop("pattern")
            if isinstance(pattern, str) and pattern in LEGACY_PATTERNS:
                d["splitter"] = LEGACY_PATTERNS[pattern]
            else:
                shown = pattern if not isinstance(pattern, str) or len(pattern) <= 80 else pattern[:80] + "..."
                problems.append(
                    f"{key('pattern')} is {shown!r}, which is not a pattern rnnkit writes; the tokenizer "
                    f"names one of rnnkit's splitters ({', '.join(map(repr, sorted(SPLITTERS)))}) and "
                    "never runs a regular expression from a file"
                )
                d["splitter"] = DEFAULT_SPLITTER  # reported above; keeps the key checks below quiet
        missing = sorted(TOKENIZER_KEYS - d.keys())
        if missing:
            problems.append(f"'tokenizer' lacks key(s) {', '.join(map(repr, missing))}")
        unknown = sorted(d.keys() - TOKENIZER_KEYS)
        if unknown:
            problems.append(
                f"'tokenizer' has unknown key(s) {', '.join(map(repr, unknown))} (expected {sorted(TOKENIZER_KEYS)})"
            )
        if "level" in d and d["level"] != cls.level:
            problems.append(f"{key('level')} is {d['level']!r}, expected {cls.level!r}")
        if "lowercase" in d and not isinstance(d["lowercase"], bool):
            problems.append(f"{key('lowercase')} is {d['lowercase']!r}, expected true or false")
        if "normalization" in d and d["normalization"] not in NORMALIZATIONS:
            problems.append(f"{key('normalization')} is {d['normalization']!r}, expected one of NFC, NFKC, NFD, NFKD")
        if "splitter" in d and (not isinstance(d["splitter"], str) or d["splitter"] not in SPLITTERS):
            problems.append(
                f"{key('splitter')} is {d['splitter']!r}, expected one of "
                f"{', '.join(map(repr, sorted(SPLITTERS)))} (rnnkit's own word splitters)"
            )
        if "vocab" in d:
            problems += _vocab_problems(d["vocab"], "tokenizer.vocab")
        if problems:
            raise BundleError(
                f"{source}: " + "; ".join(problems) + " -- re-export the bundle "
                "or retrain; the tokenizer section must come from WordTokenizer.to_dict()"
            )
        return cls(d["vocab"], lowercase=d["lowercase"], splitter=d["splitter"], normalization=d["normalization"])


def _vocab_problems(vocab, name: str) -> list[str]:
    if not isinstance(vocab, list):
        return [f"'{name}' is {type(vocab).__name__}, expected a list of strings"]
    problems = []
    if len(vocab) < len(SPECIALS):
        problems.append(
            f"'{name}' has {len(vocab)} entries, expected at least {len(SPECIALS)} ({', '.join(SPECIALS)} first)"
        )
    if len(vocab) > MAX_VOCAB:
        return problems + [f"'{name}' has {len(vocab)} entries, more than rnnkit's limit of {MAX_VOCAB}"]
    bad = [i for i, t in enumerate(vocab) if not isinstance(t, str) or not t]
    if bad:
        problems.append(f"'{name}' has non-string or empty entries at index {bad[:5]}")
    long = [i for i, t in enumerate(vocab) if isinstance(t, str) and len(t) > MAX_TOKEN_CHARS]
    if long:
        problems.append(f"'{name}' has entries longer than {MAX_TOKEN_CHARS} characters at index {long[:5]}")
    for i, special in enumerate(SPECIALS[: len(vocab)]):
        if vocab[i] != special:
            problems.append(f"'{name}[{i}]' is {vocab[i]!r}, expected {special!r}")
    seen: set[str] = set()
    repeated: dict[str, None] = {}  # ordered, and O(1) per entry: a hostile vocabulary may repeat millions
    for t in vocab:
        if isinstance(t, str):
            if t in seen:
                repeated[t] = None
            seen.add(t)
    dups = list(repeated)
    if dups:
        problems.append(
            f"'{name}' has duplicate entr{'y' if len(dups) == 1 else 'ies'} " + ", ".join(repr(t) for t in dups[:5])
        )
    return problems


CHAR_TOKENIZER_KEYS = {"level", "normalization", "vocab"}
CHAR_TOKENIZER_OPTIONAL = {"lowercase"}  # absent in checkpoints/bundles written before it existed: False


class CharTokenizer:
    """Character-level tokenizer (language models): ``vocab[i]`` is the character with id ``i``.

    Text is NFC-normalised (composed accents count as one character) and lower-cased only with
    ``lowercase=True`` (a G2P source: spelling case says nothing about pronunciation);
    every character is one token, so ``decode(encode(t)) == t`` for text inside the vocabulary,
    and encoding a text in pieces gives the ids of the whole (streaming-safe).  Characters
    outside the vocabulary encode to ``<unk>``; ``unknown(text)`` lists them.
    """

    level = "char"

    def __init__(self, vocab: Sequence[str] = SPECIALS, normalization: Normalization = "NFC", lowercase: bool = False):
        self.vocab = list(vocab)
        self.normalization = normalization
        self.lowercase = bool(lowercase)
        self._index = {tok: i for i, tok in enumerate(self.vocab)}

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        max_size: int | None = None,
        normalization: Normalization = "NFC",
        lowercase: bool = False,
        specials: Sequence[str] = SPECIALS,
    ) -> "CharTokenizer":
        """Every character seen (or the ``max_size`` most frequent, specials included); ties by code point.
        ``specials=TARGET_SPECIALS`` for a seq2seq target (``<s>`` = 2, ``</s>`` = 3)."""
        tok = cls(normalization=normalization, lowercase=lowercase)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tok.normalize(text))
        return cls(ranked_vocab(counts, max_size, specials=specials), normalization=normalization, lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def normalize(self, text: str) -> str:
        text = unicodedata.normalize(self.normalization, text)
        return text.lower() if self.lowercase else text

    def tokenize(self, text: str) -> list[str]:
        return list(self.normalize(text))

    split = tokenize

    def encode(self, text: str) -> list[int]:
        index = self._index
        return [index.get(c, UNK_ID) for c in self.normalize(text)]

    def unknown(self, text: str) -> list[str]:
        """Distinct characters of ``text`` outside the vocabulary, in order of appearance."""
        return list(dict.fromkeys(c for c in self.normalize(text) if c not in self._index))

    def token_id(self, token: str) -> int:
        return self._index.get(token, UNK_ID)

    def decode(self, ids: Iterable[int], skip_pad: bool = True) -> str:
        return "".join(_tokens(self.vocab, ids, skip_pad, unknown="\ufffd", unk_id_is_unknown=True))

    def decode_target(self, ids: Iterable[int]) -> str:
        """Text of a seq2seq decoder's output: stops at ``</s>``, drops ``<s>`` / ``<pad>``."""
        return self.decode(target_ids(ids))

    def to_dict(self) -> dict:
        d: dict[str, object] = {"level": self.level, "normalization": self.normalization, "vocab": list(self.vocab)}
        if self.lowercase:  # only when set: earlier char tokenizers serialise byte for byte as before
            d["lowercase"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "manifest.json") -> "CharTokenizer":
        if not isinstance(d, dict):
            raise BundleError(
                f"{source}: 'tokenizer' is {type(d).__name__}, expected an object -- re-export the bundle"
            )
        problems = []
        if not CHAR_TOKENIZER_KEYS <= set(d) <= CHAR_TOKENIZER_KEYS | CHAR_TOKENIZER_OPTIONAL:
            problems.append(
                f"'tokenizer' has keys {sorted(d)}, expected {sorted(CHAR_TOKENIZER_KEYS)} "
                f"(optionally {sorted(CHAR_TOKENIZER_OPTIONAL)})"
            )
        if not isinstance(d.get("lowercase", False), bool):
            problems.append(f"'tokenizer.lowercase' is {d['lowercase']!r}, expected true or false")
        if d.get("normalization") not in NORMALIZATIONS:
            problems.append(
                f"'tokenizer.normalization' is {d.get('normalization')!r}, expected one of NFC, NFKC, NFD, NFKD"
            )
        if "vocab" in d:
            problems += _vocab_problems(d["vocab"], "tokenizer.vocab")
            # a seq2seq target's <s> / </s> sit at ids 2 and 3; every other entry is one character
            if isinstance(d["vocab"], list) and any(
                isinstance(t, str) and len(t) != 1 and (t, i) not in ((BOS, BOS_ID), (EOS, EOS_ID))
                for i, t in enumerate(d["vocab"][2:], 2)
            ):
                problems.append(
                    "'tokenizer.vocab' has entries longer than one character (a char tokenizer's "
                    "entries after <pad>, <unk> (and a target's <s>, </s>) are single characters)"
                )
        if problems:
            raise BundleError(
                f"{source}: " + "; ".join(problems) + " -- re-export the bundle or retrain; the "
                "tokenizer section must come from CharTokenizer.to_dict()"
            )
        return cls(d["vocab"], normalization=d["normalization"], lowercase=d.get("lowercase", False))


WHITESPACE = "whitespace"  # WhitespaceTokenizer's splitter name (a word level of its own kind)
DEFAULT_EOS = "<eos>"  # the Mikolov PTB files' end-of-sentence token, as the literature's readers append it
WHITESPACE_KEYS = {"level", "splitter", "unk_token", "eos_token", "vocab"}


class WhitespaceTokenizer(WordTokenizer):
    """Word tokenizer of pre-tokenized corpora (the Mikolov PTB files, WikiText): the tokens are
    exactly the whitespace-separated fields, case and spelling kept (no normalisation), so a
    perplexity is over the same tokens as the literature's.

    ``unk_token`` is the corpus's own unknown-word token (PTB: ``<unk>``): it is read as rnnkit's
    ``<unk>`` (id 1) and written back as itself.  With ``eos_token`` (default ``<eos>``; ``None``:
    off) every newline is one more token, as the PTB readers append one per line; so a text
    chunked at any whitespace encodes to the ids of the whole (streaming-safe), and a file's last
    line gets its token when the file ends with a newline (``ensure_final_newline``).
    The vocabulary: ``<pad>``, ``<unk>``, then the training text's types by frequency (ties by
    code point); ``max_types`` counts the corpus's types, its unknown and end-of-line tokens
    included (``<pad>`` is rnnkit's own, extra).  A ``WordTokenizer`` to every caller (same
    methods, ``level`` "word"); only its splitting, its vocabulary building and its JSON differ."""

    level = "word"

    def __init__(  # noqa: D107 -- WordTokenizer's regex, case and normalisation do not apply
        self, vocab: Sequence[str] = SPECIALS, unk_token: str = UNK, eos_token: str | None = DEFAULT_EOS
    ):
        for name, token in (("unk_token", unk_token), ("eos_token", eos_token)):
            if token is not None and (not isinstance(token, str) or not token or len(token.split()) != 1):
                raise ValueError(f"{name} must be one non-empty token without whitespace, got {token!r}")
        if eos_token is not None and eos_token == unk_token:
            raise ValueError(f"eos_token and unk_token must differ, both are {unk_token!r}")
        self.vocab = list(vocab)
        self.lowercase = False
        self.splitter = WHITESPACE
        self.unk_token = unk_token
        self.eos_token = eos_token
        self._index = {tok: i for i, tok in enumerate(self.vocab)}
        self._index[unk_token] = UNK_ID  # the corpus's unknown token is the model's <unk>

    @classmethod
    def build(  # type: ignore[override]  # its own options: no case, regex or specials to choose
        cls,
        texts: Iterable[str],
        unk_token: str = UNK,
        eos_token: str | None = DEFAULT_EOS,
        max_types: int | None = None,
        min_freq: int = 1,
    ) -> "WhitespaceTokenizer":
        """Every type of ``texts`` (or the ``max_types`` most frequent, seen ``min_freq`` times)."""
        if max_types is not None and max_types < 1:
            raise ValueError(f"max_types must be >= 1, got {max_types}")
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        tok = cls(unk_token=unk_token, eos_token=eos_token)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tok.tokenize(text))
        counts.pop(unk_token, None)  # it is <unk> (id 1), one of the max_types
        max_size = None if max_types is None else max_types + 1  # + <pad>
        return cls(ranked_vocab(counts, max_size, min_freq), unk_token=unk_token, eos_token=eos_token)

    def normalize(self, text: str) -> str:
        return text  # the corpus's tokens exactly

    def tokenize(self, text: str) -> list[str]:
        if self.eos_token is None:
            return text.split()
        lines = text.split("\n")
        out: list[str] = []
        for line in lines[:-1]:
            out += line.split()
            out.append(self.eos_token)
        return out + lines[-1].split()

    def split(self, text: str) -> list[str]:
        return self.tokenize(text)

    def tokens(self, ids: Iterable[int], skip_pad: bool = True) -> list[str]:
        """Ids -> tokens as the corpus writes them (``<unk>`` as ``unk_token``)."""
        vocab = [PAD, self.unk_token, *self.vocab[2:]]
        return _tokens(vocab, ids, skip_pad, unknown=self.unk_token)

    def decode(self, ids: Iterable[int], skip_pad: bool = True) -> str:
        """The corpus's text: tokens joined by spaces, the end-of-line token as a newline."""
        out: list[str] = []
        for t in self.tokens(ids, skip_pad):
            if t == self.eos_token:
                out.append("\n")
            else:
                out.append(t if not out or out[-1] == "\n" else " " + t)
        return "".join(out)

    def ensure_final_newline(self, text: str) -> str:
        """``text`` ending with a newline (when end-of-line tokens are on): every line, the last one
        too, ends with its token, as the literature's line readers count them."""
        return text if self.eos_token is None or text.endswith("\n") else text + "\n"

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "splitter": self.splitter,
            "unk_token": self.unk_token,
            "eos_token": self.eos_token,
            "vocab": list(self.vocab),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "manifest.json") -> "WhitespaceTokenizer":
        problems = []
        if set(d) != WHITESPACE_KEYS:
            problems.append(f"'tokenizer' has keys {sorted(d)}, expected {sorted(WHITESPACE_KEYS)}")
        for key, optional in (("unk_token", False), ("eos_token", True)):
            v = d.get(key)
            if (v is not None or not optional) and (
                not isinstance(v, str) or not v or len(v) > MAX_TOKEN_CHARS or len(v.split()) != 1
            ):
                problems.append(
                    f"'tokenizer.{key}' is {v!r}, expected one token without whitespace"
                    + (" or null" if optional else "")
                )
        if "vocab" in d:
            problems += _vocab_problems(d["vocab"], "tokenizer.vocab")
            unk = d.get("unk_token")
            if isinstance(d["vocab"], list) and unk != UNK and unk in d["vocab"]:
                problems.append(f"'tokenizer.vocab' has the unk_token {unk!r}, which is <unk> (id 1) already")
        if not problems and d["eos_token"] is not None and d["eos_token"] == d["unk_token"]:
            problems.append("'tokenizer.eos_token' and 'tokenizer.unk_token' are the same token")
        if problems:
            raise BundleError(
                f"{source}: " + "; ".join(problems) + " -- re-export the bundle or retrain; the "
                "tokenizer section must come from WhitespaceTokenizer.to_dict()"
            )
        return cls(d["vocab"], unk_token=d["unk_token"], eos_token=d["eos_token"])


TOKENIZERS: dict[str, type[WordTokenizer] | type[CharTokenizer]] = {"word": WordTokenizer, "char": CharTokenizer}


def tokenizer_from_dict(d, source: str = "manifest.json") -> WordTokenizer | CharTokenizer:
    """Rebuild the tokenizer a ``to_dict()`` describes, by its ``level`` (word | char) and, at word
    level, its ``splitter`` (``"whitespace"``: ``WhitespaceTokenizer``)."""
    level = d.get("level") if isinstance(d, dict) else None
    if level not in TOKENIZERS:
        raise BundleError(
            f"{source}: 'tokenizer.level' is {level!r}, expected one of {sorted(TOKENIZERS)} -- re-export the bundle"
        )
    if level == "word" and d.get("splitter") == WHITESPACE:
        return WhitespaceTokenizer.from_dict(d, source=source)
    return TOKENIZERS[level].from_dict(d, source=source)
