"""Writing outputs without ever losing data (and, for old imports, ``read_records``).

``atomic_writer`` writes next to the target and renames into place only when the whole file is
written and fsynced: an interrupted run (Ctrl-C, kill -9, a full disk) leaves the previous file or
nothing, never half a file.  The temporary file is ``.NAME.HOST-PID.RANDOM.partial``; the next
writer of the same target removes those whose process is gone, so a killed run leaves no litter
after a rerun.  Files are created with the user's umask (0644 under umask 022), like ``open()``.
User records are read by ``rnnkit.runtime.records`` (re-exported here as ``read_records``).

Pure stdlib; must not import torch.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import socket
from pathlib import Path

from .errors import InputError
from .records import read_records as read_records  # noqa: F401  (the one reader; kept importable from here)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Delete ``.NAME.HOST-PID.*.partial`` siblings of ``path`` left by dead processes of this host."""
    path = Path(path)
    prefix, host, removed = f".{path.name}.", _host(), []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        owner = candidate.name[len(prefix) : -len(".partial")].split(".")[0]
        name, _, pid = owner.rpartition("-")
        # another host's writer may be alive on a shared filesystem: only judge our own processes
        if name == host and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):  # gone already, or not ours to delete: leave it
                candidate.unlink()
                removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Yield a file handle; the target appears (or is replaced) only on success."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise InputError(f"{path}: is a directory; give a file path for the output")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: the folder {parent} does not exist; create it first")
    remove_stale_partials(path)
    while True:
        tmp = parent / f".{path.name}.{_host()}-{os.getpid()}.{secrets.token_hex(4)}.partial"
        try:
            # 0o666 filtered by the umask, as open() does (tempfile.mkstemp would make it 0600)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (no-op where directories can't be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_text_file(path: str | os.PathLike, encoding: str = "utf-8", purpose: str = "give a plain-text file") -> str:
    """A whole plain-text file, refused with one clear line when it is missing, not ``encoding``
    text, or empty (``purpose``: what the message tells the user to do instead)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such text file -- {purpose}")
    try:
        text = p.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not {encoding} text ({e.reason} at byte {e.start}) -- pass --encoding") from None
    if not text.strip():
        raise InputError(f"{p}: is empty -- {purpose}")
    return text
