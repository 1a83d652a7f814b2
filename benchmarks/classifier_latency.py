"""Classifier latency, 1 thread: Emb(20000,128) -> LSTM/GRU(256) -> Linear(2), T=64, B=1 and B=32.

torch eager vs a raw onnxruntime session vs rnnkit (onnxruntime / numba, fp32 / int8),
all measured in this one run on this machine, reported as median / p99 and as ratios.  The bundle's
fp32 graph is also timed in both forms (``sequence_lens`` as exported, and portable:
``rnnkit.export.portable``) on onnxruntime and numba sessions, side by side with the rest; a second
table gives portable / sequence_lens per backend.

    python benchmarks/classifier_latency.py [--hidden 256] [--cells lstm,gru] [--batches 1,32]
                                            [--bidirectional] [--rounds 20]

The model weights are random (speed does not depend on them); the bundle is exported
with int8 by rnnkit's own exporter (so it passed parity validation on both backends).
"""

from __future__ import annotations

import argparse
import sys

import common  # noqa: F401  (pins 1 thread before numpy/torch load)
import numpy as np
from common import WORK, machine, stats_ms, table, timeit_blocks
from graph_forms import BACKENDS, FORMS, RATIO_HEADERS, form_sessions, label, ratio_rows

VOCAB, EMBED, TIME = 20000, 128, 64


def make_bundle(cell: str, hidden: int, bidirectional: bool = False):
    import torch

    from rnnkit.runtime.tokenizer import WordTokenizer
    from rnnkit.toolkit.checkpoint import save_checkpoint
    from rnnkit.toolkit.export_checkpoint import DevSet, export_checkpoint
    from rnnkit.toolkit.models import ClassifierConfig, RecurrentClassifier

    words = [f"w{i}" for i in range(VOCAB - 2)]
    tokenizer = WordTokenizer.build([" ".join(words)], max_size=VOCAB)
    torch.manual_seed(0)
    config = ClassifierConfig(
        vocab_size=tokenizer.vocab_size,
        num_labels=2,
        cell=cell,
        embed=EMBED,
        hidden=hidden,
        dropout=0.0,
        bidirectional=bidirectional,
    )
    model = RecurrentClassifier(config).eval()
    tag = f"{cell}{hidden}{'bi' if bidirectional else ''}"
    ckpt = save_checkpoint(WORK / f"{tag}.ckpt", model, tokenizer, ["neg", "pos"], plot=False)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, TIME)) for _ in range(200)]
    # random weights: labels sit near the boundary, so agreement is reported, not gated
    dev = DevSet(texts, None, "random texts")
    out = export_checkpoint(ckpt, WORK / f"{tag}.bundle", int8=True, dev=dev, min_agreement=0.0, log=lambda m: None)
    return model, out["path"], texts


def bench(
    cell: str, hidden: int, batch: int, bidirectional: bool = False, rounds: int = 20
) -> tuple[list[list], list[list]]:
    import onnxruntime as ort
    import torch

    from rnnkit.runtime import load
    from rnnkit.runtime.model import pad

    torch.set_num_threads(1)
    model, bundle, texts = make_bundle(cell, hidden, bidirectional)
    rnnkit_ort = load(bundle, backend="onnxruntime", threads=1)
    batch_texts = texts[:batch]
    ids, lens = pad([rnnkit_ort.tokenizer.encode(t) for t in batch_texts])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    raw = ort.InferenceSession(str(rnnkit_ort.bundle.model_path()), options, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "sequence_lens": lens}
    tids, tlens = torch.from_numpy(ids), torch.from_numpy(lens.astype(np.int64))

    def torch_eager():
        with torch.no_grad():
            model(tids, tlens)

    runs = {
        "torch eager": torch_eager,
        "onnxruntime raw session": lambda: raw.run(["logits"], feeds),
        # the same ids through rnnkit's session wrapper: what rnnkit adds besides tokenizing
        "rnnkit onnxruntime fp32, ids in (Model.logits)": lambda: rnnkit_ort.logits(ids, lens),
    }
    for backend in ("onnxruntime", "numba"):
        for int8 in (False, True):
            m = load(bundle, backend=backend, int8=int8, threads=1)
            m.warmup()
            runs[f"rnnkit {backend} {'int8' if int8 else 'fp32'}"] = lambda m=m: m.predict(
                batch_texts, batch_size=batch
            )
    # the bundle's fp32 graph, as exported and portable, on bare sessions of both backends
    sessions = form_sessions(rnnkit_ort.bundle.graph(), f"classifier-{cell}{hidden}{'bi' if bidirectional else ''}")
    for form in FORMS:
        for backend in BACKENDS:
            runs[label(form, backend)] = lambda s=sessions[form, backend]: s.run(["logits"], feeds)
    # side by side (common.timeit_blocks): noise falls on every runtime alike
    times = {name: stats_ms(t) for name, t in timeit_blocks(runs, rounds=rounds, block=20 if batch == 1 else 5).items()}
    base = times["onnxruntime raw session"][0]
    name = f"{cell.upper()}({hidden}){' bi' if bidirectional else ''}"
    return (
        [[name, batch, runtime, med, p99, med / base] for runtime, (med, p99) in times.items()],
        ratio_rows(times, [name, batch]),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--bidirectional", action="store_true", help="bidirectional recurrent layer")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of side-by-side timing (common.timeit_blocks)")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    rows, ratios = [], []
    for cell in args.cells.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            r, q = bench(cell, args.hidden, batch, args.bidirectional, args.rounds)
            rows += r
            ratios += q
            print(f"  done {cell} B={batch}", file=sys.stderr)
    print(f"Classifier latency, T={TIME}, vocab {VOCAB}, embed {EMBED} -- {machine()}")
    print(table(["model", "B", "runtime", "median ms", "p99 ms", "x raw onnxruntime"], rows))
    print("\nPortable graph form vs sequence_lens form (same run, bare sessions)")
    print(table(["model", "B", *RATIO_HEADERS], ratios))


if __name__ == "__main__":
    main()
