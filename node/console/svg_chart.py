"""Small line charts drawn on the server as SVG: drift against thresholds, accuracy by round.

These charts have tens to hundreds of points and change when the page is loaded, not
many times a second (the live SPC charts use uPlot in the browser for that); an SVG
made here needs no script, prints, and is read by a screen reader from its title and
description (each page lists the same figures in a table). Pure: markup only, every
text escaped, every number checked finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

W, H = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 14, 30


@dataclass(frozen=True)
class Line:
    label: str
    css: str  # a class of console.css: the line's colour
    points: Sequence[tuple[float, float | None]]  # (x, y); None: a gap


@dataclass(frozen=True)
class Limit:
    label: str
    css: str
    y: float


def line_chart(
    title: str,
    lines: Sequence[Line],
    limits: Sequence[Limit] = (),
    y_range: tuple[float, float] | None = None,
    x_labels: tuple[str, str] = ("", ""),
    css: str = "",
) -> str:
    """A chart of ``lines`` with horizontal ``limits``; the y axis spans ``y_range``."""
    drawn = [point for line in lines for run in _runs(line.points) for point in run]
    xs = [x for x, _ in drawn]
    ys = [y for _, y in drawn] + [limit.y for limit in limits if math.isfinite(limit.y)]
    lo, hi = y_range or ((min(ys), max(ys)) if ys else (0.0, 1.0))
    if hi <= lo:
        hi = lo + 1.0
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x1 <= x0:
        x1 = x0 + 1.0

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def py(y: float) -> float:
        return H - BOTTOM - (min(max(y, lo), hi) - lo) / (hi - lo) * (H - TOP - BOTTOM)

    desc = "; ".join(
        f"{line.label}: {sum(len(run) for run in _runs(line.points))} points" for line in lines
    )
    desc += "".join(f"; {limit.label} at {limit.y:g}" for limit in limits)
    parts = [
        f'<svg class="line-chart {escape(css)}" viewBox="0 0 {W} {H}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        f"<desc>{escape(desc)}</desc>",
        f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" '
        f'height="{H - TOP - BOTTOM}"/>',
    ]
    for value in (lo, (lo + hi) / 2, hi):
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{py(value) + 4:.1f}" '
            f'text-anchor="end">{value:.3g}</text>'
        )
    parts.append(
        f'<text class="tick" x="{LEFT}" y="{H - 10}">{escape(x_labels[0])}</text>'
        f'<text class="tick" x="{W - RIGHT}" y="{H - 10}" text-anchor="end">'
        f"{escape(x_labels[1])}</text>"
    )
    for limit in limits:
        if math.isfinite(limit.y):
            y = py(limit.y)
            parts.append(
                f'<line class="limit {escape(limit.css)}" x1="{LEFT}" x2="{W - RIGHT}" '
                f'y1="{y:.1f}" y2="{y:.1f}"/><text class="limit-label {escape(limit.css)}" '
                f'x="{W - RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end">'
                f"{escape(limit.label)}</text>"
            )
    for line in lines:
        for run in _runs(line.points):
            d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
            if len(run) == 1:
                x, y = run[0]
                parts.append(
                    f'<circle class="{escape(line.css)}" cx="{px(x):.1f}" cy="{py(y):.1f}" r="3"/>'
                )
            else:
                parts.append(f'<polyline class="series {escape(line.css)}" points="{d}"/>')
    parts.append(_legend(lines))
    parts.append("</svg>")
    return "".join(parts)


def _runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The points split where a y is missing (a gap, not a line to zero)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is not None and math.isfinite(x) and math.isfinite(y):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def _legend(lines: Sequence[Line]) -> str:
    parts = []
    x = LEFT + 8
    for line in lines:
        parts.append(
            f'<rect class="swatch {escape(line.css)}" x="{x}" y="{TOP + 6}" width="12" height="4"/>'
            f'<text class="tick" x="{x + 16}" y="{TOP + 12}">{escape(line.label)}</text>'
        )
        x += 24 + 8 * len(line.label)
    return "".join(parts)
