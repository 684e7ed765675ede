"""What every benchmark shares: figures (median, min, max over repeats), the machine, a real
``steadyhand run`` process group that is always stopped and proven gone, replay files, log events.

Benchmarks print figures; they never fail on speed. A figure is printed as

    bar_to_ack_p50_ms     median 2.41 ms  (min 2.30, max 2.77; 3 runs)  target <= 3 ms: met
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from steadyhand.runtime import procs

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Where this process's new bots and seeded books start their simulated clock (``--start``, set by
# parse_args); "" is the latest session's open, as ``steadyhand run`` does without one.
SIM_START = ""


# --- figures ------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured quantity over repeated runs, with its target (``op``: "<=" or ">=")."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: float | None = None
    op: str = "<="
    note: str = ""

    def add(self, value: float | None) -> None:
        if value is not None:
            self.values.append(float(value))

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def status(self) -> str:
        if self.target is None or self.median is None:
            return ""
        ok = self.median <= self.target if self.op == "<=" else self.median >= self.target
        return "met" if ok else "MISSED"

    def line(self) -> str:
        if not self.values:
            return f"{self.name:<34} no value ({self.note or 'not measured'})"
        text = (f"{self.name:<34} median {_num(self.median)} {self.unit}  "
                f"(min {_num(min(self.values))}, max {_num(max(self.values))}; {len(self.values)} run"
                f"{'s' if len(self.values) != 1 else ''})")
        if self.target is not None:
            text += f"  target {self.op} {_num(self.target)} {self.unit}: {self.status}"
        if self.note:
            text += f"  [{self.note}]"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "values": self.values, "median": self.median,
                "min": min(self.values) if self.values else None,
                "max": max(self.values) if self.values else None,
                "target": self.target, "op": self.op, "status": self.status, "note": self.note}


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def report(title: str, figures: Iterable[Figure], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    figures = list(figures)
    print(f"\n== {title}", flush=True)
    for figure in figures:
        print("  " + figure.line(), flush=True)
    return {"title": title, "figures": [f.as_dict() for f in figures], **(extra or {})}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (minutes, not tens)")
    p.add_argument("--tiny", action="store_true", help="smallest sizes: proves the script works (smoke test)")
    p.add_argument("--repeats", type=int, help="runs per figure (default: 3, --quick 2, --tiny 1)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the data directories (for a look afterwards)")
    p.add_argument("--start", default="", help="where a new bot's simulated clock starts (steadyhand run "
                   "--start: YYYY-MM-DD or an ISO timestamp); default the latest session's open")
    return p


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``p.parse_args(argv)``, remembering ``--start`` for every bot and seeded book of this run."""
    global SIM_START
    args = p.parse_args(argv)
    SIM_START = args.start
    return args


def repeats(args: argparse.Namespace, full: int = 3, quick: int = 2) -> int:
    if args.repeats:
        return args.repeats
    return 1 if args.tiny else quick if args.quick else full


def size(args: argparse.Namespace, full: Any, quick: Any, tiny: Any) -> Any:
    return tiny if args.tiny else quick if args.quick else full


