"""Strategy: bars in, signals out, through the same SMA-crossover code the backtest runs.

After a (re)start it asks the feed for enough history to fill its windows, so a restarted strategy
judges the next bar exactly as the old one would have; intent ids are derived from the bar, so a
bar processed twice yields the same client order id and the OMS drops the duplicate.
"""

from __future__ import annotations

from steadyhand.actors.base import SteadyActor
from steadyhand.actors.messages import Bars, HistoryReply, HistoryRequest, PositionsSnapshot, Signals
from steadyhand.strategies.sma import SmaCrossover
from steadyhand.strategies.specs import spec_for_child, spec_settings
from thespian.actors import ActorAddress


class StrategyActor(SteadyActor):
    def setup(self) -> None:
        settings = self.run.settings
        spec = spec_for_child(self.name, settings)  # which strategy this instance runs ([[strategies]])
        self.strategy = SmaCrossover(spec_settings(spec, settings), spec.symbols, strategy_id=spec.name or "sma")
        self.positions: dict[str, int] = {}
        self._warm = False
        self.handlers = {
            Bars: self.on_bars,
            HistoryReply: self.on_history,
            PositionsSnapshot: self.on_positions,
        }

    def on_first_wiring(self) -> None:
        self.tell_peer("feed", HistoryRequest(self.strategy.window))

    def on_peers_changed(self, names: set[str]) -> None:
        if "feed" in names and not self.strategy_warm:
            self.tell_peer("feed", HistoryRequest(self.strategy.window))

    @property
    def strategy_warm(self) -> bool:
        return getattr(self, "_warm", False)

    def step_ready(self) -> bool:
        return self.strategy_warm  # lock-step: history first

    def on_history(self, message: HistoryReply, sender: ActorAddress) -> None:
        self.strategy.warm_up(message.bars)
        self._warm = True
        self.event("warmed_up", bars=len(message.bars))

    def on_positions(self, message: PositionsSnapshot, sender: ActorAddress) -> None:
        self.positions = dict(message.positions)

    def on_bars(self, message: Bars, sender: ActorAddress) -> None:
        signals = self.strategy.on_bars(message.bars, self.positions)
        if not signals:
            return
        for signal in signals:
            self.event("signal", intent_id=signal.intent_id, symbol=signal.symbol, side=signal.side.value,
                       qty=signal.qty, ref_price=signal.ref_price, reason=signal.reason)
        self.tell_peer("risk", Signals(tuple(signals), bar_ts=message.ts, bar_sent_at=message.sent_at))
