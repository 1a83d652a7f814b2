"""Gradient norms of a training run: recorded every optimizer step, summarised per epoch, guarded.

``GradientRecorder`` replaces the loop's ``clip_grad_norm_`` call.  It computes each parameter's
gradient norm the way ``torch.nn.utils.clip_grad_norm_`` does (``torch._foreach_norm``, then the
norm of the stacked norms), clips with ``clip_grads_with_norm_`` (clip_grad_norm_'s own second
half), so training takes exactly the steps it took without recording, and keeps per step:

* ``norm``: the global L2 norm before clipping (clip_grad_norm_'s return value; also with clip 0),
* ``clipped``: whether clipping scaled the step down (``norm > clip > 0``),
* ``groups``: the norm per parameter group (``param_groups``: embedding, each recurrent layer and
  direction, attention, head, ...), read from the parameter names, so every task gets it for free.

A non-finite loss or gradient either stops the run (``NonFiniteError``, one line naming the epoch,
step and group, and what to try) or, with ``on_nonfinite="skip"``, drops that step (no optimizer
update, recorded with ``skipped``).  The history goes to the checkpoint as ``gradients.jsonl``
(``rnnkit.toolkit.checkpoint.write_checkpoint``) and is drawn as ``gradients.png``
(``rnnkit.toolkit.plots.plot_gradients``).

Imports torch; the CLI imports this module inside the command body only.
"""

from __future__ import annotations

import json
import math
import statistics

import torch
from torch import nn

from rnnkit.runtime.errors import InputError
from rnnkit.toolkit.configs import NONFINITE

GRADIENTS_FILE = "gradients.jsonl"  # one JSON object per optimizer step, beside config.json
GRADIENTS_PNG = "gradients.png"
STEPS_KEY = "gradient_steps"  # training record key whose list write_checkpoint moves to GRADIENTS_FILE
# warn when the first recurrent layer's median gradient norm over an epoch is below this share of
# the head's: three orders of magnitude is far outside what trained-from-scratch models here show
# (docs/gradients.md: 0.33-0.91 in an MR classifier and a char LM), so that layer barely learns
VANISHING_RATIO = 1e-3


class NonFiniteError(InputError):
    """Training produced a NaN / infinite loss or gradient (the run's options cannot train as given)."""


def param_groups(model: nn.Module) -> tuple[list[str], list[int]]:
    """-> (group names in first-seen order, group index of each of ``model.parameters()``).

    A parameter of a recurrent module (``nn.RNN``/``LSTM``/``GRU``) belongs to ``<module>.l<k>``
    or ``<module>.l<k>_reverse`` (its layer and direction, from torch's ``weight_ih_l0_reverse``
    naming); any other parameter to its top-level module (``embedding``, ``attention``, ``head``,
    ``char_conv``, ...)."""
    owner = {}
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            owner[id(p)] = (mod_name, mod, p_name)
    names: list[str] = []
    index: list[int] = []
    for full, p in model.named_parameters():
        mod_name, mod, p_name = owner[id(p)]
        if isinstance(mod, nn.RNNBase):
            suffix = p_name.rsplit("_l", 1)[1]  # "0" or "0_reverse"
            group = f"{mod_name}.l{suffix}"
        else:
            group = full.split(".", 1)[0] if "." in full else full
        if group not in names:
            names.append(group)
        index.append(names.index(group))
    return names, index


def first_recurrent(groups: list[str]) -> str | None:
    """The group of the first recurrent layer (forward direction) in parameter order, if any."""
    return next((g for g in groups if g.rsplit(".", 1)[-1] == "l0"), None)


