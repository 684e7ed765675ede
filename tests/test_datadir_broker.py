"""A data dir remembers which broker its journal was written with (issue 12): ``run`` and ``verify``
with a configuration naming another broker refuse with a clear message (exit 2) instead of comparing
the journal with the wrong book."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import steadyhand
from steadyhand.brokers import datadir
from steadyhand.config import ConfigError, Settings


def test_remember_once_and_check(tmp_path: Path) -> None:
    assert datadir.recorded(tmp_path) is None
    datadir.check(tmp_path, Settings())  # a new dir: anything goes
    datadir.remember(tmp_path, Settings(broker="alpaca"))
    datadir.remember(tmp_path, Settings(broker="sim"))  # written once: the first broker stays
    assert datadir.recorded(tmp_path) == "alpaca"
    datadir.check(tmp_path, Settings(broker="alpaca"))
    with pytest.raises(ConfigError, match="traded with broker 'alpaca'.*names 'sim'"):
        datadir.check(tmp_path, Settings())
    (tmp_path / datadir.FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        datadir.recorded(tmp_path)


def test_verify_and_run_refuse_another_broker_than_the_dir_traded_with(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    (data_dir / datadir.FILE).write_text(json.dumps({"broker": "alpaca"}))
    for command in (("verify", "--json"), ("run",)):
        result = steadyhand(*command, data_dir=data_dir, timeout=60)  # no --config: the sim broker
        assert result.returncode == 2, result.stdout + result.stderr
        assert "traded with broker 'alpaca'" in result.stderr and "--config" in result.stderr
    assert not (data_dir / "steadyhand.db").exists()  # nothing was started
