"""The simulated exchange against real SQLite files.

Most tests drive a tiny scripted market (prices step at given times, during real XNYS sessions) so
fill prices and times are exact; the catch-up tests use the synthetic market. Time is a manual
clock the test moves; nothing sleeps.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from steadyhand.brokers.base import (
    Broker,
    DuplicateClientOrderId,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
    TransientBrokerError,
    UnknownOutcome,
    submit_each,
)
from steadyhand.domain import Bar, OrderSpec, OrderStatus, OrderType, Side, TimeInForce
from steadyhand.domain import market_hours as mh
from steadyhand.sim.clock import anchor_clock
from steadyhand.sim.exchange import SimExchange
from steadyhand.sim.faults import clear_fault, set_fault
from steadyhand.sim.market import Quote, SyntheticMarket, quote_arrays
from steadyhand.sim.replay import ReplayMarket


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


MON = utc(2026, 11, 23, 15, 0)  # Monday, mid-session (open 14:30, close 21:00 UTC)


@dataclass
class ManualClock:
    t: datetime

    def now(self) -> datetime:
        return self.t

    def advance(self, **kwargs: float) -> None:
        self.t += timedelta(**kwargs)

    def set(self, t: datetime) -> None:
        self.t = t


def _ceil(t: datetime) -> int:
    return int(t.replace(microsecond=0).timestamp()) + (1 if t.microsecond else 0)


@dataclass
class StepMarket:
    """Bid/ask that step at given times; quotes only while XNYS is open. Only ``path`` and
    ``quote`` are provided (no ``path_arrays``), so the exchange's generic path is exercised."""

    steps: dict[str, list[tuple[datetime, float, float]]] = field(default_factory=dict)

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.steps)

    def at(self, symbol: str, t: datetime, bid: float, ask: float) -> None:
        self.steps[symbol].append((t, bid, ask))
        self.steps[symbol].sort(key=lambda s: s[0])

    def _price(self, symbol: str, t: datetime) -> tuple[float, float]:
        current = self.steps[symbol][0]
        for step in self.steps[symbol]:
            if step[0] <= t:
                current = step
        return current[1], current[2]

    def quote(self, symbol: str, t: datetime) -> Quote | None:
        if not mh.is_open(t):
            return None
        bid, ask = self._price(symbol, t)
        return Quote(symbol, t.replace(microsecond=0), bid, ask)

    def path(self, symbol: str, t0: datetime, t1: datetime) -> list[Quote]:
        steps = self.steps[symbol]
        step_epochs = np.array([st[0].timestamp() for st in steps])
        out: list[Quote] = []
        for o, c in mh.sessions_between(t0, t1):
            seconds = np.arange(_ceil(max(o, t0)), _ceil(min(c, t1)))  # whole s, t0 <= s < t1
            idx = np.searchsorted(step_epochs, seconds, side="right") - 1
            for sec, i in zip(seconds, idx, strict=True):
                _, bid, ask = steps[max(int(i), 0)]
                out.append(Quote(symbol, datetime.fromtimestamp(int(sec), UTC), bid, ask))
        return out

    def bar(self, symbol: str, minute_start: datetime) -> Bar | None:
        return None

    def history(self, symbol: str, end: datetime, count: int) -> list[Bar]:
        return []


