"""Periodic timers of SteadyActor (actors/base.py): the schedule logic, driven by hand.

``wakeupAfter`` is recorded instead of sent, and the recorded wakeups are delivered by calling
``_on_timer`` with their payloads, so every step is deterministic (no clock, no sleeps)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from steadyhand.actors import base
from steadyhand.actors.base import SteadyActor


class TimedActor(SteadyActor):
    def __init__(self) -> None:
        super().__init__()
        self.wakeups: list[tuple[float, Any]] = []
        self.runs = 0
        self.idle = True
        self.timers = {"poll": self.poll}

    def wakeupAfter(self, timePeriod: timedelta, payload: Any = None) -> None:  # noqa: N802, N803 (Thespian's names)
        self.wakeups.append((timePeriod.total_seconds(), payload))

    def poll(self) -> None:
        self.runs += 1

    def fire(self, wakeup: tuple[float, Any]) -> None:
        self._on_timer(wakeup[1])


def test_a_slow_timer_hurried_runs_at_its_normal_rate_and_its_slow_wakeup_is_ignored() -> None:
    actor = TimedActor()
    actor.every("poll", 0.2, first_in=0.0, slow_period_s=2.0, slow_when=lambda: actor.idle)
    actor.fire(actor.wakeups[-1])
    assert actor.runs == 1
    slow = actor.wakeups[-1]
    assert slow[0] == 2.0  # idle: the next run is the slow period away
    actor.idle = False
    actor.hurry("poll")  # work started: no waiting out the slow period
    fast = actor.wakeups[-1]
    assert fast[0] == 0.2 and fast[1] != slow[1]
    actor.fire(slow)  # the superseded slow wakeup arrives: nothing runs, nothing is rescheduled
    assert actor.runs == 1 and actor.wakeups[-1] == fast
    actor.fire(fast)
    assert actor.runs == 2
    # On at the normal period (fired by hand before its time, so the next slot is t0 + period).
    assert 0 < actor.wakeups[-1][0] <= 0.4
    actor.fire(fast)  # a wakeup of the replaced chain again: ignored, so only one chain runs
    assert actor.runs == 2


def test_hurry_does_nothing_to_a_timer_running_at_its_normal_rate() -> None:
    actor = TimedActor()
    actor.idle = False
    actor.every("poll", 0.2, first_in=0.0, slow_period_s=2.0, slow_when=lambda: actor.idle)
    actor.fire(actor.wakeups[-1])
    before = list(actor.wakeups)
    actor.hurry("poll")
    assert actor.wakeups == before  # no second chain


def test_a_one_shot_run_of_a_periodic_timer_does_not_start_a_second_chain() -> None:
    actor = TimedActor()
    actor.idle = False
    actor.every("poll", 0.2, first_in=0.0)
    actor.after(0, "poll")
    actor.fire(actor.wakeups[-1])  # the one-shot
    assert actor.runs == 1 and len(actor.wakeups) == 2  # it ran, and scheduled nothing more


def test_a_periodic_timer_knows_how_late_it_fired_after_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    # The heartbeat judges no one for its own lateness (liveness.py): it needs each run's lateness
    # against that run's slot, at the normal and at the slow period alike.
    wall = [1000.0]
    monkeypatch.setattr(base.time, "time", lambda: wall[0])
    actor = TimedActor()
    actor.idle = False
    actor.every("poll", 1.0, first_in=0.0, slow_period_s=5.0, slow_when=lambda: actor.idle)
    wall[0] = 1000.25
    actor.fire(actor.wakeups[-1])
    assert actor.timer_late_s == 0.25
    wall[0] = 1003.5  # the slot was 1001: late 2.5 s; missed slots are skipped (next: 1004)
    actor.fire(actor.wakeups[-1])
    assert actor.timer_late_s == 2.5 and actor.wakeups[-1][0] == 0.5
    actor.idle = True
    wall[0] = 1004.0
    actor.fire(actor.wakeups[-1])  # on time; idle, so the next run is the slow period away (1009)
    assert actor.timer_late_s == 0.0 and actor.wakeups[-1][0] == 5.0
    actor.idle = False
    wall[0] = 1010.0
    actor.fire(actor.wakeups[-1])
    assert actor.timer_late_s == 1.0  # against the slow slot, not the normal period
    wall[0] = 1010.5  # fired before its slot (1011): not late
    actor.fire(actor.wakeups[-1])
    assert actor.timer_late_s == 0.0
    actor.after(0, "poll")
    wall[0] = 1020.0
    actor.fire(actor.wakeups[-1])  # a one-shot has no slot: never late
    assert actor.timer_late_s == 0.0 and actor.runs == 6
