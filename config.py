"""Configuration: one TOML file, validated completely before anything starts.

Every section is a frozen dataclass; a key the dataclass does not have, a value of the wrong type
or a negative limit is a :class:`ConfigError` naming the key (``risk.max_order_qty``), and the CLI
exits with code 2 having started nothing. Secrets never come from the file: only from the
environment (``ALPACA_API_KEY`` ...), so a config file can be committed and shared.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY", "QQQ")


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


@dataclass(frozen=True)
class SimSettings:
    seed: int = 7
    speed: float = 60.0  # simulated seconds per wall-clock second; 1 = real pace
    clock: Literal["simulated", "real"] = "simulated"
    replay: str = ""  # CSV of bars to replay instead of the synthetic market
    # Where a new simulated clock starts: "" the latest session's open (a replay: its first bar),
    # "YYYY-MM-DD" the open of the first session on or after that date, or an ISO timestamp with
    # an offset. Only for a new exchange.db: a restarted bot continues its day.
    start: str = ""
    start_cash: float = 100_000.0
    partial_fill_probability: float = 0.10  # as Alpaca paper does
    slippage_bps: float = 1.0
    latency_ms: float = 50.0
    spread_bps: float = 2.0
    # Lock-step replay (--lockstep): each bar processed to quiescence before the next, filled as
    # the backtest assumes (sim/lockstep.py); needs ``replay``.
    lockstep: bool = False


@dataclass(frozen=True)
class StrategySettings:
    """``[strategy]``: ``class`` and ``[strategy.params]`` (the plug-in API, ``strategies/loader.py``),
    or, without ``class``, the shipped SMA crossover with today's keys ``fast, slow, qty, allow_short``."""

    name: Literal["sma_crossover"] = "sma_crossover"
    fast: int = 5
    slow: int = 20
    qty: int = 10
    allow_short: bool = False
    class_name: str = ""  # TOML key ``class``: "path/to/file.py:ClassName", "pkg.module:ClassName" or a shipped name
    params: dict[str, Any] = field(default_factory=dict)  # [strategy.params]: the constructor's keyword arguments


@dataclass(frozen=True)
class StrategySpec:
    """One strategy of the run: ``[[strategies]]`` (several) or the old ``[strategy]`` table (one).

    ``name`` is the prefix of its client order ids (``name-SYMBOL-...``), the key of its sub-book
    and of its ``status`` entry; ``symbols`` the ones it trades. The limits are its own, checked by
    risk on top of the run's ``[risk]`` limits; None: only the run's limit applies.
    """

    name: str
    class_name: str  # as [strategy] class: a file/module spec or a shipped name
    params: dict[str, Any] = field(default_factory=dict)
    symbols: tuple[str, ...] = ()
    max_position_qty: int | None = None  # shares held by this strategy, per symbol
    max_order_qty: int | None = None
    max_gross_exposure: float | None = None  # this strategy's sum of |qty| x price
    max_daily_loss: float | None = None  # its own loss today; risk refuses its non-reducing orders beyond it
    allow_short: bool = False  # may sell beyond what it bought (else refused by risk)


@dataclass(frozen=True)
class RiskSettings:
    max_order_qty: int = 1_000
    max_position_qty: int = 2_000
    max_order_value: float = 100_000.0
    max_gross_exposure: float = 500_000.0
    max_daily_loss: float = 5_000.0
    max_drawdown: float = 10_000.0
    price_band_pct: float = 5.0  # limit/ref price within this % of the last trade
    max_open_orders: int = 50
    max_orders_per_minute: int = 120  # wall-clock minute
    whitelist: tuple[str, ...] = ()  # empty: the configured symbols
    stale_after_s: float = 180.0  # simulated seconds without a bar during a session
    require_market_hours: bool = True


@dataclass(frozen=True)
class OmsSettings:
    poll_interval_s: float = 0.2
    unknown_order_policy: Literal["cancel", "adopt", "alert"] = "cancel"
    stale_order_age_s: float = 3600.0  # simulated seconds
    cancel_on_shutdown: Literal["all", "day", "none"] = "day"
    circuit_failures: int = 5  # consecutive broker failures (or rejections) that open the circuit
    circuit_cooldown_s: float = 5.0  # wall seconds a rejection-opened circuit stays open


