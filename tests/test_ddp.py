"""`rnnkit train --nproc N` (toolkit.ddp): N local processes under DistributedDataParallel (gloo).

The exact condition checked: every rank's mean loss is weighted by N * n_r / n before DDP averages
the gradients, so the averaged gradient is the gradient of the whole batch's mean loss (here with
shards of 8 and 7 examples); with dropout 0 the 2-process run's weights after one epoch are then the
1-process run's up to float rounding of the sums (FP32 tolerance)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import synthetic_texts, write_dev

from rnnkit.runtime.tolerance import FP32

torch = pytest.importorskip("torch")

from rnnkit.toolkit.cli import cli  # noqa: E402
from rnnkit.toolkit.configs import TrainConfig  # noqa: E402
from rnnkit.toolkit.resume import run_identity  # noqa: E402

TINY = ["--embed", "8", "--hidden", "8", "--dropout", "0", "--epochs", "1", "--threads", "1", "--unidirectional"]


@pytest.mark.slow  # spawns two interpreters that import torch (~6 s)
def test_two_processes_follow_one_process_and_write_one_checkpoint(tmp_path):
    texts, labels = synthetic_texts(90, 0)
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in zip(texts, labels)), encoding="utf-8")
    dev = write_dev(tmp_path / "dev.tsv")
    common = ["train", "classify", "--train", str(train), "--dev", str(dev), *TINY, "--batch-size", "15"]
    one = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    two = CliRunner().invoke(cli, [*common, "--nproc", "2", "--out", str(tmp_path / "two")])
    assert two.exit_code == 0, two.output
    a, b = torch.load(tmp_path / "one" / "weights.pt"), torch.load(tmp_path / "two" / "weights.pt")
    for name in a:
        assert FP32.close(b[name].numpy(), a[name].numpy()), (name, FP32.worst(b[name].numpy(), a[name].numpy()))
    training = json.loads((tmp_path / "two" / "config.json").read_text())["training"]
    assert training["processes"] == 2 and "in_progress" not in training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.tsv", "one", "train.tsv", "two"]  # no leftovers
    assert not (tmp_path / "two" / "resume").exists()


def test_the_process_count_is_part_of_a_run_only_when_above_one():
    # a run interrupted before --nproc existed resumes: one process adds nothing to its identity
    assert "nproc" not in run_identity("classify", TrainConfig(), "d")["options"]
    assert run_identity("classify", TrainConfig(nproc=2), "d")["options"]["nproc"] == 2
