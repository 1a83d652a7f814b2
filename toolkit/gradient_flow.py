"""Gradient flow through time: ||dL/dh_t|| of every recurrent layer against the distance from the loss.

torch's fused ``nn.RNN``/``LSTM``/``GRU`` runs the whole recurrence inside one op, so the gradient
of its output tensor at step t holds only what reaches h_t from above, not what comes back from
h_{t+1}.  ``UnrolledRNN`` is a drop-in for such a module (same weights, copied into one
``RNNCell``/``LSTMCell``/``GRUCell`` per layer and direction; batch-first, padded or packed input,
the same outputs and final states) that steps through time in Python and keeps each state h_t as
a tensor of its own: after ``backward`` its ``.grad`` is the full dL/dh_t, through time and
through the layers above.  ``unrolled(model)`` swaps it in for every recurrent module of a model,
so a task's own ``forward`` and loss run unchanged.

``norms_by_distance`` turns those gradients into the mean ||dL/dh_t|| per distance from the step
where the direction's reading ends (``len - 1 - t`` in reading order: the last token for a forward
direction, the first for a reverse one).  ``rnnkit diagnose`` (``rnnkit.toolkit.cli_diagnose``) and
``scripts/gradient_study.py`` use it.

Imports torch; the CLI imports this module inside the command body only.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

CELLS = {nn.RNN: nn.RNNCell, nn.LSTM: nn.LSTMCell, nn.GRU: nn.GRUCell}


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first ``lengths[b]`` steps of ``x`` (B, T, ...), padding left in place
    (its own inverse)."""
    b, t = x.shape[:2]
    pos = torch.arange(t)[None, :].expand(b, t)
    idx = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)
    return x.gather(1, idx.reshape(b, t, *([1] * (x.dim() - 2))).expand_as(x))


