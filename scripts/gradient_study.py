"""Vanishing gradients measured: the adding problem (Hochreiter & Schmidhuber 1997) for RNN, LSTM and GRU.

Each input is T steps of (value, marker): values uniform in [0, 1], exactly two markers, one in
each half of the sequence; the target is the sum of the two marked values, read from the last
state.  Predicting 1.0 always gives MSE = 2/12 = 0.167 (the trivial baseline); a cell that
carries the marked values across the sequence goes far below it.

For T in --lengths, each cell (one layer, hidden sized to the same parameter budget) trains the
same --steps Adam steps on the same seeded batches, with and without gradient-norm clipping, and
is scored on a fixed test set.  At T = --flow-length, ||dL/dh_t|| against the distance from the
loss (``rnnkit.toolkit.gradient_flow``: the recurrence stepped in Python, each state's full
gradient kept) is measured on test inputs at initialisation and after training.

    .venv/bin/python scripts/gradient_study.py --out runs/gradient_study   # ~20 min, 1 thread

prints a markdown table and writes results.json, gradients-study-mse.png and
gradients-study-flow.png (``--img`` copies the plots for the docs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rnnkit.toolkit.gradient_flow import norms_by_distance, step_grads, unrolled
from rnnkit.toolkit.plots import pyplot, save_figure

BASELINE = 2.0 / 12.0  # MSE of always predicting E[sum] = 1.0: the variance of the sum of two U(0, 1)
LEARNED = 0.1  # a run "learned" the task when its test MSE is below this share of the baseline


def adding_batch(batch: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.rand(batch, length, generator=gen)
    half = length // 2
    first = torch.randint(0, half, (batch,), generator=gen)
    second = torch.randint(half, length, (batch,), generator=gen)
    markers = torch.zeros(batch, length)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), target


def params_of(cell: str, hidden: int) -> int:
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    return gates * (hidden * (2 + hidden) + 2 * hidden) + hidden + 1


def hidden_for(cell: str, budget: int) -> int:
    """The width whose parameter count (cell + linear head) is closest to ``budget``."""
    return min(range(1, 512), key=lambda h: abs(params_of(cell, h) - budget))


class Net(nn.Module):
    def __init__(self, cell: str, hidden: int):
        super().__init__()
        self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y[:, -1]).squeeze(-1)


@torch.no_grad()
def test_mse(model: Net, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(nn.functional.mse_loss(model(x), y))


def flow(model: Net, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Mean ||dL/dh_t|| over the rows of ``x`` at distance d = T - t from the loss (d = 0: h_T)."""
    model.zero_grad(set_to_none=True)
    with unrolled(model) as rnns:
        nn.functional.mse_loss(model(x), y).backward()
        ((norms, lengths),) = step_grads(rnns).values()
    model.zero_grad(set_to_none=True)
    return norms_by_distance(norms, lengths)[0]


