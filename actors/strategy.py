"""Strategy: bars in, signals out, through the loaded plug-in Strategy (``strategies/live.py``).

After a (re)start it asks the feed for ``warmup`` bars per symbol, so a restarted strategy judges
the next bar exactly as the old one would have: its target is recomputed from the bars, not
remembered. Intent ids are derived from the bar, so a bar processed twice yields the same client
order id and the OMS drops the duplicate. A strategy that raises crashes this actor (restarted as
any other); one that raises on every bar is escalated by the supervisor, whose CRITICAL alert names
the strategy and the exception (``CrashReport``).
"""

from __future__ import annotations

from decimal import Decimal

from steadyhand.actors.base import SteadyActor
from steadyhand.actors.messages import (
    Bars,
    CancelOrder,
    HistoryReply,
    HistoryRequest,
    OpenOrders,
    PositionsSnapshot,
    ReplaceOrder,
    Signals,
)
from steadyhand.strategies.live import Amend, LiveStrategy
from steadyhand.strategies.loader import load_strategy, spec_and_params
from steadyhand.strategies.specs import spec_for_child, spec_settings
from thespian.actors import ActorAddress


class StrategyError(RuntimeError):
    """The user's strategy raised: the actor crashes with this, naming the strategy."""


class StrategyActor(SteadyActor):
    def setup(self) -> None:
        settings = self.run.settings
        spec = spec_for_child(self.name, settings)  # which strategy this instance runs ([[strategies]])
        self.spec = spec_and_params(spec_settings(spec, settings))[0]
        self.live = LiveStrategy(load_strategy(spec_settings(spec, settings)), spec.symbols, name=spec.name)
        self.positions: dict[str, int] = {}
        self._warm = False
        self.handlers = {
            Bars: self.on_bars,
            HistoryReply: self.on_history,
            PositionsSnapshot: self.on_positions,
            OpenOrders: self.on_open_orders,
        }

    def on_first_wiring(self) -> None:
        self.tell_peer("feed", HistoryRequest(self.live.window))

    def on_peers_changed(self, names: set[str]) -> None:
        if "feed" in names and not self._warm:
            self.tell_peer("feed", HistoryRequest(self.live.window))

    def step_ready(self) -> bool:
        return self._warm  # lock-step: history first

    def on_history(self, message: HistoryReply, sender: ActorAddress) -> None:
        self.live.warm_up(message.bars)
        self._warm = True
        self.event("warmed_up", bars=len(message.bars), strategy=self.live.name)

    def on_positions(self, message: PositionsSnapshot, sender: ActorAddress) -> None:
        new = dict(message.positions)
        moved = {s for s in set(new) | set(self.positions) if new.get(s, 0) != self.positions.get(s, 0)}
        self.positions = new
        self.live.on_positions_moved(moved)

    def on_open_orders(self, message: OpenOrders, sender: ActorAddress) -> None:
        self.live.on_open_orders(message.pending_qty)

    def on_bars(self, message: Bars, sender: ActorAddress) -> None:
        try:
            result = self.live.on_bars(message.bars, self.positions)
        except Exception as exc:  # the user's code: crash, named, so an escalation can say why
            error = f"strategy {self.live.name!r} ({self.spec}) raised {type(exc).__name__}: {exc}"
            self.report_crash(error)
            raise StrategyError(error) from exc
        for signal in result.signals:
            self.event("signal", intent_id=signal.intent_id, symbol=signal.symbol, side=signal.side.value,
                       qty=signal.qty, ref_price=signal.ref_price, reason=signal.reason,
                       order_type=signal.order_type.value, limit_price=signal.limit_price,
                       stop_price=signal.stop_price)
        if result.signals:
            self.tell_peer("risk", Signals(tuple(result.signals), bar_ts=message.ts, bar_sent_at=message.sent_at))
        for amend in result.amends:
            self.event("amend", client_order_id=amend.client_order_id, qty=amend.qty,
                       limit_price=amend.limit_price, stop_price=amend.stop_price, reason=amend.reason)
            self.tell_peer("risk", _amend_message(amend, self.live.name))


def _amend_message(amend: Amend, strategy: str) -> ReplaceOrder | CancelOrder:
    if amend.qty == 0:
        return CancelOrder(amend.client_order_id, reason=amend.reason, strategy=strategy)
    return ReplaceOrder(amend.client_order_id, int(amend.qty), _price(amend.limit_price), _price(amend.stop_price),
                        reason=amend.reason, strategy=strategy)


def _price(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(str(value))
