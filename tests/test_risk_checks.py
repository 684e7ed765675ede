"""Pre-trade risk: each check denies a violating request (with its reason) and passes a valid one;
the risk actor journals every decision before an approval leaves it."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from actorkit import Probe
from steadyhand.actors.messages import Bars, Configure, OrderRequests, ReconcileCompleted, RequestHalt, Signals, Wiring
from steadyhand.actors.risk import RiskActor
from steadyhand.config import RiskSettings, RunSettings, Settings
from steadyhand.domain import Alert, Bar, OrderSpec, OrderType, Severity, Side, Signal, TradingState
from steadyhand.risk.checks import CHECKS, Decision, RiskBook, breaker_check, is_reducing
from steadyhand.sim.clock import SimClock
from steadyhand.state import store
from thespian.actors import ActorExitRequest, ActorSystem

NOW_SIM = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
NOW = 1_000_000.0
LIMITS = RiskSettings(
    max_order_qty=1_000,
    max_position_qty=2_000,
    max_order_value=100_000.0,
    max_gross_exposure=500_000.0,
    max_daily_loss=5_000.0,
    max_drawdown=10_000.0,
    price_band_pct=5.0,
    max_open_orders=5,
    max_orders_per_minute=10,
    stale_after_s=180.0,
)
_ids = iter(range(10**9))


def book(limits: RiskSettings = LIMITS, **state: object) -> RiskBook:
    """A book ready to trade AAPL/MSFT at 50.0, with fresh bars."""
    b = RiskBook(limits, frozenset({"AAPL", "MSFT"}))
    b.reconciling = False
    b.note_bars(Bar(s, NOW_SIM - timedelta(minutes=1), 50.0, 50.0, 50.0, 50.0, 100) for s in ("AAPL", "MSFT"))
    for k, v in state.items():
        setattr(b, k, v)
    return b


def req(side: Side = Side.BUY, qty: int = 10, symbol: str = "AAPL", **kw: object) -> OrderSpec:
    kw.setdefault("ref_price", 50.0)
    return OrderSpec(f"t-{next(_ids)}", symbol, side, qty, **kw)  # type: ignore[arg-type]


def decide(b: RiskBook, r: OrderSpec, now: float = NOW) -> Decision:
    return b.decide(r, now, NOW_SIM)


def assert_denied(d: Decision, check: str, *fragments: str) -> None:
    assert not d.approved and d.check == check, d
    for f in fragments:
        assert f in d.reason, d.reason


def assert_ok(d: Decision) -> None:
    assert d.approved and d.check == "ok", d


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "qty", "position", "expected"),
    [
        (Side.SELL, 5, 10, True),
        (Side.SELL, 10, 10, True),
        (Side.SELL, 11, 10, False),  # crosses through zero
        (Side.SELL, 1, 0, False),
        (Side.SELL, 1, -5, False),
        (Side.BUY, 5, -10, True),
        (Side.BUY, 10, -10, True),
        (Side.BUY, 11, -10, False),
        (Side.BUY, 1, 0, False),
        (Side.BUY, 1, 5, False),
        (Side.SELL, 0, 10, False),
    ],
)
def test_is_reducing(side: Side, qty: int, position: int, expected: bool) -> None:
    assert is_reducing(side, qty, position) is expected


def test_breaker_check() -> None:
    assert breaker_check(-4_999.0, 9_999.0, LIMITS) is None
    assert breaker_check(1_000.0, 0.0, LIMITS) is None
    assert breaker_check(-5_000.0, 0.0, LIMITS) == "daily loss 5000.00 >= max_daily_loss 5000.00"
    assert breaker_check(0.0, 10_500.0, LIMITS) == "drawdown 10500.00 >= max_drawdown 10000.00"
    zero = dataclasses.replace(LIMITS, max_daily_loss=0.0, max_drawdown=0.0)
    assert breaker_check(0.0, 0.0, zero) is None  # flat is not a loss
    assert breaker_check(-0.01, 0.0, zero) is not None


def test_checks_are_documented_in_order() -> None:
    import steadyhand.risk.checks as rc

    doc = rc.__doc__ or ""
    positions = [doc.index(f"{i}. {name} ") for i, name in enumerate(CHECKS, 1)]
    assert positions == sorted(positions)


# ---------------------------------------------------------------------------------------------
# one test per check
# ---------------------------------------------------------------------------------------------


def test_valid_request_is_approved() -> None:
    assert_ok(decide(book(), req()))


def test_trading_state() -> None:
    b = book(trading_state=TradingState.HALTED, positions={"AAPL": 100})
    assert_denied(decide(b, req()), "trading_state", "halted")
    assert_denied(decide(b, req(Side.SELL, 50)), "trading_state", "halted")  # even reducing

    b = book(trading_state=TradingState.REDUCING, positions={"AAPL": 100})
    assert_denied(decide(b, req(Side.BUY, 10)), "trading_state", "reducing only", "position 100")
    assert_denied(decide(b, req(Side.SELL, 150)), "trading_state", "does not reduce")  # flips short
    assert_ok(decide(b, req(Side.SELL, 100)))
    # the approved sell is pending: a second one would flip the book short
    assert_denied(decide(b, req(Side.SELL, 100)), "trading_state", "position 0")


def test_reconciling_denies_everything_until_reported() -> None:
    b = RiskBook(LIMITS, frozenset({"AAPL"}))
    assert b.reconciling is True  # the default: nothing until the OMS reports
    b.note_bars([Bar("AAPL", NOW_SIM, 50.0, 50.0, 50.0, 50.0, 1)])
    b.positions = {"AAPL": 100}
    assert_denied(decide(b, req()), "reconciling", "reconciling")
    assert_denied(decide(b, req(Side.SELL, 100)), "reconciling")
    b.reconciling = False
    assert_ok(decide(b, req()))


def test_whitelist() -> None:
    b = book(positions={"TSLA": 30}, last_prices={"AAPL": 50.0, "MSFT": 50.0, "TSLA": 50.0})
    b.last_bar_at["TSLA"] = NOW_SIM
    assert_denied(decide(b, req(symbol="TSLA")), "whitelist", "TSLA is not in the whitelist")
    assert_ok(decide(b, req(Side.SELL, 30, symbol="TSLA")))  # closing an adopted position is fine
    assert_ok(decide(b, req(symbol="MSFT")))


def test_market_hours() -> None:
    b = book(market_open=False, positions={"AAPL": 100})
    assert_denied(decide(b, req()), "market_hours", "market closed")
    assert_denied(decide(b, req(Side.SELL, 10)), "market_hours")
    relaxed = book(dataclasses.replace(LIMITS, require_market_hours=False), market_open=False)
    assert_ok(decide(relaxed, req()))
    b.market_open = True
    assert_ok(decide(b, req()))


def test_stale_data_denies_entries_but_not_exits() -> None:
    b = book(feed_stale=True, positions={"AAPL": 100})
    assert_denied(decide(b, req()), "stale_data", "feed stale")
    assert_ok(decide(b, req(Side.SELL, 50)))

    b = book(positions={"AAPL": 100})
    b.last_bar_at["AAPL"] = NOW_SIM - timedelta(seconds=181)
    assert_denied(decide(b, req()), "stale_data", "181 s old > stale_after_s 180")
    assert_ok(decide(b, req(Side.SELL, 50)))
    b = book()
    b.last_bar_at["AAPL"] = NOW_SIM - timedelta(seconds=180)  # at the limit is still fresh
    assert_ok(decide(b, req()))

    b = book()
    del b.last_bar_at["MSFT"]
    assert_denied(decide(b, req(symbol="MSFT")), "stale_data", "no bar for MSFT")


def test_daily_loss_and_breaker_allow_reducing() -> None:
    b = book(day_pnl=-5_000.0, positions={"AAPL": 100})
    assert_denied(decide(b, req()), "daily_loss", "daily loss 5000.00 >= max_daily_loss 5000.00")
    assert_ok(decide(b, req(Side.SELL, 50)))

    b = book(drawdown=12_000.0)
    assert_denied(decide(b, req()), "daily_loss", "drawdown 12000.00")

    b = book(breaker_tripped="operator test", positions={"AAPL": -40})
    assert_denied(decide(b, req(Side.SELL, 10)), "daily_loss", "breaker tripped: operator test")
    assert_ok(decide(b, req(Side.BUY, 40)))  # covering a short reduces

    assert_ok(decide(book(day_pnl=-4_999.0), req()))


def test_size() -> None:
    b = book(last_prices={"AAPL": 1.0, "MSFT": 1.0})
    assert_denied(decide(b, req(qty=1_500, ref_price=1.0)), "size", "qty 1500 > max_order_qty 1000")
    assert_denied(decide(b, req(qty=0, ref_price=1.0)), "size", "qty 0")
    assert_ok(decide(b, req(qty=1_000, ref_price=1.0)))


def test_value_uses_limit_then_last_then_ref_price() -> None:
    b = book()
    # limit price decides when present: 900 x 120 = 108,000
    limit = req(qty=900, type=OrderType.LIMIT, limit_price=Decimal("120"), ref_price=50.0)
    assert_denied(decide(b, limit), "value", "value 108000", "x 120", "max_order_value 100000")
    # market order valued at the last price (50), not the ref price (52): 1000 x 50 <= 51,000
    tight = book(dataclasses.replace(LIMITS, max_order_value=51_000.0))
    assert_ok(decide(tight, req(qty=1_000, ref_price=52.0)))
    assert_denied(decide(tight, req(qty=1_000, symbol="MSFT", limit_price=Decimal("52"))), "value", "52000")
    # no last price: ref price
    b2 = book()
    b2.last_prices.pop("MSFT")
    d = decide(b2, req(qty=900, symbol="MSFT", ref_price=150.0))
    assert_denied(d, "value", "x 150")
    # nothing to value the order with
    b3 = book(positions={"MSFT": 100})
    b3.last_prices.pop("MSFT")
    assert_denied(decide(b3, req(Side.SELL, 10, symbol="MSFT", ref_price=0.0)), "value", "no price")


def test_position_counts_held_and_pending() -> None:
    b = book(positions={"AAPL": 1_500}, pending_qty={"AAPL": 400})
    assert_denied(
        decide(b, req(qty=200)),
        "position",
        "would be 2100",
        "held 1500",
        "pending 400",
        "max_position_qty 2000",
    )
    assert_ok(decide(b, req(qty=100)))
    # already beyond the limit (e.g. after reconciliation): shrinking is allowed
    over = book(positions={"AAPL": 2_500})
    assert_ok(decide(over, req(Side.SELL, 100)))
    short = book(positions={"AAPL": -1_950})
    assert_denied(decide(short, req(Side.SELL, 100)), "position", "would be -2050")


def test_exposure() -> None:
    b = book(gross_exposure=499_000.0, positions={"AAPL": 100})
    assert_denied(
        decide(b, req(qty=30)), "exposure", "gross exposure 499000 + 1500 > max_gross_exposure 500000"
    )
    assert_ok(decide(b, req(qty=20)))  # 499,000 + 1,000 is at, not over, the limit
    assert_ok(decide(b, req(Side.SELL, 100)))  # reducing: exposure goes down


def test_price_band() -> None:
    b = book()
    far = req(type=OrderType.LIMIT, limit_price=Decimal("53"))  # 6% above 50
    assert_denied(decide(b, far), "price_band", "limit price 53 is 6% from last 50 > price_band_pct 5")
    stop = req(type=OrderType.STOP_LIMIT, limit_price=Decimal("50"), stop_price=Decimal("46"))
    assert_denied(decide(b, stop), "price_band", "stop price 46")
    assert_denied(decide(b, req(ref_price=47.0)), "price_band", "ref price 47")
    assert_ok(decide(b, req(type=OrderType.LIMIT, limit_price=Decimal("52.5"), symbol="MSFT")))

    no_last = book(positions={"MSFT": 10})
    no_last.last_prices.pop("MSFT")
    assert_denied(decide(no_last, req(symbol="MSFT")), "price_band", "no last price for MSFT")
    assert_ok(decide(no_last, req(Side.SELL, 10, symbol="MSFT")))


def test_open_orders_total_and_per_symbol() -> None:
    b = book(open_orders={"MSFT": 5}, positions={"AAPL": 100})
    assert_denied(decide(b, req()), "open_orders", "open orders 5 >= max_open_orders 5")
    assert_denied(decide(b, req(Side.SELL, 10)), "open_orders", "max_open_orders")

    b = book(open_orders={"AAPL": 1}, positions={"AAPL": 100}, pending_qty={"AAPL": -10})
    assert_denied(decide(b, req()), "open_orders", "AAPL already has 1 open order")
    assert_ok(decide(b, req(Side.SELL, 10)))  # reducing orders may stack
    assert_ok(decide(b, req(symbol="MSFT")))


def test_order_rate_is_a_sliding_wall_clock_minute() -> None:
    b = book(limits=dataclasses.replace(LIMITS, max_open_orders=100))
    symbols = [f"S{i}" for i in range(11)]
    b.whitelist = frozenset(symbols)
    b.note_bars(Bar(s, NOW_SIM, 50.0, 50.0, 50.0, 50.0, 1) for s in symbols)
    for i in range(10):
        assert_ok(decide(b, req(symbol=symbols[i]), now=NOW + i))
    assert_denied(decide(b, req(symbol="S10"), now=NOW + 59.9), "order_rate", "10 orders in the last 60 s")
    assert b.approvals_in_window(NOW + 59.9) == 10  # denials are not counted
    assert_ok(decide(b, req(symbol="S10"), now=NOW + 60.0))  # the first approval left the window


# ---------------------------------------------------------------------------------------------
# batches and state
# ---------------------------------------------------------------------------------------------


def test_batch_is_judged_cumulatively() -> None:
    b = book(limits=dataclasses.replace(LIMITS, max_gross_exposure=60_000.0))
    # 1) 800 AAPL at 50 = 40,000 exposure; 2) a second AAPL entry: one open order per symbol
    assert_ok(decide(b, req(qty=800)))
    assert b.pending_qty == {"AAPL": 800} and b.open_orders == {"AAPL": 1}
    assert b.gross_exposure == pytest.approx(40_000.0)
    assert_denied(decide(b, req(qty=10)), "open_orders", "AAPL already has 1")
    # 3) 500 MSFT = 25,000 more would exceed 60,000
    assert_denied(decide(b, req(qty=500, symbol="MSFT")), "exposure", "gross exposure 40000 + 25000")
    assert_ok(decide(b, req(qty=400, symbol="MSFT")))
    assert b.gross_exposure == pytest.approx(60_000.0)


def test_batch_position_limit_sees_pending_from_earlier_approvals() -> None:
    b = book(limits=dataclasses.replace(LIMITS, max_gross_exposure=10**9, max_order_value=10**9))
    b.positions = {"AAPL": -1_000}
    # reducing buys may stack; the third would cross through zero and is an entry again
    assert_ok(decide(b, req(Side.BUY, 600)))
    assert_ok(decide(b, req(Side.BUY, 400)))
    assert b.pending_qty["AAPL"] == 1_000 and b.open_orders["AAPL"] == 2
    assert_denied(decide(b, req(Side.BUY, 10)), "open_orders", "already has 2")


def test_reducing_orders_allowed_while_reducing_stale_and_tripped() -> None:
    b = book(
        trading_state=TradingState.REDUCING,
        feed_stale=True,
        breaker_tripped="daily loss 6000.00 >= max_daily_loss 5000.00",
        day_pnl=-6_000.0,
        positions={"AAPL": 300, "MSFT": -200},
    )
    assert_ok(decide(b, req(Side.SELL, 300)))
    assert_ok(decide(b, req(Side.BUY, 200, symbol="MSFT")))
    assert_denied(decide(b, req(Side.BUY, 1)), "trading_state")
    b.trading_state = TradingState.ACTIVE
    assert_denied(decide(b, req(Side.BUY, 1)), "stale_data")
    b.feed_stale = False
    assert_denied(decide(b, req(Side.BUY, 1)), "daily_loss", "breaker tripped")


# ---------------------------------------------------------------------------------------------
# the actor: every decision journaled before an approval leaves (write-ahead, DESIGN §5)
# ---------------------------------------------------------------------------------------------


class JournalProbe(Probe):
    """Stands in for the OMS, supervisor and alerter; notes which decisions were journaled when
    each batch of order requests arrived."""

    db_path = ""

    def record(self, message: Any) -> Any:
        if not isinstance(message, OrderRequests):
            return message
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        journaled = {r[0] for r in conn.execute("SELECT client_order_id FROM risk_decisions WHERE approved = 1")}
        conn.close()
        return (message, journaled)


def _start_risk(system: ActorSystem, data_dir: Path) -> tuple[Any, Any]:
    store.open_store(data_dir).close()
    run = RunSettings(settings=Settings(symbols=("AAPL", "MSFT"), risk=LIMITS), data_dir=str(data_dir),
                      clock=SimClock(NOW_SIM, time.time(), 1.0))
    JournalProbe.db_path = run.db_path
    risk = system.createActor(RiskActor)
    system.ask(risk, Configure(name="risk", settings=run), 5)
    probe = system.createActor(JournalProbe)
    system.tell(risk, Wiring({"oms": probe, "supervisor": probe, "alerter": probe}))
    system.tell(risk, ReconcileCompleted({}))
    bar_ts = NOW_SIM - timedelta(minutes=1)
    system.tell(risk, Bars(bar_ts, tuple(Bar(s, bar_ts, 50.0, 50.0, 50.0, 50.0, 100) for s in ("AAPL", "MSFT"))))
    return risk, probe


def _signals(*specs: tuple[str, str, int]) -> Signals:
    bar_ts = NOW_SIM - timedelta(minutes=1)
    return Signals(tuple(Signal(intent_id, "sma", symbol, Side.BUY, qty, bar_ts, 50.0)
                         for intent_id, symbol, qty in specs), bar_ts=bar_ts)


def _decisions(data_dir: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / "steadyhand.db")
    try:
        return conn.execute("SELECT ts, client_order_id, symbol, side, qty, approved, reason"
                            " FROM risk_decisions ORDER BY id").fetchall()
    finally:
        conn.close()


def test_actor_journals_a_batch_before_its_approvals_leave(system: ActorSystem, data_dir: Path) -> None:
    risk, probe = _start_risk(system, data_dir)
    system.tell(risk, _signals(("a1", "AAPL", 10), ("a2", "MSFT", 5_000), ("a3", "MSFT", 10)))
    seen = system.ask(probe, "seen?", 5)
    (requests, journaled), = [m for m in seen if isinstance(m, tuple)]
    assert [r.client_order_id for r in requests.requests] == ["a1", "a3"]  # the oversized one denied
    assert journaled >= {"a1", "a3"}  # already committed when the requests arrived
    rows = _decisions(data_dir)
    assert [r[1:6] for r in rows] == [("a1", "AAPL", "buy", 10, 1), ("a2", "MSFT", "buy", 5_000, 0),
                                      ("a3", "MSFT", "buy", 10, 1)]
    assert rows[0][6] == "ok" and "max_order_qty" in rows[1][6]
    assert len({r[0] for r in rows}) == 1  # one batch, one decision time
    system.tell(risk, _signals())  # an empty batch writes nothing and sends nothing
    assert len(_decisions(data_dir)) == 3
    assert sum(isinstance(m, tuple) for m in system.ask(probe, "seen?", 5)) == 1
    system.tell(risk, ActorExitRequest())


def test_actor_approves_nothing_it_could_not_journal(system: ActorSystem, data_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 50)  # the lock below outlasts it at once
    risk, probe = _start_risk(system, data_dir)
    blocker = sqlite3.connect(data_dir / "steadyhand.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        system.tell(risk, _signals(("b1", "AAPL", 10)))
        seen = system.ask(probe, "seen?", 5)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert not any(isinstance(m, tuple) for m in seen)  # nothing went to the OMS
    halt, = [m for m in seen if isinstance(m, RequestHalt)]
    assert halt.source == "risk" and "locked" in halt.reason
    assert [m.key for m in seen if isinstance(m, Alert) and m.severity is Severity.CRITICAL] == ["store:fault"]
    assert _decisions(data_dir) == []

    system.tell(risk, _signals(("b2", "MSFT", 10)))  # the lock is gone; still nothing is approved
    seen = system.ask(probe, "seen?", 5)
    assert not any(isinstance(m, tuple) for m in seen)
    assert [(r[1], r[5]) for r in _decisions(data_dir)] == [("b2", 0)]
    assert "state store fault" in _decisions(data_dir)[0][6]
    system.tell(risk, ActorExitRequest())
