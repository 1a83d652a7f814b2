"""Language-model generation latency, 1 thread: one token per step at B=1, state carried.

For a char LM (tiny-shakespeare 'best' sizes: LSTM 2x512, 65-char vocabulary; or a trained
checkpoint), a word LM step with a 10,000-word vocabulary (LSTM 2x512 by default) and the tied word
LM of ``scripts/word_lm.py --preset zaremba-medium-tied`` at PTB sizes (LSTM 2x650, embedding = head,
10,000 words + ``<pad>``; seeded, untrained: latency does not depend on the weights): torch eager
(``RecurrentLM`` with its state tuple; also with ``torch.backends.mkldnn`` off, torch's faster path at
B=1 on CPU), rnnkit onnxruntime fp32/int8, rnnkit numba fp32/int8, all in
this one run.  What is timed is the decoding step an app runs: feed one token id with the carried
state, get the logits and the new state (``State.feed_id``, the step ``generate`` runs; ``State.run``
of one id adds ~1 us); greedy choice in numpy is timed too for
rnnkit (``generate``) as tokens per second over ``--tokens`` tokens.  The runtimes are timed side by
side (``common.timeit_blocks``: ``--rounds`` rounds of ``--block`` steps each, order rotated), so
machine noise falls on all of them alike.  The bundle's fp32 step graph is also timed in both forms
(``sequence_lens`` as exported, and portable: ``rnnkit.export.portable``) on bare onnxruntime and numba
sessions, one token with the state carried; a second table gives portable / sequence_lens per backend.

    python benchmarks/lm_step.py                                   # random weights
    python benchmarks/lm_step.py --checkpoint runs/shakespeare-small/ckpt
    python benchmarks/lm_step.py --models word-tied                # the tied 2x650 word LM only
"""

from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401  (pins 1 thread before numpy/torch load)
import numpy as np
from common import WORK, machine, stats_ms, table, timeit_blocks
from graph_forms import BACKENDS, FORMS, RATIO_HEADERS, form_sessions, label, ratio_rows

MODELS = ("char", "word", "word-tied")
TIED_HIDDEN = 650  # Zaremba et al. 2014's medium model, tied as in Press & Wolf 2017


def random_checkpoint(name: str, vocab_size: int, cell: str, layers: int, hidden: int, embed: int, tied=False):
    import torch

    from rnnkit.runtime.tokenizer import SPECIALS, CharTokenizer, WhitespaceTokenizer, WordTokenizer
    from rnnkit.toolkit.lm import LMConfig
    from rnnkit.toolkit.train_lm import make_lm, save_lm_checkpoint

    if name == "char":
        tok = CharTokenizer(list(SPECIALS) + [chr(c) for c in range(32, 32 + vocab_size - 2)])
    elif tied:  # PTB's 10,000 types (<unk> and <eos> among them) + <pad>, as --tokenizer whitespace builds it
        tok = WhitespaceTokenizer(list(SPECIALS) + ["<eos>"] + [f"w{i}" for i in range(vocab_size - 2)])
    else:
        tok = WordTokenizer(list(SPECIALS) + [f"w{i}" for i in range(vocab_size - 2)])
    torch.manual_seed(0)
    config = LMConfig(vocab_size=tok.vocab_size, cell=cell, embed=embed, hidden=hidden, layers=layers, dropout=0.0)
    model = make_lm(config, tie_weights=tied).eval()
    return save_lm_checkpoint(WORK / f"lm-{name}.ckpt", model, tok, plot=False)


