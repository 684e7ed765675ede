"""Crash recovery: 1,000 open orders at the exchange, ``kill -9`` of the whole bot, then the time
from the new start to "reconciled and trading".

Each run: a fresh data dir with ``--orders`` resting GTC limit orders at the simulated exchange and
in the journal (what a bot that has been trading leaves working); the bot starts (and reconciles
them once), the whole process group is SIGKILLed (a power cut), and ``steadyhand run`` starts
again. Measured from that second spawn to risk's ``reconciled`` event (the OMS's report has
reached risk, which approves orders again), with the OMS's own ``reconciled`` event and the
"steadyhand running" line (every actor up) on the way. If the OMS misses its heartbeat deadline
while reconciling, the supervisor kills it: that is reported, not hidden.

    python -m bench.bench_recovery [--quick] [--orders N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402

SYMBOLS = ["AAPL", "MSFT", "NVDA", "SPY", "QQQ"]
CONFIG = common.toml_config(oms={"stale_order_age_s": 86400.0})  # seeded orders stay "fresh"


def reconciled_and_trading(bot: common.Bot, since: float, timeout: float) -> dict[str, Any]:
    """When the OMS and then risk logged ``reconciled`` after ``since``; or how the OMS died."""
    data_dir = bot.data_dir

    def check() -> dict[str, Any] | None:
        killed = [e for e in common.events(data_dir, "supervisor", "actor_unresponsive")
                  if e["t"] >= since and e.get("actor_name") == "oms"]
        risk = [e for e in common.events(data_dir, "risk", "reconciled") if e["t"] >= since]
        oms = [e for e in common.events(data_dir, "oms", "reconciled") if e["t"] >= since]
        if risk and oms:
            return {"outcome": "reconciled", "oms_s": oms[0]["t"] - since, "risk_s": risk[0]["t"] - since,
                    "orders_checked": oms[0].get("orders_checked"), "oms_kills": len(killed)}
        if len(killed) >= 2:
            return {"outcome": "oms killed by the heartbeat while reconciling", "oms_kills": len(killed)}
        return None

    return common.wait_for(check, timeout=timeout, interval=0.05, what="reconciled")


def start_with_book(bot: common.Bot, n_orders: int) -> dict[str, Any]:
    """Seed ``n_orders`` open orders, start the bot, wait until it has reconciled them (or failed to)."""
    common.seed_open_orders(bot.data_dir, n_orders, SYMBOLS)
    bot.start()
    return reconciled_and_trading(bot, bot.spawned_at, timeout=300)


def run_once(n_orders: int, keep: bool = False) -> dict[str, Any]:
    with common.data_dir("recovery", keep) as data_dir:
        with common.running_bot(data_dir, CONFIG, start=False) as bot:
            cold = start_with_book(bot, n_orders)
            bot.kill_all()
            if not common.procs.wait_until(lambda: not bot.processes(), 10):
                raise RuntimeError(f"kill -9 of the group left {len(bot.processes())} processes")
            bot.start()
            warm = reconciled_and_trading(bot, bot.spawned_at, timeout=300)
            warm["running_s"] = bot.running_at - bot.spawned_at
            warm["cold_start_s"] = cold.get("risk_s")
            warm["open_at_exchange"] = common.exchange_open_orders(data_dir)
    return warm


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, help="open orders at the exchange (default 1000; --quick 300)")
    args = common.parse_args(p, argv)
    n = args.orders or common.size(args, 1000, 300, 20)
    total = common.Figure("crash_recovery_to_trading", "s", target=2.0, note=f"{n} open orders")
    oms = common.Figure("crash_recovery_oms_reconciled", "s")
    up = common.Figure("crash_recovery_all_actors_up", "s")
    cold = common.Figure("cold_start_to_trading", "s")
    runs = []
    for _ in range(common.repeats(args)):
        started = time.time()
        r = run_once(n, args.keep)
        runs.append(r)
        print(f"  run: {r}  ({time.time() - started:.0f}s)", flush=True)
        if r["outcome"] != "reconciled":
            total.note = f"{n} open orders: {r['outcome']}"
            continue
        total.add(r["risk_s"])
        oms.add(r["oms_s"])
        up.add(r["running_s"])
        cold.add(r["cold_start_s"])
    result = common.report("crash recovery (kill -9 of the whole bot)", [total, oms, up, cold], {"runs": runs})
    common.write_json(args, result)
    return result


if __name__ == "__main__":
    main()
