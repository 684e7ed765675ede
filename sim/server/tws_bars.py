"""Bars on the TWS face: ``reqHistoricalData`` (1-minute bars, ``keepUpToDate``) and
``reqRealTimeBars`` (5-second bars), built from the market model on the simulated clock.

With ``keepUpToDate`` the last bar of the history is the one still forming (from the per-second
quotes so far); at every minute the finished bar is sent once more in full, then the next one starts
(so a client taking "the bar before the newest" on ``hasNewBar`` gets the finished bar). Minutes
skipped by a stall or a clock jump are sent one by one, up to a session's worth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from steadyhand.domain import market_hours
from steadyhand.sim.market import MarketModel
from steadyhand.sim.server import tws_wire as w

MINUTE = timedelta(minutes=1)
Frames = list[bytes]


@dataclass
class _Sub:
    """One bar subscription of a session: ``hist`` (keepUpToDate 1-min) or ``rtb`` (5-s bars)."""

    kind: str
    symbol: str
    format_date: int
    current: datetime | None = None  # the bar (start) last sent
    final_sent: bool = True


class BarsMixin:
    """The bar requests of :class:`~steadyhand.sim.server.tws.TwsServer` (book thread)."""

    market: MarketModel
    clock: Any
    _sessions: list[Any]
    bar_requests: int = 0  # historical + real-time bar requests served (tests wait on it)

    def _symbol_of(self, f: list[str], at: int) -> str | None:  # provided by the server
        raise NotImplementedError

    def _bar_date(self, t: datetime, format_date: int) -> str:
        if format_date == 2:
            return str(int(t.timestamp()))
        return t.astimezone(w.NEW_YORK).strftime("%Y%m%d %H:%M:%S") + " America/New_York"

    def _partial(self, symbol: str, start: datetime, now: datetime, span: timedelta = MINUTE) \
            -> tuple[float, float, float, float, int] | None:
        """The bar forming in [start, min(now, start + span)): from the per-second quotes."""
        quotes = self.market.path(symbol, start, min(now, start + span) + timedelta(seconds=1))
        if not quotes:
            return None
        mids = [round(q.mid, 2) for q in quotes]
        full = self.market.bar(symbol, market_hours.minute_floor(start))
        share = len(quotes) / 60 if span == MINUTE else len(quotes) / 60
        volume = int((full.volume if full else 0) * min(share, 1.0))
        return mids[0], max(mids), min(mids), mids[-1], volume

    def _historical(self, s: Any, f: list[str]) -> Frames:
        req_id = int(f[1])
        self.bar_requests += 1
        symbol = self._symbol_of(f, 2)
        end_text, bar_size, duration, format_date, keep = f[15], f[16], f[17], int(f[20] or 1), f[21] == "1"
        if symbol is None:
            return [w.error(req_id, 200, "No security definition has been found for the request", s.version)]
        if bar_size.strip() not in ("1 min", "1 mins"):
            return [w.error(req_id, 321, f"Error validating request:-'bB' : cause - Historical data bar size "
                            f"setting '{bar_size}' is not served by this exchange (1 min only)", s.version)]
        now = self.clock.now()
        end = _parse_ib_time(end_text) if end_text else now
        bars = self.market.history(symbol, market_hours.minute_floor(end), _duration_bars(duration))
        rows = [(self._bar_date(b.ts, format_date), b.open, b.high, b.low, b.close, b.volume) for b in bars]
        sub = _Sub("hist", symbol, format_date, bars[-1].ts if bars else None, True)
        if keep:
            minute = market_hours.minute_floor(now)
            partial = self._partial(symbol, minute, now)
            if partial is not None:
                rows.append((self._bar_date(minute, format_date), *partial))
                sub.current, sub.final_sent = minute, False
            s.subs[req_id] = sub
        start = rows[0][0] if rows else ""
        return [w.frame([17, req_id, start, self._bar_date(end, format_date), len(rows), *w.bar_rows(rows)])]

    def _real_time_bars(self, s: Any, f: list[str]) -> Frames:
        req_id = int(f[2])
        self.bar_requests += 1
        symbol = self._symbol_of(f, 3)
        if symbol is None:
            return [w.error(req_id, 200, "No security definition has been found for the request", s.version)]
        now = self.clock.now()
        s.subs[req_id] = _Sub("rtb", symbol, 2, now.replace(microsecond=0) - timedelta(seconds=now.second % 5))
        return []

    def _cancel_sub(self, s: Any, f: list[str]) -> Frames:
        s.subs.pop(int(f[2]), None)
        return []

    def _bars_tick(self) -> list[tuple[Any, bytes]]:
        """Advance every bar subscription to the simulated now."""
        now = self.clock.now()
        out: list[tuple[Any, bytes]] = []
        for s in list(self._sessions):
            for req_id, sub in list(s.subs.items()):
                frames = self._hist_tick(req_id, sub, now) if sub.kind == "hist" else self._rtb_tick(req_id, sub, now)
                out += [(s, data) for data in frames]
        return out

    def _hist_tick(self, req_id: int, sub: _Sub, now: datetime) -> Frames:
        minute = market_hours.minute_floor(now)
        if sub.current is not None and minute <= sub.current:
            return []
        out: Frames = []
        if sub.current is not None:
            # The finished bar once more in full, then any whole minutes skipped (a stall, a jump).
            m = sub.current if not sub.final_sent else sub.current + MINUTE
            while m < minute and len(out) < 390:
                bar = self.market.bar(sub.symbol, m)
                if bar is not None:
                    out.append(_bar_update(req_id, self._bar_date(bar.ts, sub.format_date),
                                           (bar.open, bar.high, bar.low, bar.close, bar.volume)))
                    sub.current = m
                m += MINUTE
            sub.final_sent = True
        partial = self._partial(sub.symbol, minute, now)
        if partial is not None:
            out.append(_bar_update(req_id, self._bar_date(minute, sub.format_date), partial))
            sub.current, sub.final_sent = minute, False
        return out

    def _rtb_tick(self, req_id: int, sub: _Sub, now: datetime) -> Frames:
        out: Frames = []
        assert sub.current is not None
        while sub.current + timedelta(seconds=5) <= now and len(out) < 120:
            bar = self._partial(sub.symbol, sub.current, sub.current + timedelta(seconds=4), timedelta(seconds=5))
            if bar is not None:
                o, h, lo, c, v = bar
                out.append(w.frame([50, 3, req_id, int(sub.current.timestamp()), w.num(o), w.num(h), w.num(lo),
                                    w.num(c), max(v // 12, 1), w.num(c), 1]))
            sub.current += timedelta(seconds=5)
        if len(out) == 120:
            sub.current = now.replace(microsecond=0) - timedelta(seconds=now.second % 5)  # after a stall
        return out


def _bar_update(req_id: int, date: str, bar: tuple[float, float, float, float, int]) -> bytes:
    o, h, lo, c, v = bar
    return w.frame([90, req_id, max(1, v // 100), date, w.num(o), w.num(c), w.num(h), w.num(lo), w.num(c), v])


def _duration_bars(duration: str) -> int:
    """``"1800 S"``, ``"2 D"`` ... as a number of 1-minute session bars (390 a day), at most 30 days."""
    count, unit = duration.split()
    per = {"S": 1 / 60, "D": 390, "W": 5 * 390, "M": 21 * 390, "Y": 252 * 390}[unit.upper()]
    return max(1, min(int(int(count) * per), 30 * 390))


def _parse_ib_time(text: str) -> datetime:
    """``20240102 15:00:00 UTC`` / ``20240102-15:00:00`` (UTC) / ``20240102 10:00:00 US/Eastern``."""
    from zoneinfo import ZoneInfo

    parts = text.replace("-", " ", 1).split(" ")
    t = datetime.strptime(parts[0] + parts[1], "%Y%m%d%H:%M:%S")
    zone = ZoneInfo(parts[2]) if len(parts) > 2 and parts[2] else UTC
    return t.replace(tzinfo=zone).astimezone(UTC)
