"""[[strategies]]: several strategy specs, the old [strategy] as one, and clear errors (exit 2)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from steadyhand.config import ConfigError, parse_settings
from steadyhand.strategies.specs import child_names, spec_for_child, strategy_of, strategy_specs

TWO = """
symbols = ["AAPL", "MSFT", "SPY"]
[[strategies]]
name = "fast"
class = "sma"
symbols = ["AAPL", "MSFT"]
max_position_qty = 50
[strategies.params]
fast = 3
slow = 8
[[strategies]]
name = "slow"
class = "sma"
allow_short = true
max_gross_exposure = 20000
"""


def parse(text: str):
    return parse_settings(tomllib.loads(text))


def test_two_specs_with_their_symbols_limits_and_child_names() -> None:
    settings = parse(TWO)
    fast, slow = strategy_specs(settings)
    assert (fast.name, fast.symbols, fast.max_position_qty, fast.params) == ("fast", ("AAPL", "MSFT"), 50,
                                                                             {"fast": 3, "slow": 8})
    assert (slow.symbols, slow.allow_short, slow.max_gross_exposure) == (("AAPL", "MSFT", "SPY"), True, 20000.0)
    assert child_names(settings) == ("strategy.fast", "strategy.slow")
    assert spec_for_child("strategy.slow", settings) is slow


def test_run_symbols_are_the_union_when_not_given() -> None:
    settings = parse(TWO.replace('symbols = ["AAPL", "MSFT", "SPY"]\n', "").replace(
        'allow_short = true', 'allow_short = true\nsymbols = ["SPY", "AAPL"]'))
    assert settings.symbols == ("AAPL", "MSFT", "SPY")


def test_old_strategy_table_is_one_spec_named_by_its_ids() -> None:
    settings = parse("[strategy]\nfast = 4\nslow = 9\n")
    (spec,) = strategy_specs(settings)
    assert (spec.name, spec.allow_short, spec.max_position_qty) == ("sma", True, None)
    assert child_names(settings) == ("strategy",) and spec_for_child("strategy", settings) == spec
    assert strategy_of("sma-AAPL-20261120T1431Z-B0") == "sma"


@pytest.mark.parametrize(("text", "message"), [
    (TWO + '[[strategies]]\nname = "fast"\nclass = "sma"\n', "strategies.fast: duplicate name"),
    (TWO.replace('["AAPL", "MSFT"]', '["AAPL", "TSLA"]'), "TSLA is not one of the run's symbols"),
    (TWO + "[strategy]\nfast = 3\n", "not both"),
    (TWO.replace("max_position_qty = 50", "max_position_qty = 0"), "fast.max_position_qty: must be positive"),
    (TWO.replace("max_position_qty = 50", "max_position_qty = -5"), "strategies.fast.max_position_qty"),
    (TWO.replace("max_gross_exposure = 20000", 'max_gross_exposure = "lots"'), "strategies.slow.max_gross_exposure"),
    (TWO.replace('name = "slow"', 'name = "sl-ow"'), "strategies[1].name"),
    (TWO.replace('name = "slow"\nclass = "sma"', 'name = "slow"'), "strategies.slow.class: required"),
    (TWO.replace("allow_short = true", "allow_shorts = true"), "strategies.slow.allow_shorts: unknown"),
    ("strategies = 3\n", "array of tables"),
])
def test_bad_strategies_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(text)


def test_cli_exits_2_naming_the_strategy_with_nothing_started(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(TWO.replace("fast = 3", "fast = 'three'"))
    data_dir = tmp_path / "var"
    proc = subprocess.run([sys.executable, "-m", "steadyhand", "run", "--config", str(config),
                           "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "strategies.fast" in proc.stderr and "fast" in proc.stderr
    assert not (data_dir / "steadyhand.db").exists()
    config.write_text(TWO)
    bars = tmp_path / "bars.csv"
    bars.write_text("ts,symbol,open,high,low,close,volume\n2026-11-20T14:30:00Z,AAPL,100,101,99,100.5,1000\n")
    for args in (["backtest", "--replay", str(bars)], ["run", "--strategy", "sma"],
                 ["run", "--replay", str(bars), "--lockstep"]):
        proc = subprocess.run([sys.executable, "-m", "steadyhand", *args, "--config", str(config),
                               "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "strateg" in proc.stderr
    assert not (data_dir / "steadyhand.db").exists()


def test_a_replay_without_a_strategys_symbols_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(TWO.replace('symbols = ["AAPL", "MSFT", "SPY"]\n', ""))  # symbols from the file
    bars = tmp_path / "bars.csv"
    bars.write_text("ts,symbol,open,high,low,close,volume\n2026-11-20T14:30:00Z,AAPL,100,101,99,100.5,1000\n")
    proc = subprocess.run([sys.executable, "-m", "steadyhand", "run", "--config", str(config), "--replay", str(bars),
                           "--data-dir", str(tmp_path / "var")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "strategies.fast.symbols: MSFT not among the run's symbols" in proc.stderr
    assert not (tmp_path / "var" / "steadyhand.db").exists()