def step_market() -> StepMarket:
    return StepMarket(
        steps={
            "AAA": [(utc(2026, 11, 1), 99.98, 100.00)],
            "BBB": [(utc(2026, 11, 1), 49.99, 50.01)],
        }
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(MON)


@pytest.fixture
def market() -> StepMarket:
    return step_market()


@pytest.fixture
def make(tmp_path: Path, market: StepMarket, clock: ManualClock) -> Iterator[Callable[..., SimExchange]]:
    opened: list[SimExchange] = []

    def factory(**kwargs: object) -> SimExchange:
        options: dict[str, object] = {"partial_fill_probability": 0.0, "slippage_bps": 0.0}
        options.update(kwargs)
        db = options.pop("db_path", tmp_path / "exchange.db")
        m = options.pop("market", market)
        c = options.pop("clock", clock)
        ex = SimExchange(db, m, c, **options)  # type: ignore[arg-type]
        opened.append(ex)
        return ex

    yield factory
    for ex in opened:
        ex.close()


def spec(cid: str, side: Side = Side.BUY, qty: int = 10, symbol: str = "AAA", **kw: object) -> OrderSpec:
    return OrderSpec(client_order_id=cid, symbol=symbol, side=side, qty=qty, **kw)  # type: ignore[arg-type]


def limit(cid: str, side: Side, price: str, **kw: object) -> OrderSpec:
    return spec(cid, side, type=OrderType.LIMIT, limit_price=Decimal(price), **kw)


# --- basics ----------------------------------------------------------------------------------


def test_it_is_a_broker(make: Callable[..., SimExchange]) -> None:
    ex = make()
    assert isinstance(ex, Broker) and ex.name == "sim"


def test_market_buy_fills_at_the_ask_after_latency(
    make: Callable[..., SimExchange], clock: ManualClock
) -> None:
    ex = make()
    order = ex.submit(spec("m1"))
    assert order.status is OrderStatus.SUBMITTED and order.filled_qty == 0
    assert order.submitted_at == MON and len(order.broker_order_id) == 36
    assert ex.fills_for(order.broker_order_id) == []  # latency: nothing yet at the same instant
    # Eligible at +50 ms, so the first second it can trade in is +1 s; a fill in second s is
    # known once that second has passed (the catch-up window [advanced_to, now) is half-open).
    clock.advance(seconds=1)
    assert ex.get_by_client_id("m1").status is OrderStatus.SUBMITTED  # type: ignore[union-attr]
    clock.advance(seconds=1)
    done = ex.get_by_client_id("m1")
    assert done is not None and done.status is OrderStatus.FILLED
    assert done.filled_qty == 10 and done.avg_fill_price == Decimal("100.00")
    (fill,) = ex.fills_for(order.broker_order_id)
    assert fill.ts == MON + timedelta(seconds=1) and fill.price == Decimal("100.00") and fill.qty == 10
    assert fill.side is Side.BUY and fill.client_order_id == "m1"
    (pos,) = ex.positions()
    assert (pos.symbol, pos.qty, pos.avg_entry_price) == ("AAA", 10, Decimal("100"))
    assert ex.account().cash == Decimal("99000.00")
    assert ex.open_orders() == []


def test_market_orders_pay_slippage_on_the_right_side(
    make: Callable[..., SimExchange], clock: ManualClock
) -> None:
    ex = make(slippage_bps=10.0)
    ex.submit(spec("b"))
    ex.submit(spec("s", Side.SELL, symbol="BBB"))
    clock.advance(seconds=2)
    buy, sell = ex.get_by_client_id("b"), ex.get_by_client_id("s")
    assert buy is not None and sell is not None
    assert buy.avg_fill_price == Decimal("100.10")  # ask 100.00 + 10 bps
    assert sell.avg_fill_price == Decimal("49.94")  # bid 49.99 - 10 bps = 49.940 (rounded down)
    assert {p.symbol: p.qty for p in ex.positions()} == {"AAA": 10, "BBB": -10}  # shorting allowed


def test_limit_orders_rest_until_the_price_is_there(
    make: Callable[..., SimExchange], market: StepMarket, clock: ManualClock
) -> None:
    ex = make()
    buy = ex.submit(limit("lb", Side.BUY, "99.50"))
    sell = ex.submit(limit("ls", Side.SELL, "101.00"))
    market.at("AAA", MON + timedelta(minutes=10), 99.38, 99.40)  # ask through the buy limit
    market.at("AAA", MON + timedelta(minutes=20), 101.20, 101.22)  # bid through the sell limit
    clock.advance(minutes=9, seconds=59)
    assert {o.client_order_id for o in ex.open_orders()} == {"lb", "ls"}
    clock.advance(minutes=30)
    (fb,) = ex.fills_for(buy.broker_order_id)
    (fs,) = ex.fills_for(sell.broker_order_id)
    assert (fb.ts, fb.price) == (MON + timedelta(minutes=10), Decimal("99.40"))  # better than limit
    assert (fs.ts, fs.price) == (MON + timedelta(minutes=20), Decimal("101.20"))
    assert ex.positions() == []


def test_marketable_limit_fills_at_the_limit_or_better(
    make: Callable[..., SimExchange], clock: ManualClock
) -> None:
    ex = make(slippage_bps=50.0)  # no slippage on limit orders
    order = ex.submit(limit("lb", Side.BUY, "100.50"))
    clock.advance(seconds=2)
    assert [f.price for f in ex.fills_for(order.broker_order_id)] == [Decimal("100.00")]


def test_stop_orders_trigger_then_fill_as_market(
    make: Callable[..., SimExchange], market: StepMarket, clock: ManualClock
) -> None:
    ex = make()
    buy = ex.submit(spec("sb", type=OrderType.STOP, stop_price=Decimal("101.00")))
    sell = ex.submit(spec("ss", Side.SELL, symbol="BBB", type=OrderType.STOP, stop_price=Decimal("49.00")))
    market.at("AAA", MON + timedelta(minutes=5), 100.98, 101.00)  # ask reaches the stop
    market.at("AAA", MON + timedelta(minutes=6), 101.48, 101.50)
    market.at("BBB", MON + timedelta(minutes=7), 48.95, 48.97)  # bid falls through the stop
    clock.advance(minutes=4)
    assert len(ex.open_orders()) == 2
    clock.advance(minutes=10)
    (fb,) = ex.fills_for(buy.broker_order_id)
    (fs,) = ex.fills_for(sell.broker_order_id)
    assert (fb.ts, fb.price) == (MON + timedelta(minutes=5), Decimal("101.00"))
    assert (fs.ts, fs.price) == (MON + timedelta(minutes=7), Decimal("48.95"))


def test_stop_limit_trigger_survives_between_calls(
    make: Callable[..., SimExchange], market: StepMarket, clock: ManualClock
) -> None:
    ex = make()
    order = ex.submit(
        spec("sl", type=OrderType.STOP_LIMIT, stop_price=Decimal("101.00"), limit_price=Decimal("101.10"))
    )
    market.at("AAA", MON + timedelta(minutes=5), 101.48, 101.50)  # triggers, but above the limit
    market.at("AAA", MON + timedelta(minutes=6), 100.48, 100.50)  # back under the stop, under limit
    clock.advance(minutes=5, seconds=30)
    assert ex.get_by_client_id("sl").status is OrderStatus.SUBMITTED  # type: ignore[union-attr]
    clock.advance(minutes=5)
    # Triggered at 5:00 in the earlier catch-up; now it is a limit at 101.10 and the ask is 100.50.
    (fill,) = ex.fills_for(order.broker_order_id)
    assert (fill.ts, fill.price) == (MON + timedelta(minutes=6), Decimal("100.50"))


def test_untriggered_stop_limit_does_not_fill_as_limit(
    make: Callable[..., SimExchange], market: StepMarket, clock: ManualClock
) -> None:
    ex = make()
    ex.submit(
        spec("sl", type=OrderType.STOP_LIMIT, stop_price=Decimal("101.00"), limit_price=Decimal("101.10"))
    )
    clock.advance(hours=1)  # ask 100.00 <= limit all along, but the stop never triggered
    assert ex.get_by_client_id("sl").filled_qty == 0  # type: ignore[union-attr]


# --- partial fills ---------------------------------------------------------------------------


def test_partial_fills_then_completion_deterministically(
    tmp_path: Path, make: Callable[..., SimExchange], clock: ManualClock
) -> None:
    ex = make(partial_fill_probability=1.0)
    order = ex.submit(spec("p1", qty=50))
    clock.advance(seconds=2)
    first = ex.get_by_client_id("p1")
    assert first is not None and first.status is OrderStatus.PARTIALLY_FILLED
    assert 1 <= first.filled_qty < 50
    assert [o.client_order_id for o in ex.open_orders()] == ["p1"]
    clock.advance(minutes=2)
    done = ex.get_by_client_id("p1")
    assert done is not None and done.status is OrderStatus.FILLED and done.filled_qty == 50
    fills = ex.fills_for(order.broker_order_id)
    assert len(fills) >= 2 and sum(f.qty for f in fills) == 50
    assert len({f.fill_id for f in fills}) == len(fills)
    assert [f.ts for f in fills] == sorted({f.ts for f in fills})  # one fill per second at most
    assert ex.positions()[0].qty == 50
    # Same seed and client id on another book: the same split, whoever does the catching up.
    other = make(db_path=tmp_path / "other.db", clock=ManualClock(MON), partial_fill_probability=1.0)
    order2 = other.submit(spec("p1", qty=50))
    other._clock.set(MON + timedelta(minutes=3))  # type: ignore[attr-defined]
    assert [f.qty for f in other.fills_for(order2.broker_order_id)] == [f.qty for f in fills]


# --- time in force ---------------------------------------------------------------------------


def test_day_order_expires_at_the_close(make: Callable[..., SimExchange], clock: ManualClock) -> None:
    ex = make()
    ex.submit(limit("d1", Side.BUY, "90.00"))
    ex.submit(limit("g1", Side.BUY, "90.00", time_in_force=TimeInForce.GTC))
    clock.set(utc(2026, 11, 23, 20, 59, 59))
    assert len(ex.open_orders()) == 2
    clock.set(utc(2026, 11, 23, 21, 0, 1))
    day = ex.get_by_client_id("d1")
    assert day is not None and day.status is OrderStatus.EXPIRED
    assert day.updated_at == utc(2026, 11, 23, 21, 0)
    assert [o.client_order_id for o in ex.open_orders()] == ["g1"]  # gtc survives the night
    clock.set(utc(2026, 11, 25, 15))
    assert [o.client_order_id for o in ex.open_orders()] == ["g1"]


def test_day_order_expires_at_an_early_close(make: Callable[..., SimExchange], clock: ManualClock) -> None:
    ex = make()
    clock.set(utc(2026, 11, 27, 15))  # the day after Thanksgiving closes at 18:00 UTC
    ex.submit(limit("d1", Side.BUY, "90.00"))
    clock.set(utc(2026, 11, 27, 17, 59, 59))
    assert ex.get_by_client_id("d1").status is OrderStatus.SUBMITTED  # type: ignore[union-attr]
    clock.set(utc(2026, 11, 27, 18, 0, 0, 500_000))
    order = ex.get_by_client_id("d1")
    assert order is not None and order.status is OrderStatus.EXPIRED
    assert order.updated_at == utc(2026, 11, 27, 18)


def test_orders_submitted_while_closed_wait_for_the_open(
    make: Callable[..., SimExchange], market: StepMarket, clock: ManualClock
) -> None:
    ex = make()
    clock.set(utc(2026, 11, 25, 22))  # after Wednesday's close; Thursday is a holiday
    market.at("AAA", utc(2026, 11, 27, 14, 30), 104.00, 104.02)
    mkt = ex.submit(spec("m"))
    day = ex.submit(limit("d", Side.BUY, "90.00"))
    clock.set(utc(2026, 11, 27, 14, 29))
    assert len(ex.open_orders()) == 2
    clock.set(utc(2026, 11, 27, 14, 31))
    (fill,) = ex.fills_for(mkt.broker_order_id)
    assert (fill.ts, fill.price) == (utc(2026, 11, 27, 14, 30), Decimal("104.02"))
    # The day order submitted overnight belongs to Friday's (early-closing) session.
    clock.set(utc(2026, 11, 27, 18, 1))
    assert ex.get_by_client_id("d").status is OrderStatus.EXPIRED  # type: ignore[union-attr]
    assert ex.get_by_client_id("d").updated_at == utc(2026, 11, 27, 18)  # type: ignore[union-attr]
    assert day.status is OrderStatus.SUBMITTED


def test_gtc_order_fills_on_a_later_day(
    make: Callable[..., SimExchange], market: StepMarket, clock: ManualClock
) -> None:
    ex = make()
    order = ex.submit(limit("g", Side.BUY, "95.00", time_in_force=TimeInForce.GTC))
    market.at("AAA", utc(2026, 11, 24, 22), 94.00, 94.02)  # after Tuesday's close
    clock.set(utc(2026, 11, 25, 14, 35))  # nobody called for two days
    (fill,) = ex.fills_for(order.broker_order_id)
    assert (fill.ts, fill.price) == (utc(2026, 11, 25, 14, 30), Decimal("94.02"))


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (spec("x", qty=0), "qty"),
        (spec("x", symbol="ZZZ"), "unknown symbol"),
        (spec("x", type=OrderType.LIMIT), "limit_price is required"),
        (spec("x", type=OrderType.STOP), "stop_price is required"),
        (spec("x", type=OrderType.STOP_LIMIT, stop_price=Decimal("101")), "limit_price is required"),
        (spec("x", type=OrderType.LIMIT, limit_price=Decimal("-1")), "positive"),
        (spec("x", type=OrderType.LIMIT, limit_price=Decimal("99.001")), "sub-penny"),
    ],
)
def test_bad_orders_are_rejected(make: Callable[..., SimExchange], bad: OrderSpec, message: str) -> None:
    ex = make()
    with pytest.raises(OrderRejected, match=message):
        ex.submit(bad)
    assert ex.get_by_client_id("x") is None


