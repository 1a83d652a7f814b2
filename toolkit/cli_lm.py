"""``rnnkit eval-lm BUNDLE --data test.txt``: a language model's perplexity on a text file, counted as
the literature counts it (``rnnkit.runtime.perplexity``).  Torch-free: it runs the bundle."""

from __future__ import annotations

import json
import sys
import time

import click

from .cli_common import BACKEND


@click.command("eval-lm")
@click.argument("bundle", type=click.Path())
@click.option("--data", "data_path", required=True, type=click.Path(), help="Text file (e.g. ptb.test.txt).")
@click.option(
    "--streams",
    type=click.IntRange(1, 4096),
    default=1,
    show_default=True,
    help="Parallel rows: 1 carries one state across the whole file (the published protocol); "
    "B reads B contiguous rows at once, as training does (each row starts afresh; the tail of < B tokens is left out).",
)
@click.option("--backend", type=BACKEND, default="auto", show_default=True)
@click.option("--int8", is_flag=True, help="Use the bundle's int8 model.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="Backend threads.")
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def eval_lm(bundle, data_path, streams, backend, int8, threads, encoding, as_json):
    """Perplexity of a language-model BUNDLE on the text of --data, every token (end-of-line tokens
    included) predicted with the state carried across the file."""
    import numpy as np

    from ..runtime import load
    from ..runtime.errors import InputError
    from ..runtime.perplexity import ids_perplexity, text_ids

    model = load(bundle, backend=backend, int8=int8, threads=threads)
    if model.task != "lm":
        raise InputError(
            f"{bundle} is {model.noun} bundle; `rnnkit eval-lm` measures language models (task lm) -- "
            "give a bundle exported from `rnnkit train lm`"
        )
    ids, context = text_ids(model, _read(data_path, encoding))
    start = time.perf_counter()
    with click.progressbar(length=len(ids), label="eval-lm", file=sys.stderr, width=30) as bar:
        result = ids_perplexity(model, np.asarray(ids, np.int64), context, streams, progress=bar.update)
    seconds = time.perf_counter() - start
    record = {
        "bundle": str(bundle),
        "data": str(data_path),
        "backend": model.backend,
        "int8": bool(int8),
        **result.to_dict(),
        "seconds": round(seconds, 2),
    }
    if as_json:
        click.echo(json.dumps(record))
        return
    click.echo(
        f"{data_path}: perplexity {result.perplexity:.2f} (loss {result.loss:.4f} nats/token) over "
        f"{result.tokens} tokens ({result.unknown} <unk>), {streams} stream{'s' if streams > 1 else ''}, "
        f"{model.backend}{' int8' if int8 else ' fp32'}, {seconds:.1f}s"
    )


def _read(path, encoding: str) -> str:
    from ..runtime.io import read_text_file

    return read_text_file(path, encoding, "give the text to evaluate on (--data)")
