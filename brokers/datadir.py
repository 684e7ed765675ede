"""A data dir remembers which broker its journal was written with (issue 12).

``<data dir>/broker.json`` (a data-dir file) is written by the first ``steadyhand run`` on the dir:
``{"broker": "alpaca", "since": "..."}``. Every later command that talks to a broker
(``run``, ``verify``) checks it against the configuration and refuses, with a message saying what
to pass, when they differ: a dir that traded through Alpaca, verified without its ``--config``
(so against the simulated book), would otherwise report every fill as lost. (The IBKR adapter also
remembers the account, in ``ibkr.db``, and refuses another one.)
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from steadyhand.config import ConfigError, Settings

FILE = "broker.json"


def recorded(data_dir: str | Path) -> str | None:
    """The broker this data dir's journal was written with, or None (a new or older dir)."""
    path = Path(data_dir) / FILE
    try:
        broker = json.loads(path.read_text()).get("broker")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); it says which broker this data dir traded with") from None
    return broker if isinstance(broker, str) else None


def check(data_dir: str | Path, settings: Settings) -> None:
    """Refuse a configuration naming another broker than the one this data dir traded with."""
    broker = recorded(data_dir)
    if broker is not None and broker != settings.broker:
        raise ConfigError(
            f"broker: this data dir ({data_dir}) traded with broker {broker!r}, but the configuration names "
            f"{settings.broker!r}; pass the --config it ran with (or use another --data-dir)")


def remember(data_dir: str | Path, settings: Settings) -> None:
    """Write broker.json once (atomically); an existing one is left as it is."""
    path = Path(data_dir) / FILE
    if path.exists():
        return
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"broker": settings.broker, "since": datetime.now(UTC).isoformat()}) + "\n")
    os.replace(tmp, path)
