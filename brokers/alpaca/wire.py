"""Alpaca's wire format, both ways: steadyhand's broker objects to Alpaca JSON (for the local exchange
server) and alpaca-py's models back to steadyhand's broker objects (for the Alpaca broker).

Keeping both directions in one module means the server and the client agree by construction on
the few conventions Alpaca leaves to us:

- **Fill ids.** Alpaca's trade-update ``execution_id`` and its account-activity ``id`` are different
  identifiers for the same execution, so neither can deduplicate a fill seen once on the stream and
  again by REST polling. A fill is identified instead by ``<order id>:<cumulative filled qty>``:
  both sources carry it (the order snapshot in a trade update, ``cum_qty`` in an activity), and one
  order can never reach the same cumulative quantity twice.
- **Money** is sent as strings (as Alpaca does) and parsed back into ``Decimal`` via ``str``.
- **Statuses** map onto the journal's vocabulary (:data:`FROM_ALPACA_STATUS`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from steadyhand.domain import (
    Account,
    Bar,
    BrokerOrder,
    Fill,
    MarketClock,
    OrderStatus,
    OrderType,
    Position,
    Side,
    TimeInForce,
)

NEW_YORK = ZoneInfo("America/New_York")
_NS = uuid.UUID("5d1f3c0e-8f7a-4f54-9a57-2b1f6c0d9e11")  # namespace of the ids we derive
ACCOUNT_ID = str(uuid.uuid5(_NS, "account"))
ACCOUNT_NUMBER = "PA-STEADYHAND"

# Alpaca error codes (the ``code`` field of an error body) by HTTP status.
ERROR_CODES = {400: 40010000, 401: 40110000, 403: 40310000, 404: 40410000, 422: 40010001,
               429: 42910000, 500: 50010000, 502: 50210000, 503: 50310000, 504: 50410000}
DUPLICATE_CLIENT_ID_MESSAGE = "client_order_id must be unique"

TO_ALPACA_STATUS = {
    OrderStatus.SUBMITTED: "new",
    OrderStatus.PARTIALLY_FILLED: "partially_filled",
    OrderStatus.FILLED: "filled",
    OrderStatus.CANCELED: "canceled",
    OrderStatus.EXPIRED: "expired",
    OrderStatus.REJECTED: "rejected",
    OrderStatus.REPLACED: "replaced",
}
# Alpaca statuses that are still working; how far they got is read from filled_qty.
_WORKING = {"new", "accepted", "pending_new", "accepted_for_bidding", "pending_cancel", "pending_replace",
            "pending_review", "calculated", "held", "stopped", "suspended", "done_for_day", "partially_filled"}
FROM_ALPACA_STATUS = {
    "filled": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "replaced": OrderStatus.REPLACED,  # a PATCH made a new order (``replaced_by``) for what was left
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}


def derived_uuid(*parts: object) -> str:
    """A UUID that is the same for the same parts in every process (asset ids, execution ids)."""
    return str(uuid.uuid5(_NS, "\x1f".join(str(p) for p in parts)))


def fill_id(order_id: str, cum_qty: int | Decimal | str) -> str:
    """The source-independent id of a fill (see the module docstring)."""
    return f"{order_id}:{int(Decimal(str(cum_qty)))}"


def iso(t: datetime | None) -> str | None:
    """RFC 3339 with a ``Z``, as Alpaca writes timestamps."""
    if t is None:
        return None
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def money(x: Decimal | float | int | None) -> str | None:
    if x is None:
        return None
    d = Decimal(str(x))
    return format(d.normalize(), "f") if d != 0 else "0"


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"code": ERROR_CODES.get(status, status * 100000), "message": message}


# ---------------------------------------------------------------------------------------------
# steadyhand -> Alpaca JSON (the local exchange server)
# ---------------------------------------------------------------------------------------------


def order_json(
    o: BrokerOrder,
    *,
    status: str | None = None,
    filled_qty: int | None = None,
    filled_avg_price: Decimal | None = None,
) -> dict[str, Any]:
    """A full Alpaca order object; the keyword arguments give a snapshot at an earlier fill."""
    alpaca_status = status or TO_ALPACA_STATUS.get(o.status, "new")
    filled = o.filled_qty if filled_qty is None else filled_qty
    avg = o.avg_fill_price if filled_qty is None else filled_avg_price
    done_at = iso(o.updated_at)
    return {
        "id": o.broker_order_id,
        "client_order_id": o.client_order_id,
        "created_at": iso(o.submitted_at),
        "updated_at": iso(o.updated_at),
        "submitted_at": iso(o.submitted_at),
        "filled_at": done_at if alpaca_status == "filled" else None,
        "expired_at": done_at if alpaca_status == "expired" else None,
        "canceled_at": done_at if alpaca_status == "canceled" else None,
        "failed_at": done_at if alpaca_status == "rejected" else None,
        "replaced_at": done_at if alpaca_status == "replaced" else None,
        "replaced_by": o.replaced_by or None,
        "replaces": o.replaces or None,
        "asset_id": derived_uuid("asset", o.symbol),
        "symbol": o.symbol,
        "asset_class": "us_equity",
        "notional": None,
        "qty": str(o.qty),
        "filled_qty": str(filled),
        "filled_avg_price": money(avg) if filled else None,
        "order_class": "simple",
        "order_type": o.type.value,
        "type": o.type.value,
        "side": o.side.value,
        "position_intent": ("buy_to_open" if o.side is Side.BUY else "sell_to_close"),
        "time_in_force": o.time_in_force.value,
        "limit_price": money(o.limit_price),
        "stop_price": money(o.stop_price),
        "status": alpaca_status,
        "extended_hours": False,
        "legs": None,
        "trail_percent": None,
        "trail_price": None,
        "hwm": None,
        "subtag": None,
        "source": None,
    }


def position_json(p: Position, mark: Decimal) -> dict[str, Any]:
    qty = Decimal(p.qty)
    cost = p.avg_entry_price * qty
    value = mark * qty
    pl = value - cost
    plpc = (pl / abs(cost)) if cost else Decimal(0)
    return {
        "asset_id": derived_uuid("asset", p.symbol),
        "symbol": p.symbol,
        "exchange": "NASDAQ",
        "asset_class": "us_equity",
        "asset_marginable": True,
        "avg_entry_price": money(p.avg_entry_price),
        "qty": str(p.qty),
        "qty_available": str(p.qty),
        "side": "long" if p.qty > 0 else "short",
        "market_value": money(value.quantize(Decimal("0.01"))),
        "cost_basis": money(cost.quantize(Decimal("0.01"))),
        "unrealized_pl": money(pl.quantize(Decimal("0.01"))),
        "unrealized_plpc": money(plpc.quantize(Decimal("0.000001"))),
        "unrealized_intraday_pl": money(pl.quantize(Decimal("0.01"))),
        "unrealized_intraday_plpc": money(plpc.quantize(Decimal("0.000001"))),
        "current_price": money(mark),
        "lastday_price": money(mark),
        "change_today": "0",
    }


def account_json(a: Account, long_value: Decimal, short_value: Decimal, created: datetime) -> dict[str, Any]:
    return {
        "id": ACCOUNT_ID,
        "account_number": ACCOUNT_NUMBER,
        "status": "ACTIVE",
        "crypto_status": "INACTIVE",
        "currency": "USD",
        "buying_power": money(a.buying_power),
        "regt_buying_power": money(a.buying_power),
        "non_marginable_buying_power": money(a.buying_power),
        "options_buying_power": "0",
        "cash": money(a.cash),
        "accrued_fees": "0",
        "pending_transfer_in": "0",
        "pending_transfer_out": "0",
        "portfolio_value": money(a.equity),
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "created_at": iso(created),
        "trade_suspended_by_user": False,
        "multiplier": "1",
        "shorting_enabled": True,
        "equity": money(a.equity),
        "last_equity": money(a.equity),
        "long_market_value": money(long_value),
        "short_market_value": money(short_value),
        "initial_margin": "0",
        "maintenance_margin": "0",
        "last_maintenance_margin": "0",
        "sma": "0",
        "options_approved_level": 0,
        "options_trading_level": 0,
    }


def clock_json(c: MarketClock) -> dict[str, Any]:
    # Alpaca writes the clock in New York time.
    return {
        "timestamp": c.timestamp.astimezone(NEW_YORK).isoformat(),
        "is_open": c.is_open,
        "next_open": c.next_open.astimezone(NEW_YORK).isoformat(),
        "next_close": c.next_close.astimezone(NEW_YORK).isoformat(),
    }


def calendar_json(sessions: list[tuple[datetime, datetime]]) -> list[dict[str, str]]:
    out = []
    for o, c in sessions:
        o_ny, c_ny = o.astimezone(NEW_YORK), c.astimezone(NEW_YORK)
        out.append({"date": o_ny.date().isoformat(), "open": o_ny.strftime("%H:%M"),
                    "close": c_ny.strftime("%H:%M"), "session_open": "0400", "session_close": "2000",
                    "settlement_date": o_ny.date().isoformat()})
    return out


def _bar_fields(bar: Bar) -> dict[str, Any]:
    # The models have no trade count or VWAP: a plausible count, and the bar's typical price.
    vwap = round((bar.high + bar.low + bar.close) / 3, 4)
    return {"o": bar.open, "h": bar.high, "l": bar.low, "c": bar.close, "v": bar.volume,
            "n": max(1, bar.volume // 100), "vw": vwap}


def bar_rest_json(bar: Bar) -> dict[str, Any]:
    return {"t": bar.ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **_bar_fields(bar)}


def bar_stream_msg(bar: Bar) -> dict[str, Any]:
    """A market-data stream bar; ``t`` must be packed as a msgpack Timestamp (see the server)."""
    return {"T": "b", "S": bar.symbol, "t": bar.ts, **_bar_fields(bar)}


def fill_activity_json(f: Fill, cum_qty: int, order_qty: int, order_status: str) -> dict[str, Any]:
    return {
        "id": f"{f.ts.astimezone(UTC):%Y%m%d%H%M%S%f}::{derived_uuid('activity', f.fill_id)}",
        "account_id": ACCOUNT_ID,
        "activity_type": "FILL",
        "transaction_time": iso(f.ts),
        "type": "fill" if cum_qty >= order_qty else "partial_fill",
        "price": money(f.price),
        "qty": str(f.qty),
        "side": f.side.value,
        "symbol": f.symbol,
        "leaves_qty": str(order_qty - cum_qty),
        "order_id": f.broker_order_id,
        "cum_qty": str(cum_qty),
        "order_status": order_status,
    }


# ---------------------------------------------------------------------------------------------
# Alpaca (alpaca-py models or raw JSON) -> steadyhand (the Alpaca broker)
# ---------------------------------------------------------------------------------------------


def _dec_or_none(x: Any) -> Decimal | None:
    if x is None or x == "":
        return None
    return Decimal(str(x))


def _value(x: Any) -> str:
    """An enum's value or the string itself (alpaca-py gives enums, raw JSON gives strings)."""
    return str(getattr(x, "value", x))


