"""``rnnkit serve``: loaded bundles behind a local HTTP API (FastAPI on uvicorn), with a web page.

``create_app(models, settings)`` builds the ASGI app; ``rnnkit serve`` (``toolkit/cli_serve.py``)
loads the bundles and runs it on uvicorn.  Endpoints (the OpenAPI schema is at ``/openapi.json``,
browsable at ``/docs``):

* ``GET /`` the page (``serve_page.PAGE``), ``GET /health`` (models, queues, request counts);
* ``GET /v1/models`` and ``GET /v1/models/{name}``: each bundle's task, labels and manifest summary;
* ``POST /v1/models/{name}/predict``: classify, tag or translate one input or a list, through the
  model's dynamic batcher (``serve_batcher.Batcher``); each output is the JSON line ``rnnkit
  predict`` writes for that input;
* ``POST /v1/models/{name}/generate``: a language model's continuation, as server-sent events
  (``data: {"token": ...}`` per token, then ``event: done``) or, with ``"stream": false``, one JSON;
* ``POST /v1/models/{name}/explain``: word attributions, for task objects that have ``explain``.

Every error is JSON ``{"error": "what happened and what to do", ...}``: 400 malformed JSON or the
wrong task for the endpoint, 401 a missing or wrong API key, 404 an unknown model, 413 a body
over ``max_body_bytes``, 422 an invalid request or input (a limit's name, its value and what was
sent are in the body), 500 an unexpected failure of one request (the server carries on).

Models run off the event loop: batched tasks on their batcher's thread, generation and
explanations in the thread pool, so ``/health`` answers while a batch runs.

Needs the ``serve`` extra (fastapi, uvicorn); must not import torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import RnnkitError
from .serve_batcher import Answer, Batcher
from .serve_page import PAGE

log = logging.getLogger("rnnkit.serve")

# Tasks answered by POST .../predict (batched) and the ones answered by .../generate (streamed).
PREDICT_TASKS = ("classify", "tag", "seq2seq")
GENERATE_TASKS = ("lm",)
DECODING = ("beam", "nbest", "alpha", "max_output_tokens", "lookup")  # seq2seq-only request fields
MANIFEST_SUMMARY = ("format", "format_version", "task", "architecture", "labels", "producer", "created", "quantization")


@dataclass
class Limits:
    """What one request may ask for; over a limit is 413 (body) or 422 (inputs) naming it."""

    max_body_bytes: int = 1 << 20
    max_items: int = 256  # inputs per request
    max_input_chars: int = 10_000  # characters per input (a tagger's token list: all its tokens)
    max_new_tokens: int = 2000  # a generation's max_tokens


@dataclass
class Settings:
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer KEY` or `X-API-Key: KEY`
    max_batch: int = 32
    max_wait_ms: float = 5.0


class ServeError(Exception):
    """An answer other than 200: its status and the JSON body ``{"error": message, **extra}``."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@dataclass
class Served:
    """One model of the server: its name (the URL path segment), task object and batcher."""

    name: str
    model: Any  # a task object from rnnkit.runtime.load
    source: str  # the path or installed name it was loaded from
    batcher: Batcher | None = None  # predict tasks only

    @property
    def task(self) -> str:
        return str(self.model.task)

    @property
    def can_explain(self) -> bool:
        return hasattr(self.model, "explain")  # a task object without it raises AttributeError

    def describe(self) -> dict:
        manifest = self.model.bundle.manifest
        endpoints = ["predict"] if self.task in PREDICT_TASKS else ["generate"]
        if self.can_explain:
            endpoints.append("explain")
        described = {
            "name": self.name,
            "task": self.task,
            "labels": getattr(self.model, "labels", None),
            "endpoints": endpoints,
            "source": self.source,
            "backend": self.model.backend,
            "int8": self.model.int8,
            "max_length": self.model.max_length,
            "manifest": {k: manifest[k] for k in MANIFEST_SUMMARY if k in manifest},
        }
        if self.batcher is not None:
            described["batching"] = {"max_batch": self.batcher.max_batch, "max_wait_ms": self.batcher.max_wait_s * 1e3}
        if self.task == "lm":
            described["tokenizer"] = self.model.tokenizer.level
        if self.task == "seq2seq":
            described["lexicon"] = isinstance(manifest.get("lexicon"), dict)
        return described


