"""Print rnnkit's module import graph: arrows between its three parts, and every cycle.

    python scripts/import_graph.py            # summary: part -> part arrows, cycles
    python scripts/import_graph.py --dot      # Graphviz source of the module graph

Reads the sources with ``ast`` (nothing is imported), so it runs without torch.  Every import
counts, including those inside functions: a lazy import is still a dependency of the module.
Exit status 1 when a module cycle exists or an arrow runs against the layering
runtime <- export <- toolkit (see docs/design.md).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = {"runtime": "rnnkit.runtime", "export": "rnnkit.export", "toolkit": "rnnkit.toolkit"}
# part -> the parts it may import (besides itself)
ALLOWED = {"runtime": set(), "export": {"runtime"}, "toolkit": {"runtime", "export"}}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the three parts."""
    found = {}
    for folder, package in PARTS.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def edges(found: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the rnnkit modules it imports."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node, is_package)
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                # the longest known module that the name starts with ("pkg.mod.func" -> "pkg.mod")
                while target and target not in found:
                    target = target.rpartition(".")[0]
                # a module's own packages are initialised before it: not a dependency
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def part(module: str) -> str:
    return module.split(".")[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def report(root: Path = ROOT) -> tuple[dict, list, list]:
    """(part arrows with example modules, cycles, arrows against the layering)."""
    graph = edges(modules(root))
    arrows: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a, targets in graph.items():
        for b in targets:
            if part(a) != part(b):
                arrows[(part(a), part(b))].append(f"{a} -> {b}")
    wrong = [(a, b) for (a, b) in arrows if b not in ALLOWED[a]]
    return arrows, cycles(graph), wrong


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dot", action="store_true", help="print Graphviz source instead of the summary")
    args = parser.parse_args(argv)
    if args.dot:
        graph = edges(modules())
        print("digraph rnnkit {\n  rankdir=LR;")
        for a in sorted(graph):
            for b in sorted(graph[a]):
                print(f'  "{a[7:]}" -> "{b[7:]}";')
        print("}")
        return 0
    arrows, found_cycles, wrong = report()
    print("| from | to | imports | allowed |\n|---|---|---|---|")
    for (a, b), examples in sorted(arrows.items()):
        print(f"| {a} | {b} | {len(examples)} | {'yes' if b in ALLOWED[a] else 'NO'} |")
    print(f"\n{len(found_cycles)} cycles")
    for component in found_cycles:
        print("  " + " <-> ".join(m[7:] for m in component))
    for a, b in wrong:
        print(f"\narrow against the layering {a} -> {b}:")
        for example in arrows[(a, b)][:10]:
            print(f"  {example}")
    return 1 if found_cycles or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
