"""Knowledge distillation: a teacher's targets for a student's training data, cached with provenance.

* ``rnnkit train classify --teacher T``: soft targets (Hinton et al. 2015).  The teacher's logits
  for every training text (``teacher_logits``) are computed once; the student then minimises
  ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, label)``
  (``soft_target_loss``; the ``T^2`` keeps the soft part's gradients at the scale of the hard part's
  when ``T`` changes).
* ``rnnkit train seq2seq --teacher T``: sequence-level distillation (Kim & Rush 2016): the teacher's
  beam-search output for every distinct training source (``teacher_outputs``) becomes a training
  target, beside the references (``keep-references``) or instead of them (``replace``): ``mix_pairs``.

A teacher is a training checkpoint (run with torch) or a bundle (run by ``rnnkit.runtime`` without
torch: batched ``logits`` / ``nbest``, int8 allowed).  It gets the raw texts, so its tokenizer
need not be the student's.  A seq2seq checkpoint is first exported to a bundle in the cache (the
runtime's batched beam search is the decoder).

Targets are cached under ``$RNNKIT_CACHE_DIR/distill`` (default ``~/.cache/rnnkit/distill``) in a
folder named by a hash of the teacher's files, the data and the settings that change the targets;
``provenance.json`` beside them names the teacher (path, kind, sha256), the settings, the count and
the seconds it took.  Each file is written atomically, ``provenance.json`` last: an entry without it
is incomplete and is recomputed.

Torch-free at import (a bundle teacher runs without torch); torch is imported inside the functions
that need it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rnnkit.runtime.errors import InputError
from rnnkit.runtime.io import atomic_writer

PROVENANCE_FILE = "provenance.json"
LOGITS_FILE = "logits.npy"
OUTPUTS_FILE = "outputs.json"
CACHE_FORMAT = "rnnkit-distill-1"  # bump when what a cache entry holds changes


def cache_root() -> Path:
    """``$RNNKIT_CACHE_DIR/distill`` (the numba cache's base), else ``$XDG_CACHE_HOME/rnnkit/distill``."""
    base = os.environ.get("RNNKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rnnkit"
    )
    return Path(base) / "distill"


def hash_tree(path: Path) -> str:
    """sha256 of a checkpoint's or bundle's files (names and bytes; a checkpoint's resume state and
    plots excluded: they do not change its predictions)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel.startswith("resume/") or rel.endswith(".png") or f.name.startswith("."):
            continue
        h.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Teacher:
    path: Path
    kind: str  # "checkpoint" | "bundle"
    task: str
    sha256: str

    def record(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "task": self.task, "sha256": self.sha256}


def open_teacher(path, task: str) -> Teacher:
    """Identify ``path`` (a ``task`` checkpoint or bundle folder, or an installed bundle's name)."""
    p = Path(path)
    if not p.exists():
        try:
            from rnnkit.runtime.builtin import resolve_bundle

            p = Path(resolve_bundle(p))
        except Exception:  # noqa: BLE001 -- not an installed name either: say what was expected
            p = Path(path)
    if not p.is_dir():
        raise InputError(
            f"--teacher {path}: no such checkpoint or bundle folder -- give what `rnnkit train {task}` "
            f"or `rnnkit export` wrote"
        )
    if (p / "manifest.json").is_file():
        kind, found = "bundle", json.loads((p / "manifest.json").read_text(encoding="utf-8")).get("task")
    elif (p / "config.json").is_file():
        kind, found = "checkpoint", json.loads((p / "config.json").read_text(encoding="utf-8")).get("task", "classify")
    else:
        raise InputError(f"--teacher {p}: neither a bundle (manifest.json) nor a checkpoint (config.json)")
    if found != task:
        raise InputError(f"--teacher {p}: a {found} {kind}; `rnnkit train {task}` needs a {task} teacher")
    return Teacher(p.resolve(), kind, task, hash_tree(p))


def data_hash(items: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(items), ensure_ascii=False).encode("utf-8")).hexdigest()


def entry_dir(teacher: Teacher, data: str, settings: dict, cache: Path | None = None) -> Path:
    key = json.dumps({"format": CACHE_FORMAT, "teacher": teacher.sha256, "data": data, **settings}, sort_keys=True)
    return (cache or cache_root()) / f"{teacher.task}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def read_provenance(folder: Path, count: int) -> dict | None:
    """A complete cache entry's provenance (None: absent, incomplete or for another count)."""
    try:
        prov = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return prov if prov.get("format") == CACHE_FORMAT and prov.get("count") == count else None


def write_provenance(folder: Path, teacher, items: Sequence[str], t0: float, **fields) -> dict:
    """Write the cache entry's provenance (written last: an entry without it is incomplete) -> it.
    ``fields``: what the entry holds and how it was made; the teacher, the count and hash of the
    inputs and the seconds since ``t0`` are added here."""
    prov = {
        "format": CACHE_FORMAT,
        "teacher": teacher.record(),
        **fields,
        "count": len(items),
        "data_sha256": data_hash(items),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    with atomic_writer(folder / PROVENANCE_FILE) as f:
        f.write(json.dumps(prov, indent=1, ensure_ascii=False) + "\n")
    return prov


def _every_tenth(total: int, log: Callable[[str], None], what: str):
    done, next_at, t0 = [0], [max(1, total // 10)], time.perf_counter()

    def progress(k: int) -> None:
        done[0] += k
        if done[0] >= next_at[0] or done[0] == total:
            log(f"teacher: {done[0]}/{total} {what} ({time.perf_counter() - t0:.0f}s)")
            next_at[0] += max(1, total // 10)

    return progress


# -- classify: soft targets ---------------------------------------------------------------------


def teacher_logits(
    teacher: Teacher,
    texts: Sequence[str],
    labels: Sequence[str],
    temperature: float,
    cache: Path | None = None,
    log: Callable[[str], None] = print,
    threads: int | None = None,
    batch_size: int = 128,
) -> tuple[np.ndarray, dict]:
    """The teacher's logits for ``texts`` as float32 (N, len(labels)), columns in the student's
    ``labels`` order, and the cache entry's provenance (computed now, or read back)."""
    # keyed by the temperature too, so the provenance names the run's (the logits themselves serve any)
    folder = entry_dir(teacher, data_hash(texts), {"kind": "logits", "temperature": temperature}, cache)
    prov = read_provenance(folder, len(texts))
    if prov is None:
        t0 = time.perf_counter()
        log(f"teacher {teacher.path} ({teacher.kind}): logits for {len(texts)} training texts")
        if teacher.kind == "bundle":
            logits, teacher_labels = _bundle_logits(teacher.path, texts, threads, batch_size, log)
        else:
            logits, teacher_labels = _checkpoint_logits(teacher.path, texts, batch_size)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_writer(folder / LOGITS_FILE, "wb") as f:
            np.save(f, logits.astype(np.float32))
        prov = write_provenance(
            folder, teacher, texts, t0, targets="logits", labels=list(teacher_labels), temperature=temperature
        )
        cached = False
    else:
        cached = True
        log(f"teacher logits for {len(texts)} texts from the cache ({folder})")
    logits = np.load(folder / LOGITS_FILE)
    order = _label_order(prov["labels"], labels, teacher.path)
    return np.ascontiguousarray(logits[:, order]), {**prov, "cache": str(folder), "cached": cached}


def _label_order(teacher_labels: Sequence[str], labels: Sequence[str], path) -> list[int]:
    if sorted(teacher_labels) != sorted(labels):
        raise InputError(
            f"--teacher {path}: its labels {list(teacher_labels)} are not the training data's {list(labels)} "
            "-- distil from a teacher trained on the same label set"
        )
    return [list(teacher_labels).index(lab) for lab in labels]


def _bundle_logits(path: Path, texts, threads, batch_size, log) -> tuple[np.ndarray, list[str]]:
    """The torch-free runtime's batched ``logits`` (texts over the bundle's max_length: their first part)."""
    from rnnkit.runtime import load
    from rnnkit.runtime.session import length_buckets
    from rnnkit.runtime.tokenizer import pad_ids

    session = load(path, threads=threads)
    rows = session.encode(list(texts), truncate=True)
    out = np.empty((len(rows), len(session.labels)), dtype=np.float32)
    progress = _every_tenth(len(rows), log, "texts")
    for idx in length_buckets([len(r) for r in rows], batch_size):
        ids, lengths = pad_ids([rows[i] for i in idx])
        out[idx] = session.logits(ids, lengths)
        progress(len(idx))
    return out, list(session.labels)


def _checkpoint_logits(path: Path, texts, batch_size) -> tuple[np.ndarray, list[str]]:
    import torch

    from rnnkit.toolkit.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    order = np.argsort([len(ck.tokenizer.encode(t)) for t in texts], kind="stable")  # less padding
    out = np.empty((len(texts), len(ck.labels)), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = ck.logits([texts[i] for i in idx])
    return out, list(ck.labels)


def soft_target_loss(student_logits, teacher_logits, target, temperature: float, alpha: float):
    """Hinton et al. (2015): ``alpha * T^2 * KL(p_teacher,T || p_student,T) + (1 - alpha) * CE``,
    each the batch mean (torch tensors: (B, C) logits, (B,) label ids)."""
    import torch.nn.functional as F

    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, target)
    return alpha * t * t * soft + (1.0 - alpha) * hard


# -- seq2seq: sequence-level targets ------------------------------------------------------------


def teacher_outputs(
    teacher: Teacher,
    sources: Sequence[str],
    beam: int,
    cache: Path | None = None,
    log: Callable[[str], None] = print,
    threads: int | None = None,
    int8: bool = False,
    batch_size: int = 64,
) -> tuple[list[str], dict]:
    """The teacher's best beam-search output for each source (its target tokenizer's form; "" where
    it produced nothing), and the cache entry's provenance."""
    settings = {"kind": "beam", "beam": beam, "int8": int8}
    folder = entry_dir(teacher, data_hash(sources), settings, cache)
    prov = read_provenance(folder, len(sources))
    if prov is None:
        t0 = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        bundle = teacher.path
        if teacher.kind == "checkpoint":  # the runtime's batched beam search decodes a bundle
            bundle = _export_checkpoint(teacher.path, folder / "teacher.bundle", int8, log)
        from rnnkit.runtime import load

        log(
            f"teacher {teacher.path} ({teacher.kind}{', int8' if int8 else ''}): beam {beam} for {len(sources)} sources"
        )
        session = load(bundle, int8=int8, threads=threads)
        progress = _every_tenth(len(sources), log, "sources")
        outputs = session.translate(list(sources), beam=beam, batch_size=batch_size, progress=progress, truncate=True)
        with atomic_writer(folder / OUTPUTS_FILE) as f:
            json.dump(outputs, f, ensure_ascii=False)
        empty = sum(1 for o in outputs if not o.strip())
        prov = write_provenance(folder, teacher, sources, t0, targets="beam outputs", **settings, empty=empty)
        cached = False
    else:
        cached = True
        log(f"teacher outputs for {len(sources)} sources from the cache ({folder})")
    outputs = json.loads((folder / OUTPUTS_FILE).read_text(encoding="utf-8"))
    return outputs, {**prov, "cache": str(folder), "cached": cached}


def _export_checkpoint(path: Path, out: Path, int8: bool, log) -> Path:
    if (out / "manifest.json").is_file():
        return out
    from rnnkit.toolkit.export_checkpoint import export_checkpoint

    log(f"exporting the teacher checkpoint {path} to {out} (the runtime's beam search decodes it)")
    return Path(export_checkpoint(path, out, int8=int8, min_agreement=0.0, log=lambda _m: None)["path"])


def mix_pairs(pairs: Sequence[tuple[str, str]], outputs: dict[str, str], mix: str) -> tuple[list, dict]:
    """Training pairs from the references ``pairs`` and the teacher's ``outputs`` (source -> output):
    ``keep-references``: every reference and each teacher output not already a reference of its
    source; ``replace``: one pair per source with the teacher's output (a source whose output is
    empty keeps its references).  -> (pairs, counts for the training record)."""
    refs: dict[str, list[str]] = {}
    for s, t in pairs:
        refs.setdefault(s, []).append(t)
    out: list[tuple[str, str]] = [] if mix == "replace" else list(pairs)
    added = agreed = kept = 0
    for s, references in refs.items():
        o = outputs.get(s, "")
        if not o.strip():
            kept += 1
            if mix == "replace":
                out.extend((s, r) for r in references)
            continue
        same = any(" ".join(o.split()) == " ".join(r.split()) for r in references)
        agreed += same
        if mix == "replace" or not same:
            out.append((s, o))
            added += 1
    counts = {"mix": mix, "sources": len(refs), "teacher_pairs": added, "agree_with_a_reference": agreed}
    counts["empty_outputs_kept_references" if mix == "replace" else "empty_outputs"] = kept
    return out, counts
