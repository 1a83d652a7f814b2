"""The language-model task on the shared export pipeline: its ``Exportable``, torch oracle and dev metrics.

The oracle is ``RecurrentLM.forward(ids, lengths, state)`` on the parity feeds (random non-zero
initial states included), returning ``(logits, final_h[, final_c])`` like the graph.  Dev metrics
run the exported graph the way the runtime does, carrying ``final_* -> initial_*`` from one
window to the next over ``DEV_STREAMS`` contiguous streams of the dev text, and report the mean
next-token loss in nats (per character at char level) for fp32 and int8, their difference, and
int8's top-1 agreement with fp32.  The int8 gate is the loss: an export fails when int8's dev
loss exceeds fp32's by more than ``max_loss_delta`` nats/token (``--max-loss-delta``, default 0.02).
Top-1 agreement is reported, not gated: next-character distributions are often nearly flat
between two candidates, so a 98.8% agreement (measured, tiny-shakespeare char LM) comes with an
unchanged dev loss.
"""

from __future__ import annotations

import math

import numpy as np

from ..runtime.manifest import LanguageModelIO as IO
from .exporter import DevSet, Exportable, Forward, single_graph
from .validate import outputs

DEV_STREAMS, DEV_WINDOW = 16, 256
INT8_PARITY_LENGTHS = (1, 7, 33)  # see rnnkit.export.validate: longer int8 runs are gated by the dev loss
MAX_DEV_TOKENS = 200_000  # bounds export time; tiny-shakespeare's dev split is 111,540 chars


def lm_exportable(config, weights: dict[str, np.ndarray], tokenizer, module, max_loss_delta: float = 0.02
                  ) -> Exportable:
    from .graph_lm import build_lm_graph, check_lm_graph, state_contract

    def dev_metrics(forwards: dict[str, dict[str, Forward]], dev: DevSet, max_length: int) -> dict:
        return lm_dev_metrics({variant: graphs["model"] for variant, graphs in forwards.items()}, tokenizer, dev,
                              config)

    def int8_gate(metrics: dict) -> str | None:
        delta = metrics.get("int8_loss_delta")
        if delta is not None and delta > max_loss_delta:
            return (f"int8 dev loss {metrics['int8_loss']:.4f} is {delta:.4f} nats/token above fp32's "
                    f"{metrics['fp32_loss']:.4f} on {metrics['source']}, more than --max-loss-delta {max_loss_delta}")
        return None

    shapes = {name: (config.layers, config.hidden) for name in IO.state_inputs(config.cell)}
    entries = {"tokenizer": tokenizer.to_dict(), "labels": [], "state": state_contract(config)}
    graphs = single_graph(build_lm_graph, check_lm_graph, torch_lm_forward(module), config.vocab_size,
                          state_shapes=shapes, int8_lengths=INT8_PARITY_LENGTHS)
    return Exportable("lm", config, weights, graphs, entries=entries, unit="tokens", dev_metrics=dev_metrics,
                      int8_gate=int8_gate)


def torch_lm_forward(module) -> Forward:
    import torch

    module.eval()

    def forward(feed: dict):
        ids = torch.from_numpy(feed[IO.input_ids])
        lens = torch.from_numpy(feed[IO.sequence_lens].astype(np.int64))
        state = tuple(torch.from_numpy(feed[n]) for n in IO.state_inputs(module.config.cell))
        with torch.no_grad():
            logits, final = module(ids, lens, state)
        return (logits.numpy().astype(np.float32), *(s.numpy().astype(np.float32) for s in final))

    return forward


def lm_dev_metrics(forwards: dict[str, Forward], tokenizer, dev: DevSet, config) -> dict:
    text = "".join(dev.items)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)[:MAX_DEV_TOKENS]
    rows = min(DEV_STREAMS, max(1, len(ids) // 2))
    n = len(ids) // rows
    data = ids[: rows * n].reshape(rows, n)
    result = {"source": dev.source, "examples": int(rows * (n - 1)), "unit": "tokens",
              "level": tokenizer.level}
    argmax = {}
    for name, forward in forwards.items():
        state = {s: np.zeros((config.layers, rows, config.hidden), np.float32) for s in IO.state_inputs(config.cell)}
        nll, picks = 0.0, []
        for start in range(0, n - 1, DEV_WINDOW):
            x = data[:, start:min(start + DEV_WINDOW, n - 1)]
            y = data[:, start + 1:start + 1 + x.shape[1]]
            feed = {IO.input_ids: np.ascontiguousarray(x), IO.sequence_lens: np.full(rows, x.shape[1], np.int32),
                    **state}
            out = outputs(forward(feed))
            z = out[0].astype(np.float64)                                        # (B, t, V)
            z -= z.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            nll -= np.take_along_axis(logp, y[..., None], -1).sum()
            picks.append(out[0].argmax(-1))
            state = {IO.STATE_PAIRS[o]: v for o, v in zip(IO.state_outputs(config.cell), out[1:])}
        loss = nll / max(1, rows * (n - 1))
        result[f"{name}_loss"] = round(float(loss), 5)
        result[f"{name}_perplexity"] = round(math.exp(min(loss, 700)), 4)
        argmax[name] = np.concatenate(picks, axis=1)
    if "int8" in argmax:
        result["int8_loss_delta"] = round(result["int8_loss"] - result["fp32_loss"], 5)
        result["int8_agreement"] = round(float((argmax["int8"] == argmax["fp32"]).mean()), 6)
    return result
