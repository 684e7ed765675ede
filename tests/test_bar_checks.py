"""The feed's gate: every rejection reason, and the validator's per-symbol memory."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from steadyhand.data.bar_checks import BarValidator, check_bar
from steadyhand.domain import Bar

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


def good(symbol: str = "AAPL", minute: int = 0, **changes: object) -> Bar:
    fields: dict[str, object] = dict(
        symbol=symbol, ts=T0 + timedelta(minutes=minute), open=100.0, high=101.0, low=99.0, close=100.5,
        volume=1200,
    )
    fields.update(changes)
    return Bar(**fields)  # type: ignore[arg-type]


def test_good_bar_passes() -> None:
    assert check_bar(good(), None) is None
    assert check_bar(good(minute=1), T0) is None
    # a bar touching its range, and zero volume, are fine
    assert check_bar(good(open=99.0, close=101.0, volume=0), None) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"open": math.nan}, "nan"),
        ({"high": math.inf}, "nan"),
        ({"low": -math.inf}, "nan"),
        ({"close": math.nan}, "nan"),
        ({"volume": math.nan}, "nan"),
        ({"low": 0.0, "open": 0.5}, "non_positive"),
        ({"low": -1.0}, "non_positive"),
        ({"open": 0.0, "low": 0.0}, "non_positive"),
        ({"high": 98.0, "open": 98.5, "close": 98.5}, "high_below_low"),
        ({"open": 101.5}, "ohlc_outside_range"),
        ({"close": 98.0}, "ohlc_outside_range"),
        ({"volume": -1}, "negative_volume"),
        ({"ts": T0.replace(tzinfo=None)}, "naive_ts"),
    ],
)
def test_bad_values_are_rejected_with_their_reason(changes: dict, reason: str) -> None:
    assert check_bar(good(**changes), None) == reason


def test_time_order() -> None:
    assert check_bar(good(minute=0), T0 + timedelta(minutes=1)) == "out_of_order"
    assert check_bar(good(minute=1), T0 + timedelta(minutes=1)) == "duplicate"
    assert check_bar(good(minute=2), T0 + timedelta(minutes=1)) is None


def test_first_failure_wins() -> None:
    # NaN and out of order: the value check comes first
    assert check_bar(good(close=math.nan), T0 + timedelta(hours=1)) == "nan"


def test_validator_remembers_last_good_ts_per_symbol() -> None:
    v = BarValidator(["AAPL", "MSFT"])
    ok, bad = v.validate([good("AAPL", 0), good("MSFT", 0)])
    assert len(ok) == 2 and bad == []
    assert v.last_ts("AAPL") == T0

    batch = [
        good("AAPL", 1),
        good("AAPL", 1),  # same bar twice in one batch
        good("MSFT", 1, close=math.nan),  # rejected: does not advance MSFT
        good("MSFT", 0),  # duplicate of the last good MSFT bar
        good("TSLA", 5),
        good("AAPL", 0),  # older than AAPL's new last
    ]
    ok, bad = v.validate(batch)
    assert ok == [batch[0]]
    assert [(b.symbol, r) for b, r in bad] == [
        ("AAPL", "duplicate"),
        ("MSFT", "nan"),
        ("MSFT", "duplicate"),
        ("TSLA", "unknown_symbol"),
        ("AAPL", "out_of_order"),
    ]
    assert v.last_ts("MSFT") == T0
    assert v.last_ts("AAPL") == T0 + timedelta(minutes=1)
    assert v.counts == {"duplicate": 2, "nan": 1, "unknown_symbol": 1, "out_of_order": 1}
    assert v.accepted == 3
    # the bad MSFT minute can be re-sent correctly
    ok, _ = v.validate([good("MSFT", 1)])
    assert len(ok) == 1


def test_validator_without_symbols_accepts_any_symbol() -> None:
    v = BarValidator()
    ok, bad = v.validate([good("ANY", 0), good("OTHER.B", 0)])
    assert len(ok) == 2 and bad == []
    assert v.last_ts("NEVER") is None


def test_seed_after_warm_up_and_never_backwards() -> None:
    v = BarValidator(["AAPL"])
    v.seed("AAPL", T0 + timedelta(minutes=10))
    _, bad = v.validate([good("AAPL", 10), good("AAPL", 9)])
    assert [r for _, r in bad] == ["duplicate", "out_of_order"]
    v.seed("AAPL", T0)  # an older seed is ignored
    assert v.last_ts("AAPL") == T0 + timedelta(minutes=10)
    ok, _ = v.validate([good("AAPL", 11)])
    assert len(ok) == 1