def write_json(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


# --- the machine ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0], "load_avg": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


# --- data directories ----------------------------------------------------------------------------


@contextlib.contextmanager
def data_dir(name: str, keep: bool = False) -> Iterator[Path]:
    """A fresh ``<tmp>/<name>-XXXX/var``; removed afterwards unless ``keep``."""
    root = Path(tempfile.mkdtemp(prefix=f"steadyhand-bench-{name}-"))
    try:
        yield root / "var"
    finally:
        leftovers = procs.run_processes(root / "var")
        if leftovers:  # never leave a process behind, whatever happened
            procs.terminate(leftovers)
        if keep:
            print(f"  (kept {root})", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


def toml_config(symbols: Sequence[str] | None = None, **sections: dict[str, Any]) -> str:
    """A steadyhand.toml: top-level ``symbols`` and ``[section]`` tables of scalars."""
    lines = []
    if symbols is not None:
        lines.append("symbols = [" + ", ".join(f'"{s}"' for s in symbols) + "]")
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


# Limits that would stop a benchmark's deliberately busy strategy (never the checks themselves).
BUSY_RISK = {"max_orders_per_minute": 1_000_000, "max_daily_loss": 1e12, "max_drawdown": 1e12,
             "max_gross_exposure": 1e12, "max_open_orders": 100_000, "max_position_qty": 1_000_000}


def replay_config(replay: Path, names: Sequence[str], tick_s: float) -> str:
    """A run that replays ``replay`` at one simulated minute per ``tick_s`` wall seconds, around the
    clock (market hours not required: bar times run on past the close), with busy limits."""
    return toml_config(names, sim={"replay": str(replay), "speed": 60 / tick_s, "start_cash": 1e12},
                       risk={**BUSY_RISK, "require_market_hours": False})


# --- a real `steadyhand run` ---------------------------------------------------------------------


class Bot:
    """``steadyhand run`` as a real process group (as tests/harness.py does, without pytest)."""

    def __init__(self, data_dir: Path, config: str | None = None, args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.env.pop("STEADYHAND_TEST_HOOKS", None)
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = data_dir.parent / "steadyhand.toml"
            self.config_path.write_text(config)
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.started = threading.Event()
        self.spawned_at = 0.0  # time.time() just before the process was started
        self.running_at = 0.0  # when "steadyhand running" was printed (every actor up)
        self.admin_port = 0

    def start(self, timeout: float = 120) -> Bot:
        cmd = [PYTHON, "-m", "steadyhand.cli", "run", "--data-dir", str(self.data_dir), *self.args]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        if SIM_START and not self._has_a_clock():
            cmd += ["--start", SIM_START]
        self.started.clear()
        self.output = []
        self.spawned_at = time.time()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env, start_new_session=True, cwd=REPO)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if not self.started.wait(timeout):
            self.kill_group()
            raise RuntimeError("steadyhand run did not start:\n" + "".join(self.output[-40:]))
        self.admin_port = json.loads((self.data_dir / "run.json").read_text())["admin_port"]
        return self

    def _has_a_clock(self) -> bool:
        """The bench set the clock already (anchored, or seeded a book), or the bot replays a file
        (its first bar is the start), or it was given a start."""
        import tomllib

        config = tomllib.loads(self.config_path.read_text()) if self.config_path is not None else {}
        return ((self.data_dir / "exchange.db").exists() or "--start" in self.args or "--replay" in self.args
                or bool(config.get("sim", {}).get("replay")))

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            if line.startswith("steadyhand running"):
                self.running_at = time.time()
                self.started.set()

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "steadyhand.cli", *args, "--data-dir", str(self.data_dir)],
                              capture_output=True, text=True, timeout=timeout, env=self.env, cwd=REPO)

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json").stdout)

    def pids(self) -> dict[str, int]:
        """Actor name -> pid, from the running supervisor."""
        return {name: a["pid"] for name, a in self.status()["actors"].items()}

    def processes(self) -> list[psutil.Process]:
        """Every process of this run: `steadyhand run` itself, the Thespian admin, every actor."""
        return procs.run_processes(self.data_dir)

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()

    def kill_group(self) -> float:
        """SIGKILL the whole process group (a power cut); returns when it was sent."""
        assert self.proc is not None
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return at

    def kill_all(self) -> float:
        """SIGKILL every process of the run at once (a power cut, or systemd's control-group kill):
        ``steadyhand run``, the Thespian admin and every actor. (Killing the run's process group
        is not enough: Thespian's admin calls setsid(), so it and the actors are in a session of
        their own.) Returns when the signals were sent."""
        assert self.proc is not None
        victims = self.processes()
        at = time.time()
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        psutil.wait_procs(victims, timeout=10)
        return at

    def prove_gone(self) -> None:
        """Nothing of this run is left: no process, no admin port (stopped by force if need be)."""
        left = procs.run_processes(self.data_dir)
        if left:
            procs.terminate(left)
            raise RuntimeError(f"leftover processes {[p.pid for p in left]} (terminated)")
        if self.admin_port and not procs.wait_until(lambda: not procs.port_listening(self.admin_port), 10):
            raise RuntimeError(f"admin port {self.admin_port} still listening")


@contextlib.contextmanager
def running_bot(data_dir: Path, config: str | None = None, args: Sequence[str] = (),
                start: bool = True) -> Iterator[Bot]:
    """A bot that is stopped (SIGINT, then SIGKILL of its group) and proven gone afterwards."""
    bot = Bot(data_dir, config=config, args=args)
    try:
        if start:
            bot.start()
        yield bot
    finally:
        if bot.proc is not None and bot.proc.poll() is None:
            bot.stop()
        bot.prove_gone()


# --- log events ----------------------------------------------------------------------------------


