"""The trace graph: from the failed batches to each ranked cause, drawn as SVG on the server.

A report (`connector.trace_report.report_to_json`) ranks causes, each with the path the
trace walked to reach it: the OEM's module batches, the supplier's cell batches, a
process window, the wafer batches. A quality engineer reads that as a picture: one row
per cause, its path as boxes from left (the defect) to right (the cause), the cause's
box coloured by whether it is significant and labelled with its member, parameter and
confidence. A few boxes and arrows need no graph library in the browser, and the page
stays readable without script; the page lists the same in a table for screen readers.

Pure: it reads the report's JSON and returns markup, every text escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

#: the most causes the graph draws (the table lists all)
MAX_ROWS = 8
BOX_W, BOX_H, GAP_X, ROW_H, PAD = 150, 46, 34, 64, 12
CAUSE_W = 230


def _ids(ids: list[Any], keep: int = 2) -> str:
    shown = ", ".join(str(i) for i in ids[:keep])
    return shown + (f" +{len(ids) - keep}" if len(ids) > keep else "")


def _confidence(cause: dict[str, Any]) -> str:
    conf = cause.get("confidence") or {}
    value = conf.get("calibrated")
    if not isinstance(value, int | float):
        value = conf.get("data")
    return f"{value:.0%}" if isinstance(value, int | float) else "n/a"


def _box(x: float, y: float, w: float, lines: list[str], css: str) -> str:
    parts = [
        f'<g class="{css}"><rect x="{x:.0f}" y="{y:.0f}" width="{w}" height="{BOX_H}" rx="5"/>'
    ]
    for i, line in enumerate(lines[:2]):
        weight = ' font-weight="600"' if i == 0 else ""
        ty = y + 18 + 16 * i
        parts.append(f'<text x="{x + 8:.0f}" y="{ty:.0f}"{weight}>{escape(line[:34])}</text>')
    parts.append("</g>")
    return "".join(parts)


def trace_svg(report: dict[str, Any]) -> str:
    """One row per cause (the first `MAX_ROWS`): its path, then the cause."""
    causes = [c for c in report.get("causes", []) if isinstance(c, dict)][:MAX_ROWS]
    steps = max([len(c.get("path") or []) for c in causes] + [1])
    width = PAD * 2 + steps * (BOX_W + GAP_X) + CAUSE_W
    height = PAD * 2 + max(1, len(causes)) * ROW_H
    parts = [
        f'<svg class="trace-graph" viewBox="0 0 {width} {height}" role="img" '
        'aria-labelledby="tg-title tg-desc" xmlns="http://www.w3.org/2000/svg">',
        '<title id="tg-title">Trace from the failed batches to the ranked causes</title>',
        f'<desc id="tg-desc">{len(causes)} causes, one per row, each with the path from the '
        "defect (left) to the cause (right).</desc>",
        '<defs><marker id="tg-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#4a4a4a"/>'
        "</marker></defs>",
    ]
    if not causes:
        parts.append(f'<text x="{PAD}" y="{PAD + 24}">No cause found.</text>')
    for row, cause in enumerate(causes):
        y = PAD + row * ROW_H
        x = float(PAD)
        for step in cause.get("path") or []:
            level = str(step.get("level", ""))
            ids = step.get("ids") or []
            detail = _ids(ids) if level != "window" else str(step.get("start", ""))[:16]
            parts.append(_box(x, y, BOX_W, [f"{step.get('member', '')} {level}", detail], "step"))
            parts.append(_arrow(x + BOX_W, y + BOX_H / 2, x + BOX_W + GAP_X, y + BOX_H / 2))
            x += BOX_W + GAP_X
        css = "cause significant" if cause.get("significant") else "cause weak"
        who = str(cause.get("member", ""))
        if cause.get("reported_by"):  # a relayed level: who said it, not the member's word
            who += f" via {cause['reported_by']}"
        label = f"#{cause.get('rank', row + 1)} {who}: {cause.get('key', '')}"
        facts = f"confidence {_confidence(cause)} · score {float(cause.get('score') or 0):.2f}"
        parts.append(
            _box(x, y, CAUSE_W, [label, facts], css).replace(
                "<g ", f'<g data-member="{escape(str(cause.get("member", "")))}" ', 1
            )
        )
    parts.append("</svg>")
    return "".join(parts)


def _arrow(x1: float, y1: float, x2: float, y2: float) -> str:
    return (
        f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2 - 2:.0f}" y2="{y2:.0f}" stroke="#4a4a4a" '
        'stroke-width="1.5" marker-end="url(#tg-arrow)"/>'
    )
