"""`rnnkit serve`'s API through Starlette's TestClient: answers equal `rnnkit predict`'s, batching
joins concurrent requests, streaming equals `rnnkit generate`, and every bad request is a JSON 4xx
that names what was wrong (the limits by name), while the server keeps answering."""

from __future__ import annotations

import json
import threading
import warnings

import pytest
from click.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
with warnings.catch_warnings():  # starlette's TestClient on httpx warns that httpx2 is its future
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from rnnkit.runtime import load
from rnnkit.runtime.serve import Limits, Settings, create_app
from rnnkit.runtime.serve_batcher import Batcher
from rnnkit.toolkit.cli import cli

TEXTS = ["good film", "awful plot and dull acting", "the movie was quite lovely", "bad", "a boring story"]


@pytest.fixture(scope="module")
def models(gru_bundle, tag_bundle, lm_bundles, s2s_bundles):
    paths = {"mr": gru_bundle, "pos": tag_bundle, "lm": lm_bundles("lstm", 1), "g2p": s2s_bundles()}
    return {name: load(path, backend="onnxruntime", threads=1) for name, path in paths.items()}, paths


@pytest.fixture(scope="module")
def client(models):
    loaded, _ = models
    limits = Limits(max_body_bytes=4096, max_items=8, max_input_chars=200, max_new_tokens=50)
    with TestClient(create_app(loaded, Settings(limits=limits, max_batch=4, max_wait_ms=2))) as c:
        yield c


def _predict_cli(path, texts, *flags) -> list[dict]:
    result = CliRunner().invoke(cli, ["predict", str(path), *texts, "--backend", "onnxruntime", *flags])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize(
    "name, texts, options, flags",
    [
        ("mr", TEXTS, {}, []),
        ("pos", ["the film runs .", "a good actor moves !"], {}, []),
        ("g2p", ["cat", "horse", "fish"], {"beam": 3, "nbest": 2}, ["--beam", "3", "--nbest", "2"]),
    ],
)
def test_predict_equals_rnnkit_predict(client, models, name, texts, options, flags):
    expected = _predict_cli(models[1][name], texts, *flags)
    r = client.post(f"/v1/models/{name}/predict", json={"inputs": texts, **options})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == expected
    one = client.post(f"/v1/models/{name}/predict", json={"inputs": texts[1], **options})
    assert one.json()["outputs"] == expected[1:2]


