"""The bot's state: one SQLite file (``steadyhand.db``) in the data directory.

- WAL mode and a busy timeout, so readers (the CLI, ``status``) never block the writers.
- Every table has exactly one writing actor (``TABLE_OWNERS``); an actor never writes another's
  table, it sends a message. The CLI only reads.
- Order-journal and control writes use ``synchronous=FULL`` (a commit survives power loss);
  high-volume tables may use a ``NORMAL`` connection.
- Schema changes are numbered migrations, applied in order at open and recorded in
  ``schema_migrations``; a database newer than this code is refused.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

BUSY_TIMEOUT_MS = 5_000
# After a checkpoint has emptied the WAL, SQLite truncates the -wal file to this size: a WAL that once
# grew (a burst, a reader holding a snapshot) does not keep its size forever. SQLite's automatic
# checkpoint runs at 1000 pages (~4 MiB), so a WAL normally stays below this anyway.
WAL_SIZE_LIMIT_BYTES = 8 * 2**20

TABLE_OWNERS: dict[str, str] = {
    "control": "supervisor",  # trading state, halt reason (persisted: a halted bot comes back halted)
    "actors": "supervisor",  # pid, restarts, alive per actor
    "restarts": "supervisor",  # every restart and escalation
    "orders": "oms",  # the order journal (write-ahead)
    "fills": "oms",  # each fill once (unique fill_id)
    "reconciliations": "oms",  # reconciliation reports
    "risk_decisions": "risk",  # every approval and denial with its reason
    "risk_state": "risk",  # session day, start-of-day equity, peak
    "bad_bars": "feed",  # rejected market data with the reason
    "positions": "portfolio",  # position, average cost, realized P&L per symbol
    "equity": "portfolio",  # equity snapshot per bar tick; older days rolled up to one row (retention)
    "alerts": "alerter",  # the alert outbox
    "operator_commands": "supervisor",  # every operator command: who, when, what, result
    "portfolio_state": "portfolio",  # e.g. the last session summarized
    "runs": "supervisor",  # the run ledger: one row per `steadyhand run` (state/runs.py)
    "bars": "feed",  # every good bar the feed sent, per run (the parity report's backtest input)
    "strategy_positions": "portfolio",  # each strategy's sub-book, derived from fills (portfolio/books.py)
}


def _m1_initial(db: sqlite_utils.Database) -> None:
    db["control"].create({"key": str, "value": str, "updated_at": str}, pk="key")
    db["actors"].create(
        {"name": str, "pid": int, "restarts": int, "alive": int, "started_at": str}, pk="name"
    )
    db["restarts"].create(
        {"id": int, "ts": str, "actor": str, "event": str, "detail": str}, pk="id"
    )
    db["orders"].create(
        {
            "client_order_id": str,
            "broker_order_id": str,
            "symbol": str,
            "side": str,
            "qty": int,
            "type": str,
            "time_in_force": str,
            "limit_price": str,
            "stop_price": str,
            "status": str,
            "filled_qty": int,
            "avg_fill_price": str,
            "bar_ts": str,
            "created_at": str,
            "submitted_at": str,
            "updated_at": str,
            "reason": str,
        },
        pk="client_order_id",
        not_null={"symbol", "side", "qty", "type", "status", "created_at"},
        defaults={"filled_qty": 0},
    )
    db["orders"].create_index(["status"])
    db["orders"].create_index(["broker_order_id"])
    db["fills"].create(
        {
            "fill_id": str,
            "client_order_id": str,
            "broker_order_id": str,
            "symbol": str,
            "side": str,
            "qty": int,
            "price": str,
            "ts": str,
            "recorded_at": str,
        },
        pk="fill_id",
        not_null={"client_order_id", "symbol", "side", "qty", "price", "ts"},
    )
    db["fills"].create_index(["client_order_id"])
    db["reconciliations"].create(
        {"id": int, "started_at": str, "finished_at": str, "reason": str, "report": str}, pk="id"
    )
    db["risk_decisions"].create(
        {
            "id": int,
            "ts": str,
            "client_order_id": str,
            "symbol": str,
            "side": str,
            "qty": int,
            "approved": int,
            "reason": str,
        },
        pk="id",
    )
    db["risk_state"].create({"key": str, "value": str}, pk="key")
    db["bad_bars"].create(
        {"id": int, "recorded_at": str, "symbol": str, "bar_ts": str, "reason": str, "raw": str},
        pk="id",
    )
    db["positions"].create(
        {"symbol": str, "qty": int, "avg_cost": str, "realized_pnl": str, "updated_at": str},
        pk="symbol",
    )
    db["equity"].create(
        {"ts": str, "equity": str, "cash": str, "realized": str, "unrealized": str}, pk="ts"
    )
    db["alerts"].create(
        {
            "id": int,
            "key": str,
            "severity": str,
            "title": str,
            "body": str,
            "source": str,
            "created_at": str,
            "delivered_at": str,
            "attempts": int,
            "suppressed": int,
            "last_error": str,
        },
        pk="id",
        defaults={"attempts": 0, "suppressed": 0},
    )
    db["alerts"].create_index(["key"])


def _m2_operator_commands(db: sqlite_utils.Database) -> None:
    db["operator_commands"].create(
        {
            "id": int,
            "command_id": str,
            "name": str,
            "args": str,
            "operator": str,
            "issued_at": float,
            "received_at": str,
            "signature": str,
            "status": str,  # ok | error | refused
            "result": str,  # JSON of the CommandResult
        },
        pk="id",
    )
    db["operator_commands"].create_index(["command_id"])


def _m3_alert_acknowledgement(db: sqlite_utils.Database) -> None:
    db["alerts"].add_column("acked_at", str)
    db["alerts"].add_column("acked_by", str)
    db["alerts"].add_column("escalated_at", str)


def _m4_portfolio_state(db: sqlite_utils.Database) -> None:
    db["portfolio_state"].create({"key": str, "value": str}, pk="key")


def _m5_retention(db: sqlite_utils.Database) -> None:
    # A rolled-up day keeps its last per-bar row, which also carries the day's open/high/low and how
    # many bars it stands for (NULL on a per-bar row). state/retention.py explains the rules.
    for column, kind in (("day_open", str), ("day_high", str), ("day_low", str), ("day_bars", int)):
        db["equity"].add_column(column, kind)
    # The run clock's time when the row was written (simulated time on the simulated clock): what
    # retention ages rows by. The existing stamps are wall-clock time.
    for table in ("risk_decisions", "bad_bars", "alerts"):
        db[table].add_column("clock_ts", str)


def _m6_order_replace(db: sqlite_utils.Database) -> None:
    # A replace (orders/amend.py): the write-ahead intent and its outcome on the amended row, and the
    # links between an order and the new one a broker made for it (Alpaca, the sim), by client id.
    for column in ("replace_state", "replace_intent", "replaces", "replaced_by"):
        db["orders"].add_column(column, str)
    # The poll looks for pending intents every cycle: an index of just those keeps it O(pending).
    db.execute("CREATE INDEX orders_replace_pending ON orders (replace_state) WHERE replace_state = 'pending'")


def _m7_runs(db: sqlite_utils.Database) -> None:
    # One row per `steadyhand run`; ended_by stays 'running' until the run stops, and the next start
    # turns a 'running' row it finds into 'crash' (state/runs.py).
    db["runs"].create(
        {
            "run_id": int,
            "started_at": str,
            "ended_at": str,
            "last_seen_at": str,  # refreshed while running: a crashed run's best-known end
            "broker": str,
            "strategies": str,  # JSON list of names
            "start_equity": str,
            "end_equity": str,
            "fills": int,
            "ended_by": str,  # stop | crash | halt | running
            "clock_start": str,  # the run clock's time at start and at the last refresh (simulated on the sim)
            "clock_end": str,
            "pid": int,
            "config": str,  # JSON: the strategy settings and start cash the run traded with (parity backtest)
        },
        pk="run_id",
        not_null={"started_at", "ended_by"},
    )


def _m8_execution_data(db: sqlite_utils.Database) -> None:
    # Where each order came from and what it met (issue 15 §2, DESIGN §5): the strategy's reference
    # price (bar close), wall times of the signal, the submit call and its acknowledgement, and the
    # broker's top of book at submission (NULL where the broker gives none).
    for column in ("ref_price", "signal_at", "sent_at", "acked_at", "bid_at_submit", "ask_at_submit",
                   "quote_ts", "quote_source"):
        db["orders"].add_column(column, str)
    db["risk_decisions"].add_column("rule", str)  # the check that decided (risk/checks.py Decision.check)
    db["bars"].create(
        {"run_id": int, "symbol": str, "ts": str, "open": float, "high": float, "low": float,
         "close": float, "volume": int, "kind": str,  # kind: live | history (the warm-up window)
         "sent_at": str},  # wall time the feed sent it on (the parity report: what the bot knew by then)
        pk=("run_id", "symbol", "ts"),
    )


def _m9_strategy_books(db: sqlite_utils.Database) -> None:
    # Sub-books per strategy ([[strategies]]); rebuilt from the fills journal when missing, so an
    # existing data dir gets its books on the first start (portfolio/books.py).
    db["strategy_positions"].create(
        {"strategy": str, "symbol": str, "qty": int, "avg_cost": str, "realized_pnl": str,
         "last_price": str, "updated_at": str},
        pk=("strategy", "symbol"),
    )


# Numbered migrations: append, never edit a released one.
MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "initial schema", _m1_initial),
    (2, "operator command journal", _m2_operator_commands),
    (3, "alert acknowledgement and escalation", _m3_alert_acknowledgement),
    (4, "portfolio key/value state", _m4_portfolio_state),
    (5, "retention: daily equity roll-up, run-clock stamps", _m5_retention),
    (6, "order replace: intent, outcome, links", _m6_order_replace),
    (7, "run ledger", _m7_runs),
    (8, "execution data on orders, journaled bars", _m8_execution_data),
    (9, "strategy sub-books", _m9_strategy_books),
]


class SchemaTooNew(RuntimeError):
    pass


def iso(ts: datetime | None) -> str | None:
    """UTC ISO-8601 text for the database (sortable)."""
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat()


def parse_ts(text: str | None) -> datetime | None:
    return None if not text else datetime.fromisoformat(text)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def connect(
    path: str | Path,
    synchronous: Literal["FULL", "NORMAL"] = "FULL",
    readonly: bool = False,
) -> sqlite_utils.Database:
    """A connection with WAL, busy timeout and the durability level asked for."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    db = sqlite_utils.Database(conn)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not readonly:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
    return db


