"""The Dask engine against real `dask scheduler` / `dask worker` processes on 127.0.0.1.

Row counts, ids, equality with local `rnnkit predict`, the errors file, refuse/resume, one
model load per worker, and a worker killed with SIGKILL mid-run (no row lost, none duplicated).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_python, synthetic_sentences, synthetic_texts

distributed = pytest.importorskip("distributed")

from rnnkit.runtime.errors import InputError  # noqa: E402
from rnnkit.runtime.partitions import expand_inputs, iter_rows, partitions  # noqa: E402
from rnnkit.runtime.tolerance import FP32  # noqa: E402
from rnnkit.toolkit.cli import cli  # noqa: E402

pytestmark = pytest.mark.slow  # subprocesses, compiles or many exports: not in the fast subset

DASK = [sys.executable, "-m", "dask"]


class Cluster:
    """A scheduler and N single-thread, nanny-less workers (so kill -9 really kills a worker)."""

    def __init__(self, root: Path, workers: int = 2):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.file = root / "scheduler.json"
        self.procs = [
            subprocess.Popen(
                [
                    *DASK,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(self.file),
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(root / "scheduler.log", "w"),
            )
        ]
        deadline = time.time() + 60
        while not self.file.exists() and time.time() < deadline:
            time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = [self.start_worker(f"w{i}") for i in range(workers)]
        self.client = distributed.Client(self.address, timeout="60s")
        self.client.wait_for_workers(workers, timeout=60)

    def start_worker(self, name: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [
                *DASK,
                "worker",
                self.address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
                "--name",
                name,
                "--local-directory",
                str(self.root / name),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / f"{name}.log", "w"),
        )
        self.procs.append(proc)
        return proc

    def pids(self) -> dict[str, int]:
        return self.client.run(os.getpid)  # worker address -> pid

    def close(self):
        self.client.close()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("dask"))
    yield c
    c.close()


def read_parts(out: Path) -> list[dict]:
    return [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.open(encoding="utf-8")]


def local_predict(bundle, src: Path, out: Path, *extra: str) -> list[dict]:
    result = CliRunner().invoke(cli, ["predict", str(bundle), "--input", str(src), "--output", str(out), *extra])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.open(encoding="utf-8")]


def assert_same_predictions(dask_rows: list[dict], local_rows: list[dict], file_index: int, lines: list[int]):
    by_id = {r["id"]: r for r in dask_rows}
    for line, expected in zip(lines, local_rows):
        got = dict(by_id[f"{file_index}:{line}"])
        got.pop("id")
        assert got.keys() == expected.keys()
        for key in expected:
            if key in ("scores", "score"):
                a = list(got[key].values()) if isinstance(got[key], dict) else got[key]
                e = list(expected[key].values()) if isinstance(expected[key], dict) else expected[key]
                assert FP32.close(np.array(a), np.array(e)), (key, got, expected)
            else:
                assert got[key] == expected[key]


def write_inputs(root: Path) -> tuple[list[Path], int]:
    """A JSONL, a CSV and a txt file of clean texts, plus one file of bad records."""
    texts, _ = synthetic_texts(1500, 3)
    root.mkdir(parents=True, exist_ok=True)
    jsonl, csv_file, txt, bad = root / "a.jsonl", root / "b.csv", root / "c.txt", root / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:600]), encoding="utf-8")
    csv_file.write_text(
        "id,text\n" + "".join(f'{i},"{t}, really"\n' for i, t in enumerate(texts[600:1000])), encoding="utf-8"
    )
    txt.write_text("".join(t + "\n" for t in texts[1000:]), encoding="utf-8")
    bad.write_bytes(
        b'{"text": "good film"}\n{"text": ""}\n{"text": "bad \xff bytes"}\n{not json\n'
        b'{"other": 1}\n{"text": "... !!!"}\n{"text": "dull plot"}\n'
    )
    return [jsonl, csv_file, txt, bad], 1500 + 7


def test_partitions_ids_and_bad_records(tmp_path):
    src = tmp_path / "x.csv"
    src.write_bytes(b'text,label\n"two\nlines",pos\nbad \xff,neg\n,neg\nfine,pos\n')
    rows = list(iter_rows(expand_inputs([str(tmp_path / "*.csv")])))
    assert [(r[0], r[2], r[3] is None) for r in rows] == [
        ("0:2", "two\nlines", True),
        ("0:4", None, False),
        ("0:5", None, False),
        ("0:6", "fine", True),
    ]
    assert "invalid utf-8" in rows[1][3] and "empty text" in rows[2][3]
    parts = list(partitions(iter(rows), 3))
    assert [p.rows for p in parts] == [3, 1] and parts[0].ids == ["0:2"] and parts[1].ids == ["0:6"]
    with pytest.raises(InputError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.jsonl")])


def test_import_needs_no_dask_or_torch(gru_bundle):
    code = (
        "import sys; import rnnkit.runtime.distributed, rnnkit.runtime.partitions; "
        "print('dask' in sys.modules, 'distributed' in sys.modules, 'torch' in sys.modules)"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "False"]


def test_classify_matches_local_predict(cluster, gru_bundle, tmp_path):
    from rnnkit.runtime.distributed import predict

    files, rows_in = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    seen = []
    summary = predict(
        gru_bundle,
        [str(tmp_path / "in" / "*")],
        out,
        scheduler=cluster.address,
        partition_size=250,
        backend="numba",
        progress=lambda p: seen.append(p.partitions_done),
    )
    rows = read_parts(out)
    errors = [json.loads(line) for line in (out / "errors.jsonl").open(encoding="utf-8")]
    assert summary.rows_in == rows_in and len(rows) + len(errors) == rows_in
    assert len({r["id"] for r in rows} | {e["id"] for e in errors}) == rows_in  # unique ids
    assert summary.partitions == -(-rows_in // 250) == len(list(out.glob("part-*.jsonl")))
    assert seen[-1] == summary.partitions
    # one model per worker process, not per partition
    assert len(summary.model_loads) == 2 and set(summary.model_loads.values()) == {1}
    assert json.loads((out / "_SUCCESS").read_text())["rows_out"] == len(rows)
    # bad records: reported with their ids, the job still finished
    assert {e["id"]: e["error"].split(" ")[0] for e in errors} == {
        "3:2": "empty",
        "3:3": "invalid",
        "3:4": "invalid",
        "3:5": "object",
    }
    assert errors[1]["source"].endswith("d.jsonl:3") and "invalid utf-8 at byte 14" in errors[1]["error"]
    assert {r["id"] for r in rows if r["id"].startswith("3:")} == {"3:1", "3:6", "3:7"}
    # same rows as local `rnnkit predict`, file by file (numbering: JSONL/txt lines from 1, CSV rows from 2)
    for index, (src, first) in enumerate(zip(files[:3], (1, 2, 1))):
        local = local_predict(gru_bundle, src, tmp_path / f"local{index}.jsonl", "--backend", "numba")
        assert_same_predictions(rows, local, index, list(range(first, first + len(local))))


def test_tagging_matches_local_predict(cluster, tag_bundle, tmp_path):
    from rnnkit.runtime.distributed import predict

    sentences, _ = synthetic_sentences(300, 5)
    src = tmp_path / "sents.txt"
    src.write_text("".join(" ".join(s) + "\n" for s in sentences), encoding="utf-8")
    max_length = json.loads((tag_bundle / "manifest.json").read_text())["graph"]["max_length"]
    long = tmp_path / "long.txt"  # a sentence the model refuses: fails on the worker, not the job
    long.write_text("the film runs .\n" + "film " * (max_length + 1) + "\n", encoding="utf-8")
    summary = predict(
        tag_bundle,
        [str(src), str(long)],
        tmp_path / "out",
        scheduler=cluster.address,
        partition_size=70,
        backend="onnxruntime",
        pretokenized=True,
    )
    rows = read_parts(tmp_path / "out")
    assert summary.rows_out == len(rows) == 301 and summary.errors == 1
    error = json.loads((tmp_path / "out" / "errors.jsonl").read_text())
    assert error["id"] == "1:2" and f"more than this bundle's max_length {max_length}" in error["error"]
    # fp32: the int8 LSTM quantizes activations per batch (onnxruntime DynamicQuantizeLSTM), so its
    # scores depend on which rows share a batch, locally as well (--batch-size)
    local = local_predict(tag_bundle, src, tmp_path / "local.jsonl", "--pretokenized", "--backend", "onnxruntime")
    assert_same_predictions(rows, local, 0, list(range(1, 301)))


def test_refuse_then_resume(cluster, gru_bundle, tmp_path):
    from rnnkit.runtime.distributed import predict

    texts, _ = synthetic_texts(900, 4)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    first = predict(gru_bundle, [str(src)], out, scheduler=cluster.address, partition_size=200)
    before = read_parts(out)
    with pytest.raises(InputError, match="not empty.*--resume"):
        predict(gru_bundle, [str(src)], out, scheduler=cluster.address, partition_size=200)
    with pytest.raises(InputError, match="partition_size differ"):
        predict(gru_bundle, [str(src)], out, scheduler=cluster.address, partition_size=300, resume=True)
    (out / "part-00002.jsonl").unlink()  # as if the job had died before this partition
    (out / "_SUCCESS").unlink()
    again = predict(gru_bundle, [str(src)], out, scheduler=cluster.address, partition_size=200, resume=True)
    assert again.partitions_skipped == first.partitions - 1 and again.rows_out == first.rows_out == 900
    assert read_parts(out) == before


def test_cli_dask_engine(cluster, gru_bundle, tmp_path):
    texts, _ = synthetic_texts(300, 6)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"review": t}) + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "out"
    args = [
        "predict",
        str(gru_bundle),
        "--input",
        str(src),
        "--output",
        str(out),
        "--engine",
        "dask",
        "--scheduler",
        cluster.address,
        "--partition-size",
        "100",
        "--text-field",
        "review",
        "--int8",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "300 rows in, 300 predictions, 0 errors" in result.output
    rows = read_parts(out)
    assert [r["id"] for r in rows] == [f"0:{i}" for i in range(1, 301)]
    local = local_predict(gru_bundle, src, tmp_path / "local.jsonl", "--text-field", "review", "--int8")
    assert_same_predictions(rows, local, 0, list(range(1, 301)))  # int8 passed through to the workers
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "pass --resume" in result.output
    result = CliRunner().invoke(cli, ["predict", str(gru_bundle), "--input", str(src), "--engine", "dask"])
    assert result.exit_code == 2 and "needs --output OUT_DIR" in result.output
    result = CliRunner().invoke(cli, ["predict", str(gru_bundle), "good", "--scheduler", cluster.address])
    assert result.exit_code == 2 and "--scheduler needs --engine dask" in result.output


def test_worker_killed_mid_run_loses_and_duplicates_nothing(gru_bundle, tmp_path):
    from rnnkit.runtime.distributed import predict

    texts, _ = synthetic_texts(4000, 7)
    texts = [t + " " + t + " " + t for t in texts] * 10  # 40k rows, a few seconds of work
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    c = Cluster(tmp_path / "cluster")
    try:
        pids = c.pids()
        victim = sorted(pids)[0]
        killed = {}

        def kill_when_busy(p):
            # kill -9 the victim while it holds a partition in flight, after some partitions are written
            if killed or p.partitions_done < 3:
                return
            # read what it holds *before* the kill: once it is dead the scheduler may already have
            # dropped the worker, and asking about it then raises KeyError (seen on CI)
            in_flight = c.client.processing(workers=[victim]).get(victim)
            if in_flight:
                killed.update(at=p.partitions_done, in_flight=len(in_flight))
                os.kill(pids[victim], signal.SIGKILL)

        summary = predict(
            gru_bundle,
            [str(src)],
            tmp_path / "out",
            scheduler=c.address,
            partition_size=500,
            backend="onnxruntime",
            progress=kill_when_busy,
        )
        assert killed, "the victim worker never had a partition in flight"
        assert c.workers[0].poll() is not None or c.workers[1].poll() is not None  # really dead
        rows = read_parts(tmp_path / "out")
        ids = [r["id"] for r in rows]
        assert summary.rows_in == len(texts) == len(rows) == len(set(ids)) and summary.errors == 0
        assert sorted(ids, key=lambda i: int(i.split(":")[1])) == [f"0:{n}" for n in range(1, len(texts) + 1)]
        assert killed["at"] < summary.partitions
    finally:
        c.close()


# -- bad records of every kind, content digests, permissions (issue 15) --------------------------
def test_imdb_style_tsv_every_row_through_dask(cluster, gru_bundle, tmp_path):
    from test_records import imdb_like, write_imdb

    rows = imdb_like()
    src, out = tmp_path / "imdb.tsv", tmp_path / "out"
    write_imdb(src, rows)
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            str(gru_bundle),
            "--input",
            str(src),
            "--output",
            str(out),
            "--engine",
            "dask",
            "--scheduler",
            cluster.address,
            "--partition-size",
            "300",
            "--text-field",
            "sentence",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1000 rows in, 1000 predictions, 0 errors" in result.output
    assert [r["text"] for r in read_parts(out)] == [s for s, _ in rows]


def test_poison_lines_of_every_kind_go_to_errors(cluster, gru_bundle, tmp_path):
    from test_records import max_length_of, poison_jsonl

    from rnnkit.runtime.distributed import predict

    data, n_good, n_bad = poison_jsonl(max_length_of(gru_bundle))
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.jsonl").write_bytes(data)
    # CSV: a quote never closed (costs its line only), a short row, invalid bytes; TSV: a tab too many
    (root / "b.csv").write_bytes(b'text,n\n"never closed,1\ngood film,2\nshort\nbad \xff,3\n"a ""fine"" one",4\n')
    (root / "c.tsv").write_bytes(b'text\tn\n"quoted start\t1\ttoo many\n"quoted start\t2\n')
    old = os.umask(0o022)
    try:
        summary = predict(
            gru_bundle,
            [str(root / "*")],
            tmp_path / "out",
            scheduler=cluster.address,
            partition_size=5,
            backend="onnxruntime",
        )
    finally:
        os.umask(old)
    out = tmp_path / "out"
    rows = read_parts(out)
    errors = [json.loads(line) for line in (out / "errors.jsonl").open(encoding="utf-8")]
    assert (out / "_SUCCESS").is_file()
    assert summary.rows_in == n_good + n_bad + 5 + 2 == len(rows) + len(errors)
    assert (summary.rows_out, summary.errors) == (n_good + 2 + 1, n_bad + 3 + 1)
    assert {e["id"] for e in errors} >= {f"0:{2 * i + 2}" for i in range(n_bad)} | {"1:2", "1:4", "1:5", "2:2"}
    assert {r["id"] for r in rows if r["id"][0] != "0"} == {"1:3", "1:6", "2:3"}
    by_id = {e["id"]: e["error"] for e in errors}
    assert "nested too deeply" in by_id["0:6"] and "lone surrogate U+D800" in by_id["0:8"]
    assert f"more than this bundle's max_length {max_length_of(gru_bundle)}" in by_id["0:22"]
    # outputs follow the umask like any file the user writes: 0644 files, 0755 folders under 022
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir() if p.is_file()} == {"0o644"}
    assert oct(out.stat().st_mode & 0o777) == "0o755" == oct((out / "_errors").stat().st_mode & 0o777)


def test_resume_refuses_an_input_edited_in_place(cluster, gru_bundle, tmp_path):
    from rnnkit.runtime.distributed import predict

    texts, _ = synthetic_texts(300, 8)
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    predict(gru_bundle, [str(src)], out, scheduler=cluster.address, partition_size=100)
    (out / "_SUCCESS").unlink()
    (out / "part-00001.jsonl").unlink()
    data = src.read_bytes()
    src.write_bytes(data.replace(b"a", b"e", 1))  # same path, same size, other content
    with pytest.raises(
        InputError,
        match=r"the input .*in.txt changed since the job started .* rerun without "
        r"--resume into a new folder",
    ):
        predict(gru_bundle, [str(src)], out, scheduler=cluster.address, partition_size=100, resume=True)
    src.write_bytes(data)  # the original bytes: resume goes on
    again = predict(gru_bundle, [str(src)], out, scheduler=cluster.address, partition_size=100, resume=True)
    assert again.partitions_skipped == 2 and again.rows_out == 300
