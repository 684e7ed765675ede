"""Bar files checked before anything starts: ``backtest --replay`` and ``run --replay``.

A missing or unreadable file, one that is not UTF-8, or one without the columns
``ts, symbol, open, high, low, close, volume`` is one :class:`BarFileError` naming the file (and
the line where it applies); the CLI exits 2 having started nothing. Malformed *rows* inside a good
file are not errors here: the feed (and the backtest) reject them as bad bars with their reason.

``--replay`` and ``symbols``: the file's symbols are taken when the configuration names none; when
it names some and the file has others, the run is refused (every bar of those would be rejected as
``unknown_symbol``, with warnings only in the logs).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import tomllib
from pathlib import Path

import pandas as pd
from steadyhand.config import ConfigError, Settings, validate_settings
from steadyhand.sim.replay import REPLAY_COLUMNS


class BarFileError(ConfigError):
    """A bar file that cannot be used at all; the message names the file (and line)."""


def read_bar_file_text(path: str | Path) -> str:
    """The file's text, or BarFileError: missing, unreadable, not UTF-8 (with the line), bad header."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise BarFileError(f"replay file {p}: no such file") from None
    except IsADirectoryError:
        raise BarFileError(f"replay file {p}: is a directory") from None
    except OSError as exc:
        raise BarFileError(f"replay file {p}: cannot read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BarFileError(f"replay file {p}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} "
                           f"at offset {exc.start})") from None
    header = next(csv.reader(io.StringIO(text.lstrip("\ufeff"))), [])
    missing = [c for c in REPLAY_COLUMNS if c not in header]
    if missing:
        raise BarFileError(f"replay file {p}, line 1: missing column(s) {', '.join(missing)} "
                           f"(needs {', '.join(REPLAY_COLUMNS)})")
    return text


def file_symbols(path: str | Path) -> tuple[str, ...]:
    """The symbols named in a (checked) bar file, in order of first appearance."""
    text = read_bar_file_text(path)
    column = pd.read_csv(io.StringIO(text.lstrip("\ufeff")), usecols=["symbol"], dtype=str, keep_default_na=False)
    names = [s.strip() for s in column["symbol"].tolist()]
    symbols = tuple(dict.fromkeys(s for s in names if s))
    if not symbols:
        raise BarFileError(f"replay file {path}: no bars (no row names a symbol)")
    return symbols


def symbols_configured(config_path: str | None) -> bool:
    """Whether the configuration file sets ``symbols`` itself (the defaults do not count)."""
    if not config_path:
        return False
    try:
        return "symbols" in tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return True  # load_settings already read it; be strict if it cannot be re-read


def with_replay_symbols(settings: Settings, config_path: str | None) -> Settings:
    """``settings`` for a run with ``sim.replay``: the file checked, its symbols taken or matched."""
    if not settings.sim.replay:
        return settings
    found = file_symbols(settings.sim.replay)
    if not symbols_configured(config_path):
        taken = dataclasses.replace(settings, symbols=found)
        try:
            validate_settings(taken)
        except ConfigError as exc:
            raise BarFileError(f"replay file {settings.sim.replay}: its symbols cannot be used ({exc})") from None
        return taken
    extra = [s for s in found if s not in settings.symbols]
    if extra:
        shown = ", ".join(extra[:10]) + (f" and {len(extra) - 10} more" if len(extra) > 10 else "")
        raise BarFileError(f"replay file {settings.sim.replay}: symbol(s) {shown} are not in symbols "
                           f"({', '.join(settings.symbols)}); add them, or drop symbols from the configuration "
                           f"to take the file's")
    return settings
