"""MR int8 table: export each checkpoint of a sweep with --int8 and print dev accuracy fp32 vs int8.

    python scripts/mr_sweep.py --out-root runs/mr_sweep      # trains the checkpoints (see its docstring)
    python benchmarks/mr_int8.py runs/mr_sweep                # this table

The dev set is each checkpoint's own held-out split (seeded 90/10 of the MR folder), found
through the checkpoint's training record exactly as `rnnkit export` finds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import common  # noqa: F401
from common import WORK, table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="folder of checkpoints (one sub-folder each)")
    args = parser.parse_args(argv)
    from rnnkit.toolkit.devset import dev_set_for
    from rnnkit.toolkit.export_checkpoint import export_checkpoint

    rows = []
    for ckpt in sorted(p for p in args.sweep.iterdir() if (p / "config.json").is_file()):
        dev = dev_set_for(ckpt)
        if dev is None:
            print(f"  skip {ckpt.name}: its dev data is not on this machine", file=sys.stderr)
            continue
        out = export_checkpoint(
            ckpt, WORK / f"mr_{ckpt.name}.bundle", int8=True, dev=dev, min_agreement=0.0, log=lambda m: None
        )
        m = out["manifest"]
        d, a = m["validation"]["dev"], m["architecture"]
        files = m["files"]
        rows.append(
            [
                ckpt.name,
                f"{'bi' if a['bidirectional'] else ''}{a['cell']} {a['pooling']} {a['embed']}/{a['hidden']}",
                100 * d["fp32_accuracy"],
                100 * d["int8_accuracy"],
                d["int8_accuracy_drop_pt"],
                100 * d["int8_agreement"],
                files["model.onnx"]["bytes"] / 1e6,
                files["model.int8.onnx"]["bytes"] / 1e6,
                m["quantization"]["size_ratio"],
            ]
        )
        print(f"  done {ckpt.name}", file=sys.stderr)
    print(f"MR dev ({rows and json.dumps(d['source'])}, {d['examples']} texts): fp32 vs int8 bundles")
    print(
        table(
            [
                "checkpoint",
                "model",
                "fp32 acc %",
                "int8 acc %",
                "drop pt",
                "agreement %",
                "fp32 MB",
                "int8 MB",
                "int8/fp32 size",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