@dataclass(frozen=True)
class HeartbeatSettings:
    interval_s: float = 1.0
    deadline_s: float = 5.0
    # Until an actor's first answer after a (re)start: its setup may load a large replay file or
    # history. A start hung for longer than this is reported like any hung actor.
    startup_deadline_s: float = 60.0


@dataclass(frozen=True)
class SupervisorSettings:
    max_restarts: int = 5  # OTP MaxR ...
    period_s: float = 60.0  # ... within MaxT
    backoff_s: float = 0.05  # first restart delay; doubles per recent restart
    max_backoff_s: float = 2.0


@dataclass(frozen=True)
class AlertSettings:
    urls: tuple[str, ...] = ()  # apprise URLs; STEADYHAND_ALERT_URLS adds more
    min_severity: Literal["info", "warning", "high", "critical"] = "high"
    cooldown_s: float = 300.0
    escalation_interval_s: float = 900.0  # re-send unacknowledged CRITICAL alerts this often
    deadman_url: str = ""  # healthchecks-style URL pinged only while every actor is healthy
    deadman_interval_s: float = 60.0


@dataclass(frozen=True)
class LogSettings:
    max_bytes: int = 10_000_000
    backups: int = 5


@dataclass(frozen=True)
class RetentionSettings:
    """How long the high-volume tables keep their rows, and how often the WAL files are emptied.

    ``*_days`` count days of the run's clock (simulated days on the simulated clock: data grows
    with simulated time); 0 keeps everything. The order journal, fills, reconciliations, operator
    commands and restarts are never pruned (README "Configuration", runbook "Disk and retention").
    """

    equity_bars_days: float = 30.0  # per-bar equity rows; older days keep one row each (close, open/high/low)
    bad_bars_days: float = 30.0  # rejected market data
    bars_days: float = 30.0  # the bars each run acted on (journaled for the parity report)
    risk_decisions_days: float = 30.0  # every approval and denial
    alerts_days: float = 90.0  # delivered or expired alerts (never a pending one, never an unacknowledged CRITICAL)
    checkpoint_interval_s: float = 300.0  # wall seconds between WAL checkpoints; 0: SQLite's own only


@dataclass(frozen=True)
class DashboardSettings:
    """The web dashboard (dashboard/): on 127.0.0.1 only, whenever the bot runs."""

    enabled: bool = True
    port: int = 0  # 0: a free port, written with the full URL to <data dir>/dashboard.json
    stream_backlog: int = 200  # frames a late /stream client gets first
    client_queue: int = 1000  # frames queued for one slow client before it is dropped


@dataclass(frozen=True)
class AlpacaSettings:
    paper: bool = True
    allow_live: bool = False
    feed: Literal["iex", "sip"] = "iex"
    symbols: tuple[str, ...] = ()  # empty: the top-level symbols
    timeout_s: float = 4.0  # per HTTP request (the OMS must answer pings); a timed-out submit is an unknown outcome
    max_requests_per_minute: int = 180  # client-side limit, under Alpaca's 200 per minute
    trading_url: str = ""
    data_url: str = ""
    data_stream_url: str = ""
    trading_stream_url: str = ""
    quote_at_submit: bool = True  # one latest-quote data request after each submit (the execution report)


@dataclass(frozen=True)
class IbkrSettings:
    host: str = "127.0.0.1"
    port: int = 7497  # TWS paper
    client_id: int = 1
    allow_live: bool = False
    # --- issue 12 (brokers/ibkr) ---
    account: str = ""  # required when the login manages several accounts
    timeout_s: float = 4.0  # per API request; a timed-out placeOrder is an unknown outcome
    market_data_type: Literal[1, 2, 3, 4] = 1  # 1 live, 3 delayed (an account without a data subscription)
    bar_size: Literal["1 min", "5 secs"] = "1 min"  # "5 secs": real-time bars (intraday, fast tests)


