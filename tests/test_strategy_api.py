"""The plug-in API (strategies/base.py): the contract, the shipped strategies, the fast path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from steadyhand.backtest.engine import prepare_bars
from steadyhand.strategies.base import Strategy, TargetError, check_targets, newest_rows
from steadyhand.strategies.loader import SHIPPED, load_module, resolve_class
from steadyhand.strategies.sma import SmaCross

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent


def parity_bars() -> pd.DataFrame:
    return prepare_bars(pd.read_csv(DATA / "sma_parity.csv"))


def test_strategy_import_is_lazy_and_public() -> None:
    code = ("import sys, steadyhand; assert 'pandas' not in sys.modules, 'import steadyhand pulled in pandas'\n"
            "from steadyhand import Strategy\n"
            "from steadyhand.strategies.base import Strategy as S; assert Strategy is S")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_base_constructor_takes_nothing_and_targets_is_required() -> None:
    class Bare(Strategy):
        pass

    bare = Bare()
    assert bare.warmup == 1 and Bare.strategy_id() == "bare"
    with pytest.raises(NotImplementedError):
        bare.targets(parity_bars())


def test_strategy_id_must_fit_an_order_id() -> None:
    class Bad(Strategy):
        name = "has-dash"

    with pytest.raises(ValueError, match="has-dash"):
        Bad.strategy_id()


def test_check_targets_names_what_is_wrong() -> None:
    with pytest.raises(TargetError, match="DataFrame"):
        check_targets([1, 2], "x")
    with pytest.raises(TargetError, match="target"):
        check_targets(pd.DataFrame({"ts": [], "symbol": []}), "x")
    frame = pd.DataFrame({"ts": ["2026-11-18T15:00Z"], "symbol": ["A"], "target": [1], "order_type": ["iceberg"]})
    with pytest.raises(TargetError, match="iceberg"):
        check_targets(frame, "x")
    ok = check_targets(pd.DataFrame({"ts": ["2026-11-18T15:00Z"], "symbol": ["A"], "target": [1]}), "x")
    assert ok.loc[0, "order_type"] == "market" and ok.loc[0, "time_in_force"] == "day"


STRATEGIES = [resolve_class(spec)() for spec in list(SHIPPED.values())[:3]] + [SmaCross(3, 12, 7, True)]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.strategy_id())
def test_live_window_rows_equal_the_whole_history(strategy: Strategy) -> None:
    """Every tick: ``latest`` on the trailing ``warmup`` bars per symbol (what the live actor passes)
    equals ``targets`` on the whole history at that bar, for the target and the order prices."""
    bars = parity_bars()
    full = check_targets(strategy.targets(bars), "t").set_index(["ts", "symbol"])
    times = bars["ts"].unique()
    compared = 0
    for ts in times[strategy.warmup - 1 :: 7]:  # every 7th tick keeps the test quick
        upto = bars[bars["ts"] <= ts]
        window = upto.groupby("symbol", sort=False).tail(strategy.warmup).reset_index(drop=True)
        fast = check_targets(strategy.latest(window), "t").set_index(["ts", "symbol"])
        slow = check_targets(newest_rows(strategy.targets(window), window), "t").set_index(["ts", "symbol"])
        for got in (fast, slow):
            want = full.loc[got.index]
            for col in ("target", "limit_price", "stop_price"):
                np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(), err_msg=f"{ts} {col}")
        compared += len(fast)
    assert compared > 100


def test_shipped_strategies_ask_for_their_order_types() -> None:
    bars = parity_bars()
    boll = check_targets(resolve_class("bollinger")().targets(bars), "b").dropna(subset=["target"])
    assert set(boll["order_type"]) == {"limit"} and (boll["limit_price"] > 0).all()
    assert set(boll["target"]) == {0.0, 10.0}
    brk = check_targets(resolve_class("breakout")(window=10).targets(bars), "b").dropna(subset=["target"])
    assert set(brk["order_type"]) == {"stop"} and (brk["stop_price"] > 0).all()


def test_external_targets_from_a_file_and_from_a_function(tmp_path: Path) -> None:
    bars = parity_bars()
    picked = bars.iloc[[30, 31, 90]]
    path = tmp_path / "targets.csv"
    pd.DataFrame({"ts": picked["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "symbol": picked["symbol"],
                  "target": [5, -3, 0]}).to_csv(path, index=False)
    external = resolve_class("external")(path=str(path))
    got = external.targets(bars)
    assert got["target"].tolist() == [5, -3, 0] and got["symbol"].tolist() == picked["symbol"].tolist()
    module = tmp_path / "model.py"
    module.write_text("import pandas as pd\n"
                      "def predict(bars):\n"
                      "    return pd.DataFrame({'ts': bars['ts'], 'symbol': bars['symbol'], 'target': 2.0})\n")
    by_function = resolve_class("external")(function=f"{module}:predict")
    assert (by_function.targets(bars)["target"] == 2.0).all()
    with pytest.raises(ValueError, match="exactly one"):
        resolve_class("external")()
    with pytest.raises(ValueError, match="no such targets file"):
        resolve_class("external")(path=str(tmp_path / "nope.csv"))


def test_example_strategy_is_a_strategy() -> None:
    module = load_module(str(REPO / "examples" / "my_strategy.py"), "example")
    strategy = module.Momentum(lookback=10)
    result = check_targets(strategy.targets(parity_bars()), "mom")
    assert set(result["target"].dropna()) == {0.0, 10.0}


def test_the_plugin_bench_runs(tmp_path: Path) -> None:
    """bench/bench_plugin.py on a toy size, so it does not rot (its figures go to BENCHMARKS.md)."""
    bench = REPO / "bench" / "bench_plugin.py"
    live = subprocess.run([sys.executable, str(bench), "live", "--symbols", "20", "--ticks", "3"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert live.returncode == 0, live.stderr
    assert {line.split()[1] for line in live.stdout.splitlines()} == set(SHIPPED)
    back = subprocess.run([sys.executable, str(bench), "backtest", "--symbols", "5", "--days", "1",
                           "--skip-backtrader"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    assert "bars/s" in back.stdout
