"""The simulated market: a pure function of (seed, symbol, time), or a replay file of bars.

Any process can compute the price at time t, so the feed (bars) and the simulated exchange
(quotes it matches resting orders against) agree without sharing memory (DESIGN §7).

- :class:`SyntheticMarket` builds each session's per-second mid-price path from an RNG seeded by a
  stable hash of (seed, symbol, session date): any day is O(1), and two processes with the same seed
  see identical prices.
- :class:`ReplayMarket` serves bars from a CSV as given (bad rows included: the feed validates).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
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
            Quote(symbol, _dt(int(t)), float(b), float(a))
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


def _dt(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {t!r}")
    return t.astimezone(UTC)


def stable_int(*parts: object) -> int:
    """A 64-bit integer from ``parts`` that is the same in every process (unlike ``hash()``)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _spread(mid: np.ndarray, spread_bps: float) -> tuple[np.ndarray, np.ndarray]:
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
    session_date = _dt(open_epoch).date()
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
        m = market_hours.minute_floor(_utc(minute_start))
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
        t = _utc(t)
        sp = self._session(symbol, t)
        if sp is None:
            return None
        i = int(t.timestamp()) - sp.open_epoch
        i = min(max(i, 0), len(sp.mids) - 1)
        bid, ask = _spread(sp.mids[i : i + 1], self.spread_bps)
        return Quote(symbol, _dt(sp.open_epoch + i), float(bid[0]), float(ask[0]))

    def path_arrays(self, symbol: str, t0: datetime, t1: datetime) -> QuoteArrays:
        self._check(symbol)
        t0, t1 = _utc(t0), _utc(t1)
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
        bid, ask = _spread(np.concatenate([p[1] for p in parts]), self.spread_bps)
        return QuoteArrays(ts=ts, bid=bid, ask=ask)

    def path(self, symbol: str, t0: datetime, t1: datetime) -> list[Quote]:
        return self.path_arrays(symbol, t0, t1).to_quotes(symbol)

    def history(self, symbol: str, end: datetime, count: int) -> list[Bar]:
        self._check(symbol)
        bars = [self.bar(symbol, m) for m in market_hours.session_open_minutes(_utc(end), count)]
        return [b for b in bars if b is not None]


# ---------------------------------------------------------------------------------------------
# Replay market
# ---------------------------------------------------------------------------------------------

REPLAY_COLUMNS = ("ts", "symbol", "open", "high", "low", "close", "volume")
_CHUNK_ROWS = 50_000  # rows parsed at a time: bounds the text (a str per field) held while loading
_US = 1_000_000
_ONE_US = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NO_TS = np.iinfo(np.int64).min  # an unreadable ts (no datetime is that far from the epoch)


def _parse_float(text: str | None) -> float:
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


def _parse_volume(text: str | None) -> int:
    # Bar.volume is an int, so NaN cannot be carried: an unparsable volume becomes -1, which the
    # feed's "negative" check rejects like any other bad value.
    value = _parse_float(text)
    return int(value) if math.isfinite(value) else -1


