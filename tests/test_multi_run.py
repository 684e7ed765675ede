"""Several strategies at once, real processes: each trades on its own sub-book, the books sum to the
broker's net and equal a recomputation from each one's fills, kills lose nothing, and a strategy that
keeps crashing is left down alone (CRITICAL alert naming it and its exception) while the other trades."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

from harness import Bot, poll

SPEED = ("--speed", "120")  # two bars a second: crossings of both windows within seconds
CONFIG = """
symbols = ["AAPL", "MSFT", "SPY"]
[[strategies]]
name = "fast"
class = "sma"
symbols = ["AAPL", "MSFT"]
[strategies.params]
fast = 2
slow = 5
qty = 10
[[strategies]]
name = "slow"
class = "sma"
max_daily_loss = 1000000.0  # never reached: the portfolio's per-strategy day P&L runs in a real run
[strategies.params]
fast = 3
slow = 8
qty = 7
"""


def _query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute(sql).fetchall()


def _fills_by(bot: Bot) -> dict[str, int]:
    rows = _query(bot.data_dir / "steadyhand.db", "SELECT client_order_id FROM fills")
    out: dict[str, int] = {}
    for (cid,) in rows:
        out[cid.partition("-")[0]] = out.get(cid.partition("-")[0], 0) + 1
    return out


def _both_filled(bot: Bot, more_than: dict[str, int]) -> dict[str, int] | None:
    counts = _fills_by(bot)
    return counts if all(counts.get(n, 0) > more_than.get(n, 0) for n in ("fast", "slow")) else None


def _recompute(fills: list[tuple[str, str, str, int, str]]) -> dict[tuple[str, str], tuple[int, Decimal, Decimal]]:
    """Each strategy's (qty, avg cost, realized) per symbol from its own fills, written out afresh."""
    books: dict[tuple[str, str], list[Any]] = {}
    for cid, symbol, side, qty, price_text in fills:
        held, avg, realized = books.setdefault((cid.split("-")[0], symbol), [0, Decimal(0), Decimal(0)])
        signed, price = (qty if side == "buy" else -qty), Decimal(price_text)
        if held == 0 or (held > 0) == (signed > 0):
            avg = (abs(held) * avg + abs(signed) * price) / (abs(held) + abs(signed))
        else:
            closed = min(abs(signed), abs(held))
            realized += closed * (price - avg) * (1 if held > 0 else -1)
            if abs(signed) > abs(held):
                avg = price
            elif abs(signed) == abs(held):
                avg = Decimal(0)
        books[(cid.split("-")[0], symbol)] = [held + signed, avg, realized]
    return {k: (v[0], v[1], v[2]) for k, v in books.items()}


