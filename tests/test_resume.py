"""Kills and restarts: a training run killed (SIGKILL) in its last epoch and continued with
``rnnkit train <task> --resume`` ends with the uninterrupted run's checkpoint, weights bit for bit
and the same training record (timings aside).  The killed run is a real ``rnnkit train``
process that kills itself right after the first optimizer step of epoch ``kill_at`` (or, with
``final``, as it starts writing the final checkpoint)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from conftest import synthetic_sentences, synthetic_texts  # noqa: E402

from rnnkit.toolkit.cli import cli  # noqa: E402

KILLER = """
import os, signal, sys
from rnnkit.toolkit import checkpoint, loop
kill_at = f"epoch {os.environ['KILL_AT']}/"
write = checkpoint.write_checkpoint

def patched_write(*args, resume=None, **kwargs):   # (save_checkpoint's, the classifier's writer)
    if resume is None and kill_at == "epoch final/":
        os.kill(os.getpid(), signal.SIGKILL)
    return write(*args, resume=resume, **kwargs)

checkpoint.write_checkpoint = patched_write
init, update = loop.Progress.__init__, loop.Progress.update

def patched_init(self, enabled, length, label):
    init(self, enabled, length, label)
    self.label = label

def patched_update(self, loss):      # called after each batch's optimizer step
    update(self, loss)
    if self.label.startswith(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)

