"""MkDocs hook: let mkdocstrings (griffe) read rnnkit's packages from their sources.

The folders install under other names through setuptools' ``package-dir`` (``runtime/`` is
``rnnkit.runtime``), which griffe's static finder cannot follow: it looks for an ``rnnkit/``
folder. So at build time this hook lays out a temporary ``rnnkit/`` folder of symlinks to the
source folders named in pyproject.toml and gives it to the Python handler as its search path.
The API reference is then read from the sources; nothing is imported (torch is not needed).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

_made: list[Path] = []


def _package_dirs(root: Path) -> dict[str, str]:
    """``rnnkit.<name>`` -> source folder, from ``[tool.setuptools] package-dir``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the mapping pyproject.toml declares
        return {"rnnkit.runtime": "runtime", "rnnkit.export": "export", "rnnkit.toolkit": "toolkit"}
    with open(root / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["tool"]["setuptools"]["package-dir"]


@event_priority(100)  # before mkdocstrings' own on_config reads the handler settings
def on_config(config):
    root = Path(config.config_file_path).resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix="rnnkit-api-"))
    _made.append(tmp)
    for package, folder in _package_dirs(root).items():
        link = tmp.joinpath(*package.split("."))
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(root / folder, target_is_directory=True)
    config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})["paths"] = [str(tmp)]
    return config


def on_shutdown():
    while _made:
        shutil.rmtree(_made.pop(), ignore_errors=True)
