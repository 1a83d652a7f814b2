"""The numba backend before and after the explicit passes (issue 24), side by side, 1 thread.

Two source trees of ``rnnkit.runtime``: this checkout ("after") and an older one ("before", e.g.
``git archive HEAD | tar -x -C /tmp/before``).  Each is timed in its own worker process, the two
alternating for ``--rounds`` rounds (the order flips per round), on the same ONNX files and feeds,
through ``NumbaSession`` only (so nothing but the numba backend differs):

* classifier: Emb(20000,128) -> LSTM/GRU(256) -> Linear(2), T=64, B=1 and 32 (``classifier_latency.py``'s
  bundles, exported here with this checkout's exporter);
* LM step: word LM, LSTM 1x256, 10,000 words, one token at B=1 with the state carried
  (``lm_step.py --layers 1 --hidden 256``'s model);
* G2P: the shipped g2p-cmudict bundle, greedy decoding (encoder once, decoder step by step) of
  256 lexicon words as one batch (``g2p_speed.py``'s batch) and of 20 words one at a time;
* first compile: a fresh numba cache, load + first call of the LM step, the classifier (LSTM) and the
  G2P encoder + decoder, in one process per tree (``--cold``; the slowest part, run once).

    python benchmarks/numba_passes.py --before /tmp/before [--rounds 4] [--cold]

Prints a markdown table: per row the median of the rounds' medians, before / after and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import common  # noqa: F401  (pins 1 thread before numpy/numba load)
import numpy as np
from common import ROOT, WORK, machine, table

from rnnkit.runtime.builtin import find

HERE = Path(__file__).resolve().parent
G2P = find("g2p-cmudict")  # the rnnkit-g2p-cmudict package (the `g2p` extra)


# --------------------------------------------------------------------- preparation (this checkout)
def prepare() -> dict:
    """The ONNX files and feeds both trees run, made once (torch and this checkout's exporter)."""
    sys.path.insert(0, str(HERE))
    import classifier_latency
    import lm_step

    from rnnkit.toolkit.export_checkpoint import export_checkpoint

    rng = np.random.default_rng(0)
    files: dict = {}
    for cell in ("lstm", "gru"):
        bundle = WORK / f"{cell}256.bundle"
        if not (bundle / "model.onnx").exists():
            classifier_latency.make_bundle(cell, 256)
        files[f"classifier {cell.upper()}-256"] = str(bundle / "model.onnx")
    lm = WORK / "lm-word-1x256.bundle"
    if not (lm / "model.onnx").exists():
        ckpt = lm_step.random_checkpoint("word", 10000, "lstm", 1, 256, 256)
        export_checkpoint(ckpt, lm, int8=False, min_agreement=0.0, log=lambda m: None)
    files["lm"] = str(lm / "model.onnx")
    manifest = json.loads((G2P / "manifest.json").read_text())
    vocab = {c: i for i, c in enumerate(manifest["source_tokenizer"]["vocab"])}
    words = [line.split("\t")[0] for line in (G2P / "lexicon.tsv").read_text().splitlines()]
    words = [words[i] for i in rng.choice(len(words), 256, replace=False)]
    ids = [[vocab.get(c, 1) for c in unicodedata.normalize("NFC", w.lower())] for w in words]
    return {
        "files": files,
        "g2p": str(G2P),
        "g2p_ids": ids,
        "bos": manifest["architecture"]["bos_id"],
        "eos": manifest["architecture"]["eos_id"],
    }


def tree_path(src: Path) -> str:
    """A folder in which ``import rnnkit.runtime`` finds ``src``/runtime (placed first on sys.path)."""
    shim = Path(tempfile.mkdtemp(prefix="rnnkit-tree-")) / "rnnkit"
    shim.mkdir()
    (shim / "__init__.py").write_text("")
    (shim / "runtime").symlink_to(src.resolve() / "runtime")
    return str(shim.parent)


# --------------------------------------------------------------------- worker (one tree)
def _pad(rows):
    lens = np.array([len(r) for r in rows], np.int32)
    ids = np.zeros((len(rows), int(lens.max())), np.int64)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = r
    return ids, lens


def _greedy(enc, dec, rows, bos, eos, steps=30):
    ids, lens = _pad(rows)
    memory, keys, h, c = enc.run(None, {"source_ids": ids, "source_lens": lens})
    tok = np.full((len(rows), 1), bos, np.int64)
    done = np.zeros(len(rows), bool)
    for _ in range(steps):
        logp, h, c, _ = dec.run(
            None,
            {"input_ids": tok, "initial_h": h, "initial_c": c, "memory": memory, "keys": keys, "source_lens": lens},
        )
        tok = logp[:, -1].argmax(-1)[:, None].astype(np.int64)
        done |= tok[:, 0] == eos
        if done.all():
            break


def _median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def worker(job: dict, cold: bool) -> dict:
    from rnnkit.runtime.numba_backend.graph import NumbaSession

    out = {}
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    lm = NumbaSession(job["files"]["lm"], threads=1)
    state = {
        i.name: np.zeros((i.shape[0], 1, i.shape[2]), np.float32)
        for i in lm.get_inputs()
        if i.name.startswith("initial_")
    }
    lm_feeds = {"input_ids": np.array([[5]], np.int64), "sequence_lens": np.array([1], np.int32), **state}
    lm.run(None, lm_feeds)
    if cold:
        out["first compile: LM step (s)"] = time.perf_counter() - t0
    else:
        names = lm.output_names

        def step():
            res = lm.run(None, lm_feeds)
            for name, v in zip(names, res):
                if name.startswith("final_"):
                    lm_feeds["initial_" + name[6:]] = v

        out["LM step 1x256 word, B=1 (ms)"] = _median_ms(step, 3000)
    for name, path in job["files"].items():
        if not name.startswith("classifier") or cold and "GRU" in name:
            continue
        t0 = time.perf_counter()
        s = NumbaSession(path, threads=1)
        for B in (1,) if cold else (1, 32):
            feeds = {"input_ids": rng.integers(4, 20000, (B, 64)), "sequence_lens": np.full(B, 64, np.int32)}
            if cold:
                s.run(None, feeds)
                out[f"first compile: {name} (s)"] = time.perf_counter() - t0
            else:
                out[f"{name}, T=64, B={B} (ms)"] = _median_ms(lambda: s.run(None, feeds), 300 if B == 1 else 40)
    t0 = time.perf_counter()
    enc = NumbaSession(Path(job["g2p"]) / "encoder.onnx", threads=1)
    dec = NumbaSession(Path(job["g2p"]) / "decoder.onnx", threads=1)
    rows = job["g2p_ids"]
    _greedy(enc, dec, rows[:1], job["bos"], job["eos"])
    if cold:
        out["first compile: G2P encoder + decoder (s)"] = time.perf_counter() - t0
        return out
    out["G2P greedy, 256 words in one batch (ms)"] = _median_ms(
        lambda: _greedy(enc, dec, rows, job["bos"], job["eos"]), 5
    )
    out["G2P greedy, 20 words one at a time (ms)"] = _median_ms(
        lambda: [_greedy(enc, dec, [r], job["bos"], job["eos"]) for r in rows[:20]], 5
    )
    return out


# --------------------------------------------------------------------- driver
def run_worker(tree: str, job_file: str, cold: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    env.pop("NUMBA_CACHE_DIR", None)  # set by this process's rnnkit import: each tree keys its own cache
    if cold:
        env["RNNKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="rnnkit-cold-cache-")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", job_file] + (["--cold"] if cold else [])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"worker for {tree} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="/tmp/before", help="the older source tree (a checkout or git archive)")
    ap.add_argument("--rounds", type=int, default=4, help="alternating worker processes per tree")
    ap.add_argument("--cold", action="store_true", help="also time the first compile with an empty numba cache")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(Path(args.worker).read_text()), args.cold)))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    job_file = WORK / "numba_passes_job.json"
    job_file.write_text(json.dumps(prepare()))
    trees = {"before": tree_path(Path(args.before)), "after": tree_path(ROOT)}
    results: dict = {"before": [], "after": []}
    for name in trees:  # compiles (or loads) each tree's kernels into its cache: not timed
        run_worker(trees[name], str(job_file), cold=False)
    for r in range(args.rounds):
        for name in ["before", "after"] if r % 2 == 0 else ["after", "before"]:
            results[name].append(run_worker(trees[name], str(job_file), cold=False))
    if args.cold:  # an empty cache per run, alternating too: one cold run is as noisy as one warm one
        for r in range(args.rounds):
            for name in ["before", "after"] if r % 2 == 0 else ["after", "before"]:
                results[name].append(run_worker(trees[name], str(job_file), cold=True))
    rows = []
    for key in results["after"][0] | (results["after"][-1] if args.cold else {}):  # warm keys, then cold
        b = float(np.median([x[key] for x in results["before"] if key in x]))
        a = float(np.median([x[key] for x in results["after"] if key in x]))
        rows.append([key, b, a, a / b])
    print(f"# numba backend before ({args.before}) vs after ({ROOT}); {machine()}; {args.rounds} rounds\n")
    print(table(["what", "before", "after", "after/before"], rows))


if __name__ == "__main__":
    main()
