"""Encoder-decoder decoding: greedy and beam search (numpy, both backends), against a torch greedy oracle and a
fake model whose answers are known; bad input; rnnkit predict / inspect on a seq2seq bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import G2P, make_seq2seq, run_python

from rnnkit.runtime import Hypothesis, InputError, load
from rnnkit.runtime.decode import (
    MAX_OUTPUT_TOKENS,
    Steps,
    beam_search,
    greedy,
    length_penalty,
    output_limit,
    teacher_forced,
)
from rnnkit.runtime.manifest import Seq2SeqIO as IO
from rnnkit.runtime.tolerance import FP32
from rnnkit.toolkit.cli import cli

BACKENDS = ("onnxruntime", "numba")
CONFIGS = [("lstm", "dot", True), ("gru", "additive", False), ("rnn", "none", False)]
UNSEEN = ["cog", "dat", "horsefish", "b", "goose", "ox"]


# -- a fake model: known answers, state and context that matter ---------------------------------------


def fake_steps(vocab: int = 7, seed: int = 0, eos_bias: float = 0.0) -> Steps:
    """A decoder whose log-probabilities depend on the carried state (a hash of the prefix) and on the
    source (memory), so any mix-up of rows while reordering beams or dropping sources changes the
    output; pure numpy, exact."""
    table = np.random.default_rng(seed).standard_normal((97, vocab)) * 2.0
    table[:, 3] += eos_bias

    def encoder(feeds):
        ids, lens = feeds[IO.source_ids], feeds[IO.source_lens]
        h = (ids.sum(1) * 7 + lens)[None, :, None].astype(np.float32)  # (1, B, 1)
        return {
            IO.memory: ids[..., None].astype(np.float32),
            IO.keys: np.zeros(ids.shape + (1,), np.float32),
            "initial_h": h,
        }

    def decoder(feeds):  # one step or a teacher-forced chunk, like the graph
        h, memory = feeds["initial_h"][0, :, 0], feeds[IO.memory][..., 0].sum(1)
        steps = []
        for tokens in feeds[IO.input_ids].T:
            h = (h * 31 + tokens) % 9973
            z = table[((h + memory) % 97).astype(int)]
            z = z - z.max(-1, keepdims=True)
            steps.append(z - np.log(np.exp(z).sum(-1, keepdims=True)))
        return {IO.log_probs: np.stack(steps, 1).astype(np.float32), "final_h": h[None, :, None].astype(np.float32)}

    return Steps(encoder, decoder, "gru", "dot", bos_id=2, eos_id=3, vocab_size=vocab)


def random_sources(rng, n: int) -> list[list[int]]:
    return [rng.integers(1, 9, size=rng.integers(1, 6)).tolist() for _ in range(n)]


def test_beam_of_one_is_greedy():
    rng = np.random.default_rng(1)
    for seed in range(20):
        steps = fake_steps(seed=seed, eos_bias=float(rng.uniform(-1, 2)))
        sources = random_sources(rng, 6)
        limits = [output_limit(len(s)) for s in sources]
        for g, b in zip(greedy(steps, sources, limits, 0.6), beam_search(steps, sources, limits, 1, 0.6)):
            assert len(b) == 1 and (b[0].ids, b[0].finished) == (g.ids, g.finished)
            assert b[0].log_prob == g.log_prob and b[0].score == g.score


@pytest.mark.parametrize("beam", [1, 2, 4])
def test_batched_equals_one_at_a_time(beam):
    """Reordering state and context with np.take, and dropping finished sources, changes nothing."""
    rng = np.random.default_rng(beam)
    for seed in range(8):
        steps = fake_steps(seed=seed, eos_bias=1.0)
        sources = random_sources(rng, 7)
        limits = [output_limit(len(s)) for s in sources]
        together = beam_search(steps, sources, limits, beam)
        alone = [beam_search(steps, [s], [n], beam)[0] for s, n in zip(sources, limits)]
        assert [[(c.ids, c.score) for c in x] for x in together] == [[(c.ids, c.score) for c in x] for x in alone]


def test_beam_hypotheses_are_ranked_and_scored():
    steps = fake_steps(seed=3, eos_bias=1.5)
    sources = random_sources(np.random.default_rng(0), 5)
    limits = [output_limit(len(s)) for s in sources]
    for found in beam_search(steps, sources, limits, 4, alpha=0.6):
        assert 1 <= len(found) <= 4 and len({tuple(c.ids) for c in found}) == len(found)
        keys = [(not c.finished, -c.score) for c in found]
        assert keys == sorted(keys)
        for c in found:
            assert np.isclose(c.score, c.log_prob / length_penalty(len(c.ids) + c.finished, 0.6))


def test_teacher_forced_scores_equal_the_decoded_log_prob():
    steps = fake_steps(seed=4, eos_bias=1.5)
    sources = random_sources(np.random.default_rng(2), 4)
    found = greedy(steps, sources, [output_limit(len(s)) for s in sources])
    forced = teacher_forced(steps, sources, [c.ids for c in found])
    for c, lp in zip(found, forced):
        gold = c.ids + [3] * c.finished
        assert np.isclose(lp[np.arange(len(gold)), gold].astype(np.float64).sum(), c.log_prob, atol=1e-4)


def test_no_endless_decode_and_immediate_end():
    never_ends = fake_steps(eos_bias=-1e4)
    sources = [[1], [2, 3, 4]]
    for out in (greedy(never_ends, sources, [12, 16]), [b[0] for b in beam_search(never_ends, sources, [12, 16], 3)]):
        assert [len(c.ids) for c in out] == [12, 16] and not any(c.finished for c in out)
    ends_at_once = fake_steps(eos_bias=1e4)
    assert [(c.ids, c.finished) for c in greedy(ends_at_once, sources, [12, 16])] == [([], True), ([], True)]
    assert output_limit(3) == 16 and output_limit(10_000) == MAX_OUTPUT_TOKENS and output_limit(3, 5) == 5


# -- real bundles: torch oracle, both backends ---------------------------------------------------------


def torch_greedy(module, ids: list[int], limit: int) -> tuple[list[int], bool]:
    """The oracle: torch's own encode + one decode step at a time, argmax with <pad>/<s> excluded."""
    import torch

    c = module.config
    x, lens = torch.tensor([ids]), torch.tensor([len(ids)])
    with torch.no_grad():
        memory, keys, state = module.encode(x, lens)
        token, out = c.bos_id, []
        for _ in range(limit):
            logits, state, _ = module.decode(torch.tensor([[token]]), state, memory, keys, lens)
            z = logits[0, -1].clone()
            z[[c.padding_idx, c.bos_id]] = -float("inf")
            token = int(z.argmax())
            if token == c.eos_id:
                return out, True
            out.append(token)
    return out, False


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_greedy_equals_torch_greedy_on_both_backends(s2s_bundles, config):
    pytest.importorskip("torch")
    module, source, target = make_seq2seq(*config)  # the same seeded model as the bundle
    words = list(G2P) + UNSEEN
    expected = [torch_greedy(module, source.encode(w), output_limit(len(w))) for w in words]
    for backend in BACKENDS:
        model = load(s2s_bundles(*config), backend=backend)
        found = model.nbest(words, n=1, beam=1, batch_size=5)
        got = [([target.vocab.index(t) for t in h[0].tokens], h[0].finished) for h in found]
        assert got == expected, backend
    assert load(s2s_bundles(*config)).translate(list(G2P), beam=1) == list(G2P.values())  # it learned the task


