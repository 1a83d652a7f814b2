"""The habits CI enforces on the checkout: ruff's lint rules and format, and mypy over rnnkit.runtime
(configured in pyproject.toml, [tool.ruff] and [tool.mypy]).  The tools come with the `lint` extra
(pinned there, so a new release cannot fail CI on its own); these tests skip only where it is not
installed.  Each failure message is the tool's own report, and says the command that fixes or shows it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint():
    pytest.importorskip("ruff")
    result = _run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, (
        f"ruff check found problems (`ruff check --fix .` fixes the safe ones):\n{result.stdout}{result.stderr}"
    )


def test_ruff_format():
    pytest.importorskip("ruff")
    result = _run("ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, (
        f"files not in ruff's format (`ruff format .` rewrites them):\n{result.stdout}{result.stderr}"
    )


def test_mypy_runtime(tmp_path):
    pytest.importorskip("mypy")
    link = ROOT / "typecheck" / "rnnkit" / "runtime"
    assert link.is_symlink() and (link / "bundle.py").is_file(), (
        f"{link} must be a symlink to ../../runtime (how mypy sees runtime/ as rnnkit.runtime); "
        f"a checkout without symlinks (git config core.symlinks false) lacks it"
    )
    result = _run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))  # files and options: [tool.mypy]
    assert result.returncode == 0, f"mypy (run `mypy` in {ROOT}):\n{result.stdout}{result.stderr}"
