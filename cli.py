"""The ``steadyhand`` command line.

``steadyhand run`` starts the actor system in the foreground; every other command finds the running
system through ``<data dir>/run.json`` (admin port, pid) and talks to the supervisor, or reads the
state database. A command that needs the running bot checks the admin port first and says
"steadyhand is not running" rather than letting Thespian start a new, empty system on that port.

Exit codes: 0 fine, 1 not running / failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steadyhand.brokers import BROKERS
from steadyhand.config import ConfigError, RunSettings, Settings, load_settings, with_overrides, with_strategy
from steadyhand.control.client import (
    ASK_TIMEOUT_S,
    RUN_FILE,
    Connection,
    NotRunning,
    connect,
    data_dir_of,
    quiet_logging,
    read_run_file,
    running_info,
    write_run_file,
)
from steadyhand.control.commands import SecretError
from steadyhand.dashboard.status import (
    dashboard_url,
    equity_text,
    portfolio_lines,
    portfolio_of,
    public,
    utilization_of,
)
from steadyhand.portfolio.books import read_strategies, strategy_lines
from steadyhand.runtime import procs
from steadyhand.state import store

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
START_TIMEOUT_S = 60.0
LIVE_VIEW_PERIOD_S = 3.0
STRATEGY_HELP = ('the strategy class: "path/to/file.py:ClassName", "package.module:ClassName" or a shipped '
                 "name (see `steadyhand strategies`); overrides [strategy] class, keeps [strategy.params]")
LOCKSTEP_VIEW_PERIOD_S = 0.1  # a lock-step run stops by itself at the end of its file: notice it soon
START_HELP = ("where a new simulated clock starts: YYYY-MM-DD (that day's session open, or the next "
              "session's) or an ISO timestamp with offset; default the latest session's open")


# --- run ------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    data_dir = data_dir_of(args)
    marker = procs.run_marker(data_dir)
    if os.environ.get(procs.RUN_MARKER) != marker:
        # Re-execute with the run marker in the environment, so every process of this run (even
        # an orphan of a killed admin) can be found by data dir later (see runtime/procs.py).
        env = {**os.environ, procs.RUN_MARKER: marker}
        os.execve(sys.executable, [sys.executable, "-m", "steadyhand.cli", *sys.argv[1:]], env)
    from steadyhand.sim.clock import start_of

    start_of(settings.sim)  # a start outside the calendar: exit 2 before anything is created
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.getpgrp() != os.getpid() and not sys.stdin.isatty():
        os.setpgid(0, 0)  # our own process group, so a drill or systemd can stop all of us at once
    live = running_info(data_dir)
    if live is not None:
        print(f"steadyhand is already running on {data_dir} (pid {live['pid']})", file=sys.stderr)
        return EXIT_FAIL
    _clean_leftovers(data_dir)
    from steadyhand.brokers import datadir  # issue 12: the data dir remembers its broker

    datadir.check(data_dir, settings)
    datadir.remember(data_dir, settings)

    db = store.open_store(data_dir)  # migrations run here, once, before any actor starts
    db.close()
    from steadyhand.control.commands import SecretError, load_secret

    try:
        load_secret(data_dir, create=True)  # so operator commands work from the first run
    except SecretError as exc:
        raise ConfigError(f"operator secret: {exc}") from None
    lockstep = settings.sim.lockstep
    if lockstep:  # the run's clock moves bar by bar (sim/lockstep.py)
        from steadyhand.sim import lockstep as ls

        (data_dir / ls.RESULT_FILE).unlink(missing_ok=True)
        clock = ls.open_clock(data_dir, settings)
        print("steadyhand: lock-step: each bar to quiescence, filled at the next bar's open (no spread, "
              "slippage, latency or partial fills), as the backtest assumes", flush=True)
        began = time.perf_counter()
    else:
        clock = _anchor_clock(settings, data_dir)
    _preload(clock)
    run = RunSettings(settings=settings, data_dir=str(data_dir), clock=clock,
                      test_hooks=os.environ.get("STEADYHAND_TEST_HOOKS") == "1",
                      config_path=str(Path(args.config).resolve()) if args.config else "",
                      cli_overrides={k: v for k, v in {"speed": args.speed, "seed": args.seed,
                                                       "replay": args.replay, "start": args.start,
                                                       "lockstep": args.lockstep or None}.items()
                                     if v is not None})
    port = settings.admin_port or procs.free_port()

    stop = threading.Event()
    # Ctrl-C reaches the whole foreground process group; only this process should act on it,
    # so the actors (forked below) inherit "ignore" and are stopped in order by the supervisor.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    procs.bind_thespian_to_loopback()
    from steadyhand.supervisor import SUPERVISOR_NAME, Start, Started, Supervisor
    from thespian.actors import ActorSystem

    system = ActorSystem("multiprocTCPBase", {"Admin Port": port}, logDefs=quiet_logging())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    write_run_file(data_dir, {"pid": os.getpid(), "pgid": os.getpgrp(), "admin_port": port,
                              "data_dir": str(data_dir), "started_at": datetime.now(UTC).isoformat()})
    code = EXIT_OK
    try:
        supervisor = system.createActor(Supervisor, globalName=SUPERVISOR_NAME)
        started = system.ask(supervisor, Start(run), START_TIMEOUT_S)
        if not isinstance(started, Started):
            print("steadyhand: the actors did not all start in time", file=sys.stderr)
            code = EXIT_FAIL
        else:
            print(f"steadyhand running: data dir {data_dir}, admin port {port} (127.0.0.1), "
                  f"pid {os.getpid()}, broker {settings.broker}, clock {_clock_text(clock)}", flush=True)
            print("  actors: " + ", ".join(f"{n}={p}" for n, p in started.children.items()), flush=True)
            if dashboard_url(data_dir):
                print(f"  dashboard: {dashboard_url(data_dir)}", flush=True)
            code = _live_view(Connection(system, supervisor, data_dir), data_dir, stop, clock,
                              period=LOCKSTEP_VIEW_PERIOD_S if lockstep else LIVE_VIEW_PERIOD_S)
    finally:
        _shutdown(system, data_dir, port)
    if lockstep and code == EXIT_OK:
        finished, line = ls.summary(data_dir, time.perf_counter() - began)
        print(line, flush=True)
        code = EXIT_OK if finished else EXIT_FAIL
    return code


def _checked_for_run(settings: Settings, config_path: str | None) -> Settings:
    """The strategy loads and the replay file is usable (ConfigError otherwise), before anything starts."""
    from steadyhand.data.bar_files import with_replay_symbols
    from steadyhand.strategies.specs import check_strategies

    settings = with_replay_symbols(settings, config_path)
    check_strategies(settings)
    return settings


def _anchor_clock(settings: Settings, data_dir: Path) -> Any:
    """The run's clock (see ``sim.clock.anchor_run_clock``); says so when a given start does not count."""
    from steadyhand.sim.clock import anchor_run_clock

    clock, notes = anchor_run_clock(data_dir / "exchange.db", settings.sim)
    for note in notes:
        print(f"steadyhand: {note}", flush=True)
    return clock


