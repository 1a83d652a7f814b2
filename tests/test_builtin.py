"""Assets that ship as packages of their own (runtime/builtin.py): found by name through their entry
point, a local folder of the same name wins, a missing one names the extra, and no machine paths."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rnnkit.runtime import builtin
from rnnkit.runtime.bundle import open_bundle
from rnnkit.runtime.errors import BundleError


def test_shipped_assets_are_found_through_their_packages():
    g2p, demo = builtin.find("g2p-cmudict"), builtin.find("mr_small", builtin.CHECKPOINTS)
    assert g2p is not None and (g2p / "manifest.json").is_file() and g2p.parent.name == "rnnkit_g2p_cmudict"
    assert demo is not None and (demo / "weights.pt").is_file() and demo.parent.name == "rnnkit_demo_mr"
    assert builtin.find("mr_small") is None  # a checkpoint is not a bundle: the groups are apart


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(builtin, "entry_points", lambda **_: [])  # as if rnnkit-g2p-cmudict were not installed
    with pytest.raises(BundleError, match=re.escape('pip install "rnnkit[g2p]"')):
        open_bundle("g2p-cmudict")
    with pytest.raises(BundleError, match=re.escape('pip install "rnnkit[train]"')):
        builtin.require("mr_small", builtin.CHECKPOINTS)
    with pytest.raises(BundleError, match="no such bundle"):  # a name rnnkit does not ship: the usual message
        open_bundle("not-a-bundle")


def test_a_folder_in_the_working_directory_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g2p-cmudict").mkdir()
    with pytest.raises(BundleError, match="manifest.json: missing"):  # the empty local folder, not the package
        open_bundle("g2p-cmudict")


def test_shipped_manifest_holds_no_machine_paths():
    manifest = json.loads((builtin.require("g2p-cmudict") / "manifest.json").read_text(encoding="utf-8"))

    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    paths = [s for s in strings(manifest) if Path(s).is_absolute() or s.startswith(("~", ".."))]
    assert paths == []
