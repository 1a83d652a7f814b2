import pytest

"""The layering rule, checked on the sources: runtime <- export <- toolkit, and no import cycle.

``scripts/import_graph.py`` reads every module with ``ast`` (lazy imports inside functions count),
so an arrow cannot hide behind a function-level import.
"""

import importlib.util

from conftest import ROOT


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_no_import_cycle_and_arrows_run_one_way():
    arrows, cycles, wrong = _import_graph().report(ROOT)
    assert cycles == [], f"import cycles: {cycles}"
    assert wrong == [], {pair: arrows[pair][:5] for pair in wrong}
    assert ("toolkit", "runtime") in arrows and ("export", "runtime") in arrows  # the graph was really read


def test_the_checker_sees_a_cycle_and_a_wrong_arrow(tmp_path):
    """The checker itself can fail: a planted cycle and a runtime -> toolkit import are reported."""
    for part in ("runtime", "export", "toolkit"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "__init__.py").write_text("")
    (tmp_path / "runtime" / "a.py").write_text("from . import b\n")
    (tmp_path / "runtime" / "b.py").write_text("def f():\n    from .a import x\n    from ..toolkit import cli\n")
    (tmp_path / "toolkit" / "cli.py").write_text("import rnnkit.runtime\n")
    arrows, cycles, wrong = _import_graph().report(tmp_path)
    assert cycles == [["rnnkit.runtime.a", "rnnkit.runtime.b"]]
    assert wrong == [("runtime", "toolkit")] and ("toolkit", "runtime") in arrows
