"""``rnnkit explain BUNDLE "text" ...``: which tokens decided each prediction, for people or programs.

Thin: read the texts (arguments, ``--input FILE`` with one text per line, or stdin lines), call
``Model.explain`` (``rnnkit.runtime.explain``), format with ``rnnkit.runtime.explain_render``
(text, JSON lines, HTML) or ``explain_plots`` (PNG), write to stdout or atomically to
``--output``.  Never imports torch.
"""

from __future__ import annotations

import json
import os
import sys

import click

from .cli_common import BACKEND

FORMATS = ("text", "json", "html", "png")


def read_texts(texts: tuple[str, ...], input_path: str | None, encoding: str) -> list[str]:
    """The arguments, else --input's lines ('-': stdin), else stdin's lines when it is not a terminal."""
    if texts and input_path:
        raise click.UsageError("give texts as arguments or with --input, not both")
    if texts:
        return list(texts)
    if input_path and input_path != "-":
        with open(input_path, encoding=encoding) as handle:
            lines = handle.read().splitlines()
    elif input_path == "-" or not sys.stdin.isatty():
        lines = sys.stdin.read().splitlines()
    else:
        raise click.UsageError('give TEXTS, --input FILE, or lines on stdin (rnnkit explain BUNDLE "a text")')
    return [line for line in lines if line.strip()]


def use_color(output_path: str | None) -> bool:
    """ANSI bold/colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return output_path is None and sys.stdout.isatty() and not os.environ.get("NO_COLOR")


@click.command()
@click.argument("bundle", type=click.Path())
@click.argument("texts", nargs=-1)
@click.option("--input", "input_path", type=click.Path(), help="Text file, one text per line ('-': stdin).")
@click.option(
    "--method",
    type=click.Choice(["auto", "occlusion", "attention"]),
    default="auto",
    show_default=True,
    help="auto: occlusion for classifiers and taggers, attention for encoder-decoders.",
)
@click.option("--top", "top", type=click.IntRange(1), default=3, show_default=True, help="Tokens to mark (text).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--output", "output_path", type=click.Path(), help="File to write (atomically); default stdout.")
@click.option("--token", type=click.IntRange(0), default=None, help="Tagger: explain the tag of this token position.")
@click.option("--beam", type=click.IntRange(1), default=5, show_default=True, help="Encoder-decoder beam width.")
@click.option("--truncate", is_flag=True, help="Explain a text over max_length on its first max_length tokens.")
@click.option("--backend", type=BACKEND, default="auto", show_default=True)
@click.option("--int8", is_flag=True, help="Use the bundle's int8 model.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="Backend threads.")
@click.option("--encoding", default="utf-8", show_default=True)
def explain(
    bundle, texts, input_path, method, top, fmt, output_path, token, beam, truncate, backend, int8, threads, encoding
):
    """Explain BUNDLE's prediction for TEXTS (or --input FILE, or stdin lines): which tokens decided it.

    text: the prediction and the text with its --top tokens in bold (``**word**`` when not a terminal
    or NO_COLOR is set); json: one line per text {"text", "tokens", "scores", "method",
    "prediction", "raw"[, "alignment", "targets"]}; html: one self-contained page shading each
    token (and an alignment heatmap for encoder-decoders); png: a plot (needs --output).
    Scores sum to 1 in absolute value; see docs/explain.md."""
    from ..runtime import load
    from ..runtime.explain_render import render_html, render_text
    from ..runtime.io import atomic_writer

    if fmt == "png" and not output_path:
        raise click.UsageError("--format png needs --output FILE.png")
    items = read_texts(texts, input_path, encoding)
    if not items:
        raise click.UsageError("no texts to explain (every input line was empty)")
    model = load(bundle, backend=backend, int8=int8, threads=threads)
    options: dict = {"truncate": truncate}
    if method != "auto":
        options["method"] = method
    if token is not None:
        if model.task != "tag":
            raise click.UsageError("--token is for tagger bundles")
        options["token"] = token
    if model.task == "seq2seq":
        options["beam"] = beam
    found = model.explain(items, **options)
    if fmt == "png":
        from .explain_plots import plot_explanations

        with atomic_writer(output_path, "wb") as handle:
            plot_explanations(found, handle)
        click.echo(f"wrote {output_path}", err=True)
        return
    if fmt == "html":
        body = render_html(found)
    elif fmt == "json":
        body = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in found)
    else:
        color = use_color(output_path)
        body = "".join(render_text(e, top, color) + "\n" for e in found)
    if output_path:
        with atomic_writer(output_path) as handle:
            handle.write(body)
    else:
        click.echo(body, nl=False)