def schema_version(db: sqlite_utils.Database) -> int:
    if "schema_migrations" not in db.table_names():
        return 0
    row = db.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def migrate(db: sqlite_utils.Database) -> int:
    """Apply every migration not yet applied, each in its own transaction; return the version."""
    if "schema_migrations" not in db.table_names():
        db["schema_migrations"].create(
            {"version": int, "name": str, "applied_at": str}, pk="version", if_not_exists=True
        )
    current = schema_version(db)
    latest = MIGRATIONS[-1][0]
    if current > latest:
        raise SchemaTooNew(
            f"steadyhand.db has schema version {current}, this steadyhand knows up to {latest}"
        )
    for version, name, apply in MIGRATIONS:
        if version <= current:
            continue
        with transaction(db):
            apply(db)
            db["schema_migrations"].insert(
                {"version": version, "name": name, "applied_at": now_iso()}
            )
    return schema_version(db)


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """BEGIN IMMEDIATE ... COMMIT (durable per the connection's synchronous level), or ROLLBACK.

    Inside another transaction it joins that one: a batch of writes (e.g. every update one poll
    brought) becomes one commit, one fsync, all or nothing."""
    if db.conn.in_transaction:
        yield db
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def rows_where_in(conn: sqlite3.Connection, table: str, column: str, values: Sequence[Any]) -> list[sqlite3.Row]:
    """``SELECT * FROM table WHERE column IN (values)`` as ``sqlite3.Row``s (read by column name,
    without sqlite-utils' per-row dicts), in parts under SQLite's bound-parameter limit."""
    cursor = conn.cursor()
    cursor.row_factory = sqlite3.Row
    rows: list[sqlite3.Row] = []
    for at in range(0, len(values), 500):
        part = list(values[at:at + 500])
        rows += cursor.execute(f"SELECT * FROM {table} WHERE {column} IN ({','.join('?' * len(part))})", part)
    return rows


