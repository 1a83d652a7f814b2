"""The ``rnnkit`` command line: thin commands that parse, call one API function, format.
``rnnkit train ...`` lives in ``cli_train.py``; the command classes all share are ``cli_common.py``.

Heavy imports (torch, the exporter, the runtime and its onnx/numpy) happen inside the commands
that need them: ``rnnkit --help`` imports click and the training configs only, and
``rnnkit predict`` / ``inspect`` / ``warmup`` never import torch.  ``RnnkitError`` becomes
``Error: ...`` with exit code 1; so does a missing optional package (one line naming the
``rnnkit[...]`` extra, ``extras.py``); argument problems are click's usage errors (exit code 2).
Nobody sees a traceback for an expected failure.

Notices that are not results (the backend ``auto`` chose, a cold numba compile, characters a
model does not know) are ``logging`` records of the ``rnnkit`` logger: ``main`` shows them on
stderr, so stdout holds only results.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from .cli_common import BACKEND, RnnkitGroup
from .cli_diagnose import diagnose
from .cli_explain import explain
from .cli_lm import eval_lm
from .cli_serve import serve
from .cli_train import train
from .summary import summary as summary  # `rnnkit inspect`'s and `rnnkit export`'s lines


@click.group(cls=RnnkitGroup)
@click.version_option(package_name="rnnkit")
def cli():
    """Train recurrent NLP models, export them to ONNX, run them anywhere."""


cli.add_command(train)
cli.add_command(diagnose)
cli.add_command(explain)
cli.add_command(eval_lm)
cli.add_command(serve)


@cli.command("export")
@click.argument("checkpoint", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Bundle directory to write (replaced atomically).")
@click.option("--int8", is_flag=True, help="Also write model.int8.onnx (dynamic int8 weights).")
@click.option(
    "--dev",
    "dev_path",
    type=click.Path(),
    help="Labelled dev file for the int8 agreement check "
    "(default: the checkpoint's own dev data, if it is still on disk).",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=0.99,
    show_default=True,
    help="Classifiers/taggers: fail the export if int8 labels agree with fp32 on less than this share "
    "of dev; seq2seq: of next-token decisions along fp32's greedy outputs.",
)
@click.option(
    "--max-loss-delta",
    type=click.FloatRange(min=0),
    default=0.02,
    show_default=True,
    help="Language models: fail the export if int8 dev loss exceeds fp32's by more than this (nats/token).",
)
@click.option(
    "--max-length",
    type=click.IntRange(1, 1 << 24),
    default=10_000,
    show_default=True,
    help="Tokens kept per text at run time.",
)
@click.option("--text-field", default="text", show_default=True)
@click.option("--label-field", default="label", show_default=True)
@click.option(
    "--lexicon",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="seq2seq: pairs to store in the bundle for `rnnkit predict --lookup` (e.g. cmudict.dict).",
)
@click.option(
    "--lexicon-format",
    type=click.Choice(["tsv", "cmudict", "tatoeba"]),
    default=None,
    help="Format of --lexicon (default: the training data's).",
)
# The choices and defaults of rnnkit.export.forms, written out so that --help imports no onnx
# (tests/test_cli_guidance.py checks they match).
@click.option(
    "--graph-form",
    type=click.Choice(["onnxruntime", "portable"]),
    default="portable",
    show_default=True,
    help="portable: right on every ONNX runtime (onnx.reference, OpenVINO, tract) on padded batches; "
    "onnxruntime: the recurrent ops read sequence_lens (onnxruntime and numba only). docs/portable-graphs.md",
)
@click.option(
    "--int8-format",
    type=click.Choice(["onnxruntime", "portable"]),
    default="onnxruntime",
    show_default=True,
    help="With --int8. onnxruntime: int8 arithmetic (com.microsoft ops; onnxruntime and "
    "numba only); portable: int8 weights dequantized in standard ops, runs on every ONNX runtime.",
)
@click.option(
    "--validate-on",
    default=None,
    metavar="NAMES",
    help="Also check the graphs on these ONNX runtimes, comma-separated: reference, openvino, tract "
    "(needs rnnkit[interop]); every miss is reported before the export fails.",
)
def export_cmd(
    checkpoint,
    out,
    int8,
    dev_path,
    min_agreement,
    max_loss_delta,
    max_length,
    text_field,
    label_field,
    lexicon,
    lexicon_format,
    graph_form,
    int8_format,
    validate_on,
):
    """Export CHECKPOINT to a validated ONNX bundle."""
    from .devset import dev_set_for
    from .export_checkpoint import CLI_FLAGS, export_checkpoint

    dev = dev_set_for(checkpoint, dev_path, text_field, label_field)
    result = export_checkpoint(
        checkpoint,
        out,
        int8=int8,
        dev=dev,
        min_agreement=min_agreement,
        max_loss_delta=max_loss_delta,
        lexicon=lexicon,
        lexicon_format=lexicon_format,
        max_length=max_length,
        graph_form=graph_form,
        int8_format=int8_format if int8 else None,
        validate_on=validate_on,
        log=lambda m: click.echo(m, err=True),
        flags=CLI_FLAGS,
    )
    click.echo(summary(result["manifest"], result["path"]))


@cli.command()
@click.argument("bundle", type=click.Path())
@click.argument("texts", nargs=-1)
@click.option(
    "--input",
    "input_paths",
    multiple=True,
    help="txt (one text per line), CSV/TSV or JSONL file; --engine dask: files or quoted globs, repeatable.",
)
@click.option(
    "--output",
    "output_path",
    type=click.Path(),
    help="JSON-lines output (written atomically). Default: stdout. --engine dask: the output folder.",
)
@click.option("--backend", type=BACKEND, default="auto", show_default=True)
@click.option("--int8", is_flag=True, help="Use the bundle's int8 model.")
@click.option("--batch-size", type=click.IntRange(1, 65536), default=64, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="Backend threads (default: backend's own; --engine dask: 1 per worker process).",
)
@click.option("--text-field", default="text", show_default=True, help="Column/key of CSV/TSV/JSONL input.")
@click.option(
    "--pretokenized",
    is_flag=True,
    help="Tagging: each line is space-separated tokens (JSONL: a 'tokens' list is always taken as is).",
)
@click.option("--encoding", default="utf-8", show_default=True)
@click.option(
    "--engine",
    type=click.Choice(["local", "dask"]),
    default="local",
    show_default=True,
    help="dask: partition the inputs over Dask workers (needs rnnkit[dask]).",
)
@click.option(
    "--scheduler", help="--engine dask: address of a running scheduler (tcp://HOST:PORT). Default: a local cluster."
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="--engine dask without --scheduler: worker processes of the local cluster (default: one per core).",
)
@click.option(
    "--partition-size",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    help="--engine dask: rows per partition (one output file each).",
)
@click.option("--resume", is_flag=True, help="--engine dask: continue a job in a non-empty --output folder.")
@click.option(
    "--errors",
    "errors_path",
    type=click.Path(),
    help='Bad records as JSON lines {"source", "error"} (written atomically). Default: stderr. '
    "--engine dask: always OUT_DIR/errors.jsonl.",
)
@click.option(
    "--strict", is_flag=True, help="Stop with exit code 1 at the first bad record (default: report it, go on)."
)
@click.option(
    "--truncate",
    is_flag=True,
    help='Use the first max_length tokens of a longer text (its line says "truncated": N) instead of '
    "refusing it as a bad record.",
)
@click.option(
    "--beam",
    type=click.IntRange(1, 1024),
    default=None,
    help="seq2seq: beam width (default 5; 1 = greedy; clamped to the target vocabulary).",
)
@click.option(
    "--nbest",
    type=click.IntRange(1, 1024),
    default=None,
    help='seq2seq: also write the N best outputs per input as "nbest" (needs --beam >= N; default beam N).',
)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0),
    default=None,
    help="seq2seq: length penalty ((5+n)/6)^alpha on scores (default 0.6; 0 = raw log-probability).",
)
@click.option(
    "--max-output-tokens",
    type=click.IntRange(1, 1024),
    default=None,
    help="seq2seq: output tokens per input (default 2 x input tokens + 10).",
)
@click.option(
    "--lookup",
    is_flag=True,
    default=None,
    help="seq2seq: answer inputs found in the bundle's lexicon from it (score 0.0); decode the rest.",
)
def predict(
    bundle,
    texts,
    input_paths,
    output_path,
    backend,
    int8,
    batch_size,
    threads,
    text_field,
    pretokenized,
    encoding,
    engine,
    scheduler,
    workers,
    partition_size,
    resume,
    errors_path,
    strict,
    truncate,
    beam,
    nbest,
    alpha,
    max_output_tokens,
    lookup,
):
    """Classify, tag or translate TEXTS (or --input FILE, or stdin lines) with BUNDLE. Never imports torch.

    Writes JSON lines: {"text", "label", "score", "scores"} for a classifier,
    {"tokens", "tags", "scores"} for a tagger, {"input", "output", "score"} for an encoder-decoder
    (score: log-probability with the --alpha length penalty; with --nbest also "nbest": [{"output",
    "score"}, ...], best first).  --engine dask (classifiers and taggers) writes a folder:
    part-NNNNN.jsonl (the same rows plus an "id", "FILE-INDEX:LINE"), errors.jsonl, _job.json, and
    _SUCCESS last.  Bad records (unreadable, or refused by the model) are reported and skipped:
    see docs/records.md."""
    decoding = {
        k: v
        for k, v in dict(
            beam=beam, nbest=nbest, alpha=alpha, max_output_tokens=max_output_tokens, lookup=lookup or None
        ).items()
        if v is not None
    }
    if engine == "dask":
        if decoding:
            raise click.UsageError(
                f"{', '.join('--' + k.replace('_', '-') for k in decoding)} need --engine local "
                "(seq2seq bundles are decoded locally)"
            )
        for flag, value in (("--errors", errors_path), ("--strict", strict)):
            if value:
                raise click.UsageError(
                    f"{flag} needs --engine local (--engine dask writes OUT_DIR/errors.jsonl and carries on)"
                )
        return _predict_dask(
            bundle,
            texts,
            input_paths,
            output_path,
            backend,
            int8,
            batch_size,
            threads,
            text_field,
            pretokenized,
            encoding,
            scheduler,
            workers,
            partition_size,
            resume,
            truncate,
        )
    from ..runtime import load
    from .predict import finish, read_texts, refuse_other_command, show_backend, write_predictions

    for flag, value in (("--scheduler", scheduler), ("--workers", workers), ("--resume", resume)):
        if value:
            raise click.UsageError(f"{flag} needs --engine dask")
    if len(input_paths) > 1:
        raise click.UsageError("give one --input file (several files or globs need --engine dask)")
    input_path = input_paths[0] if input_paths else None
    if texts and input_path:
        raise click.UsageError("give TEXTS or --input, not both")
    if not texts and not input_path and sys.stdin.isatty():
        raise click.UsageError("no input: give TEXTS, --input FILE, or pipe lines on stdin")
    model = load(bundle, backend=backend, int8=int8, threads=threads)
    refuse_other_command(model, "predict")
    show_backend(model, backend)
    task = model.bundle.task
    if decoding and task != "seq2seq":
        raise click.UsageError(
            f"{', '.join('--' + k.replace('_', '-') for k in decoding)} apply to seq2seq bundles; "
            f"{bundle} is a {task} bundle"
        )
    if pretokenized and task == "seq2seq":
        raise click.UsageError(f"--pretokenized applies to tagging bundles; {bundle} is a {task} bundle")
    rows = read_texts(texts, input_path, text_field, encoding, task == "tag", pretokenized)
    report = write_predictions(
        model,
        rows,
        output_path,
        batch_size,
        show_progress=input_path is not None,
        strict=strict,
        truncate=truncate,
        **decoding,
    )
    finish(report, errors_path, summary=not texts)


def _predict_dask(
    bundle,
    texts,
    input_paths,
    output_path,
    backend,
    int8,
    batch_size,
    threads,
    text_field,
    pretokenized,
    encoding,
    scheduler,
    workers,
    partition_size,
    resume,
    truncate=False,
):
    from ..runtime.distributed import predict as distributed_predict
    from .predict import cli_hint

    if texts or not input_paths:
        raise click.UsageError("--engine dask reads --input files (TEXTS and stdin are for the local engine)")
    if not output_path:
        raise click.UsageError("--engine dask needs --output OUT_DIR (a folder for the part files)")
    if scheduler and workers:
        raise click.UsageError("--workers sizes a local cluster; with --scheduler the cluster has its own workers")

    def show(p):
        total = f"/{p.rows_read}" if p.reading_done else f" (read {p.rows_read})"
        click.echo(f"\rdask: {p.partitions_done} partitions, {p.rows_done}{total} rows", nl=False, err=True)

    summary = distributed_predict(
        bundle,
        list(input_paths),
        output_path,
        scheduler=scheduler,
        workers=workers,
        partition_size=partition_size,
        backend=backend,
        int8=int8,
        threads=threads or 1,
        batch_size=batch_size,
        text_field=text_field,
        encoding=encoding,
        pretokenized=pretokenized,
        resume=resume,
        progress=show,
        hint=cli_hint(text_field),
        truncate=truncate,
    )
    click.echo("", err=True)
    skipped = f", {summary.partitions_skipped} kept from an earlier run" if summary.partitions_skipped else ""
    click.echo(
        f"{summary.rows_in} rows in, {summary.rows_out} predictions, {summary.errors} errors "
        f"({Path(output_path) / 'errors.jsonl'}), {summary.partitions} partitions{skipped}, "
        f"{summary.workers} workers, {summary.seconds:.1f} s ({summary.rows_per_second:.0f} rows/s)",
        err=True,
    )


@cli.command()
@click.argument("bundle", type=click.Path())
@click.option("--prompt", required=True, help="Text to continue (at least one token).")
@click.option(
    "--max-tokens",
    type=click.IntRange(0, 1_000_000),
    default=200,
    show_default=True,
    help="Tokens (characters or words) to generate.",
)
@click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True, help="0: greedy.")
@click.option(
    "--top-k", type=click.IntRange(0), default=0, show_default=True, help="Sample from the k most likely (0: all)."
)
@click.option(
    "--top-p",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="Nucleus sampling: the smallest set with this much probability.",
)
@click.option("--seed", type=click.IntRange(0), default=None, help="Same seed, same tokens (on every backend).")
@click.option("--stop", multiple=True, help="Stop once the generated text contains this string (repeatable).")
@click.option("--backend", type=BACKEND, default="auto", show_default=True)
@click.option("--int8", is_flag=True, help="Use the bundle's int8 model.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="Backend threads.")
@click.option("--echo/--no-echo", default=True, show_default=True, help="Print the prompt before the generated text.")
def generate(bundle, prompt, max_tokens, temperature, top_k, top_p, seed, stop, backend, int8, threads, echo):
    """Continue PROMPT with a language-model BUNDLE, streaming tokens to stdout as they are produced."""
    from ..runtime import load
    from .predict import refuse_other_command, show_backend

    model = load(bundle, backend=backend, int8=int8, threads=threads)
    refuse_other_command(model, "generate")
    show_backend(model, backend)
    tokens = model.generate(
        prompt, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=list(stop) or None
    )
    if echo:
        click.echo(prompt, nl=False)
    # after an echoed prompt a word follows a space unless the prompt ends a line
    previous = "" if echo and prompt and not prompt.endswith("\n") else None
    for token in tokens:
        click.echo(model.piece(token, previous), nl=False)
        previous = token
        sys.stdout.flush()
    click.echo()


@cli.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON (for programs).")
def inspect(bundle, as_json):
    """Print a bundle's manifest summary (verifies every file's sha256)."""
    from ..runtime.model import open_checked

    b = open_checked(bundle)
    click.echo(json.dumps(b.manifest, indent=2, ensure_ascii=False) if as_json else summary(b.manifest, bundle))


@cli.command()
@click.argument("bundle", type=click.Path())
@click.option("--backend", type=BACKEND, default="numba", show_default=True)
@click.option("--int8", is_flag=True)
def warmup(bundle, backend, int8):
    """Compile and cache the backend's kernels for BUNDLE (numba: on-disk JIT cache)."""
    from ..runtime import load

    model = load(bundle, backend=backend, int8=int8, threads=1)
    click.echo(f"{model.backend}{' int8' if int8 else ''}: first run {model.warmup():.2f} s")


@cli.command()
@click.option("--out", default="rnnkit-demo", show_default=True, type=click.Path(), help="Working directory.")
def demo(out):
    """Export the embedded sentiment model, quantize it, predict on both backends, compare."""
    from .demo import run_demo

    run_demo(out, echo=click.echo)


def show_notices() -> None:
    """Show the ``rnnkit`` logger's notices (INFO and up) on stderr as plain lines: the CLI's choice.
    A program using the library decides for itself (``logging.getLogger("rnnkit")``)."""
    logger = logging.getLogger("rnnkit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main():
    show_notices()
    cli(prog_name="rnnkit")


if __name__ == "__main__":  # python -m rnnkit.toolkit.cli (python -m rnnkit.toolkit does the same)
    main()
