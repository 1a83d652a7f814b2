"""Which ``pip install "rnnkit[...]"`` a command needs when one of its packages is missing.

A runtime-only install (``rnnkit[runtime]``) has no torch: ``rnnkit train``, ``export`` and
``demo`` then stop with one line naming the extra, not a ``ModuleNotFoundError`` traceback.
Torch-free (the CLI imports it before any command runs).
"""

from __future__ import annotations

# The torch build the `train` extra is tested with (pyproject.toml: the CPU wheel).
TORCH_PIN = "torch==2.13.0"

# top-level module -> the extra that installs it
PACKAGE_EXTRAS = {
    "torch": "train",
    "matplotlib": "train",
    "onnxruntime": "onnxruntime",
    "numba": "numba",
    "llvmlite": "numba",
    "dask": "dask",
    "distributed": "dask",
    "fastapi": "serve",
    "uvicorn": "serve",
}

# commands that train or export: whatever they miss, the `train` extra brings all of it
TRAINING_COMMANDS = ("train", "export", "demo")


def missing_package_message(exc: ModuleNotFoundError, command: str) -> str | None:
    """One line for ``command`` (``"rnnkit train classify"``) failing on ``exc``; None when the missing
    module is not one an extra provides (then it is a bug, and its traceback is wanted)."""
    name = (exc.name or "").split(".")[0]
    if name not in PACKAGE_EXTRAS:
        return None
    words = command.split()
    extra = "train" if len(words) > 1 and words[1] in TRAINING_COMMANDS else PACKAGE_EXTRAS[name]
    pin = f" (torch as: pip install {TORCH_PIN})" if name == "torch" else ""
    return f'{command} needs {name}, which is not installed: pip install "rnnkit[{extra}]"{pin}'