# -- request bodies (FastAPI validates them and documents them in the OpenAPI schema) ------------
class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str | list[str]] = Field(
        description="One text, or a list; a tagger also takes token lists (one sentence each)."
    )
    truncate: bool = Field(False, description="Use the first max_length tokens of a longer input instead of 422.")
    beam: int | None = Field(None, ge=1, le=64, description="seq2seq: beam width (default 5; 1 = greedy).")
    nbest: int | None = Field(None, ge=1, le=64, description="seq2seq: also return the N best outputs.")
    alpha: float | None = Field(None, ge=0, le=10, description="seq2seq: length penalty (default 0.6).")
    max_output_tokens: int | None = Field(None, ge=1, le=1024, description="seq2seq: output tokens per input.")
    lookup: bool | None = Field(None, description="seq2seq: answer words in the bundle's lexicon from it.")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="Text to continue (at least one token).")
    max_tokens: int = Field(200, ge=0, description="Tokens to generate (at most the server's max_new_tokens).")
    temperature: float = Field(1.0, ge=0, description="0: greedy.")
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, description="Same seed, same tokens.")
    stop: list[str] | None = Field(None, description="Stop once the generated text contains one of these.")
    stream: bool = Field(True, description="Server-sent events, one per token; false: one JSON answer.")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] = Field(description="One text, or a list.")
    method: Literal["occlusion", "attention"] | None = Field(
        None, description="Default: the model's own (occlusion for classifiers and taggers, attention for seq2seq)."
    )


# -- the app -------------------------------------------------------------------------------------
def create_app(models: dict[str, Any], settings: Settings | None = None, sources: dict[str, str] | None = None):
    """The ASGI app serving ``models`` (name -> task object from ``rnnkit.runtime.load``)."""
    settings = settings or Settings()
    served: dict[str, Served] = {}
    gate_holder: list[RequestGate] = []  # the app's RequestGate, once Starlette has built its middleware

    def in_flight() -> int:
        return gate_holder[0].in_flight() if gate_holder else 1

    for name, model in models.items():
        entry = Served(name, model, (sources or {}).get(name, str(model.bundle.path)))
        if entry.task in PREDICT_TASKS:
            entry.batcher = Batcher(model, settings.max_batch, settings.max_wait_ms / 1e3, name, in_flight)
        served[name] = entry

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn runs this after its graceful shutdown: every accepted request has been answered
        for entry in served.values():
            if entry.batcher is not None:
                entry.batcher.close()
        if gate_holder:
            counts = gate_holder[0].counts()
            log.info(
                f"rnnkit serve: stopped; {counts['accepted']} requests accepted, {counts['answered']} answered, "
                f"{counts['unanswered']} closed by the client first"
            )

    app = FastAPI(
        title="rnnkit serve",
        description="rnnkit bundles over HTTP: classify, tag, translate, generate (docs/serve.md).",
        version="1",
        lifespan=lifespan,
    )
    app.state.served = served
    app.state.settings = settings

    def get(name: str) -> Served:
        if name not in served:
            raise ServeError(404, f"no model {name!r} on this server; it serves: {', '.join(served)} (GET /v1/models)")
        return served[name]

    async def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise ServeError(
                401,
                "missing or wrong API key: send the key given to `rnnkit serve --api-key` as "
                "`Authorization: Bearer KEY` or `X-API-Key: KEY`",
            )

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/health", summary="Liveness, the models and their queues")
    async def health() -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "auth": settings.api_key is not None,
                "requests": gate_holder[0].counts() if gate_holder else {},
                "models": {
                    name: {
                        "task": e.task,
                        "queued": e.batcher.waiting if e.batcher else 0,
                        **({"batches": e.batcher.stats.to_dict()} if e.batcher else {}),
                    }
                    for name, e in served.items()
                },
            }
        )

    # without a key there is nothing to check: no dependency, which FastAPI would resolve on every request
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)] if settings.api_key is not None else [])

    @v1.get("/models", summary="Every model: task, labels, manifest summary")
    async def list_models() -> JSONResponse:
        return JSONResponse({"models": [e.describe() for e in served.values()]})

    @v1.get("/models/{name}", summary="One model: task, labels, manifest summary")
    async def one_model(name: str) -> JSONResponse:
        return JSONResponse(get(name).describe())

    _add_task_routes(v1, get, settings)
    app.include_router(v1)
    _install_error_handlers(app)
    app.add_middleware(RequestGate, max_body_bytes=settings.limits.max_body_bytes, holder=gate_holder)
    return app