def events(data_dir: Path, actor: str, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON-line events of one actor (rotated files included), each with ``t`` (epoch s)."""
    log_dir = data_dir / "logs"
    paths = sorted(log_dir.glob(f"{actor}.jsonl.*"), reverse=True) + [log_dir / f"{actor}.jsonl"]
    found = []
    for path in paths:
        if not path.exists():
            continue
        with path.open() as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line being written right now
                if name is None or entry.get("event") == name:
                    entry["t"] = datetime.fromisoformat(entry["ts"]).timestamp()
                    found.append(entry)
    return found


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    """Poll until truthy; RuntimeError at the deadline."""
    value = procs.wait_until(predicate, timeout, interval)
    if not value:
        raise RuntimeError(f"timed out after {timeout:g}s waiting for {what or predicate}")
    return value


def wait_event(data_dir: Path, actor: str, name: str, after: float, timeout: float,
               where: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
    """The first ``name`` event of ``actor`` logged after ``after`` (epoch s)."""
    def find() -> dict[str, Any] | None:
        return next((e for e in events(data_dir, actor, name) if e["t"] >= after and where(e)), None)

    return wait_for(find, timeout, what=f"{actor} {name}")


# --- replay files --------------------------------------------------------------------------------


def symbols(n: int) -> list[str]:
    """``n`` distinct upper-case tickers: S0000, S0001, ..."""
    return [f"S{i:04d}" for i in range(n)]


def write_replay(path: Path, names: Sequence[str], start: datetime, closes: Any) -> Path:
    """A replay CSV: one bar per symbol per minute from ``start``; ``closes`` is (ticks, symbols).
    Open is the previous close, so every bar is valid (high/low cover open and close)."""
    import numpy as np

    closes = np.asarray(closes, dtype=np.float64)
    ticks = closes.shape[0]
    opens = np.vstack([closes[:1], closes[:-1]])
    with path.open("w") as fh:
        fh.write("ts,symbol,open,high,low,close,volume\n")
        for k in range(ticks):
            ts = (start + timedelta(minutes=k)).strftime("%Y-%m-%dT%H:%M:%SZ")
            o, c = opens[k], closes[k]
            hi, lo = np.maximum(o, c), np.minimum(o, c)
            fh.write("".join(f"{ts},{s},{o[j]:.4f},{hi[j]:.4f},{lo[j]:.4f},{c[j]:.4f},1000\n"
                             for j, s in enumerate(names)))
    return path


def step_closes(ticks: int, n_symbols: int, period: int, lead_in: int, step: float = 0.004,
                base: float = 100.0) -> Any:
    """Closes that make SMA(5/20) cross on a schedule: each symbol steps up by ``step`` (relative)
    once per ``period`` ticks and back down half a period later, phases staggered so every tick
    after ``lead_in`` has about ``2 * n_symbols / period`` crossings. Flat before ``lead_in``."""
    import numpy as np

    closes = np.full((ticks, n_symbols), base)
    for j in range(n_symbols):
        phase = j % period
        for k in range(lead_in, ticks):
            if (k - lead_in - phase) % period < period // 2 and k - lead_in >= phase:
                closes[k, j] = base * (1 + step)
    return closes


def rss_by_process(processes: Iterable[psutil.Process]) -> dict[str, float]:
    """RSS in MiB per process, keyed ``name:pid`` (name from the command line)."""
    out = {}
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            out[f"{proc.pid}"] = proc.memory_info().rss / 2**20
    return out


# --- a book of open orders (what a bot that has been trading leaves at the broker) ----------------


def seed_open_orders(data_dir: Path, n: int, names: Sequence[str], speed: float = 60.0,
                     journal: bool = True) -> list[str]:
    """Before the bot's first start: ``n`` resting GTC limit buys (1 share at $1.00, far below the
    market: they never fill) placed at the simulated exchange through its public API, and -- with
    ``journal`` -- the OMS's journal rows for them (SUBMITTED, as the OMS writes them after the
    exchange's acknowledgement). Returns their client order ids."""
    from decimal import Decimal

    from steadyhand.brokers import make_broker
    from steadyhand.config import RunSettings, Settings
    from steadyhand.domain import OrderSpec, OrderType, Side, TimeInForce
    from steadyhand.sim.clock import anchor_clock, resolve_start
    from steadyhand.state import store

    data_dir.mkdir(parents=True, exist_ok=True)
    store.open_store(data_dir).close()
    clock = anchor_clock(str(data_dir / "exchange.db"), speed=speed, start=resolve_start(SIM_START))
    # Every order placed at the same simulated instant: the exchange then has nothing to catch up
    # between two submissions (its catch-up walks every open order, which would make seeding O(n^2)).
    run = RunSettings(settings=Settings(symbols=tuple(names)), data_dir=str(data_dir),
                      clock=_FrozenClock(clock.now()))
    broker = make_broker(run)
    db = store.connect(run.db_path, synchronous="FULL")
    ids = []
    try:
        for i in range(n):
            spec = OrderSpec(client_order_id=f"bench-open-{i:05d}", symbol=names[i % len(names)], side=Side.BUY,
                             qty=1, type=OrderType.LIMIT, time_in_force=TimeInForce.GTC,
                             limit_price=Decimal("1.00"))
            order = broker.submit(spec)
            ids.append(spec.client_order_id)
            if journal:
                now = store.now_iso()
                with store.transaction(db):
                    db["orders"].insert({
                        "client_order_id": spec.client_order_id, "broker_order_id": order.broker_order_id,
                        "symbol": spec.symbol, "side": "buy", "qty": 1, "type": "limit", "time_in_force": "gtc",
                        "limit_price": "1.00", "status": order.status.value, "filled_qty": 0,
                        "created_at": now, "submitted_at": store.iso(order.submitted_at), "updated_at": now})
    finally:
        broker.close()
        db.close()
    return ids


@dataclass(frozen=True)
class _FrozenClock:
    at: datetime
    speed: float = 1.0

    def now(self) -> datetime:
        return self.at


def exchange_open_orders(data_dir: Path) -> int:
    """Open orders in the simulated exchange's book (read-only)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{data_dir / 'exchange.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT count(*) FROM orders WHERE status IN ('submitted', 'partially_filled')"
                            ).fetchone()[0]
    finally:
        conn.close()


def cpu_seconds(processes: Iterable[psutil.Process]) -> dict[int, float]:
    """User + system CPU seconds per pid (children excluded: every process is listed itself)."""
    out = {}
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
    return out