def _preload(clock: Any) -> None:
    """Load what every actor needs (the exchange calendar: ~0.5 s) once, here: the actor processes
    are forked from this one and inherit it, so neither a start nor a restart waits for it."""
    from steadyhand.domain import market_hours

    now = clock.now()
    market_hours.is_open(now)
    market_hours.session_at(now)
    market_hours.next_open(now)


def _clock_text(clock: Any) -> str:
    if clock.speed == float("inf"):
        return f"{clock.now():%Y-%m-%d %H:%M:%S} UTC lock-step"
    return f"{clock.now():%Y-%m-%d %H:%M:%S} UTC x{clock.speed:g}"


def _clean_leftovers(data_dir: Path) -> None:
    """Stop what a killed earlier run left behind (orphaned actors keep its admin port)."""
    leftovers = procs.run_processes(data_dir)
    if leftovers:
        print(f"steadyhand: stopping {len(leftovers)} process(es) left by an earlier run", file=sys.stderr)
        procs.terminate(leftovers)
    old = read_run_file(data_dir)
    if old and not procs.wait_until(lambda: not procs.port_listening(int(old["admin_port"])), 10):
        raise SystemExit(f"steadyhand: port {old['admin_port']} of an earlier run is still in use")


def _live_view(connection: Connection, data_dir: Path, stop: threading.Event, clock: Any,
               period: float = LIVE_VIEW_PERIOD_S) -> int:
    """A compact status line whenever something changes, until SIGINT/SIGTERM or `shutdown`."""
    failures = 0
    last_line = ""
    last_print = 0.0
    while not stop.wait(period):
        reply = connection.command("status", timeout=ASK_TIMEOUT_S)
        if not reply.ok:
            failures += 1
            if failures >= 3:
                print("steadyhand: the supervisor does not answer; stopping", file=sys.stderr)
                return EXIT_FAIL
            continue
        failures = 0
        if reply.result.get("stopping"):
            break  # an operator's `shutdown`
        if time.monotonic() - last_print < LIVE_VIEW_PERIOD_S:
            continue  # polled faster (lock-step ends by itself), printed no more often
        line = _status_line(reply.result, data_dir, clock)
        if line != last_line:  # only when something changed
            print(f"[{datetime.now():%H:%M:%S}] {line}", flush=True)
            last_line = line
            last_print = time.monotonic()
    print("steadyhand: stopping ...", flush=True)
    return EXIT_OK