def _add_task_routes(v1, get, settings: Settings) -> None:
    """The task endpoints of ``/v1/models/{name}``: predict (batched), generate, explain; ``get(name)``
    is the served model or a 404."""

    @v1.post("/models/{name}/predict", summary="Classify, tag or translate one input or a list (batched)")
    async def predict(name: str, body: PredictRequest) -> JSONResponse:
        entry = get(name)
        if entry.batcher is None:
            raise _wrong_task(entry, "predict")
        items = _inputs(body.inputs, settings.limits)
        options: dict[str, Any] = {"truncate": body.truncate}
        decoding = {k: getattr(body, k) for k in DECODING if getattr(body, k) is not None}
        if decoding and entry.task != "seq2seq":
            verb = "applies" if len(decoding) == 1 else "apply"
            raise ServeError(
                400,
                f"{', '.join(decoding)} {verb} to seq2seq models; {name!r} is a {entry.task} model",
                fields=[*decoding],
            )
        options.update(decoding)
        answer = await _await_model(asyncio.wrap_future(entry.batcher.submit(items, options)), name)
        assert isinstance(answer, Answer)
        if answer.refused:
            raise ServeError(
                422,
                "; ".join(f"input #{i}: {why}" for i, why in answer.refused),
                refused=[{"index": i, "error": why} for i, why in answer.refused],
            )
        return JSONResponse({"model": name, "task": entry.task, "outputs": [r.to_dict() for r in answer.results]})

    @v1.post("/models/{name}/generate", summary="Continue a prompt with a language model (SSE or one JSON)")
    async def generate(name: str, body: GenerateRequest):
        entry = get(name)
        if entry.task not in GENERATE_TASKS:
            raise _wrong_task(entry, "generate")
        _check_text(body.prompt, "prompt", settings.limits)
        if body.max_tokens > settings.limits.max_new_tokens:
            raise _limit(
                "max_new_tokens", settings.limits.max_new_tokens, body.max_tokens, f"max_tokens is {body.max_tokens}"
            )
        model = entry.model
        options = dict(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, seed=body.seed)
        # generate() checks its arguments and reads the prompt before the first token: off the loop
        tokens = await _await_model(
            run_in_threadpool(model.generate, body.prompt, body.max_tokens, stop=body.stop, **options), name
        )
        if not body.stream:
            produced = await _await_model(run_in_threadpool(list, tokens), name)
            text = model.render(produced)
            return JSONResponse({"model": name, "prompt": body.prompt, "text": text, "tokens": produced})
        return StreamingResponse(
            _events(tokens, model.render, name),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @v1.post("/models/{name}/explain", summary="Word attributions (classifiers and taggers with explain())")
    async def explain(name: str, body: ExplainRequest) -> JSONResponse:
        entry = get(name)
        if not entry.can_explain:
            raise ServeError(
                400,
                f"model {name!r} ({entry.task}) cannot explain its predictions: this rnnkit.runtime has no "
                f"explain() for {entry.model.noun} bundle; POST .../predict answers without explanations",
            )
        items = _inputs(body.inputs, settings.limits)
        method = {} if body.method is None else {"method": body.method}
        found = await _await_model(run_in_threadpool(entry.model.explain, items, **method), name)
        return JSONResponse({"model": name, "task": entry.task, "outputs": [e.to_dict() for e in found]})


def _inputs(inputs, limits) -> list[str]:
    """One input or a list of them, as a list within ``limits`` (else 413/422)."""
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    _check_items(items, limits)
    return items


async def _await_model(awaitable, name: str):
    """The model's answer; its refusal (``RnnkitError``) is 422, anything else 500 for this request only."""
    try:
        return await awaitable
    except ServeError:
        raise
    except RnnkitError as exc:
        raise ServeError(422, str(exc)) from None
    except Exception as exc:
        log.exception(f"{name}: request failed")
        raise ServeError(500, f"internal error in model {name!r}: {type(exc).__name__}: {exc}") from None


def _events(tokens: Iterator[str], render, name: str) -> Iterator[str]:
    """Server-sent events: one ``data: {"token"}`` per token, then ``event: done`` with the whole text
    (or ``event: error``: the status line was sent with the first byte, so an error is an event)."""
    produced = []
    try:
        for token in tokens:
            produced.append(token)
            yield f"data: {json.dumps({'token': token}, ensure_ascii=False)}\n\n"
    except Exception as exc:  # noqa: BLE001 -- reported to the client; the server carries on
        log.exception(f"{name}: generation failed")
        yield f"event: error\ndata: {json.dumps({'error': f'{type(exc).__name__}: {exc}'})}\n\n"
        return
    done = {"text": render(produced), "tokens": len(produced)}
    yield f"event: done\ndata: {json.dumps(done, ensure_ascii=False)}\n\n"


def _wrong_task(entry: Served, endpoint: str) -> ServeError:
    right = "predict" if entry.task in PREDICT_TASKS else "generate"
    runs = "language models" if endpoint == "generate" else "classifiers, taggers and seq2seq models"
    return ServeError(
        400,
        f"model {entry.name!r} is a {entry.task} model; /{endpoint} runs {runs}: use POST "
        f"/v1/models/{entry.name}/{right}",
    )


def _limit(limit: str, value: int, got: int, what: str) -> ServeError:
    """422 for ``what`` ("inputs has 300 items") over the server's ``limit``, named in the body."""
    return ServeError(
        422,
        f"{what}, more than this server's {limit} of {value}; send less, or start the server with a larger "
        f"--{limit.replace('_', '-')}",
        limit=limit,
        max=value,
        got=got,
    )


def _check_text(text: str, what: str, limits: Limits) -> None:
    if len(text) > limits.max_input_chars:
        raise _limit("max_input_chars", limits.max_input_chars, len(text), f"{what} has {len(text)} characters")


def _check_items(items: list, limits: Limits) -> None:
    if not items:
        raise ServeError(422, "inputs is an empty list; send one text or a list of at least one")
    if len(items) > limits.max_items:
        raise _limit("max_items", limits.max_items, len(items), f"inputs has {len(items)} items")
    for i, item in enumerate(items):
        _check_text(item if isinstance(item, str) else " ".join(item), f"input #{i}", limits)


# -- errors as JSON ---------------------------------------------------------------------------------
def _install_error_handlers(app: FastAPI) -> None:
    async def serve_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeError)
        return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = list(exc.errors())
        broken = [p for p in problems if p.get("type") == "json_invalid"]
        if broken:
            where = (broken[0].get("ctx") or {}).get("error", "")
            return JSONResponse(
                {"error": f"malformed JSON in the request body ({where}); send one JSON object"}, status_code=400
            )
        if [p.get("loc") for p in problems] == [("body",)] and problems[0].get("type") == "model_attributes_type":
            return JSONResponse(
                {"error": "the request body must be one JSON object, sent with Content-Type: application/json"},
                status_code=400,
            )
        lines = [f"{'.'.join(str(x) for x in p.get('loc', ())[1:]) or 'body'}: {p.get('msg')}" for p in problems]
        detail = [{"loc": list(p.get("loc", ())), "msg": p.get("msg"), "type": p.get("type")} for p in problems]
        return JSONResponse({"error": "invalid request: " + "; ".join(lines), "detail": detail}, status_code=422)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = {404: f"no such endpoint {request.url.path}; see /docs"}.get(exc.status_code, str(exc.detail))
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)