def train(cell, hidden, length, clip, args, seed=0) -> tuple[Net, dict]:
    torch.manual_seed(seed)
    model = Net(cell, hidden)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    optim = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(1000 + length)  # every cell and clip setting: the same batches
    norms, clipped = [], 0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        x, y = adding_batch(args.batch, length, gen)
        loss = nn.functional.mse_loss(model(x), y)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        total = (
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            if clip
            else nn.utils.get_total_norm([p.grad for p in model.parameters()])
        )
        norms.append(float(total))
        clipped += bool(clip and float(total) > clip)
        if torch.isfinite(total):
            optim.step()
    return model, {
        "init": init,
        "seconds": time.perf_counter() - t0,
        "grad_norm_median": float(np.median(norms)),
        "clipped_share": clipped / args.steps,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lengths", type=int, nargs="+", default=[25, 50, 100, 200])
    p.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"])
    p.add_argument("--steps", type=int, default=1500, help="Adam steps per run (every cell and length)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="the clipped runs' max gradient norm")
    p.add_argument("--budget", type=int, default=4600, help="parameters per model (cell + head)")
    p.add_argument("--test", type=int, default=1000, help="test sequences per length")
    p.add_argument("--flow-length", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--img", type=Path, help="also copy the two plots here (docs/img)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    hidden = {c: hidden_for(c, args.budget) for c in args.cells}
    print(
        "hidden / parameters: " + ", ".join(f"{c} {h} / {params_of(c, h)}" for c, h in hidden.items()),
        flush=True,
    )
    results, flows = [], {}
    start = time.perf_counter()
    for length in args.lengths:
        x_test, y_test = adding_batch(args.test, length, torch.Generator().manual_seed(7 + length))
        for cell in args.cells:
            for clip in (args.clip, 0.0):
                model, info = train(cell, hidden[cell], length, clip, args)
                mse = test_mse(model, x_test, y_test)
                row = {
                    "cell": cell,
                    "length": length,
                    "clip": clip,
                    "hidden": hidden[cell],
                    "params": params_of(cell, hidden[cell]),
                    "test_mse": mse,
                    "learned": mse < LEARNED * BASELINE,
                    "grad_norm_median": info["grad_norm_median"],
                    "clipped_share": info["clipped_share"],
                    "seconds": round(info["seconds"], 1),
                }
                if length == args.flow_length and clip:
                    fx, fy = x_test[:256], y_test[:256]
                    trained = flow(model, fx, fy)
                    model.load_state_dict(info["init"])
                    at_init = flow(model, fx, fy)
                    flows[cell] = {"init": at_init.tolist(), "trained": trained.tolist()}
                    row["ratio_h1_hT_init"] = float(at_init[length - 1] / at_init[0])
                    row["ratio_h1_hT_trained"] = float(trained[length - 1] / trained[0])
                    row["ratio_mid_hT_init"] = float(at_init[length // 2] / at_init[0])
                    row["ratio_mid_hT_trained"] = float(trained[length // 2] / trained[0])
                results.append(row)
                print(
                    f"T={length:3d} {cell:4s} clip {clip:g}: test MSE {mse:.4f} ({mse / BASELINE:.2f} of baseline), "
                    f"median grad norm {info['grad_norm_median']:.3g}, clipped {100 * info['clipped_share']:.0f}% "
                    f"({info['seconds']:.0f}s; {time.perf_counter() - start:.0f}s total)",
                    flush=True,
                )
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "baseline_mse": BASELINE, "results": results}
    summary["flows"] = flows
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_atomic(args.out / "results.json", json.dumps(summary, indent=1))
    table = markdown(results, args)
    write_atomic(args.out / "table.md", table)
    print(table)
    plots(results, flows, args)
    print(f"total {summary['seconds']:.0f}s on {args.threads} thread(s); written to {args.out}", flush=True)
    return 0


def markdown(results: list[dict], args) -> str:
    cells = args.cells
    lines = [
        f"Test MSE on the adding problem (trivial baseline {BASELINE:.3f}; **bold**: below "
        f"{LEARNED:g} x baseline, learned), {args.steps} Adam steps of {args.batch}, lr {args.lr:g}; "
        f"clip {args.clip:g} / no clip",
        "",
        "| T | "
        + " | ".join(
            f"{c.upper()} (h={r['hidden']}, {r['params']} params)"
            for c in cells
            for r in [next(x for x in results if x["cell"] == c)]
        )
        + " |",
        "|---|" + "---|" * len(cells),
    ]
    for length in args.lengths:
        row = []
        for c in cells:
            pair = [
                next(r for r in results if (r["cell"], r["length"], r["clip"]) == (c, length, clip))
                for clip in (args.clip, 0.0)
            ]
            row.append(" / ".join(f"**{r['test_mse']:.3f}**" if r["learned"] else f"{r['test_mse']:.3f}" for r in pair))
        lines.append(f"| {length} | " + " | ".join(row) + " |")
    flow_rows = [r for r in results if "ratio_h1_hT_init" in r]
    if flow_rows:
        lines += [
            "",
            f"||dL/dh_1|| / ||dL/dh_T|| at T = {args.flow_length} (mean over 256 test sequences, clipped runs)",
            "",
            "| cell | h_1 / h_T at init | h_1 / h_T trained | h_T/2 / h_T at init | h_T/2 / h_T trained |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['cell'].upper()} | {r['ratio_h1_hT_init']:.2e} | {r['ratio_h1_hT_trained']:.2e} | "
            f"{r['ratio_mid_hT_init']:.2e} | {r['ratio_mid_hT_trained']:.2e} |"
            for r in flow_rows
        ]
    return "\n".join(lines) + "\n"


def plots(results: list[dict], flows: dict, args) -> None:
    plt = pyplot()
    colors = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for cell in args.cells:
        for clip, style in ((args.clip, "o-"), (0.0, "s--")):
            rows = [r for r in results if r["cell"] == cell and r["clip"] == clip]
            label = f"{cell.upper()} {'clip ' + format(clip, 'g') if clip else 'no clip'}"
            ax.plot(
                [r["length"] for r in rows], [r["test_mse"] for r in rows], style, color=colors.get(cell), label=label
            )
    ax.axhline(BASELINE, color="gray", linestyle=":", label="predict 1.0 (baseline)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(args.lengths, [str(t) for t in args.lengths])
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("test MSE")
    ax.set_title(f"adding problem, {args.steps} steps, equal parameter budget", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, args.out / "gradients-study-mse.png")
    if flows:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for cell, f in flows.items():
            d = np.arange(len(f["init"]))
            ax.plot(d, f["init"], ":", color=colors.get(cell), label=f"{cell.upper()} at init")
            ax.plot(d, f["trained"], "-", color=colors.get(cell), label=f"{cell.upper()} trained")
        ax.set_yscale("log")
        ax.set_xlabel("distance from the loss (T - t)")
        ax.set_ylabel("mean ||dL/dh_t||")
        ax.set_title(f"gradient flow through time, adding problem T = {args.flow_length}", fontsize=9)
        ax.legend(fontsize=7)
        save_figure(fig, args.out / "gradients-study-flow.png")
    if args.img:
        args.img.mkdir(parents=True, exist_ok=True)
        for name in ("gradients-study-mse.png", "gradients-study-flow.png"):
            if (args.out / name).exists():
                write_atomic(args.img / name, (args.out / name).read_bytes())


def write_atomic(path: Path, data) -> None:
    """Write to a temporary sibling, then rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
