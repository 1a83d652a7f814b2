"""The training loop shared by every task: seeding, batching, progress, epochs, best epoch.

``fit`` owns what the classifier and the tagger do identically: inside ``torch_settings`` it
seeds Python / numpy / torch, builds the model (after seeding, so the initial weights follow
the seed), runs Adam with gradient-norm clipping over length-bucketed batches (recording every
step's gradient norms and stopping at a non-finite one: ``rnnkit.toolkit.gradients``), evaluates dev
after each epoch, keeps the best epoch's weights (by dev accuracy, earliest on ties), stops
early after ``patience`` epochs without improvement and reloads the best weights.  A task
supplies only its loss on one batch (``step``), its dev evaluation and the extra fields of its
history record / log line.  Same seed, same machine -> identical dev metrics.

After every epoch ``fit`` hands the task the best epoch so far and a resume state (``snapshot``)
to write (``checkpoint.write_checkpoint(resume=...)``); given that state back (``resume``), it
continues where the killed run stopped and ends with the uninterrupted run's weights and history.

Imports torch; the CLI imports this module inside the command body only.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from rnnkit.runtime.tokenizer import PAD_ID, UNK_ID
from rnnkit.toolkit import ddp
from rnnkit.toolkit.checkpoint import STATE_FORMAT
from rnnkit.toolkit.configs import train_threads
from rnnkit.toolkit.gradients import (
    STEPS_KEY,
    GradientRecorder,
    NonFiniteError,
    run_summary,
    summary_text,
    vanishing_warning,
)


@contextmanager
def torch_settings(threads: int, processes: int = 1):
    """Deterministic kernels and a thread count for the run; restore the caller's afterwards.
    ``processes``: training processes sharing this machine (``--nproc``): ``threads`` 0 splits the idle CPUs."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    auto_share = max(1, train_threads(0) // processes)  # N processes share the idle CPUs
    torch.set_num_threads(train_threads(threads) if threads or processes == 1 else auto_share)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def seed_all(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None):
    """Index batches of similar length (less padding, faster on CPU).  With ``rng``: lengths
    are jittered before sorting and the batch order is shuffled, so batches differ per epoch."""
    key = lengths + (rng.uniform(-2.0, 2.0, size=len(lengths)) if rng is not None else 0.0)
    order = np.argsort(key, kind="stable")
    out = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(out)
    return out


def read_splits(read: Callable, train_path, dev_path, config, split: Callable, **facts) -> tuple[list, list, dict]:
    """-> (train items, dev items, the split's record for the checkpoint).  Dev is
    ``read(dev_path)`` when given, else ``split(items, config.dev_split, config.seed)`` of TRAIN;
    ``facts`` are added to that record (e.g. ``stratified=True``)."""
    items = read(train_path)
    if dev_path is not None:
        return items, read(dev_path), {"dev": str(dev_path)}
    train, dev = split(items, config.dev_split, config.seed)
    return train, dev, {"dev_split": config.dev_split, "split_seed": config.seed, **facts}


