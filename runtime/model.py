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

import os

from .bundle import open_bundle
from .classifier import Classifier as Classifier, Prediction as Prediction
from .encoder_decoder import EncoderDecoder as EncoderDecoder, Hypothesis as Hypothesis, Translation as Translation
from .language_model import Generation as Generation, LanguageModel as LanguageModel
from .session import (Session, check_truncate as check_truncate, length_buckets as length_buckets, pad as pad,
                      softmax as softmax)
from .tagger import Tagger as Tagger, Tagging as Tagging
from .tasks import task_of

Model = Session  # the base of every task object load() returns (its name before task objects existed)


def load(path: str | os.PathLike, backend: str = "auto", int8: bool = False, threads: int | None = None) -> Session:
    """Open and verify a bundle, then start its task object's sessions on the chosen backend."""
    bundle = open_bundle(path)
    return task_of(bundle.task).cls(bundle, backend=backend, int8=int8, threads=threads)
