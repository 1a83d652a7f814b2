"""Interop matrix: each task's graphs on every ONNX consumer, fp32 and int8, on ragged padded batches.

For each graph (the MR demo classifier; a seeded bi-LSTM tagger with character features and a
seeded bi-GRU tagger; a seeded 2-layer char-LSTM language model step graph with a non-zero carried
state; the shipped G2P encoder and decoder) and each form of it:

    fp32 sequence_lens   the graph as ``--graph-form onnxruntime`` writes it
    fp32 portable        ``rnnkit.export.portable.make_portable`` of it (``--graph-form portable``)
    int8 onnxruntime     ``rnnkit.export.quantize`` of the sequence_lens graph (``--int8-format onnxruntime``)
    int8 portable        ``rnnkit.export.weight_int8`` of the portable graph (``--int8-format portable``)

it prints, per consumer (``rnnkit.export.consumers``: onnxruntime, numba, onnx.reference, OpenVINO,
tract), the max abs difference over every output and every batch from the torch-free reference --
the fp32 sequence_lens graph on onnxruntime (which export validates against torch) -- or the
consumer's refusal.  Batches: 3 and 8 rows, lengths 7, 33 and 200, row 0 full length, the others
random and padded (``rnnkit.export.validate.parity_feeds``; seq2seq: ``seq2seq_feeds``).  An fp32
cell within FP32 (per output, ``scaled`` by its largest value) is marked ``ok``; int8 cells show the
quantization error (what users see is the agreement below).

Then the agreement of the fp32 portable, int8 onnxruntime and int8 portable forms with fp32
sequence_lens on onnxruntime, per consumer: MR dev labels (the demo checkpoint's dev split) and greedy G2P outputs
of seeded test words (CMUdict split as ``scripts/g2p_cmudict.py`` makes it: seed 0, test = last 10%).

    python benchmarks/interop.py [--g2p-words 300] [--consumers onnxruntime,numba,reference,openvino,tract]

Needs torch (to build the demo, tagger and LM graphs) and the ``interop`` extra for OpenVINO and tract.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np
from common import machine

from rnnkit.export import consumers
from rnnkit.export.portable import make_portable
from rnnkit.export.quantize import quantize_graph
from rnnkit.export.validate import parity_feeds
from rnnkit.export.validate_seq2seq import seq2seq_feeds
from rnnkit.export.weight_int8 import quantize_weights
from rnnkit.runtime.manifest import LanguageModelIO
from rnnkit.runtime.tolerance import FP32

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
G2P_PATH = ROOT / "packages" / "rnnkit-g2p-cmudict" / "rnnkit_g2p_cmudict" / "g2p-cmudict"
MR_PATH = ROOT / "packages" / "rnnkit-demo-mr" / "rnnkit_demo_mr" / "mr_small"
BATCHES, LENGTHS = (3, 8), (7, 33, 200)
VARIANTS = ("fp32 sequence_lens", "fp32 portable", "int8 onnxruntime", "int8 portable")


def variants(fp32) -> dict:
    portable = make_portable(fp32)
    return {
        "fp32 sequence_lens": fp32,
        "fp32 portable": portable,
        "int8 onnxruntime": quantize_graph(fp32)[0],
        "int8 portable": quantize_weights(portable)[0],
    }


def only_inputs(model, feed: dict) -> dict:
    names = {i.name for i in model.graph.input}
    return {k: v for k, v in feed.items() if k in names}


# -- the graphs ------------------------------------------------------------------------------


def find_asset(name: str, group: str, fallback: Path) -> Path:
    from rnnkit.runtime.builtin import find

    return find(name, group) or fallback


def classifier_case():
    from rnnkit.export import task_classify
    from rnnkit.runtime.builtin import CHECKPOINTS
    from rnnkit.toolkit.checkpoint import load_checkpoint

    path = find_asset("mr_small", CHECKPOINTS, MR_PATH)
    ckpt = load_checkpoint(path)
    item = task_classify.from_module(ckpt.model, ckpt.tokenizer, ckpt.labels)
    graph = item.graphs[0].build(item.config, item.weights)
    feeds = list(parity_feeds(item.config.vocab_size, batch_sizes=BATCHES, lengths=LENGTHS))
    return f"MR classifier ({item.config.cell}, bi={item.config.bidirectional})", graph, feeds, (item, path)


def tagger_case(cell: str, chars: bool):
    import torch

    from rnnkit.export import task_tag
    from rnnkit.runtime.charset import CharVocab
    from rnnkit.runtime.tokenizer import WordTokenizer
    from rnnkit.toolkit.tagger import RecurrentTagger, TaggerConfig

    words = "the a cat dog sat ran on under mat rug quickly slowly big small red".split()
    tokenizer = WordTokenizer.build([" ".join(words)])
    charset = CharVocab.build(words) if chars else None
    torch.manual_seed(0)
    config = TaggerConfig(
        vocab_size=tokenizer.vocab_size,
        num_tags=12,
        cell=cell,
        embed=32,
        hidden=48,
        layers=2,
        bidirectional=True,
        dropout=0.0,
        char_vocab_size=charset.size if chars else 0,
        char_embed=8,
        char_filters=16,
    )
    model = RecurrentTagger(config).eval()
    item = task_tag.from_module(model, tokenizer, charset, [f"T{i}" for i in range(12)])
    graph = item.graphs[0].build(item.config, item.weights)
    feeds = list(parity_feeds(config.vocab_size, config.char_vocab_size, batch_sizes=BATCHES, lengths=LENGTHS))
    return f"tagger (seeded bi-{cell}, 2 layers{', chars' if chars else ''})", graph, feeds, None


def lm_case():
    import torch

    from rnnkit.export import task_lm
    from rnnkit.runtime.tokenizer import CharTokenizer
    from rnnkit.toolkit.lm import LMConfig, RecurrentLM

    tokenizer = CharTokenizer.build(["the quick brown fox jumps over the lazy dog. THE END!"])
    torch.manual_seed(0)
    config = LMConfig(vocab_size=tokenizer.vocab_size, cell="lstm", embed=32, hidden=128, layers=2, dropout=0.0)
    model = RecurrentLM(config).eval()
    item = task_lm.from_module(model, tokenizer, 0.02)
    graph = item.graphs[0].build(item.config, item.weights)
    state = {n: (2, 128) for n in LanguageModelIO.state_inputs("lstm")}
    feeds = list(parity_feeds(config.vocab_size, batch_sizes=BATCHES, lengths=LENGTHS, state_shapes=state))
    return "char LM step (seeded lstm, 2 layers, state carried)", graph, feeds, None


def g2p_cases():
    from rnnkit.runtime.builtin import BUNDLES
    from rnnkit.runtime.bundle import open_bundle

    bundle = open_bundle(find_asset("g2p-cmudict", BUNDLES, G2P_PATH))
    config = types.SimpleNamespace(**bundle.manifest["architecture"])
    return [
        (
            f"G2P {g} (shipped, lstm)",
            bundle.graph(False, g),
            list(seq2seq_feeds(g, config, batch_sizes=BATCHES, lengths=LENGTHS)),
            bundle,
        )
        for g in ("encoder", "decoder")
    ]


# -- the matrix ------------------------------------------------------------------------------


def cell(name: str, model, feeds: list[dict], expected: list[dict], fp32: bool) -> tuple[str, str]:
    """(text, first refusal or "") of one consumer x graph form over every feed: the worst difference over
    the feeds it ran, and the lengths it refused (a consumer may refuse only long inputs)."""
    worst, ok, ran, refused, why = 0.0, True, 0, [], ""
    for feed, exp in zip(feeds, expected):
        t = feed.get("input_ids", feed.get("source_ids"))
        try:
            out = consumers.run(name, model, only_inputs(model, feed))
        except consumers.ConsumerRefused as exc:
            refused.append(t.shape[1])
            why = why or f"T={t.shape[1]}: {exc.reason}"
            continue
        ran += 1
        for key, e in exp.items():
            diff = float(np.max(np.abs(out[key].astype(np.float64) - e))) if e.size else 0.0
            worst = max(worst, diff)
            ok &= FP32.scaled(e).close(out[key], e)
    if not ran:
        return "refused", why
    text = f"{worst:.1e}" + ((" ok" if ok else " X") if fp32 else "")
    if refused:
        text += f" (refused T={','.join(map(str, sorted(set(refused))))})"
    return text, why


def matrix(cases, names: list[str]) -> list[tuple[str, str]]:
    refusals: list[tuple[str, str]] = []
    head = f"| graph | form | {' | '.join(names)} |"
    print(head)
    print("|" + "---|" * (2 + len(names)))
    for label, fp32, feeds, _ in cases:
        forms = variants(fp32)
        expected = [consumers.run("onnxruntime", fp32, only_inputs(fp32, f)) for f in feeds]
        for form in VARIANTS:
            texts = []
            for name in names:
                text, why = cell(name, forms[form], feeds, expected, form.startswith("fp32"))
                if why:
                    refusals.append((f"{label} / {form} / {name}", why))
                texts.append(text)
            print(f"| {label} | {form} | {' | '.join(texts)} |", flush=True)
    return refusals


# -- agreement -------------------------------------------------------------------------------


def mr_agreement(item, path: Path, forms: dict, names: list[str]) -> None:
    from rnnkit.export.pipeline import DevSet
    from rnnkit.toolkit.devset import dev_set_for

    dev: DevSet = dev_set_for(path, path / "dev.tsv")
    feeds, _ = item.encode_dev(dev, 10_000)
    base = np.concatenate(
        [consumers.run("onnxruntime", forms["fp32 sequence_lens"], f)["logits"].argmax(-1) for f in feeds]
    )
    print(f"\nMR dev labels ({len(base)} texts of {path.name}/dev.tsv) equal to fp32 sequence_lens on onnxruntime:")
    print(f"| form | {' | '.join(names)} |\n|" + "---|" * (1 + len(names)))
    for form in ("fp32 portable", "int8 onnxruntime", "int8 portable"):
        row = []
        for name in names:
            try:
                pred = np.concatenate([consumers.run(name, forms[form], f)["logits"].argmax(-1) for f in feeds])
                row.append(f"{(pred == base).mean():.2%}")
            except consumers.ConsumerRefused as exc:
                row.append(f"refused ({exc.reason[:40]})")
        print(f"| {form} | {' | '.join(row)} |", flush=True)


def test_words(n: int, seed: int = 0) -> list[str]:
    from rnnkit.toolkit.pairs import group_pairs, group_split, read_cmudict

    pairs = read_cmudict(SHARED / "cmudict" / "cmudict.dict")
    test = [e.source for e in group_pairs(group_split(pairs, (0.85, 0.05, 0.10), 0)[2])]
    pick = np.sort(np.random.default_rng(seed).choice(len(test), min(n, len(test)), replace=False))
    return [test[i] for i in pick]


def g2p_agreement(bundle, forms: dict, words: list[str], names: list[str]) -> None:
    from rnnkit.runtime.decode import Steps, greedy, output_limit
    from rnnkit.runtime.model import length_buckets

    arch = bundle.manifest["architecture"]
    sources = [bundle.tokenizer.encode(w) for w in words]
    buckets = list(length_buckets([len(s) for s in sources], 64))

    def decode(name: str, encoder, decoder) -> list[list[int]]:
        steps = Steps(
            lambda f: consumers.run(name, encoder, only_inputs(encoder, f)),
            lambda f: consumers.run(name, decoder, only_inputs(decoder, f)),
            arch["cell"],
            arch["attention"],
            arch["bos_id"],
            arch["eos_id"],
            arch["target_vocab_size"],
        )
        out: list = [None] * len(sources)
        for rows in buckets:
            batch = [sources[r] for r in rows]
            for r, c in zip(rows, greedy(steps, batch, [output_limit(len(s)) for s in batch])):
                out[r] = c.ids
        return out

    base = decode("onnxruntime", forms["encoder"]["fp32 sequence_lens"], forms["decoder"]["fp32 sequence_lens"])
    print(f"\nG2P greedy outputs ({len(words)} seeded CMUdict test words) equal to fp32 sequence_lens on onnxruntime:")
    print(f"| form | {' | '.join(names)} |\n|" + "---|" * (1 + len(names)))
    for form in ("fp32 portable", "int8 onnxruntime", "int8 portable"):
        row = []
        for name in names:
            start = time.perf_counter()
            try:
                got = decode(name, forms["encoder"][form], forms["decoder"][form])
                row.append(f"{np.mean([a == b for a, b in zip(got, base)]):.2%}")
            except consumers.ConsumerRefused as exc:
                row.append(f"refused ({exc.reason[:40]})")
            print(f"#   {form} on {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        print(f"| {form} | {' | '.join(row)} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--consumers", default=",".join(consumers.CONSUMERS))
    ap.add_argument("--g2p-words", type=int, default=300, help="seeded CMUdict test words decoded per consumer")
    ap.add_argument("--skip-agreement", action="store_true")
    args = ap.parse_args()
    versions = consumers.available()
    names = [n for n in consumers.parse(args.consumers) if n in versions]
    print(f"# {machine()}")
    print(
        "# consumers: "
        + ", ".join(f"{n} {versions[n]}" for n in names)
        + (
            f"; not installed: {sorted(set(consumers.parse(args.consumers)) - set(names))}"
            if len(names) < len(consumers.parse(args.consumers))
            else ""
        )
    )
    print(
        f"# ragged padded batches: {BATCHES} rows x lengths {LENGTHS}; reference: fp32 sequence_lens graph on "
        f"onnxruntime; fp32 'ok' = within {FP32.name} (atol {FP32.atol:g}, rtol {FP32.rtol:g}, scaled per output)\n"
    )
    start = time.perf_counter()
    mr = classifier_case()
    g2p = g2p_cases()
    cases = [mr, tagger_case("lstm", True), tagger_case("gru", False), lm_case(), *g2p]
    refusals = matrix(cases, names)
    if refusals:
        print(
            "\nRefusals (the first batch each consumer refused, per graph and form; a cell with a number "
            "also ran other batches):"
        )
        for where, why in refusals:
            print(f"- {where}: {why}")
    if not args.skip_agreement:
        mr_agreement(*mr[3], variants(mr[1]), names)
        bundle = g2p[0][3]
        forms = {"encoder": variants(g2p[0][1]), "decoder": variants(g2p[1][1])}
        g2p_agreement(bundle, forms, test_words(args.g2p_words), names)
    print(f"\n# {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
