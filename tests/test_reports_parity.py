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