def status_from_alpaca(status: str, filled_qty: int) -> OrderStatus:
    if status in FROM_ALPACA_STATUS:
        return FROM_ALPACA_STATUS[status]
    if status not in _WORKING:
        return OrderStatus.SUBMITTED  # an unknown new status: still working, as far as we know
    return OrderStatus.PARTIALLY_FILLED if filled_qty > 0 else OrderStatus.SUBMITTED


def order_from_alpaca(o: Any) -> BrokerOrder:
    """A BrokerOrder from an alpaca-py ``Order`` (attributes) — whole shares only."""
    filled = int(Decimal(str(o.filled_qty or 0)))
    status = _value(o.status)
    otype = _value(o.type or o.order_type)
    return BrokerOrder(
        broker_order_id=str(o.id),
        client_order_id=o.client_order_id,
        symbol=o.symbol or "",
        side=Side(_value(o.side)),
        qty=int(Decimal(str(o.qty or 0))),
        type=OrderType(otype) if otype in OrderType._value2member_map_ else OrderType.MARKET,
        time_in_force=TimeInForce(_value(o.time_in_force))
        if _value(o.time_in_force) in TimeInForce._value2member_map_ else TimeInForce.DAY,
        limit_price=_dec_or_none(o.limit_price),
        stop_price=_dec_or_none(o.stop_price),
        status=status_from_alpaca(status, filled),
        filled_qty=filled,
        avg_fill_price=_dec_or_none(o.filled_avg_price) if filled else None,
        submitted_at=o.submitted_at or o.created_at,
        updated_at=o.updated_at or o.submitted_at or o.created_at,
        reason="" if status not in ("rejected", "canceled", "expired", "replaced") else f"alpaca: {status}",
        replaces=str(o.replaces or ""),
        replaced_by=str(o.replaced_by or ""),
    )


