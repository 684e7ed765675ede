"""The SMA crossover on the plug-in API trades exactly as the vectorized engine it replaced did.

tests/data/sma_parity_expected.json was written by main@66e7774's ``backtest()`` (before the API)
from tests/data/sma_parity.csv (tests/data/make_sma_parity.py); numbers must not change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from steadyhand.backtest.engine import run_backtest
from steadyhand.strategies.sma import SmaCross

DATA = Path(__file__).parent / "data"
EXPECTED = json.loads((DATA / "sma_parity_expected.json").read_text())


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_sma_on_the_api_equals_the_old_backtest(case: str) -> None:
    want = EXPECTED[case]
    result = run_backtest(pd.read_csv(DATA / "sma_parity.csv"), SmaCross(**want["settings"]))
    trades = [[t.ts.isoformat(), t.symbol, str(t.side), t.qty, t.price, t.intent_id] for t in result.trades]
    assert trades == want["trades"]
    assert [s.intent_id for s in result.signals] == want["signals"]
    assert result.realized_pnl == want["realized_pnl"]  # bit for bit: same fills, same order of sums
    assert result.final_positions == want["final_positions"]
    assert (result.final_cash, result.final_equity, result.bars) == (want["final_cash"], want["final_equity"],
                                                                     want["bars"])
