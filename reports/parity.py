"""``steadyhand report parity``: did paper do what the backtest said (seed chapter 19.10, issue 15 §3)?

The backtest runs on the bars the feed journaled for the run (``bars``: the warm-up history and every
live bar it sent), with the strategy settings the run recorded in the ledger. Its trades are compared
with the run's orders by intent id (the client order id is derived from the intent alone, so the same
bar and side give the same id live and in the backtest):

- matched: the backtest's trade was filled live, in full;
- missing: a backtest trade the run did not fill, with why: the risk denial and its rule, the broker's
  rejection, a partial or no fill, a restart (the bar came while an actor was down), or no signal;
- extra: a live fill the backtest has no trade for, with why.

Only signals on live bars count: the warm-up history makes no orders live, so its signals are not
expected of the run.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from steadyhand.reports import emit
from steadyhand.state import store


def _run_row(db: Any, run_id: int | None) -> dict[str, Any] | None:
    if "runs" not in db.table_names():
        return None
    sql = "SELECT * FROM runs " + ("WHERE run_id = ?" if run_id is not None else "ORDER BY run_id DESC LIMIT 1")
    rows = list(db.query(sql, [run_id] if run_id is not None else []))
    return rows[0] if rows else None


def _bars_frame(db: Any, run_id: int) -> Any:
    import pandas as pd

    rows = list(db.query("SELECT ts, symbol, open, high, low, close, volume, kind, sent_at FROM bars"
                         " WHERE run_id = ? ORDER BY ts, symbol", [run_id]))
    return pd.DataFrame(rows, columns=["ts", "symbol", "open", "high", "low", "close", "volume", "kind", "sent_at"])


def _strategy_settings(run: dict[str, Any], fallback: Any) -> Any:
    """The strategy settings the run recorded, on the shape of ``fallback`` (the config's); the
    config's own when the recorded ones no longer fit this version's settings."""
    recorded = json.loads(run.get("config") or "{}").get("strategy")
    if isinstance(recorded, dict) and dataclasses.is_dataclass(fallback):
        try:
            return dataclasses.replace(fallback, **recorded)
        except TypeError:
            pass
    return fallback


def _run_orders(db: Any, run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's orders (made between its start and its end, wall time), with their fills' quantity."""
    end = run["ended_at"] or run["last_seen_at"] or "9999"
    if run["ended_by"] == "running":
        end = "9999"
    rows = db.query(
        "SELECT o.*, coalesce((SELECT sum(qty) FROM fills f WHERE f.client_order_id = o.client_order_id), 0)"
        " AS got, (SELECT min(recorded_at) FROM fills f WHERE f.client_order_id = o.client_order_id) AS known_at"
        " FROM orders o WHERE o.created_at >= ? AND o.created_at <= ?", [run["started_at"], end])
    return {r["client_order_id"]: r for r in rows}


def _denials(db: Any) -> dict[str, dict[str, Any]]:
    """The last risk denial per client order id."""
    has_rule = "rule" in db["risk_decisions"].columns_dict
    sql = f"SELECT client_order_id, reason, {'rule' if has_rule else 'NULL AS rule'} FROM risk_decisions" \
          " WHERE approved = 0 ORDER BY id"
    return {r["client_order_id"]: r for r in db.query(sql)}


def _restarts(db: Any, run: dict[str, Any]) -> list[str]:
    end = "9999" if run["ended_by"] == "running" else (run["ended_at"] or "9999")
    rows = db.query("SELECT actor, ts FROM restarts WHERE event = 'restarted' AND ts >= ? AND ts <= ? ORDER BY ts",
                    [run["started_at"], end])
    return [f"{r['actor']} restarted at {r['ts'][:19]}" for r in rows]


def _by_symbol(orders: dict[str, dict[str, Any]]) -> dict[str, tuple[list[str], list[dict[str, Any]]]]:
    """Each symbol's orders sorted by their bar time, with those times (for bisect)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in orders.values():
        groups[o["symbol"]].append(o)
    out = {}
    for symbol, rows in groups.items():
        rows.sort(key=lambda o: o["bar_ts"] or "")
        out[symbol] = ([o["bar_ts"] or "" for o in rows], rows)
    return out


def _lagging(by_symbol: dict[str, tuple[list[str], list[dict[str, Any]]]], symbol: str, bar_ts: str,
             bar_sent_at: str | None) -> str:
    """The run's previous order of ``symbol`` when its fill was not known yet as the signal's bar came
    (the live position lagged the backtest's, which fills at once), else ""."""
    times, rows = by_symbol.get(symbol, ([], []))
    k = bisect.bisect_left(times, bar_ts)
    if k == 0 or not bar_sent_at:
        return ""
    last = rows[k - 1]
    if last["known_at"] is None or last["known_at"] > bar_sent_at:
        return (f"position lag: {last['client_order_id']} was not yet filled when the bar of {bar_ts[11:16]} came, "
                "so the live strategy saw another position")
    return ""


def _missing_reason(cid: str, qty: int, order: dict[str, Any] | None, denial: dict[str, Any] | None,
                    restarts: list[str], lag: str = "") -> str:
    if order is not None:
        status, got = order["status"], int(order["got"] or 0)
        if status == "rejected":
            return f"rejected: {order['reason'] or 'by the broker'}"
        if 0 < got < qty:
            return f"partial fill: {got} of {qty} ({status})"
        if got >= qty:
            return "filled"  # not reached: a full fill is matched
        if status in ("canceled", "expired"):
            return f"no fill: {status}" + (f" ({order['reason']})" if order["reason"] else "")
        return f"no fill yet: {status}"
    if denial is not None:
        rule = denial["rule"] or "risk"
        return f"risk denial ({rule}): {denial['reason']}"
    if lag:
        return lag
    if restarts:
        return "restart: no order was made for it while " + "; ".join(restarts)
    return "not signalled live"


def _extra_reason(cid: str, order: dict[str, Any], unfilled: set[str], first_live: str | None,
                  diverged_by: str | None = None) -> str:
    if (order.get("reason") or "").startswith("adopted"):
        return "adopted from the broker at reconciliation"
    if cid.startswith("flat-"):
        return "operator flatten"
    if cid in unfilled:
        return "the backtest could not fill it (no later bar of its symbol journaled)"
    if first_live and order.get("bar_ts") and order["bar_ts"] < first_live:
        return "signal on a bar before the run's first journaled live bar"
    if diverged_by is not None:
        return f"positions differ: the live position never got the missing {diverged_by}"
    return "not in the backtest (positions at the start or the bars differed)"


def parity_report(db: Any, run_id: int | None, settings: Any) -> dict[str, Any]:
    """``{"run_id", "matched", "missing": [{intent_id, reason}], "extra": [{client_order_id, reason}], ...}``."""
    from steadyhand.backtest.engine import run_backtest
    from steadyhand.strategies.loader import load_strategy

    run = _run_row(db, run_id)
    if run is None:
        raise LookupError("no such run in the ledger" if run_id is not None else "no run recorded yet")
    bars = _bars_frame(db, run["run_id"])
    sent_at = {(sym, ts): at for sym, ts, at in zip(bars["symbol"], bars["ts"], bars["sent_at"], strict=True)}
    bars = bars.drop(columns="sent_at")
    live = bars[bars["kind"] == "live"]
    first_live = None if live.empty else str(live["ts"].min())
    start_cash = float(json.loads(run.get("config") or "{}").get("start_cash") or settings.sim.start_cash)
    strategy = _strategy_settings(run, settings.strategy)
    trades, signals, curve, signal_bar = [], set(), [], {}
    if first_live is not None:
        result = run_backtest(bars.drop(columns="kind"), load_strategy(strategy), start_cash=start_cash)
        signal_bar = {s.intent_id: str(store.iso(s.bar_ts)) for s in result.signals}
        signals = {cid for cid, ts in signal_bar.items() if ts >= first_live}
        trades = [t for t in result.trades if t.intent_id in signals]
        curve = _backtest_curve(bars, result.trades, start_cash)
    orders = _run_orders(db, run)
    denials, restarts, by_symbol = _denials(db), _restarts(db, run), _by_symbol(orders)
    matched, missing = [], []
    diverged: dict[str, str] = {}  # symbol -> the first missing trade after which positions differ
    for t in sorted(trades, key=lambda t: (t.ts, t.symbol)):
        order = orders.get(t.intent_id)
        if order is not None and int(order["got"] or 0) >= t.qty:
            matched.append(t.intent_id)
        else:
            bar_ts = signal_bar[t.intent_id]
            lag = _lagging(by_symbol, t.symbol, bar_ts, sent_at.get((t.symbol, bar_ts)))
            reason = _missing_reason(t.intent_id, t.qty, order, denials.get(t.intent_id), restarts, lag)
            if reason == "not signalled live" and t.symbol in diverged:
                reason = f"positions differ: the live position never got the missing {diverged[t.symbol]}"
            diverged.setdefault(t.symbol, t.intent_id)
            missing.append({"intent_id": t.intent_id, "symbol": t.symbol, "side": str(t.side), "qty": t.qty,
                            "reason": reason})
    traded = {t.intent_id for t in trades}
    unfilled = signals - traded
    extra = [{"client_order_id": cid, "symbol": o["symbol"], "side": o["side"], "qty": int(o["got"]),
              "reason": _extra_reason(cid, o, unfilled, first_live, diverged.get(o["symbol"]))}
             for cid, o in sorted(orders.items()) if int(o["got"] or 0) > 0 and cid not in traded]
    return {"run_id": run["run_id"], "matched": len(matched), "missing": missing, "extra": extra,
            "backtest_trades": len(trades), "live_filled_orders": sum(int(o["got"] or 0) > 0 for o in orders.values()),
            "matched_pct": round(100 * len(matched) / len(trades), 2) if trades else None,
            "bars": int(len(bars)), "live_bars": int(len(live)), "first_live_bar": first_live,
            "strategy": dataclasses.asdict(strategy) if dataclasses.is_dataclass(strategy) else str(strategy),
            "equity": {"live": _live_curve(db, run), "backtest": curve}}


def _backtest_curve(bars: Any, trades: Any, start_cash: float) -> list[tuple[str, float]]:
    """The backtest's equity at each bar time: cash plus positions marked at the last close."""
    by_ts: dict[str, list[Any]] = defaultdict(list)
    for t in trades:
        by_ts[store.iso(t.ts)].append(t)
    cash, positions, marks, curve = start_cash, defaultdict(int), {}, []
    rows = sorted(zip(bars["ts"].tolist(), bars["symbol"].tolist(), bars["close"].tolist(), strict=True))
    for k, (ts, symbol, close) in enumerate(rows):
        for t in by_ts.pop(ts, []):  # filled at this bar's open
            cash -= t.side.sign * t.qty * t.price
            positions[t.symbol] += t.side.sign * t.qty
        marks[symbol] = close
        if k + 1 == len(rows) or rows[k + 1][0] != ts:  # the tick's last bar: one point per tick
            curve.append((ts, round(cash + sum(q * marks.get(s, 0.0) for s, q in positions.items()), 2)))
    return curve


def _live_curve(db: Any, run: dict[str, Any]) -> list[tuple[str, float]]:
    rows = db.execute("SELECT ts, equity FROM equity WHERE ts >= ? AND ts <= ? ORDER BY ts",
                      [run["clock_start"] or "", run["clock_end"] or "9999"]).fetchall()
    return [(ts, float(eq)) for ts, eq in rows]


def print_text(report: dict[str, Any]) -> None:
    pct = "-" if report["matched_pct"] is None else f"{report['matched_pct']:.1f} %"
    print(f"run {report['run_id']}: {report['matched']} of {report['backtest_trades']} backtest trades matched "
          f"({pct}); {len(report['missing'])} missing, {len(report['extra'])} extra; backtest on "
          f"{report['bars']} journaled bars ({report['live_bars']} live)")
    for title, rows, key in (("missing", report["missing"], "intent_id"),
                             ("extra", report["extra"], "client_order_id")):
        if rows:
            print(f"\n{title}:")
            for r in rows:
                print(f"  {r[key]:<34} {r['side']:<4} {r['qty']:>5} {r['symbol']:<6} {r['reason']}")


def write_html(report: dict[str, Any], path: Path) -> None:
    import plotly.graph_objects as go
    from steadyhand.reports import html

    fig = go.Figure()
    for name, curve in report["equity"].items():
        if curve:
            fig.add_trace(go.Scatter(x=[p[0] for p in curve], y=[p[1] for p in curve], mode="lines", name=name))
    fig.update_layout(title=f"Equity: run {report['run_id']} (live) and its backtest", yaxis_title="equity")
    counts = go.Figure([go.Bar(x=["matched", "missing", "extra"],
                               y=[report["matched"], len(report["missing"]), len(report["extra"])])])
    counts.update_layout(title="Trades, paper vs backtest")
    rows = [[r["intent_id"], r["symbol"], r["side"], r["qty"], r["reason"]] for r in report["missing"]]
    extra = [[r["client_order_id"], r["symbol"], r["side"], r["qty"], r["reason"]] for r in report["extra"]]
    head = ["id", "symbol", "side", "qty", "reason"]
    summary = (f"<p>{report['matched']} of {report['backtest_trades']} backtest trades matched; "
               f"backtest on {report['bars']} journaled bars.</p>")
    html.write(path, f"steadyhand: paper vs backtest, run {report['run_id']}",
               [("Summary", summary), ("Missing", html.table(head, rows)), ("Extra", html.table(head, extra))],
               [fig, counts])


def cmd_report_parity(args: argparse.Namespace) -> int:
    import os

    from steadyhand.config import ConfigError, load_settings
    from steadyhand.control.client import data_dir_of

    try:
        settings = load_settings(args.config or os.environ.get("STEADYHAND_CONFIG"))
    except ConfigError as exc:
        print(f"steadyhand: configuration error: {exc}", file=sys.stderr)
        return 2
    db = store.open_readonly(data_dir_of(args))
    if db is None:
        print("steadyhand: no state database here yet (no run recorded)", file=sys.stderr)
        return 1
    try:
        report = parity_report(db, args.run, settings)
    except LookupError as exc:
        print(f"steadyhand: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return emit(args, report, write_html, print_text, {k: v for k, v in report.items() if k != "equity"})