def position_from_alpaca(p: Any) -> Position:
    qty = int(Decimal(str(p.qty)))
    if _value(p.side) == "short" and qty > 0:
        qty = -qty
    return Position(symbol=p.symbol, qty=qty, avg_entry_price=Decimal(str(p.avg_entry_price)))


def account_from_alpaca(a: Any) -> Account:
    return Account(cash=Decimal(str(a.cash or 0)), equity=Decimal(str(a.equity or 0)),
                   buying_power=Decimal(str(a.buying_power or 0)))


def clock_from_alpaca(c: Any) -> MarketClock:
    return MarketClock(timestamp=c.timestamp.astimezone(UTC), is_open=bool(c.is_open),
                       next_open=c.next_open.astimezone(UTC), next_close=c.next_close.astimezone(UTC))


def fill_from_activity(a: dict[str, Any], client_order_id: str) -> Fill:
    """A Fill from a raw FILL account activity."""
    return Fill(
        fill_id=fill_id(a["order_id"], a["cum_qty"]),
        broker_order_id=a["order_id"],
        client_order_id=client_order_id,
        symbol=a["symbol"],
        side=Side(a["side"]),
        qty=int(Decimal(str(a["qty"]))),
        price=Decimal(str(a["price"])),
        ts=datetime.fromisoformat(a["transaction_time"].replace("Z", "+00:00")),
    )


def fill_from_trade_update(update: Any) -> Fill:
    """A Fill from an alpaca-py ``TradeUpdate`` of a fill or partial_fill event."""
    o = update.order
    return Fill(
        fill_id=fill_id(str(o.id), o.filled_qty),
        broker_order_id=str(o.id),
        client_order_id=o.client_order_id,
        symbol=o.symbol or "",
        side=Side(_value(o.side)),
        qty=int(Decimal(str(update.qty))),
        price=Decimal(str(update.price)),
        ts=update.timestamp.astimezone(UTC),
    )


def bar_from_alpaca(b: Any) -> Bar:
    """A steadyhand Bar from an alpaca-py ``Bar`` (REST or stream)."""
    ts = b.timestamp if b.timestamp.tzinfo else b.timestamp.replace(tzinfo=UTC)
    return Bar(symbol=b.symbol, ts=ts.astimezone(UTC), open=float(b.open), high=float(b.high),
               low=float(b.low), close=float(b.close), volume=int(b.volume))