class RequestGate:
    """ASGI middleware: refuses a body over ``max_body_bytes`` with 413 (read before the app sees it,
    whether announced by Content-Length or not) and counts requests accepted and answered (what a
    graceful shutdown must leave equal)."""

    def __init__(self, app, max_body_bytes: int, holder: list):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.accepted = 0
        self.answered = 0
        self.unanswered = 0  # the client went away, or the connection broke, before the answer was sent
        self._lock = threading.Lock()
        holder[:] = [self]

    def in_flight(self) -> int:
        return self.accepted - self.answered - self.unanswered  # read without the lock: a snapshot is enough

    def counts(self) -> dict:
        with self._lock:
            done = self.answered + self.unanswered
            return {
                "accepted": self.accepted,
                "answered": self.answered,
                "unanswered": self.unanswered,
                "in_flight": self.accepted - done,
            }

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self._lock:
            self.accepted += 1
        finished = False

        async def counted_send(message) -> None:
            nonlocal finished
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not finished:
                finished = True
                with self._lock:
                    self.answered += 1

        try:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._too_large(counted_send, int(declared))
                return
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client went away before sending it all
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_body_bytes:
                    await self._too_large(counted_send, len(body))
                    return
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            await self.app(scope, replay, counted_send)
        finally:
            if not finished:  # no complete answer: the client went away, or sending failed
                with self._lock:
                    self.unanswered += 1

    async def _too_large(self, send, size: int) -> None:
        message = (
            f"request body is over this server's max_body_bytes of {self.max_body_bytes} bytes; send less "
            f"(or start the server with a larger --max-body-bytes)"
        )
        payload = {"error": message, "limit": "max_body_bytes", "max": self.max_body_bytes, "got_at_least": size}
        response = JSONResponse(payload, status_code=413, headers={"Connection": "close"})
        await response({"type": "http"}, _no_receive, send)


async def _no_receive():
    return {"type": "http.disconnect"}
