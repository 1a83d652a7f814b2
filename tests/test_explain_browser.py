"""The explain HTML page in a real browser: Debian's headless chromium screenshots it and the
pixels where the most important word sits have that word's full colour."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from rnnkit.runtime.explain import Explanation
from rnnkit.runtime.explain_render import SUPPORT, render_html

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_chromium_renders_the_top_word_in_full_colour(tmp_path):
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    matplotlib_image = pytest.importorskip("matplotlib.image")
    # the top word is the third of four; the others are pale (under a third of its score)
    tokens = ["aaaa", "bbbb", "WWWWWWWW", "cccc"]
    e = Explanation(" ".join(tokens), tokens, [0.1, 0.1, 0.7, 0.1], "occlusion", {"label": "pos", "score": 0.9})
    page = tmp_path / "page.html"
    page.write_text(render_html([e]), encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=800,300",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    pixels = (matplotlib_image.imread(shot)[..., :3] * 255).round().astype(int)  # (H, W, 3)
    full = np.all(np.abs(pixels - np.array(SUPPORT)) <= 2, axis=-1)
    ys, xs = np.nonzero(full)
    assert len(xs) > 500, "no word shaded in the top colour: the page did not render"
    # the pale words are a different colour, so the full colour is the top word's box alone: it is
    # the third word, right of the page's middle third's start and left of the fourth word
    pale_rgb = 255 - (255 - np.array(SUPPORT)) * (0.1 / 0.7)  # its opacity over the white page
    pale = np.all(np.abs(pixels - pale_rgb) <= 3, axis=-1)
    pale_xs = np.nonzero(pale)[1]
    assert len(pale_xs) > 200, "the other words are not shaded"
    assert xs.min() > np.percentile(pale_xs, 50) and xs.max() < pale_xs.max()
