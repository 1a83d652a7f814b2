"""The CLI guides a newcomer: fast --help, one-line errors that name the extra or the command to run,
no silent overwrite of a trained --out, readable inspect, the chosen backend and a cold numba compile
on stderr, out-of-alphabet characters flagged per input (issue 20)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import make_checkpoint, run_python, synthetic_texts

from rnnkit.toolkit.cli import cli

RUN_CLI = "from rnnkit.toolkit.cli import main; sys.argv = ['rnnkit'] + sys.argv[1:]; main()\n"
HEAVY = ("onnx", "numpy", "torch", "onnxruntime", "numba")


def _cli_process(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rnnkit.toolkit", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env or {})),
        timeout=timeout,
    )


def test_help_imports_no_runtime_and_no_heavy_package():
    code = (
        "import sys\nfrom rnnkit.toolkit.cli import cli\n"
        "for args in (['--help'], ['predict', '--help'], ['train', 'classify', '--help'], ['inspect', '--help']):\n"
        "    try:\n        cli(args, standalone_mode=False)\n    except SystemExit:\n        pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in %r}"
        " | {m for m in sys.modules if m.startswith('rnnkit.runtime')}))\n" % (HEAVY,)
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_default_training_threads_is_the_named_rule():
    from rnnkit.toolkit.configs import MAX_TRAIN_THREADS, THREADS_HELP, busy_cpus, train_threads

    assert train_threads(3) == 3 and train_threads(3, cpus=2, busy=5.0) == 3  # an explicit count is kept
    assert train_threads(0, cpus=2, busy=0.1) == 2  # idle: every core
    assert train_threads(0, cpus=2, busy=1.2) == 1  # one core busy: the other
    assert train_threads(0, cpus=2, busy=7.0) == 1  # all busy: still one
    assert train_threads(0, cpus=64, busy=0.0) == MAX_TRAIN_THREADS  # capped
    assert 1 <= train_threads(0) <= MAX_TRAIN_THREADS
    assert 0.0 <= busy_cpus(0.05) <= (os.cpu_count() or 1) + 0.5  # a reading, in CPUs
    for task in ("classify", "tag", "lm", "seq2seq"):
        text = CliRunner().invoke(cli, ["train", task, "--help"], terminal_width=1000).output
        assert " ".join(THREADS_HELP.split()) in " ".join(text.split())
    torch = pytest.importorskip("torch")
    from rnnkit.toolkit.loop import torch_settings

    with torch_settings(0):  # the rule's answer (the load average may move between two readings)
        assert 1 <= torch.get_num_threads() <= MAX_TRAIN_THREADS


@pytest.mark.parametrize(
    "args",
    [
        ["train", "classify", "--train", "x.tsv", "--out", "OUT"],
        ["export", "CKPT", "--out", "OUT"],
        ["demo", "--out", "OUT"],
    ],
    ids=lambda a: a[0],
)
def test_without_torch_one_line_names_the_extra(args, tmp_path):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    result = run_python("import sys; sys.modules['torch'] = None\n" + RUN_CLI, *args)
    command = "rnnkit " + " ".join(args[:2] if args[0] == "train" else args[:1])
    assert result.returncode == 1, result.stderr
    if args[0] == "demo" and "rnnkit-demo-mr" in result.stderr:  # the demo's checkpoint package is not installed
        assert 'pip install "rnnkit[train]"' in result.stderr
    else:
        assert result.stderr == (
            f'Error: {command} needs torch, which is not installed: pip install "rnnkit[train]" '
            f"(torch as: pip install torch==2.13.0)\n"
        )
    assert not (tmp_path / "out").exists()


def test_without_numba_the_backend_error_names_the_extra(gru_bundle):
    result = run_python(
        "import sys; sys.modules['numba'] = None\n" + RUN_CLI, "predict", str(gru_bundle), "good", "--backend", "numba"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert 'pip install "rnnkit[numba]"' in result.stderr and len(result.stderr.splitlines()) == 1


def _train_data(tmp_path: Path) -> Path:
    texts, labels = synthetic_texts(60)
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in zip(texts, labels)), encoding="utf-8")
    return path


def test_training_into_a_trained_out_needs_force(tmp_path):
    pytest.importorskip("torch")
    out = make_checkpoint(tmp_path / "ckpt")
    weights = (out / "weights.pt").read_bytes()
    train = [
        "train",
        "classify",
        "--train",
        str(_train_data(tmp_path)),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--hidden",
        "4",
        "--embed",
        "4",
    ]
    result = CliRunner().invoke(cli, train)
    assert result.exit_code == 1
    assert f"Error: {out}: holds a trained checkpoint" in result.output and "pass --force" in result.output
    assert (out / "weights.pt").read_bytes() == weights
    result = CliRunner().invoke(cli, train + ["--force", "--resume"])
    assert result.exit_code == 1 and "give one of them" in result.output
    result = CliRunner().invoke(cli, train + ["--force"])
    assert result.exit_code == 0, result.output
    assert (out / "weights.pt").read_bytes() != weights


def test_an_interrupted_run_names_resume_and_force(tmp_path):
    pytest.importorskip("torch")
    out = make_checkpoint(tmp_path / "ckpt")
    (out / "resume").mkdir()
    (out / "resume" / "state.pt").write_bytes(b"x")  # only its presence is read without --resume
    result = CliRunner().invoke(cli, ["train", "classify", "--train", str(_train_data(tmp_path)), "--out", str(out)])
    assert result.exit_code == 1
    assert "holds an interrupted training run" in result.output
    assert "--resume" in result.output and "--force" in result.output


def test_predict_on_a_checkpoint_names_export(tmp_path):
    pytest.importorskip("torch")
    ckpt = make_checkpoint(tmp_path / "ckpt")
    for command in (["predict", str(ckpt), "hi"], ["inspect", str(ckpt)]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1
        assert "is a training checkpoint" in result.output
        assert f"`rnnkit export {ckpt} --out BUNDLE`, then `rnnkit predict BUNDLE ...`" in result.output


def test_a_bundle_of_another_command_names_that_command(gru_bundle):
    from rnnkit.runtime.errors import InputError
    from rnnkit.toolkit.predict import refuse_other_command

    result = CliRunner().invoke(cli, ["generate", str(gru_bundle), "--prompt", "hi"])
    assert result.exit_code == 1
    assert (
        f"is a classifier bundle, which `rnnkit generate` does not run; use `rnnkit predict {gru_bundle} TEXT`"
        in result.output
    )
    lm = SimpleNamespace(task="lm", noun="a language-model", verb="generate", bundle=SimpleNamespace(path="lm.bundle"))
    with pytest.raises(
        InputError, match=re.escape("use `rnnkit generate lm.bundle --prompt TEXT` (in Python, use generate())")
    ):
        refuse_other_command(lm, "predict")


def test_inspect_prints_aligned_lines_not_python_dicts(gru_bundle):
    result = CliRunner().invoke(cli, ["inspect", str(gru_bundle)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert not re.search(r"[{}\[\]]|'[^'\s]*'", text.replace(str(gru_bundle), "")), text  # no dict, list, repr
    parity = [line for line in text.splitlines() if "vs torch" in line]
    assert {line.split()[5] for line in parity} == {"onnxruntime", "numba"}
    # the columns line up: each value starts where the others do
    assert len({line.index(line.split()[7]) for line in parity}) == 1
    manifest = json.loads(CliRunner().invoke(cli, ["inspect", str(gru_bundle), "--json"]).output)
    assert manifest["validation"]["fp32"]["cases"] > 0


def test_the_backend_auto_chose_is_on_stderr_not_in_the_results(gru_bundle):
    result = _cli_process("predict", str(gru_bundle), "good film")
    assert result.returncode == 0, result.stderr
    from importlib.metadata import version

    assert f"backend: onnxruntime {version('onnxruntime')} (auto)" in result.stderr.splitlines()
    assert json.loads(result.stdout)["text"] == "good film"


def test_out_of_alphabet_characters_are_flagged_per_input(caplog, tmp_path):
    from rnnkit.runtime.builtin import find

    if find("g2p-cmudict") is None:
        pytest.skip("the rnnkit-g2p-cmudict package is not installed")
    from rnnkit.runtime import load
    from rnnkit.toolkit.predict import finish, write_predictions

    model = load("g2p-cmudict", backend="onnxruntime", threads=1)
    lines = [t.to_dict() for t in model.run_batch(["héllo", "abc3", "cat"], beam=1)]
    assert [line.get("unknown") for line in lines] == [["é"], ["3"], None]
    rows = [(f"argument {i}", text, None) for i, text in enumerate(["cat 9", "dog"])]
    with caplog.at_level(logging.WARNING, logger="rnnkit"):
        report = write_predictions(model, rows, tmp_path / "out.jsonl", 8, show_progress=False, beam=1)
        finish(report, None, summary=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 1 of 2 inputs have characters")
    assert "' '" in warnings[0] and "'9'" in warnings[0]


def test_a_cold_numba_compile_is_announced_once_and_can_be_silenced(caplog):
    numba = pytest.importorskip("numba")
    from rnnkit.runtime.numba_backend import compile_notice

    def fresh():  # a kernel no cache holds: each call of numba.njit on a new function compiles it
        return numba.njit(lambda x: x + 1)

    with caplog.at_level(logging.INFO, logger="rnnkit"):
        with compile_notice.watch("test-model-a"):
            fresh()(1)
            fresh()(2)
        with compile_notice.watch("test-model-a"):
            fresh()(3)
        warm = fresh()
        warm(4)
        with compile_notice.watch("test-model-b"):
            warm(5)  # already compiled: nothing to announce
        logging.getLogger("rnnkit.numba").setLevel(logging.ERROR)
        try:
            with compile_notice.watch("test-model-c"):
                fresh()(6)
        finally:
            logging.getLogger("rnnkit.numba").setLevel(logging.NOTSET)
    notices = [r.getMessage() for r in caplog.records if r.name == "rnnkit.numba"]
    assert notices == [compile_notice.message("test-model-a")]
    assert notices[0].startswith("compiling numba kernels for this model (once, ~")
    assert "`rnnkit warmup test-model-a` does it ahead" in notices[0]


@pytest.mark.slow
def test_cold_numba_predict_prints_the_notice_then_a_cached_one_does_not(gru_bundle, tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}  # (this process set it: RNNKIT_CACHE_DIR would be ignored)
    args = ["predict", str(gru_bundle), "good film", "--backend", "numba"]
    cold, warm = _cli_process(*args, env=env), _cli_process(*args, env=env)
    assert cold.returncode == 0 and warm.returncode == 0, cold.stderr + warm.stderr
    notice = "compiling numba kernels for this model (once, ~"
    assert [line for line in cold.stderr.splitlines() if line.startswith(notice)] == [
        f"compiling numba kernels for this model (once, ~5-20 s; `rnnkit warmup {gru_bundle}` does it ahead)"
    ]
    assert notice not in warm.stderr and cold.stdout == warm.stdout


def test_export_form_flags_match_the_exporters_constants():
    """cli.py writes the choices and defaults of rnnkit.export.forms out (so --help imports no onnx)."""
    from rnnkit.export import forms
    from rnnkit.toolkit.cli import cli

    params = {p.name: p for p in cli.commands["export"].params}
    assert list(params["graph_form"].type.choices) == list(forms.GRAPH_FORMS)
    assert params["graph_form"].default == forms.DEFAULT_GRAPH_FORM
    assert list(params["int8_format"].type.choices) == list(forms.INT8_FORMATS)
    assert params["int8_format"].default == forms.DEFAULT_INT8_FORMAT


def test_inspect_names_each_graph_files_form_and_runtimes():
    from rnnkit.toolkit.summary import _graph_file

    record = {
        "form": "onnxruntime",
        "precision": "int8",
        "ops": {"ai.onnx": ["Gather"], "com.microsoft": ["X"]},
        "validated_on": {"onnxruntime": "1.32.0", "numba": "0.68.1"},
    }
    assert _graph_file(record) == (
        "onnxruntime int8 (+com.microsoft ops), validated on onnxruntime 1.32.0, numba 0.68.1"
    )
    assert _graph_file(None) == ""  # a bundle written before the record: nothing to say