def test_two_strategies_keep_their_own_books_through_kills(make_bot: Any) -> None:
    bot = make_bot(config=CONFIG, args=SPEED).start()
    status = bot.status()
    assert {"strategy.fast", "strategy.slow"} <= set(status["actors"]) and "strategy" not in status["actors"]
    first = poll(lambda: _both_filled(bot, {}), timeout=60, what="fills from both strategies")

    for name in ("portfolio", "strategy.fast"):  # mid-run: the portfolio and one strategy
        old = bot.status()["actors"][name]["pid"]
        os.kill(old, signal.SIGKILL)
        poll(lambda n=name, o=old: (a := bot.status()["actors"][n])["alive"] and a["pid"] != o, timeout=20,
             what=f"{name} restarted")
    poll(lambda: _both_filled(bot, first), timeout=60, what="both strategies filling after the kills")
    live = json.loads(bot.cli("status", "--json").stdout)
    assert set(live["strategies"]) >= {"fast", "slow"}
    assert set(live["strategies"]["fast"]) >= {"positions", "realized_pnl", "unrealized_pnl"}
    assert bot.stop() == 0

    db = bot.data_dir / "steadyhand.db"
    fills = _query(db, "SELECT client_order_id, symbol, side, qty, price FROM fills ORDER BY rowid")
    assert all(cid.split("-")[0] in ("fast", "slow") for cid, *_ in fills)
    assert not [f for f in fills if f[0].startswith("fast-") and f[1] == "SPY"]  # fast trades its own symbols
    day_start = _query(db, "SELECT value FROM portfolio_state WHERE key = 'strategy_day_start'")
    assert day_start and "start" in json.loads(day_start[0][0])  # slow's max_daily_loss baseline was kept
    expected = _recompute(fills)
    books = {(s, sym): (q, Decimal(a), Decimal(r)) for s, sym, q, a, r in
             _query(db, "SELECT strategy, symbol, qty, avg_cost, realized_pnl FROM strategy_positions")}
    assert books.keys() == expected.keys()
    for key, (qty, avg, realized) in expected.items():
        got = books[key]
        assert got[0] == qty and abs(got[1] - avg) < Decimal("1e-9") and abs(got[2] - realized) < Decimal("1e-9"), key
    net: dict[str, int] = {}
    for (_, symbol), (qty, _, _) in books.items():
        net[symbol] = net.get(symbol, 0) + qty
    broker = dict(_query(bot.data_dir / "exchange.db", "SELECT symbol, qty FROM positions WHERE qty != 0"))
    assert {s: q for s, q in net.items() if q} == broker
    assert dict(_query(db, "SELECT symbol, qty FROM positions WHERE qty != 0")) == broker
    assert _query(db, "SELECT count(*) FROM alerts WHERE key = 'books:mismatch'") == [(0,)]
    marks = _query(db, "SELECT symbol, count(DISTINCT last_price) FROM strategy_positions WHERE qty != 0"
                       " GROUP BY symbol")
    assert all(n == 1 for _, n in marks), marks  # one price per symbol, whichever book holds it
    # each trades on its own book: a long-only SMA holds 0 or its own qty, whatever the other holds
    assert {q for (n, _), (q, _, _) in expected.items() if n == "fast"} <= {0, 10}
    assert {q for (n, _), (q, _, _) in expected.items() if n == "slow"} <= {0, 7}
    after = json.loads(bot.cli("status", "--json").stdout)  # read from the database, bot stopped
    assert {n: {s: p["qty"] for s, p in v["positions"].items()} for n, v in after["strategies"].items()} == \
        {n: {s: q for (m, s), (q, _, _) in expected.items() if m == n and q} for n in ("fast", "slow")}


BOOM = """
import pandas as pd
from steadyhand import Strategy


class Boom(Strategy):
    warmup = 2

    def targets(self, bars: pd.DataFrame) -> pd.DataFrame:
        raise ValueError("boom on every bar")
"""


def test_a_strategy_raising_on_every_bar_is_left_down_alone(make_bot: Any, tmp_path: Path) -> None:
    boom = tmp_path / "boom.py"
    boom.write_text(BOOM)
    config = (CONFIG.replace('name = "slow"\nclass = "sma"', f'name = "bad"\nclass = "{boom}:Boom"')
              .replace("fast = 3\nslow = 8\nqty = 7\n", "")
              + "[supervisor]\nmax_restarts = 2\nperiod_s = 60.0\n")
    bot = make_bot(config=config, args=SPEED).start()
    alert = poll(lambda: _query(bot.data_dir / "steadyhand.db",
                                "SELECT title, body FROM alerts WHERE severity = 'critical'"),
                 timeout=60, what="a CRITICAL alert for the raising strategy")
    assert any("strategy.bad" in title and "ValueError: boom on every bar" in body for title, body in alert), alert
    status = bot.status()
    assert status["trading_state"] == "active"
    assert status["actors"]["strategy.bad"]["alive"] is False and status["actors"]["strategy.bad"]["restarts"] == 2
    assert status["actors"]["strategy.fast"]["alive"] is True
    before = _fills_by(bot).get("fast", 0)
    poll(lambda: _fills_by(bot).get("fast", 0) > before, timeout=60, what="the other strategy still filling")
    assert "bad" not in _fills_by(bot)
    assert bot.stop() == 0
