"""The embedded market and exchange: market models (``market``, ``replay``), the clock (``clock``),
the simulated exchange (``exchange`` with ``schema``, ``matching``, ``faults``) and its faces in
``server/``: the Alpaca face on Starlette (``server/alpaca.py``) and the TWS face (``server/tws.py``).

The functions below are what ``steadyhand.brokers``' registry knows the sim broker by; they import
the exchange only when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steadyhand.brokers.base import Broker
    from steadyhand.config import RunSettings, Settings


def make_broker(run: RunSettings) -> Broker:
    """The OMS's broker: the run's exchange.db, on the run's clock."""
    from steadyhand.sim.exchange import open_sim_exchange

    return open_sim_exchange(run.settings, run.data_dir, run.clock)


def make_verify_reader(data_dir: Path, settings: Settings) -> Broker:
    """The book read directly, on the clock the run anchored, fault switch off (verify inspects the
    book, it is not a client on the wire)."""
    from steadyhand.sim.clock import stored_clock
    from steadyhand.sim.exchange import open_sim_exchange
    from steadyhand.sim.schema import EXCHANGE_DB

    clock = stored_clock(data_dir / EXCHANGE_DB)
    if clock is None:
        raise FileNotFoundError(f"no simulated exchange in {data_dir} (exchange.db)")
    return open_sim_exchange(settings, data_dir, clock, faults=False)
