"""Batch prediction for the CLI: read records, predict in length buckets, write JSON lines atomically.

Imports only ``rnnkit.runtime`` (never torch): ``rnnkit predict`` runs on devices
without it.  A classifier bundle writes ``{"text", "label", "score", "scores"}`` lines, a
tagging bundle ``{"tokens", "tags", "scores"}`` lines, an encoder-decoder ``{"input", "output",
"score"}`` lines (plus ``"nbest": [{"output", "score"}, ...]`` with ``--nbest``).

Inputs are read by the one record reader (``rnnkit.runtime.records``), as training and the Dask
engine read them.  A bad record -- unreadable, or refused by the model -- does not stop the run
(see docs/records.md): it goes to ``--errors FILE`` (JSON lines ``{"source", "error"}``) or to
stderr, and the run ends with ``N rows in, M predictions, K errors``.  ``--strict`` stops at the
first bad record instead; a run where every record is bad fails (a wrong ``--text-field`` or
``--encoding`` looks like that).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field

import click

from ..runtime.batch import items_of, run_items
from ..runtime.errors import InputError
from ..runtime.io import atomic_writer
from ..runtime.records import Record, check_text, read_records
from ..runtime.tasks import task_of

CHUNK = 4096  # items predicted per step: bounds memory on huge inputs, keeps the bar moving
log = logging.getLogger("rnnkit.cli")  # notices on stderr (cli.show_notices), never in the results

# How each command is called on a bundle, for messages that send the user to the right one.
USAGE = {"predict": "rnnkit predict {bundle} TEXT", "generate": "rnnkit generate {bundle} --prompt TEXT"}


@dataclass
class Report:
    rows: int  # records read, good and bad (blank lines are not records)
    predictions: int  # lines written
    errors: list[tuple[str, str]] = field(default_factory=list)  # (source, why), in input order
    unknown: Counter = field(default_factory=Counter)  # seq2seq: inputs with each out-of-alphabet token
    inputs_with_unknown: int = 0


def show_backend(model, requested: str) -> None:
    """One stderr line naming the backend that runs ``model`` (and its version): which one ``auto``
    picked is otherwise invisible, and the two differ in speed and in what they install."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = " " + version(model.backend)
    except PackageNotFoundError:
        release = ""
    how = " (auto)" if requested == "auto" else ""
    log.info(f"backend: {model.backend}{release}{' int8' if model.int8 else ''}{how}")


def refuse_other_command(model, command: str) -> None:
    """``InputError`` naming the command that runs ``model``'s bundle when it is not ``command``."""
    verb = task_of(model.task).verb
    if verb != command:
        bundle = model.bundle.path
        raise InputError(
            f"{bundle} is {model.noun} bundle, which `rnnkit {command}` does not run; use "
            f"`{USAGE[verb].format(bundle=bundle)}` (in Python, use {model.verb}())"
        )


def cli_hint(text_field: str) -> dict[str, str]:
    """How messages name the settings on the command line (see ``records.read_records``)."""
    return {text_field: "--text-field", "encoding": "--encoding"}


def read_texts(
    texts, input_path, text_field: str, encoding: str, tagging: bool = False, pretokenized: bool = False
) -> list[tuple[str, object, str | None]]:
    """``(source, item, error)`` per record: from arguments, a file, or stdin (plain-text lines,
    read by the same code as a ``.txt`` file: the same bytes give the same rows).

    Tagging items are raw strings (split by the bundle's tokenizer) or token lists
    (``--pretokenized`` lines, JSONL ``tokens``); an empty sentence gets an empty result.
    """
    hint = cli_hint(text_field)
    if texts:
        records = [
            Record(f"argument {i + 1}", None, f"{problem} (undecodable bytes in the argument?)")
            if (problem := check_text(t))
            else Record(f"argument {i + 1}", {text_field: t}, None)
            for i, t in enumerate(texts)
        ]
    elif input_path:
        records = read_records(
            input_path, (text_field,), encoding=encoding, hint=hint, tokens="tokens" if tagging else None
        )
    else:
        records = read_records(sys.stdin.buffer, (text_field,), encoding=encoding, hint=hint, name="stdin")
    rows = list(items_of(records, text_field, tagging, pretokenized))
    if not rows:
        raise InputError(f"{input_path or 'stdin'}: nothing to predict (no records; blank lines are skipped)")
    return rows


