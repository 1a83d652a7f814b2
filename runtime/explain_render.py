"""Explanations for people: a terminal line with the top-K tokens marked, and one self-contained
HTML page (inline CSS, no scripts, no external assets) that shades every token by its score.

Text: the top-K tokens in bold green on a colour terminal, ``**word**`` otherwise (``color=False``:
not a TTY, or ``NO_COLOR`` set; the CLI decides).  HTML: green for tokens that support the
prediction, red for tokens against it (occlusion), opacity proportional to the score over the
text's largest absolute score, so the most important token has the full colour (``SUPPORT``);
encoder-decoders and taggers also get their ``alignment`` as a heatmap table (``ALIGN``).

Must not import torch or matplotlib (the PNG plot is the toolkit's).
"""

from __future__ import annotations

import html
import json

from .explain import Explanation

SUPPORT = (22, 128, 61)  # green: the token supports the prediction (full colour at the top score)
AGAINST = (200, 30, 30)  # red: replacing the token made the prediction more likely
ALIGN = (37, 99, 235)  # blue: alignment cells, full colour at weight 1
BOLD_GREEN, BOLD_RED, RESET = "\x1b[1;32m", "\x1b[1;31m", "\x1b[0m"


def prediction_text(e: Explanation) -> str:
    p = e.prediction
    if "label" in p:
        return f"{p['label']} ({p['score']:.3f})"
    if "output" in p:
        return f"-> {p['output']}"
    if "tag" in p:
        return f"token {p['token']} {e.tokens[p['token']]!r}: {p['tag']}"
    return " ".join(f"{w}/{t}" for w, t in zip(e.tokens, p["tags"]))


def render_text(e: Explanation, top: int = 3, color: bool = False) -> str:
    """``label (score)  tokens`` with the ``top`` highest-scoring tokens marked."""
    marked = set(e.top(top))
    words = []
    for i, token in enumerate(e.tokens):
        if i in marked:
            token = f"{BOLD_GREEN}{token}{RESET}" if color else f"**{token}**"
        words.append(token)
    return f"{prediction_text(e)}\t{' '.join(words)}"


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def _token_spans(e: Explanation) -> str:
    peak = max((abs(s) for s in e.scores), default=0.0) or 1.0
    spans = []
    for token, score in zip(e.tokens, e.scores):
        alpha = abs(score) / peak
        rgb = SUPPORT if score >= 0 else AGAINST
        ink = "#fff" if alpha > 0.55 else "#111"  # readable text on a dark shade
        spans.append(
            f'<span class="tok" style="background:{_rgba(rgb, alpha)};color:{ink}" '
            f'title="{score:+.3f}">{html.escape(token)}</span>'
        )
    return " ".join(spans)


def _alignment_table(e: Explanation) -> str:
    if not e.alignment:
        return ""
    head = "".join(f"<th>{html.escape(t)}</th>" for t in e.tokens)
    rows = []
    targets = e.targets or []
    if "tags" in e.prediction:  # a tagger's rows are its tokens' tags: name the token too
        targets = [f"{token} {tag}" for token, tag in zip(e.tokens, targets)]
    for target, row in zip(targets, e.alignment):
        peak = max((abs(x) for x in row), default=0.0) or 1.0
        cells = "".join(f'<td style="background:{_rgba(ALIGN, abs(x) / peak)}" title="{x:.3f}"></td>' for x in row)
        rows.append(f"<tr><th>{html.escape(target)}</th>{cells}</tr>")
    return f'<table class="align"><tr><th></th>{head}</tr>{"".join(rows)}</table>'


STYLE = """
body{font-family:sans-serif;margin:16px;background:#fff;color:#111}
.ex{margin:0 0 18px 0}
.pred{font-size:14px;color:#444;margin-bottom:4px}
.text{font-size:28px;line-height:1.8}
.tok{padding:2px 4px;border-radius:3px}
table.align{border-collapse:collapse;margin-top:6px;font-size:13px}
table.align td{width:22px;height:22px;border:1px solid #eee}
table.align th{font-weight:normal;padding:0 4px}
.key{font-size:12px;color:#555;margin-bottom:12px}
"""


def render_html(explanations: list[Explanation], title: str = "rnnkit explain") -> str:
    """One page for many explanations: each text with its tokens shaded, its prediction, and its
    alignment heatmap when it has one.  The raw numbers ride along as ``title`` tooltips and in a
    ``<script type="application/json">`` block (data, not code: the page runs no script)."""
    blocks = []
    for e in explanations:
        blocks.append(
            f'<div class="ex"><div class="pred">{html.escape(prediction_text(e))} &middot; {e.method}</div>'
            f'<div class="text">{_token_spans(e)}</div>{_alignment_table(e)}</div>'
        )
    data = json.dumps([e.to_dict() for e in explanations], ensure_ascii=True).replace("</", "<\\/")
    key = "green: supports the prediction; red: speaks against it; shade: share of the text's largest score" + (
        "; blue cells: attention of each output token (row) over the source (columns)"
        if any(e.alignment for e in explanations)
        else ""
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<style>{STYLE}</style></head><body><div class="key">{html.escape(key)}</div>{"".join(blocks)}'
        f'<script type="application/json" id="explanations">{data}</script></body></html>\n'
    )
