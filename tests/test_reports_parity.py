"""``steadyhand report parity``: a real run, then its parity counts checked against a backtest of the
same journaled bars, computed here independently of the report."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
from harness import poll
from steadyhand.backtest.engine import backtest
from steadyhand.config import StrategySettings
from test_reports_execution import assert_offline

CONFIG = """
[risk]
whitelist = ["AAPL", "MSFT", "SPY", "QQQ"]   # NVDA's trades are denied: the report must say so
"""


def _denied(data_dir: Path) -> bool:
    db = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True)
    try:
        return bool(db.execute("SELECT 1 FROM risk_decisions WHERE rule = 'whitelist'").fetchone())
    finally:
        db.close()


def _bars(data_dir: Path, run_id: int) -> pd.DataFrame:
    db = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True)
    try:
        return pd.read_sql_query("SELECT ts, symbol, open, high, low, close, volume, kind FROM bars WHERE run_id = ?",
                                 db, params=[run_id])
    finally:
        db.close()


def test_parity_counts_match_a_backtest_of_the_same_bars(make_bot: Any, data_dir: Path, tmp_path: Path) -> None:
    bot = make_bot(config=CONFIG, args=("--speed", "600")).start()
    poll(lambda: bot.status()["fills"] >= 4 and _denied(data_dir), timeout=60, what="fills and a whitelist denial")
    assert bot.stop(signal.SIGINT) == 0

    page = tmp_path / "parity.html"
    result = bot.cli("report", "parity", "--json", "--html", str(page))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"run_id", "matched", "missing", "extra"} <= set(report) and report["run_id"] == 1

    # The same bars, backtested here; only signals on live bars are expected of the run.
    bars = _bars(data_dir, 1)
    first_live = bars.loc[bars["kind"] == "live", "ts"].min()
    result_bt = backtest(bars.drop(columns="kind"), StrategySettings(), start_cash=100_000.0)
    live_signals = {s.intent_id for s in result_bt.signals if s.bar_ts.isoformat() >= first_live}
    trades = {t.intent_id: t.qty for t in result_bt.trades if t.intent_id in live_signals}
    got: dict[str, int] = defaultdict(int)
    for f in json.loads(bot.cli("fills", "--json").stdout):
        got[f["client_order_id"]] += f["qty"]
    matched = {cid for cid, qty in trades.items() if got.get(cid, 0) >= qty}
    assert report["matched"] == len(matched) > 0
    assert {m["intent_id"] for m in report["missing"]} == set(trades) - matched
    assert {e["client_order_id"] for e in report["extra"]} == set(got) - set(trades)
    assert all(m["reason"] for m in report["missing"]) and all(e["reason"] for e in report["extra"])
    nvda = [m for m in report["missing"] if m["symbol"] == "NVDA"]
    assert nvda and all("risk denial (whitelist)" in m["reason"] for m in nvda[:1])

    assert_offline(page.read_text())
    assert '"name":"live"' in page.read_text() and '"name":"backtest"' in page.read_text()  # both curves
    text = bot.cli("report", "parity", "--run", "1").stdout
    assert f"{report['matched']} of {len(trades)} backtest trades matched" in text
    unknown = bot.cli("report", "parity", "--run", "99")
    assert unknown.returncode == 1 and "no such run" in unknown.stderr


def test_a_lockstep_replay_is_fully_matched(make_bot: Any, tmp_path: Path) -> None:
    """Issue 15 §3: a lock-step replay shows 100 % matched, nothing missing, nothing extra."""
    from test_lockstep import CONFIG as LOCKSTEP_CONFIG
    from test_lockstep import backtest_trades, wait_exit, write_replay

    replay = write_replay(tmp_path / "bars.csv")
    expected = backtest_trades(replay, tmp_path)
    bot = make_bot(config=LOCKSTEP_CONFIG, args=("--replay", str(replay), "--lockstep")).start()
    assert wait_exit(bot, 120) == 0, "".join(bot.output[-20:])
    assert bot.config_path is not None
    result = bot.cli("report", "parity", "--json", "--config", str(bot.config_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["matched"], report["missing"], report["extra"]) == (len(expected), [], [])
    assert report["matched_pct"] == 100.0
