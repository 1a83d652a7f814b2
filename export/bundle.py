"""Writing a bundle directory atomically.

Everything is written into a hidden temporary folder beside the target; the manifest
(with the sha256 and size of every file, and ``manifest_sha256`` over its own canonical
form: ``rnnkit.runtime.manifest.canonical_json``) is written last, then the folder is renamed
into place.  The folder and its files get the modes the user's umask gives a new folder and
file (0755 / 0644 under umask 022), not ``mkdtemp``'s private 0700.  An export that fails
validation, raises, or is killed never leaves a half-written bundle where the user asked for
one: at worst a hidden ``.NAME.tmp-*`` folder that ``open_bundle`` would refuse anyway (and the
next export to the same target removes).  Replacing an existing bundle swaps it out the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from ..runtime.bundle import sha256_file
from ..runtime.errors import InputError
from ..runtime.io import fsync_dir
from ..runtime.manifest import MANIFEST_FILE, seal


class BundleWriter:
    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        if self.out.exists() and not (self.out / MANIFEST_FILE).is_file():
            if not self.out.is_dir() or any(self.out.iterdir()):
                raise InputError(
                    f"{self.out}: exists and is not an rnnkit bundle; refusing to overwrite it. "
                    f"Choose another --out or remove it"
                )
        parent = self.out.parent if str(self.out.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"{self.out}: the folder {parent} does not exist; create it first")
        for stale in parent.glob(f".{self.out.name}.tmp-*"):  # left by a killed export
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=parent))

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def save_model(self, name: str, model: onnx.ModelProto) -> Path:
        path = self.tmp / name
        onnx.save_model(model, str(path))  # < 2 GB: weights stay inside the file
        return path

    def commit(self, manifest: dict) -> Path:
        folder_mode, file_mode = _umask_modes(self.tmp)
        files = {}
        for path in sorted(self.tmp.iterdir()):
            if path.name != MANIFEST_FILE:
                with open(path, "rb+") as handle:
                    os.fsync(handle.fileno())
                files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest["files"] = files  # the caller's manifest is the one written
        seal(manifest)  # last: it covers every other key, 'files' included
        with open(self.tmp / MANIFEST_FILE, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        for path in self.tmp.iterdir():  # attachments may come from mkstemp (0600) too
            if path.is_file() and not path.is_symlink():
                os.chmod(path, file_mode)
        os.chmod(self.tmp, folder_mode)
        fsync_dir(self.tmp)
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.tmp-old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        fsync_dir(self.out.parent if str(self.out.parent) else ".")
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out


def _umask_modes(folder: Path) -> tuple[int, int]:
    """(folder mode, file mode) that the process's umask gives new ones: 0o755 / 0o644 under umask 022.
    Read from a probe folder made with ``os.mkdir`` (0o777 & ~umask) rather than by calling
    ``os.umask``, which can only be read by setting it, for the whole process, threads included."""
    probe = Path(tempfile.mkdtemp(dir=folder))  # a fresh name inside our private folder (mkdtemp makes it 0700)
    try:
        os.rmdir(probe)
        os.mkdir(probe)  # the same name, now with the umask's mode
        folder_mode = probe.stat().st_mode & 0o777
    finally:
        os.rmdir(probe)
    return folder_mode, folder_mode & 0o666
