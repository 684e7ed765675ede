"""``steadyhand runs [--json]``: the run ledger, newest last (state/runs.py keeps it)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from steadyhand.control.client import data_dir_of, running_info
from steadyhand.state import runs, store


def read_runs(data_dir: Any) -> list[dict[str, Any]]:
    """The ledger's rows as ``runs --json`` prints them; [] without a database."""
    db = store.open_readonly(data_dir)
    if db is None:
        return []
    try:
        return runs.list_runs(db, alive=running_info(data_dir) is not None)
    finally:
        db.close()


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def cmd_runs(args: argparse.Namespace) -> int:
    rows = read_runs(data_dir_of(args))
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no runs recorded yet")
        return 0
    print(f"{'run':>4} {'started (UTC)':<20} {'ended (UTC)':<20} {'broker':<7} {'strategies':<14} "
          f"{'start equity':>14} {'end equity':>14} {'P&L':>11} {'fills':>6} ended by")
    for r in rows:
        print(f"{r['run_id']:>4} {(r['started_at'] or '')[:19]:<20} {(r['ended_at'] or '-')[:19]:<20} "
              f"{r['broker'] or '-':<7} {','.join(r['strategies']):<14} {_money(r['start_equity']):>14} "
              f"{_money(r['end_equity']):>14} {_money(r['total_pnl']):>11} {r['fills']:>6} {r['ended_by']}")
    return 0
