"""The runtime's entry point: ``load(bundle, backend="auto", int8=False, threads=None)``.

``load`` opens and verifies a bundle and returns its task object, chosen by the manifest's
``task`` through the registry (``rnnkit.runtime.tasks``): a ``Classifier`` (``predict``), a
``Tagger`` (``tag``), a ``LanguageModel`` (``spawn_state``, ``generate``, ``score``, ...) or an
``EncoderDecoder`` (``translate``, ``nbest``).  Every one is a ``Model``: the shared base
(``rnnkit.runtime.session.Session``: bundle, backend sessions, ``warmup``, ``run_batch``), kept
under its old name so ``isinstance(m, Model)`` holds for whatever ``load`` returned.

The result types and batching helpers are re-exported here for code that imported them from
this module before the task objects had modules of their own.

Must not import torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .bundle import open_bundle
from .classifier import Classifier as Classifier
from .classifier import Prediction as Prediction
from .encoder_decoder import EncoderDecoder as EncoderDecoder
from .encoder_decoder import Hypothesis as Hypothesis
from .encoder_decoder import Translation as Translation
from .errors import BundleError
from .language_model import Generation as Generation
from .language_model import LanguageModel as LanguageModel
from .manifest import MANIFEST_FILE
from .session import Session
from .session import check_truncate as check_truncate
from .session import length_buckets as length_buckets
from .session import pad as pad
from .session import softmax as softmax
from .tagger import Tagger as Tagger
from .tagger import Tagging as Tagging
from .tasks import TASKS, task_of

Model = Session  # the base of every task object load() returns (its name before task objects existed)


CHECKPOINT_FORMAT = "rnnkit-checkpoint"  # config.json's "format" in a training checkpoint (toolkit/checkpoint.py)


def load(path: str | os.PathLike, backend: str = "auto", int8: bool = False, threads: int | None = None) -> Session:
    """Open and verify a bundle, then start its task object's sessions on the chosen backend."""
    bundle = open_checked(path)
    return task_of(bundle.task).cls(bundle, backend=backend, int8=int8, threads=threads)


def open_checked(path: str | os.PathLike):
    """``open_bundle``, but a training checkpoint folder (what ``rnnkit train`` writes) is refused
    with the command that turns it into a bundle, not as a broken bundle."""
    folder = Path(path)
    task = _checkpoint_task(folder) if folder.is_dir() and not (folder / MANIFEST_FILE).exists() else None
    if task is not None:
        verb = TASKS[task].verb if task in TASKS else "predict"
        raise BundleError(
            f"{folder}: is a training checkpoint (what `rnnkit train` writes), not a bundle; export "
            f"it first: `rnnkit export {folder} --out BUNDLE`, then `rnnkit {verb} BUNDLE ...`"
        )
    return open_bundle(path)


def _checkpoint_task(folder: Path) -> str | None:
    """The task of the training checkpoint in ``folder`` (its config.json); None if it is not one."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        return None
    return str(config.get("task", "classify"))
