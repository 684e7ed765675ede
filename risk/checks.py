"""Pre-trade risk: every order request passes :meth:`RiskBook.decide`.

Checks run in this fixed order; the first failure wins and its name is ``Decision.check``:

 1. trading_state  HALTED denies everything; REDUCING denies anything that is not reducing.
 2. reconciling    everything denied until the OMS's first reconciliation report: until then
                   neither positions nor working orders are known.
 3. whitelist      symbol not whitelisted -> denied, unless reducing (a position adopted from
                   the broker must still be closable by an operator's flatten).
 4. market_hours   (limits.require_market_hours) market closed -> everything denied.
 5. stale_data     feed stale, or no bar for the symbol within stale_after_s of simulated now ->
                   new entries denied; reducing orders allowed (getting out on the last known
                   price beats being stuck in a position while data is missing).
 6. daily_loss     day P&L at or below -max_daily_loss, drawdown at max_drawdown, or breaker
                   tripped -> non-reducing denied.
 7. size           qty < 1 or qty > max_order_qty (all orders: a fat-fingered flatten too).
 8. value          qty * price > max_order_value, price = limit, else stop, else last, else
                   ref_price; no price at all -> denied (an order we cannot value).
 9. position       |position + pending + signed qty| > max_position_qty, unless the order
                   shrinks the absolute projected position.
10. exposure       non-reducing: gross_exposure + qty * price > max_gross_exposure.
11. price_band     limit/stop price (or ref_price for a market order) more than price_band_pct %
                   away from the last price; no last price -> non-reducing denied.
12. open_orders    total open orders >= max_open_orders; non-reducing also at most one open
                   order per symbol.
13. order_rate     approvals in the last 60 wall-clock seconds >= max_orders_per_minute.
14. signal         (judged first, by the risk actor: ``signal_problem``) a strategy's intent that
                   cannot be an order at all: a fractional, NaN or infinite quantity, a limit or
                   stop order without a positive finite price.

A replace (:meth:`RiskBook.decide_replace`) is judged like a new order on its new terms: the
trading state (REDUCING: it may not grow the order), reconciling, size, value, position (the
change of quantity on the projected position) and price band. A cancel always passes.

"Reducing" is judged against the *projected* position (position + pending_qty): two sells of
a 100-share long while one is still working must not flip the book short in REDUCING mode.

An approval is recorded at once (rate window, pending_qty, open_orders, gross_exposure), so the
requests of one batch are judged cumulatively; the OMS's next ``OpenOrders`` report and the
portfolio's ``PnlUpdate`` then overwrite these estimates with the truth.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from steadyhand.config import RiskSettings
from steadyhand.domain import Bar, OrderSpec, OrderType, Side, Signal, TimeInForce, TradingState

CHECKS = (
    "trading_state",
    "reconciling",
    "whitelist",
    "market_hours",
    "stale_data",
    "daily_loss",
    "size",
    "value",
    "position",
    "exposure",
    "price_band",
    "open_orders",
    "order_rate",
    "signal",  # judged before all the others (see 14. above)
)

RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class Decision:
    approved: bool
    check: str  # the failing check's name, or "ok"
    reason: str

    @classmethod
    def ok(cls) -> Decision:
        return cls(True, "ok", "approved")

    @classmethod
    def deny(cls, check: str, reason: str) -> Decision:
        return cls(False, check, reason)


def signal_problem(signal: Signal) -> str | None:
    """Why a strategy's intent cannot become an order at all (journaled as check ``signal``), or None.

    A strategy's target may be anything a DataFrame holds: a fraction, NaN, infinity; its limit or
    stop price may be missing or absurd. Those are refused here, with the value named, before the
    limit checks (which would mis-read them).
    """
    qty = signal.qty
    if isinstance(qty, bool) or not isinstance(qty, int | float) or not math.isfinite(qty):
        return f"{signal.strategy}: qty {qty!r} for {signal.symbol} is not a number of shares"
    if qty != int(qty):
        return f"{signal.strategy}: target for {signal.symbol} gives {qty!r} shares, not a whole number"
    kind = OrderType(signal.order_type)
    needs = {OrderType.LIMIT: ("limit_price",), OrderType.STOP: ("stop_price",),
             OrderType.STOP_LIMIT: ("limit_price", "stop_price")}.get(kind, ())
    for name in needs:
        price = getattr(signal, name)
        if price is None or not isinstance(price, int | float) or not math.isfinite(price) or price <= 0:
            return f"{signal.strategy}: {kind} order for {signal.symbol} needs a positive {name}, got {price!r}"
    return None


def order_spec(signal: Signal, whole: bool = True) -> OrderSpec:
    """The order a strategy's intent asks for (type, prices, time in force carried over).

    ``whole=False`` (a refused intent): the quantity and prices are journaled as best they can be.
    """
    qty = int(signal.qty) if whole else _journal_qty(signal.qty)
    return OrderSpec(client_order_id=signal.intent_id, symbol=signal.symbol, side=signal.side, qty=qty,
                     type=OrderType(signal.order_type), time_in_force=TimeInForce(signal.time_in_force),
                     limit_price=_decimal(signal.limit_price) if whole else None,
                     stop_price=_decimal(signal.stop_price) if whole else None,
                     ref_price=signal.ref_price, bar_ts=signal.bar_ts)


def _decimal(price: float | None) -> Decimal | None:
    return None if price is None else Decimal(str(price))


def _journal_qty(qty: object) -> int:
    try:
        return int(qty)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return 0


def is_reducing(side: Side, qty: int, position: int) -> bool:
    """True if the order shrinks ``position`` without crossing through zero."""
    if qty < 1:
        return False
    if Side(side) is Side.SELL:
        return position > 0 and qty <= position
    return position < 0 and qty <= -position


def breaker_check(day_pnl: float, drawdown: float, limits: RiskSettings) -> str | None:
    """Why trading must halt (daily loss or drawdown from peak at their limit), or None.

    Reaching a limit trips it; a limit of 0 means any loss (or any drawdown) trips, never a flat
    P&L, so a zero limit does not halt a bot that has not traded yet.
    """
    loss = -day_pnl
    if loss > 0 and loss >= limits.max_daily_loss:
        return f"daily loss {loss:.2f} >= max_daily_loss {limits.max_daily_loss:.2f}"
    if drawdown > 0 and drawdown >= limits.max_drawdown:
        return f"drawdown {drawdown:.2f} >= max_drawdown {limits.max_drawdown:.2f}"
    return None


def _num(x: float) -> str:
    """Short number for reasons: 1500, 101.25, 0.1234."""
    return f"{x:.4f}".rstrip("0").rstrip(".") if math.isfinite(x) else str(x)


@dataclass
class RiskBook:
    """The state risk decides on. Plain attributes: the risk actor sets them from messages."""

    limits: RiskSettings
    whitelist: frozenset[str]
    trading_state: TradingState = TradingState.ACTIVE
    reconciling: bool = True
    feed_stale: bool = False
    market_open: bool = True
    positions: dict[str, int] = field(default_factory=dict)
    # (declared before open_orders: __init__ sets it first, then setting open_orders sums them)
    open_orders_total: int = field(default=0, init=False)
    open_orders: dict[str, int] = field(default_factory=dict)  # symbol -> open order count
    pending_qty: dict[str, int] = field(default_factory=dict)  # symbol -> signed qty working
    last_prices: dict[str, float] = field(default_factory=dict)
    last_bar_at: dict[str, datetime] = field(default_factory=dict)
    day_pnl: float = 0.0
    drawdown: float = 0.0
    gross_exposure: float = 0.0
    breaker_tripped: str = ""  # the trip reason; empty while not tripped
    _approvals: deque[float] = field(default_factory=deque, init=False, repr=False)  # wall times

    def __setattr__(self, name: str, value: Any) -> None:
        # The total of open orders is kept with the counts: summing 5,000 symbols' counts for each
        # of a burst's 5,000 decisions made a tick O(n^2). Whoever sets the counts sets the total.
        object.__setattr__(self, name, value)
        if name == "open_orders":
            object.__setattr__(self, "open_orders_total", sum(value.values()))

    # -- helpers for the actor -----------------------------------------------------------------

    def note_bars(self, bars: Iterable[Bar]) -> None:
        """Record last prices and bar times from a (validated) Bars batch."""
        for bar in bars:
            self.last_prices[bar.symbol] = bar.close
            prev = self.last_bar_at.get(bar.symbol)
            if prev is None or bar.ts > prev:
                self.last_bar_at[bar.symbol] = bar.ts

    def projected_position(self, symbol: str) -> int:
        return self.positions.get(symbol, 0) + self.pending_qty.get(symbol, 0)

    def approvals_in_window(self, now_wall: float) -> int:
        self._prune(now_wall)
        return len(self._approvals)

    def _prune(self, now_wall: float) -> None:
        cutoff = now_wall - RATE_WINDOW_S
        while self._approvals and self._approvals[0] <= cutoff:
            self._approvals.popleft()

    def order_price(self, req: OrderSpec) -> float:
        """Price used to value ``req``: limit, else stop, else last price, else ref_price (0 if none)."""
        for p in (req.limit_price, req.stop_price):
            if p is not None:
                return float(p)
        last = self.last_prices.get(req.symbol)
        if last is not None and last > 0:
            return float(last)
        return float(req.ref_price or 0.0)

    # -- the decision --------------------------------------------------------------------------

    def decide(self, req: OrderSpec, now_wall: float, now_sim: datetime) -> Decision:
        """Approve or deny ``req`` (checks in the module docstring's order); records approvals."""
        decision = self._check(req, now_wall, now_sim)
        if decision.approved:
            self._record(req, now_wall)
        return decision

    def _check(self, req: OrderSpec, now_wall: float, now_sim: datetime) -> Decision:
        lim = self.limits
        sym, qty, side = req.symbol, req.qty, Side(req.side)
        position = self.positions.get(sym, 0)
        pending = self.pending_qty.get(sym, 0)
        projected = position + pending
        reducing = is_reducing(side, qty, projected)
        what = f"{side} {qty} {sym}"

        # 1. trading state
        if self.trading_state is TradingState.HALTED:
            return Decision.deny("trading_state", f"trading halted: {what} denied")
        if self.trading_state is TradingState.REDUCING and not reducing:
            return Decision.deny(
                "trading_state", f"reducing only: {what} does not reduce position {projected}"
            )
        # 2. reconciliation
        if self.reconciling:
            return Decision.deny("reconciling", f"OMS reconciling: {what} denied")
        # 3. whitelist
        if sym not in self.whitelist and not reducing:
            return Decision.deny("whitelist", f"{sym} is not in the whitelist")
        # 4. market hours
        if lim.require_market_hours and not self.market_open:
            return Decision.deny("market_hours", f"market closed: {what} denied")
        # 5. stale data (new entries only)
        if not reducing:
            if self.feed_stale:
                return Decision.deny("stale_data", f"feed stale: {what} denied")
            last_bar = self.last_bar_at.get(sym)
            if last_bar is None:
                return Decision.deny("stale_data", f"no bar for {sym} yet")
            age = (now_sim - last_bar).total_seconds()
            if age > lim.stale_after_s:
                return Decision.deny(
                    "stale_data",
                    f"last {sym} bar {_num(age)} s old > stale_after_s {_num(lim.stale_after_s)}",
                )
        # 6. daily loss / breaker
        if not reducing:
            if self.breaker_tripped:
                return Decision.deny("daily_loss", f"breaker tripped: {self.breaker_tripped}")
            trip = breaker_check(self.day_pnl, self.drawdown, lim)
            if trip:
                return Decision.deny("daily_loss", trip)
        # 7. size
        if qty < 1:
            return Decision.deny("size", f"qty {qty} must be at least 1")
        if qty > lim.max_order_qty:
            return Decision.deny("size", f"qty {qty} > max_order_qty {lim.max_order_qty}")
        # 8. value
        price = self.order_price(req)
        if not (price > 0 and math.isfinite(price)):
            return Decision.deny("value", f"no price to value {what} (no limit, last or ref price)")
        value = qty * price
        if value > lim.max_order_value:
            return Decision.deny(
                "value",
                f"value {_num(value)} (qty {qty} x {_num(price)}) > "
                f"max_order_value {_num(lim.max_order_value)}",
            )
        # 9. position
        new_position = projected + side.sign * qty
        if abs(new_position) > lim.max_position_qty and abs(new_position) > abs(projected):
            return Decision.deny(
                "position",
                f"position {sym} would be {new_position} (held {position}, pending {pending}) "
                f"beyond max_position_qty {lim.max_position_qty}",
            )
        # 10. gross exposure
        if not reducing and self.gross_exposure + value > lim.max_gross_exposure:
            return Decision.deny(
                "exposure",
                f"gross exposure {_num(self.gross_exposure)} + {_num(value)} > "
                f"max_gross_exposure {_num(lim.max_gross_exposure)}",
            )
        # 11. price band
        band = self._price_band(req, reducing)
        if band:
            return Decision.deny("price_band", band)
        # 12. open orders
        total_open = self.open_orders_total
        if total_open >= lim.max_open_orders:
            return Decision.deny(
                "open_orders", f"open orders {total_open} >= max_open_orders {lim.max_open_orders}"
            )
        if not reducing and self.open_orders.get(sym, 0) >= 1:
            return Decision.deny(
                "open_orders", f"{sym} already has {self.open_orders[sym]} open order(s); one per symbol"
            )
        # 13. order rate
        recent = self.approvals_in_window(now_wall)
        if recent >= lim.max_orders_per_minute:
            return Decision.deny(
                "order_rate",
                f"{recent} orders in the last 60 s >= max_orders_per_minute {lim.max_orders_per_minute}",
            )
        return Decision.ok()

    def decide_replace(self, req: OrderSpec, old_qty: int, filled: int) -> Decision:
        """Approve or deny replacing an order of ``old_qty`` (``filled`` of it done) by ``req``, its
        new terms with ``qty`` the new total. Nothing is recorded: the OMS's next ``OpenOrders``
        brings the new pending quantity."""
        lim = self.limits
        side, grows = Side(req.side), req.qty > old_qty
        what = f"replace {req.client_order_id}: {side} {req.qty} {req.symbol}"
        projected = self.projected_position(req.symbol)
        if self.trading_state is TradingState.HALTED:
            return Decision.deny("trading_state", f"trading halted: {what} denied")
        if self.trading_state is TradingState.REDUCING and grows:
            return Decision.deny("trading_state", f"reducing only: {what} grows the order from {old_qty}")
        if self.reconciling:
            return Decision.deny("reconciling", f"OMS reconciling: {what} denied")
        if req.qty <= filled:
            return Decision.deny("size", f"qty {req.qty} is not above the {filled} already filled")
        if req.qty > lim.max_order_qty:
            return Decision.deny("size", f"qty {req.qty} > max_order_qty {lim.max_order_qty}")
        price = self.order_price(req)
        value = (req.qty - filled) * price
        if not (price > 0 and math.isfinite(price)):
            return Decision.deny("value", f"no price to value {what}")
        if value > lim.max_order_value:
            return Decision.deny("value", f"value {_num(value)} (qty {req.qty - filled} left x {_num(price)}) > "
                                          f"max_order_value {_num(lim.max_order_value)}")
        new_position = projected + side.sign * (req.qty - old_qty)
        if grows and abs(new_position) > lim.max_position_qty and abs(new_position) > abs(projected):
            return Decision.deny("position", f"position {req.symbol} would be {new_position} beyond "
                                             f"max_position_qty {lim.max_position_qty}")
        band = self._price_band(req, reducing=False)
        if band:
            return Decision.deny("price_band", band)
        return Decision.ok()

    def _price_band(self, req: OrderSpec, reducing: bool) -> str | None:
        prices = [("limit", req.limit_price), ("stop", req.stop_price)]
        checked = [(name, float(p)) for name, p in prices if p is not None]
        if not checked and req.ref_price:
            checked = [("ref", float(req.ref_price))]
        last = self.last_prices.get(req.symbol)
        if last is None or not last > 0:
            if reducing:
                return None  # nothing to compare with; never trap a position for that
            return f"no last price for {req.symbol} to check the price band"
        for name, p in checked:
            dev = abs(p - last) / last * 100.0
            if not dev <= self.limits.price_band_pct:  # NaN deviates too
                return (
                    f"{name} price {_num(p)} is {_num(dev)}% from last {_num(last)} "
                    f"> price_band_pct {_num(self.limits.price_band_pct)}"
                )
        return None

    def _record(self, req: OrderSpec, now_wall: float) -> None:
        side = Side(req.side)
        projected = self.projected_position(req.symbol)
        reducing = is_reducing(side, req.qty, projected)
        self._approvals.append(now_wall)
        self.pending_qty[req.symbol] = self.pending_qty.get(req.symbol, 0) + side.sign * req.qty
        self.open_orders[req.symbol] = self.open_orders.get(req.symbol, 0) + 1
        self.open_orders_total += 1
        if not reducing:  # reducing orders lower exposure only once filled: leave that to PnlUpdate
            self.gross_exposure += req.qty * self.order_price(req)

