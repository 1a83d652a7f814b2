"""Gradient recording in the training loop (``rnnkit.toolkit.gradients``): the recorded norms are
torch's own, recording leaves training bit for bit as it was, a non-finite step stops the run with
one line (checkpoint intact) or is skipped, and a resumed run continues the same history."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from conftest import synthetic_texts  # noqa: E402
from torch import nn  # noqa: E402

from rnnkit.runtime.tolerance import EXACT, FP32  # noqa: E402
from rnnkit.toolkit import train as train_module  # noqa: E402
from rnnkit.toolkit.gradients import GradientRecorder, param_groups, read_gradients  # noqa: E402
from rnnkit.toolkit.loop import fit, torch_settings, train_epoch  # noqa: E402
from rnnkit.toolkit.models import ClassifierConfig, RecurrentClassifier  # noqa: E402


def tiny_classifier(seed: int = 0) -> RecurrentClassifier:
    torch.manual_seed(seed)
    config = ClassifierConfig(
        vocab_size=20, num_labels=3, cell="gru", embed=6, hidden=5, layers=2, bidirectional=True, pooling="attention"
    )
    return RecurrentClassifier(config)


def batch(seed: int, b: int = 4, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 20, (b, t), generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    return ids, lengths, torch.randint(0, 3, (b,), generator=g)


def loss_of(model, seed: int):
    ids, lengths, y = batch(seed)
    return nn.functional.cross_entropy(model(ids, lengths), y)


def test_groups_follow_parameter_names():
    groups, index = param_groups(tiny_classifier())
    assert groups == ["embedding", "rnn.l0", "rnn.l0_reverse", "rnn.l1", "rnn.l1_reverse", "attention", "head"]
    names = [n for n, _ in tiny_classifier().named_parameters()]
    assert [groups[i] for i, n in zip(index, names) if n.startswith("rnn.")] == [
        "rnn.l" + n.rsplit("_l", 1)[1] for n in names if n.startswith("rnn.")
    ]


@pytest.mark.parametrize("clip", [0.05, 0.0])
def test_recorded_norms_are_torchs_own_and_clipping_is_unchanged(clip):
    model = tiny_classifier()
    model.eval()  # no dropout: both copies see the same forward
    ref = copy.deepcopy(model)
    loss_of(model, 1).backward()
    loss_of(ref, 1).backward()
    names = dict(model.named_parameters())
    groups, index = param_groups(model)
    expected_groups = {
        g: torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p, i in zip(names.values(), index) if i == k]))
        for k, g in enumerate(groups)
    }
    rec = GradientRecorder(model, clip).record(1, 1, torch.tensor(0.5))
    expected_total = (
        nn.utils.clip_grad_norm_(ref.parameters(), clip)
        if clip
        else nn.utils.get_total_norm([p.grad for p in ref.parameters()])
    )
    assert EXACT.close(np.float32(rec["norm"]), expected_total.numpy())
    assert FP32.close(np.array(list(rec["groups"].values())), np.array([float(v) for v in expected_groups.values()]))
    assert rec["clipped"] == (clip > 0) and rec["finite"]  # the tiny model's norm is well above 0.05
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad), n  # clipped by clip_grad_norm_'s own arithmetic: bit for bit


class _Config:
    clip, epochs, lr = 0.1, 1, 0.01


@pytest.mark.slow  # a few seconds on a busy 2-core machine
def test_recording_does_not_change_training():
    """The loop with the recorder vs. the loop as written before it (clip_grad_norm_): same weights."""
    recorded, plain = tiny_classifier().eval(), tiny_classifier().eval()  # eval: no dropout draws to interleave
    opt_r, opt_p = (torch.optim.Adam(m.parameters(), lr=0.05) for m in (recorded, plain))
    step = lambda m, seed: (loss_of(m, int(seed)), 4)  # noqa: E731
    with torch_settings(1):  # one thread: two busy cores' worth of waiting otherwise
        train_epoch(_Config, recorded, opt_r, step, list(range(6)), 1, False, False)
        for seed in range(6):
            opt_p.zero_grad(set_to_none=True)
            step(plain, seed)[0].backward()
            nn.utils.clip_grad_norm_(plain.parameters(), _Config.clip)
            opt_p.step()
    assert all(torch.equal(a, b) for a, b in zip(recorded.state_dict().values(), plain.state_dict().values()))


def write_data(tmp_path):
    texts, labels = synthetic_texts(96, 0)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    return path


def poisoned(monkeypatch, at_step: int, where: str):
    """The classifier, but the ``at_step``-th training forward makes its loss NaN (``where="loss"``)
    or the head's gradient infinite (``"head"``): a real blow-up inside the real loop."""
    calls = {"n": 0}

    class Poisoned(RecurrentClassifier):
        def forward(self, ids, lengths):
            out = super().forward(ids, lengths)
            if self.training:
                calls["n"] += 1
                if calls["n"] == at_step:
                    if where == "loss":
                        return out * float("nan")
                    self.head.weight.register_hook(lambda g: g * float("inf") if calls["n"] == at_step else g)
            return out

    monkeypatch.setattr(train_module, "RecurrentClassifier", Poisoned)


