"""The strategy plug-in API: one class, the same calls in the backtest and in paper trading.

The contract (issue 13; README "Write your own strategy"):

- Subclass :class:`Strategy`; its constructor takes no required arguments. Parameters from
  ``[strategy.params]`` are passed to the constructor as keyword arguments (checked against its
  signature and annotations before anything starts: ``strategies/loader.py``).
- ``warmup``: bars of history needed per symbol. Live, the trailing window holds at least that many.
- ``targets(bars)``: ``bars`` is long format (``ts, symbol, open, high, low, close, volume``, sorted
  by ``ts`` then ``symbol``); the result has rows ``ts, symbol, target``: the desired signed
  position in shares after that bar. NaN: no opinion, keep what is held.
- Optional columns ask for other orders than market ones: ``order_type`` ("market", "limit",
  "stop", "stop_limit"), ``limit_price``, ``stop_price``, ``time_in_force`` ("day", "gtc") and a
  ``reason`` text journaled with the intent.
- Live, ``targets`` is called every tick on the trailing window and the newest row per symbol is
  acted on; the backtest calls it once on the whole history and acts on each target at the next
  bar's open. ``latest(bars)`` is the optional incremental fast path (default: ``targets`` and keep
  the newest row per symbol); a strategy that overrides it must give the same rows (a test holds
  the shipped ones to that).

Why targets and not orders: a target is recomputed from the bars, not remembered, so a strategy
restarted after a crash asks for the same position and the order is the difference from what is
held; nothing about "what I already did" lives in the strategy.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np
import pandas as pd

BAR_COLUMNS = ("ts", "symbol", "open", "high", "low", "close", "volume")
TARGET_COLUMNS = ("ts", "symbol", "target")
ORDER_COLUMNS = ("order_type", "limit_price", "stop_price", "time_in_force", "reason")
ORDER_TYPES = ("market", "limit", "stop", "stop_limit")
TIME_IN_FORCE = ("day", "gtc")
_NAME_OK = re.compile(r"^[A-Za-z0-9_.]{1,16}$")  # part of every client order id (<= 48 chars in all)


class Strategy:
    """Base class of every strategy; see the module docstring for the contract."""

    #: The strategy's id: the first part of its client order ids (``sma-AAPL-20261120T1431Z-B0``).
    #: Default: the class name in lower case, cut to 16 characters.
    name: ClassVar[str] = ""
    #: Bars of history needed per symbol before ``targets`` can judge the newest one.
    warmup: int = 1

    def __init__(self) -> None:
        """No required arguments (the contract); subclasses take their parameters as keywords."""

    @classmethod
    def strategy_id(cls) -> str:
        """``name``, or the class name in lower case; raises ValueError when unusable in an order id."""
        name = cls.__dict__.get("name") or re.sub(r"[^a-z0-9]", "", cls.__name__.lower())[:16]
        if not _NAME_OK.match(name):
            raise ValueError(f"strategy name {name!r} must be 1-16 characters of [A-Za-z0-9_.]")
        return name

    def targets(self, bars: pd.DataFrame) -> pd.DataFrame:
        """Desired signed positions after each bar: rows ``ts, symbol, target`` (+ optional order columns)."""
        raise NotImplementedError(f"{type(self).__name__} must implement targets(bars)")

    def latest(self, bars: pd.DataFrame) -> pd.DataFrame:
        """The newest target row per symbol of ``targets(bars)`` (override for a faster path)."""
        return newest_rows(self.targets(bars), bars)


def newest_rows(targets: pd.DataFrame, bars: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``targets`` at each symbol's newest bar in ``bars``."""
    if targets.empty or bars.empty:
        return targets.iloc[0:0]
    ts = pd.to_datetime(targets["ts"], utc=True).dt.as_unit("ns").array.asi8  # int64: no Timestamp per row
    newest = pd.Series(pd.to_datetime(bars["ts"], utc=True).dt.as_unit("ns").array.asi8,
                       index=bars["symbol"].to_numpy()).groupby(level=0).max()
    wanted = newest.reindex(targets["symbol"].to_numpy()).to_numpy()
    return targets.loc[ts == wanted].reset_index(drop=True)


def wide(bars: pd.DataFrame, columns: tuple[str, ...]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """``columns`` of long bars as (k-th bar of its symbol) x symbol arrays, for vectorized strategies.

    Each symbol's own bars line up by their count (a symbol missing a minute is not NaN-padded).
    Returns the arrays, the symbol names (sorted), and each input row's (k, symbol index), so a
    result can be read back in the input's row order: ``result[k, col]``.
    """
    codes, names = pd.factorize(bars["symbol"].to_numpy(dtype=object), sort=True)
    order = np.argsort(codes, kind="stable")  # each symbol's rows, in time order
    counts = np.bincount(codes, minlength=len(names))
    starts = np.cumsum(counts) - counts
    k_sorted = np.arange(len(order)) - np.repeat(starts, counts)
    k = np.empty(len(order), dtype=np.int64)
    k[order] = k_sorted
    rows = int(counts.max()) if len(counts) else 0
    out = []
    for column in columns:
        grid = np.full((rows, len(names)), np.nan)
        grid[k, codes] = bars[column].to_numpy(dtype=np.float64)
        out.append(grid)
    return out, np.asarray(names, dtype=object), k, codes


class TargetError(ValueError):
    """A strategy returned something that is not a table of targets; the message says what."""


def check_targets(frame: Any, strategy: str) -> pd.DataFrame:
    """``frame`` as a clean targets table (float targets, order columns filled in), or TargetError.

    Values that risk must refuse (fractional shares, absurd sizes, bad prices) are left for risk:
    it journals why. Only a result that cannot be read as targets at all is an error here.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TargetError(f"{strategy}: targets() must return a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in TARGET_COLUMNS if c not in frame.columns]
    if missing:
        raise TargetError(f"{strategy}: targets() result lacks column(s) {', '.join(missing)}")
    out = frame.reset_index(drop=True).copy()
    try:
        out["target"] = pd.to_numeric(out["target"], errors="raise").astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise TargetError(f"{strategy}: target column is not numeric ({exc})") from None
    if not isinstance(out["ts"].dtype, pd.DatetimeTZDtype) or str(out["ts"].dt.tz) != "UTC":
        out["ts"] = pd.to_datetime(out["ts"], utc=True)
    out["ts"] = out["ts"].dt.as_unit("ns")  # the bars' unit, so rows match them exactly
    _choice(out, "order_type", "market", ORDER_TYPES, strategy)
    for col in ("limit_price", "stop_price"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(np.float64) if col in out else np.nan
    _choice(out, "time_in_force", "day", TIME_IN_FORCE, strategy)
    out["reason"] = out["reason"].where(out["reason"].notna(), "") if "reason" in out else ""
    return out


def _choice(out: pd.DataFrame, col: str, default: str, allowed: tuple[str, ...], strategy: str) -> None:
    """Fill ``col`` with ``default`` where missing; TargetError naming a value not in ``allowed``."""
    if col not in out:
        out[col] = default
        return
    out[col] = out[col].where(out[col].notna(), default)
    bad = sorted(str(v) for v in set(out[col].unique()) - set(allowed))
    if bad:
        raise TargetError(f"{strategy}: {col} {bad[0]!r} is not one of {', '.join(allowed)}")
