"""``steadyhand report execution``: a real run, then the report, checked against an independent
recomputation from ``orders --json`` + ``fills --json`` + the quotes the report prints."""

from __future__ import annotations

import json
import re
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from harness import poll
from test_alpaca_run import SPEED as ALPACA_SPEED
from test_alpaca_run import exchange  # noqa: F401 (the fixture: `steadyhand exchange serve` as a process)

FAST = ("--speed", "600")
ORDER_KEYS = {"client_order_id", "symbol", "side", "qty", "ref_price", "bid_at_submit", "ask_at_submit",
              "mid_at_submit", "avg_fill_price", "filled_qty", "slippage_bps", "slippage_cash",
              "signal_to_submit_ms", "submit_to_fill_ms"}


def recompute(order: dict[str, Any], fills: list[dict[str, Any]], quote: dict[str, Any]) -> dict[str, float]:
    """The slippage split from first principles: fills' VWAP against the reference and the quote."""
    qty = sum(f["qty"] for f in fills)
    vwap = sum(f["qty"] * float(f["price"]) for f in fills) / qty
    s = 1 if order["side"] == "buy" else -1
    ref, bid, ask = quote["ref_price"], quote["bid_at_submit"], quote["ask_at_submit"]
    mid = (bid + ask) / 2
    touch = ask if s > 0 else bid
    return {"delay": s * (mid - ref) / ref * 1e4, "spread": s * (touch - mid) / ref * 1e4,
            "execution": s * (vwap - touch) / ref * 1e4, "total": s * (vwap - ref) / ref * 1e4,
            "cash": s * (vwap - ref) * qty, "qty": qty}


def assert_offline(page: str) -> None:
    """plotly.js is inline (over a megabyte of it) and no script is loaded from anywhere."""
    tags = re.findall(r"<script\b[^>]*>", page)
    assert tags and not [t for t in tags if "src=" in t], tags
    assert "Plotly.newPlot" in page and len(page) > 1_000_000


def test_real_run_then_report_matches_an_independent_recomputation(make_bot: Any, tmp_path: Path) -> None:
    bot = make_bot(args=FAST).start()
    poll(lambda: bot.status()["fills"] >= 3, timeout=60, what="three fills")
    during = bot.cli("report", "execution", "--json")  # while the bot trades: read only, works
    assert during.returncode == 0 and json.loads(during.stdout)["orders"]
    assert bot.stop(signal.SIGINT) == 0

    page = tmp_path / "execution.html"
    result = bot.cli("report", "execution", "--json", "--html", str(page))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    orders = {o["client_order_id"]: o for o in json.loads(bot.cli("orders", "--json").stdout)}
    fills: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in json.loads(bot.cli("fills", "--json").stdout):
        fills[f["client_order_id"]].append(f)
    assert {o["client_order_id"] for o in report["orders"]} == set(orders)
    checked = 0
    for line in report["orders"]:
        assert ORDER_KEYS <= set(line)
        assert set(line["slippage_bps"]) == {"delay", "spread", "execution", "total"}
        got = fills.get(line["client_order_id"])
        if not got:
            assert line["filled_qty"] == 0 and line["slippage_bps"]["total"] is None
            continue
        assert line["quote_source"] == "sim" and line["bid_at_submit"] < line["ask_at_submit"]  # the sim quotes
        assert line["mid_at_submit"] == pytest.approx((line["bid_at_submit"] + line["ask_at_submit"]) / 2)
        mine = recompute(orders[line["client_order_id"]], got, line)
        bps = line["slippage_bps"]
        for part in ("delay", "spread", "execution", "total"):
            assert bps[part] == pytest.approx(mine[part], abs=1e-4), part
        assert bps["total"] == pytest.approx(bps["delay"] + bps["spread"] + bps["execution"], abs=1e-9)
        assert bps["spread"] > 0  # crossing the spread is always a cost
        assert line["filled_qty"] == mine["qty"] == orders[line["client_order_id"]]["filled_qty"]
        assert line["slippage_cash"] == pytest.approx(mine["cash"], abs=1e-4)
        assert line["signal_to_submit_ms"] is not None and line["signal_to_submit_ms"] >= 0
        assert line["submit_to_fill_ms"] is not None and line["submit_to_fill_ms"] >= 0
        checked += 1
    assert checked >= 3

    summary = report["summary"]
    limit = [o for o in orders.values() if o["type"] in ("limit", "stop_limit")
             and o["status"] not in ("pending_submit", "submitted", "partially_filled")]
    expected_rate = (sum(o["filled_qty"] >= o["qty"] for o in limit) / len(limit)) if limit else None
    assert summary["limit_fill_rate"] == (None if expected_rate is None else pytest.approx(expected_rate, abs=1e-4))
    assert summary["orders_without_quote"] == 0
    filled = [o for o in report["orders"] if o["filled_qty"]]
    notional = sum(o["ref_price"] * o["filled_qty"] for o in filled)
    assert summary["slippage_bps"]["total"] == pytest.approx(
        sum(o["slippage_cash"] for o in filled) / notional * 1e4, abs=1e-3)
    assert set(summary["by_symbol"]) == {o["symbol"] for o in report["orders"]}
    assert set(summary["by_strategy"]) == {"sma"}
    assert sum(g["orders"] for g in summary["by_day"].values()) == len(report["orders"])

    text = page.read_text()
    assert_offline(text)
    table = bot.cli("report", "execution").stdout
    assert "delay" in table and "spread" in table and next(iter(orders)) in table


