"""`rnnkit serve` as a real process: uvicorn on a free port answers over HTTP, SIGTERM answers every
accepted request before the process exits, and the page works in a real browser (Debian's chromium
driven by selenium: type a sentence, read the answer from the page)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow  # each test starts a server process (about 2 s)

# uvicorn re-raises the signal once it has shut down cleanly (a shell shows status 143)
CLEAN_EXIT = (0, -signal.SIGTERM)
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``rnnkit serve ARGS`` on a free port; ``url``, ``proc``, ``stop()`` (SIGTERM, then the exit code and stderr)."""

    def __init__(self, *args: str, ready_s: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rnnkit.toolkit", "serve", *args, "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_s  # a bound on start-up (numba compiles), not a timing check
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"the server did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self, timeout: float = 60.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, self.output()


@pytest.fixture(scope="module")
def server(gru_bundle):
    s = Server(f"mr={gru_bundle}", "--backend", "onnxruntime", "--threads", "1")
    yield s
    code, log = s.stop()
    assert code in CLEAN_EXIT, log


def test_real_server_answers_like_rnnkit_predict(server, gru_bundle):
    from click.testing import CliRunner

    from rnnkit.toolkit.cli import cli

    texts = ["good film", "awful plot and dull acting", "the story was lovely"]
    expected = CliRunner().invoke(cli, ["predict", str(gru_bundle), *texts, "--backend", "onnxruntime"]).stdout
    r = httpx.post(server.url + "/v1/models/mr/predict", json={"inputs": texts}, timeout=30)
    assert r.status_code == 200
    assert r.json()["outputs"] == [json.loads(line) for line in expected.splitlines()]
    assert "openapi" in httpx.get(server.url + "/openapi.json").json()


def test_sigterm_answers_every_accepted_request(gru_bundle):
    s = Server(f"mr={gru_bundle}", "--backend", "onnxruntime", "--max-batch", "64", "--max-wait-ms", "10000")
    # One request whose body is only half sent: accepted (in flight) but not yet complete.  While it is
    # in flight the batcher keeps waiting for it (the server holds more requests than the batch has),
    # so the others queue up: SIGTERM then certainly arrives with requests in flight.
    body = json.dumps({"inputs": "the slow one"}).encode()
    head = "POST /v1/models/mr/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    slow = socket.create_connection(("127.0.0.1", s.port))
    slow.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
    texts = [f"good film number {i}" for i in range(5)]
    answers: dict = {}

    def ask(i):
        answers[i] = httpx.post(s.url + "/v1/models/mr/predict", json={"inputs": texts[i]}, timeout=60)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    queued = 0
    while queued < len(texts) and any(t.is_alive() for t in threads):
        queued = httpx.get(s.url + "/health").json()["models"]["mr"]["queued"]
    s.proc.send_signal(signal.SIGTERM)
    # until the listening socket is closed (a connection caught mid-close is dropped unanswered: never accepted)
    with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError)):
        while True:
            httpx.get(s.url + "/health", timeout=5)
            time.sleep(0.02)
    slow.sendall(body[5:])  # the accepted request completes after the stop signal
    reply = slow.makefile("rb").read().decode()
    slow.close()
    for t in threads:
        t.join()
    code, log = s.stop()
    assert code in CLEAN_EXIT, log
    assert reply.startswith("HTTP/1.1 200") and '"text":"the slow one"' in reply, reply
    assert [answers[i].status_code for i in range(len(texts))] == [200] * len(texts)
    assert [answers[i].json()["outputs"][0]["text"] for i in range(len(texts))] == texts
    line = next(x for x in log.splitlines() if "requests accepted" in x)
    accepted, answered = (int(line.split(" requests accepted, ")[0].split()[-1]), int(line.split(", ")[1].split()[0]))
    assert accepted == answered and "0 closed by the client first" in line, line


def _browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(
            f"needs Debian's chromium and chromium-driver ({', '.join(missing)} missing; .ci/run installs them)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="rnnkit-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1000,800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    return driver, profile


def test_page_in_a_real_browser(server, gru_bundle):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from rnnkit.runtime import load

    driver, profile = _browser()
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        text = "the movie was quite lovely"
        driver.find_element(By.ID, "text").send_keys(text)
        driver.find_element(By.ID, "run").click()
        wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-answer"))
        shown = json.loads(driver.find_element(By.ID, "result").get_attribute("data-answer"))
        expected = load(gru_bundle, backend="onnxruntime").predict([text])[0]
        assert shown["label"] == expected.label and shown["text"] == text
        assert expected.label in driver.find_element(By.ID, "result").text  # what a person reads
        explain = driver.find_element(By.ID, "explain")
        if explain.is_displayed():  # the runtime can explain: words are highlighted
            explain.click()
            wait.until(lambda d: "method:" in d.find_element(By.ID, "result").text)
            words = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#result .tok")]
            assert words == text.split()
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_no_torch_in_the_server_process(server):
    pid = server.proc.pid
    maps = Path(f"/proc/{pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc to read the server's loaded libraries")
    assert "libtorch" not in maps.read_text(errors="replace")
