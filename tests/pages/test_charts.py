"""The SVG chart module: a well-formed image with its title, axis labels and legend, every label escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from itertools import pairwise

from crm_tasks.pages import charts

SVG = "{http://www.w3.org/2000/svg}"


def _chart(**overrides) -> ET.Element:
    chart = charts.Chart("Revenue <by day>", "Net revenue & the forecast", ["2026-03-01", "2026-03-02", "2026-03-03"],
                         [charts.Series("Revenue", [10.0, None, 30.0]),
                          charts.Series("Forecast", [None, None, 32.0], dashed=True)],
                         [charts.Band("80 % interval", [None, 20.0, 25.0], [None, 40.0, 45.0])],
                         "Day", "Net revenue (INR)")
    for k, v in overrides.items():
        setattr(chart, k, v)
    return ET.fromstring(charts.render(chart))


def test_the_chart_is_an_accessible_image_with_axes_and_a_legend():
    svg = _chart()
    assert svg.tag == f"{SVG}svg" and svg.get("role") == "img"
    title, desc = svg.find(f"{SVG}title"), svg.find(f"{SVG}desc")
    assert title.text == "Revenue <by day>" and desc.text == "Net revenue & the forecast"
    assert svg.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
    texts = {t.get("class"): [] for t in svg.iter(f"{SVG}text")}
    for t in svg.iter(f"{SVG}text"):
        texts[t.get("class")].append(t.text)
    assert texts["axis-label"] == ["Day", "Net revenue (INR)"]
    assert texts["legend-item"] == ["Revenue", "Forecast", "80 % interval"]
    assert {"2026-03-01", "2026-03-03"} <= set(texts["tick"])
    # The y axis starts at 0 and reaches past the highest value (the band's 45).
    ticks = [float(t) for t in texts["tick"] if not t.startswith("2026")]
    assert ticks[0] == 0 and ticks[-1] >= 45
    # A gap in the data is a gap in the line: the revenue is a dot and a dot, not one line.
    assert len(svg.findall(f".//{SVG}polyline")) == 0 and len(svg.findall(f".//{SVG}circle")) == 3
    assert len(svg.findall(f".//{SVG}polygon")) == 1


def test_labels_from_data_cannot_inject_markup():
    evil = '</text><script>alert(1)</script><text>'
    svg = _chart(x_labels=[evil, "b", "c"], series=[charts.Series(evil, [1.0, 2.0, 3.0])], bands=[])
    assert not list(svg.iter(f"{SVG}script")) and not list(svg.iter("script"))
    assert evil in [t.text for t in svg.iter(f"{SVG}text")]


def test_an_empty_or_flat_series_still_draws_axes():
    svg = _chart(x_labels=["only"], series=[charts.Series("Orders", [0.0])], bands=[])
    assert [t.text for t in svg.iter(f"{SVG}text") if t.get("class") == "axis-label"] == ["Day", "Net revenue (INR)"]


def test_ticks_are_round_and_cover_the_range():
    for lo, hi in ((0, 7), (0, 1234.5), (-30, 80), (0, 0.37), (5, 5)):
        ticks = charts.nice_ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 12
        steps = {round(b - a, 9) for a, b in pairwise(ticks)}
        assert len(steps) == 1


def test_a_long_legend_wraps_inside_the_chart():
    names = [f"segment_number_{i}" for i in range(12)]
    svg = _chart(series=[charts.Series(n, [1.0, 2.0, float(i)]) for i, n in enumerate(names)], bands=[])
    width, height = (float(v) for v in svg.get("viewBox").split()[2:])
    items = [t for t in svg.iter(f"{SVG}text") if t.get("class") == "legend-item"]
    assert [t.text for t in items] == names
    rows = {float(t.get("y")) for t in items}
    assert len(rows) > 1 and max(rows) < height  # more rows, and the image grew to hold them
    assert all(float(t.get("x")) + 7 * len(t.text) <= width for t in items)
