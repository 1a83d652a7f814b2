"""Numba settings shared by every kernel: cache location, fastmath flags, threads.

Imported before ``numba`` anywhere in the backend, because numba reads ``NUMBA_CACHE_DIR`` and
``NUMBA_CPU_FEATURES`` once, at its own import.  The default cache lives in the user's
cache directory, not next to the installed package, so a read-only install (system
site-packages, a container image) still caches its compiled kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import sys
from typing import Any


def cache_bytes(level: int) -> int:
    """One core's data/unified cache of ``level`` (2: L2, 3: the L3 it shares) in bytes, from Linux
    sysfs; 0 where it cannot be read (then nothing is prefetched: matvec.prefetched)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(base)):
            folder = os.path.join(base, index)
            if not index.startswith("index"):
                continue
            with open(os.path.join(folder, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(folder, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(folder, "size")) as f:
                text = f.read().strip().upper()
            return int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1:], 0)
    except (OSError, ValueError):
        pass
    return 0


def _cache_key(folder: str = os.path.dirname(os.path.abspath(__file__))) -> str:
    """A short hash of this backend's sources (the ``.py`` files of ``folder``).

    numba checks a cached function against its own file only: a kernel inlined from another module
    (matvec's into rnn's drivers) would be served stale after an upgrade that changed only that
    module.  One cache folder per version of the sources avoids that."""
    h = hashlib.sha1()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:12]


def _request_tiles() -> bool:
    """Ask Linux for the AMX tile registers (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``,
    kernel 5.16+; once per process): True when granted.  Without the grant the first tile
    instruction kills the process, so compiled code that uses tiles (``amx.py``) is cached apart
    from code compiled where they were refused (a container's seccomp profile, an older kernel)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(158, 0x1023, 18) == 0  # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XTILEDATA
    except (OSError, AttributeError):
        return False


TILES_GRANTED = _request_tiles()

if "NUMBA_CACHE_DIR" not in os.environ:
    _base = os.environ.get("RNNKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rnnkit"
    )
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(_base, "numba", _cache_key() + ("-tiles" if TILES_GRANTED else ""))


def _wide_vectors() -> None:
    """Ask numba for 512-bit vectors on AVX-512 CPUs (unless the user chose numba's target).

    LLVM tunes AVX-512 CPUs with ``prefer-256-bit``: its vectoriser then keeps the recurrent cells'
    gate math on 256-bit registers.  Measured on this project's machine (Emerald Rapids, 1 thread,
    ``benchmarks/rnn_op_speed.py``): int8 LSTM H=256 B=1 1.17x -> 1.05x onnxruntime's, fp32 0.93x ->
    0.88x.  The hand-written mat-vec kernels use 512-bit IR either way.  Opt out with
    ``RNNKIT_VECTOR_WIDTH=256`` (or set ``NUMBA_CPU_FEATURES``/``NUMBA_CPU_NAME`` yourself; then
    this does nothing).  Process-wide, like any numba setting: it applies to numba code compiled
    after rnnkit's numba backend was imported first.
    """
    if (
        os.environ.get("RNNKIT_VECTOR_WIDTH", "512") != "512"
        or "NUMBA_CPU_FEATURES" in os.environ
        or "NUMBA_CPU_NAME" in os.environ
    ):
        return
    try:
        import llvmlite.binding as ll

        features = ll.get_host_cpu_features()
    except Exception:  # noqa: BLE001 - no feature list on this platform: leave numba's default
        return
    if all(features.get(f, False) for f in ("avx512f", "avx512bw", "avx512vl")):
        os.environ["NUMBA_CPU_FEATURES"] = features.flatten() + ",-prefer-256-bit"


_wide_vectors()

if "numba.core.config" in sys.modules:
    # numba was imported first (by the app, another library, a test module): it has read its
    # settings already and would cache rnnkit's kernels next to the package (its in-tree locator,
    # chosen when a function is decorated).  Let it read them again.  The vector width still only
    # applies if numba has compiled nothing yet in this process.
    sys.modules["numba.core.config"].reload_config()

# Every fast-math flag except nnan/ninf: a NaN or inf must still propagate (so a leak of
# padding shows up in tests) and comparisons with -inf (masked max pooling) stay exact.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # numba wants a set, not a frozenset

# Common @njit keyword arguments.  error_model='numpy' drops the division-by-zero checks
# that block vectorisation of the gate loops.
JIT: dict[str, Any] = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")


def set_threads(threads: int | None) -> None:
    """Honour a ``threads`` option (numba prange runs over the batch only)."""
    if threads:
        import numba

        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


# A truncated cache file (full disk, killed copy) is a miss with one line on stderr, not an
# UnpicklingError from every later run (cache.py).  Here, after NUMBA_CACHE_DIR is set.
from . import cache as _cache  # noqa: E402

_cache.install()
