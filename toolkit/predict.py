"""Batch prediction for the CLI: read texts, predict in length buckets, write JSON lines atomically.

Imports only ``rnnkit.runtime`` (never torch): ``rnnkit predict`` runs on devices
without it.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext

import click

from ..runtime.errors import InputError
from ..runtime.io import atomic_writer, read_records

CHUNK = 4096  # texts predicted per step: bounds memory on huge inputs, keeps the bar moving


def read_texts(texts, input_path, text_field: str, encoding: str) -> tuple[list[str], list[str]]:
    """(sources, texts): from arguments, a file, or stdin lines.  Empty texts are refused by location."""
    if texts:
        sources = [f"argument {i + 1}" for i in range(len(texts))]
        items = list(texts)
    elif input_path:
        records = list(read_records(input_path, (text_field,), encoding))
        sources = [where for where, _ in records]
        items = [record[text_field] for _, record in records]
    else:
        data = sys.stdin.buffer.read()
        try:
            lines = data.decode(encoding).splitlines()
        except UnicodeDecodeError as exc:
            raise InputError(f"stdin: invalid {encoding} at byte {exc.start}; re-encode as UTF-8 or pass --encoding") from None
        pairs = [(f"stdin:{n}", line) for n, line in enumerate(lines, 1) if line.strip()]
        sources, items = [p[0] for p in pairs], [p[1] for p in pairs]
    for where, text in zip(sources, items):
        if not text.strip():
            raise InputError(f"{where}: empty text; remove it or give it some words")
    if not items:
        raise InputError(f"{input_path or 'stdin'}: no texts to predict")
    return sources, items


def write_predictions(model, sources, items, output_path, batch_size: int, show_progress: bool) -> None:
    sink = atomic_writer(output_path) if output_path else nullcontext(sys.stdout)
    bar = (click.progressbar(length=len(items), label="predicting", file=sys.stderr)
           if show_progress else nullcontext())
    with sink as out, bar as progress:
        for start in range(0, len(items), CHUNK):
            chunk = items[start:start + CHUNK]
            predictions = model.predict(chunk, batch_size=batch_size,
                                        progress=progress.update if show_progress else None)
            for p in predictions:
                out.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