def test_duplicate_client_order_id(make: Callable[..., SimExchange]) -> None:
    ex = make()
    first = ex.submit(spec("dup"))
    with pytest.raises(DuplicateClientOrderId):
        ex.submit(spec("dup", qty=3))
    with pytest.raises(DuplicateClientOrderId):
        make().submit(spec("dup"))  # another connection to the same book
    assert ex.get_by_client_id("dup") == first


def test_insufficient_buying_power(make: Callable[..., SimExchange], clock: ManualClock) -> None:
    ex = make(start_cash=1_000.0)
    with pytest.raises(OrderRejected, match="insufficient buying power"):
        ex.submit(spec("big", qty=11))  # 11 * 100.00 > 1000
    with pytest.raises(OrderRejected, match="insufficient buying power"):
        ex.submit(limit("lim", Side.BUY, "101.00"))  # a limit buy is reserved at its limit
    ex.submit(spec("ok", qty=10))  # exactly 1000.00
    ex.submit(spec("short", Side.SELL, qty=20, symbol="BBB"))  # selling needs no cash
    assert ex.get_by_client_id("big") is None
    clock.advance(seconds=2)
    assert ex.account().cash == Decimal("1000.00") - Decimal("1000.00") + 20 * Decimal("49.99")


def test_fault_hook_points(make: Callable[..., SimExchange]) -> None:
    class Boom(Exception):
        pass

    def at(point: str) -> Callable[[str], None]:
        def hook(p: str) -> None:
            if p == point:
                raise Boom(p)

        return hook

    with pytest.raises(Boom):
        make(fault=at("submit:before_commit")).submit(spec("before"))
    with pytest.raises(Boom):
        make(fault=at("submit:after_commit")).submit(spec("after"))
    ex = make()
    assert ex.get_by_client_id("before") is None  # rolled back: the exchange never saw it
    assert ex.get_by_client_id("after") is not None  # committed: only the reply was lost


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_semantics(make: Callable[..., SimExchange], market: StepMarket, clock: ManualClock) -> None:
    ex = make()
    resting = ex.submit(limit("r", Side.BUY, "99.00"))
    ex.cancel(resting.broker_order_id)
    canceled = ex.get_by_client_id("r")
    assert canceled is not None and canceled.status is OrderStatus.CANCELED
    with pytest.raises(NotCancelable):
        ex.cancel(resting.broker_order_id)
    with pytest.raises(OrderNotFound):
        ex.cancel("no-such-order")
    market.at("AAA", MON + timedelta(minutes=1), 98.00, 98.02)
    clock.advance(minutes=5)
    assert ex.fills_for(resting.broker_order_id) == []  # a canceled order never fills
    filled = ex.submit(spec("f"))
    clock.advance(seconds=2)
    with pytest.raises(NotCancelable):
        ex.cancel(filled.broker_order_id)  # catch-up first: it filled a second ago


