"""`rnnkit serve` under load: throughput and latency with 1, 8 and 64 clients, batching on and off;
identical answers to `rnnkit predict`; SIGTERM during load; RSS over many requests.

    python benchmarks/serve_load.py [--requests 3000] [--seconds 15] [--clients 1,8,64]
                                    [--identical 1000] [--memory 100000] [--skip-load] [--skip-sigterm]

Model: the ``mr_small`` GRU of the rnnkit-demo-mr package (the ``train`` extra) exported once to a
bundle in the work folder (``$RNNKIT_BENCH_DIR``, default /tmp/rnnkit-bench).  Texts: its MR dev
split (``dev.tsv``, 1,066 sentences of ../shared/datasets/mr_polarity), one sentence per request,
taken in turn.  Every server is started by this script (``rnnkit serve`` on 127.0.0.1, a free port,
onnxruntime, ``--threads 1``) and stopped with SIGTERM.

The load generator is this process: asyncio, one keep-alive connection per client, hand-written
HTTP/1.1 (a client library would cost more CPU than the server it measures).  A client sends its
next request when the previous answer arrived (closed loop).  The generator and the server share
the machine's cores: on a 2-core machine the client takes a good part of one, so the server's
figures are lower bounds.

1. load: for batching on (``--max-batch 32 --max-wait-ms 5``, the defaults) and off
   (``--no-batching``), 1, 8 and 64 clients, each run bounded by ``--requests`` and ``--seconds``:
   requests/s, p50/p99 latency, errors (any answer but 200, or a broken connection).
2. identical: ``--identical`` dev sentences sent by 64 clients (so they run batched with others) vs
   ``rnnkit predict --input`` on the same sentences: the JSON of every answer compared.
3. sigterm: 64 clients in a loop, SIGTERM after a second; every request the server accepted
   (its own count, printed at exit) must have reached its client with a 200.
4. memory (``--memory N``): N requests from 64 clients; the server's RSS before, at N/2 and at N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (pins 1 thread before numpy loads)
import numpy as np
from common import WORK, machine


def make_bundle() -> Path:
    bundle = WORK / "serve" / "mr_small.bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    from rnnkit.toolkit.demo import ASSET
    from rnnkit.toolkit.devset import dev_set_for
    from rnnkit.toolkit.export_checkpoint import export_checkpoint

    print(f"exporting {ASSET} -> {bundle} (once)", file=sys.stderr)
    export_checkpoint(ASSET, bundle, dev=dev_set_for(ASSET, ASSET / "dev.tsv"), log=lambda m: None)
    return bundle


def dev_texts() -> list[str]:
    from rnnkit.toolkit.demo import ASSET

    lines = (ASSET / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.rsplit("\t", 1)[0] for line in lines if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bundle: Path, *flags: str):
        self.port = free_port()
        self.log_path = WORK / "serve" / f"server-{self.port}.log"
        self.log = open(self.log_path, "w+b")
        cmd = [sys.executable, "-m", "rnnkit.toolkit", "serve", f"mr={bundle}", "--port", str(self.port)]
        cmd += ["--backend", "onnxruntime", "--threads", "1", *flags]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                status, _ = asyncio.run(one_request(self.port, "GET", "/health", None))
                if status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{self.output()}")
            time.sleep(0.1)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(120)
        return code, self.output()


# -- a minimal HTTP/1.1 keep-alive client ---------------------------------------------------------------
def request_bytes(method: str, path: str, body: bytes | None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body or b"")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return status, await reader.readexactly(length)


async def one_request(port: int, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes(method, path, body))
        return await read_response(reader)
    finally:
        writer.close()


def predict_body(text: str) -> bytes:
    return json.dumps({"inputs": text}).encode()


async def load(port: int, texts: list[str], clients: int, requests: int, seconds: float, keep: bool = False) -> dict:
    """``clients`` closed-loop clients until ``requests`` were sent or ``seconds`` passed."""
    latencies: list[float] = []
    errors: list[str] = []
    refused: list[int] = []
    non200: list[int] = []
    answers: dict[int, bytes] = {}
    counter = iter(range(requests))
    deadline = time.perf_counter() + seconds

    async def client():
        reader = writer = None
        for i in counter:
            if time.perf_counter() > deadline:
                return
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                start = time.perf_counter()
                writer.write(request_bytes("POST", "/v1/models/mr/predict", predict_body(texts[i % len(texts)])))
                status, body = await read_response(reader)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors.append(f"{status} {body[:200]!r}")
                    non200.append(i)
                elif keep:
                    answers[i] = body
            except ConnectionRefusedError:  # nothing listens: the server stopped (section 3)
                refused.append(i)
                return
            except (OSError, asyncio.IncompleteReadError) as exc:  # the connection broke or was closed
                errors.append(f"{type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": wall,
        "client_cpu_ms": cpu / max(len(latencies), 1) * 1e3,
        "rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "refused": len(refused),
        "ok": len(latencies) - len(non200),
        "broken": len(errors) - len(non200),
        "answers": answers,
    }


def health(port: int) -> dict:
    status, body = asyncio.run(one_request(port, "GET", "/health", None))
    return json.loads(body)


def batch_stats(port: int) -> dict:
    return health(port)["models"]["mr"].get("batches", {})


# -- the sections ----------------------------------------------------------------------------------------
def section_load(bundle: Path, texts: list[str], clients: list[int], requests: int, seconds: float) -> None:
    modes = {"on": ["--max-batch", "32", "--max-wait-ms", "5"], "off": ["--no-batching"]}
    rows = []
    for mode, flags in modes.items():
        server = Server(bundle, *flags)
        asyncio.run(load(server.port, texts, 8, 200, 10))  # warm: connections, caches, first batches
        for n in clients:
            before, cpu = batch_stats(server.port), server.cpu_s()
            r = asyncio.run(load(server.port, texts, n, requests, seconds))
            r["server_cpu_ms"] = (server.cpu_s() - cpu) / max(r["requests"], 1) * 1e3
            after = batch_stats(server.port)
            batches = after["batches"] - before["batches"]
            r["mean_batch"] = (after["items"] - before["items"]) / batches if batches else float("nan")
            rows.append((mode, r))
            print(
                f"batching {mode:<3} clients {n:>3}: {r['requests']:>6} requests in {r['seconds']:6.1f} s "
                f"-> {r['rps']:7.0f} req/s, p50 {r['p50_ms']:6.1f} ms, p99 {r['p99_ms']:6.1f} ms, "
                f"{r['errors']} errors, mean batch {r['mean_batch']:.1f}, CPU ms/request server "
                f"{r['server_cpu_ms']:.2f} client {r['client_cpu_ms']:.2f} {r['first_error']}",
                flush=True,
            )
        server.stop()
    print(
        "\n| batching | clients | requests | req/s | p50 ms | p99 ms | errors | mean batch "
        "| server CPU ms/request | client CPU ms/request |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, r in rows:
        print(
            f"| {mode} | {r['clients']} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['errors']} | {r['mean_batch']:.1f} | {r['server_cpu_ms']:.2f} | {r['client_cpu_ms']:.2f} |"
        )
    by = {(mode, r["clients"]): r["rps"] for mode, r in rows}
    top = max(clients)
    for mode in modes:
        for base in modes:
            if (mode, top) in by and (base, 1) in by:
                print(
                    f"{top} clients batching {mode} / 1 sequential client batching {base}: "
                    f"{by[(mode, top)] / by[(base, 1)]:.2f}x"
                )


def section_identical(bundle: Path, texts: list[str], n: int) -> None:
    texts = texts[:n]
    source = WORK / "serve" / f"dev{n}.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    out = WORK / "serve" / f"predict{n}.jsonl"
    cmd = [sys.executable, "-m", "rnnkit.toolkit", "predict", str(bundle), "--input", str(source)]
    subprocess.run([*cmd, "--output", str(out), "--backend", "onnxruntime", "--threads", "1"], check=True)
    expected = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    server = Server(bundle)
    r = asyncio.run(load(server.port, texts, 64, len(texts), 600, keep=True))
    stats = batch_stats(server.port)
    server.stop()
    got = [json.loads(r["answers"][i])["outputs"][0] if i in r["answers"] else None for i in range(len(texts))]
    same = sum(g == e for g, e in zip(got, expected))
    labels = sum(g is not None and g["label"] == e["label"] for g, e in zip(got, expected))
    print(
        f"identical: {same}/{len(texts)} answers equal to `rnnkit predict`'s lines (JSON equality, scores "
        f"included), {labels}/{len(texts)} labels; {r['errors']} errors; served in {stats['batches']} batches "
        f"(mean {stats['items'] / max(stats['batches'], 1):.1f} inputs, largest {stats['largest']})"
    )


def section_sigterm(bundle: Path, texts: list[str]) -> None:
    server = Server(bundle)
    asyncio.run(load(server.port, texts, 8, 100, 10))  # warm
    before = health(server.port)["requests"]["accepted"]  # counts this /health request too

    async def run():
        task = asyncio.create_task(load(server.port, texts, 64, 10**9, 60))
        await asyncio.sleep(1.0)
        server.proc.send_signal(signal.SIGTERM)
        return await task

    r = asyncio.run(run())
    code, log = server.stop()
    line = next((x for x in log.splitlines() if "requests accepted" in x), "")
    words = line.split()
    accepted = int(words[words.index("requests") - 1]) - before
    answered = int(words[words.index("answered,") - 1]) - before
    unanswered = int(words[words.index("closed") - 1])
    received = r["ok"]
    print(
        f"sigterm: 64 clients, SIGTERM after 1 s of load. Server (its own count, load only): {accepted} requests "
        f"accepted, {answered} answered, {unanswered} closed by a client first. Clients: {received} answers "
        f"received, {r['requests'] - r['ok']} other answers, {r['broken']} broken connections "
        f"({r['first_error'][:80] or '-'}), {r['refused']} connections "
        f"refused after the stop. Every accepted request answered: {accepted == answered == received}. "
        f"Exit status {code} (uvicorn re-raises SIGTERM after a clean shutdown)."
    )


def section_memory(bundle: Path, texts: list[str], n: int) -> None:
    server = Server(bundle)
    asyncio.run(load(server.port, texts, 8, 200, 30))
    rss = [("start (after 200 warm-up requests)", server.rss_mb())]
    half = n // 2
    done, errors = 0, 0
    for target, name in ((half, "middle"), (n, "end")):
        r = asyncio.run(load(server.port, texts, 64, target - done, 3600))
        done += r["requests"]
        errors += r["errors"]
        rss.append((f"{name} ({done} requests)", server.rss_mb()))
        print(f"memory: {done} requests, {errors} errors, RSS {rss[-1][1]:.1f} MB", flush=True)
    server.stop()
    print("| point | server RSS MB |\n|---|---:|")
    for name, mb in rss:
        print(f"| {name} | {mb:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="most requests per load run")
    parser.add_argument("--seconds", type=float, default=15.0, help="most seconds per load run")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--identical", type=int, default=1000, help="dev sentences compared with rnnkit predict")
    parser.add_argument("--memory", type=int, default=0, help="requests for the RSS check (0: skip)")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-sigterm", action="store_true")
    args = parser.parse_args()
    (WORK / "serve").mkdir(parents=True, exist_ok=True)
    bundle = make_bundle()
    texts = dev_texts()
    print(f"# rnnkit serve load: {bundle.name}, {len(texts)} MR dev sentences, {machine()}, {os.cpu_count()} CPUs")
    print("# the load generator runs on the same machine as the server and shares its cores")
    if not args.skip_load:
        section_load(bundle, texts, [int(c) for c in args.clients.split(",")], args.requests, args.seconds)
    if args.identical:
        section_identical(bundle, texts, args.identical)
    if not args.skip_sigterm:
        section_sigterm(bundle, texts)
    if args.memory:
        section_memory(bundle, texts, args.memory)


if __name__ == "__main__":
    main()