loop.Progress.__init__, loop.Progress.update = patched_init, patched_update
from rnnkit.toolkit.cli import cli
cli(sys.argv[1:], prog_name="rnnkit")
"""

pytestmark = pytest.mark.slow  # subprocesses, compiles or many exports: not in the fast subset

LM_TEXT = (
    "the cat sat on the mat. the dog ran to the cat. a bird sang in the tree and the cat "
    "looked up. the mat was red and the tree was green. "
)
G2P = {"a": "AH", "b": "B", "c": "K", "d": "D", "e": "EH", "o": "OW", "x": "K S"}


def classify_data(tmp_path):
    texts, labels = synthetic_texts(160, 0)
    path = tmp_path / "train.jsonl"
    path.write_text(
        "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)), encoding="utf-8"
    )
    return [
        "classify",
        "--train",
        str(path),
        "--cell",
        "gru",
        "--embed",
        "8",
        "--hidden",
        "8",
        "--batch-size",
        "16",
        "--lr",
        "0.02",
        "--dropout",
        "0.2",
        "--word-dropout",
        "0.1",
        "--threads",
        "1",
    ]


def tag_data(tmp_path):
    sentences, tags = synthetic_sentences(120, 0)
    path = tmp_path / "train.tsv"
    path.write_text(
        "".join("".join(f"{w}\t{t}\n" for w, t in zip(s, ts)) + "\n" for s, ts in zip(sentences, tags)),
        encoding="utf-8",
    )
    return [
        "tag",
        "--train",
        str(path),
        "--cell",
        "lstm",
        "--embed",
        "8",
        "--hidden",
        "8",
        "--char-embed",
        "4",
        "--char-filters",
        "4",
        "--batch-size",
        "16",
        "--lr",
        "0.02",
        "--word-dropout",
        "0.1",
        "--threads",
        "1",
    ]


def lm_data(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(LM_TEXT * 8, encoding="utf-8")
    return [
        "lm",
        "--train",
        str(path),
        "--cell",
        "lstm",
        "--layers",
        "1",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--batch-size",
        "4",
        "--bptt",
        "16",
        "--lr",
        "0.01",
        "--dropout",
        "0.2",
        "--lr-schedule",
        "cosine",
        "--threads",
        "1",
    ]


def seq2seq_data(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    words = sorted({"".join(rng.choice(list(G2P), size=int(rng.integers(2, 6)))) for _ in range(120)})
    path = tmp_path / "train.tsv"
    path.write_text("".join(f"{w}\t{' '.join(G2P[c] for c in w)}\n" for w in words), encoding="utf-8")
    return [
        "seq2seq",
        "--train",
        str(path),
        "--format",
        "tsv",
        "--cell",
        "gru",
        "--layers",
        "1",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--batch-size",
        "16",
        "--lr",
        "0.01",
        "--dropout",
        "0.1",
        "--teacher-forcing",
        "0.8",
        "--dev-split",
        "0.2",
        "--threads",
        "1",
    ]  # scheduled sampling: torch.rand in every step


DATA = {"classify": classify_data, "tag": tag_data, "lm": lm_data, "seq2seq": seq2seq_data}


def train(args: list[str]):
    return CliRunner().invoke(cli, ["train", *args])


def train_killed(args: list[str], kill_at: int | str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILL_AT=str(kill_at))
    return subprocess.run(
        [sys.executable, "-c", KILLER, "train", *args], capture_output=True, text=True, timeout=300, env=env
    )


def record(out) -> dict:
    """config.json without what depends on the clock."""
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    meta["training"].pop("time_s")
    for h in meta["training"]["history"]:
        h.pop("seconds")
    return meta


def assert_same_checkpoint(a, b):
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert not (b / "resume").exists()
    wa, wb = (torch.load(p / "weights.pt", weights_only=True) for p in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    digest = [hashlib.sha256((p / "weights.pt").read_bytes()).hexdigest() for p in (a, b)]
    assert digest[0] == digest[1]
    assert record(a) == record(b)
    assert (a / "gradients.jsonl").read_text() == (b / "gradients.jsonl").read_text()


@pytest.mark.parametrize(
    "task,epochs,kill_at,resume_epochs",
    [
        ("classify", 4, 4, 4),  # killed in its last epoch
        ("classify", 2, 2, 4),  # killed in its last epoch, resumed for more (constant learning rate)
        ("classify", 3, "final", 3),  # all epochs done, killed writing the final checkpoint
        ("tag", 3, 3, 3),  # char CNN features, per-word dropout probabilities
        ("lm", 3, 3, 3),  # batches in order, recurrent state carried window to window; cosine
        ("seq2seq", 3, 3, 3),  # scheduled sampling, dev decoding, cosine
    ],
)
def test_killed_and_resumed_equals_uninterrupted(tmp_path, task, epochs, kill_at, resume_epochs):
    args = DATA[task](tmp_path)
    done = epochs if kill_at == "final" else kill_at - 1
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = train([*args, "--out", str(whole), "--epochs", str(resume_epochs)])
    assert r.exit_code == 0, r.output

    killed = train_killed([*args, "--out", str(cut), "--epochs", str(epochs)], kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # what a kill leaves: a usable checkpoint of the best epoch so far, and the state to go on from
    meta = json.loads((cut / "config.json").read_text(encoding="utf-8"))
    assert meta["training"]["in_progress"] is True and meta["training"]["epochs_run"] == done
    assert (cut / "resume" / "state.pt").is_file() and (cut / "weights.pt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cut.")]  # no stray temporary folder

    r = train([*args, "--out", str(cut), "--epochs", str(epochs)])
    assert (
        r.exit_code == 1
        and f"holds an interrupted training run ({done} of {epochs} epochs done); continue it with --resume" in r.output
    ), r.output
    r = train([*args, "--out", str(cut), "--epochs", str(resume_epochs), "--resume"])
    assert r.exit_code == 0, r.output
    assert f"resuming after epoch {done}/{resume_epochs}" in r.output
    assert_same_checkpoint(whole, cut)

    r = train([*args, "--out", str(cut), "--epochs", str(resume_epochs), "--resume"])
    assert r.exit_code == 1 and "nothing to resume (no resume/state.pt: the run finished" in r.output, r.output


def test_a_killed_checkpoint_is_usable_and_resume_refuses_other_options(tmp_path):
    from rnnkit.toolkit.checkpoint import load_checkpoint

    args = DATA["classify"](tmp_path)
    out = tmp_path / "cut"
    r = train([*args, "--out", str(out), "--epochs", "4", "--resume"])
    assert r.exit_code == 1 and "nothing to resume (no resume/state.pt: the folder does not exist)" in r.output
    assert train_killed([*args, "--out", str(out), "--epochs", "4"], 3).returncode == -signal.SIGKILL
    ck = load_checkpoint(out)  # the best of epochs 1-2: export and evaluate work on it
    assert ck.meta["training"]["best_epoch"] in (1, 2) and ck.predict(["a great film"]) in (["pos"], ["neg"])

    r = train([*args[:-2], "--threads", "2", "--out", str(out), "--epochs", "4", "--lr", "0.5", "--resume"])
    assert r.exit_code == 1, r.output
    assert (
        "cannot resume the interrupted run: --lr was 0.02, now 0.5; --threads was 1, now 2 -- give the "
        "interrupted run's options (only --epochs may change)" in r.output
    )
    r = train([*args, "--out", str(out), "--epochs", "1", "--resume"])
    assert r.exit_code == 1 and "--epochs 1 but 2 epochs are done already" in r.output
    other = tmp_path / "other.jsonl"
    other.write_text((tmp_path / "train.jsonl").read_text().replace("good", "nice"))
    r = train([*args[:2], str(other), *args[3:], "--out", str(out), "--epochs", "4", "--resume"])
    assert r.exit_code == 1 and "the training or dev data differ" in r.output

    # killed between the two renames of a checkpoint write: the previous folder is kept aside, whole
    aside = tmp_path / ".cut.old-123-abcd"
    aside.mkdir()
    out.rename(aside / "ckpt")
    r = train([*args, "--out", str(out), "--epochs", "4", "--resume"])
    assert r.exit_code == 1 and f"a write interrupted by the kill left {aside / 'ckpt'}: move it to {out}" in r.output
    (aside / "ckpt").rename(out)

    (out / "resume" / "state.pt").write_bytes(b"truncated")
    r = train([*args, "--out", str(out), "--epochs", "4", "--resume"])
    assert r.exit_code == 1 and "state.pt: cannot be read" in r.output and "the resume state is corrupted" in r.output


def test_cosine_runs_resume_only_with_their_epochs(tmp_path):
    args = DATA["lm"](tmp_path)
    out = tmp_path / "cut"
    assert train_killed([*args, "--out", str(out), "--epochs", "3"], 2).returncode == -signal.SIGKILL
    r = train([*args, "--out", str(out), "--epochs", "4", "--resume"])
    assert (
        r.exit_code == 1 and "--epochs was 3, now 4: the cosine learning-rate schedule spans all epochs" in r.output
    ), r.output
