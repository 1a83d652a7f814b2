"""Dynamic batching for ``rnnkit serve``: one queue and one worker thread per model.

Requests that arrive close together are run as one ``run_batch`` call: the worker takes the
first waiting job, then keeps taking jobs until it holds ``max_batch`` items or ``max_wait_s``
has passed since the first, and runs them together (``run_batch`` sorts the items by length and
pads per bucket, so a batch of short and long texts computes little padding).  Each caller gets
its own rows back through a ``concurrent.futures.Future``; the event loop awaits it
(``asyncio.wrap_future``) and stays free while the model runs in the worker thread.

A batch only mixes jobs with the same options (a decoder's beam, ``truncate``): jobs with other
options wait for the next call of the same round.  An item the model refuses costs that item
(``batch.run_items`` sets it aside and names it), not the other callers' items; an unexpected
exception fails the jobs of that call only, and the worker goes on with the next batch.

The wait is cut short when nobody else can join: ``in_flight()`` (the server's count of requests
accepted and not yet answered, this batch's included) says how many requests exist at all, and once
the batch holds that many jobs the batch runs.  A lone sequential client then pays no wait, while
under load the batch still fills for up to ``max_wait_s``.

``max_batch=1, max_wait_s=0`` turns batching off: every request runs alone, one at a time.

Pure stdlib (plus the runtime's ``batch`` helpers); must not import torch.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .batch import run_items
from .errors import RnnkitError

log = logging.getLogger("rnnkit.serve")
POLL_S = 0.0005  # while a batch waits, how often it re-reads in_flight()


@dataclass
class Answer:
    """One job's share of a batch: a result per item (None where refused) and ``(index, why)`` per refusal."""

    results: list
    refused: list[tuple[int, str]]


@dataclass
class Job:
    items: list
    options: tuple  # sorted (name, value) pairs: the batch key
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """What the worker has done so far (``GET /health`` shows it; tests read ``largest``)."""

    batches: int = 0
    jobs: int = 0
    items: int = 0
    largest: int = 0  # most items in one batch
    failures: int = 0  # calls that raised something other than a refusal

    def to_dict(self) -> dict:
        return dict(vars(self))


class Batcher:
    """Queue ``submit``-ted jobs for ``model.run_batch`` and run them in batches on a worker thread."""

    def __init__(
        self,
        model,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        name: str = "model",
        in_flight: Callable[[], int] | None = None,
    ):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}")
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.name = name
        self.in_flight = in_flight
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._waiting = 0  # items submitted and not yet answered (GET /health: "queued")
        self._count = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"rnnkit-batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._waiting

    def submit(self, items: Sequence, options: dict[str, Any] | None = None) -> Future:
        """Queue ``items`` (one request's) with ``run_batch`` keyword ``options`` -> a Future of an ``Answer``."""
        job = Job(list(items), tuple(sorted((options or {}).items())))
        with self._count:
            self._waiting += len(job.items)
        self._queue.put(job)
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Answer every job already queued, then stop the worker (the server's shutdown calls this)."""
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the worker ---------------------------------------------------------------------------
    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            jobs, size = [first], len(first.items)
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                if self.in_flight is not None and self.in_flight() <= len(jobs):
                    break  # every request the server holds is in this batch: nobody else can join
                try:
                    left = deadline - time.monotonic()
                    # short slices: a request answered elsewhere meanwhile can end the wait (the check above)
                    job = self._queue.get(timeout=min(left, POLL_S)) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    if time.monotonic() >= deadline:
                        break
                    continue
                if job is None:  # close(): answer what was collected, then stop
                    stopping = True
                    break
                jobs.append(job)
                size += len(job.items)
            self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.options, []).append(job)
        for options, group in groups.items():
            items = [item for job in group for item in job.items]
            self.stats.batches += 1
            self.stats.jobs += len(group)
            self.stats.items += len(items)
            self.stats.largest = max(self.stats.largest, len(items))
            try:
                run = functools.partial(self.model.run_batch, **dict(options))
                results, refused = run_items(run, items, self.max_batch)
            except Exception as exc:  # one bad call fails its own jobs; the worker carries on
                if not isinstance(exc, RnnkitError):
                    self.stats.failures += 1
                    log.exception(f"{self.name}: batch of {len(items)} items failed")
                for job in group:
                    self._answer(job, exc)
                continue
            start = 0
            for job in group:
                end = start + len(job.items)
                mine = [(i - start, why) for i, why in refused if start <= i < end]
                self._answer(job, Answer(results[start:end], mine))
                start = end

    def _answer(self, job: Job, outcome: Answer | BaseException) -> None:
        with self._count:
            self._waiting -= len(job.items)
        if job.future.set_running_or_notify_cancel():
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
