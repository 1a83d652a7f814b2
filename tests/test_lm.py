"""Language models: the streaming state contract, decoding on both backends, bad input, training and CLI."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from conftest import LM_TEXT, edit_manifest, make_lm_checkpoint, run_python

from rnnkit.runtime import InputError, load
from rnnkit.runtime.generate import Sampling, choose, distribution
from rnnkit.runtime.manifest import LanguageModelIO as IO
from rnnkit.runtime.tolerance import FP32

CELLS_LAYERS = [(c, n) for c in ("rnn", "lstm", "gru") for n in (1, 2)]
BACKENDS = ("onnxruntime", "numba")


def random_text(rng, vocab, n) -> str:
    return "".join(rng.choice(vocab, size=n))


def random_chunks(rng, text: str) -> list[str]:
    cuts = sorted(set(rng.integers(0, len(text) + 1, size=rng.integers(0, 6)).tolist()))
    bounds = [0] + cuts + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]  # may hold empty chunks: they must be no-ops


@pytest.mark.slow
@pytest.mark.parametrize("cell,layers", CELLS_LAYERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_streaming_equals_whole_text(lm_bundles, cell, layers, backend):
    """Property: any chunking of any text gives the whole-text logits and state (NaN-filled buffer:
    every position must be written exactly once)."""
    model = load(lm_bundles(cell, layers), backend=backend)
    vocab = model.tokenizer.vocab[2:]
    rng = np.random.default_rng(hash((cell, layers)) % 2**32)
    for trial in range(6):
        text = random_text(rng, vocab, int(rng.integers(1, 90)))
        whole = model.spawn_state()
        expected = whole.run(text)
        for _ in range(4):
            state, got, at = model.spawn_state(), np.full_like(expected, np.nan), 0
            for chunk in random_chunks(rng, text):
                out = state.run(chunk)
                got[at : at + len(out)] = out
                at += len(out)
            assert at == len(text) and np.all(np.isfinite(got))
            assert FP32.close(got, expected), FP32.worst(got, expected)
            for name in model.state_inputs:
                assert FP32.close(state.values[name], whole.values[name])
            assert state.tokens == whole.tokens == len(text)


@pytest.mark.slow
@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 1)])
def test_graph_matches_torch_step_by_step(lm_bundles, tmp_path, cell, layers):
    """The runtime's carried state equals torch carrying its own state, one token at a time."""
    import torch

    from rnnkit.toolkit.train_lm import load_lm_checkpoint

    ckpt = load_lm_checkpoint(make_lm_checkpoint(tmp_path / "c", cell, layers, seed=layers))
    model = load(lm_bundles(cell, layers), backend="numba")
    ids = ckpt.tokenizer.encode(LM_TEXT[:40])
    state, torch_state = model.spawn_state(), None
    for i in ids:
        got = state.run([i])
        with torch.no_grad():
            ref, torch_state = ckpt.model(torch.tensor([[i]]), None, torch_state)
        assert FP32.close(got, ref[0].numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_ragged_batch_rows_do_not_leak(lm_bundles, backend):
    """A NaN state in one row and zero padding after short rows change nothing in the other rows."""
    model = load(lm_bundles("lstm", 2), backend=backend)
    rng = np.random.default_rng(0)
    lens = np.array([9, 3, 6], np.int32)
    ids = rng.integers(2, model.vocab_size, size=(3, 9)).astype(np.int64)
    ids[np.arange(9)[None, :] >= lens[:, None]] = 0
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in model.initial_state(3).items()}
    for v in state.values():
        v[:, 2] = np.nan  # row 2 is poisoned
    logits, final = model.step(ids, state, lens)
    assert np.all(logits[0][np.arange(9) >= 9] == 0) and np.all(logits[1, 3:] == 0)
    for row in (0, 1):
        alone, alone_state = model.step(
            ids[row : row + 1, : lens[row]], {k: v[:, row : row + 1] for k, v in state.items()}
        )
        assert np.all(np.isfinite(logits[row])) and FP32.close(logits[row, : lens[row]], alone[0])
        for k in final:
            assert FP32.close(final[k][:, row : row + 1], alone_state[k])


