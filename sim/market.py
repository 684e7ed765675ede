"""The simulated market: a pure function of (seed, symbol, time), or a replay file of bars.

Any process can compute the price at time t, so the feed (bars) and the simulated exchange
(quotes it matches resting orders against) agree without sharing memory (DESIGN §7).

- :class:`SyntheticMarket` builds each session's per-second mid-price path from an RNG seeded by a
  stable hash of (seed, symbol, session date): any day is O(1), and two processes with the same seed
  see identical prices.
- :class:`~steadyhand.sim.replay.ReplayMarket` (``sim/replay.py``) serves bars from a CSV as given
  (bad rows included: the feed validates).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import numpy as np
from steadyhand.config import SimSettings
from steadyhand.domain import Bar, market_hours


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    ts: datetime
    bid: float
    ask: float

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2


@dataclass(frozen=True, slots=True)
class QuoteArrays:
    """A quote path as arrays (what the exchange matches against, without a Quote per second)."""

    ts: np.ndarray  # int64 epoch seconds, ascending
    bid: np.ndarray  # float64, cents
    ask: np.ndarray  # float64, cents

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def empty(cls) -> QuoteArrays:
        return cls(np.empty(0, np.int64), np.empty(0), np.empty(0))

    @classmethod
    def from_quotes(cls, quotes: Sequence[Quote]) -> QuoteArrays:
        if not quotes:
            return cls.empty()
        return cls(
            ts=np.array([int(q.ts.timestamp()) for q in quotes], dtype=np.int64),
            bid=np.array([q.bid for q in quotes], dtype=np.float64),
            ask=np.array([q.ask for q in quotes], dtype=np.float64),
        )

    def to_quotes(self, symbol: str) -> list[Quote]:
        return [
            Quote(symbol, epoch_dt(int(t)), float(b), float(a))
            for t, b, a in zip(self.ts, self.bid, self.ask, strict=True)
        ]


@runtime_checkable
class MarketModel(Protocol):
    symbols: tuple[str, ...]

    def bar(self, symbol: str, minute_start: datetime) -> Bar | None:
        """The 1-minute bar starting at ``minute_start``; None when the market is closed then."""
        ...

    def quote(self, symbol: str, t: datetime) -> Quote | None:
        """The bid/ask at ``t``; None when the market is closed."""
        ...

    def path(self, symbol: str, t0: datetime, t1: datetime) -> list[Quote]:
        """The per-second quotes in [t0, t1) during open market."""
        ...

    def history(self, symbol: str, end: datetime, count: int) -> list[Bar]:
        """The last ``count`` bars starting before ``end``, oldest first."""
        ...


def may_quote_between(market: MarketModel, t0: datetime, t1: datetime) -> bool:
    """False only when the model knows no symbol has a quote in [t0, t1) (a minute-bar replay
    between two bars); models without ``quotes_between`` may always have one."""
    known = getattr(market, "quotes_between", None)
    return True if known is None else bool(known(t0, t1))


def quote_arrays(market: MarketModel, symbol: str, t0: datetime, t1: datetime) -> QuoteArrays:
    """``market.path`` as arrays; uses the model's vectorised ``path_arrays`` when it has one."""
    fast = getattr(market, "path_arrays", None)
    if fast is not None:
        return fast(symbol, t0, t1)
    return QuoteArrays.from_quotes(market.path(symbol, t0, t1))


