"""Reading the simulated exchange's book: its rows as domain types, and the history reads beyond
the Broker protocol that ``steadyhand exchange serve`` answers Alpaca's order listing, fill
activities and trade-update stream with (sim/server/alpaca.py, alpaca_streams.py).

:class:`BookReads` is mixed into :class:`~steadyhand.sim.exchange.SimExchange`, which supplies
``_rows`` (a read on the book's connection), ``_injected`` (the fault switch) and ``_sync`` (catch
the book up to now): the book's writes and matching stay there, its read-only history lives here.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from decimal import Decimal
from typing import Literal

from steadyhand.domain import BrokerOrder, Fill, OrderStatus, OrderType, Side, TimeInForce
from steadyhand.sim.matching import dec
from steadyhand.sim.schema import iso, parse_iso

OPEN_STATUSES = (OrderStatus.SUBMITTED.value, OrderStatus.PARTIALLY_FILLED.value)
OPEN_IN = "(" + ", ".join(f"'{s}'" for s in OPEN_STATUSES) + ")"  # for "status IN ..." clauses


def row_to_order(r: sqlite3.Row) -> BrokerOrder:
    return BrokerOrder(
        broker_order_id=r["broker_order_id"],
        client_order_id=r["client_order_id"],
        symbol=r["symbol"],
        side=Side(r["side"]),
        qty=r["qty"],
        type=OrderType(r["type"]),
        time_in_force=TimeInForce(r["time_in_force"]),
        limit_price=dec(r["limit_price"]),
        stop_price=dec(r["stop_price"]),
        status=OrderStatus(r["status"]),
        filled_qty=r["filled_qty"],
        avg_fill_price=dec(r["avg_fill_price"]),
        submitted_at=parse_iso(r["submitted_at"]),
        updated_at=parse_iso(r["updated_at"]),
        reason=r["reason"],
        replaces=r["replaces"] or "",
        replaced_by=r["replaced_by"] or "",
    )


def row_to_fill(r: sqlite3.Row) -> Fill:
    return Fill(
        fill_id=r["fill_id"],
        broker_order_id=r["broker_order_id"],
        client_order_id=r["client_order_id"],
        symbol=r["symbol"],
        side=Side(r["side"]),
        qty=r["qty"],
        price=Decimal(r["price"]),
        ts=parse_iso(r["ts"]),
    )


# ---------------------------------------------------------------------------------------------
# The exchange
# ---------------------------------------------------------------------------------------------




class BookReads:
    """The exchange server's reads. The two that catch the book up count as ``open_orders`` for the
    fault switch, as the server's reads always did."""

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        raise NotImplementedError

    def _injected(self, op: str) -> bool:
        raise NotImplementedError

    def _sync(self) -> datetime:
        raise NotImplementedError

    def list_orders(
        self,
        status: Literal["open", "closed", "all"] = "open",
        *,
        after: datetime | None = None,
        until: datetime | None = None,
        symbols: list[str] | None = None,
        side: str | None = None,
        ascending: bool = False,
        limit: int = 50,
    ) -> list[BrokerOrder]:
        """Up to ``limit`` orders by submission time, newest first unless ``ascending``; the book
        is caught up to now first. ``status``: "open" (still working), "closed" (ended) or "all";
        submitted strictly after ``after`` and strictly before ``until``; only ``symbols`` when
        given; only ``side`` ("buy" / "sell") when given."""
        if status not in ("open", "closed", "all"):
            raise ValueError(f"status must be 'open', 'closed' or 'all', got {status!r}")
        self._injected("open_orders")
        self._sync()
        clauses: list[str] = []
        params: list[object] = []
        if status != "all":
            clauses.append(f"status {'IN' if status == 'open' else 'NOT IN'} {OPEN_IN}")
        for bound, op in ((after, ">"), (until, "<")):
            if bound is not None:
                clauses.append(f"submitted_at {op} ?")
                params.append(iso(bound))
        if symbols:
            clauses.append(f"symbol IN ({','.join('?' * len(symbols))})")
            params.extend(symbols)
        if side is not None:
            clauses.append("side = ?")
            params.append(side)
        where = " AND ".join(clauses) or "1 = 1"
        order = "ASC" if ascending else "DESC"
        rows = self._rows(f"SELECT * FROM orders WHERE {where} ORDER BY submitted_at {order}, id {order} LIMIT ?",
                          (*params, limit))
        return [row_to_order(r) for r in rows]

    def fills_between(self, after: datetime | None = None, before: datetime | None = None) -> list[Fill]:
        """Every fill with ``after < ts < before`` (an end left None is open), oldest first; the
        book is caught up to now first."""
        self._injected("open_orders")
        self._sync()
        clauses: list[str] = []
        params: list[object] = []
        for bound, op in ((after, ">"), (before, "<")):
            if bound is not None:
                clauses.append(f"ts {op} ?")
                params.append(iso(bound))
        where = " AND ".join(clauses) or "1 = 1"
        return [row_to_fill(r) for r in self._rows(f"SELECT * FROM fills WHERE {where} ORDER BY ts, fill_id",
                                                    tuple(params))]

    def fill_sequences(self, broker_order_ids: list[str]) -> dict[str, list[tuple[Fill, int]]]:
        """Each order's fills in the order they happened (by fill number, which a timestamp tie
        cannot reorder), each with the order's cumulative filled qty right after it. A plain read
        of the book as it is (no catch-up): the server calls it for fills it has just seen."""
        if not broker_order_ids:
            return {}
        rows = self._rows(f"SELECT * FROM fills WHERE broker_order_id IN ({','.join('?' * len(broker_order_ids))})",
                          tuple(broker_order_ids))
        by_order: dict[str, list[tuple[int, Fill]]] = {}
        for r in rows:
            fill = row_to_fill(r)
            by_order.setdefault(fill.broker_order_id, []).append((int(fill.fill_id.rsplit("-", 1)[1]), fill))
        out: dict[str, list[tuple[Fill, int]]] = {}
        for oid, numbered in by_order.items():
            total = 0
            for _n, fill in sorted(numbered, key=lambda pair: pair[0]):
                total += fill.qty
                out.setdefault(oid, []).append((fill, total))
        return out

    def orders_by_id(self, broker_order_ids: list[str]) -> dict[str, BrokerOrder]:
        """These orders as the book has them now (no catch-up); unknown ids are left out."""
        if not broker_order_ids:
            return {}
        rows = self._rows(f"SELECT * FROM orders WHERE broker_order_id IN ({','.join('?' * len(broker_order_ids))})",
                          tuple(broker_order_ids))
        return {r["broker_order_id"]: row_to_order(r) for r in rows}