@dataclass(frozen=True)
class Settings:
    """The whole configuration file."""

    broker: Literal["sim", "alpaca", "ibkr"] = "sim"
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    admin_port: int = 0  # 0: pick a free port and record it in the data dir
    sim: SimSettings = field(default_factory=SimSettings)
    strategy: StrategySettings = field(default_factory=StrategySettings)
    # [[strategies]]: several strategies at once; empty means the one [strategy] (strategy_specs()).
    strategies: tuple[StrategySpec, ...] = ()
    risk: RiskSettings = field(default_factory=RiskSettings)
    oms: OmsSettings = field(default_factory=OmsSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    logging: LogSettings = field(default_factory=LogSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    alpaca: AlpacaSettings = field(default_factory=AlpacaSettings)
    ibkr: IbkrSettings = field(default_factory=IbkrSettings)

    @property
    def whitelist(self) -> frozenset[str]:
        return frozenset(self.risk.whitelist or self.symbols)


@dataclass(frozen=True)
class RunSettings:
    """What every actor is configured with: the file's settings plus where and when to run."""

    settings: Settings
    data_dir: str
    clock: Any  # steadyhand.sim.clock.SimClock
    test_hooks: bool = False
    config_path: str = ""  # the file the settings came from ("" = defaults), for `reload`
    cli_overrides: dict[str, Any] = field(default_factory=dict)  # --speed/--seed/--replay/--start, for `reload`

    @property
    def db_path(self) -> str:
        return str(Path(self.data_dir) / "steadyhand.db")

    @property
    def exchange_db_path(self) -> str:
        return str(Path(self.data_dir) / "exchange.db")

    @property
    def log_dir(self) -> str:
        return str(Path(self.data_dir) / "logs")


# Limits that must not be negative (a negative limit would deny everything or nothing silently).
_NON_NEGATIVE = (int, float)


def _check_value(key: str, annotation: Any, value: Any) -> Any:
    """Return ``value`` converted to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{key}: must be a list of non-empty strings, got {value!r}")
        return tuple(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        if value != value or value < 0:  # NaN or negative
            raise ConfigError(f"{key}: must be a non-negative number, got {value}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported setting type {annotation!r}")  # pragma: no cover


def _check_start(key: str, value: Any) -> str:
    """``sim.start``: a string, or a TOML date / offset date-time value; kept as ISO text."""
    from steadyhand.sim.clock import parse_start

    if isinstance(value, dt.datetime | dt.date):  # a TOML date or date-time value, not a string
        if isinstance(value, dt.datetime) and value.utcoffset() is None:
            raise ConfigError(f"{key}: {value.isoformat()} has no UTC offset (add Z or +00:00, or give a date)")
        value = value.isoformat()
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a date \"YYYY-MM-DD\" or an ISO timestamp with an offset, got {value!r}")
    try:
        parse_start(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return value.strip()


def _check_params(key: str, value: Any) -> dict[str, Any]:
    """``strategy.params``: a table; each value is checked against the constructor by the loader."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a table [{key}]")
    return dict(value)


# Keys whose values need more than a type check (called instead of _check_value).
_SPECIAL: dict[str, typing.Callable[[str, Any], Any]] = {"sim.start": _check_start, "strategy.params": _check_params}
# The SMA's own keys, which mean nothing next to a ``class``.
_SMA_KEYS = ("fast", "slow", "qty", "allow_short")


def _strategy_table(data: dict[str, Any]) -> dict[str, Any]:
    """``[strategy]`` with TOML's ``class`` (a Python keyword) as the field ``class_name``."""
    table = data.get("strategy")
    if not isinstance(table, dict) or "class" not in table:
        return data
    table = dict(table)
    if "class_name" in table:
        raise ConfigError("strategy.class: give class or class_name, not both")
    table["class_name"] = table.pop("class")
    given = [k for k in _SMA_KEYS if k in table]
    if given:
        raise ConfigError(f"strategy.{given[0]}: with strategy.class, parameters go in [strategy.params]")
    return {**data, "strategy": table}


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{dotted}: unknown setting (known: {', '.join(sorted(fields))})")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: must be a table [{dotted}]")
            values[key] = _build(annotation, value, f"{dotted}.")
        elif dotted in _SPECIAL:
            values[key] = _SPECIAL[dotted](dotted, value)
        else:
            values[key] = _check_value(dotted, annotation, value)
    return cls(**values)