def _market_text(clock: Any) -> str:
    """The simulated market's state, so a quiet bot explains itself ("closed, opens in 14 min")."""
    from steadyhand.domain import market_hours

    now = clock.now()
    if market_hours.is_open(now):
        return "market open"
    wait_min = clock.real_seconds((market_hours.next_open(now) - now).total_seconds()) / 60
    return f"market closed, opens in {wait_min:.0f} min"


def _status_line(status: dict[str, Any], data_dir: Path, clock: Any) -> str:
    report = read_report(data_dir)
    restarts = sum(a["restarts"] for a in status["actors"].values())
    down = [n for n, a in status["actors"].items() if not a["alive"]]
    positions = " ".join(f"{s}:{q}" for s, q in sorted(report["positions"].items())) or "flat"
    text = (f"{status['trading_state'].upper()} {equity_text(report['portfolio'])} "
            f"orders {report['orders']} (open {report['open_orders']}) fills {report['fills']} "
            f"positions {positions} restarts {restarts}, {_market_text(clock)}")
    return text + (f" DOWN: {','.join(down)}" if down else "")


def _shutdown(system: Any, data_dir: Path, port: int) -> None:
    from steadyhand.actors.messages import RequestShutdown
    from steadyhand.supervisor import SUPERVISOR_NAME, Supervisor

    try:
        supervisor = system.createActor(Supervisor, globalName=SUPERVISOR_NAME)
        system.ask(supervisor, RequestShutdown("operator"), 20.0)
    except Exception as exc:  # keep going: the processes must go whatever happened
        print(f"steadyhand: graceful stop failed: {exc!r}", file=sys.stderr)
    system.shutdown()
    gone = procs.wait_until(lambda: not procs.run_processes(data_dir) and not procs.port_listening(port), 10)
    if not gone:
        procs.terminate(procs.run_processes(data_dir))
    (data_dir / RUN_FILE).unlink(missing_ok=True)
    print("steadyhand stopped.", flush=True)


# --- reports (read the state database; work whether or not the bot runs) ------------------------


def read_report(data_dir: Path) -> dict[str, Any]:
    db = store.open_readonly(data_dir)
    empty = {"positions": {}, "open_orders": 0, "orders": 0, "fills": 0, "last_reconciliation": None,
             "trading_state": "active", "halt_reason": "", "portfolio": portfolio_of(None), "strategies": {}}
    if db is None or "orders" not in db.table_names():
        return empty
    try:
        open_statuses = ("pending_submit", "submitted", "partially_filled")
        positions = {r["symbol"]: r["qty"]
                     for r in db.query("SELECT symbol, qty FROM positions WHERE qty != 0")}
        open_orders = db.execute(
            "SELECT count(*) FROM orders WHERE status IN (?, ?, ?)", open_statuses).fetchone()[0]
        orders = db.execute("SELECT count(*) FROM orders").fetchone()[0]
        fills = db.execute("SELECT count(*) FROM fills").fetchone()[0]
        row = db.execute("SELECT report FROM reconciliations ORDER BY id DESC LIMIT 1").fetchone()
        return {"positions": positions, "open_orders": open_orders, "orders": orders, "fills": fills,
                "last_reconciliation": json.loads(row[0]) if row else None,
                "trading_state": store.get_control(db, "trading_state", "active"),
                "halt_reason": store.get_control(db, "halt_reason", "") or "",
                "portfolio": portfolio_of(db), "strategies": read_strategies(db)}
    finally:
        db.close()


