"""Brokers: every one behind ``steadyhand.brokers.base.Broker``, and the registry of them.

The registry maps a ``broker = "..."`` name to its package's factory functions: the OMS's broker,
the feed's live bar source (None: the simulated market), the reader ``steadyhand verify`` inspects
the book with, the environment variables it needs, and the check of its own ``[section]`` of the
configuration. Nothing else in steadyhand asks which broker it is: a broker (``ibkr``, issue 12) is
its package ``brokers/ibkr/`` and one line in :data:`BROKERS`. The factories import their broker's
libraries only when called, so loading the registry is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steadyhand import sim
from steadyhand.brokers import alpaca, ibkr

if TYPE_CHECKING:
    from steadyhand.brokers.base import Broker
    from steadyhand.config import RunSettings, Settings


@dataclass(frozen=True)
class BrokerEntry:
    """How steadyhand makes and checks one kind of broker."""

    broker: Callable[[RunSettings], Broker]  # the OMS's broker, connected
    verify_reader: Callable[[Path, Settings], Broker] | None = None  # what verify reads the book with
    feed_source: Callable[[Settings], Any] | None = None  # live bars (drain/history/close); None: the sim market
    section: str = ""  # its [section] of the configuration
    check_settings: Callable[[Any], None] | None = None  # validates that section (raises ConfigError)
    secrets: tuple[str, ...] = ()  # environment variables it needs (secrets never come from the file)


#        name        broker              verify reader              live bars                 its settings
BROKERS: dict[str, BrokerEntry] = {
    "sim":    BrokerEntry(sim.make_broker,    sim.make_verify_reader,    section="sim"),
    "alpaca": BrokerEntry(alpaca.make_broker, alpaca.make_verify_reader, alpaca.make_feed_source, section="alpaca",
                          check_settings=alpaca.check_settings, secrets=alpaca.SECRETS),
    "ibkr":   BrokerEntry(ibkr.make_broker,   ibkr.make_verify_reader,   ibkr.make_feed_source,   section="ibkr"),
}  # fmt: skip


def broker_entry(name: str) -> BrokerEntry:
    """The registry's entry for ``name``; NotImplementedError for a broker this version lacks."""
    entry = BROKERS.get(name)
    if entry is None:
        raise NotImplementedError(f"broker {name!r} is not available in this version")
    return entry


def make_broker(run: RunSettings) -> Broker:
    """The broker the configuration names, connected and ready for the OMS."""
    return broker_entry(run.settings.broker).broker(run)