def test_reset_really_resets_and_copy_forks(lm_bundles):
    model = load(lm_bundles("gru", 2))
    fresh = model.spawn_state().run("the cat")
    state = model.spawn_state()
    state.run("a dog ran to the log")
    fork = state.copy()
    state.reset()
    assert state.tokens == 0 and state.last_logits is None
    assert all(np.all(v == 0) for v in state.values.values())
    np.testing.assert_array_equal(state.run("the cat"), fresh)
    before = {k: v.copy() for k, v in fork.values.items()}
    state.run("more data")  # running one never moves the other
    assert all(np.array_equal(fork.values[k], before[k]) for k in before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_feed_id_is_run_of_one_id(lm_bundles, backend):
    """feed_id (the generation step, a leaner path) = run([id])[0]: logits, state, counters, checks."""
    model = load(lm_bundles("lstm", 2), backend=backend)
    a, b = model.spawn_state(), model.spawn_state()
    ids = model.encode_chunk("the cat sat")
    for i in ids[:-1]:
        a.run([i])
        b.feed_id(np.int64(i) if i % 2 else i)  # numpy integers are ids too
    out_a, out_b = a.run([ids[-1]])[0], b.feed_id(ids[-1])
    np.testing.assert_array_equal(out_b, out_a)
    assert out_b.shape == (model.vocab_size,) and b.tokens == a.tokens == len(ids)
    for name in model.state_inputs:
        np.testing.assert_array_equal(b.values[name], a.values[name])
    out_b[:] = 0  # the caller's array is the caller's
    np.testing.assert_array_equal(b.last_logits, out_a)
    for bad in (True, -1, model.vocab_size, 2.0, "a"):
        with pytest.raises(InputError, match="not an id of this model's vocabulary"):
            b.feed_id(bad)
    assert b.tokens == len(ids)  # a refused id feeds nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_states_never_interfere_across_threads(lm_bundles, backend):
    model = load(lm_bundles("lstm", 1), backend=backend)
    vocab = model.tokenizer.vocab[2:]
    rng = np.random.default_rng(5)
    texts = [random_text(rng, vocab, 60) for _ in range(6)]
    expected = [model.spawn_state().run(t) for t in texts]
    results: list = [None] * len(texts)

    def work(i):
        state, parts = model.spawn_state(), []
        for chunk in random_chunks(np.random.default_rng(i), texts[i]):
            parts.append(state.run(chunk))
        results[i] = np.concatenate(parts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, atol=FP32.atol, rtol=FP32.rtol)


@pytest.mark.slow
@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 1), ("rnn", 2)])
def test_backends_give_identical_tokens(lm_bundles, cell, layers):
    """Greedy and seeded sampling: the same tokens on onnxruntime and numba (fp32)."""
    models = [load(lm_bundles(cell, layers), backend=b) for b in BACKENDS]
    for options in (
        dict(temperature=0),
        dict(temperature=1.0, seed=7),
        dict(temperature=0.8, top_k=5, seed=1),
        dict(temperature=1.3, top_p=0.9, seed=123),
    ):
        outs = [list(m.generate("the ", 80, **options)) for m in models]
        assert outs[0] == outs[1], options
        assert len(outs[0]) == 80


def test_seeded_sampling_repeats_and_seeds_differ(lm_bundles):
    model = load(lm_bundles("lstm", 1))
    a = model.generate_text("the", 60, temperature=1.0, seed=3)
    assert a == model.generate_text("the", 60, temperature=1.0, seed=3)
    assert a != model.generate_text("the", 60, temperature=1.0, seed=4)


def test_generate_continues_a_state_and_equals_text_prompt(lm_bundles):
    model = load(lm_bundles("gru", 1))
    state = model.spawn_state()
    state.run("the c")
    state.run("at")
    assert model.generate_text(state, 30, temperature=0) == model.generate_text("the cat", 30, temperature=0)
    assert state.tokens == len("the cat") + 30


