"""A complete strategy on steadyhand's plug-in API (README "Write your own strategy").

Momentum: hold ``qty`` shares while the close is above its average of the last ``lookback`` closes,
be flat otherwise. Try it:

    steadyhand backtest --replay bars.csv --strategy examples/my_strategy.py:Momentum --check-lookahead
    steadyhand run --strategy examples/my_strategy.py:Momentum

or in the configuration file:

    [strategy]
    class = "examples/my_strategy.py:Momentum"
    [strategy.params]
    lookback = 30
    qty = 5
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from steadyhand import Strategy


class Momentum(Strategy):
    name = "mom"  # client order ids: mom-AAPL-20261120T1431Z-B0

    def __init__(self, lookback: int = 20, qty: int = 10) -> None:
        super().__init__()
        if lookback < 2 or qty < 1:
            raise ValueError("need lookback >= 2 and qty >= 1")
        self.lookback, self.qty = lookback, qty
        self.warmup = lookback  # bars per symbol needed to judge the newest one

    def targets(self, bars: pd.DataFrame) -> pd.DataFrame:
        # Each symbol's own series; a rolling window only looks back, so there is no look-ahead.
        average = bars.groupby("symbol", sort=False)["close"].transform(
            lambda s: s.rolling(self.lookback, min_periods=self.lookback).mean())
        target = np.where(average.isna(), np.nan, np.where(bars["close"] > average, self.qty, 0))
        return pd.DataFrame({"ts": bars["ts"], "symbol": bars["symbol"], "target": target})