def _validate(settings: Settings) -> None:
    if not settings.symbols:
        raise ConfigError("symbols: at least one symbol is needed")
    for symbol in settings.symbols:
        if not symbol.replace(".", "").isalnum() or symbol != symbol.upper():
            raise ConfigError(f"symbols: {symbol!r} is not an upper-case ticker")
    strategy = settings.strategy
    if strategy.class_name:
        pass  # the loader checks the class and its params (strategies/loader.py)
    elif strategy.fast < 1 or strategy.slow <= strategy.fast:
        raise ConfigError(
            f"strategy.slow: must be greater than strategy.fast >= 1 "
            f"(got fast={strategy.fast}, slow={strategy.slow})"
        )
    if strategy.qty < 1 and not strategy.class_name:
        raise ConfigError("strategy.qty: must be at least 1")
    if settings.sim.lockstep and len(settings.strategies) > 1:
        raise ConfigError("sim.lockstep: lock-step replay runs one strategy; this file has several [[strategies]]")
    if settings.sim.speed <= 0:
        raise ConfigError(f"sim.speed: must be positive, got {settings.sim.speed}")
    if not 0 <= settings.sim.partial_fill_probability <= 1:
        raise ConfigError("sim.partial_fill_probability: must be between 0 and 1")
    if settings.admin_port > 65535:
        raise ConfigError(f"admin_port: {settings.admin_port} is not a TCP port")
    for key in ("interval_s", "deadline_s", "startup_deadline_s"):
        if getattr(settings.heartbeat, key) <= 0:
            raise ConfigError(f"heartbeat.{key}: must be positive, got {getattr(settings.heartbeat, key)}")
    if settings.supervisor.period_s <= 0:
        raise ConfigError("supervisor.period_s: must be positive")
    interval = settings.retention.checkpoint_interval_s
    if 0 < interval < 1:  # a checkpoint every few milliseconds would compete with every commit
        raise ConfigError(f"retention.checkpoint_interval_s: must be 0 (off) or at least 1, got {interval}")


def validate_settings(settings: Settings) -> None:
    """The whole-file checks, for settings changed after loading (e.g. symbols taken from a replay)."""
    _validate(settings)


def required_secrets(settings: Settings) -> tuple[str, ...]:
    """The environment variables the chosen broker needs."""
    from steadyhand.brokers import BROKERS  # the registry (cheap: its factories import lazily)

    entry = BROKERS.get(settings.broker)
    return entry.secrets if entry is not None else ()


def check_secrets(settings: Settings, environ: typing.Mapping[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    missing = [name for name in required_secrets(settings) if not env.get(name)]
    if missing:
        raise ConfigError(
            f"broker: {settings.broker!r} needs the environment variable(s) "
            f"{', '.join(missing)} (secrets are read from the environment only)"
        )
    from steadyhand.brokers import BROKERS

    entry = BROKERS.get(settings.broker)
    if entry is not None and entry.check_settings is not None:
        entry.check_settings(getattr(settings, entry.section))


def parse_settings(data: dict[str, Any]) -> Settings:
    """Settings from an already-parsed TOML document (validated)."""
    from steadyhand.strategies.specs import parse_strategies

    rest = {k: v for k, v in data.items() if k != "strategies"}
    settings = _build(Settings, _strategy_table(rest), "")
    if "strategies" in data:
        settings = parse_strategies(settings, data, _check_value)
    _validate(settings)
    return settings


def with_strategy(settings: Settings, spec: str | None) -> Settings:
    """Settings with ``[strategy] class`` replaced (``--strategy``); ``[strategy.params]`` are kept."""
    if not spec:
        return settings
    if settings.strategies:
        raise ConfigError("--strategy: replaces [strategy] class; this file has [[strategies]] (name each class there)")
    return dataclasses.replace(settings, strategy=dataclasses.replace(settings.strategy, class_name=spec))


def load_settings(path: str | os.PathLike[str] | None) -> Settings:
    """Read and validate a config file; no file means the defaults (sim broker, no secrets)."""
    if path is None:
        settings = Settings()
    else:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config: cannot read {p}: {exc.strerror}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {p} is not valid TOML: {exc}") from None
        settings = parse_settings(data)
    check_secrets(settings)
    return settings


def with_overrides(settings: Settings, **sim_overrides: Any) -> Settings:
    """Settings with some ``[sim]`` values replaced (CLI flags such as --speed, --seed)."""
    given = {k: v for k, v in sim_overrides.items() if v is not None}
    if not given:
        return settings
    sim = _build(SimSettings, {**dataclasses.asdict(settings.sim), **given}, "sim.")
    result = dataclasses.replace(settings, sim=sim)
    _validate(result)
    return result


def asdict(settings: Settings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


