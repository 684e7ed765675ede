#!/usr/bin/env python3
"""Backup and restore drill: an online backup of the journal, the journal lost, restored, and the
restored (older) journal reconciled with a broker that has moved on.

    python ops/drills/backup_restore.py [--data-dir DIR]

1. ``steadyhand run`` trades; the journal is copied online (SQLite's backup API: what
   ``sqlite3 var/steadyhand.db ".backup backup/steadyhand.db"`` does), consistent although the bot
   writes on;
2. it trades on, then stops; the journal is lost (deleted, WAL and all);
3. the backup is restored -- the journal only: the broker is never restored, it is the truth (on the
   sim ``exchange.db`` plays the broker) -- and ``steadyhand run`` starts again: it reconciles
   (orders after the backup: positions adopted, unknown open orders handled by policy) and
   ``steadyhand verify`` must be clean. Exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path

from drill import (
    START_HELP,
    DrillError,
    Run,
    leftovers,
    query,
    report_count,
    start_args,
    verify_now,
    violations,
    wait_for,
)
from steadyhand.runtime import crashpoints


def backup(db_path: Path, to: Path) -> None:
    """A consistent copy of a live SQLite database (WAL included)."""
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    target = sqlite3.connect(to)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="where (default: a fresh temporary directory)")
    parser.add_argument("--start", default="", help=START_HELP)
    args = parser.parse_args(argv)
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="steadyhand-backup-")).resolve()
    data_dir, backups = root / "var", root / "backup"
    data_dir.mkdir(parents=True, exist_ok=True)
    backups.mkdir(exist_ok=True)
    journal = data_dir / "steadyhand.db"
    try:
        run = Run(data_dir, ["--speed", "300", *start_args(args.start)])
        wait_for(lambda: query(data_dir, "SELECT 1 FROM fills"), 30, "a first fill")
        backup(journal, backups / "steadyhand.db")
        at_backup = query(data_dir, "SELECT count(*) FROM orders")[0][0]
        print(f"backup: online copy taken with {at_backup} order(s) in the journal")
        wait_for(lambda: query(data_dir, "SELECT count(*) FROM orders")[0][0] > at_backup, 30,
                 "orders after the backup")
        if run.stop() != 0:
            raise DrillError("the graceful stop failed")
        lost = query(data_dir, "SELECT count(*) FROM orders")[0][0]
        for path in data_dir.glob("steadyhand.db*"):
            path.unlink()
        print(f"backup: journal lost ({lost} orders); restoring the backup ({at_backup} orders)")
        backup(backups / "steadyhand.db", journal)
        restored_reports = report_count(data_dir)
        run = Run(data_dir, ["--speed", "300", *start_args(args.start)])
        wait_for(lambda: report_count(data_dir) > restored_reports, 30, "the reconciliation of the restored journal")
        checked = verify_now(data_dir, None)
        print(f"backup: restored and reconciled; verify ok={checked['ok']} ({violations(checked)} violations)")
        run.stop()
    except DrillError as exc:
        print(f"backup drill FAILED: {exc}", file=sys.stderr)
        crashpoints.kill_run(data_dir)
        return 1
    if leftovers(data_dir):
        crashpoints.kill_run(data_dir)
        print("backup drill: processes were left behind", file=sys.stderr)
        return 1
    return 0 if checked["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
