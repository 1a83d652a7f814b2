"""The CLI: help everywhere, exit codes (1 runtime error, 2 usage), exact Error lines, atomic outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from rnnkit.toolkit.cli import cli

COMMANDS = [
    [],
    ["train"],
    ["train", "classify"],
    ["export"],
    ["predict"],
    ["inspect"],
    ["warmup"],
    ["demo"],
    ["serve"],
    ["explain"],
    ["eval-lm"],
    ["diagnose"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "rnnkit")
def test_help(args):
    result = CliRunner().invoke(cli, args + ["--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_predict_arguments_to_stdout(gru_bundle):
    result = CliRunner().invoke(cli, ["predict", str(gru_bundle), "good film", "awful plot", "--backend", "numba"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["text"] for r in rows] == ["good film", "awful plot"]


def test_predict_file_to_file_same_on_both_backends(gru_bundle, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"review": f"good film number {i}"}) + "\n" for i in range(30)))
    outputs = {}
    for backend in ("onnxruntime", "numba"):
        out = tmp_path / f"{backend}.jsonl"
        result = CliRunner().invoke(
            cli,
            [
                "predict",
                str(gru_bundle),
                "--input",
                str(src),
                "--text-field",
                "review",
                "--output",
                str(out),
                "--backend",
                backend,
                "--batch-size",
                "7",
            ],
        )
        assert result.exit_code == 0, result.output
        outputs[backend] = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    assert len(outputs["numba"]) == 30 and outputs["numba"] == outputs["onnxruntime"]


def test_missing_bundle_exit_1(tmp_path):
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "nope"), "hi"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {tmp_path / 'nope'}: no such bundle")


def test_usage_error_exit_2(gru_bundle):
    result = CliRunner().invoke(cli, ["predict", str(gru_bundle), "hi", "--backend", "tpu"])
    assert result.exit_code == 2 and "Invalid value for '--backend'" in result.output
    result = CliRunner().invoke(cli, ["predict", str(gru_bundle), "hi", "--input", "x.txt"])
    assert result.exit_code == 2 and "give TEXTS or --input, not both" in result.output


def test_invalid_utf8_input_names_line(gru_bundle, tmp_path):
    # a bad record is reported by its line and the run goes on (docs/records.md); --strict stops
    src = tmp_path / "in.txt"
    src.write_bytes(b"fine line\nbad \xff line\n")
    result = CliRunner().invoke(cli, ["predict", str(gru_bundle), "--input", str(src)])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 1
    assert f"bad record {src}:2: invalid utf-8 at byte 4" in result.stderr
    assert "2 rows in, 1 predictions, 1 errors" in result.stderr
    result = CliRunner().invoke(cli, ["predict", str(gru_bundle), "--input", str(src), "--strict"])
    assert result.exit_code == 1 and f"Error: {src}:2: invalid utf-8 at byte 4" in result.output


def test_empty_text_in_csv_names_line(gru_bundle, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("text,id\nfine,1\n   ,2\n")
    result = CliRunner().invoke(cli, ["predict", str(gru_bundle), "--input", str(src), "--strict"])
    assert result.exit_code == 1 and f"Error: {src}:3: empty text" in result.output


def test_failed_prediction_leaves_previous_output(gru_bundle, tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    from rnnkit.runtime import Classifier

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Classifier, "run_batch", boom)
    CliRunner().invoke(cli, ["predict", str(gru_bundle), "hi", "--output", str(out)])
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no partial file left behind


def kill_9_once_written(args: list[str], folder, pattern: str) -> None:
    """Run `rnnkit ARGS`, wait until a file matching PATTERN appears in FOLDER, then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnkit.toolkit", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list(folder.glob(pattern)):
        time.sleep(0.02)
    assert list(folder.glob(pattern)), f"rnnkit {args[0]} never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_kill_9_leaves_no_output(gru_bundle, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(f"a good film with a plot number {i}\n" for i in range(200_000)))
    out = tmp_path / "out.jsonl"
    kill_9_once_written(
        ["predict", str(gru_bundle), "--input", str(src), "--output", str(out), "--backend", "onnxruntime"],
        tmp_path,
        ".out.jsonl.*.partial",
    )
    assert not out.exists()


