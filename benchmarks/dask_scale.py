"""Scale-out on Dask: rows/s with 1 and 2 workers, equality with local `rnnkit predict`, kill -9 mid-run.

    python benchmarks/dask_scale.py [--rows 100000] [--partition-size 5000] [--backend onnxruntime]

Data: ``--rows`` MR-like review lines sampled (seeded, with replacement) from
``../shared/datasets/mr_polarity`` when present, else synthetic sentiment text.  Model: the
``mr_small`` GRU of the rnnkit-demo-mr package (the ``train`` extra) exported to a bundle (cached in the work folder).

1. local: `rnnkit predict --input data.jsonl --output local.jsonl --threads 1` (a subprocess).
2. dask, 1 and 2 worker processes (1 thread each, a LocalCluster on this machine): the job timed
   twice, on a fresh cluster (start + bundle shipping + model load included) and again on the
   warm cluster (each worker keeps its model).  Every output is compared with the local one.
3. kill -9: a real `dask scheduler` and two `dask worker --no-nanny` processes; one worker is
   SIGKILLed once a third of the partitions are written; rows in, rows out, duplicate ids and
   equality with the local output are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (pins 1 thread before numpy loads)
from common import ROOT, WORK, machine, table

MR = ROOT.parent / "shared" / "datasets" / "mr_polarity"


def make_bundle() -> Path:
    bundle = WORK / "dask" / "mr_small.bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    from rnnkit.toolkit.demo import ASSET
    from rnnkit.toolkit.devset import dev_set_for
    from rnnkit.toolkit.export_checkpoint import export_checkpoint

    export_checkpoint(ASSET, bundle, int8=True, dev=dev_set_for(ASSET, ASSET / "dev.tsv"), log=lambda m: None)
    return bundle


def make_data(rows: int) -> tuple[Path, str]:
    import numpy as np

    path = WORK / "dask" / f"mr_{rows}.jsonl"
    source = "mr_polarity" if MR.is_dir() else "synthetic"
    if not path.is_file():
        rng = np.random.default_rng(0)
        if source == "mr_polarity":
            lines = [
                line.strip()
                for name in ("rt-polarity.pos", "rt-polarity.neg")
                for line in (MR / name).read_text(encoding="latin-1").splitlines()
                if line.strip()
            ]
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import synthetic_texts

            lines = synthetic_texts(10_000, 0)[0]
        picks = rng.integers(0, len(lines), size=rows)
        tmp = path.with_suffix(".partial")
        tmp.write_text("".join(json.dumps({"text": lines[i]}) + "\n" for i in picks), encoding="utf-8")
        tmp.rename(path)
    return path, source


def rnnkit_cli() -> list[str]:
    return [sys.executable, "-c", "from rnnkit.toolkit.cli import main; main()"]


def local_run(bundle: Path, data: Path, backend: str) -> tuple[float, list[str]]:
    out = WORK / "dask" / "local.jsonl"
    start = time.perf_counter()
    subprocess.run(
        [
            *rnnkit_cli(),
            "predict",
            str(bundle),
            "--input",
            str(data),
            "--output",
            str(out),
            "--threads",
            "1",
            "--backend",
            backend,
        ],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start, out.read_text(encoding="utf-8").splitlines()


def compare(out: Path, local: list[str]) -> tuple[int, int, int, float]:
    """(rows out, duplicate ids, rows byte-identical to local once the id is dropped, max abs score diff)."""
    rows = [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.open(encoding="utf-8")]
    ids = [r.pop("id") for r in rows]
    by_line = {int(i.split(":")[1]): r for i, r in zip(ids, rows)}
    same, worst = 0, 0.0
    for n, line in enumerate(local, 1):
        expected, got = json.loads(line), by_line.get(n)
        if got is None:
            continue
        same += json.dumps(got) == json.dumps(expected)
        worst = max([worst] + [abs(got["scores"][k] - v) for k, v in expected["scores"].items()])
    return len(rows), len(ids) - len(set(ids)), same, worst


def dask_runs(bundle, data, local, workers: int, partition_size: int, backend: str) -> list[list]:
    import distributed

    from rnnkit.runtime.distributed import predict

    rows = []
    start = time.perf_counter()
    with (
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        started = time.perf_counter() - start
        for run in ("fresh cluster", "warm cluster"):
            out = WORK / "dask" / f"out_{workers}w_{run.split()[0]}"
            shutil.rmtree(out, ignore_errors=True)
            s = predict(bundle, [str(data)], out, client=client, partition_size=partition_size, backend=backend)
            seconds = s.seconds + (started if run == "fresh cluster" else 0.0)
            n, dups, same, worst = compare(out, local)
            rows.append(
                [
                    f"dask, {workers} worker{'s' if workers > 1 else ''}, {run}",
                    s.rows_in,
                    n,
                    dups,
                    round(seconds, 2),
                    round(s.rows_in / seconds),
                    f"{same}/{len(local)}",
                    f"{worst:.1e}",
                    sum(s.model_loads.values()),
                    f"{s.task_seconds:.1f} / {s.task_cpu_seconds:.1f}",
                ]
            )
    return rows


def kill_run(bundle, data, local, partition_size: int, backend: str) -> list:
    import distributed

    from rnnkit.runtime.distributed import predict

    root = WORK / "dask" / "kill"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    dask = [sys.executable, "-m", "dask"]
    procs = [
        subprocess.Popen(
            [
                *dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(root / "s.json"),
            ],
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        while not (root / "s.json").exists():
            time.sleep(0.2)
        address = json.loads((root / "s.json").read_text())["address"]
        for name in ("w0", "w1"):
            procs.append(
                subprocess.Popen(
                    [
                        *dask,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--name",
                        name,
                        "--local-directory",
                        str(root / name),
                    ],
                    stderr=subprocess.DEVNULL,
                )
            )
        with distributed.Client(address) as client:
            client.wait_for_workers(2, timeout=60)
            pids = client.run(os.getpid)
            victim = sorted(pids)[0]
            killed = {}
            total = -(-len(local) // partition_size)

            def kill(p):
                if not killed and p.partitions_done >= total // 3:
                    in_flight = len(client.processing(workers=[victim]).get(victim, ()))
                    os.kill(pids[victim], signal.SIGKILL)
                    killed.update(at=p.partitions_done, in_flight=in_flight)

            out = root / "out"
            s = predict(
                bundle,
                [str(data)],
                out,
                scheduler=address,
                partition_size=partition_size,
                backend=backend,
                progress=kill,
            )
        n, dups, same, worst = compare(out, local)
        return [
            f"kill -9 one of 2 workers after {killed['at']}/{total} partitions ({killed['in_flight']} in flight on it)",
            s.rows_in,
            n,
            dups,
            round(s.seconds, 2),
            round(s.rows_in / s.seconds),
            f"{same}/{len(local)}",
            f"{worst:.1e}",
            sum(s.model_loads.values()),
            f"{s.task_seconds:.1f} / {s.task_cpu_seconds:.1f}",
        ]
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=15)


def _spin(_=None) -> float:
    start, x = time.perf_counter(), 0
    for i in range(6_000_000):
        x += i * i
    return time.perf_counter() - start


def cpu_ceiling() -> float:
    """What 2 processes get over 1 on this machine right now: a pure-Python loop, 4 copies."""
    from concurrent.futures import ProcessPoolExecutor

    times = {}
    for n in (1, 2):
        with ProcessPoolExecutor(n) as pool:
            list(pool.map(_spin, range(n)))  # start the processes
            start = time.perf_counter()
            list(pool.map(_spin, range(4)))
            times[n] = time.perf_counter() - start
    return times[1] / times[2]


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--partition-size", type=int, default=5000)
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "numba"])
    parser.add_argument("--skip-kill", action="store_true")
    args = parser.parse_args()
    (WORK / "dask").mkdir(parents=True, exist_ok=True)
    bundle = make_bundle()
    data, source = make_data(args.rows)
    seconds, local = local_run(bundle, data, args.backend)
    headers = [
        "run",
        "rows in",
        "rows out",
        "duplicate ids",
        "seconds",
        "rows/s",
        "rows identical to local",
        "max abs score diff",
        "model loads",
        "worker task s / CPU s",
    ]
    rows = [
        [
            "local `rnnkit predict` (1 process, 1 thread)",
            len(local),
            len(local),
            0,
            round(seconds, 2),
            round(len(local) / seconds),
            "-",
            "-",
            1,
            "-",
        ]
    ]
    for workers in (1, 2):
        rows += dask_runs(bundle, data, local, workers, args.partition_size, args.backend)
    if not args.skip_kill:
        rows.append(kill_run(bundle, data, local, args.partition_size, args.backend))
    ceiling = cpu_ceiling()
    print(
        f"# Dask scale-out: {args.rows} {source} rows, mr_small GRU bundle, {args.backend} fp32, "
        f"partitions of {args.partition_size}; {machine().replace(', 1 thread', '')}"
    )
    print(table(headers, rows))
    warm = {r[0].split(",")[1].strip(): r[5] for r in rows if "warm" in r[0]}
    fresh = {r[0].split(",")[1].strip(): r[5] for r in rows if "fresh" in r[0]}
    print(
        f"\nspeed-up 2 workers / 1 worker: {warm['2 workers'] / warm['1 worker']:.2f}x warm, "
        f"{fresh['2 workers'] / fresh['1 worker']:.2f}x fresh; a pure-Python loop in 2 processes vs 1, "
        f"measured in the same run: {ceiling:.2f}x (load average now: {load_average()})"
    )


if __name__ == "__main__":
    main()