def cmd_status(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    report = read_report(data_dir)
    result: dict[str, Any] = {"running": False, "trading_state": report["trading_state"],
                              "halt_reason": report["halt_reason"], "actors": {},
                              "positions": report["positions"], "open_orders": report["open_orders"],
                              "orders": report["orders"], "fills": report["fills"],
                              "last_reconciliation": report["last_reconciliation"],
                              "data_dir": str(data_dir), "portfolio": public(report["portfolio"]),
                              "dashboard_url": None, "risk_limits": {}, "strategies": report["strategies"]}
    try:
        reply = connect(data_dir).command("status", timeout=ASK_TIMEOUT_S)
    except NotRunning as exc:
        reply = None
        if not args.json:
            print(exc, file=sys.stderr)
    except SecretError as exc:  # a live run, but no usable secret to ask it with
        reply = None
        print(f"steadyhand: {exc}", file=sys.stderr)
    if reply is not None and reply.ok:
        status = reply.result
        result.update(running=True, trading_state=status["trading_state"], halt_reason=status["halt_reason"],
                      actors={n: {"pid": a["pid"], "restarts": a["restarts"], "alive": a["alive"]}
                              for n, a in status["actors"].items()},
                      started_at=status["started_at"], dashboard_url=dashboard_url(data_dir),
                      risk_limits=utilization_of(data_dir, status.get("risk_limits") or {}, report["portfolio"]))
    elif reply is not None:
        print(f"steadyhand: {reply.error}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        _print_status(result)
    return EXIT_OK if result["running"] else EXIT_FAIL


def cmd_operator(args: argparse.Namespace) -> int:
    """pause | resume | halt | flatten | cancel-all | restart ACTOR | reload | shutdown | ack ID."""
    data_dir = data_dir_of(args)
    arguments: dict[str, Any] = {}
    if args.command == "restart":
        arguments["actor"] = args.actor
    elif args.command == "ack":
        arguments["alert_id"] = args.alert_id
    try:
        reply = connect(data_dir).command(args.command, arguments, command_id=args.command_id)
    except NotRunning as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAIL
    except Exception as exc:  # e.g. no operator secret
        print(f"steadyhand: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps({"command_id": reply.command_id, "ok": reply.ok, "result": reply.result,
                          "error": reply.error}, default=str))
    elif reply.ok:
        details = ", ".join(f"{k} {v}" for k, v in reply.result.items())
        print(f"{args.command}: ok" + (f" ({details})" if details else ""))
    else:
        print(f"{args.command}: {reply.error}", file=sys.stderr)
    return EXIT_OK if reply.ok else EXIT_FAIL


def _print_status(result: dict[str, Any]) -> None:
    print(f"running:        {'yes' if result['running'] else 'no'}")
    print(f"trading state:  {result['trading_state']}"
          + (f" ({result['halt_reason']})" if result["halt_reason"] else ""))
    for name, actor in result["actors"].items():
        print(f"  {name:<10} pid {actor['pid']:<8} restarts {actor['restarts']:<3} "
              f"{'alive' if actor['alive'] else 'DOWN'}")
    positions = ", ".join(f"{s} {q}" for s, q in sorted(result["positions"].items())) or "flat"
    print(f"positions:      {positions}")
    print(f"orders:         {result['orders']} ({result['open_orders']} open), fills {result['fills']}")
    for line in [*portfolio_lines(result), *strategy_lines(result.get("strategies", {}))]:
        print(line)
    rec = result["last_reconciliation"]
    if rec:
        print(f"reconciled:     {rec.get('finished_at')} ({rec.get('reason')}): "
              f"{rec.get('orders_checked')} checked, {len(rec.get('never_submitted', []))} never submitted, "
              f"{len(rec.get('unknown_orders', []))} unknown, {rec.get('fills_recovered')} fills recovered")


