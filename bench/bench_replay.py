"""Replay throughput of the live event path, side by side with backtrader and NautilusTrader.

steadyhand: the production strategy, risk, OMS (with the simulated exchange on a real
``exchange.db``, journal ``synchronous=FULL``) and portfolio actors, in Thespian's in-process
``simpleSystemBase``, driven as fast as they go: this script plays the feed (one ``Bars`` message
per tick to risk, portfolio and strategy, as the feed actor sends them) and the clock (a replay
clock that reads the current bar's close). Same data for every engine: 100 symbols x 2,000 minute
bars (200,000 bars) of a seeded random walk on real XNYS session minutes; the same SMA(5/20)
crossover, long-only, 10 shares, market orders.

- backtrader: one data feed per symbol, SMA(5)/SMA(20)/CrossOver per data, ``cerebro.run()``.
- NautilusTrader: ``BacktestEngine`` with 100 equities on one venue, a ``Strategy`` with two
  ``SimpleMovingAverage`` per instrument; runs in its own virtualenv (it pins pandas < 3, which
  steadyhand cannot use): ``$STEADYHAND_NAUTILUS_PYTHON`` or /tmp/venv-nautilus/bin/python.
- steadyhand's vectorized ``backtest()`` (the same signal function on a DataFrame) for reference.
- steadyhand lock-step: a real ``steadyhand run --replay FILE --lockstep`` (Thespian multiproc, every
  actor its own process, journal ``synchronous=FULL``) on the same file, each bar processed to
  quiescence; its trades are compared one for one with ``backtest()``'s, and its time per tick is
  split into the phases and each actor's handler time (the rest is the transport).

Bars/s is bars divided by the wall time of the engine's run, data already loaded in memory.

    python -m bench.bench_replay [--quick] [--bars N] [--symbols N] [--tmpfs]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402
from steadyhand.actors.messages import Bars
from steadyhand.domain import (
    Bar,
    market_hours,  # noqa: E402
)

from bench import common  # noqa: E402

FIRST_DAY = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday
NAUTILUS_PYTHON = os.environ.get("STEADYHAND_NAUTILUS_PYTHON", "/tmp/venv-nautilus/bin/python")


# --- data ----------------------------------------------------------------------------------------


def session_minutes(count: int) -> list[datetime]:
    minutes: list[datetime] = []
    for o, c in market_hours.sessions_between(FIRST_DAY, FIRST_DAY + timedelta(days=60)):
        m = o
        while m < c and len(minutes) < count:
            minutes.append(m)
            m += timedelta(minutes=1)
        if len(minutes) >= count:
            break
    return minutes


def make_data(n_symbols: int, ticks: int, seed: int = 11) -> tuple[list[str], list[datetime], np.ndarray]:
    rng = np.random.default_rng(seed)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.0015, (ticks, n_symbols)), axis=0))
    return common.symbols(n_symbols), session_minutes(ticks), np.round(closes, 4)


def ohlc(closes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    opens = np.vstack([closes[:1], closes[:-1]])
    return opens, np.maximum(opens, closes), np.minimum(opens, closes)


def write_csv(path: Path, names: list[str], minutes: list[datetime], closes: np.ndarray) -> Path:
    opens, highs, lows = ohlc(closes)
    with path.open("w") as fh:
        fh.write("ts,symbol,open,high,low,close,volume\n")
        for k, m in enumerate(minutes):
            ts = m.strftime("%Y-%m-%dT%H:%M:%SZ")
            fh.write("".join(f"{ts},{s},{opens[k, j]:.4f},{highs[k, j]:.4f},{lows[k, j]:.4f},"
                             f"{closes[k, j]:.4f},1000\n" for j, s in enumerate(names)))
    return path


# --- steadyhand: the live actors in simpleSystemBase ---------------------------------------------


class ReplayClock:
    """The simulated clock of a replay: ``now()`` is the close of the bar being processed.
    Module-level state, so every actor (one process, simpleSystemBase) reads the same time."""

    current = FIRST_DAY
    speed = 1.0

    def now(self) -> datetime:
        return ReplayClock.current

    def real_at(self, sim: datetime) -> float:
        return time.time()


def run_steadyhand(names: list[str], minutes: list[datetime], closes: np.ndarray, data_dir: Path,
                   warm_ticks: int = 0) -> dict[str, Any]:
    from steadyhand.actors.messages import Configure, HistoryReply, HistoryRequest, Wiring
    from steadyhand.actors.oms import OmsActor
    from steadyhand.actors.portfolio import PortfolioActor
    from steadyhand.actors.risk import RiskActor
    from steadyhand.actors.strategy import StrategyActor
    from steadyhand.config import OmsSettings as Oms
    from steadyhand.config import RunSettings, Settings
    from steadyhand.config import SimSettings as Sim
    from steadyhand.state import store
    from thespian.actors import Actor, ActorExitRequest, ActorSystem

    opens, highs, lows = ohlc(closes)
    ticks = [Bars(ts=m, bars=tuple(Bar(s, m, float(opens[k, j]), float(highs[k, j]), float(lows[k, j]),
                                       float(closes[k, j]), 1000) for j, s in enumerate(names)))
             for k, m in enumerate(minutes)]
    csv = write_csv(data_dir.parent / "bars.csv", names, minutes, closes)  # the exchange's quotes
    # The OMS polls the exchange on a wall-clock timer (0.2 s live, i.e. hundreds of times per
    # minute bar); replaying minutes in milliseconds, it must poll about once per tick so fills and
    # positions keep pace with the bars as they do live (and as backtrader's next-bar fills do).
    settings = Settings(symbols=tuple(names), sim=Sim(replay=str(csv), start_cash=1e9),
                        risk=_busy_risk(), oms=Oms(poll_interval_s=0.001))
    ReplayClock.current = minutes[0]
    store.open_store(data_dir).close()
    run = RunSettings(settings=settings, data_dir=str(data_dir), clock=ReplayClock())

    class FeedStub(Actor):
        def receiveMessage(self, message: Any, sender: Any) -> None:
            if isinstance(message, HistoryRequest):
                self.send(sender, HistoryReply(()))

    system = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        actors = {name: system.createActor(cls) for name, cls in
                  (("portfolio", PortfolioActor), ("oms", OmsActor), ("risk", RiskActor),
                   ("strategy", StrategyActor))}
        for name, address in actors.items():
            system.tell(address, Configure(name=name, settings=run))
        peers = {**actors, "feed": system.createActor(FeedStub)}
        for address in actors.values():
            system.tell(address, Wiring(peers))
        started = 0.0
        for k, batch in enumerate(ticks):
            if k == warm_ticks:
                started = time.perf_counter()
            ReplayClock.current = batch.ts + timedelta(minutes=1)  # the bar has closed
            for name in ("risk", "portfolio", "strategy"):  # as the feed sends every tick
                system.tell(actors[name], batch)
        elapsed = time.perf_counter() - started
        for address in actors.values():
            system.tell(address, ActorExitRequest())
    finally:
        system.shutdown()
    db = store.open_readonly(data_dir)
    orders = db.execute("SELECT count(*) FROM orders").fetchone()[0]
    fills = db.execute("SELECT count(*) FROM fills").fetchone()[0]
    db.close()
    bars = (len(ticks) - warm_ticks) * len(names)
    return {"engine": "steadyhand", "bars": bars, "seconds": elapsed, "bars_per_s": bars / elapsed,
            "orders": orders, "fills": fills}


def _busy_risk() -> Any:
    from steadyhand.config import RiskSettings

    return RiskSettings(**{k: v for k, v in common.BUSY_RISK.items()})


def run_steadyhand_backtest(names: list[str], minutes: list[datetime], closes: np.ndarray) -> dict[str, Any]:
    import pandas as pd
    from steadyhand.backtest.engine import backtest
    from steadyhand.config import StrategySettings

    opens, highs, lows = ohlc(closes)
    frame = pd.DataFrame({
        "ts": pd.DatetimeIndex(minutes).repeat(len(names)),
        "symbol": names * len(minutes), "open": opens.ravel(), "high": highs.ravel(), "low": lows.ravel(),
        "close": closes.ravel(), "volume": 1000})
    started = time.perf_counter()
    result = backtest(frame, StrategySettings())
    elapsed = time.perf_counter() - started
    trades = [(t.intent_id, str(t.side), t.qty, f"{t.price:.2f}") for t in result.trades]
    return {"engine": "steadyhand backtest()", "bars": frame.shape[0], "seconds": elapsed,
            "bars_per_s": frame.shape[0] / elapsed, "orders": len(result.signals), "fills": len(result.trades),
            "_trades": trades}


# --- steadyhand lock-step: a real `steadyhand run --lockstep` ---------------------------------------


def run_lockstep(csv: Path, names: list[str], data_dir: Path) -> dict[str, Any]:
    """``steadyhand run --replay csv --lockstep`` to the end of the file; bars/s over the replay
    itself (the feed's first tick to its last, from ``lockstep.json``: start-up and shutdown are not
    the engine's speed, as for the others), and where the time per tick went."""
    import sqlite3

    config = common.toml_config(names, sim={"start_cash": 1e12}, risk=common.BUSY_RISK)
    bot = common.Bot(data_dir, config, args=("--replay", str(csv), "--lockstep")).start(timeout=300)
    assert bot.proc is not None
    try:
        code = bot.proc.wait(3600)
    finally:
        bot.stop()
    if code != 0:
        raise RuntimeError("lock-step run failed:\n" + "".join(bot.output[-30:]))
    result = json.loads((data_dir / "lockstep.json").read_text())
    db = sqlite3.connect(data_dir / "steadyhand.db")
    try:
        orders = db.execute("SELECT count(*) FROM orders").fetchone()[0]
        trades = [tuple(r) for r in db.execute("SELECT client_order_id, side, qty, price FROM fills ORDER BY ts")]
    finally:
        db.close()
    ticks = max(1, result["ticks"])
    per_tick = {"wall": result["elapsed_s"] * 1000 / ticks}
    per_tick.update({f"{k}_phase": v * 1000 / ticks for k, v in result["phase_s"].items()})
    per_tick.update({f"{k}_busy": v * 1000 / ticks for k, v in result["busy_s"].items()})
    return {"engine": "steadyhand lock-step", "bars": result["bars"], "seconds": result["elapsed_s"],
            "bars_per_s": result["bars"] / result["elapsed_s"], "orders": orders, "fills": len(trades),
            "ticks": result["ticks"], "fill_steps": result["fill_steps"],
            "ms_per_tick": {k: round(v, 3) for k, v in per_tick.items()}, "_trades": trades}


def _time_per_tick(run: dict[str, Any]) -> str:
    """Where a lock-step tick's wall time goes: the two phases, each actor's handlers, the rest."""
    ms = run["ms_per_tick"]
    parts = ("fills", "bars", "prepare", "publish")
    rest = ms["wall"] - sum(ms.get(f"{k}_phase", 0.0) for k in parts)
    actors = ", ".join(f"{k[:-5]} {v:.2f}" for k, v in ms.items() if k.endswith("_busy"))
    return (f"per tick {ms['wall']:.2f} ms wall = fills round {ms.get('fills_phase', 0.0):.2f} (on "
            f"{run['fill_steps']} of {run['ticks']} ticks) + bars round {ms.get('bars_phase', 0.0):.2f} + feed "
            f"prepare {ms.get('prepare_phase', 0.0):.2f} + feed publish (3 Bars sends) "
            f"{ms.get('publish_phase', 0.0):.2f} + other {rest:.2f}; handler time per actor (overlapping: the "
            f"portfolio and risk take their Bars while the strategy works): {actors}")


def _matched(backtest: list[tuple[Any, ...]], lockstep: list[tuple[Any, ...]]) -> tuple[int, int]:
    """(trades equal in id, side and qty, of those also equal in fill price at the cent)."""
    by_id = {t[0]: t for t in lockstep}
    same = [t for t in backtest if t[0] in by_id and by_id[t[0]][1:3] == t[1:3]]
    priced = [t for t in same if by_id[t[0]][3] == t[3]]
    return len(same), len(priced)


# --- backtrader ----------------------------------------------------------------------------------


def run_backtrader(names: list[str], minutes: list[datetime], closes: np.ndarray) -> dict[str, Any]:
    import backtrader as bt
    import pandas as pd

    class SmaCross(bt.Strategy):
        params = (("fast", 5), ("slow", 20), ("qty", 10))

        def __init__(self) -> None:
            self.cross = {d: bt.ind.CrossOver(bt.ind.SMA(d.close, period=self.p.fast),
                                              bt.ind.SMA(d.close, period=self.p.slow)) for d in self.datas}
            self.orders = 0

        def next(self) -> None:
            for d in self.datas:
                c = self.cross[d][0]
                pos = self.getposition(d).size
                if c > 0 and pos < self.p.qty:
                    self.buy(data=d, size=self.p.qty - pos)
                    self.orders += 1
                elif c < 0 and pos > 0:
                    self.sell(data=d, size=pos)
                    self.orders += 1

    opens, highs, lows = ohlc(closes)
    index = pd.DatetimeIndex([m.replace(tzinfo=None) for m in minutes])
    cerebro = bt.Cerebro(stdstats=False)
    for j, s in enumerate(names):
        df = pd.DataFrame({"open": opens[:, j], "high": highs[:, j], "low": lows[:, j], "close": closes[:, j],
                           "volume": 1000.0}, index=index)
        cerebro.adddata(bt.feeds.PandasData(dataname=df), name=s)
    cerebro.addstrategy(SmaCross)
    cerebro.broker.setcash(1e9)
    started = time.perf_counter()
    strategy = cerebro.run()[0]
    elapsed = time.perf_counter() - started
    bars = closes.size
    return {"engine": "backtrader", "bars": bars, "seconds": elapsed, "bars_per_s": bars / elapsed,
            "orders": strategy.orders, "fills": None}


# --- NautilusTrader (its own virtualenv) ---------------------------------------------------------


def run_nautilus(csv: Path) -> dict[str, Any] | None:
    if not Path(NAUTILUS_PYTHON).exists():
        print(f"  nautilus: {NAUTILUS_PYTHON} not found (set STEADYHAND_NAUTILUS_PYTHON)", flush=True)
        return None
    script = Path(__file__).resolve().parent / "nautilus_sma.py"
    done = subprocess.run([NAUTILUS_PYTHON, str(script), str(csv)], capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        print(f"  nautilus failed:\n{done.stderr[-3000:]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- main ----------------------------------------------------------------------------------------


def _profiled(profile: bool, fn: Any, *args: Any) -> Any:
    if not profile:
        return fn(*args)
    from pyinstrument import Profiler

    profiler = Profiler()
    profiler.start()
    try:
        return fn(*args)
    finally:
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--bars", type=int, help="total bars (default 200000; --quick 50000)")
    p.add_argument("--symbols", type=int, default=100)
    p.add_argument("--tmpfs", action="store_true", help="steadyhand's data dir on /dev/shm (no fsync cost)")
    p.add_argument("--skip", default="", help="comma-separated engines to skip: backtrader,nautilus,lockstep")
    p.add_argument("--profile", action="store_true", help="print a pyinstrument profile of steadyhand's run")
    args = common.parse_args(p, argv)
    total = args.bars or common.size(args, 200_000, 50_000, 5_000)
    ticks = total // args.symbols
    names, minutes, closes = make_data(args.symbols, ticks)
    skip = set(filter(None, args.skip.split(",")))
    figures = {
        "steadyhand": common.Figure("replay_steadyhand_live_path", "bars/s"),
        "backtrader": common.Figure("replay_backtrader", "bars/s"),
        "nautilus": common.Figure("replay_nautilus", "bars/s"),
        "backtest": common.Figure("replay_steadyhand_backtest_fn", "bars/s"),
        "lockstep": common.Figure("replay_steadyhand_lockstep", "bars/s"),
    }
    ratio_bt = common.Figure("ratio_steadyhand_to_backtrader", "x", target=10.0, op=">=")
    ratio_ls = common.Figure("ratio_lockstep_to_backtrader", "x")
    parity = common.Figure("lockstep_trades_equal_to_backtest", "%", target=100.0, op=">=")
    ratio_nt = common.Figure("ratio_steadyhand_to_nautilus", "x")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="steadyhand-bench-replay-") as tmp:
        csv = write_csv(Path(tmp) / "bars.csv", names, minutes, closes)
        for _ in range(common.repeats(args)):
            base = Path(tempfile.mkdtemp(dir="/dev/shm" if args.tmpfs else tmp))
            row = {"steadyhand": _profiled(args.profile, run_steadyhand, names, minutes, closes, base / "var")}
            row["backtest"] = run_steadyhand_backtest(names, minutes, closes)
            if "lockstep" not in skip:
                with common.data_dir("lockstep") as ls_dir:
                    if args.tmpfs:  # the bot's data dir too: the journal's fsyncs cost nothing there
                        ls_dir = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="steadyhand-lockstep-")) / "var"
                    try:
                        row["lockstep"] = run_lockstep(csv, names, ls_dir)
                    finally:
                        if args.tmpfs:
                            import shutil

                            shutil.rmtree(ls_dir.parent, ignore_errors=True)
            if "backtrader" not in skip:
                row["backtrader"] = run_backtrader(names, minutes, closes)
            if "nautilus" not in skip:
                row["nautilus"] = run_nautilus(csv)
            if args.tmpfs:
                import shutil

                shutil.rmtree(base, ignore_errors=True)
            trades = {key: r.pop("_trades") for key, r in row.items() if r and "_trades" in r}
            runs.append(row)
            for key, r in row.items():
                if r:
                    figures[key].add(r["bars_per_s"])
                    print(f"  {r['engine']:<22} {r['bars']:>8} bars in {r['seconds']:7.2f}s = "
                          f"{r['bars_per_s']:>10,.0f} bars/s  (orders {r['orders']}, fills {r['fills']})",
                          flush=True)
            if row.get("lockstep"):
                same, priced = _matched(trades["backtest"], trades["lockstep"])
                n_trades = len(trades["backtest"])
                row["lockstep"].update(trades_equal=same, trades_equal_priced=priced, backtest_trades=n_trades)
                parity.add(100.0 * same / max(1, n_trades))
                print(f"  lock-step {_time_per_tick(row['lockstep'])}", flush=True)
                print(f"  lock-step trades equal to backtest(): {same} of {n_trades} (id, side, qty; "
                      f"{priced} also at the same price in cents; lock-step made {len(trades['lockstep'])})",
                      flush=True)
                if row.get("backtrader"):
                    ratio_ls.add(row["lockstep"]["bars_per_s"] / row["backtrader"]["bars_per_s"])
            share = row["steadyhand"]["orders"] / max(1, row["backtest"]["orders"])
            if share < 0.8:  # a fast run that trades much less than the strategy asks is not a result
                print(f"  WARNING: the live path sent {share:.0%} of the orders the strategy's signals ask for "
                      f"({row['steadyhand']['orders']} of {row['backtest']['orders']}): look for denials",
                      flush=True)
            ours = row["steadyhand"]["bars_per_s"]
            if row.get("backtrader"):
                ratio_bt.add(ours / row["backtrader"]["bars_per_s"])
            if row.get("nautilus"):
                ratio_nt.add(ours / row["nautilus"]["bars_per_s"])
    note = f"{args.symbols} symbols x {ticks} ticks = {total} bars; data dir on {'tmpfs' if args.tmpfs else 'disk'}"
    figures["steadyhand"].note = note
    result = common.report("replay throughput (in-process, same actors)",
                           [*figures.values(), ratio_bt, ratio_nt, ratio_ls, parity], {"runs": runs})
    common.write_json(args, result)
    return result


if __name__ == "__main__":
    main()
