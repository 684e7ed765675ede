"""The feed's gate: nothing downstream sees a bad bar.

Rejection reasons are stable strings: they are journaled and counted, and operators grep for
them. Checks run in a fixed order and the first failure is the reason:

    nan                 a price (or the volume) is NaN or infinite
    non_positive        a price <= 0
    high_below_low      high < low
    ohlc_outside_range  open or close outside [low, high]
    negative_volume     volume < 0
    naive_ts            ts has no timezone (it could not be ordered against UTC times)
    out_of_order        ts earlier than the symbol's last good bar
    duplicate           ts equal to the symbol's last good bar
    unknown_symbol      (BarValidator only) a symbol it was not configured with
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from steadyhand.domain import Bar

REASONS = (
    "nan",
    "non_positive",
    "high_below_low",
    "ohlc_outside_range",
    "negative_volume",
    "naive_ts",
    "out_of_order",
    "duplicate",
    "unknown_symbol",
)


def _finite(value: object) -> bool:
    try:
        return math.isfinite(value)  # type: ignore[arg-type]
    except TypeError:  # None or a non-number: as unusable as NaN
        return False


def check_bar(bar: Bar, last_ts: datetime | None) -> str | None:
    """The reason ``bar`` must be dropped, or None if it is good.

    ``last_ts`` is the ts of the symbol's last good bar (None: no bar yet).
    """
    prices = (bar.open, bar.high, bar.low, bar.close)
    if not all(_finite(p) for p in prices) or not _finite(bar.volume):
        return "nan"
    if min(prices) <= 0:
        return "non_positive"
    if bar.high < bar.low:
        return "high_below_low"
    if not (bar.low <= bar.open <= bar.high and bar.low <= bar.close <= bar.high):
        return "ohlc_outside_range"
    if bar.volume < 0:
        return "negative_volume"
    if bar.ts.tzinfo is None or bar.ts.utcoffset() is None:
        return "naive_ts"  # comparing it with aware times would raise inside the feed
    if last_ts is not None:
        if bar.ts < last_ts:
            return "out_of_order"
        if bar.ts == last_ts:
            return "duplicate"
    return None


class BarValidator:
    """Stateful gate: remembers the last good ts per symbol and counts rejections by reason."""

    def __init__(self, symbols: Iterable[str] | None = None) -> None:
        self.symbols: frozenset[str] | None = None if symbols is None else frozenset(symbols)
        self.counts: Counter[str] = Counter()
        self.accepted = 0
        self._last: dict[str, datetime] = {}

    def last_ts(self, symbol: str) -> datetime | None:
        return self._last.get(symbol)

    def seed(self, symbol: str, ts: datetime) -> None:
        """Set the symbol's last good ts (e.g. after warm-up history).

        Never moves it backwards: a stale seed would let an already-delivered bar through again.
        """
        current = self._last.get(symbol)
        if current is None or ts > current:
            self._last[symbol] = ts

    def validate(self, bars: Iterable[Bar]) -> tuple[list[Bar], list[tuple[Bar, str]]]:
        """Split ``bars`` into good ones and (bar, reason) rejections, in input order.

        Bars are judged one after another, so a batch carrying the same bar twice keeps one.
        """
        good: list[Bar] = []
        rejected: list[tuple[Bar, str]] = []
        for bar in bars:
            if self.symbols is not None and bar.symbol not in self.symbols:
                reason: str | None = "unknown_symbol"
            else:
                reason = check_bar(bar, self._last.get(bar.symbol))
            if reason is None:
                self._last[bar.symbol] = bar.ts
                good.append(bar)
            else:
                self.counts[reason] += 1
                rejected.append((bar, reason))
        self.accepted += len(good)
        return good, rejected
