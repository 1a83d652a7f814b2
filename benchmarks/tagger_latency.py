"""Tagger latency, 1 thread: a 25-token sentence at B=1 and 32 ragged sentences (B=32).

torch eager vs rnnkit onnxruntime vs rnnkit numba, fp32 and int8, all in this one run, as
median / p99 and as ratios to torch eager.

    python benchmarks/tagger_latency.py --checkpoint runs/ud_pos/best   # a trained tagger
    python benchmarks/tagger_latency.py                                 # random weights, UD 'best' sizes

Sentences are drawn from UD English-EWT dev when ../shared is present, else synthetic.
"""

from __future__ import annotations

import argparse
import sys

import common  # noqa: F401  (pins 1 thread before numpy/torch load)
import numpy as np
from common import ROOT, WORK, machine, stats_ms, table, timeit

DATA = ROOT.parent / "shared" / "datasets" / "ud_english_ewt_pos" / "en_ewt-ud-dev.upos.tsv"


def sentences(n: int, seed: int = 0) -> list[list[str]]:
    if DATA.exists():
        from rnnkit.toolkit.conll import read_tagged

        pool = [s.tokens for s in read_tagged(DATA) if 5 <= len(s.tokens) <= 45]
    else:
        rng = np.random.default_rng(seed)
        pool = [[f"w{i}" for i in rng.integers(0, 5000, rng.integers(5, 45))] for _ in range(500)]
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), n, replace=False)]


def random_checkpoint():
    import torch

    from rnnkit.runtime.charset import CharVocab
    from rnnkit.toolkit.conll import TaggedSentence
    from rnnkit.toolkit.tagger import RecurrentTagger, TaggerConfig
    from rnnkit.toolkit.train_tag import build_word_vocab, save_tagger_checkpoint

    pool = sentences(300)
    tok = build_word_vocab([TaggedSentence(s, ["X"] * len(s), "") for s in pool], True, 20000, 1)
    charset = CharVocab.build(w for s in pool for w in s)
    torch.manual_seed(0)
    config = TaggerConfig(
        vocab_size=tok.vocab_size,
        num_tags=17,
        cell="lstm",
        embed=128,
        hidden=200,
        layers=2,
        bidirectional=True,
        char_vocab_size=charset.size,
        char_embed=32,
        char_filters=100,
    )
    tags = [f"T{i}" for i in range(17)]
    return save_tagger_checkpoint(WORK / "tagger.ckpt", RecurrentTagger(config).eval(), tok, charset, tags, plot=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    args = parser.parse_args(argv)
    import torch

    from rnnkit.runtime import load
    from rnnkit.toolkit.export_checkpoint import DevSet, export_checkpoint
    from rnnkit.toolkit.train_tag import load_tagger_checkpoint

    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.checkpoint or random_checkpoint()
    ckpt = load_tagger_checkpoint(ckpt_path)
    dev = sentences(200, seed=1)
    bundle = export_checkpoint(
        ckpt_path,
        WORK / "tagger.bundle",
        int8=True,
        min_agreement=0.0,
        dev=DevSet(dev, None, "benchmark sentences"),
        log=lambda m: None,
    )["path"]
    one = [s for s in sentences(400, seed=2) if len(s) == 25][:1] or [sentences(1)[0][:25]]
    many = sentences(32, seed=3)
    rows = []
    for name, batch in (("1 x 25 tokens", one), ("32 ragged", many)):
        runs = {"torch eager": lambda b=batch: ckpt.predict(b)}
        for backend in ("onnxruntime", "numba"):
            for int8 in (False, True):
                m = load(bundle, backend=backend, int8=int8, threads=1)
                m.warmup()
                runs[f"rnnkit {backend} {'int8' if int8 else 'fp32'}"] = lambda m=m, b=batch: m.tag(b, batch_size=32)
        times = {k: stats_ms(timeit(fn, repeat=100)) for k, fn in runs.items()}
        base = times["torch eager"][0]
        rows += [[name, k, med, p99, med / base] for k, (med, p99) in times.items()]
        print(f"  done {name}", file=sys.stderr)
    c = ckpt.config
    arch = (
        f"{'bi' if c.bidirectional else ''}{c.cell.upper()} {c.layers}x{c.hidden}, embed {c.embed}"
        f"{f', char CNN {c.char_filters}' if c.char_vocab_size else ''}"
    )
    print(f"Tagger latency ({arch}; {'trained' if args.checkpoint else 'random weights'}) -- {machine()}")
    print(table(["input", "runtime", "median ms", "p99 ms", "x torch eager"], rows))


if __name__ == "__main__":
    main()
