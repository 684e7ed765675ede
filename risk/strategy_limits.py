"""Risk per strategy ([[strategies]]): each strategy's own limits, on its own sub-book.

Checked by the risk actor before the run's checks (``risk/checks.py``); a denial is journaled like
any other, with check name ``strategy`` and a reason naming the strategy. In this order:

1. symbols         a strategy trades only its ``symbols`` (reducing its own position is allowed).
2. own position    a strategy only sells what it bought: an order that takes its own projected
                   position (sub-book + its orders still working) past zero is refused unless the
                   strategy has ``allow_short`` (and likewise buys that cover beyond its own short).
3. max_order_qty   the strategy's own order size limit.
4. max_position_qty  |own projected position after the order| beyond the limit, unless it shrinks.
5. max_gross_exposure  non-reducing: own gross (|qty| x last price over its symbols) + the order's value.

``max_daily_loss`` is carried and shown but not enforced yet (README). The sub-book comes from the
portfolio (``PositionsSnapshot.by_strategy``); in between, fills move it at once (attributed by their
client order id) and approvals are added as pending, dropped when a fill arrives for the order or
when the OMS reports nothing working on the symbol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from steadyhand.config import StrategySpec
from steadyhand.domain import Fill, OrderSpec, Side
from steadyhand.risk.checks import Decision, _num, is_reducing
from steadyhand.strategies.specs import strategy_of


@dataclass
class StrategyBooks:
    """What risk knows of every strategy: its positions and its approved orders still working."""

    specs: dict[str, StrategySpec]
    positions: dict[str, dict[str, int]] = field(default_factory=dict)  # strategy -> symbol -> qty
    pending: dict[str, dict[str, int]] = field(default_factory=dict)  # client_order_id -> {symbol: signed qty}

    @classmethod
    def of(cls, specs: Iterable[StrategySpec]) -> StrategyBooks:
        return cls({s.name: s for s in specs if s.name})

    def projected(self, strategy: str, symbol: str) -> int:
        held = self.positions.get(strategy, {}).get(symbol, 0)
        working = sum(q.get(symbol, 0) for cid, q in self.pending.items() if strategy_of(cid) == strategy)
        return held + working

    def note_snapshot(self, by_strategy: Mapping[str, Mapping[str, int]]) -> None:
        self.positions = {name: dict(book) for name, book in by_strategy.items()}

    def note_fills(self, fills: Iterable[Fill]) -> None:
        for fill in fills:
            strategy = strategy_of(fill.client_order_id)
            book = self.positions.setdefault(strategy, {})
            book[fill.symbol] = book.get(fill.symbol, 0) + fill.side.sign * fill.qty
            working = self.pending.get(fill.client_order_id)
            if working is not None:
                was = working.get(fill.symbol, 0)
                left = was - fill.side.sign * fill.qty
                if left and (left > 0) == (was > 0):  # partly filled: the rest still works
                    working[fill.symbol] = left
                else:
                    del self.pending[fill.client_order_id]

    def note_open_orders(self, pending_qty: Mapping[str, int]) -> None:
        """Nothing working on a symbol at the OMS: no strategy has an order pending there."""
        for cid in [c for c, q in self.pending.items() if all(not pending_qty.get(s) for s in q)]:
            del self.pending[cid]

    def record(self, req: OrderSpec) -> None:
        """An approved order of a strategy: pending until filled or no longer working."""
        if strategy_of(req.client_order_id) in self.specs:
            self.pending[req.client_order_id] = {req.symbol: Side(req.side).sign * req.qty}

    def check(self, req: OrderSpec, price: float, last_prices: Mapping[str, float]) -> Decision | None:
        """A denial by the order's strategy's own limits, or None (not a strategy's order, or within them)."""
        name = strategy_of(req.client_order_id)
        spec = self.specs.get(name)
        if spec is None:
            return None
        side, qty, sym = Side(req.side), req.qty, req.symbol
        own = self.projected(name, sym)
        reducing = is_reducing(side, qty, own)
        new = own + side.sign * qty
        what = f"strategy {name}: {side} {qty} {sym}"
        if sym not in spec.symbols and not reducing:
            return Decision.deny("strategy", f"{what}: {sym} is not one of its symbols")
        if not spec.allow_short and side is Side.SELL and new < 0:
            return Decision.deny("strategy", f"{what}: it holds {own}; a strategy only sells what it bought "
                                             f"(allow_short = false)")
        if spec.max_order_qty is not None and qty > spec.max_order_qty:
            return Decision.deny("strategy", f"{what}: qty {qty} > its max_order_qty {spec.max_order_qty}")
        if spec.max_position_qty is not None and abs(new) > spec.max_position_qty and abs(new) > abs(own):
            return Decision.deny("strategy", f"{what}: its position would be {new} (held+working {own}) "
                                             f"beyond its max_position_qty {spec.max_position_qty}")
        if spec.max_gross_exposure is not None and not reducing:
            gross = sum(abs(self.projected(name, s)) * last_prices.get(s, 0.0) for s in spec.symbols)
            if gross + qty * price > spec.max_gross_exposure:
                return Decision.deny("strategy", f"{what}: its gross exposure {_num(gross)} + {_num(qty * price)} "
                                                 f"> its max_gross_exposure {_num(spec.max_gross_exposure)}")
        return None
