"""``[sim] start`` / ``--start``: where a new simulated clock starts, validated like every key, and
never silently ignored (an existing anchor wins; the real clock has no start)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness import steadyhand
from steadyhand.config import ConfigError, SimSettings, parse_settings, with_overrides
from steadyhand.domain import market_hours as mh
from steadyhand.sim.clock import anchor_clock, anchor_run_clock, clock_origin, jump_clock, resolve_start


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("given", "opens"), [
    ("2026-11-20", utc(2026, 11, 20, 14, 30)),  # an ordinary Friday
    ("2026-11-21", utc(2026, 11, 23, 14, 30)),  # Saturday: Monday's open
    ("2026-11-26", utc(2026, 11, 27, 14, 30)),  # Thanksgiving: the next session
    ("2026-11-27", utc(2026, 11, 27, 14, 30)),  # the early close: its open
    ("2026-11-20T15:00:00Z", utc(2026, 11, 20, 15)),  # a timestamp: exactly then
    ("2026-11-21T10:00:00-05:00", utc(2026, 11, 21, 15)),  # ... even on a weekend
    (" 2026-11-20 ", utc(2026, 11, 20, 14, 30)),
])
def test_a_date_starts_at_the_first_session_open_on_or_after_it(given: str, opens: datetime) -> None:
    assert resolve_start(given) == opens


def test_the_early_close_day_closes_at_13_et() -> None:
    opened = resolve_start("2026-11-27")
    assert opened is not None and mh.next_close(opened) == utc(2026, 11, 27, 18)  # 13:00 ET


def test_no_start_is_none() -> None:
    assert resolve_start("") is None


@pytest.mark.parametrize(("given", "says"), [
    ("2026-13-01", "neither a date"),
    ("tomorrow", "neither a date"),
    ("20261120", "neither a date"),
    ("2026-11-20T15:00:00", "no UTC offset"),
    ("2040-01-02", "outside the XNYS calendar"),
    ("1999-01-04T15:00:00Z", "outside the XNYS calendar"),
])
def test_bad_starts_say_what_is_accepted(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        resolve_start(given)


# --- configuration ------------------------------------------------------------------------------


def test_config_takes_a_string_a_toml_date_or_an_offset_date_time() -> None:
    import tomllib

    for text, kept in (('start = "2026-11-20"', "2026-11-20"), ("start = 2026-11-20", "2026-11-20"),
                       ("start = 2026-11-20T15:00:00Z", "2026-11-20T15:00:00+00:00")):
        settings = parse_settings(tomllib.loads(f"[sim]\n{text}\n"))
        assert settings.sim.start == kept
    assert parse_settings({}).sim.start == ""  # the default: today's behaviour


@pytest.mark.parametrize("value", ["2026-11-31", "soon", 20261120, True, datetime(2026, 11, 20, 15)])
def test_config_rejects_a_bad_start_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^sim\.start: "):
        parse_settings({"sim": {"start": value}})


def test_the_cli_override_is_validated_too() -> None:
    settings = parse_settings({"sim": {"start": "2026-11-20"}})
    assert with_overrides(settings, start="2026-11-27").sim.start == "2026-11-27"
    with pytest.raises(ConfigError, match=r"^sim\.start: "):
        with_overrides(settings, start="27/11/2026")


@pytest.mark.parametrize("command", [("run",), ("exchange", "serve")])
@pytest.mark.parametrize("start", ["2040-01-02", "next friday"])
def test_a_bad_start_exits_2_having_started_nothing(tmp_path: Path, command: tuple[str, ...], start: str) -> None:
    data_dir = tmp_path / "var"
    result = steadyhand(*command, "--start", start, data_dir=data_dir, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "configuration error: sim.start: " in result.stderr and result.stderr.count("\n") == 1
    assert not data_dir.exists()


# --- anchoring ------------------------------------------------------------------------------------


def test_a_start_anchors_a_new_clock_and_a_restart_with_it_says_nothing(tmp_path: Path) -> None:
    db = tmp_path / "exchange.db"
    sim = SimSettings(start="2026-11-21", speed=60.0)
    clock, notes = anchor_run_clock(db, sim)
    assert clock.anchor_sim == utc(2026, 11, 23, 14, 30) and clock.speed == 60.0 and notes == []
    assert clock_origin(db) == ("simulated", utc(2026, 11, 23, 14, 30))
    again, notes = anchor_run_clock(db, sim)
    assert again == clock and notes == []  # the same start: a plain restart
    assert anchor_run_clock(db, SimSettings(speed=60.0)) == (clock, [])  # no start given: nothing to say


def test_a_different_start_on_an_anchored_exchange_is_reported_not_applied(tmp_path: Path) -> None:
    db = tmp_path / "exchange.db"
    clock, _ = anchor_run_clock(db, SimSettings(start="2026-11-20"))
    jump_clock(db, utc(2026, 11, 23, 15))  # a jump keeps the original start
    later, notes = anchor_run_clock(db, SimSettings(start="2026-11-27"))
    assert later.anchor_sim == utc(2026, 11, 23, 15)  # the day goes on
    assert len(notes) == 1
    assert "start 2026-11-27 (2026-11-27 14:30:00 UTC) ignored" in notes[0]
    assert "started at 2026-11-20 14:30:00 UTC" in notes[0] and "new data dir" in notes[0]


def test_an_anchor_older_than_the_recorded_start_is_still_reported(tmp_path: Path) -> None:
    db = tmp_path / "exchange.db"
    anchor_clock(db, speed=60.0, start=utc(2026, 11, 20, 14, 30))
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'clock_start'")  # as an exchange.db made before it was
    _, notes = anchor_run_clock(db, SimSettings(start="2026-11-20"))
    assert len(notes) == 1 and "started at an unrecorded time" in notes[0]


def test_the_real_clock_ignores_a_start_and_says_so(tmp_path: Path) -> None:
    clock, notes = anchor_run_clock(tmp_path / "exchange.db", SimSettings(clock="real", start="2026-11-20"))
    assert clock.speed == 1.0 and abs((clock.now() - datetime.now(UTC)).total_seconds()) < 5
    assert notes == ['start 2026-11-20 ignored: clock = "real" runs on the wall clock']
    assert clock_origin(tmp_path / "exchange.db") == ("real", None)


def _replay(path: Path, first: datetime) -> str:
    rows = [f"{(first + timedelta(minutes=k)):%Y-%m-%dT%H:%M:%SZ},AAPL,100,101,99,100.5,1000" for k in range(3)]
    path.write_text("ts,symbol,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    return str(path)


def test_a_replay_starts_at_its_first_bar_unless_a_start_is_given(tmp_path: Path) -> None:
    replay = _replay(tmp_path / "bars.csv", utc(2026, 11, 24, 15, 7))
    clock, _ = anchor_run_clock(tmp_path / "a.db", SimSettings(replay=replay))
    assert clock.anchor_sim == utc(2026, 11, 24, 15, 7)
    clock, _ = anchor_run_clock(tmp_path / "b.db", SimSettings(replay=replay, start="2026-11-20"))
    assert clock.anchor_sim == utc(2026, 11, 20, 14, 30)
