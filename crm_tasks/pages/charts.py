"""Server-side SVG charts: a line chart with optional interval bands, axis labels and a legend.

Pure Python and no JavaScript, so the pages work on an air-gapped install and the tests can parse the chart
as XML. Every piece of text is escaped (labels may come from data: campaign or category names). The chart
is an image for a screen reader (``role="img"`` with ``<title>`` and ``<desc>``); the page puts the numbers
in a table beside it, so nobody has to read values off a picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from itertools import count

from crm_tasks.analytics.scales import nice_ticks

# Mid-tone colours that read on a light and on a dark background alike.
PALETTE = ("#3b82f6", "#f97316", "#10b981", "#a855f7", "#ef4444", "#eab308", "#06b6d4", "#ec4899", "#84cc16",
           "#8b5cf6", "#14b8a6", "#f43f5e")
LEGEND_ROW = 20
_ids = count(1)


@dataclass
class Series:
    name: str
    values: list[float | None]  # one per x label; None: no value (a gap)
    dashed: bool = False


@dataclass
class Band:
    """An interval drawn as a shaded area between ``low`` and ``high`` (None where there is none)."""

    name: str
    low: list[float | None]
    high: list[float | None]
    opacity: float = 0.2


@dataclass
class Chart:
    title: str
    desc: str
    x_labels: list[str]
    series: list[Series]
    bands: list[Band] = field(default_factory=list)
    x_axis: str = ""
    y_axis: str = ""
    width: int = 760
    height: int = 320


def tick_text(value: float) -> str:
    """A tick's label: thousands and millions shortened, so the axis stays narrow."""
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:g}M"
    if a >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def render(chart: Chart) -> str:
    """The chart as an inline ``<svg>`` element (a string)."""
    uid = f"chart{next(_ids)}"
    w = chart.width
    left, right, top, bottom = 64, 16, 16, 72  # room for the y ticks, the x labels, the axis titles, the legend
    # The legend wraps into rows under the axis title; the chart grows by the rows past the first.
    items = [(s.name, "line", s.dashed) for s in chart.series] + [(b.name, "band", False) for b in chart.bands]
    places, lx, row = [], left, 0
    for name, _, _ in items:
        width = 36 + 7 * len(name)
        if lx > left and lx + width > w - right:
            lx, row = left, row + 1
        places.append((lx, row))
        lx += width
    h = chart.height + row * LEGEND_ROW
    pw, ph = w - left - right, chart.height - top - bottom
    n = len(chart.x_labels)
    values = [v for s in chart.series for v in s.values if v is not None]
    values += [v for b in chart.bands for v in (*b.low, *b.high) if v is not None]
    ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]))
    y_lo, y_hi = ticks[0], ticks[-1]

    def x(i: int) -> float:
        return left + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return top + ph - (v - y_lo) / (y_hi - y_lo) * ph

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {w} {h}" '
            f'width="100%" aria-labelledby="{uid}-title {uid}-desc">'),
           f'<title id="{uid}-title">{escape(chart.title)}</title>',
           f'<desc id="{uid}-desc">{escape(chart.desc)}</desc>']
    # Grid and y ticks.
    out.append('<g class="y-axis" font-size="11" fill="currentColor">')
    for t in ticks:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="currentColor" '
                   f'stroke-opacity="0.15"/>')
        out.append(f'<text class="tick" x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{escape(tick_text(t))}'
                   '</text>')
    out.append("</g>")
    # X labels: at most about seven, evenly spaced, always the first and the last (none crowding the last).
    step = max(1, math.ceil(n / 7))
    shown = [i for i in range(0, n, step) if i == 0 or n - 1 - i >= step * 0.6] + ([n - 1] if n > 1 else [])
    shown = shown if n else []
    out.append('<g class="x-axis" font-size="11" fill="currentColor">')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="currentColor"/>')
    for i in shown:
        # The first and the last label align with the plot's edges, so neither is cut off.
        anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
        out.append(f'<text class="tick" x="{x(i):.1f}" y="{top + ph + 16}" text-anchor="{anchor}">'
                   f'{escape(chart.x_labels[i])}</text>')
    out.append("</g>")
    out.append(f'<text class="axis-label" x="{left + pw / 2:.1f}" y="{top + ph + 34}" text-anchor="middle" '
               f'font-size="12" fill="currentColor">{escape(chart.x_axis)}</text>')
    out.append(f'<text class="axis-label" transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle" font-size="12" fill="currentColor">{escape(chart.y_axis)}</text>')
    # Bands, then lines over them.
    colours = {}
    for k, band in enumerate(chart.bands):
        colour = colours[band.name] = PALETTE[(len(chart.series) + k) % len(PALETTE)]
        for run in _runs([i for i in range(n) if band.low[i] is not None and band.high[i] is not None]):
            upper = " ".join(f"{x(i):.1f},{y(band.high[i]):.1f}" for i in run)
            lower = " ".join(f"{x(i):.1f},{y(band.low[i]):.1f}" for i in reversed(run))
            out.append(f'<polygon class="band" points="{upper} {lower}" fill="{colour}" '
                       f'fill-opacity="{band.opacity}" stroke="none"/>')
    for k, s in enumerate(chart.series):
        colour = colours[s.name] = PALETTE[k % len(PALETTE)]
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        for run in _runs([i for i in range(n) if s.values[i] is not None]):
            if len(run) == 1:
                i = run[0]
                out.append(f'<circle cx="{x(i):.1f}" cy="{y(s.values[i]):.1f}" r="3" fill="{colour}"/>')
                continue
            points = " ".join(f"{x(i):.1f},{y(s.values[i]):.1f}" for i in run)
            out.append(f'<polyline class="series" points="{points}" fill="none" stroke="{colour}" '
                       f'stroke-width="2"{dash}/>')
    # Legend: one swatch and name per series and band.
    out.append('<g class="legend" font-size="12" fill="currentColor">')
    for (name, kind, dashed), (lx, row) in zip(items, places, strict=True):
        base = chart.height + row * LEGEND_ROW
        if kind == "line":
            dash = ' stroke-dasharray="6 4"' if dashed else ""
            out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{base - 12}" y2="{base - 12}" stroke="{colours[name]}" '
                       f'stroke-width="3"{dash}/>')
        else:
            opacity = max(next(b.opacity for b in chart.bands if b.name == name), 0.3)
            out.append(f'<rect x="{lx}" y="{base - 18}" width="18" height="12" fill="{colours[name]}" '
                       f'fill-opacity="{opacity}"/>')
        out.append(f'<text class="legend-item" x="{lx + 24}" y="{base - 8}">{escape(name)}</text>')
    out.append("</g></svg>")
    return "\n".join(out)


def _runs(indexes: list[int]) -> list[list[int]]:
    """Consecutive indexes in runs: a gap in the data is a gap in the line."""
    runs: list[list[int]] = []
    for i in indexes:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