@pytest.mark.parametrize("config", CONFIGS[:2])
def test_beam_search_same_on_both_backends(s2s_bundles, config):
    words = list(G2P) + UNSEEN
    results = {b: load(s2s_bundles(*config), backend=b).nbest(words, n=3, beam=4, batch_size=4) for b in BACKENDS}
    for ort, nb in zip(results["onnxruntime"], results["numba"]):
        assert [h.tokens for h in ort] == [h.tokens for h in nb]
        assert FP32.close(np.array([h.score for h in ort]), np.array([h.score for h in nb]))
    model = load(s2s_bundles(*config))
    assert model.translate(words, beam=4, batch_size=1) == model.translate(words, beam=4, batch_size=16)
    assert model.translate(list(G2P), beam=4) == list(G2P.values())
    assert model.translate_one("dog", beam=2) == "D AO G"


def test_int8_decodes_on_both_backends(s2s_bundles):
    fp32 = load(s2s_bundles("lstm", "dot", True)).translate(list(G2P), beam=3)
    for backend in BACKENDS:
        model = load(s2s_bundles("lstm", "dot", True), backend=backend, int8=True)
        out = model.translate(list(G2P), beam=3)
        assert sum(a == b for a, b in zip(out, fp32)) >= len(G2P) - 2, (backend, out)


