"""The worker side of the Dask engine: the bundle plugin, the per-process model cache, the partition task.

Imported only by ``rnnkit.runtime.distributed`` when a job runs (it imports ``distributed``),
and never imports it back: what both sides need is ``model_spec.ModelSpec``.  Must not import torch.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from distributed import WorkerPlugin, get_worker

from .batch import run_items
from .errors import RnnkitError
from .manifest import MANIFEST_FILE
from .model import load
from .model_spec import ModelSpec

_MODELS: dict[tuple, object] = {}  # (digest, backend, int8, threads) -> task object, one per worker process
_LOADS: dict[tuple, int] = {}  # how many times this process loaded it (1 unless something is wrong)
_LOCK = threading.Lock()


def bundle_root(local_directory: str) -> Path:
    return Path(local_directory) / "rnnkit-bundles"


class BundlePlugin(WorkerPlugin):
    """Materialise a bundle (its files, as bytes) into each worker's local directory.

    Registered once per job; Dask also runs it on workers that join later (a restarted one).
    """

    def __init__(self, digest: str, files: dict[str, bytes]):
        self.digest = digest
        self.files = files
        self.name = f"rnnkit-bundle-{digest[:16]}"

    def setup(self, worker) -> None:
        materialise(bundle_root(worker.local_directory), self.digest, self.files)


def materialise(root: Path, digest: str, files: dict[str, bytes]) -> Path:
    """Write the bundle to ``root/digest`` once: a whole folder renamed into place, never half of one."""
    target = root / digest
    if (target / MANIFEST_FILE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}.", dir=root))
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        try:
            os.rename(tmp, target)
        except OSError:  # another worker process on this machine got there first
            if not (target / MANIFEST_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def worker_model(spec: ModelSpec):
    """This process's model for ``spec``, loaded and verified on first use only."""
    key = (spec.digest, spec.backend, spec.int8, spec.threads)
    with _LOCK:
        if key not in _MODELS:
            path = bundle_root(get_worker().local_directory) / spec.digest
            if not (path / MANIFEST_FILE).is_file():
                raise RnnkitError(
                    f"{path}: missing on worker {get_worker().address}; the rnnkit bundle plugin "
                    f"did not run there (register BundlePlugin before submitting partitions)"
                )
            _MODELS[key] = load(path, backend=spec.backend, int8=spec.int8, threads=spec.threads)
            _LOADS[key] = _LOADS.get(key, 0) + 1
        return _MODELS[key], _LOADS[key]


def run_partition(spec: ModelSpec, ids: list[str], items: list) -> dict:
    """Predict one partition -> {"text": JSON lines, "rows", "errors": [(position, message)], "worker", ...}.

    Items the model refuses (a text with no tokens, a sentence over ``max_length``) become errors
    and the rest are predicted (``batch.run_items`` over the task object's ``run_batch``, as local
    ``rnnkit predict`` does).
    """
    wall, cpu = time.perf_counter(), time.process_time()
    model, loads = worker_model(spec)
    run = functools.partial(model.run_batch, truncate=spec.truncate)
    results, errors = run_items(run, items, spec.batch_size)
    text = "".join(
        json.dumps({"id": i, **r.to_dict()}, ensure_ascii=False) + "\n" for i, r in zip(ids, results) if r is not None
    )
    return {
        "text": text,
        "rows": len(ids) - len(errors),
        "errors": errors,
        "worker": get_worker().address,
        "pid": os.getpid(),
        "loads": loads,
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
    }
