"""Training on several processes: torch DistributedDataParallel with the gloo backend (CPU).

``rnnkit train classify|tag|seq2seq --nproc N`` starts N local processes (``launch``:
``torch.multiprocessing`` spawn, a free localhost port); under ``torchrun`` (several machines,
``env://``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set by the launcher) each
process joins the group it names (``join_from_env``).  Either way ``loop.fit`` then:

* builds the same seeded batch order on every rank (one process's order for that seed) and gives
  rank r the examples ``batch[r::N]`` of each batch (``shard``);
* backpropagates each rank's loss sum ``loss_r * n_r`` (``n_r`` its examples or tokens) and, after
  DDP has averaged the gradients, scales them by ``N / n`` (``n`` the batch's, one small all-reduce
  that runs during the backward pass), so the gradient is the whole batch's mean gradient whatever
  the shard sizes: an N-process run follows the 1-process run's updates up to float rounding of
  the sums (dropout aside: each rank draws its own masks, ``epoch_seed``);
* evaluates dev and writes the checkpoint on rank 0 only, broadcasting the dev result so every
  rank makes the same best-epoch and early-stopping decisions.

Imports torch; the CLI imports this module inside the command body only.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from rnnkit.runtime.errors import InputError

BACKEND = "gloo"  # CPU collectives; nccl needs GPUs


def world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a plain one-process run): the process that evaluates, logs and writes."""
    return world()[0] == 0


def under_launcher() -> bool:
    """True when a launcher such as ``torchrun`` started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_from_env() -> int:
    """Join the process group ``torchrun`` describes in the environment (``env://``) -> world size."""
    if not dist.is_initialized():
        dist.init_process_group(BACKEND, init_method="env://")
    return dist.get_world_size()


def needs_launch(nproc: int) -> bool:
    """Whether this call must start ``nproc`` processes (not when already one of a group)."""
    return nproc > 1 and not dist.is_initialized() and not under_launcher()


def prepare(config):
    """Join ``torchrun``'s group when started by it -> ``config`` with ``nproc`` = the world size (a
    resumed run must have as many processes: each rank's dropout masks depend on its rank)."""
    if not under_launcher():
        return config
    size = join_from_env()
    if config.nproc not in (1, size):
        raise InputError(
            f"--nproc {config.nproc} under a launcher of {size} processes: leave --nproc at 1 (the launcher "
            f"sets the process count: torchrun --nnodes/--nproc-per-node) or give --nproc {size}"
        )
    return replace(config, nproc=size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(fn: Callable, nproc: int, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` in ``nproc`` spawned processes joined in one gloo group on
    localhost -> rank 0's return value.  Only rank 0 logs (``kwargs["log"]`` where it pickles, see
    ``picklable_log``) and shows progress."""
    import torch.multiprocessing as mp

    if "log" in kwargs:
        kwargs["log"] = picklable_log(kwargs["log"])

    main = sys.modules["__main__"]
    hidden = getattr(main, "__file__", None)
    if hidden is not None and Path(hidden).is_file():
        hidden = None
    with tempfile.TemporaryDirectory(prefix="rnnkit-ddp-") as tmp:
        result = Path(tmp) / "rank0.pkl"
        try:
            if hidden is not None:  # spawned children re-run a main *file*; '<stdin>' is none
                del main.__file__
            mp.spawn(_worker, args=(nproc, free_port(), fn, args, kwargs, str(result)), nprocs=nproc, join=True)
        except (mp.ProcessRaisedException, mp.ProcessExitedException):
            # the first rank's own exception (an InputError, a NonFiniteError ...), not spawn's wrapper
            errors = sorted(Path(tmp).glob("rank*.err"))
            if not errors:
                raise
            with open(errors[0], "rb") as f:
                raise pickle.load(f) from None
        finally:
            if hidden is not None:
                main.__file__ = hidden
        with open(result, "rb") as f:
            return pickle.load(f)


def _worker(rank: int, nproc: int, port: int, fn: Callable, args: tuple, kwargs: dict, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(BACKEND, rank=rank, world_size=nproc)
    try:
        kwargs = {**kwargs, "log": kwargs.get("log") if rank == 0 else None}
        kwargs["progress"] = rank == 0 and kwargs.get("progress", True)
        try:
            out = fn(*args, **kwargs)
        except Exception as e:
            with contextlib.suppress(Exception):  # an exception that does not pickle: spawn's message only
                Path(result).with_name(f"rank{rank}.err").write_bytes(pickle.dumps(e))
            raise
        if rank == 0:
            with open(result, "wb") as f:
                pickle.dump(out, f)
    finally:
        dist.destroy_process_group()


def picklable_log(log):
    """``log`` if spawned processes can receive it (``print``, a module-level function), else None:
    rank 0 then runs silent (a closure collecting messages in this process would not see them)."""
    try:
        pickle.dumps(log)
        return log
    except Exception:  # noqa: BLE001 -- lambdas, closures, bound methods of unpicklable objects
        return None


def shard(idx: np.ndarray, rank: int, size: int) -> np.ndarray:
    """Rank ``rank``'s examples of one batch: every ``size``-th, from ``rank`` (batches are sorted by
    length, so strided shards get similar lengths and finish their steps together)."""
    return idx[rank::size]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """torch's seed for ``rank`` in ``epoch`` of an N-process run: each rank its own dropout masks,
    and a resumed run draws what the uninterrupted one drew (the state is per epoch, not per rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def start_totals(loss: torch.Tensor, n: int):
    """Start the all-reduce of all ranks' (sum of loss * n, sum of n) for one step, asynchronously:
    it runs during the backward pass (a blocking one before it made every step wait for the
    slowest rank twice; 8% of an MR epoch on two processes).  ``finish_totals`` collects it."""
    t = torch.tensor([float(loss.detach()) * n, float(n)], dtype=torch.float64)
    return dist.all_reduce(t, async_op=True), t


def finish_totals(pending, model: torch.nn.Module, size: int) -> tuple[torch.Tensor, int]:
    """After the backward pass of ``loss * n`` on every rank (DDP's gradient: the ranks' mean of
    these sums): wait for ``start_totals`` -> (the batch's mean loss, its ``n``), and scale the
    gradients by ``size / n`` so they are the gradient of the whole batch's mean loss."""
    work, t = pending
    work.wait()
    total, count = float(t[0]), int(round(float(t[1])))
    for p in model.parameters():
        if p.grad is not None and p.grad.is_sparse:  # the optimizer and the norms take dense ones
            p.grad = p.grad.to_dense()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, size / max(count, 1))
    return torch.tensor(total / max(count, 1)), count


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in DistributedDataParallel (rank 0's weights broadcast to all; CPU, gloo).

    Embeddings get sparse gradients for the all-reduce: a batch touches a few hundred of a
    vocabulary's rows, and the dense gradient of an 18,153 x 128 table (9.3 MB a step over
    loopback TCP) cost as much time as the second process saved.  ``finish_totals`` makes them
    dense again for the clipping, the norms and the optimizer: the same numbers as a dense one.
    ``unwrap`` restores the modules."""
    from torch.nn.parallel import DistributedDataParallel

    uses: dict[int, int] = {}  # a table tied to an output layer gets a dense gradient there too
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding) and m.weight.requires_grad and uses[id(m.weight)] == 1:
            m.sparse = True
    return DistributedDataParallel(model)


def unwrap(model: torch.nn.Module) -> None:
    """Undo ``wrap``'s sparse embedding gradients (the trained model goes on as it was built)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            m.sparse = False