def drop_words(ids: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Replace word ids by <unk> with probability ``p`` (a float, or a per-word-id tensor);
    padding is never touched.  One ``torch.rand`` per call either way, so runs stay seeded."""
    probs = p[ids] if isinstance(p, torch.Tensor) else p
    drop = (torch.rand(ids.shape) < probs) & (ids != PAD_ID)
    return ids.masked_fill(drop, UNK_ID)


class Progress:
    """Per-epoch bar on stderr with the running loss (click's bar; silent when disabled)."""

    def __init__(self, enabled: bool, length: int, label: str):
        self.loss = float("nan")
        self.bar = None
        if enabled:
            import click

            self.bar = click.progressbar(
                length=length,
                label=label,
                file=sys.stderr,
                width=30,
                item_show_func=lambda _: None if self.loss != self.loss else f"loss {self.loss:.4f}",
            )

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def update(self, loss: float):
        self.loss = loss
        if self.bar is not None:
            self.bar.update(1, loss)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


@dataclass
class Fit:
    model: nn.Module  # best epoch's weights, eval mode
    history: list[dict]  # one record per epoch run
    best_epoch: int
    best_dev: dict  # the task's dev evaluation at best_epoch
    elapsed: float  # seconds for all epochs
    gradients: list[dict] = field(default_factory=list)  # one record per optimizer step (toolkit.gradients)


def higher_accuracy(dev: dict, best: dict) -> bool:
    return dev["accuracy"] > best["accuracy"]


def lower_loss(dev: dict, best: dict) -> bool:
    return dev["loss"] < best["loss"]


def cosine_factor(progress: float, floor: float = 0.1) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1]: a half cosine from 1 down to ``floor``."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def set_lr(optim: torch.optim.Optimizer, lr: float) -> None:
    for group in optim.param_groups:
        group["lr"] = lr


def fit(
    config,
    make_model: Callable[[], nn.Module],
    lengths: np.ndarray | None,
    step: Callable[[nn.Module, np.ndarray], tuple[torch.Tensor, int]],
    evaluate: Callable[[nn.Module], dict],
    report: Callable[[dict], tuple[dict, str]],
    progress: bool,
    log: Callable[[str], None],
    *,
    epoch_batches: Callable[[np.random.Generator], list] | None = None,
    better: Callable[[dict, dict], bool] = higher_accuracy,
    save: Callable[[Fit, dict], object] | None = None,
    identity: dict | None = None,
    resume: dict | None = None,
) -> Fit:
    """Train ``make_model()`` on the examples whose lengths are ``lengths``.

    ``config``: a ``TrainConfig`` / ``TagTrainConfig`` (threads, seed, lr, weight_decay, epochs,
    batch_size, clip, patience).  ``step(model, idx)`` -> (mean loss of batch ``idx``, its
    weight: examples or tokens); ``evaluate(model)`` -> dev dict with at least ``loss`` and
    ``accuracy``; ``report(dev)`` -> (task fields of the history record, task part of the log line).
    ``epoch_batches(rng)`` replaces the length-bucketed shuffled batches (a language model's
    truncated-BPTT windows must come in order, so its state can be carried from one to the next);
    ``better(dev, best)`` picks the best epoch (default: higher dev accuracy; LMs: lower dev loss).

    ``save(fit_so_far, state)``: called after every epoch with the best epoch so far and the
    resume state (``snapshot``; ``identity`` is stored in it); the task writes both, atomically
    (``checkpoint.write_checkpoint(resume=state)``).  ``resume``: a state read back from disk;
    training continues after its epoch exactly as the uninterrupted run would have (same batches,
    dropout masks, optimizer moments: identical weights and dev metrics).

    In a process group (``--nproc``, ``torchrun``: ``rnnkit.toolkit.ddp``) every rank runs this with
    the same seed: the same batches, each rank a shard of each, DDP-averaged gradients; rank 0 alone
    evaluates dev, logs and calls ``save``.
    """
    rank, size = ddp.world()
    if rank:
        log, progress = (lambda _msg: None), False
    with torch_settings(config.threads, size):
        rng = seed_all(config.seed)
        model = make_model()
        optim = adam(model, config.lr, config.weight_decay)
        # configs without the field (classifier, tagger) train at a constant rate
        cosine = getattr(config, "lr_schedule", "constant") == "cosine"
        plateau = getattr(config, "lr_schedule", "constant") == "plateau"  # LMs: decay after no better epoch
        history: list[dict] = []
        best, best_state, stale, stopped, done, before = None, None, 0, False, 0, 0.0
        if resume is not None:
            # after make_model / Adam (which draw from the seeded RNGs), so every state is the stored one
            history, best, best_state, stale, stopped, done, before = restore(resume, model, optim, rng)
            log(
                f"resuming after epoch {done}/{config.epochs} (best epoch {best[0]}"
                f"{', stopped early' if stopped else ''})"
            )
        # every step's gradient norms (toolkit.gradients); a resumed run goes on from the stored ones
        recorder = GradientRecorder(model, config.clip, getattr(config, "on_nonfinite", "stop"))
        recorder.history = list(resume.get("gradients", [])) if resume is not None else []
        trainer = ddp.wrap(model) if size > 1 else model  # after restore: every rank starts from one state
        warned = False
        start = time.perf_counter()
        for epoch in range(done + 1, config.epochs + 1):
            if stopped:
                break
            t0 = time.perf_counter()
            trainer.train()
            if size > 1:  # each rank its own dropout masks; per epoch, so a resumed run draws the same
                torch.manual_seed(ddp.epoch_seed(config.seed, epoch, rank))
            todo = epoch_batches(rng) if epoch_batches else batches(lengths, config.batch_size, rng)
            try:
                loss_sum, seen = train_epoch(
                    config, model, optim, step, todo, epoch, cosine, progress, recorder, trainer, (rank, size)
                )
            except NonFiniteError as e:
                kept = (
                    f"the checkpoint keeps best epoch {best[0]}; --resume continues after epoch {epoch - 1}"
                    if best
                    else "no epoch finished, so nothing was saved"
                )
                raise NonFiniteError(f"{e} ({kept})") from None
            grads = recorder.epoch_summary(epoch)
            dev = plain(evaluate(model)) if rank == 0 else None  # plain: the same numbers kept or resumed
            if size > 1:  # every rank takes the same best-epoch and early-stopping decisions
                dev = ddp.broadcast(dev)
            fields, text = report(dev)
            record = plain(
                {
                    "epoch": epoch,
                    "train_loss": loss_sum / seen if seen else float("nan"),  # nan: every step skipped
                    "dev_loss": dev["loss"],
                    **fields,
                    **grads,
                    "lr": optim.param_groups[0]["lr"],
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
            history.append(record)
            improved = best is None or better(dev, best[1])
            if improved:
                best, stale = (epoch, dev), 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if plateau:  # the rate lives in the optimizer's state: the snapshot keeps it, resume is exact
                    set_lr(optim, optim.param_groups[0]["lr"] * config.lr_decay)
            log(
                f"epoch {epoch}/{config.epochs}  train loss {record['train_loss']:.4f}  dev loss "
                f"{dev['loss']:.4f}  dev acc {dev['accuracy']:.4f}  {text}  {summary_text(grads)}  "
                f"({record['seconds']:.1f}s){'  *' if improved else ''}"
            )
            warning = None if warned else vanishing_warning(grads, recorder.groups, epoch)
            if warning:
                log(warning)  # once a run: the ratio is in every epoch's history record
                warned = True
            stopped = bool(config.patience and stale >= config.patience)
            if save is not None and rank == 0:
                elapsed = before + time.perf_counter() - start
                best_model = copy.deepcopy(model)
                if size > 1:
                    ddp.unwrap(best_model)
                best_model.load_state_dict(best_state)
                save(
                    Fit(best_model.eval(), list(history), best[0], best[1], elapsed, list(recorder.history)),
                    snapshot(
                        config, identity, epoch, stopped, model, optim, rng, history, best, best_state, stale, elapsed
                    )
                    | {"gradients": list(recorder.history)},
                )
            if stopped:
                log(f"no better dev result for {stale} epochs: stopping early")
        elapsed = before + time.perf_counter() - start
        if size > 1:
            ddp.unwrap(model)
        model.load_state_dict(best_state)
        model.eval()
    return Fit(model, history, best[0], best[1], elapsed, recorder.history)


def adam(model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """The optimizer of every task: Adam, fused (one vectorised pass over each tensor: a 2.9M-parameter
    classifier's step took 1.9 ms against 11.8 ms for torch's default per-op loop on one thread, and
    an MR teacher epoch 22 s against 28 s); the same update up to float rounding."""
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def train_epoch(
    config,
    model: nn.Module,
    optim: torch.optim.Optimizer,
    step,
    todo: list,
    epoch: int,
    cosine: bool,
    progress: bool,
    recorder: GradientRecorder | None = None,
    trainer: nn.Module | None = None,
    world: tuple[int, int] = (0, 1),
) -> tuple[float, int]:
    """One pass over the batches ``todo`` -> (sum of the batch losses weighted by ``n``, sum of ``n``).
    ``recorder`` clips and records each step's gradients and drops a non-finite one (or raises).
    ``trainer``: the module ``step`` calls (``model`` in DDP); ``world``: (rank, processes), each rank
    stepping on its shard of every batch (``ddp.shard``; the sums are the whole batches')."""
    trainer = model if trainer is None else trainer
    recorder = recorder or GradientRecorder(model, config.clip, getattr(config, "on_nonfinite", "stop"))
    base = len(recorder.history)  # steps recorded before this epoch: the step number counts the run
    loss_sum, seen = 0.0, 0
    with Progress(progress, len(todo), f"epoch {epoch}/{config.epochs}") as bar:
        for i, idx in enumerate(todo):
            if cosine:
                set_lr(optim, config.lr * cosine_factor((epoch - 1 + i / len(todo)) / config.epochs))
            if world[1] > 1:  # objective: this rank's part; loss, n: the whole batch's, after backward
                objective, pending = sharded_step(step, trainer, idx, *world)
            else:
                loss, n = step(trainer, idx)
                objective = loss
            optim.zero_grad(set_to_none=True)
            objective.backward()
            if world[1] > 1:
                loss, n = ddp.finish_totals(pending, model, world[1])
            # clips like clip_grad_norm_ (same numbers) and records the norms; a non-finite step is
            # dropped before it reaches the weights (on_nonfinite="skip") or stops the run ("stop")
            if recorder.record(epoch, base + i + 1, loss)["finite"]:
                optim.step()
                loss_sum += loss.item() * n
                seen += n
            bar.update(loss_sum / seen if seen else float("nan"))
    return loss_sum, seen


def sharded_step(step, trainer: nn.Module, idx: np.ndarray, rank: int, size: int):
    """This rank's forward pass on its shard of batch ``idx`` -> (the loss to backpropagate: the
    shard's loss sum ``loss * n_r``, ``ddp.start_totals``'s pending all-reduce of the batch's loss
    and ``n``).  ``ddp.finish_totals`` then scales DDP's averaged gradient by ``size / n``: the
    gradient of the whole batch's mean loss (equal shards or not).  A rank with no example in a
    small batch steps on one example at weight 0: DDP needs every rank's backward pass."""
    mine = ddp.shard(idx, rank, size)
    loss, n = step(trainer, mine if len(mine) else idx[:1])
    n = n if len(mine) else 0
    return loss * n, ddp.start_totals(loss, n)


def plain(obj):
    """``obj`` as JSON gives it back (numpy scalars and arrays -> Python numbers and lists): what
    config.json stores, and what a resume state may hold (it is read with ``weights_only=True``)."""

    def tolist(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} in a dev result or history record is not JSON-serialisable")

    return json.loads(json.dumps(obj, default=tolist))


def snapshot(
    config,
    identity: dict | None,
    epoch: int,
    stopped: bool,
    model: nn.Module,
    optim: torch.optim.Optimizer,
    rng: np.random.Generator,
    history: list[dict],
    best: tuple,
    best_state: dict,
    stale: int,
    elapsed: float,
) -> dict:
    """Everything ``restore`` needs to continue after ``epoch`` bit for bit: weights, optimizer
    moments, every RNG the loop or a task's ``step`` draws from (Python, numpy's global and the
    batching Generator, torch: dropout, word dropout, scheduled sampling), best epoch, stale count."""
    legacy = np.random.get_state(legacy=False)
    return {
        "format": STATE_FORMAT,
        "identity": identity,
        "epochs": config.epochs,
        "epoch": epoch,
        "stopped": stopped,
        "elapsed": elapsed,
        "history": history,
        "stale": stale,
        "best_epoch": best[0],
        "best_dev": best[1],
        "best_model": best_state,
        "model": model.state_dict(),
        "optimizer": optim.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": rng.bit_generator.state,
            "numpy_global": {**legacy, "state": {**legacy["state"], "key": legacy["state"]["key"].tolist()}},
            "torch": torch.get_rng_state(),
        },
    }


def restore(state: dict, model: nn.Module, optim: torch.optim.Optimizer, rng: np.random.Generator):
    """Load ``snapshot``'s state into the fresh ``model``, ``optim`` and RNGs -> (history, best,
    best_state, stale, stopped, epochs done, seconds spent)."""
    model.load_state_dict(state["model"])
    optim.load_state_dict(state["optimizer"])
    r = state["rng"]
    random.setstate(r["python"])
    legacy = r["numpy_global"]
    np.random.set_state(
        {**legacy, "state": {**legacy["state"], "key": np.asarray(legacy["state"]["key"], dtype=np.uint32)}}
    )
    rng.bit_generator.state = r["numpy"]
    torch.set_rng_state(r["torch"])
    return (
        list(state["history"]),
        (state["best_epoch"], state["best_dev"]),
        state["best_model"],
        state["stale"],
        state["stopped"],
        state["epoch"],
        state["elapsed"],
    )


def training_record(
    config, result: Fit, train_path, dev_path, split: dict, num_train: int, num_dev: int, dev: dict
) -> dict:
    """The ``training`` entry of a checkpoint's config.json (``dev``: the best epoch's numbers to keep)."""
    return {
        "seed": config.seed,
        "train_path": str(train_path),
        "dev_path": str(dev_path) if dev_path is not None else None,
        "split": split,
        "num_train": num_train,
        "num_dev": num_dev,
        "epochs": config.epochs,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "dev": dev,
        "history": result.history,
        "gradients": run_summary(result.gradients, config.clip),
        STEPS_KEY: result.gradients,  # write_checkpoint moves these to gradients.jsonl
        "time_s": round(result.elapsed, 2),
        "config": asdict(config),
        "torch": torch.__version__,
    }
