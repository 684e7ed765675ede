"""Bad bar files for `backtest` and `run --replay`: one clear message naming the file (and line),
exit 2, nothing started; `--replay` symbols taken from the file or refused when they conflict."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from harness import steadyhand
from steadyhand.config import parse_settings
from steadyhand.data.bar_files import BarFileError, with_replay_symbols

GOOD = ("ts,symbol,open,high,low,close,volume\n"
        "2026-11-18T14:30:00Z,AAPL,1,1,1,1,10\n2026-11-18T14:30:00Z,MSFT,1,1,1,1,10\n")


def bad_files(tmp_path: Path) -> list[tuple[Path, str]]:
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(GOOD.encode() + "2026-11-18T14:31:00Z,CAF\xc9,1,1,1,1,10\n".encode("latin-1"))
    columns = tmp_path / "columns.csv"
    columns.write_text("ts,symbol,open,close\n2026-11-18T14:30:00Z,AAPL,1,1\n")
    return [(tmp_path / "missing.csv", "missing.csv: no such file"),
            (latin, r"latin1.csv, line 4: not UTF-8 text \(byte 0xc9"),
            (columns, "columns.csv, line 1: missing column.s. high, low, volume")]


@pytest.mark.parametrize("command", ["backtest", "run"])
def test_bad_bar_files_exit_2_naming_the_file(tmp_path: Path, command: str) -> None:
    for path, message in bad_files(tmp_path):
        var = tmp_path / f"var-{path.stem}"
        result = steadyhand(command, "--replay", str(path), data_dir=var)
        assert result.returncode == 2, (path, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
        assert re.search(message, result.stderr), result.stderr
        assert not var.exists(), "nothing may be started or created"


def test_replay_symbols_are_taken_when_none_are_configured(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(GOOD)
    settings = parse_settings({"sim": {"replay": str(path)}})
    assert with_replay_symbols(settings, None).symbols == ("AAPL", "MSFT")
    config = tmp_path / "c.toml"
    config.write_text('symbols = ["AAPL", "MSFT", "SPY"]\n')
    configured = parse_settings({"symbols": ["AAPL", "MSFT", "SPY"], "sim": {"replay": str(path)}})
    assert with_replay_symbols(configured, str(config)).symbols == ("AAPL", "MSFT", "SPY")  # a superset is fine


def test_replay_symbols_that_conflict_are_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(GOOD)
    config = tmp_path / "c.toml"
    config.write_text('symbols = ["AAPL", "SPY"]\n')
    settings = parse_settings({"symbols": ["AAPL", "SPY"], "sim": {"replay": str(path)}})
    with pytest.raises(BarFileError, match=r"symbol\(s\) MSFT are not in symbols \(AAPL, SPY\)"):
        with_replay_symbols(settings, str(config))
    result = steadyhand("run", "--config", str(config), "--replay", str(path), data_dir=tmp_path / "var")
    assert result.returncode == 2 and "MSFT are not in symbols" in result.stderr
    assert not (tmp_path / "var").exists()