ORDER_KEYS = ("client_order_id", "broker_order_id", "symbol", "side", "qty", "type", "status",
              "filled_qty", "avg_fill_price")
FILL_KEYS = ("fill_id", "client_order_id", "symbol", "side", "qty", "price", "ts")


def _rows(data_dir: Path, sql: str) -> list[dict[str, Any]]:
    db = store.open_readonly(data_dir)
    if db is None or "orders" not in db.table_names():
        return []
    try:
        return list(db.query(sql))
    finally:
        db.close()


def _journal_listing(args: argparse.Namespace, sql: str, keys: tuple[str, ...], line: str) -> int:
    """``orders`` and ``fills``: rows of the journal, as JSON (the stable keys) or one line each."""
    rows = [{k: r[k] for k in keys} for r in _rows(data_dir_of(args), sql)]
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(line.format(**{k: "-" if v is None else v for k, v in row.items()}))
    return EXIT_OK


def cmd_orders(args: argparse.Namespace) -> int:
    return _journal_listing(args, "SELECT * FROM orders ORDER BY created_at", ORDER_KEYS,
                            "{client_order_id:<34} {symbol:<6} {side:<4} {qty:>6} {type:<6} "
                            "{status:<16} filled {filled_qty:>6} @ {avg_fill_price}")


def cmd_fills(args: argparse.Namespace) -> int:
    return _journal_listing(args, "SELECT * FROM fills ORDER BY ts", FILL_KEYS,
                            "{ts} {symbol:<6} {side:<4} {qty:>6} @ {price:<10} {client_order_id}")


def cmd_logs(args: argparse.Namespace) -> int:
    from steadyhand.runtime.logs import read_events, readable

    events = read_events(data_dir_of(args) / "logs")[-args.lines:]
    for event in events:
        print(json.dumps(event) if args.json else readable(event))
    return EXIT_OK


