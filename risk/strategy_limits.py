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

6. max_daily_loss  non-reducing: refused once the strategy's P&L since the session's first tick
                   (realized + unrealized on its sub-book, from the portfolio's ``PnlUpdate``) is a
                   loss of at least the limit; it may still reduce, and the other strategies go on.

The sub-book comes from the
portfolio (``PositionsSnapshot.by_strategy``); in between, fills move it at once (attributed by their
client order id), and its working orders are the OMS's last ``OpenOrders.pending_by_strategy``
plus what risk approved since.
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
    """What risk knows of every strategy: its positions and its orders still working."""

    specs: dict[str, StrategySpec]
    positions: dict[str, dict[str, int]] = field(default_factory=dict)  # strategy -> symbol -> qty
    working: dict[str, dict[str, int]] = field(default_factory=dict)  # the OMS's last report, per strategy
    sent: dict[str, dict[str, int]] = field(default_factory=dict)  # approved since that report
    day_pnl: dict[str, float] = field(default_factory=dict)  # strategy -> P&L today (the portfolio's)

    @classmethod
    def of(cls, specs: Iterable[StrategySpec]) -> StrategyBooks:
        return cls({s.name: s for s in specs if s.name})

    def projected(self, strategy: str, symbol: str) -> int:
        return sum(book.get(strategy, {}).get(symbol, 0) for book in (self.positions, self.working, self.sent))

    def note_snapshot(self, by_strategy: Mapping[str, Mapping[str, int]]) -> None:
        self.positions = {name: dict(book) for name, book in by_strategy.items()}

    def note_fills(self, fills: Iterable[Fill]) -> None:
        """Positions move at once (the portfolio's next snapshot confirms them), as in RiskBook."""
        for fill in fills:
            book = self.positions.setdefault(strategy_of(fill.client_order_id), {})
            book[fill.symbol] = book.get(fill.symbol, 0) + fill.side.sign * fill.qty

    def note_open_orders(self, pending_by_strategy: Mapping[str, Mapping[str, int]]) -> None:
        """The OMS's report of what still works replaces the estimate."""
        self.working = {name: dict(book) for name, book in pending_by_strategy.items()}
        self.sent = {}

    def record(self, req: OrderSpec) -> None:
        """An approved order of a strategy: counted until the OMS's next report includes it."""
        name = strategy_of(req.client_order_id)
        if name in self.specs:
            book = self.sent.setdefault(name, {})
            book[req.symbol] = book.get(req.symbol, 0) + Side(req.side).sign * req.qty

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
        day_pnl = self.day_pnl.get(name, 0.0)
        if spec.max_daily_loss is not None and not reducing and -day_pnl >= spec.max_daily_loss:
            return Decision.deny("strategy", f"{what}: its loss today {_num(-day_pnl)} reached its max_daily_loss "
                                             f"{_num(spec.max_daily_loss)}")
        return None
