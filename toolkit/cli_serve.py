"""``rnnkit serve BUNDLE [BUNDLE ...]``: the bundles behind a local HTTP API and web page.

Parses the options, loads each bundle as ``rnnkit predict`` does (a path, or the name of an
installed bundle such as ``g2p-cmudict``), warms it up, and runs ``rnnkit.runtime.serve``'s app on
uvicorn, whose graceful shutdown (SIGTERM, Ctrl-C) stops accepting connections and answers every
request already accepted before the process exits.  Never imports torch; fastapi and uvicorn
(the ``serve`` extra) are imported when the command runs, so ``rnnkit --help`` stays light.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import click

from .cli_common import BACKEND

LOOPBACK_NAMES = ("localhost",)
NAMED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)=(.+)$")  # NAME=PATH


def model_name(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH); a bare path or installed name -> (its folder name without
    ``.bundle``, the path): the name is the model's URL segment, /v1/models/NAME/..."""
    match = NAMED.match(spec)
    if match and not Path(spec).exists():
        return match.group(1), match.group(2)
    name = Path(spec.rstrip("/")).name
    return (name[: -len(".bundle")] if name.endswith(".bundle") and len(name) > 7 else name), spec


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.argument("bundles", nargs=-1, required=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but a loopback address needs --api-key (or --insecure-open).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--backend", type=BACKEND, default="auto", show_default=True)
@click.option("--int8", is_flag=True, help="Use each bundle's int8 model.")
@click.option("--threads", type=click.IntRange(1), default=None, help="Backend threads per model (default: its own).")
@click.option(
    "--max-batch",
    type=click.IntRange(1, 4096),
    default=32,
    show_default=True,
    help="Dynamic batching: most inputs run together in one model call.",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(0, 10_000),
    default=5.0,
    show_default=True,
    help="Dynamic batching: how long the first queued request waits for others to join its batch.",
)
@click.option("--no-batching", is_flag=True, help="Run every request alone (same as --max-batch 1 --max-wait-ms 0).")
@click.option(
    "--api-key",
    envvar="RNNKIT_API_KEY",
    default=None,
    help="Require this key on /v1/* (`Authorization: Bearer KEY` or `X-API-Key: KEY`). "
    "Also read from $RNNKIT_API_KEY, which other users cannot see in the process list.",
)
@click.option(
    "--insecure-open",
    is_flag=True,
    help="Listen on a non-loopback --host without an API key: anyone who can reach the port can use the models.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(1),
    default=1 << 20,
    show_default=True,
    help="Larger request bodies are refused (413).",
)
@click.option(
    "--max-items", type=click.IntRange(1), default=256, show_default=True, help="Inputs per request (more: 422)."
)
@click.option(
    "--max-input-chars",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    help="Characters per input or prompt (more: 422).",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(0),
    default=2000,
    show_default=True,
    help="Language models: the most tokens one /generate request may ask for (more: 422).",
)
@click.option("--access-log", is_flag=True, help="Log one line per request on stderr.")
def serve(
    bundles,
    host,
    port,
    backend,
    int8,
    threads,
    max_batch,
    max_wait_ms,
    no_batching,
    api_key,
    insecure_open,
    max_body_bytes,
    max_items,
    max_input_chars,
    max_new_tokens,
    access_log,
):
    """Serve BUNDLES (paths, NAME=PATH, or installed names like g2p-cmudict) over HTTP: a JSON API
    (/v1/models/NAME/predict, /generate, /explain; schema at /docs), and a web page at /.

    Concurrent requests for one model are batched (--max-batch, --max-wait-ms); each answer is the
    line `rnnkit predict` writes for that input.  Binds 127.0.0.1 by default.  SIGTERM or Ctrl-C
    answers every accepted request, then exits.  Never imports torch.  See docs/serve.md."""
    names = [model_name(spec) for spec in bundles]
    seen: dict[str, str] = {}
    for name, path in names:
        if name in seen:
            raise click.UsageError(
                f"two bundles are named {name!r} ({seen[name]} and {path}); name them: NAME=PATH, e.g. {name}2={path}"
            )
        seen[name] = path
    if api_key is not None and not api_key.strip():
        raise click.UsageError("--api-key is empty; give a key, or leave the option out on 127.0.0.1")
    if not is_loopback(host) and api_key is None:
        if not insecure_open:
            raise click.UsageError(
                f"--host {host} lets other machines reach the models; give --api-key KEY (or $RNNKIT_API_KEY), "
                "or pass --insecure-open to serve them to anyone who can reach the port"
            )
        click.echo(
            f"WARNING: serving on {host}:{port} WITHOUT AN API KEY (--insecure-open): anyone who can reach this port "
            "can run the models and read their answers.",
            err=True,
        )
    if no_batching:
        max_batch, max_wait_ms = 1, 0.0
    try:
        import uvicorn

        from ..runtime.serve import Limits, Settings, create_app
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("fastapi", "uvicorn", "starlette", "pydantic"):
            raise
        raise click.ClickException(
            f'rnnkit serve needs {exc.name}, which is not installed: pip install "rnnkit[serve]"'
        ) from None
    from ..runtime import load
    from .predict import show_backend

    models, sources = {}, {}
    for name, path in names:
        model = load(path, backend=backend, int8=int8, threads=threads)
        show_backend(model, backend)
        seconds = model.warmup()
        click.echo(f"{name}: {model.task} bundle {path} ({model.backend}, warm-up {seconds:.2f} s)", err=True)
        models[name], sources[name] = model, path
    settings = Settings(
        limits=Limits(max_body_bytes, max_items, max_input_chars, max_new_tokens),
        api_key=api_key,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
    )
    app = create_app(models, settings, sources)
    batching = "off" if max_batch == 1 else f"max {max_batch} inputs, {max_wait_ms:g} ms"
    shown = "[::1]" if host == "::1" else host
    click.echo(
        f"rnnkit serve: http://{shown}:{port}/ (page), /docs (API); batching {batching}; "
        f"{'API key required' if api_key else 'no API key'}; Ctrl-C or SIGTERM to stop",
        err=True,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
        server_header=False,
        timeout_graceful_shutdown=None,  # answer every accepted request, however long it takes
        backlog=2048,
    )
    uvicorn.Server(config).run()
