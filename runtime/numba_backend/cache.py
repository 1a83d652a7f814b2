"""A corrupted on-disk kernel cache entry is a cache miss, never a crash.

numba writes its cache files atomically (temp file + rename), but a full disk, a copied or
synced cache folder, or a filesystem without atomic rename can still leave a truncated
``.nbi`` (index) or ``.nbc`` (compiled code) file.  numba then raises ``EOFError`` /
``UnpicklingError`` from every later call of that kernel, in every process, until someone
deletes the folder.  ``install`` wraps the two places numba reads them
(``IndexDataCacheFile._load_index`` and ``Cache._load_overload``, private names of numba 0.68;
where they are missing nothing is patched and numba behaves as before): an error while reading
or rebuilding an entry deletes the bad file, prints one line on stderr naming it, and reports a
miss, so numba recompiles the kernel and writes a fresh entry.  Answers cannot change: a miss
only costs the compile.

Imported by ``config`` after the cache folder is set; imports numba.
"""

from __future__ import annotations

import os
import sys

from numba.core import caching


def _say(path: str, exc: BaseException) -> None:
    first = (str(exc).splitlines() or [""])[0][:120]
    done = "discarded it; the kernel is recompiled"
    try:
        os.unlink(path)
    except FileNotFoundError:  # another process got there first
        pass
    except OSError as e:  # read-only cache: still a miss, but say how to clear it
        done = f"could not delete it ({e.strerror}); the kernel is recompiled -- delete the file by hand"
    sys.stderr.write(f"rnnkit: numba cache file {path} is corrupted ({type(exc).__name__}: {first}); {done}\n")
    sys.stderr.flush()


def install() -> None:
    """Patch numba's cache reader once per process (idempotent)."""
    index_data, cache = caching.IndexDataCacheFile, caching.Cache
    if getattr(cache, "_rnnkit_guarded", False) or not (
        hasattr(index_data, "_load_index") and hasattr(cache, "_load_overload")
    ):
        return
    load_index, load_overload = index_data._load_index, cache._load_overload

    def _load_index(self):
        try:
            return load_index(self)
        except OSError:  # permissions and the like: numba's own handling
            raise
        except Exception as exc:  # noqa: BLE001 -- unpickling garbage raises almost anything
            _say(self._index_path, exc)
            return {}  # an empty index: every signature misses, save() rewrites it

    def _load_overload(self, sig, target_context):
        try:
            return load_overload(self, sig, target_context)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a data file that does not unpickle or rebuild
            key = self._index_key(sig, target_context.codegen())
            name = self._cache_file._load_index().get(key)
            if name is None:  # not an entry's fault (no file to blame): numba's error stands
                raise
            _say(self._cache_file._data_path(name), exc)
            return None  # a miss: numba compiles and save() overwrites the same file name

    index_data._load_index = _load_index
    cache._load_overload = _load_overload
    cache._rnnkit_guarded = True
