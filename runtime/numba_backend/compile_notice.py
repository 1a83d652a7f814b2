"""One line before the numba backend compiles a model's kernels, so a cold first run is not a silent pause.

numba compiles a kernel the first time it is called with new argument types unless its on-disk
cache (``config.py``: ``NUMBA_CACHE_DIR``) holds it; a cache hit loads in milliseconds.  numba
announces each compile, never a cache load, as a ``"numba:compile"`` event.  ``watch(name)``
listens while a session is built and while it runs for the first time; the first compile it sees
logs one WARNING on the ``rnnkit.numba`` logger, once per process and model::

    compiling numba kernels for this model (once, ~5-20 s; `rnnkit warmup BUNDLE` does it ahead)

Nothing is logged when every kernel comes from the cache.  ``rnnkit`` shows it on stderr; a
program silences it with ``logging.getLogger("rnnkit.numba").setLevel(logging.ERROR)`` (without
any logging set up, Python prints WARNINGs on stderr).

The time is a measured range, not a prediction for this model: the first numba run of a model in
a fresh process with an empty cache (``RNNKIT_CACHE_DIR=$(mktemp -d) rnnkit warmup BUNDLE``) took
7.5 s (the demo's GRU classifier) and 7.9 s (the G2P encoder and decoder), 46 kernel compiles
each, on a 2-core machine shared with other work; 3-14 s on the project's benchmark machine
(docs/numba-passes.md: G2P 3.1 s, LSTM-256 classifier 5.0 s, language-model step 12.5 s); 12-21 s
on a busy 2-core machine.  The count of compiles is known only as they happen (numba compiles
what each call's argument types need), so no per-model figure is given in advance.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Iterator

from numba.core import event

COMPILE_SECONDS = "5-20"  # the measured range above
log = logging.getLogger("rnnkit.numba")

_watching = threading.local()  # .name: the model a compile in this thread is announced for
_announced: set[str] = set()  # models announced in this process
_lock = threading.Lock()
_registered = False


def message(name: str) -> str:
    return f"compiling numba kernels for this model (once, ~{COMPILE_SECONDS} s; `rnnkit warmup {name}` does it ahead)"


class _Listener(event.Listener):
    def on_start(self, ev) -> None:
        name = getattr(_watching, "name", None)
        if name is None:
            return
        with _lock:
            if name in _announced:
                return
            _announced.add(name)
        log.warning(message(name))

    def on_end(self, ev) -> None:
        pass


@contextmanager
def watch(name: str) -> Iterator[None]:
    """Announce the first numba compile inside this block for model ``name`` (a bundle folder)."""
    global _registered
    with _lock:
        if not _registered:
            event.register("numba:compile", _Listener())
            _registered = True
    outer = getattr(_watching, "name", None)
    _watching.name = name
    try:
        yield
    finally:
        _watching.name = outer
