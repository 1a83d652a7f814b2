"""What each install extra puts on disk: a fresh venv per extra, from this checkout and from a git revision.

    .venv/bin/python benchmarks/install_size.py --before HEAD
    .venv/bin/python benchmarks/install_size.py --extras runtime runtime,g2p     # this checkout only

For every tree (this checkout's working tree, as ``git ls-files`` sees it, and with ``--before REV``
that revision from ``git archive``) and every extra, it builds the local data packages
(``packages/*``) into wheels, makes an empty venv without pip (so pip's own 10+ MB is not counted;
a user's venv has it too) and installs ``TREE[extra]`` non-editable into it with this Python's pip
(``pip --python VENV``), the local wheels offered through ``--find-links`` so that an extra pulls
them by name as it would from an index.  It then prints the site-packages size per extra and per
installed distribution (the files each one's RECORD lists, byte-compiled ``.pyc`` included, as pip
installs them).  Sizes are in MB (10^6 bytes) of file contents.  Needs the package index pip is set
up to use (the extras' dependencies are downloaded; pip's cache is used, it does not change sizes).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("RNNKIT_BENCH_DIR", "/tmp/rnnkit-bench")) / "install-size"
EXTRAS = ["numba", "onnxruntime", "runtime", "runtime,g2p"]
MB = 1e6


def checkout_tree(dest: Path) -> Path:
    """This checkout's working tree (tracked and untracked files git does not ignore), copied."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # listed but deleted in the working tree: not part of it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def revision_tree(rev: str, dest: Path) -> Path:
    """The tree of git revision ``rev`` (``git archive``: reads the repository, changes nothing)."""
    archive = dest.with_suffix(".tar")
    with open(archive, "wb") as handle:
        subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, check=True, stdout=handle)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return dest


def local_wheels(tree: Path, dest: Path) -> Path:
    """Wheels of the tree's data packages (packages/*), for ``--find-links``; empty when it has none."""
    dest.mkdir(parents=True, exist_ok=True)
    projects = sorted(p for p in (tree / "packages").glob("*") if (p / "pyproject.toml").is_file())
    if projects:
        pip(["wheel", "-q", "--no-deps", "-w", str(dest), *map(str, projects)])
    return dest


def pip(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def install(tree: Path, extra: str, wheels: Path, venv: Path) -> float:
    """A fresh venv without pip holding ``tree[extra]``; returns the install's wall time in seconds."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    start = time.perf_counter()
    # the tree is a copy: building its wheel in place (build/, *.egg-info) leaves this checkout alone
    pip(["--python", str(venv / "bin" / "python"), "install", "-q", "--find-links", str(wheels), f"{tree}[{extra}]"])
    return time.perf_counter() - start


def site_packages(venv: Path) -> Path:
    found = list((venv / "lib").glob("python3*/site-packages"))
    assert len(found) == 1, found
    return found[0]


def sizes(site: Path) -> tuple[float, dict[str, float]]:
    """Total MB under site-packages, and MB per distribution (the files its RECORD lists)."""
    total = sum(p.lstat().st_size for p in site.rglob("*") if p.is_file() or p.is_symlink())
    per_dist = {}
    for record in site.glob("*.dist-info/RECORD"):
        name = record.parent.name.removesuffix(".dist-info").rsplit("-", 1)[0].replace("_", "-").lower()
        size = 0
        with open(record, newline="") as handle:
            for row in csv.reader(handle):
                path = (site / row[0]).resolve() if row else None
                if path is not None and path.is_file():
                    size += path.stat().st_size
        per_dist[name] = size / MB
    return total / MB, per_dist


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    pip_version = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True
    ).stdout.split()[1]
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, pip {pip_version}"
    )


def table(headers: list[str], rows: list[list[str]]) -> str:
    align = "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"
    lines = ["| " + " | ".join(headers) + " |", align]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REV", help="also measure this git revision (e.g. HEAD), side by side")
    parser.add_argument("--extras", nargs="+", default=EXTRAS, help=f"extras to measure (default: {EXTRAS})")
    parser.add_argument("--top", type=int, default=8, help="distributions listed per extra, largest first")
    args = parser.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    trees = {"after": checkout_tree(WORK / "tree-after")}
    if args.before:
        trees = {"before": revision_tree(args.before, WORK / "tree-before"), **trees}
    results: dict[tuple[str, str], tuple[float, dict[str, float], float]] = {}
    for label, tree in trees.items():
        wheels = local_wheels(tree, WORK / f"wheels-{label}")
        for extra in args.extras:
            venv = WORK / f"venv-{label}-{extra.replace(',', '-')}"
            print(f"installing {label}: rnnkit[{extra}] ...", file=sys.stderr, flush=True)
            seconds = install(tree, extra, wheels, venv)
            total, per_dist = sizes(site_packages(venv))
            results[label, extra] = (total, per_dist, seconds)
            shutil.rmtree(venv)

    labels = list(trees)
    print(f"\nmachine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
    headers = (
        ["extra"]
        + [f"{label} (MB)" for label in labels]
        + (["change"] if len(labels) == 2 else [])
        + [f"install {label} (s)" for label in labels]
    )
    rows = []
    for extra in args.extras:
        totals = [results[label, extra][0] for label in labels]
        change = [f"{totals[1] - totals[0]:+.1f}"] if len(labels) == 2 else []
        rows.append(
            [f"rnnkit[{extra}]"]
            + [f"{t:.1f}" for t in totals]
            + change
            + [f"{results[label, extra][2]:.0f}" for label in labels]
        )
    print("site-packages of a fresh venv (made without pip), MB\n")
    print(table(headers, rows))

    # the largest distributions of any measured install, and rnnkit's own, per extra
    names: set[str] = set()
    for _, per_dist, _ in results.values():
        names.update(sorted(per_dist, key=per_dist.get, reverse=True)[: args.top])
    names.update(n for _, per_dist, _ in results.values() for n in per_dist if n.startswith("rnnkit"))
    largest = sorted(names, key=lambda n: -max(r[1].get(n, 0.0) for r in results.values()))

    def cell(name: str, extra: str) -> str:
        values = [results[label, extra][1].get(name) for label in labels]
        if all(v is None for v in values):
            return "-"
        return " -> ".join("-" if v is None else f"{v:.1f}" for v in values)

    arrow = " (" + " -> ".join(labels) + ")" if len(labels) == 2 else ""
    print(f"\nper distribution, MB{arrow}; '-': not installed\n")
    print(
        table(
            ["distribution"] + [f"rnnkit[{e}]" for e in args.extras],
            [[name] + [cell(name, e) for e in args.extras] for name in largest],
        )
    )


if __name__ == "__main__":
    main()
