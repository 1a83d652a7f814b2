"""Scale-out batch inference on Dask distributed: one bundle, many files, many workers.

``predict(bundle, inputs, out_dir, scheduler=None, ...)`` reads the inputs on the client as
one stream of rows with stable ids (``rnnkit.runtime.partitions``), cuts it into partitions,
and runs each partition on a worker with the same ``run_batch`` of the bundle's task object
that local ``rnnkit predict`` uses (tasks whose registry entry says ``dask``).  Output is one
``part-NNNNN.jsonl`` per partition (the local output rows plus an ``id``), bad records go to
``errors.jsonl`` as ``{"id", "source", "error"}``, and ``_SUCCESS`` (the counts, as JSON) is
written last.

Exactly once: a worker returns its partition's rows as serialised JSON lines; the client
writes ``_errors/part-NNNNN.jsonl`` then ``part-NNNNN.jsonl`` through ``atomic_writer``
(temporary sibling, fsync, rename).  A worker killed mid-run only loses results the client
has not received; Dask re-runs those tasks elsewhere and each partition file is written once
under its final name, so no row is lost or duplicated.  ``resume=True`` skips partitions
whose file exists (the part file is the partition's commit marker); ``_job.json`` records the
sha256 of every input, and a resume refuses inputs whose content changed (an edited file would
shift rows between partitions: some lost, some twice).  Bad records of every kind -- unreadable
bytes, invalid JSON, a wrong type, a lone surrogate, a text the model refuses -- go to
``errors.jsonl``; the job carries on and ``_SUCCESS`` checks rows in = predictions + errors.

Workers need no shared filesystem: inputs are read and outputs written by the client, and the
bundle travels as bytes in a worker plugin (``rnnkit.runtime.dask_worker``) that writes it into
each worker's local directory, where ``open_bundle`` verifies every sha256; each worker process
keeps one ``Model`` per (bundle digest, backend, int8, threads).  The price: the client's I/O
(reading text, writing JSON lines) is the ceiling of one job, about what one core can parse
and write.

Imports dask only inside the functions that use it; must not import torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import backends
from .bundle import open_bundle, sha256_file
from .errors import InputError, RnnkitError, UnsupportedError
from .io import atomic_writer, fsync_dir
from .manifest import MANIFEST_FILE
from .model_spec import ModelSpec
from .partitions import expand_inputs, iter_rows, partitions
from .records import read_records
from .tasks import TASKS

JOB_FILE, SUCCESS_FILE, ERRORS_FILE, ERRORS_DIR = "_job.json", "_SUCCESS", "errors.jsonl", "_errors"


@dataclass
class Progress:
    rows_done: int = 0  # rows in partitions written (this run and, with resume, earlier runs)
    rows_read: int = 0  # rows read from the inputs so far
    partitions_done: int = 0
    partitions_read: int = 0
    reading_done: bool = False  # rows_read / partitions_read are then the totals


@dataclass
class Summary:
    out_dir: str
    rows_in: int
    rows_out: int
    errors: int
    partitions: int
    partitions_skipped: int  # already written by an earlier run (resume)
    seconds: float
    rows_per_second: float  # rows processed by this run / seconds
    workers: int
    model_loads: dict = field(default_factory=dict)  # worker address -> models loaded by that process
    task_seconds: float = 0.0  # wall time of this run's partition tasks on the workers, summed
    task_cpu_seconds: float = 0.0  # CPU time of those tasks (below task_seconds: the cores were shared)

    def to_dict(self) -> dict:
        return asdict(self)


# -- client side ---------------------------------------------------------------------------
def bundle_digest(path: Path) -> str:
    return hashlib.sha256((Path(path) / MANIFEST_FILE).read_bytes()).hexdigest()


def part_name(index: int) -> str:
    return f"part-{index:05d}.jsonl"


def predict(
    bundle,
    inputs,
    out_dir,
    *,
    scheduler: str | None = None,
    client=None,
    workers: int | None = None,
    partition_size: int = 10_000,
    backend: str = "auto",
    int8: bool = False,
    threads: int = 1,
    batch_size: int = 64,
    text_field: str = "text",
    encoding: str = "utf-8",
    pretokenized: bool = False,
    resume: bool = False,
    progress: Callable[[Progress], None] | None = None,
    hint: dict | None = None,
    truncate: bool = False,
) -> Summary:
    """Run BUNDLE over INPUTS (paths or globs: txt/CSV/TSV/JSONL) on Dask; write OUT_DIR; return the counts.

    ``client``: an existing ``distributed.Client``; else ``scheduler`` ("tcp://host:port") to
    connect to; else a local cluster of ``workers`` processes (default: one per core) with one
    thread each.  ``resume``: continue a job in OUT_DIR (same bundle, inputs and partition size)
    instead of refusing a non-empty OUT_DIR.  ``progress(Progress)`` is called as partitions finish.
    ``hint``: how messages name the settings (``records.read_records``); default: these arguments.
    ``truncate``: a text over the bundle's max_length is cut to it (``"truncated": N`` in its line)
    instead of going to errors.jsonl.
    """
    start = time.perf_counter()
    b = open_bundle(bundle)
    task = TASKS[b.task]
    if not task.dask:  # checked before Dask is needed: the answer does not depend on it
        raise UnsupportedError(
            f"{bundle}: --engine dask runs {[n for n, t in TASKS.items() if t.dask]} bundles, "
            f"not {b.task!r} "
            f"(generation and seq2seq decoding have no distributed runner); use --engine local"
        )
    try:
        import distributed
    except ImportError:
        raise RnnkitError(
            '--engine dask needs Dask distributed; run `pip install "rnnkit[dask]"` '
            '(or `pip install "dask[distributed]"`)'
        ) from None
    if pretokenized and not task.token_lists:
        raise InputError("--pretokenized applies to tagging bundles only")
    if int8:
        b.model_path(int8=True)  # refuse now, not on every worker
    files = expand_inputs(inputs)
    hint = hint or {text_field: "text_field=", "encoding": "encoding="}
    read_records(files[0], (text_field,), encoding=encoding, hint=hint)  # an unknown encoding: refuse now
    spec = ModelSpec(bundle_digest(b.path), backends.resolve(backend), int8, threads, batch_size, bool(truncate))
    out = Path(out_dir)
    # --resume compares each input's sha256: an edit in place keeps its path and size
    job = {
        "bundle": str(b.path),
        "bundle_digest": spec.digest,
        "task": b.task,
        "backend": spec.backend,
        "int8": int8,
        "partition_size": partition_size,
        "text_field": text_field,
        "encoding": encoding,
        "pretokenized": pretokenized,
        "truncate": bool(truncate),
        "inputs": [
            {"index": i, "path": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f)}
            for i, f in enumerate(files)
        ],
    }
    _prepare_out_dir(out, job, resume)

    own_cluster = None
    if client is None:
        if scheduler:
            client = distributed.Client(scheduler, timeout="30s")
        else:
            own_cluster = distributed.LocalCluster(
                n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = distributed.Client(own_cluster)
    try:
        _register_bundle(client, b.path, spec.digest)
        state = _run(client, spec, files, out, job, resume, progress, hint)
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()
        elif scheduler:
            client.close()
    return _finish(out, job, state, time.perf_counter() - start)


def _register_bundle(client, path: Path, digest: str) -> None:
    from .dask_worker import BundlePlugin

    manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    names = [MANIFEST_FILE, *manifest["files"]]
    plugin = BundlePlugin(digest, {n: (path / n).read_bytes() for n in names})
    client.register_plugin(plugin, name=plugin.name)


def _prepare_out_dir(out: Path, job: dict, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--output {out}: is a file; the dask engine writes a folder of part files")
    existing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if existing and not resume:
        done = sum(n.startswith("part-") for n in existing)
        state = "finished (_SUCCESS present)" if SUCCESS_FILE in existing else f"{done} part files"
        raise InputError(
            f"--output {out}: not empty ({state}); pass --resume to continue that job "
            f"(finished partitions are kept), or choose an empty or new folder"
        )
    if existing:
        previous = out / JOB_FILE
        if not previous.is_file():
            raise InputError(
                f"--output {out}: has files but no {JOB_FILE}; it is not an rnnkit dask output, "
                f"so --resume cannot continue it; choose an empty or new folder"
            )
        old = json.loads(previous.read_text(encoding="utf-8"))
        _check_inputs(out, old.get("inputs"), job["inputs"])
        changed = [k for k in job if k != "bundle" and old.get(k) != job[k]]
        if changed:
            raise InputError(
                f"--output {out}: --resume needs the same job, but {', '.join(changed)} differ from "
                f"{previous}; rerun with the same settings or choose a new folder"
            )
        for stale in out.glob(".*.partial"):  # temporary files of an interrupted client
            stale.unlink()
        for stale in (out / ERRORS_DIR).glob(".*.partial"):
            stale.unlink()
        with contextlib.suppress(FileNotFoundError):
            (out / SUCCESS_FILE).unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / ERRORS_DIR).mkdir(exist_ok=True)
    with atomic_writer(out / JOB_FILE) as handle:
        json.dump(job, handle, indent=2)


def _check_inputs(out: Path, old, new) -> None:
    """Resume only over the same bytes: partitions are cut by row position, so an edited input would
    leave finished partitions holding rows that no longer exist and shift the rest."""
    if not isinstance(old, list) or [i.get("path") for i in old] != [i["path"] for i in new]:
        return  # a different file list: reported as "inputs differ"
    for before, now in zip(old, new):
        if before.get("sha256") != now["sha256"]:
            was = f"sha256 {before['sha256'][:12]}..." if before.get("sha256") else "no recorded sha256"
            raise InputError(
                f"--output {out}: --resume: the input {now['path']} changed since the job started "
                f"({was}, now {now['sha256'][:12]}...); rerun without --resume into a new folder"
            )


@dataclass
class _State:
    progress: Progress = field(default_factory=Progress)
    skipped: int = 0
    rows_this_run: int = 0
    loads: dict = field(default_factory=dict)
    workers: int = 0
    task_seconds: float = 0.0
    task_cpu_seconds: float = 0.0


def _run(client, spec: ModelSpec, files, out: Path, job: dict, resume: bool, progress, hint: dict) -> _State:
    from distributed import as_completed

    from .dask_worker import run_partition

    state = _State()
    p = state.progress
    state.workers = len(client.scheduler_info(n_workers=-1)["workers"]) if hasattr(client, "scheduler_info") else 0
    window = max(4, 3 * max(1, sum(client.nthreads().values())))  # partitions in flight: bounds client memory
    token = spec.digest[:8] + "-" + hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
    pending: dict = {}
    running = as_completed()

    def collect(future):
        part = pending.pop(future.key)
        result = future.result()
        errors = part.errors + [
            {"id": part.ids[i], "source": part.sources[i], "error": msg} for i, msg in result["errors"]
        ]
        _write_partition(out, part.index, result["text"], errors)
        state.loads[result["worker"]] = result["loads"]
        state.task_seconds += result["seconds"]
        state.task_cpu_seconds += result["cpu_seconds"]
        p.rows_done += part.rows
        p.partitions_done += 1
        state.rows_this_run += part.rows
        if progress:
            progress(p)

    token_lists = TASKS[job["task"]].token_lists
    rows = iter_rows(files, job["text_field"], job["encoding"], token_lists, job["pretokenized"], hint)
    for part in partitions(rows, job["partition_size"]):
        p.rows_read += part.rows
        p.partitions_read += 1
        if resume and (out / part_name(part.index)).is_file():
            state.skipped += 1
            p.rows_done += part.rows
            p.partitions_done += 1
            continue
        if not part.ids:  # nothing a model could run: write the errors directly
            _write_partition(out, part.index, "", part.errors)
            p.rows_done += part.rows
            p.partitions_done += 1
            state.rows_this_run += part.rows
            continue
        future = client.submit(
            run_partition, spec, part.ids, part.items, key=f"rnnkit-{token}-{part.index:05d}", pure=False, retries=2
        )
        pending[future.key] = part
        running.add(future)
        while running.count() >= window:
            collect(next(running))
    p.reading_done = True
    if progress:
        progress(p)
    for future in running:
        collect(future)
    return state


def _write_partition(out: Path, index: int, text: str, errors: list[dict]) -> None:
    # Errors first: the part file is the partition's commit marker (resume trusts it).
    with atomic_writer(out / ERRORS_DIR / part_name(index)) as handle:
        handle.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
    with atomic_writer(out / part_name(index)) as handle:
        handle.write(text)
    fsync_dir(out)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


def _finish(out: Path, job: dict, state: _State, seconds: float) -> Summary:
    """Merge the per-partition errors, check rows in = rows out + errors, write _SUCCESS last."""
    p = state.progress
    names = [part_name(i) for i in range(p.partitions_read)]
    missing = [n for n in names if not (out / n).is_file()]
    if missing:
        raise RnnkitError(f"{out}: {len(missing)} partitions were not written ({missing[:3]}...); rerun with --resume")
    rows_out = sum(_count_lines(out / n) for n in names)
    with atomic_writer(out / ERRORS_FILE) as handle:
        errors = 0
        for n in names:
            with open(out / ERRORS_DIR / n, encoding="utf-8") as part:
                for line in part:
                    handle.write(line)
                    errors += 1
    if rows_out + errors != p.rows_read:
        raise RnnkitError(
            f"{out}: {p.rows_read} rows read but {rows_out} predictions + {errors} errors written; "
            f"the output folder was changed during the run; rerun into a new folder"
        )
    summary = Summary(
        str(out),
        p.rows_read,
        rows_out,
        errors,
        p.partitions_read,
        state.skipped,
        round(seconds, 3),
        round(state.rows_this_run / seconds, 1) if seconds else 0.0,
        state.workers,
        state.loads,
        round(state.task_seconds, 3),
        round(state.task_cpu_seconds, 3),
    )
    with atomic_writer(out / SUCCESS_FILE) as handle:
        json.dump(
            {
                **summary.to_dict(),
                "bundle_digest": job["bundle_digest"],
                "backend": job["backend"],
                "int8": job["int8"],
            },
            handle,
            indent=2,
        )
    fsync_dir(out)
    return summary
