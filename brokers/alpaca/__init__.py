"""Alpaca: the broker adapter on alpaca-py (``broker.py``), its JSON both ways (``wire.py``) and
the market-data feed (``feed.py``).

The functions below are what ``steadyhand.brokers``' registry knows Alpaca by; they import
alpaca-py only when called (it takes a while to import), so the registry costs nothing to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steadyhand.brokers.base import Broker
    from steadyhand.config import AlpacaSettings, RunSettings, Settings

SECRETS = ("ALPACA_API_KEY", "ALPACA_SECRET_KEY")  # environment variables: never in the config file


def make_broker(run: RunSettings) -> Broker:
    """The OMS's broker: REST plus the trade-updates stream, keys from the environment."""
    from steadyhand.brokers.alpaca.broker import AlpacaBroker

    return AlpacaBroker.from_settings(run.settings)  # keys from ALPACA_API_KEY / ALPACA_SECRET_KEY


def make_feed_source(settings: Settings) -> Any:
    """The feed's live bars: Alpaca's market-data stream (and REST history)."""
    from steadyhand.brokers.alpaca.feed import AlpacaBarSource

    return AlpacaBarSource.from_settings(settings)


def make_verify_reader(data_dir: Path, settings: Settings) -> Broker:
    """What ``steadyhand verify`` reads the account with (see control/verify.py)."""
    from steadyhand.brokers.alpaca.broker import AlpacaBroker

    # A REST client only (no trade-updates stream), keys from ALPACA_API_KEY / ALPACA_SECRET_KEY,
    # URLs from [alpaca]; patient with 429s, since the account's 200 requests a minute are shared
    # with the bot (a bot that just restarted spends a good part of them): ~30 s of retries.
    return AlpacaBroker.from_settings(settings, stream=False, retry_attempts=12, retry_wait_s=1.0)


def check_settings(section: AlpacaSettings) -> None:
    """Refuse live trading unless the configuration says so twice."""
    from steadyhand.config import ConfigError

    if not section.paper and not section.allow_live:
        raise ConfigError("alpaca.paper: live trading refused; set alpaca.allow_live = true to allow it")
