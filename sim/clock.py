"""Simulated time: real time, or real time sped up, anchored so a restart continues the same day.

Every process computes the same "now" from the same anchor, so the feed, the exchange and the
heartbeat monitor agree without sharing memory. The anchor lives in ``exchange.db`` (the simulated
exchange owns it, because the exchange outlives the bot).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

from steadyhand.domain import market_hours
from steadyhand.sim.schema import get_meta, iso, open_exchange_db, parse_iso, set_meta
from steadyhand.state.store import transaction

if TYPE_CHECKING:
    from steadyhand.config import SimSettings

EXCHANGE_TZ = ZoneInfo("America/New_York")  # a start date is an exchange date (XNYS)


class NowSource(Protocol):
    """Anything with ``now()``: a :class:`SimClock`, or a manual clock in tests."""

    def now(self) -> datetime: ...


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


# ---------------------------------------------------------------------------------------------
# The anchor in exchange.db
# ---------------------------------------------------------------------------------------------


def jump_clock(db_path: str | Path, to: datetime) -> SimClock:
    """Move a simulated run's clock forward to ``to`` (the bot being down overnight, say); only
    while the bot is down, and only forward: the book is caught up to ``to`` on its next call."""
    db = open_exchange_db(db_path)
    try:
        with transaction(db):
            conn = db.conn
            if get_meta(conn, "clock_mode") != "simulated":
                raise ValueError("only a simulated clock can jump")
            speed = float(get_meta(conn, "clock_speed") or "1")
            current = SimClock(anchor_sim=parse_iso(get_meta(conn, "clock_anchor_sim") or ""),
                               anchor_real=float(get_meta(conn, "clock_anchor_real") or "0"), speed=speed)
            if to <= current.now():
                raise ValueError(f"the clock only moves forward: {to} <= {current.now()}")
            clock = SimClock(anchor_sim=to.astimezone(UTC), anchor_real=time.time(), speed=speed)
            set_meta(conn, clock_anchor_sim=iso(clock.anchor_sim), clock_anchor_real=repr(clock.anchor_real))
    finally:
        db.conn.close()
    return clock


def stored_clock(db_path: str | Path) -> SimClock | None:
    """The clock a run anchored in ``exchange.db`` (read-only: changes nothing), or None."""
    path = Path(db_path)
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'clock_%'").fetchall())
    except sqlite3.OperationalError:
        return None  # no book yet
    finally:
        conn.close()
    if "clock_anchor_sim" not in meta:
        return None
    return SimClock(anchor_sim=parse_iso(meta["clock_anchor_sim"]), anchor_real=float(meta["clock_anchor_real"]),
                    speed=float(meta.get("clock_speed", "1")))


def clock_origin(db_path: str | Path) -> tuple[str, datetime | None] | None:
    """``(mode, start)`` of the clock anchored in ``exchange.db`` (read-only), or None when there is
    none yet. ``start`` is where a simulated clock first started (jumps and speed changes keep it);
    None for the real clock and for an anchor made before the start was recorded."""
    path = Path(db_path)
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('clock_mode', 'clock_start')"))
    except sqlite3.OperationalError:
        return None  # no book yet
    finally:
        conn.close()
    if "clock_mode" not in meta:
        return None
    mode, start = meta["clock_mode"], meta.get("clock_start")
    return mode, parse_iso(start) if start and mode == "simulated" else None


def anchor_clock(
    db_path: str | Path,
    *,
    speed: float,
    mode: str = "simulated",
    start: datetime | None = None,
) -> SimClock:
    """The run's clock, anchored in ``exchange.db`` so a restarted bot continues the same day.

    First call: ``simulated`` starts at ``start`` (a replay's first bar), else at the open of the
    latest session (so a new bot trades right away); ``real`` is the wall clock. Later calls return
    the stored anchor (``start`` is then ignored), re-anchored if ``speed`` changed. A change of
    ``mode`` starts a fresh anchor.
    """
    if mode not in ("simulated", "real"):
        raise ValueError(f"clock mode must be 'simulated' or 'real', got {mode!r}")
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    if start is not None and start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    db = open_exchange_db(db_path)
    try:
        with transaction(db):
            conn = db.conn
            stored_mode = get_meta(conn, "clock_mode")
            if stored_mode == mode:
                clock = SimClock(
                    anchor_sim=parse_iso(get_meta(conn, "clock_anchor_sim") or ""),
                    anchor_real=float(get_meta(conn, "clock_anchor_real") or "0"),
                    speed=float(get_meta(conn, "clock_speed") or "1"),
                )
                wanted = 1.0 if mode == "real" else speed
                if clock.speed != wanted:
                    clock = clock.reanchored(wanted)
            elif mode == "real":
                clock = SimClock.real()
            else:
                real = time.time()
                sim_start = start if start is not None else market_hours.previous_open(
                    datetime.fromtimestamp(real, UTC)
                )
                clock = SimClock(anchor_sim=sim_start.astimezone(UTC), anchor_real=real, speed=speed)
                set_meta(conn, clock_start=iso(clock.anchor_sim))  # kept, so a later start can be compared
            set_meta(
                conn,
                clock_mode=mode,
                clock_anchor_sim=iso(clock.anchor_sim),
                clock_anchor_real=repr(clock.anchor_real),
                clock_speed=repr(clock.speed),
            )
    finally:
        db.conn.close()
    return clock


def parse_start(text: str) -> date | datetime | None:
    """``[sim] start`` / ``--start`` as given: ``""`` (None: the latest session's open), a date
    ``YYYY-MM-DD``, or an ISO timestamp with an offset or ``Z``. ValueError says what is accepted."""
    text = text.strip()
    if not text:
        return None
    if len(text) == 10:  # YYYY-MM-DD (fromisoformat alone would also take 20261120)
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    elif len(text) > 10 and text[10] in "T ":
        try:
            exact = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if exact.tzinfo is None or exact.utcoffset() is None:
                raise ValueError(f"{text!r} has no UTC offset (add Z or +00:00, or give a date YYYY-MM-DD)")
            return exact.astimezone(UTC)
    raise ValueError(f"{text!r} is neither a date YYYY-MM-DD nor an ISO timestamp with an offset "
                     "(2026-11-20T14:30:00Z)")


def resolve_start(text: str) -> datetime | None:
    """Where a new simulated clock starts: a date is the open of the first XNYS session on or
    after it (a weekend or holiday: the next session's open); a timestamp is exactly then; ``""``
    is None (the caller's default). ValueError outside the calendar's coverage."""
    given = parse_start(text)
    if given is None:
        return None
    from steadyhand.domain import market_hours  # loads the calendar (~0.5 s): only when a start is given

    first, last = market_hours.coverage()
    at = given if isinstance(given, datetime) else datetime(given.year, given.month, given.day, tzinfo=EXCHANGE_TZ)
    if not first - timedelta(days=1) <= at < last:
        raise ValueError(f"{text} is outside the XNYS calendar, which covers {first.date()} .. {last.date()}")
    if isinstance(given, datetime):
        return given
    # Every session opens after midnight ET, so the first open after it is that day's or the next.
    return market_hours.next_open(at)


def start_of(sim: SimSettings) -> datetime | None:
    """``sim.start`` resolved (None: not given, or ``clock = "real"``, which ignores it); a date
    outside the calendar is a ConfigError naming ``sim.start``."""
    from steadyhand.config import ConfigError

    if sim.clock == "real" or not sim.start:
        return None
    try:
        return resolve_start(sim.start)
    except ValueError as exc:
        raise ConfigError(f"sim.start: {exc}") from None


def anchor_run_clock(db_path: str | Path, sim: SimSettings) -> tuple[SimClock, list[str]]:
    """The run's clock from ``[sim]`` (clock, speed, start, replay), anchored in ``exchange.db``,
    and notes for the operator about a start that does not count (it never silently does not).

    A new simulated clock starts at ``sim.start``; without one at a replay's first bar, else at
    the latest session's open. An existing anchor wins (a restarted bot continues its day).
    """
    notes: list[str] = []
    if sim.clock == "real":
        if sim.start:
            notes.append(f'start {sim.start} ignored: clock = "real" runs on the wall clock')
        return anchor_clock(db_path, speed=sim.speed, mode="real"), notes
    start = start_of(sim)
    origin = clock_origin(db_path)
    existing = origin is not None and origin[0] == "simulated"
    if start is None and sim.replay and not existing:
        from steadyhand.sim.replay import ReplayMarket

        start = ReplayMarket(sim.replay).first_ts
    clock = anchor_clock(db_path, speed=sim.speed, mode="simulated", start=start)
    if existing and start is not None and origin is not None and origin[1] != start:
        began = "at an unrecorded time" if origin[1] is None else f"at {_utc_text(origin[1])}"
        notes.append(f"start {sim.start} ({_utc_text(start)}) ignored: {Path(db_path).name} already has a "
                     f"simulated clock that started {began} (now {_utc_text(clock.now())}); a restarted bot "
                     "continues its day. Use a new data dir to start afresh.")
    return clock, notes


def _utc_text(t: datetime) -> str:
    return f"{t.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
