"""The backtest on the API: targets acted on at the next bar, the simple limit/stop fill model,
refused targets, and the look-ahead check."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from harness import steadyhand
from steadyhand.backtest.engine import run_backtest
from steadyhand.backtest.lookahead import check_lookahead
from steadyhand.domain import Side
from steadyhand.strategies.base import Strategy

T0 = datetime(2026, 11, 18, 14, 30, tzinfo=UTC)


def bars(rows: list[tuple[float, float, float, float]], start: datetime = T0) -> pd.DataFrame:
    """One symbol "A", one bar a minute: (open, high, low, close)."""
    return pd.DataFrame([{"ts": start + timedelta(minutes=i), "symbol": "A", "open": o, "high": h, "low": lo,
                          "close": c, "volume": 100} for i, (o, h, lo, c) in enumerate(rows)])


class Scripted(Strategy):
    """Targets given per bar index (None: NaN), with optional order columns."""

    name = "scr"

    def __init__(self, rows: dict[int, dict] | None = None) -> None:
        super().__init__()
        self.rows = rows or {}

    def targets(self, bars: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({"ts": bars["ts"], "symbol": bars["symbol"], "target": np.nan})
        for i, row in self.rows.items():
            for key, value in row.items():
                out.loc[i, key] = value
        return out


FLAT = [(10.0, 10.5, 9.5, 10.0)] * 3 + [(10.0, 10.2, 8.9, 9.5), (9.6, 11.5, 9.4, 11.0), (11.0, 11.2, 10.8, 11.0)]


def test_market_target_fills_at_the_next_open_and_nan_keeps_the_position() -> None:
    result = run_backtest(bars(FLAT), Scripted({1: {"target": 5}, 4: {"target": 2}}))
    assert [(t.ts, t.side, t.qty, t.price) for t in result.trades] == [
        (T0 + timedelta(minutes=2), Side.BUY, 5, 10.0), (T0 + timedelta(minutes=5), Side.SELL, 3, 11.0)]
    assert result.final_positions == {"A": 2}
    assert result.trades[0].intent_id == "scr-A-20261118T1431Z-B0"
    assert result.realized_pnl == pytest.approx(3 * (11.0 - 10.0))


def test_limit_rests_until_touched_and_fills_at_the_better_of_open_and_limit() -> None:
    result = run_backtest(bars(FLAT), Scripted({0: {"target": 5, "order_type": "limit", "limit_price": 9.0}}))
    assert [(t.ts, t.price) for t in result.trades] == [(T0 + timedelta(minutes=3), 9.0)]  # low 8.9 <= 9.0
    gap = run_backtest(bars(FLAT), Scripted({3: {"target": 5, "order_type": "limit", "limit_price": 9.8}}))
    assert [t.price for t in gap.trades] == [9.6]  # opened below the limit: filled at the open


def test_stop_triggers_at_the_stop_or_a_gap_open() -> None:
    result = run_backtest(bars(FLAT), Scripted({0: {"target": 5, "order_type": "stop", "stop_price": 11.0}}))
    assert [(t.ts, t.price) for t in result.trades] == [(T0 + timedelta(minutes=4), 11.0)]
    sell = run_backtest(bars(FLAT), Scripted({0: {"target": 5}, 1: {"target": 0, "order_type": "stop",
                                                                     "stop_price": 9.0}}))
    assert [(t.side, t.price) for t in sell.trades] == [(Side.BUY, 10.0), (Side.SELL, 9.0)]


def test_a_new_target_amends_the_working_order_and_day_orders_expire() -> None:
    amended = run_backtest(bars(FLAT), Scripted({0: {"target": 5, "order_type": "limit", "limit_price": 8.0},
                                                 2: {"target": 5, "order_type": "limit", "limit_price": 9.5}}))
    assert [(t.ts, t.price) for t in amended.trades] == [(T0 + timedelta(minutes=3), 9.5)]
    assert [s.intent_id for s in amended.signals] == [amended.trades[0].intent_id], "amended in place, as live"
    days = pd.concat([bars(FLAT[:3]), bars(FLAT[3:], start=T0 + timedelta(days=1))], ignore_index=True)
    day = run_backtest(days, Scripted({0: {"target": 5, "order_type": "limit", "limit_price": 9.0}}))
    assert day.trades == ()  # 8.9 is touched only on the next day
    gtc = run_backtest(days, Scripted({0: {"target": 5, "order_type": "limit", "limit_price": 9.0,
                                           "time_in_force": "gtc"}}))
    assert [t.price for t in gtc.trades] == [9.0]


def test_fractional_targets_are_refused_with_the_reason() -> None:
    result = run_backtest(bars(FLAT), Scripted({1: {"target": 2.5}}))
    assert result.trades == () and "not a whole number" in result.refused[0][2]


class Peeks(Strategy):
    """Cheats: the target after a bar uses the next bar's close."""

    def targets(self, bars: pd.DataFrame) -> pd.DataFrame:
        nxt = bars.groupby("symbol")["close"].shift(-1)
        return pd.DataFrame({"ts": bars["ts"], "symbol": bars["symbol"],
                             "target": np.where(nxt > bars["close"], 10.0, 0.0)})


def test_lookahead_check_finds_a_peeking_strategy_and_passes_an_honest_one() -> None:
    frame = bars(FLAT)
    found = check_lookahead(frame, Peeks())
    assert found.changed and found.cutoffs == len(FLAT) and found.rows_checked == len(FLAT)
    assert {c["column"] for c in found.changed} == {"target"}
    assert check_lookahead(frame, Scripted({1: {"target": 5}})).changed == ()


def test_cli_lookahead_exits_1_on_a_peek(tmp_path: Path) -> None:
    strategy = tmp_path / "peek.py"
    strategy.write_text("import numpy as np, pandas as pd\nfrom steadyhand import Strategy\n"
                        "class Peeks(Strategy):\n"
                        "    def targets(self, bars):\n"
                        "        nxt = bars.groupby('symbol')['close'].shift(-1)\n"
                        "        return pd.DataFrame({'ts': bars['ts'], 'symbol': bars['symbol'],\n"
                        "                             'target': np.where(nxt > bars['close'], 10.0, 0.0)})\n")
    replay = Path(__file__).parent / "data" / "sma_parity.csv"
    result = steadyhand("backtest", "--replay", str(replay), "--strategy", f"{strategy}:Peeks", "--check-lookahead",
                        "--lookahead-cutoffs", "20", "--json", data_dir=tmp_path / "var")
    assert result.returncode == 1, result.stderr
    changed = json.loads(result.stdout)["lookahead"]["changed"]
    assert changed and all(c["with_future"] != c["without_future"] for c in changed)