# --- catch-up --------------------------------------------------------------------------------


def test_catch_up_after_downtime_fills_at_the_path_prices(tmp_path: Path) -> None:
    market = SyntheticMarket(7, ["AAPL", "SPY"])
    clock = ManualClock(utc(2026, 11, 23, 15))
    ex = SimExchange(tmp_path / "exchange.db", market, clock, partial_fill_probability=0.0, slippage_bps=0.0)
    q = market.quote("AAPL", clock.now())
    assert q is not None
    mkt = ex.submit(OrderSpec("m", "AAPL", Side.BUY, 5))
    # GTC limits a little under / over the market: filled on some later second, or never.
    lo = Decimal(f"{q.ask * 0.99:.2f}")
    near = ex.submit(OrderSpec("near", "AAPL", Side.BUY, 5, OrderType.LIMIT, TimeInForce.GTC, limit_price=lo))
    never = ex.submit(
        OrderSpec("never", "AAPL", Side.BUY, 5, OrderType.LIMIT, TimeInForce.GTC, limit_price=Decimal("1.00"))
    )
    ex.submit(
        OrderSpec("day", "SPY", Side.BUY, 5, OrderType.LIMIT, TimeInForce.DAY, limit_price=Decimal("1.00"))
    )
    clock.set(utc(2026, 12, 4, 16))  # ten calendar days later, no calls in between
    started = time.perf_counter()
    open_ids = [o.client_order_id for o in ex.open_orders()]
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, elapsed
    assert ex.get_by_client_id("day").status is OrderStatus.EXPIRED  # type: ignore[union-attr]
    assert ex.get_by_client_id("day").updated_at == utc(2026, 11, 23, 21)  # type: ignore[union-attr]
    (mfill,) = ex.fills_for(mkt.broker_order_id)
    first_second = utc(2026, 11, 23, 15, 0, 1)
    assert mfill.ts == first_second
    assert mfill.price == Decimal(f"{market.quote('AAPL', first_second).ask:.2f}")  # type: ignore[union-attr]
    assert open_ids == ["never"]  # with this seed the 1%-under limit is reached on a later day
    # ... at the first second the ask was at or under the limit, at that ask.
    (nf,) = ex.fills_for(near.broker_order_id)
    assert nf.ts.date() > utc(2026, 11, 23).date()
    first = near.submitted_at + timedelta(seconds=1)
    path = quote_arrays(market, "AAPL", first, nf.ts + timedelta(seconds=1))
    assert path.ask[-1] <= float(lo) and (path.ask[:-1] > float(lo)).all()
    assert nf.price == min(lo, Decimal(f"{path.ask[-1]:.2f}"))
    assert ex.get_by_client_id("never") == never  # untouched: still SUBMITTED, never updated
    ex.close()


