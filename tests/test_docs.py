"""The documentation: the MkDocs site builds with --strict, the README stays short, and every
`rnnkit ...` command line shown in the README and in docs/ names a real command and real options.

The last check is the cheap one that catches drift: a renamed flag or command fails here before a
reader copies a command that no longer works.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 250
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_click")  # the `docs` extra
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
NOT_SHELL = {"python", "json", "toml", "yaml", "text"}


def _missing_docs_packages() -> list[str]:
    missing = []
    for name in DOCS_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a dotted name whose parent is absent
            found = False
        if not found:
            missing.append(name)
    return missing


def test_mkdocs_build_strict(tmp_path):
    missing = _missing_docs_packages()
    if missing:
        pytest.skip(f"the docs tools are not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    # the generated references really rendered (an empty `:::` block would still build)
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    api_page = (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "rnnkit predict" in cli_page and "--int8" in cli_page
    assert "rnnkit.runtime.load" in api_page and "export_module" in api_page


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines, more than {MAX_README_LINES}: move detail into docs/"
    )


def test_readme_starts_with_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    first = FENCE.search(text)
    assert first is not None, "README.md has no code block"
    assert text[: first.start()].count("\n") <= 3, "the set-up commands must be the README's first block, at the top"
    commands = [line for line in first.group(2).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) == 2, f"the README's first code block must hold exactly two commands, has {commands}"
    assert commands[0].rstrip().endswith("rnnkit demo"), commands[0]
    assert "pytest" in commands[1], commands[1]


def test_readme_links_resolve():
    """README.md is not part of the MkDocs build, so its relative links are checked here."""
    text = README.read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t and not t.startswith("#")]
    assert targets, "README.md links to no documentation page"
    broken = [t for t in targets if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


def _shell_lines(text: str):
    """Logical lines of the shell code blocks (continuations joined, comments dropped)."""
    for match in FENCE.finditer(text):
        if match.group(1).lower() in NOT_SHELL:
            continue
        for line in match.group(2).replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                yield line


def _rnnkit_invocations(text: str):
    """Each `rnnkit ...` command in the shell blocks, as its argument list (after `rnnkit`)."""
    for line in _shell_lines(text):
        for segment in re.split(r"&&|\|\||[|;]", line):
            try:
                words = shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", segment))  # `[--flag X]`: an optional flag
            except ValueError as exc:  # unbalanced quotes: not a shell line (give the block a language)
                raise AssertionError(f"cannot split {line!r} as a shell line ({exc}); mark its block ```text") from exc
            if words and Path(words[0]).name == "rnnkit":
                yield line, words[1:]


def _doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def test_documented_commands_exist():
    from rnnkit.toolkit.cli import cli

    seen, problems = 0, []
    for path in _doc_files():
        for line, args in _rnnkit_invocations(path.read_text(encoding="utf-8")):
            seen += 1
            command, rest = cli, list(args)
            while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
                name = rest.pop(0)
                if name not in command.commands:
                    problems.append(
                        f"{path.relative_to(ROOT)}: `{line}`: no command {name!r} (have {sorted(command.commands)})"
                    )
                    break
                command = command.commands[name]
            else:
                if isinstance(command, click.Group):
                    problems.append(f"{path.relative_to(ROOT)}: `{line}` names a group, not a command")
                    continue
                flags = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
                flags |= {"--help"}
                for word in rest:
                    flag = word.split("=", 1)[0]
                    if flag.startswith("--") and flag not in flags:
                        problems.append(f"{path.relative_to(ROOT)}: `{line}`: {command.name} has no option {flag}")
    assert seen >= 10, f"found only {seen} rnnkit command lines in README.md and docs/; is the parser broken?"
    assert not problems, "\n".join(problems)