class GradientRecorder:
    """Clip (``clip`` > 0) and record the gradients of ``model`` after each ``loss.backward()``."""

    def __init__(self, model: nn.Module, clip: float, on_nonfinite: str = "stop"):
        if on_nonfinite not in NONFINITE:
            raise InputError(f"on_nonfinite must be one of {list(NONFINITE)}, got {on_nonfinite!r}")
        self.params = list(model.parameters())
        self.groups, index = param_groups(model)
        self.index = torch.tensor(index, dtype=torch.long)
        self.clip = float(clip)
        self.on_nonfinite = on_nonfinite
        self.history: list[dict] = []  # one record per optimizer step, the whole run (resume included)

    @torch.no_grad()
    def record(self, epoch: int, step: int, loss: torch.Tensor) -> dict:
        """Measure (and clip) the gradients now in ``.grad`` -> the step's record, appended to the
        history.  ``record["finite"]`` false: the caller must not take the optimizer step (``stop``
        mode raises ``NonFiniteError`` instead, after recording)."""
        loss_value = float(loss.detach())
        present = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [self.params[i].grad for i in present]
        if grads:
            # clip_grad_norm_'s own computation (torch.nn.utils.clip_grad._get_total_norm on one
            # device and dtype): per-tensor norms by _foreach_norm, then the norm of their stack
            norms = torch.stack(torch._foreach_norm(grads, 2.0))
            total = torch.linalg.vector_norm(norms, 2.0)
            sq = torch.zeros(len(self.groups), dtype=norms.dtype).index_add_(0, self.index[present], norms * norms)
            group_norms = sq.sqrt().tolist()
        else:
            total, group_norms = torch.tensor(0.0), [0.0] * len(self.groups)
        norm = float(total)
        finite = math.isfinite(loss_value) and math.isfinite(norm)
        rec = {
            "epoch": epoch,
            "step": step,
            "loss": loss_value,
            "norm": norm,
            "clipped": bool(finite and self.clip > 0 and norm > self.clip),
            "groups": dict(zip(self.groups, group_norms)),
        }
        if finite and self.clip > 0 and grads:
            nn.utils.clip_grads_with_norm_([self.params[i] for i in present], self.clip, total)
        if not finite:
            rec["skipped"] = True
        plain_floats = finite and all(map(math.isfinite, group_norms))  # (a group's square may overflow)
        self.history.append(rec if plain_floats else _jsonable(rec))
        if not finite:
            if self.on_nonfinite == "stop":
                raise NonFiniteError(self.message(rec))
            for p in self.params:
                p.grad = None  # nothing of this step reaches the weights or Adam's moments
        return {**rec, "finite": finite}

    def message(self, rec: dict) -> str:
        """One line: where, what (the loss, or the groups whose norm is not finite, the one nearest
        the output named first: a NaN flows backwards from there), what to try."""
        bad = [g for g, v in rec["groups"].items() if not math.isfinite(v)]
        what = [f"loss {rec['loss']}"] if not math.isfinite(rec["loss"]) else []
        if bad:
            what.append(f"gradient of {bad[-1]}" + (f" (then {', '.join(reversed(bad[:-1]))})" if bad[1:] else ""))
        elif not math.isfinite(rec["norm"]):
            what.append(f"gradient norm {rec['norm']}")
        clip = f"a smaller --clip (now {self.clip:g})" if self.clip > 0 else "a --clip (e.g. 1.0; now off)"
        return (
            f"training stopped at epoch {rec['epoch']}, step {rec['step']}: non-finite {'; '.join(what)} -- "
            f"try a lower --lr or {clip}, or --on-nonfinite skip to drop such steps"
        )

    def epoch_summary(self, epoch: int) -> dict:
        """The history record fields of ``epoch``: median global norm, share of steps clipped,
        steps skipped, and the first recurrent layer's median norm over the head's."""
        return summarize([r for r in self.history if r["epoch"] == epoch], self.groups)


def summarize(records: list[dict], groups: list[str]) -> dict:
    done = [r for r in records if not r.get("skipped")]
    out = {
        "grad_norm_median": statistics.median(r["norm"] for r in done) if done else float("nan"),
        "grad_clipped": sum(r["clipped"] for r in done) / len(done) if done else 0.0,
        "grad_skipped": len(records) - len(done),
    }
    first = first_recurrent(groups)
    if first is not None and "head" in groups and done:
        ratios = [r["groups"][first] / r["groups"]["head"] for r in done if r["groups"]["head"] > 0]
        if ratios:
            out["grad_ratio_first_rnn_head"] = statistics.median(ratios)
    return out


def summary_text(fields: dict) -> str:
    text = f"grad norm {fields['grad_norm_median']:.3g} (median), clipped {100 * fields['grad_clipped']:.0f}%"
    if fields["grad_skipped"]:
        text += f", {fields['grad_skipped']} non-finite steps skipped"
    return text


def vanishing_warning(fields: dict, groups: list[str], epoch: int) -> str | None:
    ratio = fields.get("grad_ratio_first_rnn_head")
    if ratio is None or ratio >= VANISHING_RATIO:
        return None
    return (
        f"warning: epoch {epoch}: the first recurrent layer's gradient ({first_recurrent(groups)}) is "
        f"{ratio:.1e} of the head's (median): its weights barely learn (vanishing gradients) -- try "
        "--cell lstm or gru, fewer --layers, or shorter sequences; gradients.png shows every group"
    )


def run_summary(history: list[dict], clip: float) -> dict:
    """The ``gradients`` entry of the training record (config.json); the steps are in ``GRADIENTS_FILE``."""
    groups = list(history[0]["groups"]) if history else []
    return {"file": GRADIENTS_FILE, "steps": len(history), "clip": clip, "groups": groups, **summarize(history, groups)}


def _jsonable(rec: dict) -> dict:
    """Non-finite floats as strings ("nan", "inf"): JSON lines stay strict JSON."""

    def f(v):
        return v if not isinstance(v, float) or math.isfinite(v) else str(v)

    return {k: ({g: f(x) for g, x in v.items()} if isinstance(v, dict) else f(v)) for k, v in rec.items()}


def jsonl(history: list[dict]) -> str:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in history)


def read_gradients(path) -> list[dict]:
    from pathlib import Path

    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