def test_exchange_over_a_replay_market(tmp_path: Path) -> None:
    csv = tmp_path / "bars.csv"
    csv.write_text(
        "ts,symbol,open,high,low,close,volume\n"
        "2026-11-23T14:30:00Z,AAA,10.00,10.20,9.90,10.10,100\n"
        "2026-11-23T14:31:00Z,AAA,10.10,10.30,10.00,10.20,100\n"
        "2026-11-23T14:32:00Z,AAA,nan,nan,nan,nan,100\n"
        "2026-11-23T14:33:00Z,AAA,10.20,10.60,10.20,10.50,100\n"
    )
    market = ReplayMarket(csv, spread_bps=0.0)
    clock = ManualClock(utc(2026, 11, 23, 14, 30, 30))
    ex = SimExchange(tmp_path / "exchange.db", market, clock, slippage_bps=0.0, partial_fill_probability=0.0)
    mkt = ex.submit(OrderSpec("m", "AAA", Side.BUY, 10))
    lim = ex.submit(OrderSpec("l", "AAA", Side.SELL, 10, OrderType.LIMIT, limit_price=Decimal("10.40")))
    clock.set(utc(2026, 11, 23, 14, 40))
    # One quote per bar, at the bar's start, priced at its close (bid = close; with no spread the
    # ask is still a cent above); the NaN bar is no quote at all.
    assert [(f.ts, f.price) for f in ex.fills_for(mkt.broker_order_id)] == [
        (utc(2026, 11, 23, 14, 31), Decimal("10.21"))
    ]
    assert [(f.ts, f.price) for f in ex.fills_for(lim.broker_order_id)] == [
        (utc(2026, 11, 23, 14, 33), Decimal("10.50"))
    ]
    ex.close()


