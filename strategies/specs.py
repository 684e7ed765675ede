"""Several strategies at once: ``[[strategies]]`` to strategy specs, and their names everywhere.

A run has one or more :class:`~steadyhand.config.StrategySpec`. The old ``[strategy]`` table (with or
without ``class``) is ONE spec and behaves exactly as before; ``[[strategies]]`` (an array of tables
with ``name``, ``class``, ``params``, ``symbols`` and optional limits) gives several. Both at once is
an error, as are duplicate names, a symbol outside the run's ``symbols`` and a bad limit.

Symbols: with a top-level ``symbols``, each strategy's symbols must be among them (a strategy without
``symbols`` trades all of them); without one, the run's symbols are the union of the strategies'.

The name is the prefix of the strategy's client order ids (``NAME-SYMBOL-...``, see
``strategies/sma.py: intent_id``), which is how a fill is attributed to a strategy's sub-book
(``portfolio/books.py``). Names therefore use ``[A-Za-z0-9_.]`` only: never ``-``.

Supervision: one strategy actor per spec; a single spec's child is ``strategy`` (every existing
status key, log file and test stays as it is), several are ``strategy.NAME``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from steadyhand.config import ConfigError, Settings, StrategySettings, StrategySpec

_NAME_OK = re.compile(r"^[A-Za-z0-9_.]{1,16}$")  # as strategies/base.py: part of every client order id
SINGLE_CHILD = "strategy"
CHILD_PREFIX = "strategy."
SMA_CLASSES = ("sma", "steadyhand.strategies.sma:SmaCross")
_SMA_DEFAULTS = {"fast": 5, "slow": 20, "qty": 10, "allow_short": False}
_QTY_LIMITS = ("max_position_qty", "max_order_qty")
_MONEY_LIMITS = ("max_gross_exposure", "max_daily_loss")
_KEYS = ("name", "class", "params", "symbols", *_QTY_LIMITS, *_MONEY_LIMITS, "allow_short")


def parse_strategies(settings: Settings, data: dict[str, Any], check_value: Callable[..., Any]) -> Settings:
    """``settings`` with ``strategies`` from the document's ``[[strategies]]`` (ConfigError naming the key)."""
    tables = data["strategies"]
    if "strategy" in data:
        raise ConfigError("strategies: give [strategy] (one strategy) or [[strategies]] (several), not both")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("strategies: must be an array of tables [[strategies]] with at least one entry")
    run_symbols_given = "symbols" in data
    specs = [_spec(i, table, settings.symbols if run_symbols_given else None, check_value)
             for i, table in enumerate(tables)]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"strategies.{spec.name}: duplicate name (each strategy needs its own)")
        seen.add(spec.name)
    if not run_symbols_given and any(s.symbols for s in specs):
        union = tuple(dict.fromkeys(sym for s in specs for sym in s.symbols))
        settings = dataclasses.replace(settings, symbols=union)
    specs = [s if s.symbols else dataclasses.replace(s, symbols=settings.symbols) for s in specs]
    return dataclasses.replace(settings, strategies=tuple(specs))


def _spec(index: int, table: dict[str, Any], run_symbols: tuple[str, ...] | None,
          check_value: Callable[..., Any]) -> StrategySpec:
    name = table.get("name")
    where = f"strategies[{index}]"
    if not isinstance(name, str) or not _NAME_OK.match(name):
        raise ConfigError(f"{where}.name: must be 1-16 characters of [A-Za-z0-9_.] "
                          f"(it starts every client order id), got {name!r}")
    key = f"strategies.{name}"
    unknown = [k for k in table if k not in _KEYS]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown setting (known: {', '.join(_KEYS)})")
    class_name = table.get("class")
    if not isinstance(class_name, str) or not class_name:
        raise ConfigError(f"{key}.class: required (a shipped name, \"file.py:Class\" or \"module:Class\")")
    params = table.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{key}.params: must be a table [strategies.params]")
    symbols = check_value(f"{key}.symbols", tuple[str, ...], table["symbols"]) if "symbols" in table else ()
    for symbol in symbols:
        if not symbol.replace(".", "").isalnum() or symbol != symbol.upper():
            raise ConfigError(f"{key}.symbols: {symbol!r} is not an upper-case ticker")
        if run_symbols is not None and symbol not in run_symbols:
            raise ConfigError(f"{key}.symbols: {symbol} is not one of the run's symbols ({', '.join(run_symbols)})")
    limits = {k: _limit(f"{key}.{k}", int, table[k], check_value) for k in _QTY_LIMITS if k in table}
    limits |= {k: _limit(f"{key}.{k}", float, table[k], check_value) for k in _MONEY_LIMITS if k in table}
    allow_short = check_value(f"{key}.allow_short", bool, table.get("allow_short", False))
    return StrategySpec(name=name, class_name=class_name, params=dict(params), symbols=symbols,
                        allow_short=allow_short, **limits)


