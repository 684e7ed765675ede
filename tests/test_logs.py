"""JSON-lines logging: the line format, the direct path of EventLog.event, rotation by size."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from steadyhand.runtime.logs import EventLog, JsonLinesFileHandler, module_logger, read_events, setup_actor_logging


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """setup_actor_logging configures the process-wide ``steadyhand`` logger: undo it afterwards."""
    root = logging.getLogger("steadyhand")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    root.propagate = saved[2]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class _Keep(logging.Filter):
    """A filter that keeps everything: its presence alone sends EventLog.event the long way."""

    def filter(self, record: logging.LogRecord) -> bool:
        return True


def test_event_line_is_the_same_with_and_without_logging_records(tmp_path: Path, clean_logging: None) -> None:
    log = setup_actor_logging("oms", tmp_path)
    fields = {"client_order_id": "sma-A-20261120T1431Z-B0", "qty": 10, "price": 1.5, "when": Path("x"),
              "message": "fields may name a key message", "note": "caf\u00e9"}
    log.event("order_submitted", **fields)  # direct path
    log.logger.addFilter(_Keep())
    try:
        log.event("order_submitted", **fields)  # logging's LogRecord path
    finally:
        log.logger.filters.clear()
    log.event("started")
    log.event("poison", level="warning", ts="overridden by a field")
    log.event("hidden", level="debug")  # below INFO: nothing
    direct, via_logging, bare, override = lines(tmp_path / "oms.jsonl")
    assert list(direct) == ["ts", "actor", "level", "event", *fields]
    assert {k: v for k, v in direct.items() if k != "ts"} == {k: v for k, v in via_logging.items() if k != "ts"}
    assert direct["actor"] == "oms" and direct["level"] == "info" and direct["when"] == "x"
    assert direct["note"] == "caf\u00e9"
    assert bare == {"ts": bare["ts"], "actor": "oms", "level": "info", "event": "started"}
    assert override["ts"] == "overridden by a field" and override["level"] == "warning"
    assert "+00:00" in direct["ts"]  # UTC ISO time


def test_messages_and_tracebacks_go_through_logging(tmp_path: Path, clean_logging: None) -> None:
    log = setup_actor_logging("risk", tmp_path)
    module_logger("steadyhand.brokers.alpaca").warning("retry %d of %d", 2, 5)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.event("crashed", level="error", exc_info=True, error="boom")
    warning, crashed = lines(tmp_path / "risk.jsonl")
    assert (warning["event"], warning["message"], warning["level"]) == ("retry 2 of 5", "retry 2 of 5", "warning")
    assert crashed["error"] == "boom" and "RuntimeError: boom" in crashed["traceback"]
    assert [e["event"] for e in read_events(tmp_path)] == ["retry 2 of 5", "crashed"]


def test_rotation_by_size_keeps_backups_and_every_line_whole(tmp_path: Path, clean_logging: None) -> None:
    max_bytes, backups = 4_000, 3
    log = setup_actor_logging("oms", tmp_path, max_bytes=max_bytes, backups=backups)
    n = 400  # about 30 files' worth: rotates many times, older files are dropped
    for seq in range(n):
        log.event("fill", seq=seq, pad="x" * (seq % 37))  # lines of varying length
    base = tmp_path / "oms.jsonl"
    files = [Path(f"{base}.{i}") for i in range(backups, 0, -1)] + [base]  # oldest first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)
    seqs = []
    for path in files:
        assert 0 < path.stat().st_size < max_bytes
        assert path.read_bytes().endswith(b"\n")
        seqs += [entry["seq"] for entry in lines(path)]  # json.loads fails on a split line
    assert seqs == list(range(seqs[0], n))  # nothing lost or repeated across the rotations
    assert seqs[0] > 0  # the oldest lines were rotated away
    assert (tmp_path / "oms.jsonl.1").stat().st_size > max_bytes - 200  # rotated near max_bytes, not early


def test_size_is_taken_from_the_existing_file_on_open(tmp_path: Path, clean_logging: None) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_text('{"event": "old"}\n' * 200)  # 3,400 bytes from an earlier run
    log = setup_actor_logging("feed", tmp_path, max_bytes=3_500, backups=2)
    log.event("new", pad="y" * 200)
    assert lines(tmp_path / "feed.jsonl.1")[-1] == {"event": "old"}
    assert [e["event"] for e in lines(path)] == ["new"]


def test_handler_reopens_after_close_and_counts_from_the_file(tmp_path: Path) -> None:
    handler = JsonLinesFileHandler(tmp_path / "x.jsonl", max_bytes=100, backups=1)
    try:
        handler.write_line('{"n": 1}')
        handler.close()
        handler.write_line('{"n": 2}')  # reopened, as FileHandler does after close()
        handler.write_line("z" * 95)  # 9 + 9 + 96 >= 100: goes into a fresh file
    finally:
        handler.close()
    assert (tmp_path / "x.jsonl.1").read_text() == '{"n": 1}\n{"n": 2}\n'
    assert (tmp_path / "x.jsonl").read_text() == "z" * 95 + "\n"


def test_no_rotation_without_backups(tmp_path: Path, clean_logging: None) -> None:
    log = setup_actor_logging("alerter", tmp_path, max_bytes=500, backups=0)
    for seq in range(50):
        log.event("alert", seq=seq)
    assert [p.name for p in tmp_path.iterdir()] == ["alerter.jsonl"]
    assert [e["seq"] for e in lines(tmp_path / "alerter.jsonl")] == list(range(50))


def test_lines_survive_sigkill(tmp_path: Path) -> None:
    # Every event reaches the OS before event() returns: nothing is left in a process buffer.
    script = (
        "import os, signal, sys\n"
        "from steadyhand.runtime.logs import setup_actor_logging\n"
        "log = setup_actor_logging('oms', sys.argv[1], max_bytes=20_000, backups=5)\n"
        "for seq in range(500):\n"
        "    log.event('order_submitted', seq=seq)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    seqs = sorted(e["seq"] for path in tmp_path.glob("oms.jsonl*") for e in lines(path))
    assert seqs == list(range(500))
    assert os.path.exists(tmp_path / "oms.jsonl.1")  # and it rotated on the way


def test_event_log_falls_back_when_the_setup_changes(tmp_path: Path, clean_logging: None) -> None:
    log = setup_actor_logging("portfolio", tmp_path)
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    extra = Capture()
    logging.getLogger("steadyhand").addHandler(extra)  # a second handler must see the event too
    try:
        log.event("equity", value=1.0)
    finally:
        logging.getLogger("steadyhand").removeHandler(extra)
    assert [r.event for r in captured] == ["equity"]  # type: ignore[attr-defined]
    assert [e["event"] for e in lines(tmp_path / "portfolio.jsonl")] == ["equity"]
    assert isinstance(log, EventLog)
