"""The project's clock and its one text form of a time: UTC, microseconds, a trailing Z.

Every time the gateway stores, signs, hashes or shows goes through `format_time` (an audit record's hash covers
that text: it must never change), and every time it reads from a person, a file or a store through `parse_time`.
"""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(moment: dt.datetime) -> str:
    if moment.tzinfo is not dt.UTC:  # now() and the store give UTC already
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        moment = moment.astimezone(dt.UTC)
    if moment.year < 1000:  # strftime's %Y does not pad these; the hashed form must not change
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # isoformat is a fifth of strftime's cost and gives the same text once "+00:00" becomes "Z".
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_time(value: str) -> dt.datetime:
    """ISO 8601 (a trailing Z allowed); naive times are UTC. ValueError for anything else, also for a time whose
    zone takes it out of years 1-9999 in UTC (`9999-12-31T23:59-23:59`: no comparison with it can be made)."""
    if not (value.isascii() and value.isprintable()):  # ISO 8601 is; fromisoformat ignores what follows a NUL
        raise ValueError(f"{value[:40]!r} is not an ISO 8601 time")
    moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    if moment.tzinfo is not dt.UTC:
        try:
            moment.astimezone(dt.UTC)
        except OverflowError:
            raise ValueError(f"{value[:40]!r} is out of range in UTC") from None
    return moment