def epoch_dt(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def as_utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {t!r}")
    return t.astimezone(UTC)


def stable_int(*parts: object) -> int:
    """A 64-bit integer from ``parts`` that is the same in every process (unlike ``hash()``)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def spread(mid: np.ndarray, spread_bps: float) -> tuple[np.ndarray, np.ndarray]:
    """Bid/ask around ``mid`` rounded to cents, always at least a cent apart."""
    half = mid * (spread_bps / 20_000.0)
    bid = np.round(mid - half, 2)
    ask = np.round(mid + half, 2)
    ask = np.where(ask > bid, ask, np.round(bid + 0.01, 2))
    return bid, ask


# ---------------------------------------------------------------------------------------------
# Synthetic market
# ---------------------------------------------------------------------------------------------

_SECONDS_PER_YEAR_OF_TRADING = 252 * 23_400
_DAILY_FACTOR_SIGMA = 0.03  # spread of each day's open around the symbol's base price
_U_SHAPE_DECAY_S = 1_800.0  # intraday volatility is highest near the open and the close


@dataclass(frozen=True, slots=True)
class _SessionPath:
    open_epoch: int
    mids: np.ndarray  # float64 per second of the session
    bar_ohlc: np.ndarray  # (minutes, 4) float64
    bar_volume: np.ndarray  # (minutes,) int64


def _base_price(symbol: str) -> float:
    """A per-symbol price level between 50 and 500, the same in every process."""
    return 50.0 + (stable_int("base", symbol) % 45_000) / 100.0


def _annual_vol(symbol: str) -> float:
    return 0.20 + (stable_int("vol", symbol) % 2_000) / 10_000.0  # 20% .. 40%


@functools.lru_cache(maxsize=48)
def _session_path(seed: int, symbol: str, open_epoch: int, close_epoch: int) -> _SessionPath:
    """One session's per-second mid path and its minute bars (cached: ~190 kB per session)."""
    session_date = epoch_dt(open_epoch).date()
    rng = np.random.default_rng(stable_int("session", seed, symbol, session_date.isoformat()))
    n = close_epoch - open_epoch
    t = np.arange(n, dtype=np.float64)
    # Volatility smile over the day (open and close are busier), on top of a per-symbol level.
    u_shape = 1.0 + 0.8 * (np.exp(-t / _U_SHAPE_DECAY_S) + np.exp(-(n - t) / _U_SHAPE_DECAY_S))
    sigma_s = _annual_vol(symbol) / math.sqrt(_SECONDS_PER_YEAR_OF_TRADING)
    steps = rng.standard_normal(n) * sigma_s * u_shape / math.sqrt(np.mean(u_shape**2))
    steps[0] = 0.0
    day_open = _base_price(symbol) * math.exp(rng.normal(0.0, _DAILY_FACTOR_SIGMA))
    mids = day_open * np.exp(np.cumsum(steps))
    minutes = n // 60
    per_minute = mids[: minutes * 60].reshape(minutes, 60)
    ohlc = np.stack(
        [per_minute[:, 0], per_minute.max(axis=1), per_minute.min(axis=1), per_minute[:, -1]], axis=1
    )
    ohlc = np.round(ohlc, 4)
    base_volume = 2_000 + stable_int("volume", symbol) % 18_000
    minute_u = u_shape[: minutes * 60 : 60]
    volume = np.maximum(1, (base_volume * minute_u * rng.lognormal(0.0, 0.4, minutes)).astype(np.int64))
    mids.setflags(write=False)
    return _SessionPath(open_epoch=open_epoch, mids=mids, bar_ohlc=ohlc, bar_volume=volume)


class SyntheticMarket:
    """A deterministic synthetic intraday market: geometric random walk per second, 20–40%
    annualised volatility, spread ``spread_bps`` around the mid, closed outside XNYS sessions."""

    def __init__(self, seed: int, symbols: Sequence[str], spread_bps: float = 2.0) -> None:
        if spread_bps < 0:
            raise ValueError(f"spread_bps must not be negative, got {spread_bps}")
        self.seed = seed
        self.symbols: tuple[str, ...] = tuple(symbols)
        self.spread_bps = spread_bps

    def _check(self, symbol: str) -> None:
        if symbol not in self.symbols:
            raise KeyError(f"unknown symbol {symbol!r} (market has {', '.join(self.symbols)})")

    def _session(self, symbol: str, t: datetime) -> _SessionPath | None:
        session = market_hours.session_at(t)
        if session is None:
            return None
        o, c = session
        return _session_path(self.seed, symbol, int(o.timestamp()), int(c.timestamp()))

    def bar(self, symbol: str, minute_start: datetime) -> Bar | None:
        self._check(symbol)
        m = market_hours.minute_floor(as_utc(minute_start))
        sp = self._session(symbol, m)
        if sp is None:
            return None
        i = (int(m.timestamp()) - sp.open_epoch) // 60
        if i >= len(sp.bar_volume):  # a trailing partial minute (never on XNYS)
            return None
        o, h, lo, c = (float(x) for x in sp.bar_ohlc[i])
        return Bar(symbol, m, o, h, lo, c, int(sp.bar_volume[i]))

    def quote(self, symbol: str, t: datetime) -> Quote | None:
        self._check(symbol)
        t = as_utc(t)
        sp = self._session(symbol, t)
        if sp is None:
            return None
        i = int(t.timestamp()) - sp.open_epoch
        i = min(max(i, 0), len(sp.mids) - 1)
        bid, ask = spread(sp.mids[i : i + 1], self.spread_bps)
        return Quote(symbol, epoch_dt(sp.open_epoch + i), float(bid[0]), float(ask[0]))

    def path_arrays(self, symbol: str, t0: datetime, t1: datetime) -> QuoteArrays:
        self._check(symbol)
        t0, t1 = as_utc(t0), as_utc(t1)
        if t1 <= t0:
            return QuoteArrays.empty()
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        for o, c in market_hours.sessions_between(t0, t1):
            open_e, close_e = int(o.timestamp()), int(c.timestamp())
            sp = _session_path(self.seed, symbol, open_e, close_e)
            # Whole seconds s with t0 <= s < t1, as offsets from the open (exact integer maths).
            lo = max(0, market_hours.ceil_seconds(t0 - o))
            hi = min(close_e - open_e, market_hours.ceil_seconds(t1 - o))
            if hi > lo:
                parts.append((np.arange(open_e + lo, open_e + hi, dtype=np.int64), sp.mids[lo:hi]))
        if not parts:
            return QuoteArrays.empty()
        ts = np.concatenate([p[0] for p in parts])
        bid, ask = spread(np.concatenate([p[1] for p in parts]), self.spread_bps)
        return QuoteArrays(ts=ts, bid=bid, ask=ask)

    def path(self, symbol: str, t0: datetime, t1: datetime) -> list[Quote]:
        return self.path_arrays(symbol, t0, t1).to_quotes(symbol)

    def history(self, symbol: str, end: datetime, count: int) -> list[Bar]:
        self._check(symbol)
        bars = [self.bar(symbol, m) for m in market_hours.session_open_minutes(as_utc(end), count)]
        return [b for b in bars if b is not None]


def load_market(sim: SimSettings, symbols: Sequence[str]) -> MarketModel:
    """The market a run uses: the replay file when ``sim.replay`` is set, else synthetic."""
    if sim.replay:
        from steadyhand.sim.replay import ReplayMarket  # replay imports this module's quote types

        # Lock-step quotes each bar's open at its start, no spread: the backtest's fill price.
        price = "open" if sim.lockstep else "close"
        return ReplayMarket(sim.replay, symbols=symbols, spread_bps=sim.spread_bps, price=price)
    return SyntheticMarket(sim.seed, symbols, spread_bps=sim.spread_bps)

