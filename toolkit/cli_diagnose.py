"""``rnnkit diagnose CKPT --data FILE``: how far back in time the trained model's gradient reaches.

Runs a batch of real inputs through the checkpoint's model with its recurrent modules unrolled
(``rnnkit.toolkit.gradient_flow``), back-propagates one loss, and reports the mean ||dL/dh_t|| of
every recurrent layer and direction against the distance from the step where the loss reads that
direction (distance 0).  The loss, per task:

* classifier: its own cross-entropy on the gold labels (with ``--pooling last`` it reads the state
  at each text's end; with mean/max/attention pooling every step also has a direct path);
* tagger: the cross-entropy of the last token's tag (forward directions) and, in a second pass, of
  the first token's (reverse directions: their reading ends there);
* language model: the cross-entropy of the last token of each ``--length`` window.

Writes ``gradient_flow.json`` (the numbers) and ``gradient_flow.png`` (log scale) to ``--out``
(default: the checkpoint folder), each atomically.  Imports torch inside the command only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

FLOW_JSON, FLOW_PNG = "gradient_flow.json", "gradient_flow.png"


@click.command("diagnose")
@click.argument("checkpoint", type=click.Path())
@click.option("--data", "data_path", required=True, type=click.Path(), help="Labelled data in the training format.")
@click.option("--out", "out_dir", type=click.Path(), help="Folder for gradient_flow.json/.png. Default: CHECKPOINT.")
@click.option("--rows", type=click.IntRange(1, 4096), default=64, show_default=True, help="Sequences in the batch.")
@click.option(
    "--length",
    type=click.IntRange(2, 100000),
    default=100,
    show_default=True,
    help="Language models: tokens per window; other tasks: skip longer sequences.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Which rows are sampled from --data.")
def diagnose(checkpoint, data_path, out_dir, rows, length, seed):
    """Gradient flow through time: ||dL/dh_t|| per recurrent layer vs distance from the loss."""
    from .gradient_flow import measure_checkpoint

    result = measure_checkpoint(checkpoint, data_path, rows=rows, length=length, seed=seed)
    out = Path(out_dir or checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_text(out / FLOW_JSON, json.dumps(result, indent=1) + "\n")
    from .plots import plot_gradient_flow

    plot_gradient_flow(result, out / FLOW_PNG)
    click.echo(f"{result['task']} checkpoint, {result['rows']} sequences of {data_path}; loss: {result['loss']}")
    for name, layer in result["layers"].items():
        norms = layer["mean_norm"]
        far = [d for d in (1, 5, 10, 25, 50, 100, 200) if d < len(norms) and layer["rows"][d] > 0]
        ratios = ", ".join(f"x{norms[d] / norms[0]:.2g} at distance {d}" for d in far if norms[0])
        click.echo(f"  {name}: ||dL/dh|| {norms[0]:.3g} at the loss" + (f"; {ratios}" if ratios else ""))
    click.echo(f"written: {out / FLOW_JSON}, {out / FLOW_PNG}")


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