def _parse_ts(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _epoch_us(t: datetime) -> int:
    """``t`` (aware) as integer microseconds since the epoch: exact, unlike ``timestamp()``."""
    return (t - _EPOCH) // _ONE_US


def _dt_us(epoch_us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=epoch_us)


def _index_dtype(n: int) -> type[np.signedinteger]:
    return np.int32 if n < 2**31 else np.int64


def _floats(texts: np.ndarray) -> np.ndarray:
    """``_parse_float`` of every field: numpy's object cast calls ``float(text)`` (same acceptance:
    spaces, "1_000", "nan", "inf"); only a column with an unreadable field pays a per-value parse."""
    try:
        return texts.astype(np.float64)
    except ValueError:
        uniques, codes = np.unique(texts, return_inverse=True)
        return np.array([_parse_float(u) for u in uniques], dtype=np.float64)[codes]


@dataclass(frozen=True, slots=True)
class _Columns:
    ts: np.ndarray  # int64 epoch µs
    sym: np.ndarray  # int32 code into names
    names: list[str]  # in order of first appearance
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray  # float64 of int(float(text)), -1 when not finite
    skipped: int


def _read_columns(path: Path) -> _Columns:
    """The readable rows of a replay CSV as columns; pandas' C reader does the splitting."""
    with path.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])  # csv, as before: same header errors and BOM handling
        missing = [c for c in REPLAY_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        # The last column of a repeated name wins, as with csv.DictReader.
        cols = [len(header) - 1 - header[::-1].index(c) for c in REPLAY_COLUMNS]
        ts_us: dict[str, int] = {}  # a tick's rows share one ts text: parse it once
        codes: dict[str, int] = {}
        parts: list[tuple[np.ndarray, ...]] = []
        skipped = 0
        try:
            # Short rows read as empty fields and long rows are cut (names/usecols), as DictReader.
            chunks = pd.read_csv(fh, header=None, names=list(range(max(cols) + 1)), usecols=sorted(set(cols)),
                                 index_col=False, dtype=object, keep_default_na=False, na_filter=False,
                                 chunksize=_CHUNK_ROWS, engine="c")
            for chunk in chunks:
                ts_text, symbol, o, h, lo, c, v = (chunk[i].to_numpy(dtype=object) for i in cols)
                t_codes, t_uniques = pd.factorize(ts_text)
                for u in t_uniques:
                    if u not in ts_us:
                        parsed = _parse_ts(u)
                        ts_us[u] = _NO_TS if parsed is None else _epoch_us(parsed)
                ts = np.array([ts_us[u] for u in t_uniques], dtype=np.int64)[t_codes]
                s_codes, s_uniques = pd.factorize(symbol)
                lut = np.array([codes.setdefault(s, len(codes)) if (s := u.strip()) else -1 for u in s_uniques],
                               dtype=np.int32)
                sym = lut[s_codes]
                keep = (ts != _NO_TS) & (sym >= 0)
                skipped += len(keep) - int(keep.sum())
                volume = _floats(v[keep])
                parts.append((ts[keep], sym[keep], _floats(o[keep]), _floats(h[keep]), _floats(lo[keep]),
                              _floats(c[keep]), np.where(np.isfinite(volume), np.trunc(volume), -1.0)))
        except pd.errors.EmptyDataError:
            pass  # nothing after the header
    if not parts:
        parts.append(tuple(np.empty(0, dtype=d) for d in (np.int64, np.int32, *[np.float64] * 5)))
    ts, sym, o, h, lo, c, volume = (np.concatenate(col) for col in zip(*parts, strict=True))
    # Symbols in order of first appearance among readable rows (a skipped row names none).
    present, first_row = np.unique(sym, return_index=True)
    ranked = present[np.argsort(first_row)]
    remap = np.full(len(codes), -1, dtype=np.int32)
    remap[ranked] = np.arange(len(ranked), dtype=np.int32)
    names = list(codes)
    return _Columns(ts=ts, sym=remap[sym], names=[names[i] for i in ranked], open=o, high=h, low=lo, close=c,
                    volume=volume, skipped=skipped)


class ReplayMarket:
    """Bars from a CSV (``ts,symbol,open,high,low,close,volume``; naive ts means UTC), served raw.

    Quotes are the close of the latest usable bar at or before t on the same UTC day, ∓ half the
    spread; the path has one quote per bar, stamped at the bar's start (consistent with ``quote``).
    Rows whose ts or symbol cannot be read at all are skipped and counted in ``skipped``.

    Held as columns (numpy arrays in file order, ~80 bytes a row with the indexes) rather than a
    Bar per row: a Bar is made only when one is asked for, so a year of 500 symbols fits in memory.
    """

    def __init__(
        self,
        csv_path: str | Path,
        symbols: Sequence[str] | None = None,
        spread_bps: float = 2.0,
    ) -> None:
        self.csv_path = Path(csv_path)
        self.spread_bps = spread_bps
        cols = _read_columns(self.csv_path)
        self.skipped = cols.skipped
        self._ts = cols.ts  # int64 epoch µs (a ts text may carry a fraction of a second)
        self._sym = cols.sym  # int32 index into _names
        self._names = cols.names
        self._open, self._high, self._low, self._close = cols.open, cols.high, cols.low, cols.close
        self._volume = cols.volume  # float64 holding int(float(text)) exactly, -1 when unreadable
        if not len(self._ts):
            raise ValueError(f"{self.csv_path}: no readable bars")
        self.symbols: tuple[str, ...] = tuple(symbols) if symbols is not None else tuple(self._names)
        self._code = {name: i for i, name in enumerate(self._names)}
        # Rows per symbol in time order (stable: file order among equal ts), one slice per symbol.
        order = np.lexsort((self._ts, self._sym)).astype(_index_dtype(len(self._ts)))
        self._order = order
        self._sorted_ts = self._ts[order]
        sym_sorted = self._sym[order]
        self._bounds = np.searchsorted(sym_sorted, np.arange(len(self._names) + 1))
        # Usable for quotes and the path: the first of duplicates, with a finite, positive close.
        first = np.ones(len(order), dtype=bool)
        first[1:] = (sym_sorted[1:] != sym_sorted[:-1]) | (self._sorted_ts[1:] != self._sorted_ts[:-1])
        close = self._close[order]
        usable = np.flatnonzero(first & (close > 0) & np.isfinite(close))
        self._q_close = close[usable]
        # Whole seconds, truncated toward zero as ``int(ts.timestamp())`` does.
        self._q_ts = np.fix(self._sorted_ts[usable] / _US).astype(np.int64)
        self._q_bounds = np.searchsorted(sym_sorted[usable], np.arange(len(self._names) + 1))
        self._quote_times = np.unique(self._q_ts)

    # --- rows in file order (the feed and the CLI backtest) --------------------------------------

    def __len__(self) -> int:
        """The number of readable rows."""
        return len(self._ts)

    def bars(self, start: int, stop: int) -> list[Bar]:
        """The rows ``[start, stop)`` in file order, as Bars."""
        return self._bars(np.arange(max(start, 0), min(stop, len(self._ts))))

    def rows(self) -> list[Bar]:
        """Every readable row, in file order, values as given."""
        return self.bars(0, len(self._ts))

    def ts_at(self, i: int) -> datetime:
        """The time of row ``i`` (file order)."""
        return _dt_us(int(self._ts[i]))

    def first_closing_after(self, now: datetime, start: int = 0) -> int:
        """The first row at or after ``start`` (file order) whose minute has not closed by ``now``
        (ts + 1 min > now); ``len(self)`` when there is none."""
        limit = _epoch_us(now) - 60 * _US
        n = len(self._ts)
        step = 1_024  # scan in growing chunks: usually the row is near ``start``, never O(n) per tick
        i = max(start, 0)
        while i < n:
            hits = np.flatnonzero(self._ts[i : i + step] > limit)
            if len(hits):
                return i + int(hits[0])
            i += step
            step *= 2
        return n

    def bars_before(self, stop: int, end: datetime) -> list[Bar]:
        """The rows before row ``stop`` (file order) whose ts is before ``end``, as Bars."""
        head = self._ts[: max(stop, 0)]
        return self._bars(np.flatnonzero(head < _epoch_us(end)))

    def _bars(self, idx: np.ndarray) -> list[Bar]:
        names = self._names
        return [
            Bar(symbol=names[s], ts=_dt_us(t), open=o, high=h, low=lo, close=c, volume=int(v))
            for s, t, o, h, lo, c, v in zip(
                self._sym[idx].tolist(), self._ts[idx].tolist(), self._open[idx].tolist(),
                self._high[idx].tolist(), self._low[idx].tolist(), self._close[idx].tolist(),
                self._volume[idx].tolist(), strict=True,
            )
        ]

    # --- lookups --------------------------------------------------------------------------------

    @property
    def first_ts(self) -> datetime:
        return _dt_us(int(self._ts.min()))

    @property
    def last_ts(self) -> datetime:
        return _dt_us(int(self._ts.max()))

    def _slice(self, symbol: str) -> tuple[int, int]:
        """The symbol's rows as a slice of ``_order``; empty for an unknown symbol."""
        code = self._code.get(symbol)
        if code is None:
            return 0, 0
        return int(self._bounds[code]), int(self._bounds[code + 1])

    def _quotable(self, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        code = self._code.get(symbol)
        if code is None:
            return np.empty(0, np.int64), np.empty(0)
        lo, hi = int(self._q_bounds[code]), int(self._q_bounds[code + 1])
        return self._q_ts[lo:hi], self._q_close[lo:hi]

    def bar(self, symbol: str, minute_start: datetime) -> Bar | None:
        lo, hi = self._slice(symbol)
        t = _epoch_us(_utc(minute_start))
        i = lo + int(np.searchsorted(self._sorted_ts[lo:hi], t, side="left"))  # first of duplicates
        if i >= hi or self._sorted_ts[i] != t:
            return None
        return self._bars(self._order[i : i + 1])[0]

    def quote(self, symbol: str, t: datetime) -> Quote | None:
        t = _utc(t)
        ts, close = self._quotable(symbol)
        i = int(np.searchsorted(ts, t.timestamp(), side="right")) - 1
        if i < 0:
            return None
        bar_ts = _dt(int(ts[i]))
        if bar_ts.date() != t.date():  # yesterday's last bar does not make today's market open
            return None
        bid, ask = _spread(close[i : i + 1], self.spread_bps)
        return Quote(symbol, t, float(bid[0]), float(ask[0]))

    def quotes_between(self, t0: datetime, t1: datetime) -> bool:
        """Whether any symbol has a quote in [t0, t1) (the bounds as in ``path_arrays``)."""
        lo = int(np.searchsorted(self._quote_times, _utc(t0).timestamp(), side="left"))
        return int(np.searchsorted(self._quote_times, _utc(t1).timestamp(), side="left")) > lo

    def path_arrays(self, symbol: str, t0: datetime, t1: datetime) -> QuoteArrays:
        t0, t1 = _utc(t0), _utc(t1)
        ts, close = self._quotable(symbol)
        lo = int(np.searchsorted(ts, t0.timestamp(), side="left"))
        hi = int(np.searchsorted(ts, t1.timestamp(), side="left"))
        bid, ask = _spread(close[lo:hi], self.spread_bps)
        return QuoteArrays(ts=ts[lo:hi], bid=bid, ask=ask)

    def path(self, symbol: str, t0: datetime, t1: datetime) -> list[Quote]:
        return self.path_arrays(symbol, t0, t1).to_quotes(symbol)

    def history(self, symbol: str, end: datetime, count: int) -> list[Bar]:
        if count <= 0:
            return []
        lo, hi = self._slice(symbol)
        stop = lo + int(np.searchsorted(self._sorted_ts[lo:hi], _epoch_us(_utc(end)), side="left"))
        return self._bars(self._order[max(lo, stop - count) : stop])


def load_market(sim: SimSettings, symbols: Sequence[str]) -> MarketModel:
    """The market a run uses: the replay file when ``sim.replay`` is set, else synthetic."""
    if sim.replay:
        return ReplayMarket(sim.replay, symbols=symbols, spread_bps=sim.spread_bps)
    return SyntheticMarket(sim.seed, symbols, spread_bps=sim.spread_bps)

