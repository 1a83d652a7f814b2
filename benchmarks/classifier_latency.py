"""Classifier latency, 1 thread: Emb(20000,128) -> LSTM/GRU(256) -> Linear(2), T=64, B=1 and B=32.

torch eager vs a raw onnxruntime session vs rnnkit (onnxruntime / numba, fp32 / int8),
all measured in this one run on this machine, reported as median / p99 and as ratios.

    python benchmarks/classifier_latency.py [--hidden 256] [--cells lstm,gru] [--batches 1,32]

The model weights are random (speed does not depend on them); the bundle is exported
with int8 by rnnkit's own exporter (so it passed parity validation on both backends).
"""

from __future__ import annotations

import argparse
import sys

import common  # noqa: F401  (pins 1 thread before numpy/torch load)
import numpy as np

from common import WORK, machine, stats_ms, table, timeit_blocks

VOCAB, EMBED, TIME = 20000, 128, 64


def make_bundle(cell: str, hidden: int):
    import torch

    from rnnkit.toolkit.export_checkpoint import DevSet, export_checkpoint
    from rnnkit.runtime.tokenizer import WordTokenizer
    from rnnkit.toolkit.checkpoint import save_checkpoint
    from rnnkit.toolkit.models import ClassifierConfig, RecurrentClassifier

    words = [f"w{i}" for i in range(VOCAB - 2)]
    tokenizer = WordTokenizer.build([" ".join(words)], max_size=VOCAB)
    torch.manual_seed(0)
    config = ClassifierConfig(vocab_size=tokenizer.vocab_size, num_labels=2, cell=cell, embed=EMBED,
                              hidden=hidden, dropout=0.0)
    model = RecurrentClassifier(config).eval()
    ckpt = save_checkpoint(WORK / f"{cell}{hidden}.ckpt", model, tokenizer, ["neg", "pos"], plot=False)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, TIME)) for _ in range(200)]
    # random weights: labels sit near the boundary, so agreement is reported, not gated
    dev = DevSet(texts, None, "random texts")
    out = export_checkpoint(ckpt, WORK / f"{cell}{hidden}.bundle", int8=True, dev=dev, min_agreement=0.0,
                            log=lambda m: None)
    return model, out["path"], texts


def bench(cell: str, hidden: int, batch: int) -> list[list]:
    import onnxruntime as ort
    import torch

    from rnnkit.runtime import load
    from rnnkit.runtime.model import pad

    torch.set_num_threads(1)
    model, bundle, texts = make_bundle(cell, hidden)
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

    runs = {"torch eager": torch_eager, "onnxruntime raw session": lambda: raw.run(["logits"], feeds),
            # the same ids through rnnkit's session wrapper: what rnnkit adds besides tokenizing
            "rnnkit onnxruntime fp32, ids in (Model.logits)": lambda: rnnkit_ort.logits(ids, lens)}
    for backend in ("onnxruntime", "numba"):
        for int8 in (False, True):
            m = load(bundle, backend=backend, int8=int8, threads=1)
            m.warmup()
            runs[f"rnnkit {backend} {'int8' if int8 else 'fp32'}"] = (lambda m=m: m.predict(batch_texts, batch_size=batch))
    # side by side (common.timeit_blocks): noise falls on every runtime alike
    times = {name: stats_ms(t) for name, t in timeit_blocks(runs, rounds=20, block=20 if batch == 1 else 5).items()}
    base = times["onnxruntime raw session"][0]
    return [[f"{cell.upper()}({hidden})", batch, name, med, p99, med / base] for name, (med, p99) in times.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for cell in args.cells.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            rows += bench(cell, args.hidden, batch)
            print(f"  done {cell} B={batch}", file=sys.stderr)
    print(f"Classifier latency, T={TIME}, vocab {VOCAB}, embed {EMBED} -- {machine()}")
    print(table(["model", "B", "runtime", "median ms", "p99 ms", "x raw onnxruntime"], rows))


if __name__ == "__main__":
    main()
