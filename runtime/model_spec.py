"""What a Dask worker needs to run a partition: the client builds it, every task pickles it.

Its own module so that the client (``rnnkit.runtime.distributed``) and the worker
(``rnnkit.runtime.dask_worker``) share it without importing each other.  Pure stdlib.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to run a partition (pickled into every task: keep it small)."""

    digest: str  # sha256 of the bundle's manifest.json (which holds every file's sha256)
    backend: str  # resolved on the client, so every worker runs the same backend
    int8: bool
    threads: int  # backend threads per model; 1 with one worker process per core
    batch_size: int
    truncate: bool = False  # cut texts over the bundle's max_length (run_batch truncate=True) instead of refusing them
