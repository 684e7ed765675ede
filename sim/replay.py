"""The replay market: bars from a CSV file, served as given (bad rows included: the feed validates).

Held as numpy columns read with pandas' C parser; a ``Bar`` is made only when one is asked for.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from steadyhand.domain import Bar
from steadyhand.sim.market import Quote, QuoteArrays, as_utc, epoch_dt, spread

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
        price: Literal["close", "open"] = "close",
    ) -> None:
        if price not in ("close", "open"):
            raise ValueError(f"price must be 'close' or 'open', got {price!r}")
        self.csv_path = Path(csv_path)
        self.spread_bps = spread_bps
        self.price = price
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
        if price == "open":
            usable = np.flatnonzero(first & self._valid_ohlc(order))
            self._q_close = self._open[order][usable]  # named for the default; here the opens
        else:
            usable = np.flatnonzero(first & (close > 0) & np.isfinite(close))
            self._q_close = close[usable]
        # Whole seconds, truncated toward zero as ``int(ts.timestamp())`` does.
        self._q_ts = np.fix(self._sorted_ts[usable] / _US).astype(np.int64)
        self._q_bounds = np.searchsorted(sym_sorted[usable], np.arange(len(self._names) + 1))
        self._quote_times = np.unique(self._q_ts)

    def _valid_ohlc(self, order: np.ndarray) -> np.ndarray:
        """Rows (in ``order``) whose values pass the feed's checks (data/bar_checks.py): the bars
        the backtest sees, so a lock-step fill never lands on a bar the backtest skipped."""
        o, h, lo, c, v = (a[order] for a in (self._open, self._high, self._low, self._close, self._volume))
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c) & np.isfinite(v)
            return (finite & (np.minimum(np.minimum(o, h), np.minimum(lo, c)) > 0) & (lo <= h)
                    & (lo <= o) & (o <= h) & (lo <= c) & (c <= h) & (v >= 0))

    def _spread(self, mids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bid and ask around the quoted prices; on opens (lock-step) both are the open."""
        if self.price == "open":
            cents = np.round(mids, 2)
            return cents, cents
        return spread(mids, self.spread_bps)

    # --- rows in file order (the feed and the CLI backtest) --------------------------------------

    def run_end(self, start: int) -> int:
        """The end of the run of rows (file order) that share row ``start``'s ts: one feed tick."""
        n = len(self._ts)
        if start >= n:
            return n
        t = self._ts[start]
        step = 64
        i = start
        while i < n:
            hits = np.flatnonzero(self._ts[i : i + step] != t)
            if len(hits):
                return i + int(hits[0])
            i += step
            step *= 2
        return n

    def __len__(self) -> int:
        """The number of readable rows."""
        return len(self._ts)

    def bars(self, start: int, stop: int) -> list[Bar]:
        """The rows ``[start, stop)`` in file order, as Bars."""
        return self._bars(np.arange(max(start, 0), min(stop, len(self._ts))))

    def bars_at(self, rows: Sequence[int]) -> list[Bar]:
        """The rows at these indices (file order), as Bars."""
        return self._bars(np.asarray(rows, dtype=np.intp))

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
        t = _epoch_us(as_utc(minute_start))
        i = lo + int(np.searchsorted(self._sorted_ts[lo:hi], t, side="left"))  # first of duplicates
        if i >= hi or self._sorted_ts[i] != t:
            return None
        return self._bars(self._order[i : i + 1])[0]

    def quote(self, symbol: str, t: datetime) -> Quote | None:
        t = as_utc(t)
        ts, close = self._quotable(symbol)
        i = int(np.searchsorted(ts, t.timestamp(), side="right")) - 1
        if i < 0:
            return None
        bar_ts = epoch_dt(int(ts[i]))
        if bar_ts.date() != t.date():  # yesterday's last bar does not make today's market open
            return None
        bid, ask = self._spread(close[i : i + 1])
        return Quote(symbol, t, float(bid[0]), float(ask[0]))

    def quotes_between(self, t0: datetime, t1: datetime) -> bool:
        """Whether any symbol has a quote in [t0, t1) (the bounds as in ``path_arrays``)."""
        lo = int(np.searchsorted(self._quote_times, as_utc(t0).timestamp(), side="left"))
        return int(np.searchsorted(self._quote_times, as_utc(t1).timestamp(), side="left")) > lo

    def path_arrays(self, symbol: str, t0: datetime, t1: datetime) -> QuoteArrays:
        t0, t1 = as_utc(t0), as_utc(t1)
        ts, close = self._quotable(symbol)
        lo = int(np.searchsorted(ts, t0.timestamp(), side="left"))
        hi = int(np.searchsorted(ts, t1.timestamp(), side="left"))
        bid, ask = self._spread(close[lo:hi])
        return QuoteArrays(ts=ts[lo:hi], bid=bid, ask=ask)

    def path(self, symbol: str, t0: datetime, t1: datetime) -> list[Quote]:
        return self.path_arrays(symbol, t0, t1).to_quotes(symbol)

    def history(self, symbol: str, end: datetime, count: int) -> list[Bar]:
        if count <= 0:
            return []
        lo, hi = self._slice(symbol)
        stop = lo + int(np.searchsorted(self._sorted_ts[lo:hi], _epoch_us(as_utc(end)), side="left"))
        return self._bars(self._order[max(lo, stop - count) : stop])
