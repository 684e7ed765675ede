"""The live side of the plug-in API (strategies/live.py): the same intents as the backtest, tick by
tick; resting orders amended or cancelled; no double orders; bad targets left for risk to refuse."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from steadyhand.backtest.engine import prepare_bars, run_backtest
from steadyhand.domain import Bar, OrderType, Side, Signal
from steadyhand.risk.checks import order_spec, signal_problem
from steadyhand.strategies.base import Strategy
from steadyhand.strategies.live import LiveStrategy
from steadyhand.strategies.shipped import BollingerReversion
from steadyhand.strategies.sma import SmaCross

DATA = Path(__file__).parent / "data"
T0 = datetime(2026, 11, 18, 14, 30, tzinfo=UTC)


def ticks(frame: pd.DataFrame) -> list[list[Bar]]:
    out = []
    for _, group in frame.groupby("ts", sort=True):
        out.append([Bar(r.symbol, r.ts.to_pydatetime(), r.open, r.high, r.low, r.close, int(r.volume))
                    for r in group.itertuples()])
    return out


@pytest.mark.parametrize("case", ["default", "short_3_12"])
def test_sma_tick_by_tick_makes_the_backtests_intents(case: str) -> None:
    settings = json.loads((DATA / "sma_parity_expected.json").read_text())[case]["settings"]
    frame = prepare_bars(pd.read_csv(DATA / "sma_parity.csv"))
    strategy = SmaCross(**settings)
    expected = [s.intent_id for s in run_backtest(frame, strategy).signals]
    live = LiveStrategy(SmaCross(**settings), sorted(frame["symbol"].unique()))
    positions: dict[str, int] = {}
    got: list[str] = []
    for batch in ticks(frame):
        result = live.on_bars(batch, positions)
        for s in result.signals:  # every intent fills before the next bar, as the backtest assumes
            positions[s.symbol] = positions.get(s.symbol, 0) + s.side.sign * s.qty
            got.append(s.intent_id)
        live.on_open_orders({})
    assert got == expected and len(got) > 50


class Constant(Strategy):
    name = "const"

    def __init__(self, target: float = 5.0) -> None:
        super().__init__()
        self.target = target

    def targets(self, bars: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"ts": bars["ts"], "symbol": bars["symbol"], "target": self.target})


def bar(i: int, close: float = 10.0, symbol: str = "A") -> Bar:
    return Bar(symbol, T0 + timedelta(minutes=i), close, close + 0.1, close - 0.1, close, 100)


def test_a_repeated_target_does_not_order_twice() -> None:
    live = LiveStrategy(Constant(), ["A"])
    first = live.on_bars([bar(0)], {})
    assert [(s.side, s.qty, s.intent_id) for s in first.signals] == [(Side.BUY, 5, "const-A-20261118T1430Z-B0")]
    assert live.on_bars([bar(1)], {}).signals == []  # sent, not yet reported
    live.on_open_orders({"A": 5})
    assert live.on_bars([bar(2)], {}).signals == []  # working at the broker
    live.on_open_orders({})
    assert live.on_bars([bar(3)], {"A": 5}).signals == []  # filled
    assert live.on_bars([bar(3)], {}).signals == [], "a bar seen before is ignored"
    live.on_open_orders({})
    again = live.on_bars([bar(4)], {"A": 2})  # the position moved away: the target is recomputed
    assert [(s.side, s.qty) for s in again.signals] == [(Side.BUY, 3)]


def test_resting_limit_orders_are_amended_then_cancelled() -> None:
    boll = BollingerReversion(window=5, k=1.0, qty=10)
    live = LiveStrategy(boll, ["A"])
    closes = [10.0, 10.2, 9.9, 10.1, 9.8, 9.7, 9.6, 10.6]
    signals: list[Signal] = []
    amends = []
    for i, c in enumerate(closes):
        result = live.on_bars([bar(i, c)], {})
        signals += result.signals
        amends += result.amends
        pending = {s.symbol: s.side.sign * s.qty for s in signals}
        live.on_open_orders(pending if live.working else {})
    first = signals[0]
    assert first.order_type is OrderType.LIMIT and first.side is Side.BUY and first.qty == 10
    assert first.limit_price is not None and first.limit_price < 10.0  # the lower band, under the mean
    assert len(signals) == 1, "later bars amend the resting order instead of adding orders"
    moves = [a for a in amends if a.qty]
    assert moves and all(a.client_order_id == first.intent_id and a.qty == 10 for a in moves)
    assert len({a.limit_price for a in moves}) == len(moves)  # the band moved each bar
    assert amends[-1].qty == 0 and "cancel" in amends[-1].reason  # above the middle band, flat: cancel


def test_bad_targets_reach_risk_and_are_refused_with_a_reason() -> None:
    live = LiveStrategy(Constant(2.5), ["A"])
    signal = live.on_bars([bar(0)], {}).signals[0]
    assert signal.qty == 2.5
    assert "not a whole number" in (signal_problem(signal) or "")
    assert order_spec(signal, whole=False).qty == 2
    nan_price = Signal("x-A", "x", "A", Side.BUY, 1, T0, 10.0, order_type=OrderType.LIMIT, limit_price=math.nan)
    assert "needs a positive limit_price" in (signal_problem(nan_price) or "")
    ok = Signal("x-A", "x", "A", Side.BUY, 3, T0, 10.0, order_type=OrderType.STOP, stop_price=10.5)
    assert signal_problem(ok) is None and order_spec(ok).stop_price is not None


def test_the_window_frame_is_the_contracts_long_format() -> None:
    live = LiveStrategy(SmaCross(2, 3), ["B", "A"])
    for i in range(6):
        live.on_bars([bar(i, 10 + i, "A")] + ([bar(i, 20 + i, "B")] if i % 2 else []), {})
    frame = live.frame()
    assert list(frame.columns) == ["ts", "symbol", "open", "high", "low", "close", "volume"]
    assert frame.groupby("symbol").size().to_dict() == {"A": 4, "B": 3}  # warmup 4; B had 3 bars
    assert frame["ts"].is_monotonic_increasing
    assert frame.sort_values(["ts", "symbol"]).index.tolist() == frame.index.tolist()
    assert np.array_equal(frame[frame.symbol == "A"]["close"].to_numpy(), [12.0, 13.0, 14.0, 15.0])


def test_a_fill_seen_before_the_oms_report_does_not_double_the_next_order() -> None:
    """The whipsaw lock-step found: bought, filled (the portfolio's snapshot arrives first), then the
    target flips while the OMS's "nothing pending" report is still on its way through risk."""
    strategy = Constant(5)
    live = LiveStrategy(strategy, ["A"])
    assert [s.qty for s in live.on_bars([bar(0)], {}).signals] == [5]
    live.on_open_orders({"A": 5})  # working at the broker
    live.on_positions_moved({"A"})  # the fill, seen in a snapshot before the OMS's next report
    strategy.target = 0.0
    again = live.on_bars([bar(1)], {"A": 5})
    assert [(s.side, s.qty) for s in again.signals] == [(Side.SELL, 5)]


def test_no_new_order_until_the_cancel_is_reported() -> None:
    boll = BollingerReversion(window=5, k=1.0, qty=10)
    live = LiveStrategy(boll, ["A"])
    closes = [10.0, 10.2, 9.9, 10.1, 9.8, 9.7, 10.6, 10.7, 9.0]
    pending: dict[str, int] = {}
    placed = []
    for i, c in enumerate(closes[:-1]):
        result = live.on_bars([bar(i, c)], {"A": 0})
        placed += result.signals
        for s in result.signals:
            pending[s.symbol] = s.side.sign * s.qty
        live.on_open_orders(pending)  # the cancel is sent but not yet done: still pending
    assert live.cancelling == {"A"} and len(placed) == 1
    assert live.on_bars([bar(len(closes) - 1, closes[-1])], {"A": 0}).signals == []
    live.on_open_orders({})  # the cancel went through
    assert live.cancelling == set()


class _FramedSma(SmaCross):
    """The shipped SMA forced through the documented path (its own ``latest``, so no fast path)."""

    def latest(self, bars: pd.DataFrame) -> pd.DataFrame:
        return super().latest(bars)


@pytest.mark.parametrize("allow_short", [False, True])
def test_the_shipped_smas_fast_path_makes_the_framed_paths_signals(allow_short: bool) -> None:
    """The live SMA reads crossings off its windows (no frame per tick): on a random walk with
    missing bars it must make exactly the signals the plug-in path makes, tick for tick."""
    symbols = [f"S{i:02d}" for i in range(12)]
    rng = np.random.default_rng(7)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, (260, len(symbols))), axis=0)).round(2)
    fast, framed = (LiveStrategy(cls(3, 8, 5, allow_short), symbols, name="sma") for cls in (SmaCross, _FramedSma))
    assert fast._sma is not None and framed._sma is None  # the paths under comparison
    made = 0
    for k in range(len(closes)):
        ts = T0 + timedelta(minutes=k)
        tick = [Bar(s, ts, p, p, p, p, 100) for s, p in zip(symbols, closes[k].tolist(), strict=True)
                if rng.random() > 0.1]  # a tenth of the bars missing
        got, want = fast.on_bars(tick, {}), framed.on_bars(tick, {})
        assert [(s.intent_id, s.side, s.qty) for s in got.signals] == \
               [(s.intent_id, s.side, s.qty) for s in want.signals], k
        made += len(got.signals)
        for live in (fast, framed):
            live.on_open_orders({})
    assert made > 20  # the walk crosses often enough for the comparison to mean something