def open_store(
    data_dir: str | Path, synchronous: Literal["FULL", "NORMAL"] = "FULL"
) -> sqlite_utils.Database:
    """Open (creating and migrating as needed) ``steadyhand.db`` in ``data_dir``."""
    db = connect(Path(data_dir) / "steadyhand.db", synchronous=synchronous)
    migrate(db)
    return db


def open_readonly(data_dir: str | Path) -> sqlite_utils.Database | None:
    """A read-only connection for reports, or None when there is no database yet."""
    path = Path(data_dir) / "steadyhand.db"
    if not path.exists():
        return None
    return connect(path, readonly=True)


# --- small helpers every owner uses ------------------------------------------------------------


def _get_value(db: sqlite_utils.Database, table: str, key: str, default: str | None) -> str | None:
    if table not in db.table_names():
        return default
    row = db.execute(f"SELECT value FROM [{table}] WHERE key = ?", [key]).fetchone()
    return default if row is None else row[0]


def get_control(db: sqlite_utils.Database, key: str, default: str | None = None) -> str | None:
    """A value of the supervisor's ``control`` table (trading_state, halt_reason)."""
    return _get_value(db, "control", key, default)


def _set_values(db: sqlite_utils.Database, table: str, values: dict[str, str], stamped: bool = False) -> None:
    """Upsert key/value rows in one transaction (plain SQL: some of these run on hot paths, and
    sqlite-utils' upsert re-reads the schema on every call)."""
    columns = ["key", "value", "updated_at"] if stamped else ["key", "value"]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    sql = (f"INSERT INTO [{table}] ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
           f" ON CONFLICT (key) DO UPDATE SET {updates}")
    with transaction(db):
        for key, value in values.items():
            db.execute(sql, [key, value, now_iso()] if stamped else [key, value])


def set_control(db: sqlite_utils.Database, **values: str) -> None:
    """Supervisor only: durable key/value writes to ``control``."""
    _set_values(db, "control", values, stamped=True)


def get_portfolio_state(db: sqlite_utils.Database, key: str, default: str | None = None) -> str | None:
    return _get_value(db, "portfolio_state", key, default)


def set_portfolio_state(db: sqlite_utils.Database, **values: str) -> None:
    """Portfolio only: key/value writes to ``portfolio_state``."""
    _set_values(db, "portfolio_state", values)


def get_risk_state(db: sqlite_utils.Database, key: str, default: str | None = None) -> str | None:
    return _get_value(db, "risk_state", key, default)


def set_risk_state(db: sqlite_utils.Database, **values: str) -> None:
    """Risk only: key/value writes to ``risk_state``."""
    _set_values(db, "risk_state", values)


def to_json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)