def test_concurrent_requests_run_as_one_batch_with_their_own_answers(models):
    model = models[0]["mr"]
    batcher = Batcher(model, max_batch=len(TEXTS), max_wait_s=60.0, name="mr")  # waits until the batch is full
    answers: dict = {}

    def ask(i):
        answers[i] = batcher.submit([TEXTS[i]], {"truncate": False}).result(timeout=60)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(TEXTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert batcher.stats.batches == 1 and batcher.stats.largest == len(TEXTS) and batcher.stats.jobs == len(TEXTS)
    alone = model.predict(TEXTS)
    assert [answers[i].results[0] for i in range(len(TEXTS))] == alone


def test_batch_with_a_refused_item_costs_only_that_request(models):
    batcher = Batcher(models[0]["mr"], max_batch=2, max_wait_s=60.0)
    bad, good = batcher.submit([" "], {}), batcher.submit(["good film"], {})
    assert bad.result(60).refused and bad.result(60).results == [None]
    assert good.result(60).refused == [] and good.result(60).results[0].text == "good film"
    batcher.close()


def test_generate_streams_what_rnnkit_generate_prints(client, models):
    path = models[1]["lm"]
    options = {"max_tokens": 12, "temperature": 0.9, "seed": 3}
    cli_out = CliRunner().invoke(
        cli,
        ["generate", str(path), "--prompt", "the cat", "--max-tokens", "12", "--temperature", "0.9"]
        + ["--seed", "3", "--backend", "onnxruntime", "--no-echo"],
    )
    assert cli_out.exit_code == 0, cli_out.output
    expected = cli_out.stdout[:-1]  # the tokens, then click.echo()'s newline
    with client.stream("POST", "/v1/models/lm/generate", json={"prompt": "the cat", **options}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    tokens = [json.loads(e[len("data: ") :])["token"] for e in events if e.startswith("data: ")]
    assert len(tokens) == 12 and "".join(tokens) == expected
    assert events[-1].startswith("event: done") and json.loads(events[-1].split("data: ", 1)[1])["text"] == expected
    whole = client.post("/v1/models/lm/generate", json={"prompt": "the cat", "stream": False, **options})
    assert whole.status_code == 200 and whole.json()["text"] == expected and whole.json()["tokens"] == tokens


def test_models_health_schema_and_page(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert {n: m["task"] for n, m in models.items()} == {"mr": "classify", "pos": "tag", "lm": "lm", "g2p": "seq2seq"}
    assert models["mr"]["labels"] == ["neg", "pos"] and models["mr"]["manifest"]["architecture"]["cell"] == "gru"
    assert models["lm"]["endpoints"] == ["generate"]
    assert client.get("/v1/models/pos").json()["labels"] == models["pos"]["labels"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and set(health["models"]) == set(models)
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/models/{name}/predict", "/v1/models/{name}/generate", "/v1/models/{name}/explain"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" in page.text and "http://" not in page.text and "https://" not in page.text  # no external assets


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/v1/models/mr/predict", b'{"inputs": ', 400, "malformed JSON"),
        ("/v1/models/mr/predict", b"[1, 2]", 400, "one JSON object"),
        ("/v1/models/mr/predict", {"input": "x"}, 422, "inputs: Field required"),
        (
            "/v1/models/nope/predict",
            {"inputs": "x"},
            404,
            "no model 'nope' on this server; it serves: mr, pos, lm, g2p",
        ),
        ("/v1/models/lm/predict", {"inputs": "x"}, 400, "is a lm model; /predict runs"),
        ("/v1/models/mr/generate", {"prompt": "x"}, 400, "use POST /v1/models/mr/predict"),
        ("/v1/models/mr/predict", {"inputs": "x", "beam": 2}, 400, "beam applies to seq2seq models"),
        ("/v1/models/mr/predict", {"inputs": []}, 422, "empty list"),
        ("/v1/models/mr/predict", {"inputs": ["good", "  "]}, 422, "input #1: text ('  ') has no tokens"),
        ("/v1/models/mr/predict", {"inputs": ["x"] * 9}, 422, "max_items of 8"),
        ("/v1/models/mr/predict", {"inputs": "x" * 201}, 422, "max_input_chars of 200"),
        ("/v1/models/lm/generate", {"prompt": "the", "max_tokens": 51}, 422, "max_new_tokens of 50"),
        ("/v1/models/lm/generate", {"prompt": "the", "top_p": 0}, 422, "top_p"),
        ("/v1/nothing", {}, 404, "no such endpoint /v1/nothing"),
    ],
)
def test_bad_requests_are_json_4xx_naming_the_problem(client, path, body, status, words):
    sent = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    r = client.post(path, **sent)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_limits_are_named_in_the_error_body(client):
    big = client.post("/v1/models/mr/predict", content=b'{"inputs": "' + b"a" * 5000 + b'"}')
    assert big.status_code == 413
    assert big.json()["limit"] == "max_body_bytes" and big.json()["max"] == 4096
    assert "--max-body-bytes" in big.json()["error"]
    long = client.post("/v1/models/mr/predict", json={"inputs": "a " * 150})
    assert long.status_code == 422 and long.json()["limit"] == "max_input_chars" and long.json()["got"] == 300


def test_an_exception_in_one_request_does_not_stop_the_server(client, models, monkeypatch):
    model = models[0]["mr"]

    def broken(*args, **kwargs):
        raise RuntimeError("simulated fault")

    monkeypatch.setattr(model, "run_batch", broken)
    r = client.post("/v1/models/mr/predict", json={"inputs": "good"})
    assert r.status_code == 500 and "RuntimeError: simulated fault" in r.json()["error"]
    monkeypatch.undo()
    again = client.post("/v1/models/mr/predict", json={"inputs": "good"})
    assert again.status_code == 200 and again.json()["outputs"][0]["label"] in ("neg", "pos")
    assert client.get("/health").json()["models"]["mr"]["batches"]["failures"] >= 1


def test_api_key_guards_the_models_not_the_page(models):
    with TestClient(create_app({"mr": models[0]["mr"]}, Settings(api_key="s3cret"))) as c:
        assert c.get("/").status_code == 200 and c.get("/health").json()["auth"] is True
        refused = c.post("/v1/models/mr/predict", json={"inputs": "good"})
        assert refused.status_code == 401 and "X-API-Key" in refused.json()["error"]
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert (
            c.post("/v1/models/mr/predict", json={"inputs": "good"}, headers={"X-API-Key": "s3cret"}).status_code == 200
        )
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_explain_when_the_runtime_can(client, models):
    model = models[0]["mr"]
    if not hasattr(model, "explain"):
        r = client.post("/v1/models/mr/explain", json={"inputs": "good film"})
        assert r.status_code == 400 and "cannot explain" in r.json()["error"]
        return
    r = client.post("/v1/models/mr/explain", json={"inputs": ["good film", "awful plot"]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == [e.to_dict() for e in model.explain(["good film", "awful plot"])]
    assert client.post("/v1/models/lm/explain", json={"inputs": "the"}).status_code == 400


def test_cli_refuses_an_open_host_without_a_key(gru_bundle):
    result = CliRunner().invoke(cli, ["serve", str(gru_bundle), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--api-key" in result.output and "--insecure-open" in result.output
    twice = CliRunner().invoke(cli, ["serve", str(gru_bundle), str(gru_bundle)])
    assert twice.exit_code == 2 and "NAME=PATH" in twice.output
