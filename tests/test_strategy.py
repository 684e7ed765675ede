"""SMA crossover: the signal, intent ids, position logic, the live wrapper and the backtest."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from steadyhand.backtest.engine import backtest
from steadyhand.config import StrategySettings
from steadyhand.domain import Bar, Side
from steadyhand.strategies.sma import (
    SmaCrossover,
    intent_id,
    sma_crossover,
    target_orders,
)

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
# fast=2/slow=3 keeps hand-made series short.
SMALL = StrategySettings(fast=2, slow=3, qty=10)


def ts(k: int) -> datetime:
    return T0 + timedelta(minutes=k)


def bar(symbol: str, k: int, close: float, open_: float | None = None) -> Bar:
    o = close if open_ is None else open_
    return Bar(symbol, ts(k), o, max(o, close), min(o, close), close, 100)


def long_frame(closes: dict[str, list[float]], opens: dict[str, list[float]] | None = None) -> pd.DataFrame:
    rows = []
    for sym, values in closes.items():
        for k, c in enumerate(values):
            o = opens[sym][k] if opens else c
            rows.append((ts(k), sym, o, max(o, c), min(o, c), c, 100))
    return pd.DataFrame(rows, columns=["ts", "symbol", "open", "high", "low", "close", "volume"])


def reference_crossover(closes: pd.DataFrame, fast: int, slow: int) -> pd.DataFrame:
    """Textbook definition with pandas rolling; exact for integer prices."""
    f = closes.rolling(fast).mean()
    s = closes.rolling(slow).mean()
    diff, prev = f - s, (f - s).shift(1)
    up = (diff > 0) & (prev <= 0)
    down = (diff < 0) & (prev >= 0)
    return up.astype("int8") - down.astype("int8")


# V then up: 2-bar SMA goes above 3-bar SMA when price turns up.
DOWN_UP = [10.0, 9.0, 8.0, 7.0, 9.0, 11.0, 12.0]
# row 4: fast=(7+9)/2=8 > slow=(8+7+9)/3=8 -> equal, not above; row 5: fast 10 > slow 9 -> cross.
DOWN_UP_CROSS_ROW = 5


# ---------------------------------------------------------------------------------------------
# sma_crossover
# ---------------------------------------------------------------------------------------------


def test_golden_and_death_cross_rows() -> None:
    closes = pd.DataFrame({"A": DOWN_UP + [8.0, 5.0]})
    out = sma_crossover(closes, 2, 3)
    assert out["A"].tolist() == [0, 0, 0, 0, 0, 1, 0, -1, 0]
    assert out.dtypes["A"] == np.int8


def test_matches_textbook_definition_on_many_symbols() -> None:
    rng = np.random.default_rng(3)
    walk = 1000 + np.cumsum(rng.integers(-3, 4, size=(400, 60)), axis=0).astype(float)
    index = pd.date_range(T0, periods=400, freq="min")
    closes = pd.DataFrame(walk, index=index, columns=[f"S{i}" for i in range(60)])
    out = sma_crossover(closes, 5, 20)
    pd.testing.assert_frame_equal(out, reference_crossover(closes, 5, 20))
    assert (out != 0).to_numpy().sum() > 100  # the comparison is not vacuous
    assert out.index.equals(index) and list(out.columns) == list(closes.columns)


def test_signal_does_not_depend_on_history_length() -> None:
    # The live window (slow + 1 rows) must give bit-identical answers to the full series.
    rng = np.random.default_rng(5)
    closes = pd.DataFrame(100 * np.exp(np.cumsum(rng.normal(0, 0.01, (600, 40)), axis=0)))
    full = sma_crossover(closes, 5, 20).to_numpy()
    for end in range(21, 600, 7):
        tail = sma_crossover(closes.iloc[end - 21 : end], 5, 20).to_numpy()[-1]
        np.testing.assert_array_equal(tail, full[end - 1])


def test_nan_and_inf_suppress_signals_in_their_windows() -> None:
    series = DOWN_UP[:]
    nan_at_4 = series[:4] + [np.nan] + series[5:]
    inf_at_4 = series[:4] + [np.inf] + series[5:]
    closes = pd.DataFrame({"clean": series, "nan": nan_at_4, "inf": inf_at_4, "empty": [np.nan] * 7})
    out = sma_crossover(closes, 2, 3)
    assert out["clean"].tolist()[DOWN_UP_CROSS_ROW] == 1
    assert (out[["nan", "inf", "empty"]] == 0).all().all()


def test_flat_prices_never_cross_on_rounding_noise() -> None:
    closes = pd.DataFrame({p: [p] * 50 for p in (0.1, 100.1, 33.33, 1e-3, 12345.6789)})
    closes.iloc[25:] += closes.iloc[25:] * 0  # still flat
    assert (sma_crossover(closes, 5, 20) == 0).all().all()
    # alternating by one ulp is noise too
    wobble = pd.DataFrame({"A": [100.1, np.nextafter(100.1, 200)] * 30})
    assert (sma_crossover(wobble, 3, 7) == 0).all().all()


def test_shorter_than_slow_and_bad_windows() -> None:
    assert (sma_crossover(pd.DataFrame({"A": [1.0, 2.0, 3.0]}), 2, 3) == 0).all().all()
    assert sma_crossover(pd.DataFrame({"A": []}, dtype=float), 2, 3).empty
    with pytest.raises(ValueError):
        sma_crossover(pd.DataFrame({"A": [1.0]}), 3, 3)
    with pytest.raises(ValueError):
        sma_crossover(pd.DataFrame({"A": [1.0]}), 0, 3)


# ---------------------------------------------------------------------------------------------
# intent_id
# ---------------------------------------------------------------------------------------------


def test_intent_id_format_and_determinism() -> None:
    t = datetime(2026, 11, 20, 14, 31, tzinfo=UTC)
    assert intent_id("sma", "AAPL", t, Side.BUY) == "sma-AAPL-20261120T1431Z-B0"
    assert intent_id("sma", "AAPL", t, Side.SELL, seq=2) == "sma-AAPL-20261120T1431Z-S2"
    assert intent_id("sma", "BRK.B", t, Side.BUY) == "sma-BRK.B-20261120T1431Z-B0"
    # the same instant in another zone, or naive (taken as UTC), is the same intent
    est = timezone(timedelta(hours=-5))
    assert intent_id("sma", "AAPL", t.astimezone(est), Side.BUY) == "sma-AAPL-20261120T1431Z-B0"
    assert intent_id("sma", "AAPL", t.replace(tzinfo=None), Side.BUY) == "sma-AAPL-20261120T1431Z-B0"
    # sub-minute bars keep distinct ids
    assert intent_id("sma", "AAPL", t + timedelta(seconds=5), Side.BUY) == "sma-AAPL-20261120T143105Z-B0"
    assert intent_id("sma", "AAPL", t + timedelta(microseconds=7), Side.BUY) != intent_id(
        "sma", "AAPL", t, Side.BUY
    )


def test_intent_id_rejects_unusable_ids() -> None:
    t = datetime(2026, 11, 20, 14, 31, tzinfo=UTC)
    with pytest.raises(ValueError):
        intent_id("sma", "BTC/USD", t, Side.BUY)
    with pytest.raises(ValueError):
        intent_id("sma", "X" * 40, t, Side.BUY)
    long_ok = intent_id("sma", "X" * 26, t, Side.BUY, seq=9)
    assert len(long_ok) == 48


# ---------------------------------------------------------------------------------------------
# target_orders
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signal", "position", "allow_short", "expected"),
    [
        (1, 0, False, (Side.BUY, 10)),
        (1, 4, False, (Side.BUY, 6)),
        (1, 10, False, None),
        (1, 15, False, None),
        (1, -10, True, (Side.BUY, 20)),  # cover and go long
        (1, -3, False, (Side.BUY, 13)),  # a stray short is covered too
        (-1, 10, False, (Side.SELL, 10)),
        (-1, 3, False, (Side.SELL, 3)),
        (-1, 0, False, None),  # long-only never shorts
        (-1, -5, False, None),
        (-1, 10, True, (Side.SELL, 20)),  # sell out and go short
        (-1, 0, True, (Side.SELL, 10)),
        (-1, -10, True, None),
        (-1, -4, True, (Side.SELL, 6)),
        (0, 10, True, None),
    ],
)
def test_target_orders(signal: int, position: int, allow_short: bool, expected: tuple | None) -> None:
    orders = target_orders({"A": signal}, {"A": position}, 10, allow_short)
    assert orders.get("A") == expected


def test_target_orders_many_symbols_missing_positions_are_flat() -> None:
    orders = target_orders({"A": 1, "B": -1, "C": 0, "D": -1}, {"B": 7}, 5, False)
    assert orders == {"A": (Side.BUY, 5), "B": (Side.SELL, 7)}


# ---------------------------------------------------------------------------------------------
# SmaCrossover (live)
# ---------------------------------------------------------------------------------------------


def feed(strategy: SmaCrossover, closes: list[float], symbol: str = "A", start: int = 0) -> list:
    out = []
    for k, c in enumerate(closes, start):
        out += strategy.on_bars([bar(symbol, k, c)], {})
    return out


def test_live_golden_cross_signal_fields() -> None:
    strategy = SmaCrossover(SMALL, ["A"])
    signals = feed(strategy, DOWN_UP)
    assert len(signals) == 1
    s = signals[0]
    assert s.intent_id == intent_id("sma", "A", ts(DOWN_UP_CROSS_ROW), Side.BUY)
    assert (s.strategy, s.symbol, s.side, s.qty) == ("sma", "A", Side.BUY, 10)
    assert s.bar_ts == ts(DOWN_UP_CROSS_ROW)
    assert s.ref_price == DOWN_UP[DOWN_UP_CROSS_ROW]
    assert s.reason == "sma 2/3 golden cross"


def test_live_uses_positions() -> None:
    strategy = SmaCrossover(SMALL, ["A"])
    strategy.warm_up([bar("A", k, c) for k, c in enumerate(DOWN_UP[:DOWN_UP_CROSS_ROW])])
    k = DOWN_UP_CROSS_ROW
    assert strategy.on_bars([bar("A", k, DOWN_UP[k])], {"A": 10}) == []  # already long qty
    strategy2 = SmaCrossover(SMALL, ["A"])
    strategy2.warm_up([bar("A", j, c) for j, c in enumerate(DOWN_UP[:k])])
    (sig,) = strategy2.on_bars([bar("A", k, DOWN_UP[k])], {"A": 4})
    assert (sig.side, sig.qty) == (Side.BUY, 6)


def test_warm_up_emits_nothing_but_primes_the_window() -> None:
    strategy = SmaCrossover(SMALL, ["A"])
    # warm-up includes the crossing bar itself: no signal for it, ever
    strategy.warm_up(reversed([bar("A", k, c) for k, c in enumerate(DOWN_UP[: DOWN_UP_CROSS_ROW + 1])]))
    window = DOWN_UP[DOWN_UP_CROSS_ROW - 3 : DOWN_UP_CROSS_ROW + 1]  # slow + 1 newest closes
    assert strategy.last_ts("A") == ts(DOWN_UP_CROSS_ROW)
    np.testing.assert_array_equal(strategy.closes("A"), window)
    # a restarted strategy fed history + live again must not signal the old bar twice
    replay = [bar("A", k, c) for k, c in enumerate(DOWN_UP[: DOWN_UP_CROSS_ROW + 1])]
    assert strategy.on_bars(replay, {}) == []
    assert strategy.ignored_old == DOWN_UP_CROSS_ROW + 1
    np.testing.assert_array_equal(strategy.closes("A"), window)


def test_warm_up_then_live_signals_on_the_crossing_bar() -> None:
    strategy = SmaCrossover(SMALL, ["A"])
    strategy.warm_up(bar("A", k, c) for k, c in enumerate(DOWN_UP[:DOWN_UP_CROSS_ROW]))
    signals = strategy.on_bars([bar("A", DOWN_UP_CROSS_ROW, DOWN_UP[DOWN_UP_CROSS_ROW])], {})
    assert [s.bar_ts for s in signals] == [ts(DOWN_UP_CROSS_ROW)]


def test_duplicate_and_unknown_bars_are_ignored() -> None:
    strategy = SmaCrossover(SMALL, ["A"])
    feed(strategy, DOWN_UP[:DOWN_UP_CROSS_ROW])
    k = DOWN_UP_CROSS_ROW
    first = strategy.on_bars([bar("A", k, DOWN_UP[k]), bar("ZZZ", k, 1.0)], {})
    again = strategy.on_bars([bar("A", k, DOWN_UP[k])], {})
    assert len(first) == 1 and again == []
    assert strategy.ignored_unknown == 1 and strategy.ignored_old == 1


def test_symbol_without_a_bar_this_tick_does_not_repeat_its_signal() -> None:
    strategy = SmaCrossover(SMALL, ["A", "B"])
    for k, c in enumerate(DOWN_UP[: DOWN_UP_CROSS_ROW + 1]):
        strategy.on_bars([bar("A", k, c), bar("B", k, 50.0)], {})
    # A's window still ends on its crossing row, but A got no new bar
    assert strategy.on_bars([bar("B", DOWN_UP_CROSS_ROW + 1, 50.0)], {}) == []


def test_several_ticks_in_one_batch_are_processed_in_order() -> None:
    # cross up then down inside one batch; positions seen by the second tick include the first
    series = DOWN_UP[:6] + [5.0]
    one_by_one = SmaCrossover(SMALL, ["A"])
    expected = []
    pos: dict[str, int] = {}
    for k, c in enumerate(series):
        for s in one_by_one.on_bars([bar("A", k, c)], pos):
            expected.append((s.intent_id, s.side, s.qty))
            pos["A"] = pos.get("A", 0) + s.side.sign * s.qty
    batched = SmaCrossover(SMALL, ["A"])
    batched.warm_up([bar("A", k, c) for k, c in enumerate(series[:4])])
    got = batched.on_bars(list(reversed([bar("A", k, series[k]) for k in range(4, 7)])), {})
    assert [(s.intent_id, s.side, s.qty) for s in got] == expected
    assert [s.side for s in got] == [Side.BUY, Side.SELL]


def test_five_thousand_symbols_per_call_match_the_vectorized_signal() -> None:
    n, ticks = 5_000, 40
    settings = StrategySettings(fast=5, slow=20, qty=3, allow_short=True)
    symbols = [f"S{i:04d}" for i in range(n)]
    rng = np.random.default_rng(11)
    prices = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (ticks, n)), axis=0))
    expected = sma_crossover(pd.DataFrame(prices, columns=symbols), 5, 20).to_numpy()

    strategy = SmaCrossover(settings, symbols)
    warm = 21
    strategy.warm_up(
        Bar(s, ts(k), p, p, p, p, 1) for k in range(warm) for s, p in zip(symbols, prices[k], strict=True)
    )
    positions: dict[str, int] = {}
    for k in range(warm, ticks):
        batch = [Bar(s, ts(k), p, p, p, p, 1) for s, p in zip(symbols, prices[k].tolist(), strict=True)]
        signals = strategy.on_bars(batch, positions)
        got = {s.symbol: s for s in signals}
        want = {symbols[j]: int(expected[k, j]) for j in np.flatnonzero(expected[k])}
        assert {sym: s.side.sign for sym, s in got.items()} == want
        for s in signals:
            assert s.bar_ts == ts(k) and s.qty == (3 if positions.get(s.symbol, 0) == 0 else 6)
            positions[s.symbol] = positions.get(s.symbol, 0) + s.side.sign * s.qty
    assert len(positions) > 500  # plenty of symbols actually traded


def test_every_tick_equals_sma_crossover_on_the_same_window() -> None:
    """on_bars computes only the last two averages of each window; every tick must still give what
    sma_crossover gives on that window: through warm-up NaNs, gaps, NaN/inf closes, flat stretches
    and one-ulp wobbles (equal averages), integer prices (exact ties) and batches of several ticks."""
    fast, slow, n, n_ticks = 5, 20, 50, 500
    settings = StrategySettings(fast=fast, slow=slow, qty=1, allow_short=True)  # every crossing orders
    symbols = [f"S{j:02d}" for j in range(n)]
    rng = np.random.default_rng(29)
    steps = rng.normal(0, 0.004, (n_ticks, n))
    flat_end = {}
    for j in range(10):  # stand still for 45 ticks: fast == slow, then the first move crosses
        start = int(rng.integers(0, n_ticks - 60))
        steps[start : start + 45, j] = 0.0
        flat_end[j] = start + 45
    prices = 50 * np.exp(np.cumsum(steps, axis=0))
    for j in range(10, 15):  # alternate by one ulp: rounding noise that must not cross
        start = int(rng.integers(0, n_ticks - 60))
        p = prices[start, j]
        prices[start : start + 45, j] = [p, np.nextafter(p, np.inf)] * 22 + [p]
    # Flat at 3.3 with rare huge spikes: once a spike leaves the window the averages are equal again,
    # which a running sum (add the new close, subtract the old) misses by far more than rounding.
    prices[:, 15:20] = 3.3
    for j in range(15, 20):
        prices[rng.integers(0, n_ticks, 8), j] = 10 ** rng.uniform(6, 10, 8)
    prices[:, 40:] = 100 + np.cumsum(rng.integers(-1, 2, (n_ticks, 10)), axis=0)  # exact ties
    for bad in (np.nan, np.inf, -np.inf):
        prices[rng.integers(0, n_ticks, 6), rng.integers(20, n, 6)] = bad
    has_bar = rng.random((n_ticks, n)) >= 0.15
    has_bar[rng.random(n_ticks) < 0.2] &= rng.random(n) < 0.2  # sparse ticks: few symbols get a bar
    has_bar[:, :10] = True  # flat symbols: a bar every tick, so their flat windows fill

    strategy = SmaCrossover(settings, symbols)  # no warm-up: the first windows are NaN
    history: list[list[float]] = [[] for _ in range(n)]
    got, want = [], []
    k = 0
    while k < n_ticks:
        batch_ticks = range(k, min(n_ticks, k + int(rng.integers(1, 4))))  # 1-3 ticks per call
        k = batch_ticks[-1] + 1
        batch = [
            Bar(symbols[j], ts(t), 1.0, 1.0, 1.0, float(prices[t, j]), 1)
            for t in batch_ticks
            for j in np.flatnonzero(has_bar[t])
        ]
        rng.shuffle(batch)
        got += [(s.bar_ts, s.symbol, s.side, s.qty) for s in strategy.on_bars(batch, {})]
        projected: dict[str, int] = {}  # as on_bars does: later ticks of a batch see earlier intents
        for t in batch_ticks:
            window = np.full((slow + 1, n), np.nan)
            for j in np.flatnonzero(has_bar[t]):
                history[j].append(prices[t, j])
                tail = history[j][-(slow + 1) :]
                window[slow + 1 - len(tail) :, j] = tail
            last = sma_crossover(pd.DataFrame(window, columns=symbols), fast, slow).to_numpy()[-1]
            row = {symbols[j]: int(last[j]) for j in np.flatnonzero(has_bar[t]) if last[j]}
            for symbol, (side, qty) in target_orders(row, projected, 1, True).items():
                want.append((ts(t), symbol, side, qty))
                projected[symbol] = projected.get(symbol, 0) + side.sign * qty

    assert sorted(got) == sorted(want)
    assert len(want) > 500  # not vacuous
    signalled = {(bar_ts, symbol) for bar_ts, symbol, _, _ in want}
    for j, end in flat_end.items():  # equal averages count as "not above": the first move crosses
        assert (ts(end), symbols[j]) in signalled


def test_bad_configuration_fails_at_construction() -> None:
    with pytest.raises(ValueError):
        SmaCrossover(StrategySettings(fast=5, slow=5), ["A"])
    with pytest.raises(ValueError):
        SmaCrossover(SMALL, ["BTC/USD"])


# ---------------------------------------------------------------------------------------------
# backtest
# ---------------------------------------------------------------------------------------------


def test_backtest_fills_at_next_open_and_books_pnl() -> None:
    closes = DOWN_UP + [8.0, 5.0, 6.0]  # golden cross row 5, death cross row 7
    opens = [c + 0.5 for c in closes]
    result = backtest(long_frame({"A": closes}, {"A": opens}), SMALL)
    assert [(t.side, t.qty, t.price, t.ts) for t in result.trades] == [
        (Side.BUY, 10, opens[6], ts(6)),
        (Side.SELL, 10, opens[8], ts(8)),
    ]
    assert result.trades[0].intent_id == intent_id("sma", "A", ts(5), Side.BUY)
    assert result.realized_pnl == pytest.approx(10 * (opens[8] - opens[6]))
    assert result.final_positions == {}
    assert result.final_cash == pytest.approx(100_000 + 10 * (opens[8] - opens[6]))
    assert result.bars == len(closes)
    frame = result.trades_frame()
    assert list(frame.columns) == ["ts", "symbol", "side", "qty", "price", "intent_id"]
    assert frame["side"].tolist() == ["buy", "sell"]


def test_backtest_signal_on_last_bar_never_fills() -> None:
    closes = DOWN_UP[: DOWN_UP_CROSS_ROW + 1]
    result = backtest(long_frame({"A": closes}), SMALL)
    assert [s.side for s in result.signals] == [Side.BUY]
    assert result.trades == () and result.final_positions == {}


def test_backtest_short_reversal_pnl() -> None:
    # long-short: the death cross sells 20 (10 out, 10 short), the next golden cross buys 20
    closes = DOWN_UP + [8.0, 5.0, 4.0, 6.0, 9.0, 10.0]
    settings = dataclasses.replace(SMALL, allow_short=True)
    result = backtest(long_frame({"A": closes}), settings)
    sides = [(t.side, t.qty) for t in result.trades]
    assert sides == [(Side.BUY, 10), (Side.SELL, 20), (Side.BUY, 20)]
    p = [t.price for t in result.trades]
    assert result.realized_pnl == pytest.approx(10 * (p[1] - p[0]) + 10 * (p[1] - p[2]))
    assert result.final_positions == {"A": 10}
    assert result.final_equity == pytest.approx(result.final_cash + 10 * closes[-1])


def test_backtest_drops_duplicate_bars_and_accepts_unsorted_input() -> None:
    frame = long_frame({"A": DOWN_UP + [8.0], "B": DOWN_UP + [8.0]})
    noisy = pd.concat([frame, frame.iloc[[3, 9]].assign(close=999.0)]).sample(frac=1, random_state=1)
    result = backtest(noisy, SMALL)
    clean = backtest(frame, SMALL)
    assert result.trades == clean.trades
    assert result.bars == len(frame)


def random_bars(seed: int, n_symbols: int, n_ticks: int, gap_prob: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(n_symbols):
        price = 50.0 + 10 * j
        for k in range(n_ticks):
            o = price * (1 + rng.normal(0, 0.002))
            price *= 1 + rng.normal(0, 0.01)
            if rng.random() < gap_prob:
                continue  # no bar this minute for this symbol
            rows.append((ts(k), f"S{j}", o, max(o, price), min(o, price), price, int(rng.integers(1, 1000))))
    return pd.DataFrame(rows, columns=["ts", "symbol", "open", "high", "low", "close", "volume"])


@pytest.mark.parametrize("allow_short", [False, True])
def test_live_one_tick_at_a_time_equals_backtest(allow_short: bool) -> None:
    settings = StrategySettings(fast=5, slow=20, qty=7, allow_short=allow_short)
    frame = random_bars(seed=21, n_symbols=12, n_ticks=400, gap_prob=0.1)
    result = backtest(frame, settings)
    assert len(result.signals) > 50

    strategy = SmaCrossover(settings, sorted(frame["symbol"].unique()))
    positions: dict[str, int] = {}  # as if every intent filled (the backtest's book)
    live = []
    for t, group in frame.sort_values("ts").groupby("ts", sort=True):
        bars = [
            Bar(r.symbol, t.to_pydatetime(), r.open, r.high, r.low, r.close, r.volume)
            for r in group.itertuples()
        ]
        for s in strategy.on_bars(bars, positions):
            live.append(s)
            positions[s.symbol] = positions.get(s.symbol, 0) + s.side.sign * s.qty

    def key(s):  # order within one tick is irrelevant
        return (s.bar_ts, s.symbol)

    assert [(s.intent_id, s.side, s.qty, s.ref_price, s.reason) for s in sorted(live, key=key)] == [
        (s.intent_id, s.side, s.qty, s.ref_price, s.reason) for s in sorted(result.signals, key=key)
    ]
    filled = {t.intent_id for t in result.trades}
    assert filled <= {s.intent_id for s in result.signals}
    assert len(filled) >= len(result.signals) - 12  # only each symbol's last bar can go unfilled
