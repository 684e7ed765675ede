"""market_hours (XNYS sessions) and the simulated markets (synthetic and replay)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from steadyhand.config import SimSettings
from steadyhand.domain import Bar
from steadyhand.domain import market_hours as mh
from steadyhand.sim import replay as replay_module
from steadyhand.sim.market import (
    MarketModel,
    SyntheticMarket,
    load_market,
    quote_arrays,
)
from steadyhand.sim.replay import ReplayMarket

SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY", "QQQ")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- market_hours ----------------------------------------------------------------------------


def test_regular_session_bounds() -> None:
    # Monday 2026-11-23: 09:30-16:00 New York = 14:30-21:00 UTC (EST).
    assert not mh.is_open(utc(2026, 11, 23, 14, 29, 59))
    assert mh.is_open(utc(2026, 11, 23, 14, 30))
    assert mh.is_open(utc(2026, 11, 23, 20, 59, 59))
    assert not mh.is_open(utc(2026, 11, 23, 21, 0))  # close is exclusive
    assert mh.session_at(utc(2026, 11, 23, 18)) == (utc(2026, 11, 23, 14, 30), utc(2026, 11, 23, 21))
    assert mh.session_at(utc(2026, 11, 23, 22)) is None


def test_holiday_and_early_close() -> None:
    # Thanksgiving 2026-11-26 is closed; the day after closes at 13:00 New York (18:00 UTC).
    assert not mh.is_open(utc(2026, 11, 26, 16))
    assert mh.session_at(utc(2026, 11, 27, 15)) == (utc(2026, 11, 27, 14, 30), utc(2026, 11, 27, 18))
    assert mh.is_open(utc(2026, 11, 27, 17, 59, 59))
    assert not mh.is_open(utc(2026, 11, 27, 18, 0))
    assert mh.next_close(utc(2026, 11, 27, 15)) == utc(2026, 11, 27, 18)
    assert mh.next_open(utc(2026, 11, 25, 22)) == utc(2026, 11, 27, 14, 30)


def test_next_and_previous_open_and_close_over_a_weekend() -> None:
    saturday = utc(2026, 11, 21, 15)
    assert mh.next_open(saturday) == utc(2026, 11, 23, 14, 30)
    assert mh.previous_open(saturday) == utc(2026, 11, 20, 14, 30)
    assert mh.next_close(saturday) == utc(2026, 11, 23, 21)
    # Before the open on a trading day: that day's open is "next"; during: the following day's.
    assert mh.next_open(utc(2026, 11, 23, 10)) == utc(2026, 11, 23, 14, 30)
    assert mh.next_open(utc(2026, 11, 23, 14, 30)) == utc(2026, 11, 24, 14, 30)
    assert mh.previous_open(utc(2026, 11, 23, 14, 30)) == utc(2026, 11, 23, 14, 30)
    assert mh.next_close(utc(2026, 11, 23, 21)) == utc(2026, 11, 24, 21)


def test_session_open_minutes_walks_back_across_weekend_and_holiday() -> None:
    minutes = mh.session_open_minutes(utc(2026, 11, 27, 14, 32), 4)
    # Two minutes on the 27th, then the end of the 25th (the 26th is Thanksgiving).
    assert minutes == [
        utc(2026, 11, 25, 20, 58),
        utc(2026, 11, 25, 20, 59),
        utc(2026, 11, 27, 14, 30),
        utc(2026, 11, 27, 14, 31),
    ]
    weekend = mh.session_open_minutes(utc(2026, 11, 21, 12), 391)
    assert len(weekend) == 391
    assert weekend[-1] == utc(2026, 11, 20, 20, 59)
    assert weekend[1] == utc(2026, 11, 20, 14, 30)
    assert weekend[0] == utc(2026, 11, 19, 20, 59)
    assert all(b - a >= timedelta(minutes=1) for a, b in zip(weekend, weekend[1:], strict=False))
    # An unaligned end: the minute it falls in started before it, so it counts.
    assert mh.session_open_minutes(utc(2026, 11, 23, 14, 31, 30), 1) == [utc(2026, 11, 23, 14, 31)]
    assert mh.session_open_minutes(utc(2026, 11, 23, 15), 0) == []


def test_out_of_coverage_and_naive_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="coverage"):
        mh.is_open(utc(2035, 1, 2, 15))
    with pytest.raises(ValueError, match="coverage"):
        mh.next_open(utc(1990, 1, 2, 15))
    with pytest.raises(ValueError, match="coverage"):
        mh.session_open_minutes(utc(2006, 11, 22, 15), 10_000)
    with pytest.raises(ValueError, match="timezone-aware"):
        mh.is_open(datetime(2026, 11, 23, 15))


# --- synthetic market ------------------------------------------------------------------------

_FINGERPRINT = """
import json, sys
from datetime import UTC, datetime
from steadyhand.sim.market import SyntheticMarket
m = SyntheticMarket(int(sys.argv[1]), ["AAPL", "SPY"])
end = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
out = {}
for s in m.symbols:
    bars = m.history(s, end, 120)
    q = m.quote(s, datetime(2026, 11, 24, 15, 12, 7, tzinfo=UTC))
    out[s] = [[b.ts.isoformat(), b.open, b.high, b.low, b.close, b.volume] for b in bars]
    out[s].append([q.bid, q.ask])
