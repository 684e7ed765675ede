"""In-process actor tests (Thespian's simpleSystemBase): a recording stand-in for peers."""

from __future__ import annotations

from typing import Any

from thespian.actors import Actor


class Probe(Actor):
    """Stands in for peers: keeps every message it gets (through ``record``) and answers
    ``"seen?"`` with the list so far."""

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if message == "seen?":
            self.send(sender, list(getattr(self, "seen", [])))
            return
        self.seen = [*getattr(self, "seen", []), self.record(message)]

    def record(self, message: Any) -> Any:
        return message