def _replay_walk(path: Path, symbols: list[str], start: datetime, minutes: int) -> ReplayMarket:
    rng = random.Random(3)
    lines = ["ts,symbol,open,high,low,close,volume"]
    price = {s: 100.0 for s in symbols}
    for m in range(minutes):
        ts = (start + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for s in symbols:
            price[s] *= 1 + rng.gauss(0, 0.002)
            lines.append(f"{ts},{s},{price[s]:.2f},{price[s]:.2f},{price[s]:.2f},{price[s]:.2f},100")
    path.write_text("\n".join(lines) + "\n")
    return ReplayMarket(path)


@pytest.mark.parametrize("kind", ["synthetic", "replay"])
def test_catch_up_in_one_jump_equals_catch_up_in_small_steps(tmp_path: Path, kind: str) -> None:
    # On a minute-bar replay most small steps see no new quote (the catch-up skips those orders
    # without matching them): skipping must not change a single fill.
    def run(name: str, step: timedelta | None) -> list[object]:
        if kind == "synthetic":
            market: SyntheticMarket | ReplayMarket = SyntheticMarket(5, ["AAPL", "MSFT"])
        else:
            market = _replay_walk(tmp_path / f"{name}.csv", ["AAPL", "MSFT"], utc(2026, 11, 24, 14, 30), 300)
        clock = ManualClock(utc(2026, 11, 24, 15))
        ex = SimExchange(tmp_path / f"{name}.db", market, clock, partial_fill_probability=0.5)
        for i, sym in enumerate(["AAPL", "MSFT"]):
            q = market.quote(sym, clock.now())
            assert q is not None
            for k, pct in enumerate((0.998, 0.995, 1.003)):
                price = Decimal(f"{q.mid * pct:.2f}")
                side = Side.BUY if pct < 1 else Side.SELL
                ex.submit(
                    OrderSpec(f"{i}-{k}", sym, side, 37, OrderType.LIMIT, TimeInForce.GTC, limit_price=price)
                )
            ex.submit(OrderSpec(f"{i}-m", sym, Side.BUY, 41))
            stop = Decimal(f"{q.bid * 0.997:.2f}")
            ex.submit(
                OrderSpec(f"{i}-s", sym, Side.SELL, 13, OrderType.STOP, TimeInForce.GTC, stop_price=stop)
            )
        if kind == "replay":  # and a day order that rests until it expires at the close, after the last bar
            q = market.quote("AAPL", clock.now())
            assert q is not None
            ex.submit(OrderSpec("day", "AAPL", Side.BUY, 5, OrderType.LIMIT, limit_price=Decimal(f"{q.mid * 0.5:.2f}")))
        end = utc(2026, 11, 25, 20) if kind == "synthetic" else utc(2026, 11, 24, 21, 30)
        if step is None:
            clock.set(end)
            ex.positions()
        else:
            while clock.now() < end:
                clock.advance(seconds=step.total_seconds())
                ex.account()
        rows = ex._rows("SELECT client_order_id, qty, price, ts FROM fills")
        state = sorted((datetime.fromisoformat(r[3]), r[0], r[1], Decimal(r[2])) for r in rows)
        state.append(ex.account().cash)  # type: ignore[arg-type]
        state.extend(sorted((o.client_order_id, o.status.value) for o in ex.all_orders()))
        ex.close()
        return state

    jump = run("jump", None)
    steps = run("steps", timedelta(minutes=17, seconds=13) if kind == "synthetic" else timedelta(seconds=7))
    assert len(jump) >= 7  # market orders, some limits and stops, partial fills
    assert jump == steps


def test_two_instances_share_one_book(make: Callable[..., SimExchange], clock: ManualClock) -> None:
    a, b = make(), make()
    resting = a.submit(limit("r", Side.BUY, "99.00"))
    a.submit(spec("m", qty=7))
    assert b.get_by_client_id("r") == resting
    assert [o.client_order_id for o in b.open_orders()] == ["r", "m"]
    b.cancel(resting.broker_order_id)
    assert a.get_by_client_id("r").status is OrderStatus.CANCELED  # type: ignore[union-attr]
    clock.advance(seconds=2)
    # Both catch up (whoever comes first does the work); the fill is booked once.
    assert b.positions()[0].qty == 7
    assert a.positions()[0].qty == 7
    m = a.get_by_client_id("m")
    assert m is not None and len(a.fills_for(m.broker_order_id)) == 1
    assert a.account() == b.account()


_CHILD = """
import sys, time
from datetime import datetime
from steadyhand.domain import Side
from steadyhand.brokers.base import DuplicateClientOrderId
from steadyhand.domain import OrderSpec
from steadyhand.sim.exchange import SimExchange
from steadyhand.sim.faults import clear_fault, set_fault
from steadyhand.sim.clock import SimClock
from steadyhand.sim.market import SyntheticMarket
db, name, anchor_sim, anchor_real = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
clock = SimClock(datetime.fromisoformat(anchor_sim), anchor_real, speed=600.0)
ex = SimExchange(db, SyntheticMarket(7, ["AAPL"]), clock, partial_fill_probability=0.3)
print("ready", flush=True)
sys.stdin.readline()  # start together
shared = "ok"
for i in range(15):
    ex.submit(OrderSpec(f"{name}-{i}", "AAPL", Side.BUY if i % 3 else Side.SELL, 1 + i))
    ex.positions()
    ex.poll("0")
    if i == 7:
        try:
            ex.submit(OrderSpec("shared", "AAPL", Side.BUY, 1))
        except DuplicateClientOrderId:
            shared = "dup"
print(shared, flush=True)
ex.close()
"""


def test_two_processes_trade_on_one_book(tmp_path: Path) -> None:
    db = tmp_path / "exchange.db"
    anchor_sim, anchor_real = MON, time.time()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db), name, anchor_sim.isoformat(), repr(anchor_real)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    outcomes = sorted(child.communicate(timeout=60)[0].strip() for child in children)
    assert [child.returncode for child in children] == [0, 0]
    assert outcomes == ["dup", "ok"]  # exactly one process got the shared client order id
    # Much later, a third instance sees everything filled, each fill booked once.
    ex = SimExchange(db, SyntheticMarket(7, ["AAPL"]), ManualClock(utc(2026, 11, 23, 20)))
    assert ex.open_orders() == []
    fills = ex._rows("SELECT client_order_id, side, qty FROM fills")
    per_order: dict[str, int] = {}
    for cid, _, qty in fills:
        per_order[cid] = per_order.get(cid, 0) + qty
    expected = {f"{n}-{i}": 1 + i for n in ("a", "b") for i in range(15)} | {"shared": 1}
    assert per_order == expected
    net = sum(q if side == "buy" else -q for _, side, q in fills)
    assert ex.positions()[0].qty == net
    ex.close()


def test_book_survives_reopening(tmp_path: Path, market: StepMarket, clock: ManualClock) -> None:
    ex = SimExchange(tmp_path / "exchange.db", market, clock, slippage_bps=0.0)
    ex.submit(spec("m"))
    clock.advance(seconds=5)
    cash = ex.account().cash
    ex.close()
    again = SimExchange(tmp_path / "exchange.db", market, clock, start_cash=5.0)  # funded already
    assert again.account().cash == cash
    assert again.positions()[0].qty == 10
    again.close()


# --- positions and account -------------------------------------------------------------------


def test_average_entry_through_adds_reductions_and_a_flip(
    make: Callable[..., SimExchange], market: StepMarket, clock: ManualClock
) -> None:
    ex = make()

    def trade(cid: str, side: Side, qty: int, ask: float) -> None:
        market.at("AAA", clock.now(), ask - 0.02, ask)  # sells fill at the bid: ask - 0.02
        ex.submit(spec(cid, side, qty))
        clock.advance(seconds=2)

    trade("1", Side.BUY, 10, 100.00)
    trade("2", Side.BUY, 10, 102.00)
    assert ex.positions()[0].avg_entry_price == Decimal("101")
    trade("3", Side.SELL, 15, 110.02)  # reducing keeps the cost of what is left
    assert (ex.positions()[0].qty, ex.positions()[0].avg_entry_price) == (5, Decimal("101"))
    trade("4", Side.SELL, 10, 99.02)  # through zero: the short's cost is this fill
    (pos,) = ex.positions()
    assert (pos.qty, pos.avg_entry_price) == (-5, Decimal("99.00"))
    trade("5", Side.BUY, 5, 98.00)
    assert ex.positions() == []
    expected_cash = Decimal("100000") - 1000 - 1020 + 15 * Decimal("110.00") + 10 * Decimal("99.00") - 5 * 98
    acct = ex.account()
    assert acct.cash == expected_cash and acct.equity == expected_cash and acct.buying_power == expected_cash


