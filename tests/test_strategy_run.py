"""The plug-in API in a real run: a user's strategy trades a replay whose symbols are taken from the
file; a strategy that raises on every bar is escalated with a CRITICAL alert naming it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import poll
from steadyhand.domain import market_hours
from steadyhand.sim.market import SyntheticMarket

TARGETS = '''
import pandas as pd
from steadyhand import Strategy

class Hold(Strategy):
    """Wants {qty} shares of everything, on every bar: a repeated target must not order twice."""
    name = "hold"

    def __init__(self, qty: int = 5) -> None:
        super().__init__()
        self.qty = qty

    def targets(self, bars):
        return pd.DataFrame({"ts": bars["ts"], "symbol": bars["symbol"], "target": float(self.qty)})

class Broken(Strategy):
    name = "broken"

    def targets(self, bars):
        raise ZeroDivisionError("model weights missing")
'''


def write_replay(path: Path, symbols: tuple[str, ...], minutes: int) -> None:
    market = SyntheticMarket(seed=5, symbols=symbols)
    opens = market_hours.previous_open(datetime(2026, 11, 19, 16, tzinfo=UTC))
    rows = ["ts,symbol,open,high,low,close,volume"]
    for minute in market_hours.session_open_minutes(market_hours.next_close(opens), 390)[:minutes]:
        for symbol in symbols:
            bar = market.bar(symbol, minute)
            assert bar is not None
            rows.append(f"{bar.ts.isoformat()},{symbol},{bar.open},{bar.high},{bar.low},{bar.close},{bar.volume}")
    path.write_text("\n".join(rows) + "\n")


def query(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_user_strategy_trades_the_replays_own_symbols_once(make_bot: Any, tmp_path: Path) -> None:
    module = tmp_path / "user.py"
    module.write_text(TARGETS)
    replay = tmp_path / "bars.csv"
    write_replay(replay, ("ZQX", "ZQY"), 120)  # not in the default symbols: taken from the file
    config = f'[strategy]\nclass = "{module}:Hold"\n[strategy.params]\nqty = 7\n'
    bot = make_bot(config=config, args=("--replay", str(replay), "--speed", "600")).start()
    held = "SELECT symbol, qty FROM positions WHERE qty != 0"
    poll(lambda: dict(query(bot.data_dir, held)) == {"ZQX": 7, "ZQY": 7}, timeout=60, what="both held at the target")
    orders = query(bot.data_dir, "SELECT client_order_id, symbol, qty FROM orders ORDER BY created_at")
    assert sorted((o[1], o[2]) for o in orders) == [("ZQX", 7), ("ZQY", 7)], f"one order per symbol: {orders}"
    assert all(o[0].startswith(f"hold-{o[1]}-") for o in orders)
    assert not query(bot.data_dir, "SELECT 1 FROM bad_bars WHERE reason = 'unknown_symbol'")
    assert bot.stop() == 0


def test_a_strategy_raising_on_every_bar_is_escalated_naming_it(make_bot: Any, tmp_path: Path) -> None:
    module = tmp_path / "user.py"
    module.write_text(TARGETS)
    config = f'[strategy]\nclass = "{module}:Broken"\n[supervisor]\nmax_restarts = 2\nbackoff_s = 0.01\n'
    bot = make_bot(config=config, args=("--speed", "600")).start()
    poll(lambda: query(bot.data_dir, "SELECT 1 FROM restarts WHERE actor = 'strategy' AND event = 'escalated'"),
         timeout=60, what="the strategy escalated")
    alert = poll(lambda: query(bot.data_dir, "SELECT severity, body FROM alerts WHERE key = 'escalation:strategy'"),
                 timeout=20, what="the escalation alert")[0]
    assert alert[0] == "critical"
    assert "'broken'" in alert[1] and "ZeroDivisionError: model weights missing" in alert[1], alert
    status = bot.status()
    assert status["trading_state"] == "halted" and not status["actors"]["strategy"]["alive"]
    assert bot.stop() == 0


def test_a_shipped_strategy_rests_limit_orders_through_the_real_actors(make_bot: Any, tmp_path: Path) -> None:
    replay = Path(__file__).parent / "data" / "sma_parity.csv"
    bot = make_bot(args=("--replay", str(replay), "--speed", "600", "--strategy", "bollinger")).start()
    limits = "SELECT client_order_id, type, limit_price FROM orders WHERE type = 'limit'"
    rows = poll(lambda: query(bot.data_dir, limits), timeout=60, what="a resting limit order")
    assert all(cid.startswith("boll-") and price is not None and float(price) > 0 for cid, _, price in rows)
    assert bot.stop() == 0
