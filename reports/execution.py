"""``steadyhand report execution``: how good were the fills (seed chapter 19.6, issue 15 §2).

Per order, from the OMS's journal (``orders``, ``fills``; read only):

- ``ref_price``: the strategy's reference, the close of the bar that made the signal;
- ``bid/ask/mid_at_submit``: the broker's top of book when it accepted the order (NULL where the
  broker gives none: then only the total slippage is known, and the summary says which broker);
- ``avg_fill_price``: the fills' quantity-weighted average.

Slippage, signed so that positive is a cost (``s`` = +1 for a buy, -1 for a sell), in bps of the
reference price and in cash (times the filled quantity):

- delay = s·(mid − ref): the market moved between the signal and the submission;
- spread = s·(side − mid), side = ask for a buy, bid for a sell: half the spread, paid to cross;
- execution = s·(fill − side): what the fill gave away beyond the quote (or won, when negative);
- total = delay + spread + execution = s·(fill − ref).

Latency: signal→submit is wall time from the bar reaching the bot to the submit call; submit→fill
is on the broker's clock (the simulated clock on the sim), from its acceptance to the first fill.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from steadyhand.reports import emit
from steadyhand.state import store

COMPONENTS = ("delay", "spread", "execution", "total")
OPEN_STATUSES = ("pending_submit", "submitted", "partially_filled")
LIMIT_TYPES = ("limit", "stop_limit")

ORDER_SQL = """
SELECT o.*, f.fill_qty, f.fill_value, f.first_fill_ts
FROM orders o LEFT JOIN (
    SELECT client_order_id, sum(qty) AS fill_qty, sum(qty * CAST(price AS REAL)) AS fill_value,
           min(ts) AS first_fill_ts
    FROM fills GROUP BY client_order_id) f USING (client_order_id)
ORDER BY o.created_at, o.client_order_id
"""


# --- one order ------------------------------------------------------------------------------------


def _num(text: Any) -> float | None:
    if text is None or text == "":
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _ms(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() * 1000, 3)


def day_of(row: dict[str, Any]) -> str:
    """The order's day: its bar's date on the run clock (the session it traded in), else when it was made."""
    return (row.get("bar_ts") or row.get("created_at") or "")[:10]


def strategy_of(client_order_id: str) -> str:
    """A client order id's strategy: its prefix (``sma-AAPL-...`` -> ``sma``; ``flat-...`` a flatten)."""
    return client_order_id.split("-", 1)[0]


def slippage(side: str, qty: int, ref: float | None, bid: float | None, ask: float | None,
             fill: float | None) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """(bps, cash) per component for one order (see the module docstring); None where unknown."""
    none: dict[str, float | None] = dict.fromkeys(COMPONENTS)
    if ref is None or ref <= 0 or fill is None or qty <= 0:
        return none, dict(none)
    s = 1.0 if side == "buy" else -1.0
    price: dict[str, float | None] = dict(none)
    if bid is not None and ask is not None:
        mid = (bid + ask) / 2
        touch = ask if s > 0 else bid
        price.update(delay=s * (mid - ref), spread=s * (touch - mid), execution=s * (fill - touch))
        price["total"] = price["delay"] + price["spread"] + price["execution"]  # type: ignore[operator]
    else:
        price["total"] = s * (fill - ref)
    bps = {k: None if v is None else round(v / ref * 10_000, 6) for k, v in price.items()}
    if bps["delay"] is not None:  # the rounded parts add up to the total exactly as printed
        bps["total"] = round(bps["delay"] + bps["spread"] + bps["execution"], 6)  # type: ignore[operator]
    cash = {k: None if v is None else round(v * qty, 6) for k, v in price.items()}
    return bps, cash