ARGS = ["--cell", "gru", "--embed", "6", "--hidden", "6", "--batch-size", "16", "--threads", "1", "--epochs", "3"]


@pytest.mark.parametrize("where", ["head", "loss"])
def test_a_non_finite_step_stops_with_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch, where):
    from rnnkit.toolkit.checkpoint import load_checkpoint
    from rnnkit.toolkit.cli import cli

    data, out = write_data(tmp_path), tmp_path / "run"
    poisoned(monkeypatch, 8, where)  # 6 steps an epoch (86 train examples / 16): step 2 of epoch 2
    r = CliRunner().invoke(cli, ["train", "classify", "--train", str(data), "--out", str(out), *ARGS])
    assert r.exit_code == 1, r.output
    error = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "training stopped at epoch 2, step 8: non-finite " in error[0], r.output
    assert "lower --lr" in error[0] and "--clip" in error[0] and "--on-nonfinite skip" in error[0]
    assert ("non-finite gradient of head --" if where == "head" else "non-finite loss nan") in error[0]
    assert "the checkpoint keeps best epoch 1; --resume continues after epoch 1" in error[0]
    ck = load_checkpoint(out)  # epoch 1, as written after it: usable, with its 6 steps of gradients
    assert ck.meta["training"]["epochs_run"] == 1 and ck.meta["training"]["in_progress"] is True
    assert [s["step"] for s in read_gradients(out / "gradients.jsonl")] == list(range(1, 7))
    assert all(torch.isfinite(v).all() for v in ck.model.state_dict().values())


@pytest.mark.slow  # a few seconds on a busy 2-core machine
def test_skip_mode_drops_the_step_and_goes_on(tmp_path, monkeypatch):
    from rnnkit.toolkit.checkpoint import load_checkpoint
    from rnnkit.toolkit.cli import cli

    data, out = write_data(tmp_path), tmp_path / "run"
    poisoned(monkeypatch, 8, "head")
    args = ["train", "classify", "--train", str(data), "--out", str(out), *ARGS, "--on-nonfinite", "skip"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "1 non-finite steps skipped" in r.output
    steps = read_gradients(out / "gradients.jsonl")
    assert len(steps) == 18 and [s["step"] for s in steps if s.get("skipped")] == [8]
    assert steps[7]["groups"]["head"] == "inf" and (out / "gradients.png").is_file()
    ck = load_checkpoint(out)
    assert ck.meta["training"]["gradients"]["grad_skipped"] == 1
    assert [h["grad_skipped"] for h in ck.meta["training"]["history"]] == [0, 1, 0]
    assert all(torch.isfinite(v).all() for v in ck.model.state_dict().values())


def test_a_resumed_fit_continues_the_same_gradient_history():
    class Config:
        threads, seed, lr, weight_decay, epochs, batch_size, clip, patience = 1, 0, 0.05, 0.0, 3, 4, 0.5, 0

    ids, lengths, y = batch(5, b=12)

    def step(model, idx):
        return nn.functional.cross_entropy(model(ids[idx], lengths[idx]), y[idx]), len(idx)

    def run(**kw):
        return fit(
            Config,
            tiny_classifier,
            lengths.numpy(),
            step,
            lambda m: {"loss": 0.0, "accuracy": 0.0},
            lambda dev: ({}, ""),
            False,
            lambda _msg: None,
            **kw,
        )

    states = []
    whole = run(save=lambda _fit, state: states.append(copy.deepcopy(state)))  # the live tensors change
    resumed = run(resume=states[0])  # as if killed during epoch 2
    assert resumed.gradients == whole.gradients and len(whole.gradients) == 9
    assert all(
        torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values())
    )


