"""Profile one OMS reconciliation with N open orders (in-process, pyinstrument): where the
quadratic time goes. Evidence for BENCHMARKS.md "What to fix" items 2 and 3.

    python -m bench.profile_reconcile [N]      # default 100 open orders
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from steadyhand.actors.messages import Configure, Wiring
from steadyhand.actors.oms import OmsActor  # noqa: E402
from steadyhand.config import RunSettings, Settings  # noqa: E402
from steadyhand.sim.clock import stored_clock  # noqa: E402
from thespian.actors import Actor, ActorSystem  # noqa: E402

from bench import common  # noqa: E402
from bench.bench_recovery import SYMBOLS  # noqa: E402


class _Sink(Actor):
    def receiveMessage(self, message: Any, sender: Any) -> None:
        pass


def main(n: int = 100) -> None:
    from pyinstrument import Profiler

    with tempfile.TemporaryDirectory(prefix="steadyhand-profile-") as tmp:
        data_dir = Path(tmp) / "var"
        common.seed_open_orders(data_dir, n, SYMBOLS)
        run = RunSettings(settings=Settings(), data_dir=str(data_dir), clock=stored_clock(data_dir / "exchange.db"))
        system = ActorSystem("simpleSystemBase", transientUnique=True)
        try:
            oms = system.createActor(OmsActor)
            system.tell(oms, Configure(name="oms", settings=run))
            sink = system.createActor(_Sink)
            profiler = Profiler()
            profiler.start()
            started = time.perf_counter()
            system.tell(oms, Wiring({"risk": sink, "portfolio": sink, "alerter": sink}))  # reconciles
            elapsed = time.perf_counter() - started
            profiler.stop()
        finally:
            system.shutdown()
    print(f"reconciliation of {n} open orders: {elapsed:.2f}s")
    print(profiler.output_text(unicode=False, color=False))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