def order_record(row: dict[str, Any]) -> dict[str, Any]:
    """One order as ``report execution --json`` lists it (README: the promised keys)."""
    ref, bid, ask = _num(row.get("ref_price")), _num(row.get("bid_at_submit")), _num(row.get("ask_at_submit"))
    filled_qty = int(row.get("fill_qty") or 0)
    avg_fill = round(row["fill_value"] / filled_qty, 6) if filled_qty else None
    bps, cash = slippage(row["side"], filled_qty, ref, bid, ask, avg_fill)
    return {
        "client_order_id": row["client_order_id"], "symbol": row["symbol"], "side": row["side"],
        "qty": row["qty"], "type": row["type"], "status": row["status"],
        "strategy": strategy_of(row["client_order_id"]), "day": day_of(row),
        "ref_price": ref, "bid_at_submit": bid, "ask_at_submit": ask,
        "mid_at_submit": None if bid is None or ask is None else round((bid + ask) / 2, 6),
        "quote_source": row.get("quote_source"),
        "avg_fill_price": avg_fill, "filled_qty": filled_qty,
        "slippage_bps": bps, "slippage_cash": cash["total"], "slippage_cash_split": cash,
        "signal_at": row.get("signal_at"), "sent_at": row.get("sent_at"), "submitted_at": row.get("submitted_at"),
        "first_fill_at": row.get("first_fill_ts"),
        "signal_to_submit_ms": _ms(row.get("signal_at"), row.get("sent_at")),
        "submit_to_ack_ms": _ms(row.get("sent_at"), row.get("acked_at")),
        "submit_to_fill_ms": _ms(row.get("submitted_at"), row.get("first_fill_ts")),
    }


# --- many orders ----------------------------------------------------------------------------------


def read_orders(db: Any, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
    """Every order whose day is in [since, until] (YYYY-MM-DD, inclusive; None: open-ended)."""
    if "orders" not in db.table_names():
        return []
    records = []
    for row in db.query(ORDER_SQL):
        day = day_of(row)
        if (since and day < since) or (until and day > until):
            continue
        records.append(order_record(row))
    return records


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "max": None}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {"n": len(values), "p50": round(statistics.median(ordered), 3), "p90": round(p90, 3),
            "max": round(ordered[-1], 3)}


def _weighted_bps(orders: list[dict[str, Any]]) -> dict[str, float | None]:
    """Notional-weighted slippage over orders with a quote (so the total is the sum of its parts)."""
    quoted = [o for o in orders if o["slippage_bps"]["delay"] is not None]
    notional = sum(o["ref_price"] * o["filled_qty"] for o in quoted)
    if not notional:
        return dict.fromkeys(COMPONENTS)
    out = {k: round(sum(o["slippage_cash_split"][k] for o in quoted) / notional * 10_000, 4)
           for k in ("delay", "spread", "execution")}
    out["total"] = round(out["delay"] + out["spread"] + out["execution"], 4)
    return out