class UnrolledRNN(nn.Module):
    """``rnn`` (a batch-first ``nn.RNN``/``LSTM``/``GRU``) stepped in Python.  After a forward,
    ``states[name]`` lists the per-step states h_t (each retaining its gradient) of layer k and
    direction, named like ``rnnkit.toolkit.gradients.param_groups``: ``l0``, ``l0_reverse``, ...
    in reading order (index t of a reverse direction is original position ``len - 1 - t``)."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        if type(rnn) not in CELLS or not rnn.batch_first or getattr(rnn, "proj_size", 0):
            raise ValueError(f"cannot unroll {rnn!r}: expected a batch-first nn.RNN/LSTM/GRU without projections")
        self.lstm = isinstance(rnn, nn.LSTM)
        self.layers, self.hidden = rnn.num_layers, rnn.hidden_size
        self.suffixes = ["", "_reverse"] if rnn.bidirectional else [""]
        extra = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}
        self.cells = nn.ModuleList()
        for k in range(self.layers):
            width = rnn.input_size if k == 0 else self.hidden * len(self.suffixes)
            for sfx in self.suffixes:
                cell = CELLS[type(rnn)](width, self.hidden, bias=rnn.bias, **extra)
                with torch.no_grad():
                    for name in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if rnn.bias else ()):
                        getattr(cell, name).copy_(getattr(rnn, f"{name}_l{k}{sfx}"))
                self.cells.append(cell)
        self.states: dict[str, list[torch.Tensor]] = {}
        self.lengths: torch.Tensor | None = None

    def forward(self, x, hx=None):
        packed = isinstance(x, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(x, batch_first=True)
        else:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
        batch, time = x.shape[:2]
        directions = len(self.suffixes)
        if hx is None:
            zeros = x.new_zeros(self.layers * directions, batch, self.hidden)
            hx = (zeros, zeros) if self.lstm else zeros
        h0, c0 = hx if self.lstm else (hx, None)
        keep = (torch.arange(time)[None, :] < lengths[:, None]).unsqueeze(-1)  # (B, T, 1)
        self.states, self.lengths = {}, lengths
        finals_h, finals_c, inp = [], [], x
        for k in range(self.layers):
            outs = []
            for d, sfx in enumerate(self.suffixes):
                cell, j = self.cells[k * directions + d], k * directions + d
                seq = inp if d == 0 else reverse_padded(inp, lengths)
                h = h0[j]
                c = c0[j] if self.lstm else None
                steps = []
                for t in range(time):
                    if self.lstm:
                        hn, cn = cell(seq[:, t], (h, c))
                        c = torch.where(keep[:, t], cn, c)
                    else:
                        hn = cell(seq[:, t], h)
                    h = torch.where(keep[:, t], hn, h)  # past a row's end its state stays put
                    if h.requires_grad:
                        h.retain_grad()
                    steps.append(h)
                self.states[f"l{k}{sfx}"] = steps
                y = torch.stack(steps, dim=1).masked_fill(~keep, 0.0)  # (B, T, H), 0 at padding
                outs.append(y if d == 0 else reverse_padded(y, lengths))
                finals_h.append(h)
                finals_c.append(c)
            inp = torch.cat(outs, dim=-1) if directions > 1 else outs[0]
        h_n = torch.stack(finals_h)
        state = (h_n, torch.stack(finals_c)) if self.lstm else h_n
        out = pack_padded_sequence(inp, lengths, batch_first=True, enforce_sorted=False) if packed else inp
        return out, state


@contextmanager
def unrolled(model: nn.Module):
    """Swap every recurrent module of ``model`` for an ``UnrolledRNN`` (yielded as {module name: it});
    the originals come back afterwards."""
    swapped = {}
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.RNNBase):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            swapped[name] = (parent, attr, mod, UnrolledRNN(mod))
    try:
        for parent, attr, _, new in swapped.values():
            setattr(parent, attr, new)
        yield {name: new for name, (_, _, _, new) in swapped.items()}
    finally:
        for parent, attr, old, _ in swapped.values():
            setattr(parent, attr, old)


def step_grads(rnns: dict[str, UnrolledRNN]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """After ``backward``: {"<module>.l<k>[_reverse]": (per-row, per-step ||dL/dh_t|| as (B, T), lengths)}
    in reading order (zero where no gradient reached h_t)."""
    out = {}
    for name, rnn in rnns.items():
        for key, steps in rnn.states.items():
            norms = torch.stack(
                [s.grad.norm(dim=-1) if s.grad is not None else s.new_zeros(s.shape[0]) for s in steps], dim=1
            )
            out[f"{name}.{key}"] = (norms.detach(), rnn.lengths)
    return out


def norms_by_distance(norms: torch.Tensor, lengths: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) norms in reading order -> (mean ||dL/dh|| at distance d = len - 1 - t for d = 0..T-1,
    rows that reach distance d).  Distance 0 is the step where the direction's reading ends."""
    b, t = norms.shape
    by_d = reverse_padded(norms.unsqueeze(-1), lengths).squeeze(-1)  # column d: distance d
    valid = torch.arange(t)[None, :] < lengths[:, None]
    count = valid.sum(0)
    mean = (by_d * valid).sum(0) / count.clamp(min=1)
    return mean.double().numpy(), count.numpy()