def test_hypotheses_and_bad_input(s2s_bundles):
    model = load(s2s_bundles("gru", "additive", False))
    best = model.nbest("cat", n=2, beam=3)[0]
    assert isinstance(best[0], Hypothesis) and best[0].output == "K AE T" and best[0].tokens == ["K", "AE", "T"]
    assert best[0].finished and best[0].score > best[1].score and best[0].log_prob < 0
    with pytest.raises(InputError, match=r"text #1 \(''\) has no tokens; an empty source has no output"):
        model.translate(["cat", ""])
    assert model.encode_sources(["c@t"])[0][1] == 1  # unknown character -> <unk>
    assert model.translate(["c@t"]) == model.translate(["c#t"])  # ... whichever it was
    model.max_length = 5
    with pytest.raises(InputError, match=r"text #0 has 9 tokens, more than this bundle's max_length 5; split it"):
        model.translate(["horsefish"])
    huge = model.nbest(["dog"], n=3, beam=1000)[0]  # beam > vocabulary: clamped, no error
    assert model.max_beam == model.vocab_size - 2 and len(huge) == 3 and huge[0].output == "D AO G"
    for kwargs, message in (
        (dict(beam=0), "beam must be an integer >= 1"),
        (dict(alpha=-1), "alpha"),
        (dict(max_output_tokens=0), "max_output_tokens must be an integer in 1..1024"),
    ):
        with pytest.raises(InputError, match=message):
            model.translate(["dog"], **kwargs)
    with pytest.raises(InputError, match=r"n=3 outputs need a beam of at least n, got beam=2"):
        model.nbest(["dog"], n=3, beam=2)
    cut = model.nbest(["horse"], n=1, beam=2, max_output_tokens=2)[0][0]
    assert cut.tokens == ["HH", "AO"] and not cut.finished
    with pytest.raises(
        AttributeError,
        match=r"a seq2seq bundle has no predict\(\); load a classifier bundle "
        r"\(rnnkit train classify\); this one has translate\(\)",
    ):
        model.predict(["dog"])


@pytest.mark.slow
def test_runtime_decodes_without_torch(s2s_bundles):
    bundle = s2s_bundles("rnn", "none", False)
    code = (
        "import sys; from rnnkit.runtime import load; m = load(sys.argv[1], backend='numba'); "
        "print(m.translate(['cat', 'dog'], beam=2)); assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = run_python(code, str(bundle))
    assert result.returncode == 0, result.stderr
    assert "['K AE T', 'D AO G']" in result.stdout


# -- CLI -----------------------------------------------------------------------------------------------


def test_cli_predict_writes_jsonl(s2s_bundles, tmp_path):
    bundle = str(s2s_bundles("gru", "additive", False))
    result = CliRunner().invoke(cli, ["predict", bundle, "cat", "bee", "--beam", "1"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.output.splitlines()]
    assert [(x["input"], x["output"]) for x in lines] == [("cat", "K AE T"), ("bee", "B IY")]
    assert set(lines[0]) == {"input", "output", "score"} and lines[0]["score"] < 0
    src, out = tmp_path / "words.txt", tmp_path / "out.jsonl"
    src.write_text("dog\nsheep\n\nfrog\n")
    result = CliRunner().invoke(
        cli, ["predict", bundle, "--input", str(src), "--output", str(out), "--nbest", "3", "--backend", "numba"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["output"] for x in lines] == ["D AO G", "SH IY P", "F R AO G"]
    assert all(len(x["nbest"]) == 3 and x["nbest"][0] == {"output": x["output"], "score": x["score"]} for x in lines)
    assert not list(tmp_path.glob(".out.jsonl.*"))


def test_cli_refusals_and_inspect(s2s_bundles, gru_bundle, tmp_path):
    bundle = str(s2s_bundles("lstm", "dot", True))
    result = CliRunner().invoke(cli, ["predict", bundle, "dog", "--nbest", "4", "--beam", "2"])
    assert result.exit_code == 1 and "Error: n=4 outputs need a beam of at least n, got beam=2" in result.output
    result = CliRunner().invoke(cli, ["predict", str(gru_bundle), "good", "--beam", "3"])
    assert result.exit_code == 2 and "--beam apply to seq2seq bundles" in result.output
    src = tmp_path / "in.txt"
    src.write_text("dog\n")
    result = CliRunner().invoke(
        cli, ["predict", bundle, "--engine", "dask", "--input", str(src), "--output", str(tmp_path / "out")]
    )
    assert result.exit_code == 1 and "--engine dask runs ['classify', 'tag'] bundles, not 'seq2seq'" in result.output
    result = CliRunner().invoke(cli, ["inspect", bundle])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "task=seq2seq source=char" in text and "attention=dot" in text and "encoder.int8.onnx" in text
    assert "state: final_c -> initial_c" in text and "parity decoder fp32 vs torch" in text and "int8_agreement" in text
