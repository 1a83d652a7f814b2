"""Provenance in a manifest without the exporting machine's paths.

A bundle travels; ``/work/runs/g2p/train.tsv`` says where a file was on one machine (and who
exported it) and nothing a reader can check.  ``portable_provenance`` replaces every absolute
path in a provenance record by the file's name, and records beside it the file's sha256 when the
file exists (a checkpoint folder, which has no single digest, keeps its name only): what was
used, verifiably, without where.
"""

from __future__ import annotations

import os
from pathlib import Path, PureWindowsPath
from typing import Any

from ..runtime.bundle import sha256_file

MAX_HASH_BYTES = 1 << 30  # a training file larger than this is named, not hashed (export time)


def _is_path(value: str) -> bool:
    return os.path.isabs(value) or PureWindowsPath(value).is_absolute() or value.startswith("~")


def portable_provenance(value: Any) -> Any:
    """``value`` with every absolute path string replaced by its file name; in a dict, a key whose
    value was such a path to an existing file also gets ``KEY_sha256`` beside it."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out[key] = portable_provenance(item)
            if isinstance(item, str) and _is_path(item):
                path = Path(item).expanduser()
                if path.is_file() and path.stat().st_size <= MAX_HASH_BYTES and f"{key}_sha256" not in value:
                    out[f"{key}_sha256"] = sha256_file(path)
        return out
    if isinstance(value, (list, tuple)):
        return [portable_provenance(v) for v in value]
    if isinstance(value, str) and _is_path(value):
        return Path(value).name or PureWindowsPath(value).name
    return value