def measure_checkpoint(checkpoint, data_path, rows: int = 64, length: int = 100, seed: int = 0) -> dict:
    """``rnnkit diagnose``'s numbers for a classifier, tagger or language-model checkpoint on
    ``rows`` sequences of ``data_path`` (read the way that task trains) -> JSON-ready dict with
    ``layers``: {"rnn.l0": {"mean_norm": [...], "rows": [...]}, ...}, index = distance."""
    from rnnkit.runtime.errors import InputError, UnsupportedError
    from rnnkit.toolkit.checkpoint import checkpoint_task, load_any_checkpoint

    task = checkpoint_task(checkpoint)
    if task not in ("classify", "tag", "lm"):
        raise UnsupportedError(
            f"{checkpoint}: a {task!r} checkpoint -- diagnose measures classifier, tagger and language-model "
            "checkpoints (an encoder-decoder's gradient paths run through attention, not only through time)"
        )
    ck = load_any_checkpoint(checkpoint)
    model = ck.model.eval()  # no dropout: the gradient of the model as it predicts
    training = (ck.meta.get("training") or {}).get("config") or {}
    rng = np.random.default_rng(seed)
    ce = nn.functional.cross_entropy
    passes = []  # (forward callable -> loss, which directions the pass measures)
    if task == "classify":
        from rnnkit.runtime.tokenizer import pad_ids
        from rnnkit.toolkit.data import read_examples

        examples = read_examples(
            data_path,
            text_field=training.get("text_field", "text"),
            label_field=training.get("label_field", "label"),
            encoding=training.get("encoding", "utf-8"),
        )
        label_id = {lab: i for i, lab in enumerate(ck.labels)}
        usable = [(ck.tokenizer.encode(ex.text), ex) for ex in examples if ex.label in label_id]
        usable = [(ids, ex) for ids, ex in usable if 0 < len(ids) <= length]
        if not usable:
            raise InputError(f"{data_path}: no text with 1 to {length} tokens and one of the labels {ck.labels}")
        pick = rng.permutation(len(usable))[:rows]
        ids, lens = pad_ids([usable[i][0] for i in pick])
        target = torch.tensor([label_id[usable[i][1].label] for i in pick])
        x, lengths = torch.from_numpy(ids), torch.from_numpy(lens.astype(np.int64))
        passes.append((lambda: ce(model(x, lengths), target, reduction="sum"), None))
        loss = f"cross-entropy of the gold label (pooling {ck.config.pooling})"
    elif task == "tag":
        from rnnkit.toolkit.conll import read_tagged
        from rnnkit.toolkit.tagger import Encoded

        sentences = read_tagged(
            data_path, column=training.get("column", "upos"), encoding=training.get("encoding", "utf-8")
        )
        tag_id = {t: i for i, t in enumerate(ck.tags)}
        sentences = [s for s in sentences if 0 < len(s.tokens) <= length and all(t in tag_id for t in s.tags)]
        if not sentences:
            raise InputError(f"{data_path}: no sentence with 1 to {length} tokens whose tags are all in {ck.tags}")
        pick = rng.permutation(len(sentences))[:rows]
        data = Encoded([sentences[i] for i in pick], ck.tokenizer, ck.charset, tag_id, set())
        x, lengths, chars, tags = data.batch(np.arange(len(pick)))
        rows_ = torch.arange(len(pick))

        def at(pos):
            return lambda: ce(model(x, lengths, chars)[rows_, pos], tags[rows_, pos], reduction="sum")

        passes.append((at(lengths - 1), ""))
        if ck.config.bidirectional:
            passes.append((at(torch.zeros_like(lengths)), "_reverse"))
        loss = "cross-entropy of the last token's tag (forward), of the first token's (reverse)"
    else:
        from rnnkit.toolkit.train_lm import read_text

        ids = np.asarray(ck.tokenizer.encode(read_text(data_path, training.get("encoding", "utf-8"))), dtype=np.int64)
        if len(ids) < length + 1:
            raise InputError(f"{data_path}: {len(ids)} tokens, fewer than --length {length} + 1 -- give more text")
        starts = np.sort(rng.choice(len(ids) - length, size=min(rows, len(ids) - length), replace=False))
        window = torch.from_numpy(np.stack([ids[s : s + length + 1] for s in starts]))
        x, y = window[:, :-1], window[:, -1]
        passes.append((lambda: ce(model(x)[0][:, -1], y, reduction="sum"), None))
        loss = f"cross-entropy of the last token of {length}-token windows (state from zeros)"
    layers: dict[str, dict] = {}
    for run, direction in passes:
        model.zero_grad(set_to_none=True)
        with unrolled(model) as rnns:
            run().backward()
            grads = step_grads(rnns)
        for name, (norms, lens) in grads.items():
            if direction is not None and name.endswith("_reverse") != (direction == "_reverse"):
                continue
            mean, count = norms_by_distance(norms, lens)
            layers[name] = {"mean_norm": mean.tolist(), "rows": count.tolist()}
    model.zero_grad(set_to_none=True)
    order = [n for n in _group_order(model) if n in layers]
    return {
        "checkpoint": str(checkpoint),
        "data": str(data_path),
        "task": task,
        "cell": getattr(ck.config, "cell", None),
        "rows": int(len(x)),
        "loss": loss,
        "distance": "steps from where the loss reads the direction (0: the last token read)",
        "layers": {n: layers[n] for n in order},
    }


def _group_order(model: nn.Module) -> list[str]:
    from rnnkit.toolkit.gradients import param_groups

    return param_groups(model)[0]