def test_sampling_filters():
    logits = np.array([9.0, 9.0, 3.0, 2.0, 1.0, 0.5, -1.0])  # ids 0, 1 are <pad>, <unk>: never chosen
    p = distribution(logits, Sampling(1.0, 0, 1.0))
    assert p[0] == p[1] == 0 and abs(p.sum() - 1) < 1e-12
    assert np.count_nonzero(distribution(logits, Sampling(1.0, 2, 1.0))) == 2
    top_p = distribution(logits, Sampling(1.0, 0, 0.5))
    assert np.flatnonzero(top_p).tolist() == [2]  # the most likely alone already reaches 0.5
    sharp, flat = distribution(logits, Sampling(0.1, 0, 1.0)), distribution(logits, Sampling(10.0, 0, 1.0))
    assert sharp[2] > p[2] > flat[2]
    assert choose(logits, Sampling(0, 0, 1.0), None) == 2  # greedy skips <pad>/<unk>
    rng = np.random.default_rng(0)
    draws = [choose(logits, Sampling(1.0, 0, 1.0), rng) for _ in range(2000)]
    assert abs(np.mean(np.array(draws) == 2) - p[2]) < 0.04


def test_bad_generation_arguments_are_refused_or_defined(lm_bundles):
    model = load(lm_bundles("lstm", 1))
    assert list(model.generate("the", 0)) == []  # max_tokens 0: nothing, not an error
    assert model.generate_text("the", 20, temperature=0) == model.generate_text("the", 20, temperature=0, top_k=3)
    cases = {
        "prompt is empty": dict(prompt=""),
        "max_tokens must be": dict(max_tokens=-1),
        "more than the limit": dict(max_tokens=10**9),
        "temperature must be": dict(temperature=-0.5),
        "top_p must be in (0, 1]": dict(top_p=0.0),
        "top_k must be": dict(top_k=-1),
        "seed must be": dict(seed=-3),
        "stop must be": dict(stop=[""]),
    }
    for message, bad in cases.items():
        args = dict(prompt="the", max_tokens=5) | bad
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
            model.generate(args.pop("prompt"), args.pop("max_tokens"), **args)
    with pytest.raises(InputError, match="top_p must be"):
        model.generate("the", 5, top_p=1.5)
    with pytest.raises(InputError, match=r"'é' \(U\+00E9\) are not in this model's vocabulary"):
        model.generate("café", 5)
    with pytest.raises(InputError, match="not an id"):
        model.spawn_state().run([2, 10**6])
    assert model.spawn_state().run("").shape == (0, model.vocab_size)


def test_stop_strings(lm_bundles):
    model = load(lm_bundles("lstm", 1))
    full = model.generate_text("the", 200, temperature=0)
    stop = full[10:12]
    text = model.generate_text("the", 200, temperature=0, stop=stop)
    assert text.endswith(stop) and full.startswith(text) and stop not in text[:-1]


