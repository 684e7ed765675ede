"""Simulated time: real time, or real time sped up, anchored so a restart continues the same day.

Every process computes the same "now" from the same anchor, so the feed, the exchange and the
heartbeat monitor agree without sharing memory. The anchor lives in ``exchange.db`` (the simulated
exchange owns it, because the exchange outlives the bot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True)
class SimClock:
    """``now() = anchor_sim + (time.time() - anchor_real) * speed``; speed 1 anchored at the
    wall clock is simply real time."""

    anchor_sim: datetime
    anchor_real: float
    speed: float = 1.0

    @classmethod
    def real(cls) -> SimClock:
        return cls(anchor_sim=datetime.now(UTC), anchor_real=time.time(), speed=1.0)

    def now(self) -> datetime:
        return self.at_real(time.time())

    def at_real(self, real: float) -> datetime:
        """The simulated time at wall-clock time ``real``."""
        return self.anchor_sim + timedelta(seconds=(real - self.anchor_real) * self.speed)

    def real_at(self, sim: datetime) -> float:
        """The wall-clock time (time.time() scale) at which simulated time reaches ``sim``."""
        return self.anchor_real + (sim - self.anchor_sim).total_seconds() / self.speed

    def real_seconds(self, sim_seconds: float) -> float:
        """How long ``sim_seconds`` of simulated time take in wall-clock seconds."""
        return sim_seconds / self.speed

    def reanchored(self, speed: float) -> SimClock:
        """The same simulated now, from here on at another speed."""
        real = time.time()
        return SimClock(anchor_sim=self.at_real(real), anchor_real=real, speed=speed)