def write_predictions(
    model,
    rows,
    output_path,
    batch_size: int,
    show_progress: bool,
    strict: bool = False,
    truncate: bool = False,
    beam: int | None = None,
    nbest: int | None = None,
    alpha: float | None = None,
    max_output_tokens: int | None = None,
    lookup: bool = False,
) -> Report:
    """Predict the good ``rows`` (``read_texts``) into ``output_path`` (stdout if None) -> a ``Report``.

    ``strict``: raise ``InputError`` at the first bad record (nothing is written).  ``truncate``: a
    text over the bundle's max_length is cut to it (the line says ``"truncated": N`` tokens) instead
    of being a bad record.
    ``beam``/``nbest``/``alpha``/``max_output_tokens``/``lookup``: seq2seq bundles only (see
    ``EncoderDecoder.run_batch``).  Every task object is run through its ``run_batch``; a bundle
    whose task is run by another command (a language model: ``rnnkit generate``) is refused.
    """
    refuse_other_command(model, "predict")
    decoding = {
        k: v
        for k, v in dict(
            beam=beam, nbest=nbest, alpha=alpha, max_output_tokens=max_output_tokens, lookup=lookup or None
        ).items()
        if v is not None
    }
    run = functools.partial(model.run_batch, truncate=truncate, **decoding)
    bad = [(i, error) for i, (_, _, error) in enumerate(rows) if error is not None]
    if strict and bad:
        raise _strict(rows, *bad[0])
    good = [i for i, (_, _, error) in enumerate(rows) if error is None]
    sink = atomic_writer(output_path) if output_path else nullcontext(sys.stdout)
    bar = click.progressbar(length=len(good), label="predicting", file=sys.stderr) if show_progress else nullcontext()
    written, unknown, inputs_with_unknown = 0, Counter(), 0
    with sink as out, bar as progress:
        for start in range(0, len(good), CHUNK):
            chunk = good[start : start + CHUNK]
            results, refused = run_items(
                run, [rows[i][1] for i in chunk], batch_size, progress.update if show_progress else None
            )
            if strict and refused:
                raise _strict(rows, chunk[refused[0][0]], refused[0][1])
            bad.extend((chunk[position], error) for position, error in refused)
            for r in results:
                if r is not None:
                    out.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
                    written += 1
                    if getattr(r, "unknown", None):  # an encoder-decoder's out-of-alphabet input
                        unknown.update(r.unknown)
                        inputs_with_unknown += 1
    return Report(len(rows), written, [(rows[i][0], error) for i, error in sorted(bad)], unknown, inputs_with_unknown)


def finish(report: Report, errors_path, summary: bool = True) -> None:
    """Report the bad records (``errors_path``: JSON lines, atomically; else stderr) and the counts;
    raise ``InputError`` when records were read but none could be predicted."""
    if errors_path:
        with atomic_writer(errors_path) as handle:
            for source, error in report.errors:
                handle.write(json.dumps({"source": source, "error": error}, ensure_ascii=False) + "\n")
    else:
        for source, error in report.errors:
            click.echo(f"bad record {source}: {error}", err=True)
    if report.inputs_with_unknown:
        shown = ", ".join(repr(t) for t, _ in report.unknown.most_common(10))
        more = f" and {len(report.unknown) - 10} more" if len(report.unknown) > 10 else ""
        log.warning(
            f"warning: {report.inputs_with_unknown} of {report.predictions} inputs have characters (or words) "
            f'this model does not know ({shown}{more}), read as <unk>; their lines list them as "unknown"'
        )
    if summary or report.errors:
        where = f" ({errors_path})" if errors_path and report.errors else ""
        click.echo(
            f"{report.rows} rows in, {report.predictions} predictions, {len(report.errors)} errors{where}", err=True
        )
    if report.rows and not report.predictions:
        source, error = report.errors[0]
        raise InputError(
            f"nothing predicted: all {report.rows} records are bad (first: {source}: {error}); "
            f"check --text-field and --encoding"
        )


def _strict(rows, index: int, error: str) -> InputError:
    return InputError(
        f"{rows[index][0]}: {error} (--strict stops at the first bad record; without it bad "
        f"records are reported and the run goes on)"
    )
