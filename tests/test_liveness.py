"""PingLedger (liveness.py): who is hung, driven by hand with an injected clock (no sleeps).

The beat here is the real monitor's: judge, then send this beat's pings. ``Monitor`` plays the
heartbeat actor's part with a clock the test moves."""

from __future__ import annotations

from steadyhand.liveness import MAX_OUTSTANDING, Overdue, PingLedger

ACTORS = ("oms", "risk", "feed")
DEADLINE, STARTUP = 5.0, 60.0
FAST, SLOW = 1.0, 5.0  # the beat with the market open and closed (CLOSED_SLOWDOWN = 5)


class Monitor:
    """The heartbeat's beat over a ledger, on a clock the test moves."""

    def __init__(self, actors: tuple[str, ...] = ACTORS) -> None:
        self.ledger = PingLedger(DEADLINE, STARTUP)
        self.now = 1000.0
        self.seq = 0
        self.actors = actors
        for name in actors:
            self.ledger.restarted(name)

    def beat(self, late_s: float = 0.0) -> list[Overdue]:
        found = self.ledger.judge(self.now, late_s)
        self.seq += 1
        for name in self.actors:
            self.ledger.sent(name, self.seq, self.now)
        return found

    def pong(self, *names: str, seq: int | None = None) -> None:
        for name in names or self.actors:
            self.ledger.answered(name, self.seq if seq is None else seq, self.now)

    def wait(self, seconds: float) -> None:
        self.now += seconds


def started(monitor: Monitor) -> Monitor:
    """Every actor past its startup: it answered the first beat's ping."""
    monitor.beat()
    monitor.wait(0.01)
    monitor.pong()
    return monitor


def test_closed_to_open_with_slow_rate_pongs_reports_nothing() -> None:
    # The bug of issue 10: closed-market beats 5 s apart, then the first open-market beat with the
    # 5 s deadline. Every actor answered every ping it was sent, so none is hung however late
    # the first fast beat fires (short of the monitor's own re-baselining).
    monitor = started(Monitor())
    for _ in range(10):  # closed: slow beats, each answered a few ms later
        monitor.wait(SLOW - 0.01)
        assert monitor.beat() == []
        monitor.wait(0.01)
        monitor.pong()
    monitor.wait(SLOW + 2.0)  # the first open-market beat, late on a busy machine
    assert monitor.beat(late_s=2.0) == []
    for _ in range(20):  # open: fast beats
        monitor.wait(0.5)
        monitor.pong()
        monitor.wait(FAST - 0.5)
        assert monitor.beat() == []


def test_an_actor_that_answered_everything_is_never_hung() -> None:
    monitor = started(Monitor())
    monitor.wait(3600.0)  # an hour without pings (say the beat was rescheduled): nothing owed
    assert monitor.ledger.overdue(monitor.now) == []
    assert monitor.beat() == []


def test_an_unanswered_ping_older_than_the_deadline_reports_once() -> None:
    monitor = started(Monitor())
    hung_since = monitor.now + FAST
    reports: list[Overdue] = []
    for _ in range(12):
        monitor.wait(FAST)
        reports += monitor.beat()
        monitor.wait(0.01)
        monitor.pong("oms", "feed")  # risk stops answering
    assert [o.name for o in reports] == ["risk"]  # once, not on every beat
    # At the first beat after its oldest unanswered ping (sent at hung_since) passed the deadline.
    assert DEADLINE < reports[0].silent_s <= DEADLINE + FAST
    assert monitor.ledger.oldest_unanswered("risk") == hung_since
    assert monitor.ledger.oldest_unanswered("oms") is None


def test_the_oldest_unanswered_ping_counts_not_the_newest_answer() -> None:
    monitor = started(Monitor(("oms",)))
    monitor.wait(FAST)
    monitor.beat()  # ping 2, at t
    first = monitor.now
    for _ in range(3):
        monitor.wait(FAST)
        monitor.beat()  # pings 3..5
    monitor.pong(seq=2)  # a late answer to ping 2 only: ping 3 is now the oldest owed
    assert monitor.ledger.oldest_unanswered("oms") == first + FAST
    monitor.pong(seq=4)  # an answer to ping 4 answers 3 and 4
    assert monitor.ledger.oldest_unanswered("oms") == first + 3 * FAST
    monitor.pong(seq=-1)  # a busy actor's unasked-for pong answers all sent so far
    assert monitor.ledger.oldest_unanswered("oms") is None


def test_a_recovered_actor_can_be_reported_again_and_a_restart_clears_it() -> None:
    monitor = started(Monitor(("oms",)))
    reports: list[Overdue] = []
    for _ in range(7):
        monitor.wait(FAST)
        reports += monitor.beat()
    assert [o.name for o in reports] == ["oms"]
    assert monitor.ledger.answered("oms", monitor.seq, monitor.now)  # it answers after all: news, no longer hung
    assert monitor.ledger.overdue(monitor.now) == []
    reports = []
    for _ in range(7):
        monitor.wait(FAST)
        reports += monitor.beat()
    assert [o.name for o in reports] == ["oms"]
    monitor.ledger.restarted("oms")  # the supervisor replaced it: nothing owed by the new process
    assert monitor.ledger.oldest_unanswered("oms") is None
    monitor.wait(FAST)
    monitor.beat()  # the new process is pinged, then goes down before answering
    monitor.ledger.forget("oms")  # down: no longer pinged, nothing it owes is judged
    monitor.actors = ()
    monitor.wait(100.0)
    assert monitor.beat() == [] and monitor.ledger.overdue(monitor.now) == []


