"""Matching: what happens to one open order along the market's quote path.

Pure functions of the order (its parameters frozen at submission) and the path: independent of
other orders (liquidity is unlimited and the market does not react to us), so any process
computes the same fills. :class:`~steadyhand.sim.exchange.SimExchange` applies the events in time
order to its book.
"""

from __future__ import annotations

import math
import random
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Literal

import numpy as np
from steadyhand.domain import OrderType, Side
from steadyhand.sim.market import MarketModel, QuoteArrays, quote_arrays, stable_int
from steadyhand.sim.schema import parse_iso

CENT = Decimal("0.01")
STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})
LIMIT_TYPES = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
CHUNK = timedelta(days=1)  # the path is walked at most a day at a time (bounded memory)
_EPS = 1e-9  # quotes are float cents; compare against Decimal prices with a hair of slack


def dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def cents(x: float) -> Decimal:
    return Decimal(f"{x:.2f}")


def _epoch_dt(epoch: int) -> datetime:
    return datetime.fromtimestamp(int(epoch), UTC)


def _first(mask: np.ndarray) -> int:
    """Index of the first True, or -1."""
    if not len(mask):
        return -1
    i = int(np.argmax(mask))
    return i if mask[i] else -1


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """An open order as the matcher needs it (one row of ``orders``)."""

    id: int
    broker_order_id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: int
    type: OrderType
    limit_price: Decimal | None
    stop_price: Decimal | None
    filled_qty: int
    fill_count: int
    eligible_at: datetime
    expires_at: datetime | None
    triggered: bool
    slippage_bps: float
    partial_fill_probability: float
    rng_seed: int

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> OpenOrder:
        return cls(
            id=r["id"],
            broker_order_id=r["broker_order_id"],
            client_order_id=r["client_order_id"],
            symbol=r["symbol"],
            side=Side(r["side"]),
            qty=r["qty"],
            type=OrderType(r["type"]),
            limit_price=dec(r["limit_price"]),
            stop_price=dec(r["stop_price"]),
            filled_qty=r["filled_qty"],
            fill_count=r["fill_count"],
            eligible_at=parse_iso(r["eligible_at"]),
            expires_at=parse_iso(r["expires_at"]) if r["expires_at"] else None,
            triggered=r["triggered_at"] is not None,
            slippage_bps=r["slippage_bps"],
            partial_fill_probability=r["partial_fill_probability"],
            rng_seed=r["rng_seed"],
        )


# Catch-up events, applied in time order across all orders (cash and average prices depend on
# the order fills happen in). ``rank`` orders events of the same second: trigger, fill, expiry.
@dataclass(frozen=True, slots=True)
class MatchEvent:
    ts: datetime
    rank: int
    order_id: int
    kind: Literal["trigger", "fill", "expire"]
    fill_no: int = 0
    qty: int = 0
    price: Decimal = Decimal(0)

    @property
    def key(self) -> tuple[datetime, int, int, int]:
        return (self.ts, self.order_id, self.rank, self.fill_no)



def match(market: MarketModel, o: OpenOrder, start: datetime, now: datetime,
          paths: dict[tuple[str, datetime, datetime], QuoteArrays] | None = None) -> list[MatchEvent]:
    """What happens to one order between ``start`` and ``now`` (independent of other orders:
    liquidity is unlimited and the market does not react to us)."""
    end = now if o.expires_at is None else min(now, o.expires_at)
    remaining = o.qty - o.filled_qty
    fill_no = o.fill_count
    triggered = o.triggered or o.type not in STOP_TYPES
    buy = o.side is Side.BUY
    limit = float(o.limit_price) if o.limit_price is not None else math.nan
    stop = float(o.stop_price) if o.stop_price is not None else math.nan
    events: list[MatchEvent] = []
    chunk_start = start
    while chunk_start < end and remaining > 0:
        chunk_end = min(end, chunk_start + CHUNK)
        key = (o.symbol, chunk_start, chunk_end)
        qa = paths.get(key) if paths is not None else None
        if qa is None:
            qa = quote_arrays(market, o.symbol, chunk_start, chunk_end)
            if paths is not None:
                paths[key] = qa
        i, n = 0, len(qa)
        while i < n and remaining > 0:
            if not triggered:
                j = _first(qa.ask[i:] >= stop - _EPS if buy else qa.bid[i:] <= stop + _EPS)
                if j < 0:
                    break
                i += j
                triggered = True
                events.append(MatchEvent(_epoch_dt(qa.ts[i]), 0, o.id, "trigger"))
            if o.type in LIMIT_TYPES:
                # Marketable limit: fills at the limit or better.
                j = _first(qa.ask[i:] <= limit + _EPS if buy else qa.bid[i:] >= limit - _EPS)
                if j < 0:
                    break
                i += j
                assert o.limit_price is not None  # validated at submission
                if buy:
                    price = min(o.limit_price, cents(qa.ask[i]))
                else:
                    price = max(o.limit_price, cents(qa.bid[i]))
            else:
                price = slipped(o, float(qa.ask[i] if buy else qa.bid[i]))
            fill_no += 1
            qty = fill_qty(o, remaining, fill_no)
            events.append(MatchEvent(_epoch_dt(qa.ts[i]), 1, o.id, "fill", fill_no, qty, price))
            remaining -= qty
            i += 1  # the rest of a partial fill goes on a later second
        chunk_start = chunk_end
    if remaining > 0 and o.expires_at is not None and now >= o.expires_at:
        events.append(MatchEvent(o.expires_at, 2, o.id, "expire"))
    return events


def slipped(o: OpenOrder, quote: float) -> Decimal:
    # Market and triggered stop orders pay the spread plus slippage, rounded against us.
    factor = Decimal(str(o.slippage_bps)) / Decimal(10_000)
    if o.side is Side.BUY:
        return (cents(quote) * (1 + factor)).quantize(CENT, rounding=ROUND_UP)
    return max(CENT, (cents(quote) * (1 - factor)).quantize(CENT, rounding=ROUND_DOWN))


def fill_qty(o: OpenOrder, remaining: int, fill_no: int) -> int:
    """Deterministic partial fills: the same order fills the same way in every process."""
    if remaining < 2 or o.partial_fill_probability <= 0:
        return remaining
    rng = random.Random(stable_int("partial", o.rng_seed, o.client_order_id, fill_no))
    if rng.random() < o.partial_fill_probability:
        return rng.randint(1, remaining - 1)
    return remaining
