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
        from steadyhand.brokers.sim import SimExchange
        from steadyhand.market import load_market

        sim = settings.sim
        return SimExchange(
            run.exchange_db_path,
            load_market(sim, settings.symbols),
            run.clock,
            partial_fill_probability=sim.partial_fill_probability,
            slippage_bps=sim.slippage_bps,
            latency_ms=sim.latency_ms,
            start_cash=sim.start_cash,
            seed=sim.seed,
        )
    if settings.broker == "alpaca":
        from steadyhand.brokers.alpaca import AlpacaBroker

        return AlpacaBroker.from_settings(settings)  # keys from ALPACA_API_KEY / ALPACA_SECRET_KEY
    if settings.broker == "ibkr":  # issue 12
        from steadyhand.brokers.ibkr.broker import IbkrBroker

        return IbkrBroker(settings.ibkr, data_dir=run.data_dir, clock=run.clock)
    raise NotImplementedError(f"broker {settings.broker!r} is not available in this version")
