"""Score an exported seq2seq bundle on a held-out split: greedy and beam search, fp32 and int8.

Decodes every source of ``--split`` (a ``source<TAB>target`` file with one line per reference, as
``scripts/g2p_cmudict.py`` / ``scripts/tatoeba.py`` write them) with the bundle through the
runtime (``Model.translate``; onnxruntime, 1 thread), scores the outputs against all references of
each source with ``rnnkit.toolkit.seq_metrics.evaluate_outputs`` (PER/WER for G2P, corpus BLEU for
translation: sacrebleu's defaults, 13a tokenization, exp smoothing, on lower-cased tokenized text
joined by spaces, the target tokenizer's form, with references put in the same form), and checks
that the numba backend gives the same outputs on the first ``--parity`` sources.  Beam size and
length penalty are fixed in advance (beam 5, alpha 0.6), never tuned on this split.

    python scripts/seq2seq_eval.py runs/g2p-best/bundle --split runs/g2p-best/test.tsv
    python scripts/seq2seq_eval.py runs/tatoeba-dot/bundle --split runs/tatoeba-dot/test.tsv
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--split", required=True)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.6)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--parity", type=int, default=300, help="sources decoded on numba too (0: skip)")
    ap.add_argument("--out", help="write the report JSON here too")
    args = ap.parse_args()

    from rnnkit.runtime import load
    from rnnkit.toolkit.pairs import group_pairs, read_pairs
    from rnnkit.toolkit.seq_metrics import evaluate_outputs
    from rnnkit.toolkit.train_seq2seq import reference_form

    examples = group_pairs(read_pairs(args.split, "tsv"))
    sources = [e.source for e in examples]
    report = {
        "bundle": args.bundle,
        "split": args.split,
        "sources": len(sources),
        "beam": args.beam,
        "alpha": args.alpha,
        "results": {},
        "numba_parity": {},
    }
    refs = None
    for int8 in (False, True):
        model = load(args.bundle, backend="onnxruntime", int8=int8, threads=1)
        other = load(args.bundle, backend="numba", int8=int8, threads=1) if args.parity else None
        if refs is None:
            target = model.bundle.target_tokenizer
            refs = [[reference_form(target, r) for r in e.references] for e in examples]
        for beam in (1, args.beam):
            start = time.perf_counter()
            outputs = model.translate(sources, beam=beam, alpha=args.alpha, batch_size=args.batch_size)
            seconds = time.perf_counter() - start
            scores = evaluate_outputs(outputs, refs)
            key = f"{'int8' if int8 else 'fp32'} {'greedy' if beam == 1 else f'beam {beam}'}"
            report["results"][key] = {
                "PER": round(100 * scores["token_error_rate"], 2),
                "WER": round(100 * scores["sequence_error_rate"], 2),
                "BLEU": round(scores["bleu"], 2),
                "seconds": round(seconds, 1),
            }
            print(key, report["results"][key], flush=True)
            if other is not None:
                same = other.translate(sources[: args.parity], beam=beam, alpha=args.alpha, batch_size=args.batch_size)
                agree = sum(a == b for a, b in zip(same, outputs[: args.parity]))
                report["numba_parity"][key] = f"{agree}/{len(same)} identical outputs"
                print("  numba:", report["numba_parity"][key], flush=True)
    text = json.dumps(report, indent=1)
    if args.out:
        from rnnkit.runtime.io import atomic_writer

        with atomic_writer(args.out) as handle:
            handle.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