def test_score_and_next_tokens(lm_bundles):
    model = load(lm_bundles("gru", 2))
    s = model.score("the cat")
    assert s["tokens"] == list("the cat") and len(s["logprobs"]) == 6
    logits = model.spawn_state().run("the ca")
    lp = logits[-1].astype(np.float64) - np.log(np.exp(logits[-1].astype(np.float64)).sum())
    assert abs(s["logprobs"][-1] - lp[model.tokenizer.token_id("t")]) < 1e-9
    assert abs(s["perplexity"] - np.exp(s["loss"])) < 1e-9
    top = model.next_tokens("the ca", 4)
    assert len(top) == 4 and [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert all(t not in ("<pad>", "<unk>") for t, _ in top)
    with pytest.raises(InputError, match="at least 2 tokens"):
        model.score("t")
    with pytest.raises(InputError, match="k must be"):
        model.next_tokens("the", 0)


def test_manifest_records_the_state_contract(lm_bundles):
    from rnnkit.runtime import open_bundle

    b = open_bundle(lm_bundles("lstm", 2))
    assert b.manifest["state"] == [
        {"input": IO.initial_h, "output": IO.final_h, "dtype": "float32", "shape": [2, "batch", 7], "initial": "zeros"},
        {"input": IO.initial_c, "output": IO.final_c, "dtype": "float32", "shape": [2, "batch", 7], "initial": "zeros"},
    ]
    names = [d["name"] for d in b.manifest["graph"]["outputs"]]
    assert names == [IO.logits, IO.final_h, IO.final_c]
    dev = b.manifest["validation"]["dev"]
    assert dev["level"] == "char" and "int8_loss_delta" in dev and "fp32_loss" in dev


def test_tampered_state_contract_is_refused(lm_bundles, tmp_path):
    import shutil

    from rnnkit.runtime import BundleError, open_bundle

    copy = tmp_path / "b"
    shutil.copytree(lm_bundles("gru", 1), copy)
    edit_manifest(copy, lambda m: m["state"][0].update(shape=[3, "batch", 7]))  # re-sealed: the deeper check
    with pytest.raises(BundleError, match="'state'"):
        open_bundle(copy)


@pytest.mark.slow
def test_int8_lm_runs_on_both_backends(lm_bundles):
    for backend in BACKENDS:
        model = load(lm_bundles("lstm", 2), backend=backend, int8=True)
        assert len(list(model.generate("the", 20, temperature=0))) == 20


def test_word_level_lm(lm_bundles):
    model = load(lm_bundles("lstm", 1, "word"))
    assert model.token_separator == " "
    tokens = list(model.generate("the cat", 6, temperature=0))
    assert len(tokens) == 6 and all(t in model.tokenizer.vocab for t in tokens)
    model.spawn_state().run("the zebra sat")  # unknown words read as <unk>, as in training


@pytest.mark.slow
def test_runtime_generate_never_imports_torch(lm_bundles):
    out = run_python(
        "import sys, json\nfrom rnnkit.runtime import load\n"
        "m = load(sys.argv[1], backend='numba')\nprint(m.generate_text('the', 5, seed=1))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n",
        str(lm_bundles("gru", 1)),
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_train_lm_export_generate_cli(tmp_path):
    from click.testing import CliRunner

    from rnnkit.toolkit.cli import cli

    text = tmp_path / "t.txt"
    text.write_text(LM_TEXT * 40, encoding="utf-8")
    runner = CliRunner()
    r = runner.invoke(
        cli,
        [
            "train",
            "lm",
            "--train",
            str(text),
            "--out",
            str(tmp_path / "ckpt"),
            "--hidden",
            "16",
            "--embed",
            "8",
            "--layers",
            "1",
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--bptt",
            "16",
            "--threads",
            "1",
            "--cell",
            "gru",
            "--lr",
            "0.01",
        ],
    )
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    history = meta["training"]["history"]
    assert history[-1]["dev_loss"] < history[0]["dev_loss"] and (tmp_path / "ckpt" / "curves.png").is_file()
    r = runner.invoke(
        cli, ["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "b"), "--int8", "--min-agreement", "0"]
    )
    assert r.exit_code == 0, r.output
    assert "int8_loss_delta" in r.output
    r = runner.invoke(
        cli,
        [
            "generate",
            str(tmp_path / "b"),
            "--prompt",
            "the ",
            "--max-tokens",
            "30",
            "--seed",
            "1",
            "--backend",
            "numba",
        ],
    )
    assert r.exit_code == 0 and r.output.startswith("the ") and len(r.output) == 4 + 30 + 1, r.output
    r = runner.invoke(cli, ["generate", str(tmp_path / "b"), "--prompt", ""])
    assert r.exit_code == 1 and "Error: generate(): the prompt is empty" in r.output
    for flag, value in (("--top-p", "1.5"), ("--temperature", "-1"), ("--max-tokens", "-2")):
        r = runner.invoke(cli, ["generate", str(tmp_path / "b"), "--prompt", "the", flag, value])
        assert r.exit_code == 2 and f"Invalid value for '{flag}'" in r.output
    r = runner.invoke(cli, ["predict", str(tmp_path / "b"), "the cat"])
    assert r.exit_code == 1 and "use generate()" in r.output


def test_generate_help():
    from click.testing import CliRunner

    from rnnkit.toolkit.cli import cli

    for args in (["generate", "--help"], ["train", "lm", "--help"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0 and "--" in r.output


def test_every_cell_is_in_the_streaming_matrix():
    from rnnkit.toolkit.configs import CELL_TYPES

    assert {c for c, _ in CELLS_LAYERS} == set(CELL_TYPES) and {n for _, n in CELLS_LAYERS} == {1, 2}


def test_int8_lm_graph_structure(lm_bundles):
    import onnx

    from rnnkit.runtime import open_bundle

    b = open_bundle(lm_bundles("lstm", 2))
    nodes = b.graph(int8=True).graph.node
    lstm = [n for n in nodes if n.op_type == "DynamicQuantizeLSTM"]
    assert len(lstm) == 2 and all(n.input[5] and n.input[6] for n in lstm)  # reads initial_h and initial_c
    assert not any(n.op_type == "LSTM" for n in nodes)
    assert b.manifest["validation"]["int8"]["lengths"] == [1, 7, 33]
    assert isinstance(b.graph(int8=True), onnx.ModelProto)


@pytest.mark.slow
def test_int8_export_fails_on_dev_loss_gate(tmp_path):
    from rnnkit.runtime import ParityError
    from rnnkit.toolkit.export_checkpoint import DevSet, export_checkpoint

    ckpt = make_lm_checkpoint(tmp_path / "c", "gru", 1)
    with pytest.raises(ParityError, match="more than max_loss_delta -1"):
        export_checkpoint(
            ckpt,
            tmp_path / "b",
            int8=True,
            dev=DevSet([LM_TEXT * 3], None, "lm"),
            max_loss_delta=-1,
            log=lambda m: None,
        )
    assert not (tmp_path / "b").exists()


def test_char_tokenizer_round_trip_and_validation():
    from rnnkit.runtime import BundleError
    from rnnkit.runtime.tokenizer import CharTokenizer, tokenizer_from_dict

    tok = CharTokenizer.build(["Héllo, wörld!\n"])
    assert tok.decode(tok.encode("wörld\n")) == "wörld\n"
    assert tok.encode("e\u0301") == tok.encode("é")  # NFC: one character either way
    assert tok.unknown("Hallo?") == ["a", "?"] and tok.encode("?") == [1]
    again = tokenizer_from_dict(tok.to_dict())
    assert isinstance(again, CharTokenizer) and again.vocab == tok.vocab
    with pytest.raises(BundleError, match="longer than one character"):
        CharTokenizer.from_dict({**tok.to_dict(), "vocab": tok.vocab + ["ab"]})
    with pytest.raises(BundleError, match="'tokenizer.level' is 'byte'"):
        tokenizer_from_dict({**tok.to_dict(), "level": "byte"})


def test_state_of_another_model_is_refused(lm_bundles):
    a, b = load(lm_bundles("gru", 1)), load(lm_bundles("gru", 1))
    state = a.spawn_state()
    state.run("the")
    with pytest.raises(InputError, match="spawned by another model"):
        b.next_tokens(state, 3)


@pytest.mark.slow
def test_cosine_schedule_decays_to_a_tenth(tmp_path):
    pytest.importorskip("torch")
    from rnnkit.toolkit.configs import LMTrainConfig
    from rnnkit.toolkit.loop import cosine_factor
    from rnnkit.toolkit.train_lm import train_lm

    assert cosine_factor(0.0) == pytest.approx(1.0) and cosine_factor(1.0) == pytest.approx(0.1)
    assert cosine_factor(0.5) == pytest.approx(0.55)
    steps = [cosine_factor(i / 20) for i in range(21)]
    assert all(a > b for a, b in zip(steps, steps[1:]))
    with pytest.raises(InputError, match="lr_schedule must be one of"):
        LMTrainConfig(lr_schedule="linear")
    text = tmp_path / "t.txt"
    text.write_text(LM_TEXT * 4, encoding="utf-8")
    config = dict(level="char", layers=1, hidden=8, embed=4, epochs=3, batch_size=2, bptt=16, lr=1e-2, threads=1)
    cos = train_lm(text, tmp_path / "cos", LMTrainConfig(lr_schedule="cosine", **config))
    const = train_lm(text, tmp_path / "const", LMTrainConfig(**config))
    lrs = [r["lr"] for r in cos.history]
    assert lrs[0] < 1e-2 and lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2e-2
    assert {r["lr"] for r in const.history} == {1e-2}
