"""Cost of recording gradient norms: seconds per training epoch with and without it, side by side.

``rnnkit.toolkit.loop.train_epoch`` runs every step through a ``GradientRecorder`` (per-tensor
norms, per-group norms, one record per step; clipping with clip_grad_norm_'s own arithmetic).
"without" is the same loop with a stand-in that only calls ``clip_grad_norm_``, as the loop did
before recording existed.  Each workload trains two copies of one seeded model on the same
batches, one thread, steps interleaved (A, B, B, A, ...: ``train_epoch`` on one batch at a time),
and sums each copy's step times per epoch; the median epoch time of each over ``--rounds`` epochs
and their ratio are printed.  Workloads: the README's MR classifier (GRU, bidirectional, attention
pooling, 128/128) on a subset of MR, the same classifier at width 16 (the smallest models are
where a fixed per-step cost shows most) and a char LM (LSTM 2 x 256) on tiny-shakespeare.

    .venv/bin/python benchmarks/grad_overhead.py                 # ~5 min
    .venv/bin/python benchmarks/grad_overhead.py --rounds 2 --limit 500   # a quick check

The machine is shared: absolute times are noisy, the ratio measured in one run is the figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import common  # noqa: F401 -- pins math libraries to one thread before torch loads
import numpy as np
import torch
from torch import nn

from rnnkit.toolkit.gradients import GradientRecorder
from rnnkit.toolkit.loop import adam, batches, train_epoch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


class ClipOnly:
    """The loop's step as it was before recording: clip_grad_norm_ and nothing else."""

    def __init__(self, model: nn.Module, clip: float):
        self.params, self.clip, self.history = list(model.parameters()), clip, []

    def record(self, epoch, step, loss):
        if self.clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.clip)
        return {"finite": True}


class Config:
    def __init__(self, clip: float, epochs: int = 1, lr: float = 1e-3):
        self.clip, self.epochs, self.lr = clip, epochs, lr


def classifier_workload(limit: int, width: int):
    from rnnkit.export.architecture import ClassifierConfig
    from rnnkit.export.nets import RecurrentClassifier
    from rnnkit.runtime.tokenizer import WordTokenizer
    from rnnkit.toolkit.data import read_examples
    from rnnkit.toolkit.train import _collate, _encode

    path = SHARED / "mr_polarity"
    if not path.exists():
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import synthetic_texts

        texts, labels = synthetic_texts(limit, 0)
        source = f"{limit} synthetic texts (no {path})"
    else:
        examples = read_examples(path)
        order = np.random.default_rng(0).permutation(len(examples))[:limit]
        texts, labels = [examples[i].text for i in order], [examples[i].label for i in order]
        source = f"{limit} MR reviews"
    tok = WordTokenizer.build(texts)
    from rnnkit.toolkit.data import Example

    seqs = _encode([Example(t, y, "") for t, y in zip(texts, labels)], tok, 0)
    names = sorted(set(labels))
    y = np.array([names.index(v) for v in labels])
    config = ClassifierConfig(
        vocab_size=tok.vocab_size,
        num_labels=len(names),
        cell="gru",
        embed=width,
        hidden=width,
        bidirectional=True,
        pooling="attention",
        dropout=0.5,
    )

    def step(model, idx):
        ids, lens = _collate(seqs, idx)
        return nn.functional.cross_entropy(model(ids, lens), torch.from_numpy(y[idx])), len(idx)

    lengths = np.array([len(s) for s in seqs])
    return (
        f"classifier GRU bi attention {width}/{width}, {source}",
        lambda: RecurrentClassifier(config),
        step,
        lambda rng: batches(lengths, 32, rng),
        5.0,
    )


def lm_workload(limit: int):
    from rnnkit.export.architecture import LMConfig
    from rnnkit.export.nets import RecurrentLM

    path = SHARED / "tinyshakespeare" / "input.txt"
    text = path.read_text(encoding="utf-8")[: limit * 100] if path.exists() else "the cat sat on the mat. " * limit * 4
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) + 2 for c in text])
    rows, bptt = 16, 64
    data = ids[: len(ids) // rows * rows].reshape(rows, -1)
    config = LMConfig(vocab_size=len(chars) + 2, cell="lstm", layers=2, hidden=256, embed=64, dropout=0.2)

    def step(model, start):
        x = data[:, start : start + bptt]
        y = data[:, start + 1 : start + 1 + bptt]
        logits, _ = model(x[:, : y.shape[1]])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)), y.numel()

    starts = list(range(0, data.shape[1] - 1, bptt))
    return (
        f"char LM LSTM 2x256, {data.numel()} chars of " + ("tiny-shakespeare" if path.exists() else "synthetic text"),
        lambda: RecurrentLM(config),
        step,
        lambda rng: starts,
        1.0,
    )


def measure(name, make_model, step, todo, clip, rounds: int) -> tuple[float, float]:
    models, optims, recorders = {}, {}, {}
    for kind in ("with", "without"):
        torch.manual_seed(0)
        models[kind] = make_model()
        optims[kind] = adam(models[kind], 1e-3)
        recorders[kind] = GradientRecorder(models[kind], clip) if kind == "with" else ClipOnly(models[kind], clip)
    times = {"with": [], "without": []}
    rng = np.random.default_rng(0)
    config = Config(clip)
    for r in range(rounds):
        spent = {"with": 0.0, "without": 0.0}
        for i, batch in enumerate(todo(rng)):
            # one step of each in turn (who goes first alternating): a burst of noise from the
            # shared machine then lands on both contenders instead of deciding the ratio
            for kind in ("with", "without") if i % 2 == 0 else ("without", "with"):
                model = models[kind].train()
                t0 = time.perf_counter()
                train_epoch(config, model, optims[kind], step, [batch], 1, False, False, recorders[kind])
                spent[kind] += time.perf_counter() - t0
        for kind in spent:
            times[kind].append(spent[kind])
        print(
            f"  epoch {r + 1}/{rounds}: with {spent['with']:.2f}s, without {spent['without']:.2f}s "
            f"(x{spent['with'] / spent['without']:.3f})",
            flush=True,
        )
    return statistics.median(times["with"]), statistics.median(times["without"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--limit", type=int, default=1500, help="classifier: examples per epoch")
    p.add_argument("--lm-limit", type=int, default=400, help="LM: hundreds of characters per epoch")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"{common.machine()}, torch {torch.__version__}, {args.rounds} rounds", flush=True)
    rows = []
    for name, make_model, step, todo, clip in (
        classifier_workload(args.limit, 128),
        classifier_workload(args.limit, 16),
        lm_workload(args.lm_limit),
    ):
        print(name, flush=True)
        with_s, without_s = measure(name, make_model, step, todo, clip, args.rounds)
        rows.append((name, with_s, without_s))
    print("\n| workload | s/epoch with recording | without | ratio |\n|---|---|---|---|")
    for name, with_s, without_s in rows:
        print(f"| {name} | {with_s:.2f} | {without_s:.2f} | {with_s / without_s:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
