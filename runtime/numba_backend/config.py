"""Numba settings shared by every kernel: cache location, fastmath flags, threads.

Imported before ``numba`` anywhere in the backend, because numba reads
``NUMBA_CACHE_DIR`` once, at its own import.  The default cache lives in the user's
cache directory, not next to the installed package, so a read-only install (system
site-packages, a container image) still caches its compiled kernels.
"""

from __future__ import annotations

import os

if "NUMBA_CACHE_DIR" not in os.environ:
    _base = os.environ.get("RNNKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rnnkit")
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(_base, "numba")

# Every fast-math flag except nnan/ninf: a NaN or inf must still propagate (so a leak of
# padding shows up in tests) and comparisons with -inf (masked max pooling) stay exact.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # numba wants a set, not a frozenset

# Common @njit keyword arguments.  error_model='numpy' drops the division-by-zero checks
# that block vectorisation of the gate loops.
JIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")


def set_threads(threads: int | None) -> None:
    """Honour a ``threads`` option (numba prange runs over the batch only)."""
    if threads:
        import numba

        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
