"""Portfolio: positions, average cost, realized/unrealized P&L, equity per bar, day P&L to risk.

Cash and positions are checked against the broker: every OMS (re)start sends an authoritative
snapshot that the portfolio adopts (the broker wins; differences are alerted), and the periodic
snapshots are compared — a difference seen twice in a row (so not just a fill in flight) is alerted
and the broker's figures adopted.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from steadyhand.actors.base import SteadyActor
from steadyhand.actors.messages import Bars, BrokerSnapshot, Fills, PnlUpdate, PositionsSnapshot
from steadyhand.dashboard.book import BOOK_KEY, book_json
from steadyhand.domain import Severity, Side, market_hours
from steadyhand.portfolio.books import SET_MARK, UPSERT_BOOK, Books, Position
from steadyhand.reports import execution
from steadyhand.state import retention, store
from steadyhand.strategies.specs import CHILD_PREFIX, SINGLE_CHILD, is_strategy_child, strategy_peers
from thespian.actors import ActorAddress

ZERO = Decimal(0)
SUMMARY_CHECK_S = 5.0  # wall seconds between looks for a session that has closed
CENT = Decimal("0.01")
UPSERT_POSITION = ("INSERT INTO positions (symbol, qty, avg_cost, realized_pnl, updated_at) VALUES (?, ?, ?, ?, ?)"
                   " ON CONFLICT (symbol) DO UPDATE SET qty = excluded.qty, avg_cost = excluded.avg_cost,"
                   " realized_pnl = excluded.realized_pnl, updated_at = excluded.updated_at")
UPSERT_EQUITY = ("INSERT INTO equity (ts, equity, cash, realized, unrealized) VALUES (?, ?, ?, ?, ?)"
                 " ON CONFLICT (ts) DO UPDATE SET equity = excluded.equity, cash = excluded.cash,"
                 " realized = excluded.realized, unrealized = excluded.unrealized")


class PortfolioActor(SteadyActor):
    def setup(self) -> None:
        self.db = store.connect(self.run.db_path, synchronous="NORMAL")
        self.positions: dict[str, Position] = {
            row["symbol"]: Position(int(row["qty"]), Decimal(row["avg_cost"]), Decimal(row["realized_pnl"]))
            for row in self.db.query("SELECT * FROM positions")
        }
        self.fills_applied_through = int(store.get_portfolio_state(self.db, "fills_applied_through") or 0)
        # Sub-books (portfolio/books.py): a data dir from before them starts at 0 and is rebuilt.
        self.books = Books.from_rows(self.db.query("SELECT * FROM strategy_positions"))
        self.books_applied_through = int(store.get_portfolio_state(self.db, "books_applied_through") or 0)
        self.books_mismatch: dict[str, Any] = {}
        self.cash: Decimal | None = None  # from the broker's first snapshot
        self.marks: dict[str, float] = {}
        self.strategy_day_start: dict[str, Any] = {}  # {"day", "start": {strategy: P&L text}}
        self.session_day = ""
        self.day_start_equity: Decimal | None = None
        self.peak_equity: Decimal | None = None
        self.last_equity: Decimal | None = None
        self.last_bar_ts: datetime | None = None
        self.mismatch_seen: dict[str, Any] | None = None
        self.handlers = {Fills: self.on_fills, Bars: self.on_bars, BrokerSnapshot: self.on_broker_snapshot}
        self.timers = {"summary": self.daily_summary}

    def on_first_wiring(self) -> None:
        self._catch_up_fills()  # fills journaled while this actor was down
        self._send_positions()
        self.every("summary", SUMMARY_CHECK_S)
        days = self.run.settings.retention.equity_bars_days
        self.start_retention({"equity": lambda now: retention.roll_up_equity(self.db.conn, now, days)})

    def on_peers_changed(self, names: set[str]) -> None:
        if "risk" in names or any(is_strategy_child(n) for n in names):
            self._send_positions()

    # --- fills ------------------------------------------------------------------------------

    def on_fills(self, message: Fills, sender: ActorAddress) -> None:
        # The message is the signal; the OMS's fill journal is the source. A Fills message sent
        # while this actor was down is lost, but the journal is not: catching up from it after
        # every restart and on every notice applies each fill exactly once.
        self._catch_up_fills()

    def _catch_up_fills(self) -> None:
        rows = self.db.conn.execute(
            "SELECT rowid, symbol, side, qty, price, client_order_id FROM fills WHERE rowid > ? ORDER BY rowid",
            (min(self.fills_applied_through, self.books_applied_through),)).fetchall()
        if not rows:
            return
        touched, books_touched = set(), set()
        for rowid, symbol, side, qty, price_text, client_order_id in rows:
            price = Decimal(price_text)
            if rowid > self.books_applied_through:
                books_touched.add(self.books.apply(client_order_id, symbol, side, qty, price))
            if rowid <= self.fills_applied_through:
                continue  # a book being rebuilt: the net has this fill already
            position = self.positions.setdefault(symbol, Position())
            signed = Side(side).sign * int(qty)
            position.apply(signed, price)
            if self.cash is not None:
                self.cash -= signed * price
            touched.add(symbol)
        self.fills_applied_through = self.books_applied_through = rows[-1][0]
        self._save(touched, applied_through=self.fills_applied_through, books=books_touched)
        self._check_books()
        self._send_positions()

    def _save(self, symbols: set[str], applied_through: int | None = None,
              books: set[tuple[str, str]] | None = None) -> None:
        # Plain SQL on the hot path (sqlite-utils' upsert re-reads the schema on every call).
        now = store.now_iso()
        with store.transaction(self.db):
            if applied_through is not None:  # same transaction: positions, books and cursors never disagree
                store.set_portfolio_state(self.db, fills_applied_through=str(applied_through),
                                          books_applied_through=str(applied_through))
            if books:
                self.db.conn.executemany(UPSERT_BOOK, self.books.rows(books, now, self.marks))
            self._save_book()
            rows = []
            for symbol in symbols:
                p = self.positions[symbol]
                rows.append((symbol, p.qty, str(p.avg_cost), str(p.realized), now))
            self.db.conn.executemany(UPSERT_POSITION, rows)

    def _save_book(self, bar_ts: datetime | None = None) -> None:
        """Cash and marks beside the positions, in the caller's transaction: `status` and the dashboard
        read them (read-only) and value the positions exactly as this actor does."""
        if bar_ts is not None:
            self.last_bar_ts = bar_ts
        store.set_portfolio_state(self.db, **{BOOK_KEY: book_json(
            self.cash, {s: self._mark(s) for s, p in self.positions.items() if p.qty}, self.day_start_equity,
            self.peak_equity, self.last_bar_ts)})

    def _mark(self, symbol: str) -> Decimal:
        """The last close seen, else the average cost (a position not priced yet is worth what it cost)."""
        return Decimal(str(self.marks.get(symbol, self.positions[symbol].avg_cost)))

    def _send_positions(self) -> None:
        books = self.books.quantities()
        snapshot = PositionsSnapshot({s: p.qty for s, p in self.positions.items() if p.qty}, books)
        for peer in strategy_peers(self.peers):  # several: each its own sub-book; one: the net, as ever
            own = snapshot if peer == SINGLE_CHILD else PositionsSnapshot(books.get(peer[len(CHILD_PREFIX):], {}))
            self.tell_peer(peer, own)
        self.tell_peer("risk", snapshot)

    def _check_books(self) -> None:
        """The sub-books must sum to the net; a difference (e.g. broker positions adopted) is alerted once."""
        differences = self.books.differences({s: p.qty for s, p in self.positions.items()})
        if differences == self.books_mismatch:
            return
        self.books_mismatch = differences
        if differences:
            self.event("books_mismatch", level="warning", differences=differences)
            self.alert("books:mismatch", Severity.HIGH, "strategy sub-books do not sum to the net position",
                       f"per symbol, books vs net: {differences}")

    # --- marks and equity -------------------------------------------------------------------

    def on_bars(self, message: Bars, sender: ActorAddress) -> None:
        for bar in message.bars:
            self.marks[bar.symbol] = bar.close
        if self.cash is None:
            return  # no broker snapshot yet: equity unknown
        unrealized = ZERO
        market_value = ZERO
        gross = ZERO
        for symbol, p in self.positions.items():
            if not p.qty:
                continue
            mark = self._mark(symbol)
            market_value += p.qty * mark
            gross += abs(p.qty) * mark
            unrealized += p.qty * (mark - p.avg_cost)
        equity = (self.cash + market_value).quantize(CENT)
        self._roll_session(message.ts, equity)
        self.peak_equity = max(self.peak_equity or equity, equity)
        self.last_equity = equity
        realized = sum((p.realized for p in self.positions.values()), ZERO)
        # One equity row per tick, on purpose: a restart takes the day's first equity and its peak
        # (the drawdown breaker) from these rows, the daily summary its first and last, bench_memory
        # its progress. One row per N wall seconds could lose a peak or the session's last row in a
        # crash; rows on change only would stall that progress marker while flat. Either saves only
        # ~0.1 ms a tick: this connection is synchronous=NORMAL, so in WAL mode a commit has no fsync.
        with store.transaction(self.db):
            held = self.books.held_symbols()  # marks for the sub-books' unrealized P&L (status)
            self.db.conn.executemany(SET_MARK, [(str(b.close), b.symbol) for b in message.bars if b.symbol in held])
            self.db.conn.execute(UPSERT_EQUITY, (store.iso(message.ts), str(equity), str(self.cash.quantize(CENT)),
                                                 str(realized), str(unrealized.quantize(CENT))))
            self._save_book(message.ts)
        assert self.day_start_equity is not None
        self.tell_peer("risk", PnlUpdate(equity=equity, day_pnl=equity - self.day_start_equity,
                                         peak_equity=self.peak_equity, gross_exposure=gross, ts=message.ts,
                                         strategy_day_pnl=self._strategy_day_pnl(message.ts)))

    def _strategy_day_pnl(self, ts: datetime) -> tuple[tuple[str, Decimal], ...]:
        """Each strategy's P&L since the session's first tick, for its ``max_daily_loss``; only
        computed when some strategy has one. The baseline is kept in ``portfolio_state`` so that a
        restarted portfolio measures the day from the same point."""
        if not any(spec.max_daily_loss is not None for spec in self.run.settings.strategies):
            return ()
        totals = self.books.total_pnl(self.marks)
        day = ts.date().isoformat()
        if self.strategy_day_start.get("day") != day:
            saved = json.loads(store.get_portfolio_state(self.db, "strategy_day_start") or "{}")
            if saved.get("day") != day:
                saved = {"day": day, "start": {name: str(total) for name, total in totals.items()}}
                store.set_portfolio_state(self.db, strategy_day_start=json.dumps(saved))
            self.strategy_day_start = saved
        start = self.strategy_day_start["start"]
        return tuple((name, total - Decimal(start.get(name, "0"))) for name, total in sorted(totals.items()))

    def _roll_session(self, ts: datetime, equity: Decimal) -> None:
        day = ts.date().isoformat()
        if day == self.session_day:
            return
        self.session_day = day
        # After a restart mid-day, the day's first snapshot and peak are in the equity table.
        row = self.db.execute("SELECT equity FROM equity WHERE ts >= ? ORDER BY ts LIMIT 1", [day]).fetchone()
        peak = self.db.execute("SELECT max(CAST(equity AS REAL)) FROM equity WHERE ts >= ?", [day]).fetchone()
        start = Decimal(row[0]) if row else (self.last_equity or equity)
        self.day_start_equity = start
        self.peak_equity = max(Decimal(str(peak[0])) if peak and peak[0] is not None else start, start)

    # --- daily summary after the close -------------------------------------------------------

    def daily_summary(self) -> None:
        """Once per session, after its close: P&L, trades, fill rate, slippage, as an alert."""
        if not self.session_day:
            return
        session = market_hours.session_at(datetime.fromisoformat(self.session_day + "T15:00:00+00:00"))
        if session is None or self.run.clock.now() < session[1]:
            return
        if store.get_portfolio_state(self.db, "summarized_day") == self.session_day:
            return
        summary = self._summary(self.session_day, session)
        store.set_portfolio_state(self.db, summarized_day=self.session_day)
        self.event("daily_summary", **summary)
        self.alert(f"summary:{self.session_day}", Severity.HIGH, f"steadyhand daily summary {self.session_day}",
                   "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary.items()))

    def _summary(self, day: str, session: tuple[datetime, datetime]) -> dict[str, Any]:
        start, end = store.iso(session[0]), store.iso(session[1])
        # coalesce: a day rolled up (state/retention.py) keeps its open on its one row
        first = self.db.execute("SELECT coalesce(day_open, equity) FROM equity WHERE ts >= ? AND ts < ?"
                                " ORDER BY ts LIMIT 1", [start, end]).fetchone()
        last = self.db.execute("SELECT equity FROM equity WHERE ts >= ? AND ts < ? ORDER BY ts DESC LIMIT 1",
                               [start, end]).fetchone()
        orders = self.db.execute("SELECT count(*), sum(status = 'filled') FROM orders WHERE bar_ts >= ? AND bar_ts < ?",
                                 [start, end]).fetchone()
        fills = self.db.execute("SELECT count(*) FROM fills WHERE ts >= ? AND ts < ?", [start, end]).fetchone()
        pnl = (Decimal(last[0]) - Decimal(first[0])) if first and last else ZERO
        submitted, filled = orders[0] or 0, orders[1] or 0
        return {"day": day, "pnl": str(pnl.quantize(CENT)), "trades": fills[0] or 0, "orders": submitted,
                "fill_rate": f"{filled / submitted:.0%}" if submitted else "n/a",
                **execution.day_summary_text(self.db, day)}  # slippage split, limit fill rate, latency

    def on_step(self, step: Any) -> dict[str, Any] | None:
        if step.phase == "probe":
            self._send_positions()  # lock-step: a rewound strategy has them before the tick again
        return {}

    def step_ready(self) -> bool:
        return self.cash is not None  # lock-step: equity (hence P&L for risk) is known

    # --- comparison with the broker ---------------------------------------------------------

    def on_broker_snapshot(self, message: BrokerSnapshot, sender: ActorAddress) -> None:
        ours = {s: p.qty for s, p in self.positions.items() if p.qty}
        theirs = {s: q for s, q in message.positions.items() if q}
        differences = {s: {"portfolio": ours.get(s, 0), "broker": theirs.get(s, 0)}
                       for s in set(ours) | set(theirs) if ours.get(s, 0) != theirs.get(s, 0)}
        if message.authoritative or self.cash is None:
            self.cash = message.cash
            self._save_book()  # status shows equity even before the first bar (a closed market)
        if not differences:
            self.mismatch_seen = None
            return
        if not message.authoritative and self.mismatch_seen != differences:
            self.mismatch_seen = differences  # maybe a fill in flight: look again next time
            return
        self.mismatch_seen = None
        self.event("position_mismatch", level="warning", differences=differences)
        self.alert("positions:mismatch", Severity.HIGH, "positions differ from the broker's",
                   f"adopting the broker's positions: {differences}")
        for symbol, diff in differences.items():
            position = self.positions.setdefault(symbol, Position())
            if diff["broker"] == 0:
                position.qty, position.avg_cost = 0, ZERO
            else:
                mark = Decimal(str(self.marks.get(symbol, position.avg_cost or 0)))
                position.qty = diff["broker"]
                position.avg_cost = position.avg_cost or mark
        self.cash = message.cash
        self._save(set(differences))
        self._check_books()
        self._send_positions()
