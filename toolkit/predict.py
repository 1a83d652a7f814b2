"""Batch prediction for the CLI: read inputs, predict in length buckets, write JSON lines atomically.

Imports only ``rnnkit.runtime`` (never torch): ``rnnkit predict`` runs on devices
without it.  A classifier bundle writes ``{"text", "label", "score", "scores"}`` lines, a
tagging bundle ``{"tokens", "tags", "scores"}`` lines, an encoder-decoder ``{"input", "output",
"score"}`` lines (plus ``"nbest": [{"output", "score"}, ...]`` with ``--nbest``).
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

import click

from ..runtime.errors import InputError
from ..runtime.io import JSONL, atomic_writer, read_lines, read_records

CHUNK = 4096  # items predicted per step: bounds memory on huge inputs, keeps the bar moving


def read_texts(texts, input_path, text_field: str, encoding: str, tagging: bool = False,
               pretokenized: bool = False) -> tuple[list[str], list]:
    """(sources, items): from arguments, a file, or stdin lines.

    Classification refuses empty texts by location.  Tagging items are raw strings (split by
    the bundle's tokenizer) or token lists (``--pretokenized`` lines, JSONL ``tokens``);
    an empty sentence is allowed and gets an empty result.
    """
    if texts:
        pairs = [(f"argument {i + 1}", t) for i, t in enumerate(texts)]
    elif input_path and tagging and Path(input_path).suffix.lower() in JSONL:
        pairs = list(_read_jsonl_sentences(Path(input_path), text_field, encoding))
    elif input_path:
        pairs = [(where, record[text_field]) for where, record in read_records(input_path, (text_field,), encoding)]
    else:
        data = sys.stdin.buffer.read()
        try:
            lines = data.decode(encoding).splitlines()
        except UnicodeDecodeError as exc:
            raise InputError(f"stdin: invalid {encoding} at byte {exc.start}; re-encode as UTF-8 or pass --encoding") from None
        pairs = [(f"stdin:{n}", line) for n, line in enumerate(lines, 1) if line.strip()]
    if not pairs:
        raise InputError(f"{input_path or 'stdin'}: nothing to predict")
    sources = [p[0] for p in pairs]
    items = [p[1] for p in pairs]
    if tagging:
        if pretokenized:
            items = [i.split() if isinstance(i, str) else i for i in items]
        return sources, items
    for where, text in zip(sources, items):
        if not text.strip():
            raise InputError(f"{where}: empty text; remove it or give it some words")
    return sources, items


def _read_jsonl_sentences(path: Path, text_field: str, encoding: str):
    for number, line in read_lines(path, encoding):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        tokens = record.get("tokens") if isinstance(record, dict) else None
        if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
            yield where, tokens
        elif isinstance(record, dict) and isinstance(record.get(text_field), str):
            yield where, record[text_field]
        else:
            raise InputError(f"{where}: expected an object with a 'tokens' list of strings or a {text_field!r} "
                             f"string; choose the key with --text-field")


def write_predictions(model, sources, items, output_path, batch_size: int, show_progress: bool,
                      beam: int | None = None, nbest: int | None = None, alpha: float | None = None,
                      max_output_tokens: int | None = None, lookup: bool = False) -> None:
    """``beam``/``nbest``/``alpha``/``max_output_tokens``/``lookup``: seq2seq bundles only (see ``Model.nbest``)."""
    task = model.bundle.task
    if task == "seq2seq":
        run = _seq2seq_run(model, items, beam, nbest, alpha, max_output_tokens, lookup)
    else:
        run = model.tag if task == "tag" else model.predict
    sink = atomic_writer(output_path) if output_path else nullcontext(sys.stdout)
    bar = (click.progressbar(length=len(items), label="predicting", file=sys.stderr)
           if show_progress else nullcontext())
    with sink as out, bar as progress:
        for start in range(0, len(items), CHUNK):
            try:
                results = run(items[start:start + CHUNK], batch_size=batch_size,
                              progress=progress.update if show_progress else None)
            except InputError as exc:  # "sentence #i" inside the chunk -> the input's own location
                raise InputError(f"{_locate(str(exc), sources, start)}") from None
            for r in results:
                out.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")


class _Line:
    """One seq2seq JSON line: the input, its best output and score[, the n best]."""

    def __init__(self, text: str, hypotheses, nbest: bool):
        self.text, self.hypotheses, self.nbest = text, hypotheses, nbest

    def to_dict(self) -> dict:
        best = self.hypotheses[0]
        line = {"input": self.text, "output": best.output, "score": best.score}
        if self.nbest:
            line["nbest"] = [h.to_dict() for h in self.hypotheses]
        return line


def _seq2seq_run(model, items, beam: int, nbest: int | None, alpha: float | None, max_output_tokens: int | None,
                 lookup: bool = False):
    from ..runtime.decode import DEFAULT_ALPHA

    n = nbest or 1
    beam = beam if beam is not None else max(5, n)
    alpha = DEFAULT_ALPHA if alpha is None else alpha

    def run(texts, batch_size, progress):
        found = model.nbest(texts, n=n, beam=beam, alpha=alpha, max_output_tokens=max_output_tokens,
                            batch_size=batch_size, progress=progress, lookup=lookup)
        return [_Line(t, h, nbest is not None) for t, h in zip(texts, found)]

    return run


def _locate(message: str, sources: list[str], offset: int) -> str:
    import re

    match = re.match(r"(?:text|sentence) #(\d+)", message)
    if not match:
        return message
    return f"{sources[offset + int(match.group(1))]}: {message}"
