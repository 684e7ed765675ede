"""The broker circuit breaker: when to stop sending orders to a broker, and when to start again.

Consecutive transient failures (5xx, timeouts, disconnects) open it as "unreachable": the next
answer from the broker closes it. Consecutive rejections open it as "rejecting": it closes after a
cool-down, half-open (one more rejection re-opens it at once). Times are ``time.monotonic()``.
The OMS (``actors/oms.py``) acts on the transitions: it tells risk, alerts, and reconciles.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Circuit:
    """``kind``: "" closed, "unreachable" or "rejecting" (open)."""

    kind: str = ""
    reason: str = ""
    failures: int = 0  # consecutive transient failures
    rejections: int = 0  # consecutive rejections
    opened_at: float = 0.0
    retry_at: float = 0.0  # monotonic; for "rejecting"
    last_probe: float = 0.0

    @property
    def open(self) -> bool:
        return bool(self.kind)

    def failed(self, threshold: int) -> bool:
        """Count a transient failure; True when it must open now."""
        self.failures += 1
        return not self.open and self.failures >= threshold

    def rejected(self, threshold: int) -> bool:
        """Count a rejection; True when it must open now."""
        self.rejections += 1
        return not self.open and self.rejections >= threshold

    def trip(self, kind: str, reason: str, now: float, cooldown_s: float) -> None:
        self.kind, self.reason, self.opened_at = kind, reason, now
        self.retry_at = now + cooldown_s

    def reset(self, threshold: int, now: float) -> tuple[str, float]:
        """Close it; (the kind it had, seconds it was open). After rejections it is left half-open:
        one more rejection re-opens it at once."""
        kind = self.kind
        down_s = now - self.opened_at
        self.kind, self.reason, self.failures = "", "", 0
        self.rejections = threshold - 1 if kind == "rejecting" else 0
        return kind, down_s

    def cooled_down(self, now: float) -> bool:
        """A rejection-opened circuit whose cool-down is over (time to close it)."""
        return self.kind == "rejecting" and now >= self.retry_at
