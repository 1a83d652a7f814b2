"""The base every task object shares: a verified bundle plus one backend session per graph.

``load()`` (``rnnkit.runtime.model``) returns a ``Classifier``, ``Tagger``, ``LanguageModel`` or
``EncoderDecoder`` (``rnnkit.runtime.tasks`` says which); all of them are a ``Session`` (exported
as ``rnnkit.runtime.Model``).  This module holds what does not depend on the task: the backend
sessions (fp32 or int8, threads), ``_run`` (numba runs serialised), ``warmup``, the long-input
policy (``_dropped``), ``run_batch``'s contract, and the helpers batching shares (``pad``,
``length_buckets``, ``softmax``, ``check_truncate``).

A task object has only its own task's methods.  Asking a classifier for ``generate`` is an
``AttributeError`` like any missing attribute, but its message (``TaskMismatchError``) names the
kind of bundle that has the method, because "a classify bundle has no generate()" is a mistake
about the bundle, not a typo.

Must not import torch, onnxruntime or numba (backends import theirs when chosen), nor the task
modules or the registry: they import this one.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, Sequence

import numpy as np

from . import backends
from .errors import InputError, TaskMismatchError
from .tokenizer import pad_ids

Progress = Callable[[int], None]  # progress(n): called after each batch with the n items it finished


class Session:
    """A loaded bundle: ``bundle``, ``backend``, ``int8``, ``threads``, ``tokenizer``, ``max_length``,
    ``sessions`` (graph name -> backend session) and ``session`` (the single graph's, if one)."""

    task = ""  # the manifest's 'task' this class runs (set by each task class)
    noun = ""  # what the task is called in messages: "a classifier bundle"
    verb = ""  # its main method, offered when another task's method is asked for

    # ``bundle`` is an ``open_bundle`` result, not imported here even for typing: the bundle's checks
    # read the task registry, which imports this module.
    def __init__(self, bundle, backend: str = "auto", int8: bool = False, threads: int | None = None):
        self.bundle = bundle
        self.backend = backends.resolve(backend)
        self.int8 = int8
        self.threads = threads
        self.tokenizer = bundle.tokenizer
        self.max_length = int(bundle.manifest["graph"]["max_length"])
        self.sessions = {
            name: backends.open_session(bundle.graph(int8, name), bundle.model_path(int8, name), self.backend, threads)
            for name in bundle.graph_names
        }
        self.session = self.sessions.get("model")  # single-graph tasks
        # numba's parallel kernels are not safe to enter from several threads at once: serialise runs there
        self._lock = threading.Lock() if self.backend == "numba" else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.bundle.path)!r}, backend={self.backend!r}, int8={self.int8})"

    def __getattr__(self, name: str):
        # Only reached when normal lookup failed.  Class attributes only: this also runs for
        # attributes looked up before __init__ set them (copy, pickle), which must stay plain misses.
        owners = [cls for cls in Session.__subclasses__() if not name.startswith("_") and name in vars(cls)]
        if not owners or type(self) in owners:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self)
        kinds = " or ".join(cls.noun for cls in owners)
        verbs = ", ".join(f"rnnkit train {cls.task}" for cls in owners)
        raise TaskMismatchError(
            f"a {self.task} bundle has no {name}(); load {kinds} bundle ({verbs}); this one has {self.verb}()",
            name=name,
            obj=self,
        )

    # -- the one batch entry point ---------------------------------------------------------
    def run_batch(
        self, items: Sequence, batch_size: int = 32, progress: Progress | None = None, truncate: bool = False
    ) -> list:
        """Run the task on ``items`` -> one result per item, in order, each with ``to_dict()``: what
        local ``rnnkit predict``, the Dask workers (``rnnkit.runtime.batch.run_items``) and a server call.
        ``progress(n)`` after each batch; ``truncate``: the long-input policy (``_dropped``).  A task
        adds keyword options of its own (a decoder's beam, a language model's temperature, ...)."""
        raise NotImplementedError(f"{type(self).__name__}.run_batch")

    def warmup(self) -> float:
        """Run one tiny batch (compiles numba kernels or fills caches); returns seconds taken."""
        start = time.perf_counter()
        self._warm()
        return time.perf_counter() - start

    def _warm(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}._warm")

    # -- running graphs -----------------------------------------------------------------------
    def _run(self, names, feeds, session=None) -> list[np.ndarray]:
        session = session or self.session
        if self._lock is None:
            return session.run(names, feeds)
        with self._lock:
            return session.run(names, feeds)

    def _graph_run(self, name: str):
        """One graph of the bundle as ``feeds -> {output name: array}`` (the decode loop's view)."""
        session = self.sessions[name]
        names = [o.name for o in session.get_outputs()]
        return lambda feeds: dict(zip(names, self._run(names, feeds, session)))

    # -- inputs ---------------------------------------------------------------------------------
    def _dropped(self, what: str, i: int, tokens: int, truncate: bool) -> int:
        """Tokens to drop from item #i of ``tokens`` tokens: 0 up to ``max_length``; past it, all beyond
        ``max_length`` with ``truncate``, else the item is refused (never silently cut)."""
        if tokens <= self.max_length:
            return 0
        if not truncate:
            raise InputError(
                f"{what} #{i} has {tokens} tokens, more than this bundle's max_length {self.max_length}; "
                f"split it, or pass truncate=True to use its first {self.max_length} tokens (or "
                f"re-export with a larger max_length)"
            )
        return tokens - self.max_length

    def _encode_texts(self, texts: Sequence[str], truncate: bool, why_empty: str) -> tuple[list[list[int]], list[int]]:
        """Texts -> id rows (the first ``max_length`` ids) and the tokens dropped from each; a text
        with no tokens is refused with ``why_empty``.  Item errors name the text by position
        ("text #3"), which ``batch.run_items`` reads to set that one item aside."""
        encoded, dropped = [], []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text #{i} is {type(text).__name__}, expected str")
            ids = self.tokenizer.encode(text)
            if not ids:
                raise InputError(f"text #{i} ({text!r}) has no tokens; {why_empty}")
            dropped.append(self._dropped("text", i, len(ids), truncate))
            encoded.append(ids[: self.max_length])
        return encoded, dropped


pad = pad_ids  # right-pad id rows with <pad> = 0 -> ((B, T) int64, (B,) int32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def check_truncate(truncate) -> bool:
    """``truncate`` is a yes/no: anything else (a number of tokens, say) is refused, not read as truthy."""
    if not isinstance(truncate, (bool, np.bool_)):
        raise InputError(
            f"truncate must be True or False, got {truncate!r}; the length it cuts at is the bundle's max_length"
        )
    return bool(truncate)


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
    return int(batch_size)


def length_buckets(lengths: Sequence[int], batch_size: int) -> Iterable[np.ndarray]:
    """Row indices in batches of similar length (stable sort keeps equal lengths in order)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
