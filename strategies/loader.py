"""Loading a strategy: ``[strategy] class`` and ``[strategy.params]`` (or ``--strategy``) to an instance.

``class`` is ``"path/to/file.py:ClassName"`` (a relative path is taken from the current directory),
``"package.module:ClassName"``, or the name of a shipped strategy (``steadyhand strategies``).
Without ``class``, today's keys ``fast, slow, qty, allow_short`` mean the shipped SMA crossover.

Everything that can be wrong is found here, before any process starts, as one
:class:`StrategyError` (a ConfigError: the CLI exits 2) naming the class, the file or the parameter:
a missing file, an import error, a class that is not a Strategy, an unknown, missing or ill-typed
parameter (checked against the constructor's signature and annotations), a constructor that raises.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any

from steadyhand.config import ConfigError, StrategySettings
from steadyhand.strategies.base import Strategy

# Shipped strategies by short name (``class = "bollinger"``), in the order ``steadyhand strategies`` lists them.
SHIPPED: dict[str, str] = {
    "sma": "steadyhand.strategies.sma:SmaCross",
    "bollinger": "steadyhand.strategies.shipped:BollingerReversion",
    "breakout": "steadyhand.strategies.shipped:Breakout",
    "external": "steadyhand.strategies.shipped:ExternalTargets",
}


class StrategyError(ConfigError):
    """The strategy cannot be loaded; the message names the class, file or parameter."""


def spec_and_params(settings: StrategySettings) -> tuple[str, dict[str, Any]]:
    """The class spec and constructor keywords ``settings`` mean (old SMA keys without ``class``)."""
    if settings.class_name:
        return settings.class_name, dict(settings.params)
    old = {"fast": settings.fast, "slow": settings.slow, "qty": settings.qty, "allow_short": settings.allow_short}
    return SHIPPED["sma"], {**old, **settings.params}


def load_strategy(settings: StrategySettings) -> Strategy:
    """A new instance of the configured strategy, or StrategyError (nothing is started by this)."""
    spec, params = spec_and_params(settings)
    cls = resolve_class(spec)
    kwargs = check_params(cls, params, spec)
    try:
        strategy = cls(**kwargs)
    except Exception as exc:  # a user's constructor: any exception is a bad configuration
        raise StrategyError(f"strategy.class {spec!r}: {cls.__name__}(...) raised "
                            f"{type(exc).__name__}: {exc}") from None
    try:
        strategy.strategy_id()
        warmup = strategy.warmup
    except ValueError as exc:
        raise StrategyError(f"strategy.class {spec!r}: {exc}") from None
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise StrategyError(f"strategy.class {spec!r}: warmup must be an integer >= 1, got {warmup!r}")
    return strategy


def resolve_class(spec: str) -> type[Strategy]:
    """The class ``spec`` names (see the module docstring)."""
    spec = SHIPPED.get(spec, spec)
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise StrategyError(f"strategy.class {spec!r}: expected \"path/to/file.py:ClassName\", "
                            f"\"package.module:ClassName\" or one of {', '.join(SHIPPED)}")
    module = load_module(where, spec)
    cls = getattr(module, attr, None)
    if cls is None:
        raise StrategyError(f"strategy.class {spec!r}: {where} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise StrategyError(f"strategy.class {spec!r}: {attr} is not a subclass of steadyhand.Strategy")
    return cls


def load_module(where: str, spec: str) -> types.ModuleType:
    """A file (``x.py``, or anything with a ``/``) or an importable module; StrategyError naming ``spec``."""
    return load_file(where, spec) if where.endswith(".py") or "/" in where else import_module(where, spec)


def import_module(module: str, spec: str) -> types.ModuleType:
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError or anything the module raises at import time
        raise StrategyError(f"strategy.class {spec!r}: cannot import {module}: {type(exc).__name__}: {exc}") from None


def load_file(where: str, spec: str) -> types.ModuleType:
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise StrategyError(f"strategy.class {spec!r}: no such file {path}")
    # One module name per file, so loading it twice (CLI check, then the actor) gives the same module.
    name = f"steadyhand_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise StrategyError(f"strategy.class {spec!r}: cannot load {path} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise StrategyError(f"strategy.class {spec!r}: {path} failed to import: {type(exc).__name__}: {exc}") from None
    return module


def parameters(cls: type[Strategy]) -> list[dict[str, Any]]:
    """The constructor's parameters: name, type (text), default (``None`` text when required)."""
    hints = _hints(cls)
    out = []
    for p in _signature(cls).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = hints.get(p.name, p.annotation)
        out.append({"name": p.name, "type": _type_text(annotation),
                    "default": None if p.default is p.empty else p.default, "required": p.default is p.empty})
    return out


def check_params(cls: type[Strategy], params: dict[str, Any], spec: str) -> dict[str, Any]:
    """``params`` checked against ``cls``'s constructor: unknown, missing or ill-typed ones are errors."""
    sig = _signature(cls)
    hints = _hints(cls)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    named = {n: p for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key not in named and not accepts_any:
            known = ", ".join(named) or "none"
            raise StrategyError(f"strategy.params.{key}: unknown parameter of {cls.__name__} (known: {known})")
        annotation = hints.get(key, inspect.Parameter.empty)
        out[key] = _coerce(f"strategy.params.{key}", annotation, value, cls.__name__)
    missing = [n for n, p in named.items() if p.default is p.empty and n not in out]
    if missing:
        raise StrategyError(f"strategy.params.{missing[0]}: {cls.__name__} needs this parameter")
    return out


def _signature(cls: type) -> inspect.Signature:
    sig = inspect.signature(cls.__init__)
    return sig.replace(parameters=list(sig.parameters.values())[1:])  # drop self


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: no type check rather than no strategy
        return {}


def _type_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _coerce(key: str, annotation: Any, value: Any, owner: str) -> Any:
    """``value`` as ``annotation`` wants it (an int for a float is fine), or StrategyError."""
    if annotation in (inspect.Parameter.empty, Any, object):
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        if value not in args:
            raise StrategyError(f"{key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(key, arg, value, owner)
            except StrategyError:
                continue
        raise StrategyError(f"{key}: {owner} wants {_type_text(annotation)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise StrategyError(f"{key}: {owner} wants a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(key, inner, v, owner) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is type(None):
        if value is not None:
            raise StrategyError(f"{key}: {owner} wants None, got {value!r}")
        return None
    if annotation is bool:
        if not isinstance(value, bool):
            raise StrategyError(f"{key}: {owner} wants true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise StrategyError(f"{key}: {owner} wants an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise StrategyError(f"{key}: {owner} wants a number, got {value!r}")
        return float(value)
    if annotation in (str, Path):
        if not isinstance(value, str):
            raise StrategyError(f"{key}: {owner} wants a string, got {value!r}")
        return annotation(value)
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise StrategyError(f"{key}: {owner} wants {annotation.__name__}, got {value!r}")
    return value
