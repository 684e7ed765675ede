"""``steadyhand backtest --check-lookahead``: does any target change when later bars are added?

``targets`` is recomputed on histories cut at a series of times; every row at or before the cut
is compared with the same row of the whole-history call: the target and the order prices (a limit
price that moves when the future is added is look-ahead too). Every row is compared, not only
those that traded. With ``cutoffs = 0`` every distinct bar time is a cut, so each row is judged as
the newest bar of its own history, exactly as live; otherwise that many evenly spaced cuts (a row
between two cuts is judged with a few later bars present, which still shows most leaks).

The CLI exits 1 when anything changed (a check that can fail a CI job), 0 when nothing did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from steadyhand.backtest.engine import prepare_bars
from steadyhand.strategies.base import Strategy, check_targets

COMPARED = ("target", "limit_price", "stop_price")


@dataclass(frozen=True)
class LookaheadReport:
    cutoffs: int
    rows_checked: int
    changed: tuple[dict, ...]  # ts, symbol, column, with_future, without_future, cut_at


def check_lookahead(bars: pd.DataFrame, strategy: Strategy, cutoffs: int = 0, limit: int = 1000) -> LookaheadReport:
    """Compare truncated-history targets with whole-history ones (see the module docstring)."""
    name = strategy.strategy_id()
    df = prepare_bars(bars)
    full = _keyed(check_targets(strategy.targets(df.copy()), name))
    times = np.unique(df["ts"].to_numpy())
    if cutoffs and cutoffs < len(times):
        times = times[np.linspace(0, len(times) - 1, cutoffs).round().astype(int)]
    seen: set[tuple] = set()
    changed: list[dict] = []
    checked = 0
    previous = None
    for cut in times:
        part = _keyed(check_targets(strategy.targets(df[df["ts"].to_numpy() <= cut].copy()), name))
        window = part if previous is None else part[part.index.get_level_values("ts") > previous]
        checked += len(window)  # each row is counted at the first cut that contains it
        previous = cut
        common = part.index.intersection(full.index)
        for column in COMPARED:
            a, b = part.loc[common, column].to_numpy(), full.loc[common, column].to_numpy()
            differ = ~((a == b) | (np.isnan(a) & np.isnan(b)))
            for (ts, symbol), x, y in zip(common[differ], a[differ], b[differ], strict=True):
                key = (ts, symbol, column)
                if key in seen or len(changed) >= limit:
                    continue
                seen.add(key)
                changed.append({"ts": ts.isoformat(), "symbol": symbol, "column": column,
                                "with_future": _num(y), "without_future": _num(x),
                                "cut_at": pd.Timestamp(cut).tz_localize("UTC").isoformat()
                                if pd.Timestamp(cut).tzinfo is None else pd.Timestamp(cut).isoformat()})
    return LookaheadReport(cutoffs=len(times), rows_checked=checked, changed=tuple(changed))


def _keyed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop_duplicates(["ts", "symbol"], keep="last").set_index(["ts", "symbol"]).loc[:, list(COMPARED)]


def _num(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
