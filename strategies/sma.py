"""SMA crossover: one signal function for live trading and for the backtest.

``sma_crossover`` is the whole strategy. The backtest (``backtest/engine.py``) calls it; the live wrapper
(:class:`SmaCrossover`, used by the strategy actor) runs the same averaging and crossing code on the
last two rows of its windows only, so paper trading and the backtest can be compared on the same
bars and must agree on every intent.

Rows are *each symbol's own bars*: the live wrapper keeps the last ``slow + 1`` closes per symbol,
and the backtest lines symbols up by their k-th bar, not by clock time. A symbol that had no bar in
some minute (common for illiquid names on IEX) therefore keeps trading on its own series instead of
being NaN-padded into silence, and live and backtest see exactly the same windows.

Moving averages are summed oldest-first in a fixed order (not with a running sum), so the value for
a bar does not depend on how much history came before it: a 21-row live window and a 10,000-row
backtest give bit-identical averages, hence identical crossings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from steadyhand.config import StrategySettings
from steadyhand.domain import Bar, Side, Signal
from steadyhand.strategies.base import Strategy, wide

STRATEGY = "sma"
MAX_ID_LEN = 48  # Alpaca's client_order_id limit is 48 characters; IB's is laxer
_ID_OK = re.compile(r"^[A-Za-z0-9._-]+$")
# Averages closer than this (relative) count as equal: on flat prices the fast and slow averages
# differ only by rounding noise, which must not flip back and forth as "crossings".
_REL_EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# The signal
# ---------------------------------------------------------------------------------------------


def _check_windows(fast: int, slow: int) -> None:
    if fast < 1 or slow <= fast:
        raise ValueError(f"need 1 <= fast < slow, got fast={fast}, slow={slow}")


def _window_sums(values: np.ndarray, window: int, n: int) -> np.ndarray:
    """Sums of the last ``n`` full windows along axis 0, each summed oldest-first.

    One shifted slice at a time: deterministic and independent of the length of ``values`` (see
    module docstring), and still fully vectorized across symbols. The live wrapper asks for the
    last two windows only; the order of additions is the same, so the sums are bit-identical.
    """
    start = values.shape[0] - window - n + 1
    acc = values[start : start + n].copy()
    for k in range(1, window):
        acc += values[start + k : start + k + n]
    return acc


def _sma(values: np.ndarray, window: int) -> np.ndarray:
    """Simple moving average along axis 0; NaN until ``window`` rows exist or if any is NaN."""
    rows = values.shape[0]
    out = np.full(values.shape, np.nan)
    if rows >= window:
        out[window - 1 :] = _window_sums(values, window, rows - window + 1) / window
    return out


def _crossings(fast_sma: np.ndarray, slow_sma: np.ndarray) -> np.ndarray:
    """+1/-1/0 per row (axis 0) from the two averages; the first row never signals."""
    diff = fast_sma - slow_sma
    with np.errstate(invalid="ignore"):
        diff[np.abs(diff) <= _REL_EPS * np.abs(slow_sma)] = 0.0  # NaN compares False: stays NaN
        prev = np.full(diff.shape, np.nan)
        prev[1:] = diff[:-1]
        # NaN on either row makes every comparison False: no signal without both averages.
        up = (diff > 0) & (prev <= 0)
        down = (diff < 0) & (prev >= 0)
    return up.astype(np.int8) - down.astype(np.int8)


def sma_crossover(closes: pd.DataFrame, fast: int, slow: int) -> pd.DataFrame:
    """+1 where SMA(fast) crosses above SMA(slow) at that row, -1 where it crosses below, else 0.

    ``closes`` is wide (rows ascending in time, one column per symbol). A crossing needs both
    averages defined on this row and the previous one; NaN/inf anywhere in a window gives 0.
    """
    _check_windows(fast, slow)
    values = closes.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    values[~np.isfinite(values)] = np.nan  # inf would make inf - inf = NaN averages anyway
    out = _crossings(_sma(values, fast), _sma(values, slow))
    return pd.DataFrame(out, index=closes.index, columns=closes.columns)


# ---------------------------------------------------------------------------------------------
# Intent ids and position logic
# ---------------------------------------------------------------------------------------------


def _ts_token(ts: datetime) -> str:
    """Compact UTC timestamp; seconds/microseconds only when present (minute bars stay short)."""
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)  # naive = UTC
    if ts.microsecond:
        return ts.strftime("%Y%m%dT%H%M%S%fZ")
    if ts.second:
        return ts.strftime("%Y%m%dT%H%M%SZ")
    return ts.strftime("%Y%m%dT%H%MZ")


def intent_id(strategy: str, symbol: str, bar_ts: datetime, side: Side, seq: int = 0) -> str:
    """Client order id derived from the intent only (DESIGN §5 step 1).

    ``sma-AAPL-20261120T1431Z-B0``: the same bar re-processed after a crash yields the same id, so
    the OMS recognises the duplicate. Raises ValueError rather than silently rewriting an
    unusable symbol: a rewrite could make two different intents share one id.
    """
    if seq < 0:
        raise ValueError(f"seq must be >= 0, got {seq}")
    side_code = "B" if Side(side) is Side.BUY else "S"
    cid = f"{strategy}-{symbol}-{_ts_token(bar_ts)}-{side_code}{seq}"
    if len(cid) > MAX_ID_LEN or not _ID_OK.match(cid):
        raise ValueError(
            f"intent id {cid!r} is not a valid client order id (<= {MAX_ID_LEN} chars of [A-Za-z0-9._-])"
        )
    return cid


def target_orders(
    signal_row: Mapping[str, int], positions: Mapping[str, int], qty: int, allow_short: bool
) -> dict[str, tuple[Side, int]]:
    """Orders that move each signalled symbol to its target position.

    +1 targets ``+qty`` (buying back any short on the way); -1 targets flat when long-only (only
    a long is sold; nothing is shorted) or ``-qty`` when shorting is allowed; 0 does nothing.
    """
    if qty < 1:
        raise ValueError(f"qty must be >= 1, got {qty}")
    orders: dict[str, tuple[Side, int]] = {}
    for symbol, sig in signal_row.items():
        pos = int(positions.get(symbol, 0))
        if sig > 0:
            if pos < qty:
                orders[symbol] = (Side.BUY, qty - pos)
        elif sig < 0:
            target = -qty if allow_short else 0
            if pos > target:
                orders[symbol] = (Side.SELL, pos - target)
    return orders


def _reason(sig: int, settings: StrategySettings) -> str:
    kind = "golden cross" if sig > 0 else "death cross"
    return f"sma {settings.fast}/{settings.slow} {kind}"


def make_signal(
    settings: StrategySettings, symbol: str, ts: datetime, sig: int, side: Side, qty: int, close: float
) -> Signal:
    return Signal(
        intent_id=intent_id(STRATEGY, symbol, ts, side),
        strategy=STRATEGY,
        symbol=symbol,
        side=side,
        qty=qty,
        bar_ts=ts,
        ref_price=float(close),
        reason=_reason(sig, settings),
    )


# ---------------------------------------------------------------------------------------------
# On the plug-in API (strategies/base.py)
# ---------------------------------------------------------------------------------------------


class SmaCross(Strategy):
    """SMA crossover as targets: a golden cross targets ``+qty``, a death cross flat (or ``-qty``
    with ``allow_short``), every other bar NaN (keep what is held) -- today's rule, same numbers.

    Each symbol's own k-th bar lines up with the others' (module docstring), so the averages and
    crossings are those of ``sma_crossover``, bit for bit, in the backtest and live.
    """

    name = STRATEGY

    def __init__(self, fast: int = 5, slow: int = 20, qty: int = 10, allow_short: bool = False) -> None:
        super().__init__()
        _check_windows(fast, slow)
        if qty < 1:
            raise ValueError(f"qty must be >= 1, got {qty}")
        self.fast, self.slow, self.qty, self.allow_short = fast, slow, qty, allow_short
        self.warmup = slow + 1  # the slow average on the newest row and the one before

    def targets(self, bars: pd.DataFrame) -> pd.DataFrame:
        (closes,), _, k, col = wide(bars, ("close",))
        closes[~np.isfinite(closes)] = np.nan  # as sma_crossover does
        sig = _crossings(_sma(closes, self.fast), _sma(closes, self.slow))
        return self._frame(bars["ts"].array, bars["symbol"].to_numpy(), sig[k, col])

    def latest(self, bars: pd.DataFrame) -> pd.DataFrame:
        """Only the newest crossing per symbol, in numpy: the last ``slow + 1`` closes, counted from the end."""
        codes, names = pd.factorize(bars["symbol"].to_numpy(dtype=object), sort=True)
        order = np.argsort(codes, kind="stable")  # each symbol's rows, in time order
        counts = np.bincount(codes, minlength=len(names))
        ends = np.cumsum(counts)
        back = np.repeat(ends, counts) - 1 - np.arange(len(order))  # 0 = the symbol's newest row
        keep = back <= self.slow
        values = np.full((self.slow + 1, len(names)), np.nan)
        values[self.slow - back[keep], codes[order][keep]] = bars["close"].to_numpy(dtype=np.float64)[order][keep]
        sig = self._newest_crossings(values)
        return self._frame(bars["ts"].array[order[ends - 1]], np.asarray(names, dtype=object), sig)

    def window_signals(self, closes: np.ndarray) -> np.ndarray:
        """``latest``'s crossing per symbol straight from the live windows (symbols x ``slow + 1``
        closes, newest last, NaN where not yet filled), without a frame. Internal fast path of
        ``strategies/live.py``, used only while ``latest`` is this one."""
        return self._newest_crossings(closes.T.copy())  # time-major, contiguous: fast row slices

    def cross_target(self, golden: bool) -> tuple[float, str]:
        """The target and reason of a golden (else death) cross: one wording for frames and the fast path."""
        target = float(self.qty) if golden else float(-self.qty if self.allow_short else 0)
        return target, f"sma {self.fast}/{self.slow} {'golden' if golden else 'death'} cross"

    def _newest_crossings(self, values: np.ndarray) -> np.ndarray:
        """The crossing on the newest row of time-major ``values`` (``slow + 1`` rows; cleaned in place)."""
        values[~np.isfinite(values)] = np.nan
        fast, slow = self.fast, self.slow
        return _crossings(_window_sums(values, fast, 2) / fast, _window_sums(values, slow, 2) / slow)[-1]

    def _frame(self, ts: Any, symbols: np.ndarray, sig: np.ndarray) -> pd.DataFrame:
        (up, up_reason), (down, down_reason) = self.cross_target(True), self.cross_target(False)
        target = np.where(sig > 0, up, np.where(sig < 0, down, np.nan))
        reason = np.full(len(sig), "", dtype=object)
        reason[sig > 0] = up_reason
        reason[sig < 0] = down_reason
        return pd.DataFrame({"ts": ts, "symbol": symbols, "target": target, "reason": reason})


# ---------------------------------------------------------------------------------------------
# Live wrapper (the strategy actor's state)
# ---------------------------------------------------------------------------------------------


class SmaCrossover:
    """Rolling per-symbol windows of the last ``slow + 1`` closes, fed one tick at a time.

    The windows are one numpy array (symbols x window), shifted in place for the symbols that got
    a bar. A tick computes only what ``sma_crossover`` would give on the window's last row: both
    averages on the last two rows, with the same additions in the same order, in plain numpy (no
    DataFrame per tick, which cost more than the arithmetic).
    """

    def __init__(self, settings: StrategySettings, symbols: Sequence[str]) -> None:
        _check_windows(settings.fast, settings.slow)
        if settings.qty < 1:
            raise ValueError(f"strategy qty must be >= 1, got {settings.qty}")
        self.settings = settings
        self.symbols: tuple[str, ...] = tuple(dict.fromkeys(symbols))  # dedupe, keep order
        for symbol in self.symbols:  # fail at start, not on the first crossing
            intent_id(STRATEGY, symbol, datetime(2000, 1, 1, tzinfo=UTC), Side.BUY)
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self.window = settings.slow + 1  # slow SMA on this row and the previous one
        self._buf = np.full((len(self.symbols), self.window), np.nan)
        self._infs = 0  # +-inf closes now in the windows: sma_crossover reads them as NaN
        self._last_ts: list[datetime | None] = [None] * len(self.symbols)
        self.ignored_unknown = 0  # bars for symbols we were not configured with
        self.ignored_old = 0  # bars not newer than the last one seen for their symbol

    # -- state ---------------------------------------------------------------------------------

    def last_ts(self, symbol: str) -> datetime | None:
        return self._last_ts[self._index[symbol]]

    def closes(self, symbol: str) -> np.ndarray:
        """The symbol's window, oldest first (NaN where not yet filled)."""
        return self._buf[self._index[symbol]].copy()

    # -- feeding -------------------------------------------------------------------------------

    def warm_up(self, bars: Iterable[Bar]) -> None:
        """Fill the windows from history (any order); emits nothing."""
        for group in _by_ts(bars):
            self._append(group)

    def on_bars(self, bars: Sequence[Bar], positions: Mapping[str, int]) -> list[Signal]:
        """Signals for the new bars. Normally one bar per symbol; bars of several ticks are
        processed tick by tick, each seeing the positions the earlier ticks' signals target."""
        projected = dict(positions)  # so two ticks in one batch don't both buy
        signals: list[Signal] = []
        for group in _by_ts(bars):
            rows, closes = self._append(group)
            if rows.size == 0:
                continue
            sigs = self._signals(rows)
            hit = np.flatnonzero(sigs)
            if hit.size == 0:
                continue
            ts = group[0].ts
            row = {self.symbols[rows[k]]: int(sigs[k]) for k in hit}
            orders = target_orders(row, projected, self.settings.qty, self.settings.allow_short)
            for k in hit:
                symbol = self.symbols[rows[k]]
                if symbol not in orders:
                    continue
                side, qty = orders[symbol]
                signals.append(make_signal(self.settings, symbol, ts, int(sigs[k]), side, qty, closes[k]))
                projected[symbol] = projected.get(symbol, 0) + side.sign * qty
        return signals

    def _signals(self, rows: np.ndarray) -> np.ndarray:
        """``sma_crossover``'s last row for the windows of ``rows`` (int8, one per row)."""
        # Most ticks bring a bar for (nearly) every symbol: computing all rows then beats a gather.
        every = 2 * rows.size >= len(self.symbols)
        windows = self._buf if every else self._buf[rows]
        # Time-major like sma_crossover's frame; a contiguous copy makes the row slices below fast.
        values = windows.T.copy()
        if self._infs:
            values[np.isinf(values)] = np.nan
        fast, slow = self.settings.fast, self.settings.slow
        last = _crossings(_window_sums(values, fast, 2) / fast, _window_sums(values, slow, 2) / slow)[-1]
        return last[rows] if every else last

    def _append(self, group: list[Bar]) -> tuple[np.ndarray, np.ndarray]:
        """Shift the new closes into the windows; returns (row indices, closes) appended."""
        rows: list[int] = []
        closes: list[float] = []
        index, last_ts = self._index, self._last_ts  # locals: this loop runs once per bar
        for bar in group:
            i = index.get(bar.symbol)
            if i is None:
                self.ignored_unknown += 1
                continue
            prev = last_ts[i]
            if prev is not None and bar.ts <= prev:  # replayed history or duplicate: count once
                self.ignored_old += 1
                continue
            last_ts[i] = bar.ts
            rows.append(i)
            closes.append(bar.close)
        idx = np.fromiter(rows, dtype=np.intp, count=len(rows))
        vals = np.fromiter(closes, dtype=np.float64, count=len(closes))
        if idx.size:
            self._infs += int(np.isinf(vals).sum()) - int(np.isinf(self._buf[idx, 0]).sum())
            self._buf[idx, :-1] = self._buf[idx, 1:]
            self._buf[idx, -1] = vals
        return idx, vals


def _by_ts(bars: Iterable[Bar]) -> list[list[Bar]]:
    """Bars grouped by ts, ascending (one group per tick; usually exactly one)."""
    batch = list(bars)
    if not batch:
        return []
    first = batch[0].ts
    if all(bar.ts == first for bar in batch):  # the usual tick: one group, no dict or sort
        return [batch]
    groups: dict[datetime, list[Bar]] = {}
    for bar in batch:
        groups.setdefault(bar.ts, []).append(bar)
    return [groups[ts] for ts in sorted(groups)]
