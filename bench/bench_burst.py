"""Minute-boundary burst: one tick of 5,000 symbols whose bars (nearly) all cross; time until every
resulting order is journaled and submitted (real multiproc system).

The replay is flat for every symbol until one minute, where all of them step up 0.4 %: the
default SMA(5/20) sees 5,000 golden crosses in one ``Bars`` message (3 symbols crossed 12 ticks
earlier, so the path is warm, as in a bot that has been trading). The figure is the largest
``bar_to_ack_ms`` among that tick's orders (feed's ``Bars.sent_at`` to the last exchange
acknowledgement), with how long each actor spent on it, from the logs.

    python -m bench.bench_burst [--quick] [--symbols N]
"""

from __future__ import annotations

import math
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402
from steadyhand.sim.clock import stored_clock  # noqa: E402

from bench import common  # noqa: E402

TICK_S = 0.5  # wall seconds per simulated minute (speed 120)
START = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
WARM = 3  # symbols that cross 12 ticks before the burst
STALE_AFTER_S = 1800.0  # simulated seconds (15 wall s): see run_once


def run_once(n_symbols: int, startup_s: float, keep: bool = False) -> dict[str, Any]:
    names = common.symbols(n_symbols)
    burst = math.ceil(startup_s / TICK_S) + 40  # the tick whose bars all cross
    ticks = burst + 10
    closes = np.full((ticks, n_symbols), 100.0)
    closes[burst:] = 100.4
    # A few orders well before the burst, as a bot that has been trading has sent: the first order
    # after a start pays one-off costs (the exchange calendar loads lazily in risk and the OMS).
    closes[burst - 12:, :WARM] = 100.4
    token = (START + timedelta(minutes=burst)).strftime("%Y%m%dT%H%MZ")
    with common.data_dir("burst", keep) as data_dir:
        replay = common.write_replay(data_dir.parent / "bars.csv", names, START, closes)
        # At speed 120 a busy machine (load > 3) delays the 5,000-bar tick past risk's stale_after_s
        # (180 simulated s = 1.5 wall s) and every signal is denied as stale: this figure is the
        # order path's throughput, so the burst's bars are never taken for stale.
        config = common.toml_config(names, sim={"replay": str(replay), "speed": 60 / TICK_S, "start_cash": 1e12},
                                    risk={**common.BUSY_RISK, "require_market_hours": False,
                                          "stale_after_s": STALE_AFTER_S})
        with common.running_bot(data_dir, config) as bot:
            clock = stored_clock(data_dir / "exchange.db")
            burst_at = clock.real_at(START + timedelta(minutes=burst + 1))
            if bot.running_at > burst_at - 2 * TICK_S:
                raise RuntimeError(f"the bot took {bot.running_at - bot.spawned_at:.1f}s to start: "
                                   f"raise --startup-s")
            time.sleep(max(0.0, burst_at - time.time()))

            def ours(e: dict[str, Any]) -> bool:
                return token in e.get("client_order_id", e.get("intent_id", ""))

            def killed() -> list[dict[str, Any]]:
                return [e for e in common.events(data_dir, "supervisor", "actor_unresponsive")
                        if e.get("actor_name") == "oms"]

            def done() -> str:
                if killed():
                    return "killed"  # the OMS missed its heartbeat deadline: the supervisor killed it
                approved = [e for e in common.events(data_dir, "risk", "risk_decision") if ours(e)]
                acked = [e for e in common.events(data_dir, "oms", "order_submitted") if ours(e)]
                complete = len(approved) >= n_symbols - WARM and len(acked) >= sum(e["approved"] for e in approved)
                return "complete" if complete else ""

            outcome = common.wait_for(done, timeout=600, interval=0.5, what="every order of the burst submitted")
            signals = [e for e in common.events(data_dir, "strategy", "signal") if ours(e)]
            decisions = [e for e in common.events(data_dir, "risk", "risk_decision") if ours(e)]
            acks = [e for e in common.events(data_dir, "oms", "order_submitted") if ours(e)]
            kills = [round(e["t"] - burst_at, 2) for e in killed()]  # seconds after the burst's bar
    if not acks:
        return {"symbols": n_symbols, "signals": len(signals), "approved": sum(e["approved"] for e in decisions),
                "submitted": 0, "outcome": outcome, "burst_s": None, "last_ack_s": None, "oms_kills_at_s": kills}
    last = max(acks, key=lambda e: e["t"])
    sent = last["t"] - last["bar_to_ack_ms"] / 1000
    return {
        "symbols": n_symbols, "signals": len(signals), "approved": sum(e["approved"] for e in decisions),
        "submitted": len(acks), "outcome": outcome, "oms_kills_at_s": kills,
        "burst_s": last["bar_to_ack_ms"] / 1000 if outcome == "complete" else None,
        "last_ack_s": last["bar_to_ack_ms"] / 1000,
        "strategy_done_s": max(e["t"] for e in signals) - sent,
        "risk_done_s": max(e["t"] for e in decisions) - sent,
        "oms_first_ack_s": min(e["t"] for e in acks) - sent,
        "oms_per_order_ms": (last["t"] - min(e["t"] for e in acks)) / max(1, len(acks) - 1) * 1000,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--symbols", type=int, help="symbols in the burst (default 5000; --quick 1000)")
    p.add_argument("--startup-s", type=float, help="allowance for the bot to start before the burst")
    args = common.parse_args(p, argv)
    n = args.symbols or common.size(args, 5000, 1000, 100)
    startup = args.startup_s or (15.0 if n >= 2000 else 8.0)
    figure = common.Figure("burst_all_orders_submitted", "s", target=1.0, note=f"{n} symbols in one tick")
    strategy, risk, first = (common.Figure("burst_strategy_signals_out", "s"),
                             common.Figure("burst_risk_decisions_out", "s"),
                             common.Figure("burst_oms_first_ack", "s"))
    per_order = common.Figure("burst_oms_per_order", "ms")
    runs = []
    for _ in range(common.repeats(args)):
        r = run_once(n, startup, args.keep)
        runs.append(r)
        if r["outcome"] == "killed":
            figure.note = (f"{n} symbols: the OMS missed its heartbeat deadline mid-burst and was killed "
                           f"{r['oms_kills_at_s']}s after the bar, having submitted {r['submitted']} orders")
        if not r["submitted"]:
            print(f"  run ({r['outcome']}): {r}", flush=True)
            continue
        print(f"  run ({r['outcome']}): {r['signals']} signals, {r['approved']} approved, {r['submitted']} "
              f"submitted; last submitted {r['last_ack_s']:.2f}s after the bar "
              f"(strategy done {r['strategy_done_s']:.2f}s, "
              f"risk done {r['risk_done_s']:.2f}s, first ack {r['oms_first_ack_s']:.2f}s, "
              f"{r['oms_per_order_ms']:.2f} ms per order in the OMS)", flush=True)
        figure.add(r["burst_s"])
        strategy.add(r["strategy_done_s"])
        risk.add(r["risk_done_s"])
        first.add(r["oms_first_ack_s"])
        per_order.add(r["oms_per_order_ms"])
    result = common.report("minute-boundary burst (multiproc)", [figure, strategy, risk, first, per_order],
                           {"runs": runs})
    common.write_json(args, result)
    return result


if __name__ == "__main__":
    main()