def test_equity_marks_positions_at_the_mid(
    make: Callable[..., SimExchange], market: StepMarket, clock: ManualClock
) -> None:
    ex = make()
    ex.submit(spec("b", qty=10))
    ex.submit(spec("s", Side.SELL, qty=4, symbol="BBB"))
    clock.advance(seconds=2)
    market.at("AAA", clock.now(), 109.98, 110.02)
    acct = ex.account()
    cash = Decimal("100000") - 10 * Decimal("100.00") + 4 * Decimal("49.99")
    assert acct.cash == cash
    assert acct.equity == cash + 10 * Decimal("110.00") - 4 * Decimal("50.00")
    # Closed (weekend): marked at the last quote of the latest session.
    clock.set(utc(2026, 11, 28, 12))
    assert ex.account().equity == acct.equity


def test_market_clock(make: Callable[..., SimExchange], clock: ManualClock) -> None:
    ex = make()
    c = ex.clock()
    assert (c.timestamp, c.is_open) == (MON, True)
    assert (c.next_open, c.next_close) == (utc(2026, 11, 24, 14, 30), utc(2026, 11, 23, 21))
    clock.set(utc(2026, 11, 26, 15))
    c = ex.clock()
    assert not c.is_open
    assert (c.next_open, c.next_close) == (utc(2026, 11, 27, 14, 30), utc(2026, 11, 27, 18))


# --- poll ------------------------------------------------------------------------------------


def test_poll_cursor_semantics(make: Callable[..., SimExchange], clock: ManualClock) -> None:
    ex = make()
    ex.submit(spec("old"))
    start = ex.poll(None)
    assert start.orders == () and start.fills == ()  # nothing old
    order = ex.submit(limit("new", Side.BUY, "99.00"))
    upd = ex.poll(start.cursor)
    assert [o.client_order_id for o in upd.orders] == ["new"] and upd.fills == ()
    assert upd.orders[0].status is OrderStatus.SUBMITTED
    assert ex.poll(upd.cursor).orders == ()
    clock.advance(seconds=2)  # "old" (a market order) has filled by now
    upd2 = ex.poll(upd.cursor)
    assert [(o.client_order_id, o.status) for o in upd2.orders] == [("old", OrderStatus.FILLED)]
    assert [f.client_order_id for f in upd2.fills] == ["old"]
    assert int(upd2.cursor) > int(upd.cursor)
    ex.cancel(order.broker_order_id)
    upd3 = ex.poll(upd2.cursor)
    assert [(o.client_order_id, o.status) for o in upd3.orders] == [("new", OrderStatus.CANCELED)]
    assert ex.poll(upd2.cursor) == upd3  # re-polling an old cursor repeats, nothing is consumed
    with pytest.raises(ValueError):
        ex.poll("garbage")


def test_poll_sees_changes_made_by_another_instance(make: Callable[..., SimExchange]) -> None:
    a, b = make(), make()
    cursor = b.poll(None).cursor
    a.submit(spec("x"))
    assert [o.client_order_id for o in b.poll(cursor).orders] == ["x"]


# --- the clock anchor ------------------------------------------------------------------------


def test_anchor_clock_starts_at_the_latest_open_and_persists(tmp_path: Path) -> None:
    db = tmp_path / "exchange.db"
    before = mh.previous_open(datetime.now(UTC))
    first = anchor_clock(db, speed=60.0)
    assert first.anchor_sim in (before, mh.previous_open(datetime.now(UTC)))  # a session may open meanwhile
    assert first.speed == 60.0
    again = anchor_clock(db, speed=60.0, start=utc(2026, 1, 5, 15))  # start only counts the first time
    assert again == first
    faster = anchor_clock(db, speed=600.0)
    assert faster.speed == 600.0
    # Re-anchored: the same simulated now, continuing from there at the new speed.
    real = time.time()
    assert abs((faster.at_real(real) - first.at_real(real)).total_seconds()) < 0.5 * 60
    assert faster.anchor_real >= first.anchor_real
    assert anchor_clock(db, speed=600.0) == faster


def test_anchor_clock_with_a_start_and_in_real_mode(tmp_path: Path) -> None:
    start = utc(2026, 11, 23, 14, 30)
    replay = anchor_clock(tmp_path / "a.db", speed=120.0, start=start)
    assert replay.anchor_sim == start and replay.speed == 120.0
    real = anchor_clock(tmp_path / "b.db", speed=60.0, mode="real")
    assert real.speed == 1.0
    assert abs((real.now() - datetime.now(UTC)).total_seconds()) < 1.0
    assert anchor_clock(tmp_path / "b.db", speed=5.0, mode="real") == real
    with pytest.raises(ValueError):
        anchor_clock(tmp_path / "c.db", speed=1.0, mode="warp")


def test_exchange_and_anchor_share_the_file(tmp_path: Path, market: StepMarket) -> None:
    db = tmp_path / "exchange.db"
    clock = anchor_clock(db, speed=1.0, start=MON)
    ex = SimExchange(db, market, clock)
    assert abs((ex.clock().timestamp - MON).total_seconds()) < 5
    ex.close()
    assert anchor_clock(db, speed=1.0).anchor_sim == MON


# --- queries for the exchange server -----------------------------------------------------------


