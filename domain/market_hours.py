"""NYSE (XNYS) sessions from exchange-calendars: holidays and early closes included.

Building the calendar takes about half a second, so it is built once per process, lazily, and
reduced to two sorted arrays of epoch seconds (session opens and closes); every lookup is then a
binary search. The calendar covers roughly twenty years back and one year ahead of today; a time
outside that raises ``ValueError`` rather than silently answering "closed".

All functions take and return timezone-aware UTC ``datetime``s.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

CALENDAR = "XNYS"
_MINUTE = 60


@dataclass(frozen=True, slots=True)
class _Sessions:
    opens: np.ndarray  # int64 epoch seconds, ascending
    closes: np.ndarray  # int64 epoch seconds, ascending; closes[i] is opens[i]'s close


@functools.cache
def _sessions() -> _Sessions:
    import exchange_calendars as xc  # slow import; only when first needed

    with warnings.catch_warnings():
        # exchange-calendars 4.13 trips pandas 3.1's deprecation of tz-dropping Series.values
        # inside its own constructor; nothing for us to change, so keep it out of our logs.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*drops timezone information.*")
        cal = xc.get_calendar(CALENDAR)
    return _Sessions(
        opens=np.asarray(cal.opens_nanos, dtype=np.int64) // 1_000_000_000,
        closes=np.asarray(cal.closes_nanos, dtype=np.int64) // 1_000_000_000,
    )


def _epoch(t: datetime) -> float:
    """Seconds since the epoch; a naive or out-of-coverage time is a ValueError."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"market_hours needs a timezone-aware datetime, got naive {t!r}")
    s = _sessions()
    e = t.timestamp()
    # One day of slack either side: the last session's close is still a valid question.
    if e < s.opens[0] - 86_400 or e > s.closes[-1] + 86_400:
        raise ValueError(
            f"{t.isoformat()} is outside the {CALENDAR} calendar's coverage "
            f"({_dt(s.opens[0]).date()} .. {_dt(s.closes[-1]).date()})"
        )
    return e


def _dt(epoch: int | np.integer) -> datetime:
    return datetime.fromtimestamp(int(epoch), UTC)


def _beyond(what: str) -> ValueError:
    s = _sessions()
    return ValueError(
        f"{what} is outside the {CALENDAR} calendar's coverage "
        f"({_dt(s.opens[0]).date()} .. {_dt(s.closes[-1]).date()})"
    )


def coverage() -> tuple[datetime, datetime]:
    """The first session's open and the last session's close the calendar knows."""
    s = _sessions()
    return _dt(s.opens[0]), _dt(s.closes[-1])


def _index_at_or_before(e: float) -> int:
    """Index of the latest session whose open is <= e (-1 when none)."""
    return int(np.searchsorted(_sessions().opens, e, side="right")) - 1


def is_open(t: datetime) -> bool:
    return session_at(t) is not None


def session_at(t: datetime) -> tuple[datetime, datetime] | None:
    """(open, close) of the session containing ``t`` (open <= t < close), else None."""
    e = _epoch(t)
    s = _sessions()
    i = _index_at_or_before(e)
    if i >= 0 and e < s.closes[i]:
        return _dt(s.opens[i]), _dt(s.closes[i])
    return None


def next_open(t: datetime) -> datetime:
    """The first session open strictly after ``t``."""
    e = _epoch(t)
    s = _sessions()
    i = int(np.searchsorted(s.opens, e, side="right"))
    if i >= len(s.opens):
        raise _beyond(f"the session after {t.isoformat()}")
    return _dt(s.opens[i])


def previous_open(t: datetime) -> datetime:
    """The latest session open <= ``t``."""
    e = _epoch(t)
    i = _index_at_or_before(e)
    if i < 0:
        raise _beyond(f"the session before {t.isoformat()}")
    return _dt(_sessions().opens[i])


def next_close(t: datetime) -> datetime:
    """The close of the session ``t`` is in, or else of the next session."""
    e = _epoch(t)
    s = _sessions()
    # The first close strictly after t: t's own session if inside one, the next one otherwise.
    i = int(np.searchsorted(s.closes, e, side="right"))
    if i >= len(s.closes):
        raise _beyond(f"the close after {t.isoformat()}")
    return _dt(s.closes[i])


def sessions_between(t0: datetime, t1: datetime) -> list[tuple[datetime, datetime]]:
    """Every session (open, close) overlapping [t0, t1), oldest first."""
    e0, e1 = _epoch(t0), _epoch(t1)
    s = _sessions()
    # First session whose close is after t0 ... last whose open is before t1.
    lo = int(np.searchsorted(s.closes, e0, side="right"))
    hi = int(np.searchsorted(s.opens, e1, side="left"))
    return [(_dt(s.opens[i]), _dt(s.closes[i])) for i in range(lo, hi)]


def session_open_minutes(end: datetime, count: int) -> list[datetime]:
    """The ``count`` most recent minute starts strictly before ``end`` that lie inside sessions,
    walking back across nights, weekends and holidays; oldest first.

    A minute starting before ``end`` may not have finished by ``end``: pass a minute-aligned
    ``end`` to get complete minutes only.
    """
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if count == 0:
        return []
    e = _epoch(end)
    s = _sessions()
    # Smallest minute boundary >= end: minute starts m < end are exactly m < ceil_end.
    ceil_end = -(-int(np.ceil(e)) // _MINUTE) * _MINUTE
    i = _index_at_or_before(e)
    chunks: list[np.ndarray] = []
    need = count
    while need > 0:
        if i < 0:
            raise _beyond(f"{count} session minutes before {end.isoformat()}")
        o, c = int(s.opens[i]), int(s.closes[i])
        last_excl = min(c, ceil_end)  # exclusive bound on minute starts in this session
        n = max(0, (last_excl - o) // _MINUTE)
        take = min(n, need)
        if take:
            chunks.append(np.arange(last_excl - take * _MINUTE, last_excl, _MINUTE, dtype=np.int64))
            need -= take
        i -= 1
    minutes = np.concatenate(chunks[::-1])
    return [_dt(m) for m in minutes]


def minute_floor(t: datetime) -> datetime:
    """``t`` truncated to its minute (UTC)."""
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def second_floor(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(microsecond=0)


def ceil_seconds(delta: timedelta) -> int:
    """The smallest whole number of seconds >= ``delta`` (exact, via integer microseconds)."""
    micro = delta // timedelta(microseconds=1)
    return -(-micro // 1_000_000)
