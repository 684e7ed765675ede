#!/usr/bin/env python3
"""Broker outage drill: the broker stops answering while steadyhand trades, then comes back.

    python ops/drills/broker_outage.py [--mode disconnect|error|timeout] [--data-dir DIR]

On the sim, an outage is switched on by writing ``<data dir>/sim_faults.json`` (exactly what the
runbook tells an operator to do) and off by deleting it. Expected: the OMS's circuit opens
(``circuit_open`` in ``steadyhand logs``), a CRITICAL "broker unavailable" alert, risk denies every
order ("broker unavailable"); once the broker answers, the circuit closes, the OMS reconciles
("broker recovered"), orders flow again and ``steadyhand verify`` is clean. Exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from drill import START_HELP, DrillError, Run, leftovers, query, start_args, verify_now, violations, wait_for
from steadyhand.runtime import crashpoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="disconnect", choices=["disconnect", "error", "timeout"])
    parser.add_argument("--data-dir", help="where (default: a fresh temporary directory)")
    parser.add_argument("--start", default="", help=START_HELP)
    parser.add_argument("--outage-s", type=float, default=3.0, help="how long the broker stays down")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="steadyhand-outage-")).resolve() / "var"
    data_dir.mkdir(parents=True, exist_ok=True)
    faults = data_dir / "sim_faults.json"
    run = Run(data_dir, ["--speed", "200", *start_args(args.start)])
    try:
        wait_for(lambda: query(data_dir, "SELECT 1 FROM fills"), 30, "a first fill")
        print(f"outage: trading; switching the broker off ({args.mode}) for {args.outage_s:g}s")
        faults.write_text(json.dumps({"mode": args.mode, "delay_s": 0.2}))
        wait_for(lambda: _logged(data_dir, "circuit_open"), 15, "the circuit to open")
        print("outage: circuit open (logs: circuit_open)")
        wait_for(lambda: query(data_dir, "SELECT 1 FROM alerts WHERE key = 'broker:circuit' "
                                         "AND severity = 'critical'"), 10, "the CRITICAL alert")
        print("outage: CRITICAL alert 'broker unavailable: orders stopped' raised")
        time.sleep(args.outage_s)  # the outage itself: how long the broker stays away
        denied = query(data_dir, "SELECT count(*) FROM risk_decisions WHERE reason LIKE 'broker unavailable%'")
        print(f"outage: risk denied {denied[0][0]} order(s) meanwhile; switching the broker back on")
        back_at = time.time()
        faults.unlink()
        wait_for(lambda: _logged(data_dir, "circuit_closed"), 15, "the circuit to close")
        wait_for(lambda: query(data_dir, "SELECT 1 FROM reconciliations WHERE reason = 'broker recovered'"),
                 15, "the reconciliation after the outage")
        print("outage: circuit closed, reconciled ('broker recovered')")
        wait_for(lambda: query(data_dir, "SELECT 1 FROM orders WHERE created_at > ?",
                               (_iso(back_at),)), 30, "orders flowing again")
        print("outage: orders flow again")
        checked = verify_now(data_dir, None)
        run.stop()
    except DrillError as exc:
        print(f"outage drill FAILED: {exc}", file=sys.stderr)
        run.power_cut()
        return 1
    if leftovers(data_dir):
        crashpoints.kill_run(data_dir)
        print("outage drill: processes were left behind", file=sys.stderr)
        return 1
    print(f"outage: verify ok={checked['ok']} ({violations(checked)} violations)")
    return 0 if checked["ok"] else 1


def _logged(data_dir: Path, event: str) -> bool:
    path = data_dir / "logs" / "oms.jsonl"
    return path.exists() and f'"event": "{event}"' in path.read_text()


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat()


if __name__ == "__main__":
    sys.exit(main())
