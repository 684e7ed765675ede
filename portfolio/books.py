"""Sub-books: each strategy's positions, average cost and P&L, derived from the fills journal.

Several strategies share one broker account; the broker holds the net. Each fill is attributed to
the strategy whose client order id it carries (``NAME-SYMBOL-...``: ``strategies/specs.py:
strategy_of``), so a sub-book is a pure function of the OMS's fills journal, which is written before
anything else learns of a fill. That is why the books are derived, not recorded separately: the
portfolio persists them with the same cursor as the net positions (one transaction), and a crash at
any point is repaired by applying the journal's fills after that cursor again (``rebuild`` from the
whole journal gives the same books; a test holds the two equal).

Orders that are no strategy's (an operator's ``flatten``: ``flat-...``) form a book of their own under
their prefix, so the books still sum to the net. When the portfolio adopts the broker's positions
after a mismatch the net changes without a fill; ``differences`` then reports it and the portfolio
alerts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from steadyhand.domain import Side
from steadyhand.strategies.specs import strategy_of

ZERO = Decimal(0)
CENT = Decimal("0.01")
UPSERT_BOOK = ("INSERT INTO strategy_positions (strategy, symbol, qty, avg_cost, realized_pnl, last_price, updated_at)"
               " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (strategy, symbol) DO UPDATE SET qty = excluded.qty,"
               " avg_cost = excluded.avg_cost, realized_pnl = excluded.realized_pnl,"
               " last_price = coalesce(excluded.last_price, last_price), updated_at = excluded.updated_at")
SET_MARK = "UPDATE strategy_positions SET last_price = ? WHERE symbol = ? AND qty != 0"


@dataclass
class Position:
    qty: int = 0
    avg_cost: Decimal = ZERO
    realized: Decimal = ZERO

    def apply(self, signed_qty: int, price: Decimal) -> None:
        """A fill of ``signed_qty`` at ``price``: average in, or realize what it closes."""
        if self.qty == 0 or (self.qty > 0) == (signed_qty > 0):
            total = abs(self.qty) + abs(signed_qty)
            self.avg_cost = (abs(self.qty) * self.avg_cost + abs(signed_qty) * price) / total
            self.qty += signed_qty
            return
        closed = min(abs(signed_qty), abs(self.qty))
        direction = 1 if self.qty > 0 else -1
        self.realized += closed * (price - self.avg_cost) * direction
        self.qty += signed_qty
        if self.qty == 0:
            self.avg_cost = ZERO
        elif (self.qty > 0) != (direction > 0):  # crossed through zero: the rest is a new position
            self.avg_cost = price


FillRow = tuple[str, str, str, int, str]  # client_order_id, symbol, side, qty, price (the journal's text)


class Books:
    """Every strategy's sub-book: ``books[strategy][symbol] -> Position``."""

    def __init__(self) -> None:
        self.books: dict[str, dict[str, Position]] = {}

    def position(self, strategy: str, symbol: str) -> Position:
        return self.books.setdefault(strategy, {}).setdefault(symbol, Position())

    def apply(self, client_order_id: str, symbol: str, side: str, qty: int, price: Decimal) -> tuple[str, str]:
        """One journaled fill into its strategy's book; returns ``(strategy, symbol)`` touched."""
        strategy = strategy_of(client_order_id)
        self.position(strategy, symbol).apply(Side(side).sign * int(qty), price)
        return strategy, symbol

    @classmethod
    def rebuild(cls, fills: Iterable[FillRow]) -> Books:
        """The books the fills journal means, from nothing (in journal order)."""
        books = cls()
        for client_order_id, symbol, side, qty, price in fills:
            books.apply(client_order_id, symbol, side, qty, Decimal(price))
        return books

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> Books:
        """The books as persisted in ``strategy_positions``."""
        books = cls()
        for row in rows:
            books.books.setdefault(row["strategy"], {})[row["symbol"]] = Position(
                int(row["qty"]), Decimal(row["avg_cost"]), Decimal(row["realized_pnl"]))
        return books

    def quantities(self) -> dict[str, dict[str, int]]:
        """Non-zero positions per strategy (what risk and each strategy actor get)."""
        return {name: {s: p.qty for s, p in book.items() if p.qty} for name, book in self.books.items()}

    def total_pnl(self, marks: Mapping[str, float]) -> dict[str, Decimal]:
        """Realized + unrealized P&L per strategy at ``marks`` (a symbol without a mark: its cost)."""
        out: dict[str, Decimal] = {}
        for name, book in self.books.items():
            total = ZERO
            for symbol, p in book.items():
                total += p.realized
                if p.qty and symbol in marks:
                    total += p.qty * (Decimal(str(marks[symbol])) - p.avg_cost)
            out[name] = total
        return out

    def held_symbols(self) -> set[str]:
        """Symbols some strategy holds (long or short)."""
        return {s for book in self.books.values() for s, p in book.items() if p.qty}

    def net(self) -> dict[str, int]:
        """The sum of every book per symbol: what the broker should hold."""
        total: dict[str, int] = {}
        for book in self.books.values():
            for symbol, p in book.items():
                total[symbol] = total.get(symbol, 0) + p.qty
        return {s: q for s, q in total.items() if q}

    def differences(self, net: Mapping[str, int]) -> dict[str, dict[str, int]]:
        """Symbols where the books do not sum to ``net``: ``{symbol: {"books": n, "net": m}}``."""
        ours, theirs = self.net(), {s: q for s, q in net.items() if q}
        return {s: {"books": ours.get(s, 0), "net": theirs.get(s, 0)}
                for s in sorted(set(ours) | set(theirs)) if ours.get(s, 0) != theirs.get(s, 0)}

    def rows(self, touched: Iterable[tuple[str, str]], now: str,
             marks: Mapping[str, float] | None = None) -> list[tuple[Any, ...]]:
        """``UPSERT_BOOK`` parameters for the touched ``(strategy, symbol)`` pairs; ``marks``: the
        newest prices seen, so a position just opened is not shown with a price from an older one."""
        out = []
        for strategy, symbol in sorted(set(touched)):
            p = self.books[strategy][symbol]
            mark = (marks or {}).get(symbol)
            out.append((strategy, symbol, p.qty, str(p.avg_cost), str(p.realized),
                        None if mark is None else str(mark), now))
        return out


def summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``status --json``'s ``strategies``: per strategy its positions (qty, avg_cost, last_price,
    unrealized_pnl), realized_pnl and unrealized_pnl, from ``strategy_positions`` rows. Money as text
    with cents, as the journal keeps it; unrealized is 0 for a position with no price seen yet."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = out.setdefault(row["strategy"], {"positions": {}, "realized": ZERO, "unrealized": ZERO})
        entry["realized"] += Decimal(row["realized_pnl"])
        qty = int(row["qty"])
        if not qty:
            continue
        avg = Decimal(row["avg_cost"])
        last = Decimal(row["last_price"]) if row["last_price"] is not None else None
        unrealized = qty * (last - avg) if last is not None else ZERO
        entry["unrealized"] += unrealized
        entry["positions"][row["symbol"]] = {"qty": qty, "avg_cost": str(avg.quantize(CENT)),
                                             "last_price": None if last is None else str(last),
                                             "unrealized_pnl": str(unrealized.quantize(CENT))}
    return {name: {"positions": e["positions"], "realized_pnl": str(e["realized"].quantize(CENT)),
                   "unrealized_pnl": str(e["unrealized"].quantize(CENT)),
                   "total_pnl": str((e["realized"] + e["unrealized"]).quantize(CENT))}
            for name, e in sorted(out.items())}


def read_strategies(db: Any) -> dict[str, dict[str, Any]]:
    """``status``'s ``strategies`` from a (read-only) state database; {} before the table exists."""
    if "strategy_positions" not in db.table_names():
        return {}
    return summary(db.query("SELECT * FROM strategy_positions"))


def strategy_lines(strategies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``status``'s text lines: one per strategy, then its positions."""
    lines = []
    for name, s in strategies.items():
        held = ", ".join(f"{sym} {p['qty']} @ {p['avg_cost']}" for sym, p in sorted(s["positions"].items())) or "flat"
        lines.append(f"strategy {name:<10} realized {s['realized_pnl']}, unrealized {s['unrealized_pnl']}: {held}")
    return lines
