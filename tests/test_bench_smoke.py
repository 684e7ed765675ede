"""The benchmark scripts work: the cheapest ones, at their smallest sizes, produce figures.

Nothing here checks speed (benchmarks never fail on speed); only that each figure has a value
and that no process of a benchmark's bot is left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness import REPO, start_args
from steadyhand.runtime import procs


def _bench(name: str, tmp_path: Path, *args: str, timeout: float = 120) -> dict:
    out = tmp_path / f"{name}.json"
    done = subprocess.run([sys.executable, "-m", f"bench.bench_{name}", "--tiny", "--json", str(out), *args,
                           *start_args()],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def _values(result: dict) -> dict[str, list[float]]:
    return {f["name"]: f["values"] for f in result["figures"]}


def test_replay_bench_produces_bars_per_second(tmp_path: Path) -> None:
    figures = _values(_bench("replay", tmp_path, "--skip", "backtrader,nautilus"))
    assert figures["replay_steadyhand_live_path"][0] > 0
    assert figures["replay_steadyhand_backtest_fn"][0] > 0
    assert figures["replay_steadyhand_lockstep"][0] > 0  # a real `run --lockstep`, side by side
    assert figures["lockstep_trades_equal_to_backtest"] == [100.0]


def test_recovery_bench_measures_a_real_crash_and_leaves_nothing(tmp_path: Path) -> None:
    before = {p.pid for p in procs.psutil.process_iter()}
    result = _bench("recovery", tmp_path)
    assert result["runs"][0]["outcome"] == "reconciled"
    assert _values(result)["crash_recovery_to_trading"][0] > 0
    leftovers = [p for p in procs.psutil.process_iter(["cmdline"]) if p.pid not in before
                 and "steadyhand-bench-recovery" in " ".join(p.info["cmdline"] or [])]
    assert not leftovers


def test_ibkr_bench_produces_ack_and_reconnect_figures(tmp_path: Path) -> None:
    values = _values(_bench("ibkr", tmp_path))
    assert values["submit_to_ack_p50_ms"] and values["submit_to_ack_p99_ms"]
    assert values["reconnect_20_open_s"]


def test_exchange_bench_measures_round_trips_and_leaves_nothing(tmp_path: Path) -> None:
    before = {p.pid for p in procs.psutil.process_iter()}
    result = _bench("exchange", tmp_path)
    figures = _values(result)
    assert figures["exchange_submit_rt_p50"][0] > 0 and figures["exchange_trade_update_new_p50"][0] > 0
    assert result["runs"][0]["listed"] == result["runs"][0]["orders"] + 1  # every order, and the probe
    leftovers = [p for p in procs.psutil.process_iter(["cmdline"]) if p.pid not in before
                 and "steadyhand-bench-exchange" in " ".join(p.info["cmdline"] or [])]
    assert not leftovers


def test_replace_bench_times_a_replace_on_each_broker(tmp_path: Path) -> None:
    figures = _values(_bench("replace", tmp_path))
    for venue in ("sim", "alpaca", "tws"):
        assert 0 < figures[f"replace_{venue}_p50_ms"][0] <= figures[f"replace_{venue}_p99_ms"][0]
