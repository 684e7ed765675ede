"""The shipped strategies besides the SMA crossover, each a plain :class:`Strategy` on the API.

- :class:`BollingerReversion`: rests limit orders at the bands and amends them every bar.
- :class:`Breakout`: Donchian channel breakout with stop orders.
- :class:`ExternalTargets`: target positions from a file (CSV/Parquet ``ts, symbol, target``) or
  from a user function: the path from research, or a trained model, to paper trading.

The first two are *stateless* in the bars: a target depends on the trailing ``warmup`` bars only,
never on a fill the strategy assumes happened. The order is ``target - position`` with what is
actually held, so a fill that did not happen (or happened twice) is corrected on the next bar, and
live windows of ``warmup`` bars give the same rows as the backtest's whole history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from steadyhand.strategies.base import Strategy, TargetError, wide
from steadyhand.strategies.sma import _window_sums


def _rolling(values: np.ndarray, window: int, op: np.ufunc) -> np.ndarray:
    """``op`` (np.maximum / np.minimum) over each trailing window along axis 0; NaN until full or if any NaN."""
    out = np.full(values.shape, np.nan)
    n = values.shape[0] - window + 1
    if n > 0:
        acc = values[0:n].copy()
        for j in range(1, window):
            op(acc, values[j : j + n], out=acc)  # NaN propagates, as pandas' min_periods=window
        out[window - 1 :] = acc
    return out


def _mean_std(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Rolling mean and population std along axis 0, each window summed oldest-first in a fixed order.

    Not pandas' running sums: a bar's bands must not depend on how much history came before it, so
    a live window of ``warmup`` bars and the backtest's whole history give identical prices.
    """
    mean = np.full(values.shape, np.nan)
    sd = np.full(values.shape, np.nan)
    n = values.shape[0] - window + 1
    if n <= 0:
        return mean, sd
    m = _window_sums(values, window, n) / window
    acc = (values[0:n] - m) ** 2
    for j in range(1, window):
        acc += (values[j : j + n] - m) ** 2
    mean[window - 1 :], sd[window - 1 :] = m, np.sqrt(acc / window)
    return mean, sd


class BollingerReversion(Strategy):
    """Mean reversion on Bollinger bands with resting limit orders.

    After each bar: below the middle band, a buy limit rests at the lower band (target ``+qty``);
    above it, a take-profit sell limit rests at the upper band (target 0, or ``-qty`` with
    ``allow_short``). The bands move every bar, so the working order is amended every bar.
    """

    name = "boll"

    def __init__(self, window: int = 20, k: float = 2.0, qty: int = 10, allow_short: bool = False,
                 time_in_force: Literal["day", "gtc"] = "day") -> None:
        super().__init__()
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        if k <= 0 or qty < 1:
            raise ValueError(f"need k > 0 and qty >= 1, got k={k}, qty={qty}")
        self.window, self.k, self.qty, self.allow_short, self.tif = window, k, qty, allow_short, time_in_force
        self.warmup = window

    def targets(self, bars: pd.DataFrame) -> pd.DataFrame:
        (close,), _, k, col = wide(bars, ("close",))
        mid, sd = _mean_std(close, self.window)
        lower, upper = mid - self.k * sd, mid + self.k * sd
        below = close <= mid
        short = -self.qty if self.allow_short else 0
        target = np.where(np.isnan(mid), np.nan, np.where(below, float(self.qty), float(short)))
        price = np.where(below, lower, upper).round(2)
        ok = np.isfinite(price) & (price > 0)
        target = np.where(ok, target, np.nan)
        return pd.DataFrame({"ts": bars["ts"].array, "symbol": bars["symbol"].to_numpy(), "target": target[k, col],
                             "order_type": "limit", "limit_price": price[k, col], "time_in_force": self.tif,
                             "reason": np.where(below[k, col], "bollinger: rest at lower band",
                                                "bollinger: take profit at upper band")})


class Breakout(Strategy):
    """Donchian breakout with stop orders.

    After each bar: in the upper half of the last ``window`` bars' range, a buy stop rests at the
    range's high (target ``+qty``); in the lower half, a protective sell stop rests at its low
    (target 0). Both move with the channel.
    """

    name = "brk"

    def __init__(self, window: int = 20, qty: int = 10, time_in_force: Literal["day", "gtc"] = "day") -> None:
        super().__init__()
        if window < 2 or qty < 1:
            raise ValueError(f"need window >= 2 and qty >= 1, got window={window}, qty={qty}")
        self.window, self.qty, self.tif = window, qty, time_in_force
        self.warmup = window

    def targets(self, bars: pd.DataFrame) -> pd.DataFrame:
        (high, low, close), _, k, col = wide(bars, ("high", "low", "close"))
        hh, ll = _rolling(high, self.window, np.maximum), _rolling(low, self.window, np.minimum)
        upper_half = close >= (hh + ll) / 2
        target = np.where(np.isnan(hh) | np.isnan(ll), np.nan, np.where(upper_half, float(self.qty), 0.0))
        stop = np.where(upper_half, hh, ll).round(2)
        target = np.where(np.isfinite(stop) & (stop > 0), target, np.nan)
        return pd.DataFrame({"ts": bars["ts"].array, "symbol": bars["symbol"].to_numpy(), "target": target[k, col],
                             "order_type": "stop", "stop_price": stop[k, col], "time_in_force": self.tif,
                             "reason": np.where(upper_half[k, col], "breakout: buy stop at channel high",
                                                "breakout: protective stop at channel low")})


class ExternalTargets(Strategy):
    """Targets from a file (``path``: CSV or Parquet with ``ts, symbol, target`` and optionally the
    order columns) or from a user function (``function = "file.py:name"`` or ``"pkg.mod:name"``,
    called as ``name(bars) -> DataFrame`` like ``targets``). A file's row counts at the bar of
    that symbol with exactly that ``ts``; rows for other times are never acted on."""

    name = "ext"

    def __init__(self, path: str = "", function: str = "") -> None:
        super().__init__()
        if bool(path) == bool(function):
            raise ValueError("give exactly one of path (a targets file) or function (\"file.py:name\")")
        self.path, self.function = path, function
        self._table = _read_targets(Path(path)) if path else None
        self._fn = _resolve_function(function) if function else None

    def targets(self, bars: pd.DataFrame) -> pd.DataFrame:
        if self._fn is not None:
            return self._fn(bars)
        assert self._table is not None
        keys = bars.loc[:, ["ts", "symbol"]]
        return keys.merge(self._table, on=["ts", "symbol"], how="inner", sort=False)


def _read_targets(path: Path) -> pd.DataFrame:
    """The targets file, ``ts`` as UTC (naive means UTC); ValueError naming the file."""
    if not path.is_file():
        raise ValueError(f"no such targets file {path}")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, encoding="utf-8")
    except ImportError as exc:
        raise ValueError(f"{path}: reading Parquet needs pyarrow ({exc})") from None
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("ts", "symbol", "target") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    try:
        table["ts"] = pd.to_datetime(table["ts"], utc=True).dt.as_unit("ns")
        table["target"] = pd.to_numeric(table["target"], errors="raise")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    return table


def _resolve_function(spec: str) -> Any:
    from steadyhand.strategies import loader

    where, sep, attr = spec.rpartition(":")
    if not sep:
        raise ValueError(f"function {spec!r}: expected \"file.py:name\" or \"package.module:name\"")
    module = loader.load_module(where, spec)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TargetError(f"function {spec!r}: {where} has no callable {attr!r}")
    return fn