def test_list_orders_filters_and_orders_like_alpacas_listing(
    make: Callable[..., SimExchange], clock: ManualClock
) -> None:
    ex = make()
    ex.submit(spec("q-buy-a"))  # fills: a market order
    clock.advance(seconds=1)
    ex.submit(limit("q-rest-a", Side.BUY, "90.00"))  # rests
    clock.advance(seconds=1)
    ex.submit(spec("q-sell-b", Side.SELL, qty=5, symbol="BBB", type=OrderType.LIMIT, limit_price=Decimal("60")))
    clock.advance(seconds=5)

    def ids(**kw: object) -> list[str]:
        return [o.client_order_id for o in ex.list_orders(**kw)]  # type: ignore[arg-type]

    assert ids() == ["q-sell-b", "q-rest-a"]  # open, newest first: the market order filled meanwhile
    assert ids(status="closed") == ["q-buy-a"]
    assert ids(status="all", ascending=True) == ["q-buy-a", "q-rest-a", "q-sell-b"]
    assert ids(status="all", limit=1) == ["q-sell-b"]
    assert ids(status="all", symbols=["AAA"]) == ["q-rest-a", "q-buy-a"]
    assert ids(status="all", side="sell") == ["q-sell-b"]
    assert ids(status="all", after=MON, until=MON + timedelta(seconds=2)) == ["q-rest-a"]  # both ends open
    with pytest.raises(ValueError):
        ex.list_orders("pending")  # type: ignore[arg-type]


def test_fill_sequences_count_up_by_fill_number(make: Callable[..., SimExchange], clock: ManualClock) -> None:
    ex = make(partial_fill_probability=1.0)
    order = ex.submit(spec("seq", qty=50))
    other = ex.submit(spec("seq-2", qty=5, symbol="BBB"))
    clock.advance(minutes=2)
    fills = ex.fills_for(order.broker_order_id)
    sequences = ex.fill_sequences([order.broker_order_id, other.broker_order_id, "unknown"])
    assert set(sequences) == {order.broker_order_id, other.broker_order_id}
    mine = sequences[order.broker_order_id]
    assert [f.fill_id for f, _cum in mine] == [f.fill_id for f in fills] and len(mine) >= 2
    assert [cum for _f, cum in mine] == list(np.cumsum([f.qty for f in fills])) and mine[-1][1] == 50
    assert ex.fill_sequences([]) == {}

    everything = ex.fills_between()
    assert {f.fill_id for f in everything} == {f.fill_id for f, _c in mine} | {
        f.fill_id for f, _c in sequences[other.broker_order_id]}
    first, last = fills[0].ts, fills[-1].ts
    window = ex.fills_between(after=first, before=last)
    between = [f.fill_id for f in window if f.broker_order_id == order.broker_order_id]
    assert between == [f.fill_id for f in fills[1:-1]]  # both ends open
    assert ex.fills_between(after=clock.t) == []

    by_id = ex.orders_by_id([order.broker_order_id, "unknown"])
    assert list(by_id) == [order.broker_order_id] and by_id[order.broker_order_id].status is OrderStatus.FILLED


# --- submit_many: a tick's orders in one transaction (issue 16) -------------------------------


def test_submit_many_answers_each_order_in_order(make: Callable[..., SimExchange]) -> None:
    ex = make()
    ex.submit(spec("old"))
    results = ex.submit_many([spec("a"), spec("old"), spec("bad", symbol="ZZZ"), spec("b", symbol="BBB")])
    assert [type(r) for r in results][1:3] == [DuplicateClientOrderId, OrderRejected]
    for cid, result in (("a", results[0]), ("b", results[3])):
        assert not isinstance(result, Exception)
        assert result == replace(ex.get_by_client_id(cid), quote=result.quote)  # type: ignore[arg-type]
        assert result.client_order_id == cid and result.status is OrderStatus.SUBMITTED
        assert result.quote is not None  # the quote it met, as submit reports it
    assert ex.get_by_client_id("bad") is None
    assert ex.duplicate_submits() == ["old"]


def test_submit_many_is_one_transaction(make: Callable[..., SimExchange]) -> None:
    class Boom(Exception):
        pass

    def hook(point: str) -> None:
        if point == "submit:before_commit":
            raise Boom(point)

    with pytest.raises(Boom):
        make(fault=hook).submit_many([spec("x1"), spec("x2", symbol="BBB")])
    ex = make()
    assert ex.get_by_client_id("x1") is None and ex.get_by_client_id("x2") is None  # all or nothing


def test_submit_many_meets_a_fault_as_one_request(make: Callable[..., SimExchange], tmp_path: Path) -> None:
    ex = make()
    set_fault(tmp_path, "error", delay_s=0.0, ops=("submit",))
    assert all(isinstance(r, TransientBrokerError) for r in ex.submit_many([spec("e1"), spec("e2")]))
    assert ex.get_by_client_id("e1") is None  # nothing happened
    set_fault(tmp_path, "timeout", delay_s=0.0, ops=("submit",))
    assert all(isinstance(r, UnknownOutcome) for r in ex.submit_many([spec("t1"), spec("t2")]))
    clear_fault(tmp_path)
    assert ex.get_by_client_id("t1") is not None and ex.get_by_client_id("t2") is not None  # only the reply lost


def test_submit_each_submits_one_by_one_and_keeps_each_error() -> None:
    placed: list[str] = []
    pongs: list[int] = []

    class OneByOne:
        def submit(self, s: OrderSpec) -> str:
            if s.symbol == "ZZZ":
                raise OrderRejected("unknown symbol")
            placed.append(s.client_order_id)
            return s.client_order_id

    results = submit_each(OneByOne(), [spec("a"), spec("z", symbol="ZZZ"), spec("b")],  # type: ignore[arg-type]
                          between=lambda: pongs.append(1))
    assert results[0] == "a" and isinstance(results[1], OrderRejected) and results[2] == "b"  # type: ignore[comparison-overlap]
    assert placed == ["a", "b"] and len(pongs) == 3