# -- gradient flow through time (rnnkit diagnose) -------------------------------------------------


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_unrolled_rnn_gives_the_fused_modules_outputs(cls):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from rnnkit.toolkit.gradient_flow import UnrolledRNN

    torch.manual_seed(0)
    rnn = cls(5, 4, num_layers=2, bidirectional=True, batch_first=True)
    x, lengths = torch.randn(3, 6, 5), torch.tensor([6, 2, 4])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    (y1, s1), (y2, s2) = rnn(packed), UnrolledRNN(rnn)(packed)
    assert FP32.close(
        pad_packed_sequence(y2, batch_first=True)[0].detach(), pad_packed_sequence(y1)[0].transpose(0, 1).detach()
    )
    for a, b in zip(s1 if cls is nn.LSTM else [s1], s2 if cls is nn.LSTM else [s2]):
        assert FP32.close(b.detach().numpy(), a.detach().numpy())


def test_flow_matches_the_analytic_gradient_of_a_linear_recurrence():
    """relu RNN with W_hh = 0.5 I and positive inputs/weights: h_t = x_t W + 0.5 h_{t-1} > 0, so
    dL/dh_{T-d} = 0.5^d dL/dh_T exactly, through time and across ragged rows."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from rnnkit.toolkit.gradient_flow import UnrolledRNN, norms_by_distance

    rnn = nn.RNN(3, 4, nonlinearity="relu", batch_first=True, bias=False)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(0.5 * torch.eye(4))
        rnn.weight_ih_l0.fill_(0.1)
    unrolled_rnn = UnrolledRNN(rnn)
    x, lengths = torch.rand(3, 9, 3) + 0.1, torch.tensor([9, 4, 7])
    y, _ = unrolled_rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    from torch.nn.utils.rnn import pad_packed_sequence

    y, _ = pad_packed_sequence(y, batch_first=True)
    w = torch.tensor([1.0, -2.0, 0.5, 2.0])
    (y[torch.arange(3), lengths - 1] @ w).sum().backward()  # each row's loss reads its last state
    norms = torch.stack([h.grad.norm(dim=-1) for h in unrolled_rnn.states["l0"]], dim=1)
    mean, rows = norms_by_distance(norms, lengths)
    expected = float(w.norm()) * 0.5 ** np.arange(9)
    assert FP32.close(mean, expected) and rows.tolist() == [3, 3, 3, 3, 2, 2, 2, 1, 1]


def test_diagnose_writes_numbers_and_plot(tmp_path):
    from conftest import make_checkpoint

    from rnnkit.toolkit.cli import cli

    ck = make_checkpoint(tmp_path / "ck", cell="lstm", bidirectional=True, pooling="last", layers=2)
    data = write_data(tmp_path)
    r = CliRunner().invoke(cli, ["diagnose", str(ck), "--data", str(data), "--rows", "8", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "d" / "gradient_flow.json").read_text())
    assert list(result["layers"]) == ["rnn.l0", "rnn.l0_reverse", "rnn.l1", "rnn.l1_reverse"] and result["rows"] == 8
    for layer in result["layers"].values():
        assert layer["rows"][0] == 8 and layer["mean_norm"][0] > 0
    assert (tmp_path / "d" / "gradient_flow.png").stat().st_size > 0
    assert "rnn.l0: ||dL/dh||" in r.output


@pytest.mark.parametrize("scale", [0.01, 1.0])
def test_a_vanishing_first_layer_is_warned_about_once(scale):
    """Three stacked RNN layers whose weights are shrunk 100x: the gradient reaching the first
    layer is orders of magnitude below the head's, and the run says so (once); unshrunk: silence."""

    class Config:
        threads, seed, lr, weight_decay, epochs, batch_size, clip, patience = 1, 0, 1e-4, 0.0, 2, 4, 0.0, 0

    def make_model():
        torch.manual_seed(0)
        config = ClassifierConfig(
            vocab_size=20, num_labels=3, cell="rnn", embed=6, hidden=8, layers=3, bidirectional=False, pooling="last"
        )
        model = RecurrentClassifier(config)
        with torch.no_grad():
            for p in model.rnn.parameters():
                p.mul_(scale)
        return model

    ids, lengths, y = batch(5, b=12)
    lines = []
    fit(
        Config,
        make_model,
        lengths.numpy(),
        lambda m, idx: (nn.functional.cross_entropy(m(ids[idx], lengths[idx]), y[idx]), len(idx)),
        lambda m: {"loss": 0.0, "accuracy": 0.0},
        lambda dev: ({}, ""),
        False,
        lines.append,
    )
    warnings = [line for line in lines if line.startswith("warning:")]
    if scale == 1.0:
        assert warnings == [] and len(lines) == 2, lines
        return
    assert len(warnings) == 1 and "the first recurrent layer's gradient (rnn.l0) is" in warnings[0], lines
    assert "of the head's" in warnings[0] and "--cell lstm or gru" in warnings[0]
