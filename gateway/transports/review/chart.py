"""The review page's charts as geometry: reads over time, allowed above the axis and refused below it, and the
agents and datasets ranked by allowed reads with their refused reads beside them.

The counts come from the core's `audit_review` answer (gateway/audit/summary.py, counted by the store); this
module only lays them out. The templates draw the SVG from what it returns, so every label passes through
Jinja2's autoescaping and no markup is built here.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

# Okabe-Ito based: told apart with most colour-vision deficiencies, and refused reads are drawn below the axis
# (and to the left in the rankings) whatever their colour.
ALLOWED_COLOUR = "#0072B2"
REFUSED = (("deny", "denied", "#C62828"), ("error", "failed", "#E69F00"), ("pending", "pending approval", "#CC79A7"))
OTHER_NAMES = {"agents": "other agents", "datasets": "other datasets"}
NO_NAME = {"agents": "(unauthenticated)", "datasets": "(no dataset)"}
NAME_CHARS = 30  # a ranked name longer than this is shown cut (the whole one in its title)
# The timeline: allowed reads above the zero line, refused below, one scale; the time axis under it all.
WIDTH, LEFT, RIGHT, TOP, PLOT_HEIGHT, AXIS = 1160, 64, 12, 12, 190, 24
MIN_BAR = 1.5  # a count of one still shows
SIDE_MIN = 18  # the least height of either side of the zero line
# A ranking's bars: refused to the left of the centre, allowed to the right, one scale for both.
RANK_WIDTH = 240


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True)
class Key:
    """A legend entry: what a colour stands for, and its total in the window."""

    decision: str
    label: str
    colour: str
    total: int


@dataclass
class Timeline:
    since: str
    until: str
    bucket_label: str = ""
    width: int = WIDTH
    left: int = LEFT
    top: int = TOP
    plot_width: float = WIDTH - LEFT - RIGHT
    zero: float = TOP  # the zero line: allowed bars rise from it, refused ones hang from it
    bottom: float = TOP  # the plot's lower edge
    bars: list[Bar] = field(default_factory=list)
    up_ticks: list[Tick] = field(default_factory=list)
    down_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)

    @property
    def height(self) -> float:
        return self.bottom + AXIS


@dataclass(frozen=True)
class Segment:
    x: float
    width: float
    colour: str
    title: str


@dataclass(frozen=True)
class Row:
    name: str  # the whole name, for its title
    shown: str  # as the row shows it, cut to NAME_CHARS
    counts: dict[str, int]
    segments: list[Segment]
    other: bool = False

    @property
    def allowed(self) -> int:
        return self.counts.get("allow", 0)

    @property
    def refused(self) -> int:
        return sum(n for d, n in self.counts.items() if d != "allow")


@dataclass
class Ranking:
    rows: list[Row]
    width: int = RANK_WIDTH
    centre: float = RANK_WIDTH / 2


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
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{int(seconds // 86400)} d"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _reads(n: int, what: str) -> str:
    return f"{n:,} {what}"


def keys(totals: dict[str, int]) -> list[Key]:
    """The legend: allowed, then each kind of refusal, with its total."""
    return [Key("allow", "allowed", ALLOWED_COLOUR, totals.get("allow", 0)),
            *(Key(d, label, colour, totals.get(d, 0)) for d, label, colour in REFUSED)]


def timeline(summary: dict[str, Any]) -> Timeline:
    """Lay out `summary["over_time"]` (one {decision: count} per time bucket) from `since` to `until`."""
    chart = Timeline(since=str(summary["since"]), until=str(summary["until"]))
    slots: list[dict[str, int]] = summary.get("over_time") or []
    if not any(any(s.values()) for s in slots):
        return chart
    up = [s.get("allow", 0) for s in slots]
    down = [sum(n for d, n in s.items() if d != "allow") for s in slots]
    step = _nice_step(max(*up, *down))
    up_top, down_bottom = step * math.ceil(max(up) / step), step * math.ceil(max(down) / step)
    scale = (PLOT_HEIGHT - 2 * SIDE_MIN) / (up_top + down_bottom)
    # Each side keeps room for its label, even with nothing to draw (no allowed read: the line is not the top).
    chart.zero = TOP + max(up_top * scale, SIDE_MIN)
    chart.bottom = chart.zero + max(down_bottom * scale, SIDE_MIN)
    chart.up_ticks = [Tick(round(chart.zero - v * scale, 2), f"{v:,}") for v in range(0, up_top + 1, step)]
    chart.down_ticks = [Tick(round(chart.zero + v * scale, 2), f"{v:,}") for v in range(step, down_bottom + 1, step)]
    start = _parse(chart.since)
    width_s = float(summary.get("bucket_seconds") or (_parse(chart.until) - start).total_seconds() / len(slots))
    chart.bucket_label = _duration(width_s)
    slot_w = chart.plot_width / len(slots)
    gap = min(2.0, slot_w * 0.2)
    for i, counts in enumerate(slots):
        moment = (start + dt.timedelta(seconds=width_s * i)).strftime("%Y-%m-%d %H:%M")
        _lay_slot(chart, counts, round(LEFT + i * slot_w + gap / 2, 2), round(slot_w - gap, 2), scale, moment)
    span = (_parse(chart.until) - start).total_seconds()
    fmt = "%H:%M" if span <= 86400 * 1.5 else "%m-%d %H:%M"
    every = max(1, len(slots) // 8)
    chart.x_ticks = [Tick(round(LEFT + i * slot_w, 2), (start + dt.timedelta(seconds=width_s * i)).strftime(fmt))
                     for i in range(0, len(slots), every)]
    return chart


def _lay_slot(chart: Timeline, counts: dict[str, int], x: float, width: float, scale: float, moment: str) -> None:
    """One time bucket: its allowed bar up from the zero line, its refused ones stacked down from it."""
    allowed = counts.get("allow", 0)
    if allowed:
        h = max(allowed * scale, MIN_BAR)
        chart.bars.append(Bar(x, round(chart.zero - h, 2), width, round(h, 2), ALLOWED_COLOUR,
                              f"{_reads(allowed, 'allowed')} from {moment} UTC"))
    y = chart.zero
    for decision, label, colour in REFUSED:
        n = counts.get(decision, 0)
        if n:
            h = max(n * scale, MIN_BAR)
            chart.bars.append(Bar(x, round(y, 2), width, round(h, 2), colour, f"{_reads(n, label)} from {moment} UTC"))
            y += h


def _cut(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "\u2026"


def ranking(part: dict[str, Any], kind: str) -> Ranking:
    """`part` ({"top": [{"name", decision: n}], "others": {"groups", decision: n}}) as rows of bars: allowed to the
    right of the centre, refused (denied, failed, pending) to the left, on one scale."""
    entries = [(str(e["name"]) if e.get("name") is not None else NO_NAME[kind], e, False) for e in part.get("top", [])]
    others = part.get("others") or {}
    if others.get("groups"):
        entries.append((f"{others['groups']:,} {OTHER_NAMES[kind]}", others, True))
    counted = [(name, {d: int(e.get(d, 0)) for d in ("allow", *(r[0] for r in REFUSED))}, other)
               for name, e, other in entries]
    chart = Ranking(rows=[])
    widest = max((max(c["allow"], sum(c.values()) - c["allow"]) for _, c, _ in counted), default=0)
    scale = (chart.centre - 2) / widest if widest else 0.0
    for name, counts, other in counted:
        chart.rows.append(Row(name, _cut(name), counts, _segments(chart.centre, counts, scale), other))
    return chart


def _segments(centre: float, counts: dict[str, int], scale: float) -> list[Segment]:
    segments = []
    if counts["allow"]:
        segments.append(Segment(centre, round(max(counts["allow"] * scale, MIN_BAR), 2), ALLOWED_COLOUR,
                                _reads(counts["allow"], "allowed")))
    x = centre
    for decision, label, colour in REFUSED:
        if counts[decision]:
            w = max(counts[decision] * scale, MIN_BAR)
            x -= w
            segments.append(Segment(round(x, 2), round(w, 2), colour, _reads(counts[decision], label)))
    return segments
