"""`steadyhand backtest --replay FILE`: the trades the live strategy code would make on those bars."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from harness import steadyhand
from steadyhand.domain import market_hours
from steadyhand.sim.market import SyntheticMarket


def write_replay(path: Path, symbols: tuple[str, ...], minutes: int) -> int:
    market = SyntheticMarket(seed=11, symbols=symbols)
    end = market_hours.next_close(datetime(2026, 11, 18, 15, 0, tzinfo=UTC))
    rows = ["ts,symbol,open,high,low,close,volume"]
    for minute in market_hours.session_open_minutes(end, minutes):
        for symbol in symbols:
            bar = market.bar(symbol, minute)
            assert bar is not None
            rows.append(f"{bar.ts.isoformat()},{symbol},{bar.open},{bar.high},{bar.low},{bar.close},{bar.volume}")
    rows.append(f"{end.isoformat()},AAPL,nan,1,1,1,1")  # one bad bar: rejected, not traded on
    path.write_text("\n".join(rows) + "\n")
    return minutes * len(symbols)


def test_backtest_prints_the_trades(tmp_path: Path) -> None:
    replay = tmp_path / "bars.csv"
    bars = write_replay(replay, ("AAPL", "MSFT"), 240)
    result = steadyhand("backtest", "--replay", str(replay), "--json", data_dir=tmp_path / "var")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bars"] == bars and report["rejected_bars"] == 1
    assert report["trades"], "an SMA 5/20 crossover over 240 minutes trades"
    for trade in report["trades"]:
        assert re.fullmatch(r"sma-(AAPL|MSFT)-\d{8}T\d{4}Z-[BS]0", trade["intent_id"])
    sides = [t["side"] for t in report["trades"] if t["symbol"] == "AAPL"]
    assert sides[0] == "buy" and all(a != b for a, b in zip(sides, sides[1:], strict=False))  # long-only
    human = steadyhand("backtest", "--replay", str(replay), data_dir=tmp_path / "var")
    assert f"{len(report['trades'])} trades over {bars} bars" in human.stdout