# --- argument parsing ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steadyhand", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, config: bool = False, json_flag: bool = True) -> None:
        p.add_argument("--data-dir", help="state directory (default $STEADYHAND_DATA_DIR or ./var)")
        if config:
            p.add_argument("--config", help="TOML configuration file")
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")

    run = sub.add_parser("run", help="run the bot in the foreground")
    common(run, config=True, json_flag=False)
    run.add_argument("--speed", type=float, help="simulated seconds per second (sim clock)")
    run.add_argument("--seed", type=int, help="seed of the synthetic market")
    run.add_argument("--replay", help="CSV of bars to replay instead of the synthetic market")
    run.add_argument("--start", help=START_HELP)
    run.add_argument("--strategy", help=STRATEGY_HELP)
    run.add_argument("--lockstep", action="store_true",
                     help="with --replay: each bar processed to quiescence before the next, filled at the "
                          "next bar's open as the backtest assumes; exits at the end of the file")
    common(sub.add_parser("status", help="state of the running bot"))
    common(sub.add_parser("orders", help="the order journal"))
    common(sub.add_parser("fills", help="every fill"))
    common(sub.add_parser("runs", help="the run ledger: every run, newest last"))
    report = sub.add_parser("report", help="reports read from the state store: execution, parity")
    report_sub = report.add_subparsers(dest="report_command", required=True)
    execution = report_sub.add_parser("execution", help="slippage split, limit fill rate, latency")
    common(execution)
    execution.add_argument("--since", help="only orders of this day (YYYY-MM-DD) and later")
    execution.add_argument("--html", help="also write a standalone HTML file with charts")
    parity = report_sub.add_parser("parity", help="a run compared trade by trade with a backtest of its bars")
    common(parity, config=True)
    parity.add_argument("--run", type=int, help="the run's id (`steadyhand runs`; default the latest)")
    parity.add_argument("--html", help="also write a standalone HTML file with the equity curves")
    logs = sub.add_parser("logs", help="recent log events, readable")
    common(logs)
    logs.add_argument("-n", "--lines", type=int, default=50)
    backtest = sub.add_parser("backtest", help="the strategy's trades on a replay file")
    common(backtest, config=True)
    backtest.add_argument("--replay", required=True, help="CSV of bars: ts,symbol,open,high,low,close,volume")
    backtest.add_argument("--strategy", help=STRATEGY_HELP)
    backtest.add_argument("--check-lookahead", action="store_true",
                          help="recompute targets on cut histories; exit 1 if any row changes with later bars")
    backtest.add_argument("--lookahead-cutoffs", type=int, default=0,
                          help="number of history cuts for --check-lookahead (default 0: every bar time)")
    common(sub.add_parser("strategies", help="the shipped strategies, their parameters and defaults"))
    for name, text in (("pause", "no new entries (reducing orders still allowed)"),
                       ("resume", "back to normal trading"),
                       ("halt", "kill switch: cancel every open order, state HALTED"),
                       ("flatten", "cancel open orders, close every position, then HALTED"),
                       ("cancel-all", "cancel every open order"),
                       ("restart", "restart one actor"),
                       ("reload", "re-read risk limits and alert routing from the config file"),
                       ("shutdown", "stop the running bot"),
                       ("ack", "acknowledge a CRITICAL alert (stops its re-sending)")):
        p = sub.add_parser(name, help=text)
        common(p)
        p.add_argument("--command-id", help="idempotency key (default: a new one); a repeat does nothing again")
        if name == "restart":
            p.add_argument("actor", help="feed, strategy, risk, oms, portfolio, alerter or heartbeat")
        if name == "ack":
            p.add_argument("alert_id", type=int, help="the alert's id (shown in the alert)")
    verify = sub.add_parser("verify", help="compare the journal with the broker (invariants)")
    common(verify, config=True)
    exchange = sub.add_parser("exchange", help="the local paper exchange")
    exchange_sub = exchange.add_subparsers(dest="exchange_command", required=True)
    serve = exchange_sub.add_parser("serve", help="serve an Alpaca-compatible paper exchange on 127.0.0.1")
    common(serve, config=True, json_flag=False)
    serve.add_argument("--port", type=int, default=0, help="TCP port (0: a free one, printed)")
    serve.add_argument("--tws-port", type=int, default=None,
                       help="also serve the TWS socket protocol (IBKR) on this port, same book and clock "
                            "(0: a free one, printed)")
    serve.add_argument("--start", help=START_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "verify":
            from steadyhand.control.verify import cmd_verify

            return cmd_verify(args, load_settings(args.config or os.environ.get("STEADYHAND_CONFIG")))
        if args.command == "exchange":
            from steadyhand.sim.server import cmd_serve

            settings = load_settings(args.config or os.environ.get("STEADYHAND_CONFIG"))
            return cmd_serve(args, with_overrides(settings, start=args.start))
        if args.command in ("run", "backtest"):
            config_path = args.config or os.environ.get("STEADYHAND_CONFIG")
            settings = with_strategy(load_settings(config_path), args.strategy)
            if args.command == "run":
                settings = with_overrides(settings, speed=args.speed, seed=args.seed, replay=args.replay,
                                          start=args.start)
                if args.lockstep or settings.sim.lockstep:
                    from steadyhand.sim.lockstep import lockstep_settings

                    settings = lockstep_settings(settings)
                if settings.broker not in BROKERS:
                    known = " or ".join(repr(name) for name in BROKERS)
                    raise ConfigError(f"broker: {settings.broker!r} is not available in this version yet ({known})")
                return cmd_run(args, _checked_for_run(settings, config_path))
            from steadyhand.backtest.command import cmd_backtest
            from steadyhand.strategies.specs import require_single

            require_single(settings, "backtest")
            return cmd_backtest(args, settings)
        if args.command == "strategies":
            from steadyhand.strategies.listing import cmd_strategies

            return cmd_strategies(args)
    except ConfigError as exc:
        print(f"steadyhand: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "runs":
        from steadyhand.reports.runs import cmd_runs

        return cmd_runs(args)
    if args.command == "report":
        from steadyhand.reports import cmd_report

        return cmd_report(args)
    commands = {"status": cmd_status, "orders": cmd_orders, "fills": cmd_fills, "logs": cmd_logs}
    return commands.get(args.command, cmd_operator)(args)


if __name__ == "__main__":
    sys.exit(main())