def gemv_floor(model):
    """The matrix-vector products one step cannot avoid, in numpy (BLAS sgemv): per layer
    W_ih @ x and W_hh @ h, then the head W @ h; no gate math.  Issue 3's yardstick."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    layers = model.config.layers
    w_ih = [np.ascontiguousarray(sd[f"rnn.weight_ih_l{i}"]) for i in range(layers)]
    w_hh = [np.ascontiguousarray(sd[f"rnn.weight_hh_l{i}"]) for i in range(layers)]
    head, emb = np.ascontiguousarray(sd["head.weight"]), sd["embedding.weight"]
    h = np.zeros(model.config.hidden, np.float32)

    def step():
        x = emb[5]
        for wi, wh in zip(w_ih, w_hh):
            g = wi @ x + wh @ h
            x = g[: h.shape[0]]
        return head @ x

    return step


def bench(name: str, ckpt_path, n_tokens: int, rounds: int, block: int) -> list[list]:
    import torch

    from rnnkit.runtime import load
    from rnnkit.toolkit.export_checkpoint import DevSet, export_checkpoint
    from rnnkit.toolkit.train_lm import load_lm_checkpoint

    ckpt = load_lm_checkpoint(ckpt_path)
    vocab = ckpt.tokenizer.vocab
    dev_text = ("".join(vocab[2:]) * 40) if ckpt.tokenizer.level == "char" else " ".join(vocab[2:2002])
    bundle = export_checkpoint(
        ckpt_path,
        WORK / f"lm-{name.replace(' ', '-')}.bundle",
        int8=True,
        min_agreement=0.0,
        dev=DevSet([dev_text], None, "benchmark text"),
        log=lambda m: None,
    )["path"]
    token = torch.tensor([[5]])
    state = [ckpt.model.initial_state(1)]

    def torch_step():
        with torch.no_grad():
            logits, state[0] = ckpt.model(token, None, state[0])
        return logits

    def torch_step_no_mkldnn():  # torch's oneDNN LSTM path is several times slower at B=1 on CPU
        with torch.backends.mkldnn.flags(enabled=False):
            return torch_step()

    runs = {
        "torch eager": (torch_step, None),
        "torch eager, mkldnn off": (torch_step_no_mkldnn, None),
        "numpy GEMV floor (same weights)": (gemv_floor(ckpt.model), None),
    }
    for backend in ("onnxruntime", "numba"):
        for int8 in (False, True):
            m = load(bundle, backend=backend, int8=int8, threads=1)
            m.warmup()
            s = m.spawn_state()
            runs[f"rnnkit {backend} {'int8' if int8 else 'fp32'}"] = (lambda s=s: s.feed_id(5), m)
    graph = load(bundle, backend="onnxruntime", threads=1).bundle.graph()
    sessions = form_sessions(graph, f"lm-{name.replace(' ', '-')}")
    for form in FORMS:
        for backend in BACKENDS:
            runs[label(form, backend)] = (graph_step(graph, sessions[form, backend], ckpt.config), None)
    times = timeit_blocks({name_: fn for name_, (fn, _) in runs.items()}, rounds=rounds, block=block)
    rows, base = [], None
    for label_, (fn, model) in runs.items():
        med, p99 = stats_ms(times[label_])
        base = base or med
        tps = ""
        if model is not None:  # end to end: greedy generate, sampling in numpy included
            start = time.perf_counter()
            n = sum(1 for _ in model.generate("w0 " if name != "char" else vocab[5], n_tokens, temperature=0))
            tps = f"{n / (time.perf_counter() - start):.0f}"
        else:
            tps = f"{1e3 / med:.0f} (step only)"
        rows.append([name, label_, med, p99, med / base, tps])
    print(f"  done {name}", file=sys.stderr)
    medians = {k: stats_ms(v) for k, v in times.items()}
    return rows, ckpt.config, ratio_rows(medians, [name])


def graph_step(graph, session, config):
    """One token (id 5) through a bare session of the step graph, its final state fed back as the
    next call's initial state (what ``State.feed_id`` does around the session)."""
    inputs = [v.name for v in graph.graph.input]
    outputs = [v.name for v in graph.graph.output]
    feeds = {"input_ids": np.array([[5]], np.int64), "sequence_lens": np.array([1], np.int32)}
    for n in inputs[2:]:
        feeds[n] = np.zeros((config.layers, 1, config.hidden), np.float32)

    def step():
        values = session.run(outputs, feeds)
        for out, value in zip(outputs[1:], values[1:]):
            feeds[out.replace("final_", "initial_")] = value
        return values[0]

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained char LM checkpoint (default: random weights)")
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--word-vocab", type=int, default=10000)
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)} (default: all)"
    )
    parser.add_argument("--tokens", type=int, default=300, help="tokens generated for the tokens/s column")
    parser.add_argument("--rounds", type=int, default=40, help="rounds of side-by-side timing (common.timeit_blocks)")
    parser.add_argument("--block", type=int, default=50, help="timed steps per runtime and round")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or set(models) - set(MODELS):
        parser.error(f"--models: give some of {', '.join(MODELS)}, got {args.models!r}")
    import torch

    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    todo = []
    if "char" in models:
        todo.append(
            ("char", args.checkpoint or random_checkpoint("char", 67, args.cell, args.layers, args.hidden, 128))
        )
    if "word" in models:
        word = random_checkpoint("word", args.word_vocab, args.cell, args.layers, args.hidden, 256)
        todo.append((f"word {args.word_vocab}", word))
    if "word-tied" in models:
        tied = random_checkpoint("word-tied", args.word_vocab, "lstm", 2, TIED_HIDDEN, TIED_HIDDEN, tied=True)
        todo.append((f"word {args.word_vocab} tied", tied))
    rows, configs, ratios = [], [], []
    for name, path in todo:
        r, c, q = bench(name, path, args.tokens, args.rounds, args.block)
        rows += r
        ratios += q
        configs.append(f"{name}: {c.cell.upper()} {c.layers}x{c.hidden}, embed {c.embed}, vocab {c.vocab_size}")
    print(f"LM generation step, B=1, state carried ({'; '.join(configs)}) -- {machine()}")
    print(table(["LM", "runtime", "median ms/token", "p99 ms", "x torch eager", "tokens/s (greedy generate)"], rows))
    print("\nPortable graph form vs sequence_lens form (same run, bare sessions, one token per call)")
    print(table(["LM", *RATIO_HEADERS], ratios))


if __name__ == "__main__":
    main()