def test_a_late_beat_re_baselines_instead_of_blaming_everyone() -> None:
    monitor = started(Monitor())
    monitor.wait(FAST)
    monitor.beat()  # pings sent; the answers come, but the monitor is stopped before reading them
    sent = monitor.now
    monitor.wait(30.0)
    assert monitor.beat(late_s=30.0 - FAST) == []  # late by more than the deadline: no one blamed
    for name in ACTORS:  # the outstanding pings count as sent now
        assert monitor.ledger.oldest_unanswered(name) == monitor.now != sent
    monitor.wait(0.01)
    monitor.pong()  # the queued answers are read
    for _ in range(10):
        monitor.wait(FAST)
        assert monitor.beat() == []
        monitor.wait(0.01)
        monitor.pong()


def test_a_beat_late_by_less_than_the_deadline_is_judged_as_of_when_it_was_due() -> None:
    monitor = started(Monitor(("oms",)))
    for _ in range(4):
        monitor.wait(FAST)
        monitor.beat()  # oms answers none of these: its oldest owed ping is 4 beats old
    oldest = monitor.ledger.oldest_unanswered("oms")
    assert oldest is not None
    # The next beat fires 2.5 s late: the answer may sit unread in the monitor's inbox, so the
    # monitor's own lateness is not counted (as of due: 4 s old, within the deadline)...
    monitor.wait(FAST + 2.5)
    assert monitor.beat(late_s=2.5) == []
    # ...but a beat on time, with the oldest ping past the deadline, reports it.
    monitor.wait(FAST)
    found = monitor.beat()
    assert [o.name for o in found] == ["oms"] and found[0].silent_s == monitor.now - oldest


def test_startup_allowance_until_the_first_answer() -> None:
    monitor = Monitor(("oms", "feed"))
    reports: list[Overdue] = []
    for _ in range(int(STARTUP / FAST) - 1):  # a slow setup: no answer for almost the allowance
        reports += monitor.beat()
        monitor.pong("feed")
        monitor.wait(FAST)
    assert reports == []
    assert monitor.ledger.answered("oms", monitor.seq, monitor.now)  # first answer: the normal deadline from now
    assert not monitor.ledger.answered("oms", monitor.seq, monitor.now)  # news only once
    for _ in range(int(DEADLINE / FAST) + 2):
        monitor.wait(FAST)
        reports += monitor.beat()
    assert {o.name for o in reports} == {"oms", "feed"}
    monitor.ledger.restarted("oms")  # a restart gives the allowance again
    reports = []
    for _ in range(int(DEADLINE / FAST) + 2):
        monitor.wait(FAST)
        reports += monitor.beat()
    assert "oms" not in {o.name for o in reports}


def test_pings_queued_behind_a_slow_start_count_from_its_first_answer() -> None:
    # A setup that takes 30 s: 30 pings wait in the inbox. The first answer (to ping 1) ends the
    # start; the 29 still owed were sent up to 30 s ago but must not be judged against the 5 s
    # deadline from the moment the allowance ends, only from that answer.
    monitor = Monitor(("oms",))
    for _ in range(30):
        assert monitor.beat() == []
        monitor.wait(FAST)
    answered_at = monitor.now
    assert monitor.ledger.answered("oms", 1, answered_at)
    assert monitor.ledger.oldest_unanswered("oms") == answered_at
    monitor.wait(0.5)
    assert monitor.beat() == []  # the backlog is on its way
    monitor.pong(seq=monitor.seq)
    assert monitor.ledger.oldest_unanswered("oms") is None
    # Had the backlog not come, the normal deadline applies from the answer: found at once past it.
    monitor = Monitor(("oms",))
    for _ in range(30):
        monitor.beat()
        monitor.wait(FAST)
    monitor.ledger.answered("oms", 1, monitor.now)
    reports: list[Overdue] = []
    for _ in range(int(DEADLINE / FAST) + 1):
        monitor.wait(FAST)
        reports += monitor.beat()
    assert [o.name for o in reports] == ["oms"] and DEADLINE < reports[0].silent_s <= DEADLINE + FAST


def test_a_start_that_hangs_past_the_allowance_is_reported() -> None:
    monitor = Monitor(("oms",))
    reports: list[Overdue] = []
    for _ in range(int(STARTUP / FAST) + 2):
        reports += monitor.beat()
        monitor.wait(FAST)
    assert [o.name for o in reports] == ["oms"] and reports[0].silent_s > STARTUP


def test_the_oldest_owed_ping_is_kept_when_the_record_is_capped() -> None:
    ledger = PingLedger(DEADLINE, STARTUP)
    for seq in range(1, MAX_OUTSTANDING + 50):
        ledger.sent("oms", seq, float(seq))
    assert ledger.oldest_unanswered("oms") == 1.0
    assert ledger.overdue(float(MAX_OUTSTANDING + 50))[0].silent_s == MAX_OUTSTANDING + 49
