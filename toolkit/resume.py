"""Resuming an interrupted training run (``rnnkit train <task> --resume``).

While a run trains, ``loop.fit`` rewrites the whole checkpoint directory after every epoch (one
atomic write, ``rnnkit.toolkit.checkpoint.write_checkpoint``): ``weights.pt`` holds the best epoch
so far, ``config.json``'s training record the epochs done with ``"in_progress": true``, and
``resume/state.pt`` everything needed to continue bit for bit (current weights, optimizer, RNG
states, best epoch, stale counter, history; read with ``weights_only=True``).  So after a kill
the folder is a usable checkpoint of the best epoch so far plus the state to continue from.
``read_resume_state`` and ``check_resume`` guard ``--resume``: nothing to resume, a corrupted
state, or a run started with other options or data is refused.

Imports torch; never imported by ``rnnkit.runtime``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rnnkit.runtime.errors import BundleError, InputError
from rnnkit.toolkit.checkpoint import (
    CONFIG_FILE,
    RESUME_DIR,
    STATE_FILE,
    STATE_FORMAT,
    WEIGHTS_FILE,
    check_out_dir,
    is_checkpoint,
)


def fingerprint(*parts) -> str:
    """A short hash of the data a run trains and validates on (arrays by bytes, the rest as JSON):
    ``--resume`` on edited or other data is refused, even when the paths are the same."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str(part.dtype).encode() + str(part.shape).encode() + np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, ensure_ascii=False, default=lambda o: o.tolist()).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def run_identity(task: str, config, data: str, **flags) -> dict:
    """What a resumed run must share with the interrupted one: the task, every option of
    ``config`` but ``epochs`` and ``on_nonfinite``, the task's other CLI ``flags`` (e.g. ``format``) and the ``data``
    fingerprint.  Paths are not compared: the same data moved elsewhere resumes fine.  Nor is
    ``on_nonfinite``: a run stopped by a NaN may go on with ``--on-nonfinite skip``."""
    options = {
        k: v
        for k, v in asdict(config).items()
        if k not in ("epochs", "on_nonfinite", "teacher") and LATER_OPTIONS.get(k, _ABSENT) != v
    }
    return {"task": task, "options": {**options, **flags}, "data": data}


_ABSENT = object()
# options added after runs were interrupted with checkpoints of the time: left out of the identity at
# their default, so such a run still resumes.  The teacher is compared by its hash (the task's
# ``teacher_sha`` flag), not its path, like the data.
LATER_OPTIONS = {
    "distill_temperature": 2.0,
    "distill_alpha": 0.5,
    "distill_beam": 5,
    "distill_mix": "keep-references",
    "distill_int8": False,
    "nproc": 1,
}


def read_resume_state(out_dir, resume: bool, force: bool | None = None) -> dict | None:
    """``out_dir/resume/state.pt`` for ``--resume`` (None for a fresh run).  Refused: ``--resume``
    with nothing to resume, an unreadable state, and a fresh run over an earlier one unless ``force``:

    * ``force=None`` (the Python API's default): a finished checkpoint is replaced, an interrupted
      run is refused (starting over would throw its epochs away);
    * ``force=False`` (``rnnkit train`` without ``--force``): both are refused;
    * ``force=True`` (``--force``): both are replaced by the new run.

    A folder that is not an rnnkit checkpoint is refused whatever ``force`` says (never deleted)."""
    if resume and force:
        raise InputError(f"{out_dir}: --resume continues the run there and --force replaces it; give one of them")
    out = check_out_dir(out_dir)
    path = out / RESUME_DIR / STATE_FILE
    if not resume:
        if force:
            return None
        if path.exists():
            raise InputError(
                f"{out}: holds an interrupted training run ({_epochs_done(out)}); continue it with "
                f"--resume (resume=True), or start over with --force (force=True), which discards "
                f"the epochs done"
            )
        if force is False and is_checkpoint(out):
            raise InputError(
                f"{out}: holds a trained checkpoint ({_epochs_done(out, CONFIG_FILE)}); pass --force to "
                f"replace it, or choose another --out"
            )
        return None
    if not path.is_file():
        why = (
            "the run finished and wrote its final checkpoint"
            if is_checkpoint(out)
            else "the folder does not exist"
            if not out.exists()
            else "no run has written one"
        )
        left = sorted(out.resolve().parent.glob(f".{out.name}.old-*/ckpt/{RESUME_DIR}/{STATE_FILE}"))
        hint = (
            f"; a write interrupted by the kill left {left[-1].parents[1]}: move it to {out} and run "
            "again with --resume"
            if left
            else " -- train without --resume"
        )
        raise InputError(f"{out}: nothing to resume (no {RESUME_DIR}/{STATE_FILE}: {why}){hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many types for a truncated file
        raise BundleError(
            f"{path}: cannot be read ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}) "
            f"-- the resume state is corrupted; delete {path.parent} and train without --resume "
            f"({WEIGHTS_FILE} is still the best epoch so far)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise BundleError(
            f"{path}: format {got!r}, expected {STATE_FORMAT!r} -- not a resume state of this "
            f"rnnkit; delete {path.parent} and train without --resume"
        )
    return state


def check_resume(out_dir, state: dict, identity: dict, epochs: int) -> None:
    """Refuse to continue ``state`` with other options or data (every difference in one message).
    ``epochs`` may change, but not below the epochs done, nor under a cosine schedule: it spans
    all epochs, so the epochs done would belong to another run's schedule."""
    old, problems = state["identity"], []
    if old["task"] != identity["task"]:
        problems.append(f"it is a {old['task']!r} run, not {identity['task']!r}")
    for k in sorted(old["options"].keys() | identity["options"].keys()):
        was, now = old["options"].get(k), identity["options"].get(k)
        if was != now:
            problems.append(f"--{k.replace('_', '-')} was {was!r}, now {now!r}")
    if old["data"] != identity["data"]:
        problems.append("the training or dev data differ (other contents, or another dev split)")
    done, planned = state["epoch"], state["epochs"]
    if epochs < done:
        problems.append(f"--epochs {epochs} but {done} epochs are done already")
    elif epochs != planned and identity["options"].get("lr_schedule") == "cosine":
        problems.append(
            f"--epochs was {planned}, now {epochs}: the cosine learning-rate schedule spans all "
            f"epochs, so the {done} done would not follow it (keep --epochs {planned})"
        )
    if problems:
        raise InputError(
            f"{Path(out_dir)}: cannot resume the interrupted run: "
            + "; ".join(problems)
            + " -- give the interrupted run's options (only --epochs may change), or delete "
            f"{Path(out_dir) / RESUME_DIR} and train without --resume"
        )


def _epochs_done(out: Path, otherwise: str = f"{RESUME_DIR}/{STATE_FILE}") -> str:
    try:
        training = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))["training"]
        return f"{training['epochs_run']} of {training['epochs']} epochs done"
    except (OSError, ValueError, KeyError, TypeError):
        return otherwise
