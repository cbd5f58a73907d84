"""Reads over time by agent, as the geometry of a stacked bar chart.

The numbers come from the core's `audit_activity` answer; this module only lays
them out. The template draws the SVG from what it returns, so every label passes
through Jinja2's autoescaping and no markup is built here.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

# Okabe-Ito and friends: told apart with most colour-vision deficiencies. Red is kept for "refused".
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#6A4C93", "#8C6D31")
OTHER_COLOUR = "#8A8F98"
REFUSED_COLOUR = "#C62828"
# The plot of reads, its time axis, then a strip of refused reads per bar under it.
WIDTH, LEFT, RIGHT, TOP = 1160, 64, 12, 14
PLOT_HEIGHT, AXIS, STRIP_GAP, STRIP_HEIGHT = 180, 22, 24, 40
HEIGHT = TOP + PLOT_HEIGHT + AXIS + STRIP_GAP + STRIP_HEIGHT + 4


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True)
class Count:
    """A refused count over its bar in the strip."""

    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True)
class LegendEntry:
    name: str
    colour: str
    total: int


@dataclass
class Chart:
    since: str
    until: str
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    plot_width: float = WIDTH - LEFT - RIGHT
    plot_height: float = PLOT_HEIGHT
    strip_top: float = TOP + PLOT_HEIGHT + AXIS + STRIP_GAP
    strip_height: float = STRIP_HEIGHT
    refused_colour: str = REFUSED_COLOUR
    bars: list[Bar] = field(default_factory=list)
    refused_bars: list[Bar] = field(default_factory=list)
    refused_counts: list[Count] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    legend: list[LegendEntry] = field(default_factory=list)
    total: int = 0
    refused: int = 0
    bucket_label: str = ""

    @property
    def baseline(self) -> float:
        return self.top + self.plot_height

    @property
    def strip_baseline(self) -> float:
        return self.strip_top + self.strip_height


def _parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _nice_step(top: int) -> int:
    """A step of 1, 2 or 5 times a power of ten giving at most five gridlines up to `top`."""
    raw = max(top / 5, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return int(factor * power)
    return int(10 * power)  # pragma: no cover


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def build(activity: dict[str, Any], max_series: int = len(PALETTE)) -> Chart:
    """Lay out `{"since", "until", "bucket_seconds", "series": {agent: [counts]}, "refused": [counts]}`."""
    since, until = str(activity["since"]), str(activity["until"])
    series: dict[str, list[int]] = {str(k): [int(n) for n in v] for k, v in activity.get("series", {}).items()}
    refused = [int(n) for n in activity.get("refused", [])]
    buckets = len(refused) or max((len(v) for v in series.values()), default=0)
    chart = Chart(since=since, until=until)
    if buckets == 0:
        return chart
    ranked, colours = _ranked(series, buckets, max_series)
    chart.legend = [LegendEntry(name, colour, sum(counts))
                    for (name, counts), colour in zip(ranked, colours, strict=True)]
    chart.total = sum(e.total for e in chart.legend)
    chart.refused = sum(refused)

    totals = [sum(counts[i] for _, counts in ranked) for i in range(buckets)]
    step = _nice_step(max(totals, default=0))
    top = max(step * math.ceil(max(totals, default=0) / step), step)
    scale = chart.plot_height / top
    start = _parse(since)
    width_s = float(activity.get("bucket_seconds") or (_parse(until) - start).total_seconds() / buckets)
    chart.bucket_label = _duration(width_s)
    _lay_bars(chart, ranked, colours, refused, buckets, scale, start, width_s)
    chart.y_ticks = [Tick(round(chart.baseline - v * scale, 2), str(v)) for v in range(0, top + 1, step)]
    span = (_parse(until) - start).total_seconds()
    fmt = "%H:%M" if span <= 86400 * 1.5 else "%m-%d %H:%M"
    every = max(1, buckets // 8)
    slot = chart.plot_width / buckets
    chart.x_ticks = [Tick(round(chart.left + i * slot, 2), (start + dt.timedelta(seconds=width_s * i)).strftime(fmt))
                     for i in range(0, buckets, every)]
    return chart


def _ranked(series: dict[str, list[int]], buckets: int,
            max_series: int) -> tuple[list[tuple[str, list[int]]], list[str]]:
    """The series drawn, busiest first, and their colours: the busiest agents get their own colour; the rest
    share one bar segment."""
    ranked = sorted(series.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    if len(ranked) > max_series:
        kept = ranked[: max_series - 1]
        rest = [sum(counts[i] for _, counts in ranked[max_series - 1:]) for i in range(buckets)]
        ranked = [*kept, (f"{len(series) - len(kept)} other agents", rest)]
    colours = [*PALETTE[: len(ranked)]]
    if len(series) > max_series:
        colours[-1] = OTHER_COLOUR
    return ranked, colours


def _lay_bars(chart: Chart, ranked: list[tuple[str, list[int]]], colours: list[str], refused: list[int],
              buckets: int, scale: float, start: dt.datetime, width_s: float) -> None:
    """Each bucket's stacked bar of reads, and its refused bar (with its count) in the strip under the plot."""
    slot = chart.plot_width / buckets
    gap = min(2.0, slot * 0.2)
    for i in range(buckets):
        x = chart.left + i * slot + gap / 2
        y = chart.baseline
        moment = (start + dt.timedelta(seconds=width_s * i)).strftime("%Y-%m-%d %H:%M")
        for (name, counts), colour in zip(ranked, colours, strict=True):
            n = counts[i]
            if n <= 0:
                continue
            h = n * scale
            y -= h
            chart.bars.append(Bar(round(x, 2), round(y, 2), round(slot - gap, 2), round(h, 2), colour,
                                  f"{name}: {n} read{'s' if n != 1 else ''} from {moment} UTC"))
        if i < len(refused) and refused[i] > 0:
            # The strip has its own scale, leaving room for the count over the tallest bar.
            h = max(2.0, refused[i] / max(refused) * (chart.strip_height - 14))
            y = chart.strip_baseline - h
            chart.refused_bars.append(Bar(round(x, 2), round(y, 2), round(slot - gap, 2), round(h, 2),
                                          REFUSED_COLOUR, f"{refused[i]} refused from {moment} UTC"))
            chart.refused_counts.append(Count(round(x + (slot - gap) / 2, 2), round(y - 3, 2), str(refused[i])))
