"""Loading a strategy from [strategy] class / [strategy.params] / --strategy: every mistake is one
clear message naming it, exit 2, nothing started (no data dir is even created)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import steadyhand
from steadyhand.config import ConfigError, StrategySettings, parse_settings
from steadyhand.strategies.loader import StrategyError, load_strategy
from steadyhand.strategies.sma import SmaCross

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent
USER = '''
from typing import Literal
from steadyhand import Strategy

class Mine(Strategy):
    name = "mine"
    def __init__(self, lookback: int = 3, scale: float = 1.0, mode: Literal["a", "b"] = "a",
                 symbols: list[str] | None = None) -> None:
        super().__init__()
        if lookback < 1:
            raise ValueError("lookback must be >= 1")
        self.lookback, self.scale, self.mode, self.symbols = lookback, scale, mode, symbols
        self.warmup = lookback

    def targets(self, bars):
        import pandas as pd
        return pd.DataFrame({"ts": bars["ts"], "symbol": bars["symbol"], "target": float("nan")})

class NotOne:
    pass
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "mine.py"
    path.write_text(USER)
    return path


def test_old_keys_without_class_mean_the_shipped_sma() -> None:
    settings = parse_settings({"strategy": {"fast": 3, "slow": 9, "qty": 4, "allow_short": True}})
    strategy = load_strategy(settings.strategy)
    assert isinstance(strategy, SmaCross)
    assert (strategy.fast, strategy.slow, strategy.qty, strategy.allow_short) == (3, 9, 4, True)
    assert strategy.warmup == 10 and strategy.strategy_id() == "sma"


def test_class_and_params_from_a_file(user_file: Path) -> None:
    settings = parse_settings({"strategy": {"class": f"{user_file}:Mine",
                                            "params": {"lookback": 5, "scale": 2, "symbols": ["A"]}}})
    strategy = load_strategy(settings.strategy)
    assert type(strategy).__name__ == "Mine" and strategy.warmup == 5
    assert strategy.scale == 2.0 and isinstance(strategy.scale, float) and strategy.symbols == ["A"]


def test_class_from_a_module_and_by_shipped_name() -> None:
    assert isinstance(load_strategy(StrategySettings(class_name="steadyhand.strategies.sma:SmaCross")), SmaCross)
    boll = load_strategy(StrategySettings(class_name="bollinger", params={"window": 30}))
    assert boll.warmup == 30


@pytest.mark.parametrize(("spec", "params", "message"), [
    ("{dir}/missing.py:Mine", {}, "no such file"),
    ("{file}:Nope", {}, "has no 'Nope'"),
    ("{file}:NotOne", {}, "not a subclass of steadyhand.Strategy"),
    ("no_such_module_xyz:Mine", {}, "cannot import no_such_module_xyz"),
    ("Mine", {}, "expected"),
    ("{file}:Mine", {"lookbak": 3}, r"strategy.params.lookbak: unknown parameter of Mine \(known: lookback"),
    ("{file}:Mine", {"lookback": "3"}, "strategy.params.lookback: Mine wants an integer"),
    ("{file}:Mine", {"lookback": 2.5}, "strategy.params.lookback: Mine wants an integer"),
    ("{file}:Mine", {"mode": "c"}, "strategy.params.mode: must be one of 'a', 'b'"),
    ("{file}:Mine", {"symbols": [1]}, "strategy.params.symbols"),
    ("{file}:Mine", {"lookback": 0}, "raised ValueError: lookback must be >= 1"),
])
def test_each_mistake_is_one_message_naming_it(user_file: Path, spec: str, params: dict, message: str) -> None:
    spec = spec.format(dir=user_file.parent, file=user_file)
    with pytest.raises(StrategyError, match=message):
        load_strategy(StrategySettings(class_name=spec, params=params))


def test_import_error_in_the_file_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_thing_abc\n")
    with pytest.raises(StrategyError, match=r"broken.py failed to import: ModuleNotFoundError"):
        load_strategy(StrategySettings(class_name=f"{broken}:X"))


def test_old_keys_next_to_class_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"strategy.fast: with strategy.class, parameters go in \[strategy.params\]"):
        parse_settings({"strategy": {"class": "sma", "fast": 3}})
    with pytest.raises(ConfigError, match="strategy.params: must be a table"):
        parse_settings({"strategy": {"class": "sma", "params": 3}})


def test_cli_backtest_and_run_refuse_a_bad_strategy_before_starting(tmp_path: Path, user_file: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'[strategy]\nclass = "{user_file}:Mine"\n[strategy.params]\nlookbak = 3\n')
    for command in (("backtest", "--replay", str(DATA / "sma_parity.csv")), ("run",)):
        var = tmp_path / f"var-{command[0]}"
        result = steadyhand(*command, "--config", str(config), data_dir=var)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "strategy.params.lookbak: unknown parameter of Mine" in result.stderr
        assert not var.exists(), "nothing may be started or created"
    result = steadyhand("run", "--strategy", f"{user_file}:NotOne", data_dir=tmp_path / "var-flag")
    assert result.returncode == 2 and "not a subclass of steadyhand.Strategy" in result.stderr
    assert not (tmp_path / "var-flag").exists()


def test_cli_backtest_with_a_strategy_flag_and_the_example(tmp_path: Path) -> None:
    example = REPO / "examples" / "my_strategy.py"
    result = steadyhand("backtest", "--replay", str(DATA / "sma_parity.csv"), "--strategy", f"{example}:Momentum",
                        "--json", "--check-lookahead", "--lookahead-cutoffs", "40", data_dir=tmp_path / "var")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["strategy"] == "mom" and report["trades"]
    assert all(t["intent_id"].startswith("mom-") for t in report["trades"])
    assert report["lookahead"]["changed"] == [] and report["lookahead"]["cutoffs"] == 40


def test_cli_lists_the_shipped_strategies(tmp_path: Path) -> None:
    result = steadyhand("strategies", "--json", data_dir=tmp_path / "var")
    assert result.returncode == 0, result.stderr
    entries = {e["name"]: e for e in json.loads(result.stdout)["strategies"]}
    assert set(entries) == {"sma", "bollinger", "breakout", "external"}
    assert {p["name"]: p["default"] for p in entries["sma"]["params"]} == {"fast": 5, "slow": 20, "qty": 10,
                                                                         "allow_short": False}
    human = steadyhand("strategies", data_dir=tmp_path / "var")
    assert "bollinger" in human.stdout and "default 2.0" in human.stdout
