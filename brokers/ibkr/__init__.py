"""Interactive Brokers (TWS / IB Gateway, paper) on ib_async: ``broker.py`` the Broker adapter,
``feed.py`` bars for the feed actor, ``wire.py`` the translation, ``ids.py`` the persisted ids,
``loop.py`` the thread that owns the ``IB`` object.

The functions below are what ``steadyhand.brokers``' registry knows IBKR by; they import ib_async
only when called, so the registry costs nothing to load. Client ids: the OMS holds ``client_id``,
the feed ``client_id + 1``, verify ``client_id + 2`` (the Gateway refuses a client id in use: 326).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steadyhand.brokers.base import Broker
    from steadyhand.config import RunSettings, Settings


def make_broker(run: RunSettings) -> Broker:
    """The OMS's broker: the Gateway on ``[ibkr] host:port`` as ``client_id``, ids kept in ibkr.db."""
    from steadyhand.brokers.ibkr.broker import IbkrBroker

    return IbkrBroker(run.settings.ibkr, data_dir=run.data_dir, clock=run.clock)


def make_feed_source(settings: Settings) -> Any:
    """The feed's live bars: keepUpToDate 1-minute bars (or 5-second real-time bars)."""
    from steadyhand.brokers.ibkr.feed import IbkrBarSource

    return IbkrBarSource.from_settings(settings)


def make_verify_reader(data_dir: Path, settings: Settings) -> Broker:
    """What ``steadyhand verify`` reads executions, orders and positions with (control/verify.py)."""
    from steadyhand.brokers.ibkr.broker import IbkrBroker

    # Its own client id (the running bot's OMS and feed hold client_id and client_id + 1);
    # the data dir's ibkr.db maps orders back to the order ids the journal has.
    return IbkrBroker(settings.ibkr, data_dir=data_dir, client_id=settings.ibkr.client_id + 2)
