"""``steadyhand verify``: compare the order journal with the broker and check the invariants.

- ``duplicate_submissions``: a client order id the broker received more than once (the sim keeps
  a note of every submission that reused an id; elsewhere: an id on two broker orders).
- ``lost_fills``: a broker fill of one of our orders that the journal does not have.
- ``unknown_open_orders``: an order working at the broker that the journal does not know.
- ``stale_open_orders``: one of our orders still working although older than
  ``[oms] stale_order_age_s`` (broker time).
- ``position_mismatches``: the journal's position (its fills, plus the differences reconciliations
  adopted from the broker) differs from the broker's.

``ok`` is true, and the exit code 0, only when every list is empty. These keys are stable; new keys
may be added (``running``, ``pending_catch_up``, ``counts``, ``checked_at``), none renamed.

It works whether or not the bot runs, and never writes the journal (read-only connection):

- **While the bot runs**, its OMS is moving the journal along (it polls every 0.2 s): a fill can be
  at the broker a moment before it is journaled. So a finding counts only if it is still there after
  ``--settle`` seconds (default 3) of re-checking; anything the running bot fixes meanwhile (a fill
  journaled, a stale order cancelled) was in flight, not a violation.
- **While the bot is down**, the broker keeps working: fills of orders the journal still has open
  are what the next start's reconciliation will catch up. They are listed under
  ``pending_catch_up``, count towards the expected positions, and are not violations. A fill of an
  order the journal already closed is lost: nothing would ever bring it back.

How the broker is read:

- **sim**: directly, its ``exchange.db`` opened next to the bot's own connection, faults switched
  off (verify inspects the book, it is not a client on the wire).
- **alpaca** (a paper account, or ``steadyhand exchange serve``): through the Broker interface,
  an :class:`~steadyhand.brokers.alpaca.broker.AlpacaBroker` on the configured ``[alpaca]`` URLs with the
  keys from ``ALPACA_API_KEY`` / ``ALPACA_SECRET_KEY``, REST only: every order of the account
  (``GET /v2/orders?status=all``, paged by ``after``), every fill (``GET
  /v2/account/activities/FILL``, paged by ``page_token``), ``/v2/positions`` and ``/v2/clock``
  (broker time, for the stale age). Limits of what Alpaca's protocol shows:
  ``duplicate_submissions`` can only count orders that carry the same client order id -- Alpaca
  refuses a reused id with a 422 and keeps no trace of the refused attempt, so a resubmission it
  refused is invisible here (harmless by construction; the sim, which records those attempts, is
  where the drills catch them). Fills are the account's FILL activities: a real account's
  activities are kept, but a very long history costs one request per 100 fills (the client-side
  rate limit of ``[alpaca] max_requests_per_minute`` applies, shared in spirit with a running
  bot's). Positions of other activity on the account (orders not in the journal) show up as
  position mismatches, as on the sim.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from steadyhand.brokers.base import BrokerError
from steadyhand.config import RunSettings, Settings
from steadyhand.domain import BrokerOrder, Fill, OrderStatus, Side
from steadyhand.orders.journal import journal_positions
from steadyhand.state import store

KEYS = ("duplicate_submissions", "lost_fills", "unknown_open_orders", "stale_open_orders",
        "position_mismatches")
SETTLE_S = 3.0
RECHECK_EVERY_S = 0.25
SNAPSHOT_ATTEMPTS = 5


def verify(data_dir: str | Path, settings: Settings, *, running: bool | None = None,
           settle_s: float = SETTLE_S) -> dict[str, Any]:
    """The verification result (see the module doc); ``running`` None: find out from run.json."""
    data_dir = Path(data_dir)
    if running is None:
        from steadyhand.control.client import running_info

        running = running_info(data_dir) is not None
    result = _check(data_dir, settings, running)
    deadline = time.monotonic() + settle_s
    first = result
    while running and _violations(result) and time.monotonic() < deadline:
        time.sleep(RECHECK_EVERY_S)  # the bot is moving the journal along; give it a moment
        result = _check(data_dir, settings, running)
        if not _violations(result):
            break
    if running:  # only what persisted through the whole settle window
        for key in KEYS:
            seen = {_identity(key, item) for item in first[key]}
            result[key] = [item for item in result[key] if _identity(key, item) in seen]
    result["ok"] = not _violations(result)
    return {"ok": result.pop("ok"), **result}


def _violations(result: dict[str, Any]) -> bool:
    return any(result[key] for key in KEYS)


def _identity(key: str, item: dict[str, Any]) -> str:
    return item.get("fill_id") or item.get("client_order_id") or item.get("symbol") or json.dumps(item)


class _BrokerView:
    """Everything verify needs from the broker, read once, as one consistent snapshot.

    A broker with whole-book reads (``all_orders`` / ``all_fills``: the sim, and Alpaca through
    ``GET /v2/orders?status=all`` and the FILL account activities) is read as: orders, fills,
    positions, then the fills again -- if a fill landed meanwhile (the exchange keeps working
    while the bot is down) the positions may already hold it, so the snapshot is taken again.
    (While the bot runs, one snapshot: the settle window re-checks anyway.)
    Any other broker: what it knows about our ids, plus whatever is open.
    """

    def __init__(self, data_dir: Path, settings: Settings, journal_cids: list[str], running: bool) -> None:
        broker = _open_broker(data_dir, settings)
        try:
            if hasattr(broker, "all_orders"):
                for _ in range(1 if running else SNAPSHOT_ATTEMPTS):
                    self.orders: list[BrokerOrder] = broker.all_orders()
                    self.fills: list[Fill] = broker.all_fills()
                    self.positions = {p.symbol: p.qty for p in broker.positions() if p.qty}
                    if running or len(broker.all_fills()) == len(self.fills):
                        break
            else:
                found = [broker.get_by_client_id(cid) for cid in journal_cids]
                by_id = {o.broker_order_id: o for o in [*filter(None, found), *broker.open_orders()]}
                self.orders = list(by_id.values())
                self.fills = [f for o in self.orders if o.filled_qty for f in broker.fills_for(o.broker_order_id)]
                self.positions = {p.symbol: p.qty for p in broker.positions() if p.qty}
            # Attempts the broker refused as a reused client order id (only the sim keeps them; see the
            # module doc). Two broker orders carrying one id are counted for every broker.
            self.duplicates: list[str] = broker.duplicate_submits() if hasattr(broker, "duplicate_submits") else []
            self.now = _broker_now(broker)
        finally:
            broker.close()


def _open_broker(data_dir: Path, settings: Settings) -> Any:
    """The broker's reader for verify (see the module doc); a broker without one: its OMS broker on
    the wall clock."""
    from steadyhand.brokers import broker_entry

    entry = broker_entry(settings.broker)
    if entry.verify_reader is not None:
        return entry.verify_reader(data_dir, settings)
    from steadyhand.sim.clock import SimClock

    return entry.broker(RunSettings(settings=settings, data_dir=str(data_dir), clock=SimClock.real()))


def _broker_now(broker: Any) -> datetime:
    try:
        return broker.clock().timestamp
    except Exception:  # a broker without a usable clock: the wall clock will do for ages
        return datetime.now(UTC)


def _check(data_dir: Path, settings: Settings, running: bool) -> dict[str, Any]:
    db = store.open_readonly(data_dir)
    if db is None:
        raise FileNotFoundError(f"no journal in {data_dir} (steadyhand.db)")
    try:
        cids = [r[0] for r in db.execute("SELECT client_order_id FROM orders")]
        # The broker first, then the journal: the journal is written before the broker hears of an
        # order, so whatever the broker shows us is already journaled when we read the journal.
        broker = _BrokerView(data_dir, settings, cids, running)
        journal = {r["client_order_id"]: r for r in db.query("SELECT * FROM orders")}
        journaled_fills = {r[0] for r in db.execute("SELECT fill_id FROM fills")}
        positions = journal_positions(db)
    finally:
        db.close()

    submissions = Counter(o.client_order_id for o in broker.orders)
    for cid in broker.duplicates:
        submissions[cid] += 1
    duplicates = [{"client_order_id": cid, "submissions": n} for cid, n in sorted(submissions.items()) if n > 1]

    lost, pending = [], []
    for f in broker.fills:
        row = journal.get(f.client_order_id)
        if row is None or f.fill_id in journaled_fills:
            continue  # not ours (external activity shows up in positions), or journaled
        entry = {"fill_id": f.fill_id, "client_order_id": f.client_order_id, "symbol": f.symbol,
                 "side": f.side.value, "qty": f.qty, "price": str(f.price), "ts": f.ts.isoformat()}
        if not running and OrderStatus(row["status"]).is_open:
            pending.append(entry)  # the next start's reconciliation fetches it
        else:
            lost.append(entry)

    max_age = settings.oms.stale_order_age_s
    unknown, stale = [], []
    for o in broker.orders:
        if o.status.is_terminal:
            continue
        entry = {"client_order_id": o.client_order_id, "broker_order_id": o.broker_order_id,
                 "symbol": o.symbol, "side": o.side.value, "qty": o.qty, "filled_qty": o.filled_qty,
                 "status": o.status.value, "submitted_at": o.submitted_at.isoformat()}
        if o.client_order_id not in journal:
            unknown.append(entry)
        elif max_age > 0 and o.submitted_at < broker.now - timedelta(seconds=max_age):
            stale.append({**entry, "age_s": round((broker.now - o.submitted_at).total_seconds(), 1)})

    expected = Counter(positions)
    for entry in pending:
        expected[entry["symbol"]] += Side(entry["side"]).sign * entry["qty"]
    mismatches = [{"symbol": s, "journal": expected.get(s, 0), "broker": broker.positions.get(s, 0)}
                  for s in sorted(set(expected) | set(broker.positions))
                  if expected.get(s, 0) != broker.positions.get(s, 0)]
    return {
        "ok": False,
        "duplicate_submissions": duplicates,
        "lost_fills": lost,
        "unknown_open_orders": unknown,
        "stale_open_orders": stale,
        "position_mismatches": mismatches,
        "running": running,
        "pending_catch_up": pending,
        "counts": {"journal_orders": len(journal), "journal_fills": len(journaled_fills),
                   "broker_orders": len(broker.orders), "broker_fills": len(broker.fills)},
        "checked_at": datetime.now(UTC).isoformat(),
    }


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from steadyhand.control.client import data_dir_of

    data_dir = data_dir_of(args)
    from steadyhand.brokers import datadir  # issue 12: verify with the broker the dir traded with

    datadir.check(data_dir, settings)
    try:
        result = verify(data_dir, settings)
    except (FileNotFoundError, BrokerError) as exc:
        print(f"steadyhand verify: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0 if result["ok"] else 1


def _print(result: dict[str, Any]) -> None:
    counts = result["counts"]
    print(f"verify: {'OK' if result['ok'] else 'VIOLATIONS'} (bot {'running' if result['running'] else 'down'}; "
          f"journal {counts['journal_orders']} orders / {counts['journal_fills']} fills, "
          f"broker {counts['broker_orders']} orders / {counts['broker_fills']} fills)")
    for key in KEYS:
        items = result[key]
        print(f"  {key:<22} {len(items)}")
        for item in items[:20]:
            print(f"    {json.dumps(item)}")
        if len(items) > 20:
            print(f"    ... {len(items) - 20} more")
    if result["pending_catch_up"]:
        print(f"  pending_catch_up       {len(result['pending_catch_up'])} fill(s) the next start will journal")
