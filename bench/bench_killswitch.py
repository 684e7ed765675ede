"""Kill switch: ``steadyhand halt`` with 500 open orders -> every cancel sent and state HALTED.

Each run: a fresh bot starts and reconciles (an empty book); then ``--orders`` resting GTC limit
orders are placed at the simulated exchange (its public API, from this process, as several
processes may) with their journal rows, as if the OMS had placed them -- placed while the bot
runs, because a bot *started* with hundreds of open orders does not get through its reconciliation
(see bench_recovery) -- and then ``steadyhand halt --json``. The figure is the
reply's ``elapsed_ms`` (the supervisor received the command -> the OMS reported every cancel sent,
state HALTED and journaled). Also shown: the wall time of the whole CLI call (a new Python
process joining the actor system, signing, asking) and whether the exchange's book is empty.

    python -m bench.bench_killswitch [--quick] [--orders N]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402
from bench.bench_recovery import CONFIG, SYMBOLS, reconciled_and_trading  # noqa: E402


def run_once(n_orders: int, keep: bool = False) -> dict[str, Any]:
    with common.data_dir("killswitch", keep) as data_dir:
        with common.running_bot(data_dir, CONFIG) as bot:
            reconciled_and_trading(bot, bot.spawned_at, timeout=60)
            common.seed_open_orders(data_dir, n_orders, SYMBOLS)
            common.wait_for(lambda: common.exchange_open_orders(data_dir) == n_orders, 30)
            time.sleep(2.0)  # the OMS's poll has seen the new orders; start-up traffic has settled
            started = time.perf_counter()
            halted_at = time.time()
            done = bot.cli("halt", "--json", timeout=120)
            cli_s = time.perf_counter() - started
            reply = json.loads(done.stdout) if done.stdout.strip() else {"ok": False, "error": done.stderr}
            open_after = common.exchange_open_orders(data_dir)
            state = bot.status()["trading_state"]
            oms_killed = sum(1 for e in common.events(data_dir, "supervisor", "actor_unresponsive")
                             if e["t"] >= halted_at and e.get("actor_name") == "oms")
            cancel_log = [e for e in common.events(data_dir, "oms", "cancel_open") if e["t"] >= halted_at]
    result = reply.get("result", {})
    return {"outcome": "ok" if reply.get("ok") else reply.get("error", "failed"),
            "elapsed_ms": result.get("elapsed_ms"), "cancel_requests": result.get("cancel_requests"),
            "cli_s": cli_s, "open_at_exchange_after": open_after, "trading_state": state,
            "oms_killed_by_heartbeat": oms_killed,
            "oms_cancels_done_s": cancel_log[0]["t"] - halted_at if cancel_log else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, help="open orders (default 500; --quick 200)")
    args = common.parse_args(p, argv)
    n = args.orders or common.size(args, 500, 200, 20)
    elapsed = common.Figure("halt_elapsed", "ms", target=250.0, note=f"{n} open orders")
    cli = common.Figure("halt_cli_wall", "s")
    runs = []
    for _ in range(common.repeats(args)):
        r = run_once(n, args.keep)
        runs.append(r)
        print(f"  run: {r}", flush=True)
        if r["outcome"] != "ok" or r["cancel_requests"] != n or r["open_at_exchange_after"]:
            elapsed.note = f"{n} open orders; a run did not cancel them all: {r}"
        elapsed.add(r.get("elapsed_ms"))
        cli.add(r.get("cli_s"))
    result = common.report("kill switch (steadyhand halt)", [elapsed, cli], {"runs": runs})
    common.write_json(args, result)
    return result


if __name__ == "__main__":
    main()
