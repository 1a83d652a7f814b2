"""A corrupted numba cache entry (a truncated ``.nbc`` or ``.nbi``, e.g. after a full disk) is
discarded and recompiled with one line on stderr per bad file, never a traceback on every later
run (runtime/numba_backend/cache.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_python

pytest.importorskip("numba")

CHILD = """
import json, sys
from rnnkit.runtime import load
m = load(sys.argv[1], backend="numba")
print(json.dumps([[p.label, p.score] for p in m.predict(["a good film", "bad", "the plot runs and runs"])]))
"""


pytestmark = pytest.mark.slow  # subprocesses, compiles or many exports: not in the fast subset


def _truncate(files: list[Path]) -> None:
    for f in files:
        size = f.stat().st_size
        with open(f, "r+b") as fh:
            fh.truncate(size // 2)


def test_truncated_cache_files_are_discarded_and_recompiled(gru_bundle, tmp_path):
    cache = tmp_path / "cache"
    env = {"NUMBA_CACHE_DIR": str(cache)}

    def run():
        r = run_python(CHILD, str(gru_bundle), env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        notices = [x for x in lines if x.startswith("compiling numba kernels for this model")]
        assert len(notices) <= 1, lines  # the cold-compile notice, once at most
        return json.loads(r.stdout.splitlines()[-1]), [x for x in lines if x not in notices]

    expected, noise = run()  # fills the cache
    assert noise == []
    for pattern in ("*.nbc", "*.nbi"):
        bad = sorted(cache.rglob(pattern))
        assert bad, f"no {pattern} files in {cache}"
        _truncate(bad)
        got, lines = run()
        assert got == expected
        named = sorted(line.split("numba cache file ")[1].split(" is corrupted")[0] for line in lines)
        assert named == [str(f) for f in bad], lines  # one line per bad file, naming it
        assert all(
            line.startswith("rnnkit: numba cache file ") and "discarded it; the kernel is recompiled" in line
            for line in lines
        ), lines
        assert all(f.is_file() and f.stat().st_size > 0 for f in bad)  # rewritten by the recompile
        got, lines = run()  # repaired: quiet, loads from the cache
        assert got == expected and lines == []
