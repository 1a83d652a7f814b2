"""The numba backend compiles once: no compilation on repeated runs in a process, none in a second
process that finds the on-disk cache.  A dispatch that recompiles (or re-runs the compiler's front
end, as ``numba.literally`` does on every call from Python) gives the same numbers, only slower,
so the numeric tests cannot see it; numba's compile events can."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_python

from rnnkit.runtime import load

pytestmark = pytest.mark.slow  # subprocesses, compiles or many exports: not in the fast subset

numba = pytest.importorskip("numba")


class CompileCounter:
    """Counts ``numba:compile`` events (every dispatcher compilation, cached or not) while active."""

    def __enter__(self):
        from numba.core import event

        counter = self

        class Listener(event.Listener):
            def on_start(self, ev):
                counter.n += 1

            def on_end(self, ev):
                pass

        self.n = 0
        self._listener = Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        from numba.core import event

        event.unregister("numba:compile", self._listener)


def test_repeated_runs_compile_nothing(gru_bundle, lm_bundles, s2s_bundles):
    """After one call of each shape class, further calls (other lengths, batch sizes, threads)
    reuse the compiled kernels: LSTM (int8 too), GRU, RNN, an LM step and a seq2seq decode."""
    runs = []
    for int8 in (False, True):
        m = load(gru_bundle, backend="numba", int8=int8)
        runs.append(lambda m=m: m.predict(["a good film", "bad", "the plot runs and runs"]))
    for cell, layers in (("lstm", 2), ("rnn", 1)):
        for int8 in (False, True) if cell == "lstm" else (False,):
            m = load(lm_bundles(cell, layers), backend="numba", int8=int8)
            state = m.spawn_state()
            runs.append(lambda state=state: (state.run("the cat "), state.feed_id(5)))
    m = load(s2s_bundles(), backend="numba")
    runs.append(lambda m=m: (m.translate(["cat", "horse"]), m.translate(["dog"], beam=2)))
    for run in runs:
        run()  # compiles (or loads from the cache)
    with CompileCounter() as counter:
        for run in runs:
            for _ in range(3):
                run()
    assert counter.n == 0, f"{counter.n} compilations on repeated runs"


CHILD = """
import json, sys
import numpy as np
from numba.core import event
n = [0]
class L(event.Listener):
    def on_start(self, ev): n[0] += 1
    def on_end(self, ev): pass
event.register("numba:compile", L())
from rnnkit.runtime import load
m = load(sys.argv[1], backend="numba", int8=sys.argv[2] == "int8")
probs = m.predict(["a good film", "bad"])
print(json.dumps({"compiles": n[0], "label": [p.label for p in probs]}))
"""


@pytest.mark.parametrize("int8", [False, True])
def test_a_second_process_compiles_nothing(gru_bundle, tmp_path, int8):
    """The on-disk cache serves a fresh interpreter: the kernels' closures over constants (the RNN
    entry points) and overloads included."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    arg = "int8" if int8 else "fp32"
    first = run_python(CHILD, str(gru_bundle), arg, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    second = run_python(CHILD, str(gru_bundle), arg, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    a, b = json.loads(first.stdout.splitlines()[-1]), json.loads(second.stdout.splitlines()[-1])
    assert a["compiles"] > 0 and b["compiles"] == 0, (a, b)
    assert a["label"] == b["label"]


KEY = """
import os, sys
os.environ.pop("NUMBA_CACHE_DIR", None)
if sys.argv[1] == "numba first":
    import numba
from rnnkit.runtime.numba_backend import config
import numba
print(numba.config.CACHE_DIR)
print(config._cache_key())
print(config.TILES_GRANTED)
"""


@pytest.mark.parametrize("order", ["rnnkit first", "numba first"])
def test_cache_folder_is_keyed_by_the_backend_sources(tmp_path, order):
    """numba checks a cached function against its own source file only, so kernels inlined from
    another module would be served stale after an upgrade: rnnkit's cache folder is one per hash of
    the backend's sources (config._cache_key).  numba imported before rnnkit is told the folder too
    (else it caches next to the package, with numba's default tuning); a process granted AMX tiles
    uses a folder of its own (``-tiles``)."""
    r = run_python(KEY, order, env={"RNNKIT_CACHE_DIR": str(tmp_path)}, timeout=120)
    assert r.returncode == 0, r.stderr
    folder, key, tiles = r.stdout.split()[-3:]
    assert folder == str(tmp_path / "numba" / (key + ("-tiles" if tiles == "True" else "")))
    assert len(key) == 12


def test_cache_key_changes_with_any_backend_source(tmp_path):
    """Editing one module (say matvec.py, whose kernels rnn.py's drivers inline) gives another key."""
    import shutil

    from rnnkit.runtime.numba_backend import config

    src = Path(config.__file__).parent
    copy = tmp_path / "numba_backend"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert config._cache_key(str(copy)) == config._cache_key()
    with open(copy / "matvec.py", "a") as f:
        f.write("# changed\n")
    assert config._cache_key(str(copy)) != config._cache_key()