def test_bad_since_is_a_clear_error(make_bot: Any, data_dir: Path) -> None:
    from harness import steadyhand

    result = steadyhand("report", "execution", "--since", "yesterday", data_dir=data_dir)
    assert result.returncode == 2 and "YYYY-MM-DD" in result.stderr
    empty = json.loads(steadyhand("report", "execution", "--json", data_dir=data_dir).stdout)
    assert empty["orders"] == [] and empty["summary"]["orders"] == 0
    refused = steadyhand("report", "execution", "--html", "/proc/x.html", data_dir=data_dir)
    assert refused.returncode == 1 and "cannot write /proc/x.html" in refused.stderr
    assert steadyhand("report", "parity", data_dir=data_dir).returncode == 1  # no run recorded: says so


def test_alpaca_quotes_at_submit_come_from_the_data_api(make_bot: Any, exchange: dict[str, Any]) -> None:  # noqa: F811
    """On Alpaca the quote is the data API's latest quote (the local exchange serves it)."""
    urls = {k: v for k, v in exchange.items() if k.endswith("_url")}
    config = ('broker = "alpaca"\n' f"[sim]\nspeed = {ALPACA_SPEED}\n"
              "[alpaca]\npaper = true\n" + "".join(f'{k} = "{v}"\n' for k, v in urls.items()))
    env = {"ALPACA_API_KEY": "dev-key", "ALPACA_SECRET_KEY": "dev-secret-4f1c"}
    bot = make_bot(config=config, env=env).start()
    poll(lambda: bot.status()["fills"] >= 2, timeout=90, what="fills through Alpaca's API")
    assert bot.stop(signal.SIGINT) == 0
    report = json.loads(bot.cli("report", "execution", "--json").stdout)
    filled = [o for o in report["orders"] if o["filled_qty"]]
    assert len(filled) >= 2
    for o in filled:
        assert o["quote_source"] == "alpaca" and 0 < o["bid_at_submit"] < o["ask_at_submit"]
        bps = o["slippage_bps"]
        assert bps["total"] == pytest.approx(bps["delay"] + bps["spread"] + bps["execution"], abs=1e-9)
    assert report["summary"]["orders_without_quote"] == 0


def test_orders_without_a_quote_say_so_and_keep_their_total() -> None:
    from steadyhand.reports.execution import order_record, summarize

    row = {"client_order_id": "sma-X-20261120T1431Z-B0", "symbol": "X", "side": "buy", "qty": 10,
           "type": "market", "status": "filled", "bar_ts": "2026-11-20T14:31:00+00:00", "ref_price": "100.0",
           "bid_at_submit": None, "ask_at_submit": None, "quote_source": None, "fill_qty": 10, "fill_value": 1001.0}
    record = order_record(row)
    assert record["slippage_bps"] == {"delay": None, "spread": None, "execution": None,
                                      "total": pytest.approx(10.0)}
    assert record["slippage_cash"] == pytest.approx(1.0)  # 0.10 a share on 10 shares
    summary = summarize([record, order_record(row | {"quote_source": "none:ibkr"})])
    assert summary["orders_without_quote"] == 2 and summary["no_quote_from"] == ["ibkr", "unknown"]
    assert "no quote at submit (none from ibkr, unknown)" in summary["quotes"]
    assert summary["slippage_bps_total_all"] == pytest.approx(10.0)
    assert summary["slippage_bps"]["total"] is None  # no split without a quote
    sell = order_record(row | {"side": "sell", "bid_at_submit": "99.98", "ask_at_submit": "100.02"})
    # a sell filled at 100.10 above a 100.00 reference gained: negative cost, split still adds up
    assert sell["slippage_bps"]["total"] == pytest.approx(-10.0) and sell["slippage_bps"]["spread"] > 0