print(json.dumps(out))
"""


def _fingerprint_here(seed: int) -> dict[str, list[list[object]]]:
    m = SyntheticMarket(seed, ["AAPL", "SPY"])
    end = utc(2026, 11, 24, 16)
    out: dict[str, list[list[object]]] = {}
    for s in m.symbols:
        bars = m.history(s, end, 120)
        q = m.quote(s, utc(2026, 11, 24, 15, 12, 7))
        assert q is not None
        out[s] = [[b.ts.isoformat(), b.open, b.high, b.low, b.close, b.volume] for b in bars]
        out[s].append([q.bid, q.ask])
    return out


def test_same_seed_same_market_in_another_process() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _FINGERPRINT, "11"], capture_output=True, text=True, check=True
    )
    theirs = json.loads(result.stdout)
    mine = json.loads(json.dumps(_fingerprint_here(11)))
    assert theirs == mine
    assert _fingerprint_here(12) != mine  # the seed matters


def test_bars_are_valid_ohlc_over_a_session() -> None:
    m = SyntheticMarket(7, SYMBOLS)
    _, close = mh.session_at(utc(2026, 11, 23, 15)) or (None, None)
    assert close is not None
    for s in SYMBOLS:
        bars = m.history(s, close, 390)
        assert len(bars) == 390
        assert [b.ts for b in bars] == mh.session_open_minutes(close, 390)
        for b in bars:
            assert b.symbol == s
            assert b.high >= max(b.open, b.close) and b.low <= min(b.open, b.close)
            assert b.low > 0 and b.volume > 0 and isinstance(b.volume, int)
            assert all(math.isfinite(x) for x in (b.open, b.high, b.low, b.close))
        assert 50 * 0.8 < bars[0].open < 500 * 1.2


def test_closed_market_has_no_bar_or_quote() -> None:
    m = SyntheticMarket(7, SYMBOLS)
    assert m.bar("AAPL", utc(2026, 11, 21, 15, 0)) is None  # Saturday
    assert m.quote("AAPL", utc(2026, 11, 26, 15, 0)) is None  # Thanksgiving
    assert m.bar("AAPL", utc(2026, 11, 27, 17, 59)) is not None  # last minute of an early close
    assert m.bar("AAPL", utc(2026, 11, 27, 18, 0)) is None
    assert m.path("AAPL", utc(2026, 11, 21), utc(2026, 11, 22)) == []
    with pytest.raises(KeyError):
        m.bar("ZZZZ", utc(2026, 11, 23, 15))


def test_quotes_have_a_cent_spread_and_match_the_path() -> None:
    m = SyntheticMarket(7, SYMBOLS, spread_bps=2.0)
    t0 = utc(2026, 11, 23, 20, 59, 50)
    path = m.path("NVDA", t0, utc(2026, 11, 24, 14, 30, 5))
    # 10 seconds before Monday's close, then 5 after Tuesday's open; nothing overnight.
    assert len(path) == 15
    assert path[0].ts == t0 and path[9].ts == utc(2026, 11, 23, 20, 59, 59)
    assert path[10].ts == utc(2026, 11, 24, 14, 30)
    for q in path:
        assert q.ask > q.bid > 0
        assert round(q.bid, 2) == q.bid and round(q.ask, 2) == q.ask
        assert (q.ask - q.bid) / q.mid < 10 / 10_000
        assert m.quote("NVDA", q.ts + timedelta(milliseconds=400)) == q
    # Fractional bounds: whole seconds s with t0 <= s < t1.
    assert [q.ts for q in m.path("NVDA", t0 + timedelta(milliseconds=1), t0 + timedelta(seconds=2))] == [
        t0 + timedelta(seconds=1)
    ]
    arrays = quote_arrays(m, "NVDA", t0, utc(2026, 11, 24, 14, 30, 5))
    assert arrays.to_quotes("NVDA") == path


def test_bar_is_the_ohlc_of_the_minutes_mid_path() -> None:
    m = SyntheticMarket(3, ["SPY"], spread_bps=0.0)
    minute = utc(2026, 11, 24, 16, 7)
    bar = m.bar("SPY", minute)
    assert bar is not None
    mids = [q.mid for q in m.path("SPY", minute, minute + timedelta(minutes=1))]
    assert len(mids) == 60
    # With no spread the quote is the mid rounded to cents, the bar keeps 4 decimals.
    assert bar.open == pytest.approx(mids[0], abs=0.006)
    assert bar.close == pytest.approx(mids[-1], abs=0.006)
    assert bar.high == pytest.approx(max(mids), abs=0.006)
    assert bar.low == pytest.approx(min(mids), abs=0.006)


def test_sma_crossovers_happen_several_times_a_session() -> None:
    m = SyntheticMarket(7, SYMBOLS)
    for day in (23, 24, 25):
        close = utc(2026, 11, day, 21)
        for s in SYMBOLS:
            closes = np.array([b.close for b in m.history(s, close, 390)])
            fast = np.convolve(closes, np.ones(5) / 5, "valid")[15:]
            slow = np.convolve(closes, np.ones(20) / 20, "valid")
            crossings = int(np.count_nonzero(np.diff(np.sign(fast - slow)) != 0))
            assert crossings >= 4, (day, s, crossings)


def test_history_crosses_the_weekend() -> None:
    m = SyntheticMarket(7, SYMBOLS)
    bars = m.history("SPY", utc(2026, 11, 23, 14, 35), 25)
    assert len(bars) == 25
    assert bars[-1].ts == utc(2026, 11, 23, 14, 34)
    assert bars[0].ts == utc(2026, 11, 20, 20, 40)
    assert m.bar("SPY", utc(2026, 11, 20, 20, 40, 30)) == bars[0]  # any time in the minute


def test_a_day_is_cheap_to_compute_without_earlier_days() -> None:
    m = SyntheticMarket(99, ["AAPL"])
    far = m.quote("AAPL", utc(2027, 6, 15, 15))
    near = m.quote("AAPL", utc(2026, 11, 23, 15))
    assert far is not None and near is not None
    assert SyntheticMarket(99, ["AAPL"]).quote("AAPL", utc(2027, 6, 15, 15)) == far


# --- replay market ---------------------------------------------------------------------------

REPLAY_CSV = """ts,symbol,open,high,low,close,volume
2026-11-23T14:30:00Z,AAA,10.00,10.20,9.90,10.10,100
2026-11-23T14:30:00,BBB,20.00,20.00,20.00,20.00,50
2026-11-23T14:32:00+00:00,AAA,10.10,10.40,10.00,10.30,120
2026-11-23T14:31:00Z,AAA,10.10,10.30,10.00,10.20,110
2026-11-23T14:33:00Z,AAA,NaN,10.5,10.1,nan,90
2026-11-23T14:34:00Z,AAA,10.3,10.4,10.2,-1,80
2026-11-23T14:35:00Z,AAA,oops,10.5,10.3,10.4,x
2026-11-23T14:32:00Z,AAA,99,99,99,99,1
not-a-time,AAA,1,1,1,1,1
2026-11-24T14:30:00Z,AAA,11.00,11.10,10.90,11.00,100
"""


@pytest.fixture
def replay(tmp_path: Path) -> ReplayMarket:
    path = tmp_path / "bars.csv"
    path.write_text(REPLAY_CSV)
    return ReplayMarket(path, spread_bps=20.0)


def test_replay_parses_raw_rows_in_file_order(replay: ReplayMarket) -> None:
    rows = replay.rows()
    assert len(rows) == 9 and replay.skipped == 1  # the unreadable timestamp
    assert [r.ts.minute for r in rows[:4]] == [30, 30, 32, 31]  # out of order kept
    assert rows[1].ts == utc(2026, 11, 23, 14, 30)  # naive means UTC
    assert math.isnan(rows[4].open) and math.isnan(rows[4].close) and rows[4].high == 10.5
    assert rows[5].close == -1.0
    assert math.isnan(rows[6].open) and rows[6].volume == -1  # unparsable number, volume
    assert replay.symbols == ("AAA", "BBB")
    assert replay.first_ts == utc(2026, 11, 23, 14, 30)
    assert replay.last_ts == utc(2026, 11, 24, 14, 30)


def test_replay_bar_lookup_takes_the_first_duplicate(replay: ReplayMarket) -> None:
    bar = replay.bar("AAA", utc(2026, 11, 23, 14, 32))
    assert bar is not None and bar.close == 10.30
    assert replay.bar("AAA", utc(2026, 11, 23, 14, 36)) is None
    assert replay.bar("BBB", utc(2026, 11, 23, 14, 30)) is not None


def test_replay_quotes_use_the_latest_usable_bar_of_the_day(replay: ReplayMarket) -> None:
    assert replay.quote("AAA", utc(2026, 11, 23, 14, 29)) is None  # nothing yet today
    q = replay.quote("AAA", utc(2026, 11, 23, 14, 31, 30))
    assert q is not None and (q.bid, q.ask) == (10.19, 10.21)  # 10.20 -/+ 10 bps, in cents
    # 14:33 (NaN close) and 14:34 (negative close) are not quotable: still 14:32's close.
    q = replay.quote("AAA", utc(2026, 11, 23, 14, 34, 30))
    assert q is not None and q.mid == pytest.approx(10.30)
    q = replay.quote("AAA", utc(2026, 11, 23, 22))
    assert q is not None and q.mid == pytest.approx(10.40)
    assert replay.quote("AAA", utc(2026, 11, 24, 14, 0)) is None  # yesterday's bar does not count
    path = replay.path("AAA", utc(2026, 11, 23, 14, 31), utc(2026, 11, 23, 14, 36))
    assert [(q.ts.minute, round(q.mid, 2)) for q in path] == [(31, 10.2), (32, 10.3), (35, 10.4)]


def test_replay_history_is_time_ordered_raw(replay: ReplayMarket) -> None:
    hist = replay.history("AAA", utc(2026, 11, 23, 14, 33), 10)
    assert [(b.ts.minute, b.close) for b in hist] == [(30, 10.1), (31, 10.2), (32, 10.3), (32, 99.0)]
    assert replay.history("AAA", utc(2026, 11, 23, 14, 33), 1)[0].close == 99.0


def test_replay_requires_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("time,sym,price\n1,2,3\n")
    with pytest.raises(ValueError, match="missing column"):
        ReplayMarket(path)


def test_load_market_picks_replay_or_synthetic(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(REPLAY_CSV)
    synthetic = load_market(SimSettings(seed=3), SYMBOLS)
    assert isinstance(synthetic, SyntheticMarket) and synthetic.seed == 3
    assert isinstance(synthetic, MarketModel)
    replayed = load_market(SimSettings(replay=str(path)), ("AAA",))
    assert isinstance(replayed, ReplayMarket) and replayed.symbols == ("AAA",)
    assert isinstance(replayed, MarketModel)


def test_replay_reads_ragged_files_as_a_dict_reader_would(tmp_path: Path) -> None:
    # Blank lines are no rows; a short row's missing fields are empty (unreadable values, not a
    # crash); a repeated column name takes its last column; one unreadable ts is one skipped row.
    path = tmp_path / "ragged.csv"
    path.write_text("ts,symbol,open,high,low,close,volume,close\n"
                    "2026-11-16T14:30:00Z,AAA,1,2,0.5,9,100,1.5\n"
                    "\n"
                    "2026-11-16T14:31:00Z,AAA,1,2\n"
                    "not-a-time,AAA,1,2,0.5,1.5,100,1.5\n")
    replay = ReplayMarket(path)
    first, short = replay.rows()
    assert replay.skipped == 1
    assert first.close == 1.5 and first.volume == 100
    assert short.high == 2.0 and math.isnan(short.low) and math.isnan(short.close) and short.volume == -1


# A file with every oddity the replay reader meets; the columnar reader must read it exactly as the
# row-by-row reader it replaced (csv.DictReader plus the same per-field parsers) did.
NASTY_CSV = (
    "volume,ts,symbol,open,high,low,close,extra,close\r\n"
    "100,2026-11-23T14:30:00Z,AAA,1,2,0.5,ignored,x,1.5\r\n"
    "1e3,2026-11-23T14:30:00,BBB,nan,inf,-Infinity, 1.5 ,,1_000\n"
    "\n"
    "nan,not-a-time,CCC,1,1,1,1,,1\n"
    " 7 ,2026-11-23T09:31:00-05:00, AAA ,1e400,abc,,0x10,,-0\n"
    "12.9,2026-11-23T14:31:00.5+00:00,DDD,١٢,1__0,_1,+.5,,5.\n"
    "-3.7,,EEE,1,1,1,1,,1\n"
    "abc,2026-11-23T14:32:00Z,   ,1,1,1,1,,1\n"
    "1, 2026-11-23T14:29:00Z ,\"B,B\",1,1,1,1,,2\n"
    "5,2026-11-23T14:30:00Z,AAA,9,9,9,9,,9\n"  # a duplicate: bar() keeps the first
    "6,2026-11-23T14:33:00Z,CCC,1,1,1,1,,3,long,row,with,more\n"
    "7,2026-11-23T14:34:00Z,\"Q\nQ\",1\n"
    "\"8\",\"2026-11-23T14:28:00Z\",AAA,2,2,2,2,,2.25\n"
    "\n"
)


def _reference_rows(path: Path) -> tuple[list[Bar], int]:
    """The pre-columnar reader, row by row."""
    from steadyhand.sim.replay import _parse_float, _parse_ts, _parse_volume

    rows: list[Bar] = []
    skipped = 0
    with path.open(newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            ts, symbol = _parse_ts(rec.get("ts")), (rec.get("symbol") or "").strip()
            if ts is None or not symbol:
                skipped += 1
                continue
            rows.append(Bar(symbol, ts, _parse_float(rec["open"]), _parse_float(rec["high"]),
                            _parse_float(rec["low"]), _parse_float(rec["close"]), _parse_volume(rec["volume"])))
    return rows, skipped


def _same(a: list[Bar], b: list[Bar]) -> bool:
    # repr: NaN equals NaN, -0.0 differs from 0.0, and ts compares with its tzinfo.
    return [repr(x) for x in a] == [repr(x) for x in b]


@pytest.mark.parametrize("chunk_rows", [3, 200_000])
def test_replay_reads_a_nasty_file_exactly_as_the_row_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    monkeypatch.setattr(replay_module, "_CHUNK_ROWS", chunk_rows)  # symbols and ts met across chunks
    path = tmp_path / "nasty.csv"
    path.write_bytes(NASTY_CSV.encode())
    expected, skipped = _reference_rows(path)
    replay = ReplayMarket(path)
    assert _same(replay.rows(), expected) and replay.skipped == skipped == 3
    assert replay.symbols == tuple(dict.fromkeys(b.symbol for b in expected))
    assert replay.first_ts == min(b.ts for b in expected) and replay.last_ts == max(b.ts for b in expected)
    for symbol in replay.symbols:
        mine = sorted((b for b in expected if b.symbol == symbol), key=lambda b: b.ts)
        for b in mine:
            first = next(x for x in mine if x.ts == b.ts)
            assert _same([replay.bar(symbol, b.ts)], [first])
        end = utc(2026, 11, 23, 14, 31)
        assert _same(replay.history(symbol, end, 2), [b for b in mine if b.ts < end][-2:])


def test_replay_row_accessors_match_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(REPLAY_CSV)
    replay = ReplayMarket(path)
    rows = replay.rows()
    assert len(replay) == len(rows)
    assert _same(replay.bars(2, 5), rows[2:5]) and replay.bars(7, 99) == rows[7:] and replay.bars(3, 3) == []
    assert all(replay.ts_at(i) == b.ts for i, b in enumerate(rows))
    minute = timedelta(minutes=1)
    for now in (utc(2026, 11, 23, 14, 30), utc(2026, 11, 23, 14, 32, 30), utc(2026, 11, 25)):
        for start in range(len(rows) + 1):
            want = next((i for i in range(start, len(rows)) if rows[i].ts + minute > now), len(rows))
            assert replay.first_closing_after(now, start) == want
        for stop in range(len(rows) + 1):
            assert _same(replay.bars_before(stop, now), [b for b in rows[:stop] if b.ts < now])