def _limit(key: str, kind: type, value: Any, check_value: Callable[..., Any]) -> Any:
    """A positive limit: 0 would refuse every order without saying why."""
    checked = check_value(key, kind, value)
    if checked <= 0:
        raise ConfigError(f"{key}: must be positive, got {value}")
    return checked


# --- the run's specs and their names ------------------------------------------------------------


def strategy_specs(settings: Settings) -> tuple[StrategySpec, ...]:
    """Every strategy of the run: ``[[strategies]]``, or the one ``[strategy]`` as a spec."""
    return settings.strategies or (legacy_spec(settings),)


def legacy_spec(settings: Settings) -> StrategySpec:
    """``[strategy]`` as one spec. Its name is the SMA's ``sma`` (or "" for a ``class``: the class's
    own ``strategy_id``); no limits of its own and shorting as before, so nothing changes for it."""
    strategy = settings.strategy
    return StrategySpec(name="" if strategy.class_name else "sma", class_name=strategy.class_name or "sma",
                        params=dict(strategy.params), symbols=settings.symbols, allow_short=True)


def child_names(settings: Settings) -> tuple[str, ...]:
    """The strategy actors' child names, in spec order."""
    specs = strategy_specs(settings)
    if len(specs) == 1:
        return (SINGLE_CHILD,)
    return tuple(CHILD_PREFIX + s.name for s in specs)


def spec_for_child(child: str, settings: Settings) -> StrategySpec:
    """The spec the strategy actor named ``child`` runs (KeyError for a name that is none of them)."""
    specs = strategy_specs(settings)
    if child == SINGLE_CHILD and len(specs) == 1:
        return specs[0]
    for spec in specs:
        if child == CHILD_PREFIX + spec.name:
            return spec
    raise KeyError(f"no strategy runs as {child!r}")


def is_strategy_child(name: str) -> bool:
    return name == SINGLE_CHILD or name.startswith(CHILD_PREFIX)


def strategy_peers(peers: dict[str, Any]) -> list[str]:
    """The names of the strategy actors among ``peers`` (what used to be the one peer ``strategy``)."""
    return [name for name in peers if is_strategy_child(name)]


def strategy_of(client_order_id: str) -> str:
    """The strategy an order belongs to: its client order id's prefix (names never contain ``-``)."""
    return client_order_id.partition("-")[0]


def spec_settings(spec: StrategySpec, settings: Settings) -> StrategySettings:
    """The ``[strategy]``-style settings ``spec`` means (what the loader and the SMA actor read)."""
    if not settings.strategies:
        return settings.strategy
    if spec.class_name in SMA_CLASSES:
        unknown = [k for k in spec.params if k not in _SMA_DEFAULTS]
        if unknown:
            raise ConfigError(f"strategies.{spec.name}.params.{unknown[0]}: unknown parameter of SmaCross "
                              f"(known: {', '.join(_SMA_DEFAULTS)})")
        return StrategySettings(**{**_SMA_DEFAULTS, **spec.params})
    return StrategySettings(class_name=spec.class_name, params=dict(spec.params))


def check_strategies(settings: Settings) -> None:
    """Load every strategy once (StrategyError naming the strategy: exit 2, nothing started)."""
    from steadyhand.strategies.loader import StrategyError, load_strategy

    for spec in strategy_specs(settings):
        outside = [s for s in spec.symbols if s not in settings.symbols]
        if outside:  # e.g. the run took a replay file's symbols, and this strategy's are not among them
            raise ConfigError(f"strategies.{spec.name}.symbols: {', '.join(outside)} not among the run's symbols "
                              f"({', '.join(settings.symbols)})")
        try:
            load_strategy(spec_settings(spec, settings))
        except StrategyError as exc:
            if not settings.strategies:
                raise
            raise StrategyError(f"strategies.{spec.name}: {exc}") from None


def require_single(settings: Settings, command: str) -> None:
    """``backtest`` (and ``--strategy``) run one strategy: say so rather than pick one silently."""
    if len(settings.strategies) > 1:
        names = ", ".join(s.name for s in settings.strategies)
        raise ConfigError(f"strategies: {command} runs one strategy; this file has several ({names})")
