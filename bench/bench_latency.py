"""Bar -> order accepted by the sim exchange (durable journal, real multiproc system): p50 / p99.

A real ``steadyhand run`` replays a file whose bars make the default SMA(5/20) cross on a schedule
(each symbol steps up once per 40 ticks and back down 20 ticks later, phases staggered), so every
tick carries about ``--orders-per-tick`` orders. The latency of each order is what the OMS logs in
its ``order_submitted`` event: ``Bars.sent_at`` (stamped by the feed) to the exchange's
acknowledgement, after the PENDING_SUBMIT row is committed (``synchronous=FULL``). Orders of one tick
go out one after another, so the k-th order of a tick waits for the k-1 before it; the first
order of each tick is reported too (the path without that queueing). The first 3 s of ticks with
orders after the start are left out (the first order loads the exchange calendar in risk and in the
OMS, which backs up the ticks behind it); that first order is reported on its own. For reference,
the same three hops (feed -> strategy -> risk -> OMS) between do-nothing actors on multiprocTCPBase
are timed too: Thespian's floor on this machine.

    python -m bench.bench_latency [--quick] [--orders N] [--orders-per-tick K]
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
from steadyhand.actors.messages import Bars
from steadyhand.domain import Bar
from steadyhand.sim.clock import stored_clock  # noqa: E402
from thespian.actors import Actor, ActorSystem  # noqa: E402

from bench import common  # noqa: E402

PERIOD = 40  # ticks per up/down cycle of each symbol (>= 2 * slow window)
TICK_S = 0.25  # wall seconds per simulated minute (speed 240): the system is idle between ticks
# The first order after a start loads the exchange calendar in risk and in the OMS (~0.5 s each),
# which backs up the ticks behind it for a second or two: orders of the first 3 s of ticks are
# left out of the percentiles (the first order's latency is reported on its own).
SKIP_TICKS = math.ceil(3.0 / TICK_S)
STARTUP_S = 8.0  # allowance for the bot to start; ticks before that are skipped by the feed
START = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)  # a Friday session open


def run_once(orders: int, per_tick: int, keep: bool = False) -> dict[str, Any]:
    n_symbols = max(1, per_tick * PERIOD // 2)
    lead_in = math.ceil(STARTUP_S / TICK_S) + 25  # start-up (skipped by the feed), then warm-up
    ticks = lead_in + PERIOD // 2 + SKIP_TICKS + math.ceil(orders / per_tick * 1.1)
    names = common.symbols(n_symbols)
    with common.data_dir("latency", keep) as data_dir:
        replay = common.write_replay(data_dir.parent / "bars.csv", names, START,
                                     common.step_closes(ticks, n_symbols, PERIOD, lead_in))
        config = common.replay_config(replay, names, TICK_S)
        with common.running_bot(data_dir, config) as bot:
            clock = stored_clock(data_dir / "exchange.db")
            end = clock.real_at(START + timedelta(minutes=ticks + 1))
            first_tick = clock.at_real(bot.running_at)
            time.sleep(max(0.0, end - time.time()) + 1.0)  # the whole replay, then settle
            submitted = common.events(data_dir, "oms", "order_submitted")
            signals = {e["intent_id"]: e["t"] for e in common.events(data_dir, "strategy", "signal")}
            decisions = {e["client_order_id"]: e["t"] for e in common.events(data_dir, "risk", "risk_decision")}
    by_tick: dict[str, list[float]] = {}
    for e in submitted:
        if e.get("bar_to_ack_ms") is not None:
            by_tick.setdefault(e["client_order_id"].split("-")[2], []).append(e["bar_to_ack_ms"])
    first_order_ms = next(iter(by_tick.values()))[0] if by_tick else None
    skipped = set(sorted(by_tick)[:SKIP_TICKS])
    by_tick = {k: v for k, v in by_tick.items() if k not in skipped}
    submitted = [e for e in submitted if e["client_order_id"].split("-")[2] not in skipped]
    latencies = [v for values in by_tick.values() for v in values]
    firsts = [v[0] for v in by_tick.values()]
    # Where the time goes: bar sent -> signal logged (strategy) -> decision logged (risk) -> ack (OMS).
    stages: dict[str, list[float]] = {"strategy": [], "risk": [], "oms": []}
    for e in submitted:
        cid, ms = e["client_order_id"], e.get("bar_to_ack_ms")
        if ms is None or cid not in signals or cid not in decisions:
            continue
        sent = e["t"] - ms / 1000
        stages["strategy"].append((signals[cid] - sent) * 1000)
        stages["risk"].append((decisions[cid] - signals[cid]) * 1000)
        stages["oms"].append((e["t"] - decisions[cid]) * 1000)
    return {"orders": len(latencies), "ticks": len(by_tick), "symbols": n_symbols, "first_order_ms": first_order_ms,
            "first_tick_sim": first_tick.isoformat(),
            "p50": common.percentile(latencies, 50) if latencies else None,
            "p99": common.percentile(latencies, 99) if latencies else None,
            "max": max(latencies) if latencies else None,
            "first_p50": common.percentile(firsts, 50) if firsts else None,
            "first_p99": common.percentile(firsts, 99) if firsts else None,
            "stage_p50_ms": {k: round(common.percentile(v, 50), 2) for k, v in stages.items() if v}}


class _Hop(Actor):
    """Passes (t0, ...) on to the next actor; the last one keeps the latencies."""

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if isinstance(message, dict):
            self.next, self.seen = message.get("next"), []
        elif message == "report":
            self.send(sender, self.seen)
        elif isinstance(message, tuple):  # (t0, payload): the payload rides the first hop only
            self.send(self.next, message[0])
        elif isinstance(message, float):
            if self.next is None:
                self.seen.append((time.time() - message) * 1000)
            else:
                self.send(self.next, message)


def tick_of_bars(symbols: int) -> Bars:
    """A tick as the feed sends it, for the transport cost of its size."""
    ts = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
    return Bars(ts=ts, bars=tuple(Bar(s, ts, 100.0, 100.5, 99.5, 100.25, 1000) for s in common.symbols(symbols)))


def thespian_floor(messages: int, first_hop_payload: Any = None) -> dict[str, float]:
    """One-way latency through 3 hops of do-nothing actors (multiprocTCPBase, loopback); with
    ``first_hop_payload``, the first hop carries it (as feed -> strategy carries a tick of bars)."""
    from steadyhand.runtime import procs

    procs.bind_thespian_to_loopback()
    system = ActorSystem("multiprocTCPBase", {"Admin Port": procs.free_port()}, transientUnique=True)
    try:
        chain = [system.createActor(_Hop) for _ in range(4)]
        for i, hop in enumerate(chain):
            system.tell(hop, {"next": chain[i + 1] if i + 1 < len(chain) else None})
        for _ in range(messages):
            system.tell(chain[0], time.time() if first_hop_payload is None else (time.time(), first_hop_payload))
            time.sleep(0.005)  # one at a time, as ticks are
        seen = system.ask(chain[-1], "report", 10) or []
    finally:
        system.shutdown()
    return {"p50": common.percentile(seen, 50), "p99": common.percentile(seen, 99), "n": len(seen)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, help="orders per run (default 2000; --quick 600)")
    p.add_argument("--orders-per-tick", type=int, default=4)
    args = common.parse_args(p, argv)
    orders = args.orders or common.size(args, 2000, 600, 60)
    p50 = common.Figure("bar_to_ack_p50", "ms", target=3.0)
    p99 = common.Figure("bar_to_ack_p99", "ms", target=10.0)
    f50 = common.Figure("bar_to_ack_first_of_tick_p50", "ms")
    f99 = common.Figure("bar_to_ack_first_of_tick_p99", "ms")
    first = common.Figure("bar_to_ack_first_order_after_start", "ms")
    runs = []
    for _ in range(common.repeats(args)):
        r = run_once(orders, args.orders_per_tick, args.keep)
        runs.append(r)
        print(f"  run: {r['orders']} orders over {r['ticks']} ticks ({r['symbols']} symbols): "
              f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.1f} ms; stage p50s "
              f"{r['stage_p50_ms']}", flush=True)
        p50.add(r["p50"])
        p99.add(r["p99"])
        f50.add(r["first_p50"])
        f99.add(r["first_p99"])
        first.add(r["first_order_ms"])
    floor50 = common.Figure("thespian_3_hops_p50", "ms", note="do-nothing actors, same machine, same moment")
    floor99 = common.Figure("thespian_3_hops_p99", "ms")
    bars50 = common.Figure("thespian_3_hops_tick_of_80_bars_p50", "ms",
                           note="the same, the first hop carrying a Bars of 80 symbols")
    bars99 = common.Figure("thespian_3_hops_tick_of_80_bars_p99", "ms")
    for _ in range(common.repeats(args)):
        f = thespian_floor(common.size(args, 1000, 300, 50))
        floor50.add(f["p50"])
        floor99.add(f["p99"])
        f = thespian_floor(common.size(args, 1000, 300, 50), first_hop_payload=tick_of_bars(80))
        bars50.add(f["p50"])
        bars99.add(f["p99"])
    note = f"{args.orders_per_tick} orders per tick, >= {orders} orders per run"
    p50.note = note
    result = common.report("bar -> order accepted (multiproc, durable journal)",
                           [p50, p99, f50, f99, first, floor50, floor99, bars50, bars99], {"runs": runs})
    common.write_json(args, result)
    return result


if __name__ == "__main__":
    main()