def test_inspect(gru_bundle):
    result = CliRunner().invoke(cli, ["inspect", str(gru_bundle)])
    assert result.exit_code == 0, result.output
    assert "task=classify" in result.output and "model.int8.onnx" in result.output
    result = CliRunner().invoke(cli, ["inspect", str(gru_bundle), "--json"])
    assert json.loads(result.output)["format"] == "rnnkit-bundle"


def test_export_command_writes_bundle_and_summary(tmp_path):
    pytest.importorskip("torch")
    from conftest import make_checkpoint, write_dev

    ckpt = make_checkpoint(tmp_path / "ckpt", cell="lstm")
    dev = write_dev(tmp_path / "dev.tsv")
    result = CliRunner().invoke(
        cli, ["export", str(ckpt), "--out", str(tmp_path / "b"), "--int8", "--dev", str(dev), "--min-agreement", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "model.int8.onnx" in result.output and "int8 size ratio" in result.output
    result = CliRunner().invoke(cli, ["export", str(ckpt), "--out", str(tmp_path / "c"), "--int8"])
    assert result.exit_code == 1 and "pass --dev FILE" in result.output
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_kill_9_during_export_leaves_no_bundle(tmp_path):
    pytest.importorskip("torch")
    from conftest import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "ckpt", cell="lstm", bidirectional=True)
    out = tmp_path / "b"
    kill_9_once_written(["export", str(ckpt), "--out", str(out)], tmp_path, ".b.tmp-*/model.onnx")
    assert not out.exists()  # only the hidden temporary folder remains, and the next export removes it
    from rnnkit.toolkit.export_checkpoint import export_checkpoint

    export_checkpoint(ckpt, out, log=lambda m: None)
    assert out.is_dir() and not list(tmp_path.glob(".b.tmp-*"))


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """README set-up command 1: the embedded model exported, quantized and compared on both backends."""
    pytest.importorskip("torch")
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    table = {
        line.split()[0] + " " + line.split()[1]: line.split()[2:]
        for line in lines
        if line.startswith(("onnxruntime ", "numba "))
    }
    assert set(table) == {"onnxruntime fp32", "onnxruntime int8", "numba fp32", "numba int8"}
    assert table["numba fp32"][0] == table["onnxruntime fp32"][0]  # same dev accuracy
    assert float(table["numba fp32"][2].rstrip("%")) == 100.0  # same labels as onnxruntime fp32
    assert float(table["onnxruntime fp32"][0]) > 0.75  # the shipped model is a real one
    assert (tmp_path / "sentiment.bundle" / "model.int8.onnx").is_file()


@pytest.mark.slow
def test_train_export_predict_through_the_cli(tmp_path):
    """The user's path: rnnkit train classify -> export --int8 -> predict, on a tiny TSV."""
    pytest.importorskip("torch")
    from conftest import synthetic_texts, write_dev

    texts, labels = synthetic_texts(120, 0)
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in zip(texts, labels)))
    dev = write_dev(tmp_path / "dev.tsv")
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "train",
            "classify",
            "--train",
            str(train),
            "--dev",
            str(dev),
            "--out",
            str(tmp_path / "ckpt"),
            "--hidden",
            "8",
            "--embed",
            "8",
            "--epochs",
            "8",
            "--lr",
            "0.01",
            "--batch-size",
            "16",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best dev accuracy" in result.stdout and (tmp_path / "ckpt" / "curves.png").is_file()
    result = runner.invoke(
        cli, ["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "b"), "--int8", "--min-agreement", "0.9"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli,
        [
            "predict",
            str(tmp_path / "b"),
            "superb wonderful lovely",
            "awful boring terrible",
            "--int8",
            "--backend",
            "numba",
        ],
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == ["pos", "neg"]


@pytest.mark.slow
def test_train_tag_through_the_cli(tmp_path):
    pytest.importorskip("torch")
    from conftest import synthetic_sentences

    sentences, tags = synthetic_sentences(80, 0)
    train = tmp_path / "train.tsv"
    train.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(s, g)) + "\n" for s, g in zip(sentences, tags)))
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "tag",
            "--train",
            str(train),
            "--out",
            str(tmp_path / "ckpt"),
            "--hidden",
            "8",
            "--embed",
            "8",
            "--char-filters",
            "4",
            "--epochs",
            "2",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli, ["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "b"), "--int8", "--min-agreement", "0"]
    )
    assert result.exit_code == 0, result.output  # dev: the checkpoint's own held-out split, found on disk
    assert "task=tag" in result.stdout and "scored per token" in result.stdout