def summarize(orders: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over ``orders``: slippage (bps weighted by notional, cash summed), limit fill rate, latency."""
    filled = [o for o in orders if o["filled_qty"] > 0 and o["ref_price"] is not None]
    unquoted = [o for o in filled if o["slippage_bps"]["delay"] is None]
    notional = sum(o["ref_price"] * o["filled_qty"] for o in filled)
    limit_done = [o for o in orders if o["type"] in LIMIT_TYPES and o["status"] not in OPEN_STATUSES]
    limit_filled = [o for o in limit_done if o["filled_qty"] >= o["qty"]]
    cash = {k: round(sum(o["slippage_cash_split"][k] or 0.0 for o in filled if o["slippage_cash_split"][k]
                         is not None), 4) for k in COMPONENTS}
    # quote_source 'none:<broker>': the broker gave no quote (NULL: an order from before quotes were kept)
    no_quote = sorted({(o["quote_source"] or "none:unknown").removeprefix("none:") for o in unquoted})
    return {
        "orders": len(orders), "filled_orders": len(filled),
        "filled_qty": sum(o["filled_qty"] for o in filled),
        "orders_with_quote": len(filled) - len(unquoted), "orders_without_quote": len(unquoted),
        "quotes": ("every filled order has its quote at submit" if not unquoted else
                   f"{len(unquoted)} filled order(s) have no quote at submit (none from "
                   f"{', '.join(no_quote)}): only their total slippage is known"),
        "no_quote_from": no_quote,
        "slippage_bps": _weighted_bps(filled),
        "slippage_bps_total_all": (round(sum(o["slippage_cash"] for o in filled) / notional * 10_000, 4)
                                   if notional else None),
        "slippage_cash": cash,
        "limit_orders": len(limit_done), "limit_orders_filled": len(limit_filled),
        "limit_fill_rate": round(len(limit_filled) / len(limit_done), 4) if limit_done else None,
        "signal_to_submit_ms": _quantiles([o["signal_to_submit_ms"] for o in orders
                                           if o["signal_to_submit_ms"] is not None]),
        "submit_to_fill_ms": _quantiles([o["submit_to_fill_ms"] for o in orders
                                         if o["submit_to_fill_ms"] is not None]),
    }


def grouped(orders: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in orders:
        groups[o[key]].append(o)
    return {k: summarize(v) for k, v in sorted(groups.items())}


def execution_report(db: Any, since: str | None = None, until: str | None = None) -> dict[str, Any]:
    """The whole report: ``{"orders": [...], "summary": {..., by_symbol, by_strategy, by_day}}``."""
    orders = read_orders(db, since, until)
    summary = summarize(orders)
    summary.update(since=since, by_symbol=grouped(orders, "symbol"), by_strategy=grouped(orders, "strategy"),
                   by_day=grouped(orders, "day"))
    return {"orders": orders, "summary": summary}


def day_summary_text(db: Any, day: str) -> dict[str, str]:
    """The daily summary alert's execution lines (actors/portfolio.py): slippage split, fill rate, latency."""
    s = summarize(read_orders(db, day, day))
    bps = s["slippage_bps"]

    def f(value: float | None, unit: str) -> str:
        return "n/a (no orders)" if value is None else f"{value:.2f}{unit}"

    split = ("no quote at submit from the broker" if bps["total"] is None and s["filled_orders"]
             else f"delay {f(bps['delay'], '')} + spread {f(bps['spread'], '')} + execution "
                  f"{f(bps['execution'], '')} = {f(bps['total'], ' bps')}")
    return {
        "slippage_bps": f(s["slippage_bps_total_all"], ""),
        "slippage_split_bps": split,
        "slippage_cash": f"{s['slippage_cash']['total']:.2f}",
        "limit_fill_rate": ("no limit orders" if s["limit_fill_rate"] is None else f"{s['limit_fill_rate']:.0%}"),
        "signal_to_submit_ms_p50": f(s["signal_to_submit_ms"]["p50"], " ms"),
        "submit_to_fill_ms_p50": f(s["submit_to_fill_ms"]["p50"], " ms"),
    }


# --- output -------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def print_text(report: dict[str, Any]) -> None:
    orders, s = report["orders"], report["summary"]
    print(f"{'client order id':<34} {'sym':<6} {'side':<4} {'qty':>5} {'ref':>9} {'bid':>9} {'ask':>9} "
          f"{'fill':>9} {'delay':>7} {'spread':>7} {'exec':>7} {'total':>7} {'cash':>8} {'sig>sub':>8} {'sub>fill':>9}")
    for o in orders:
        b = o["slippage_bps"]
        print(f"{o['client_order_id']:<34} {o['symbol']:<6} {o['side']:<4} {o['qty']:>5} {_fmt(o['ref_price']):>9} "
              f"{_fmt(o['bid_at_submit']):>9} {_fmt(o['ask_at_submit']):>9} {_fmt(o['avg_fill_price']):>9} "
              f"{_fmt(b['delay']):>7} {_fmt(b['spread']):>7} {_fmt(b['execution']):>7} {_fmt(b['total']):>7} "
              f"{_fmt(o['slippage_cash']):>8} {_fmt(o['signal_to_submit_ms'], '.1f'):>8} "
              f"{_fmt(o['submit_to_fill_ms'], '.0f'):>9}")
    print()
    print(f"{len(orders)} orders, {s['filled_orders']} filled; {s['quotes']}")
    _print_groups({"all": s} | {f"symbol {k}": v for k, v in s["by_symbol"].items()}
                  | {f"strategy {k}": v for k, v in s["by_strategy"].items()}
                  | {f"day {k}": v for k, v in s["by_day"].items()})
    print("slippage in bps of the reference price (bar close), positive = cost; sig>sub wall ms, "
          "sub>fill ms on the broker's clock")


def _print_groups(groups: dict[str, dict[str, Any]]) -> None:
    print(f"{'':<22} {'orders':>6} {'filled':>6} {'delay':>7} {'spread':>7} {'exec':>7} {'total':>7} "
          f"{'cash':>9} {'limit fill':>10} {'sig>sub p50':>11} {'sub>fill p50':>12}")
    for name, g in groups.items():
        b = g["slippage_bps"]
        rate = "-" if g["limit_fill_rate"] is None else f"{g['limit_fill_rate']:.0%}"
        print(f"{name:<22} {g['orders']:>6} {g['filled_orders']:>6} {_fmt(b['delay']):>7} {_fmt(b['spread']):>7} "
              f"{_fmt(b['execution']):>7} {_fmt(b['total']):>7} {_fmt(g['slippage_cash']['total']):>9} "
              f"{rate:>10} {_fmt(g['signal_to_submit_ms']['p50'], '.1f'):>11} "
              f"{_fmt(g['submit_to_fill_ms']['p50'], '.0f'):>12}")


def write_html(report: dict[str, Any], path: Path) -> None:
    import plotly.graph_objects as go
    from steadyhand.reports import html

    s = report["summary"]
    symbols = list(s["by_symbol"])
    split = go.Figure([go.Bar(name=k, x=symbols, y=[s["by_symbol"][sym]["slippage_bps"][k] for sym in symbols])
                       for k in ("delay", "spread", "execution")])
    split.update_layout(barmode="relative", title="Slippage split per symbol (bps, positive = cost)")
    totals = go.Figure([go.Histogram(x=[o["slippage_bps"]["total"] for o in report["orders"]
                                        if o["slippage_bps"]["total"] is not None])])
    totals.update_layout(title="Total slippage per order (bps)")
    latency = go.Figure([go.Histogram(name=k, x=[o[k] for o in report["orders"] if o[k] is not None], opacity=0.6)
                         for k in ("signal_to_submit_ms", "submit_to_fill_ms")])
    latency.update_layout(barmode="overlay", title="Latency (ms)")
    rows = [[g, v["orders"], v["filled_orders"], *(v["slippage_bps"][k] for k in COMPONENTS),
             v["slippage_cash"]["total"], v["limit_fill_rate"], v["signal_to_submit_ms"]["p50"],
             v["submit_to_fill_ms"]["p50"]]
            for g, v in ({"all": s} | {f"symbol {k}": v for k, v in s["by_symbol"].items()}
                         | {f"strategy {k}": v for k, v in s["by_strategy"].items()}
                         | {f"day {k}": v for k, v in s["by_day"].items()}).items()]
    table = html.table(["", "orders", "filled", "delay bps", "spread bps", "execution bps", "total bps", "cash",
                        "limit fill rate", "signal→submit p50 ms", "submit→fill p50 ms"], rows)
    orders = html.table(["client order id", "symbol", "side", "qty", "ref", "bid", "ask", "fill", "total bps", "cash"],
                        [[o["client_order_id"], o["symbol"], o["side"], o["qty"], o["ref_price"], o["bid_at_submit"],
                          o["ask_at_submit"], o["avg_fill_price"], o["slippage_bps"]["total"], o["slippage_cash"]]
                         for o in report["orders"]])
    html.write(path, "steadyhand: execution quality", [("Summary", f"<p>{html.escape(s['quotes'])}</p>" + table),
                                                         ("Orders", orders)], [split, totals, latency])


def cmd_report_execution(args: argparse.Namespace) -> int:
    from steadyhand.control.client import data_dir_of

    if args.since:
        try:
            datetime.strptime(args.since, "%Y-%m-%d")
        except ValueError:
            print(f"steadyhand: --since must be a date YYYY-MM-DD, got {args.since!r}", file=sys.stderr)
            return 2
    db = store.open_readonly(data_dir_of(args))
    if db is None:  # no database yet: an empty report, same shape
        report = {"orders": [], "summary": summarize([]) | {"since": args.since, "by_symbol": {},
                                                            "by_strategy": {}, "by_day": {}}}
    else:
        try:
            report = execution_report(db, args.since)
        finally:
            db.close()
    return emit(args, report, write_html, print_text)
