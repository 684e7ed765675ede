"""Brokers: one per file, all behind ``steadyhand.brokers.base.Broker``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steadyhand.brokers.base import Broker
    from steadyhand.config import RunSettings


def make_broker(run: RunSettings) -> Broker:
    """The broker the configuration names, connected and ready for the OMS."""
    settings = run.settings
    if settings.broker == "sim":
        from steadyhand.sim.exchange import open_sim_exchange

        return open_sim_exchange(settings, run.data_dir, run.clock)
    if settings.broker == "alpaca":
        from steadyhand.brokers.alpaca.broker import AlpacaBroker

        return AlpacaBroker.from_settings(settings)  # keys from ALPACA_API_KEY / ALPACA_SECRET_KEY
    raise NotImplementedError(f"broker {settings.broker!r} is not available in this version")
