"""Bundles and checkpoints that ship as packages of their own, found by name when installed.

The G2P bundle (22 MB) and the demo checkpoint are data, and most installs need neither, so each
is a small distribution in ``packages/`` that an extra pulls in: ``rnnkit-g2p-cmudict``
(``rnnkit[g2p]``) and ``rnnkit-demo-mr`` (``rnnkit[train]``).  Such a distribution declares an
entry point in ``BUNDLES`` or ``CHECKPOINTS`` whose name is the asset's name and whose value is
the package that holds a folder of that name.  Finding it through importlib.metadata (where pip
recorded it) rather than a path relative to this file means nothing is downloaded at run time,
and any other distribution can ship a bundle the same way.

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

import importlib.resources
from importlib.metadata import entry_points
from pathlib import Path

from .errors import BundleError

BUNDLES = "rnnkit.bundles"  # opened by name: rnnkit predict NAME, rnnkit.runtime.load(NAME)
CHECKPOINTS = "rnnkit.checkpoints"  # torch checkpoints (rnnkit demo's)
# What rnnkit's own packages provide: asset name -> (distribution, the extra that installs it).
SHIPPED = {"g2p-cmudict": ("rnnkit-g2p-cmudict", "g2p"), "mr_small": ("rnnkit-demo-mr", "train")}


def find(name: str, group: str = BUNDLES) -> Path | None:
    """The folder of the installed asset ``name`` in entry-point ``group``; None when no package provides it."""
    for entry in entry_points(group=group, name=name):
        folder = importlib.resources.files(entry.module) / name
        # a zipped install gives a non-Path Traversable: bundles are opened as real files, so skip it
        if isinstance(folder, Path) and folder.is_dir():
            return folder
    return None


def require(name: str, group: str = BUNDLES) -> Path:
    """The folder of the installed asset ``name``, or a BundleError naming the pip command that installs it."""
    folder = find(name, group)
    if folder is None:
        raise BundleError(missing(name, group))
    return folder


def missing(name: str, group: str = BUNDLES) -> str:
    """Why ``name`` was not found and how to get it (the extra, and the local path in a clone)."""
    if name not in SHIPPED:
        return f"{name}: no installed package provides it (entry point group {group!r})"
    dist, extra = SHIPPED[name]
    return (
        f"{name}: ships in the package {dist}, which is not installed; install it with "
        f'`pip install "rnnkit[{extra}]"` (in a clone of rnnkit: `pip install ./packages/{dist}`)'
    )


def resolve_bundle(path: Path) -> Path:
    """``path`` itself when it exists or is not a bare name; otherwise the installed bundle of that name.

    A folder in the working directory wins over an installed bundle of the same name.  A bare name
    that rnnkit ships but is not installed is a BundleError naming the extra; any other name comes
    back unchanged, for the caller's own "no such bundle" message."""
    if path.exists() or len(path.parts) != 1:
        return path
    found = find(str(path), BUNDLES)
    if found is not None:
        return found
    if str(path) in SHIPPED:
        raise BundleError(missing(str(path), BUNDLES))
    return path
