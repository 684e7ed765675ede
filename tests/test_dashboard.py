"""The dashboard without a browser: token rules, the stream's sources and fan-out, the view model,
/metrics, and a running bot's dashboard over HTTP and websocket (issue 14 §2, §3, §5)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import websockets
from harness import poll
from steadyhand.dashboard import access
from steadyhand.dashboard.stream import STAGES, Hub, LogTailer, frame_of_event
from steadyhand.dashboard.views import slippage_bps
from steadyhand.runtime.logs import setup_actor_logging

# ×90: an early close (3.5 h) stays open 140 s of wall time, longer than this test takes when busy.
FAST = """
[sim]
speed = 90.0
[strategy]
fast = 2
slow = 4
"""


# --- pure parts ---------------------------------------------------------------------------------


def test_token_file_is_0600_stable_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    token = access.load_token(tmp_path)
    path = tmp_path / access.TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert access.load_token(tmp_path) == token and len(token) >= 32
    os.chmod(path, 0o644)
    with pytest.raises(access.TokenError, match="readable by others"):
        access.load_token(tmp_path)


def test_token_is_taken_from_query_bearer_or_cookie_and_compared_exactly() -> None:
    assert access.presented({"token": "a"}, {}, {}) == "a"
    assert access.presented({}, {"authorization": "Bearer b"}, {}) == "b"
    assert access.presented({}, {}, {access.COOKIE: "c"}) == "c"
    assert access.presented({}, {"authorization": "Basic x"}, {}) == ""
    assert access.valid("secret", "secret")
    assert not access.valid("secret", "") and not access.valid("secret", "secre") and not access.valid("secret", "x")


def test_log_events_map_to_the_issues_stages() -> None:
    run = "r1"
    cases = {
        "signal.emitted": {"event": "signal", "symbol": "AAPL", "side": "buy", "qty": 10, "intent_id": "i"},
        "risk.denied": {"event": "risk_decision", "approved": False, "reason": "max_open_orders", "symbol": "A"},
        "order.placed": {"event": "order_submitted", "client_order_id": "c", "bar_to_ack_ms": 3.5},
        "order.filled": {"event": "fill", "fill_id": "f", "price": "10.5", "qty": 3},
        "order.canceled": {"event": "order_status", "new": "canceled", "client_order_id": "c"},
        "risk.halted": {"event": "trading_state", "state": "halted", "reason": "operator"},
        "actor.restarted": {"event": "actor_restarted", "actor_name": "oms", "detail": "restart #1"},
    }
    for stage, event in cases.items():
        got = frame_of_event({"ts": "2026-11-20T15:00:00+00:00", **event}, run)
        assert got is not None and got["stage"] == stage, stage
        assert {"run_id", "stage", "message", "timestamp"} <= set(got) and got["run_id"] == run
    assert frame_of_event({"event": "risk_decision", "approved": True}, run) is None
    assert frame_of_event({"event": "order_status", "new": "filled"}, run) is None
    assert set(STAGES) == {"bar.received", "signal.emitted", "risk.denied", "order.placed", "order.filled",
                           "order.canceled", "equity.update", "risk.halted", "actor.restarted", "alert.raised"}


def test_log_tailer_follows_across_a_rotation_without_losing_or_repeating_a_line(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    log = setup_actor_logging("oms", logs, max_bytes=2_000, backups=3)
    tailer = LogTailer(logs)
    assert tailer.poll() == []
    seen: list[int] = []
    for i in range(200):  # ~100 bytes a line: rotates every ~20 lines, polled every 7
        log.event("fill", n=i)
        if i % 7 == 6:
            seen += [e["n"] for e in tailer.poll()]
    seen += [e["n"] for e in tailer.poll()]
    assert (logs / "oms.jsonl.1").exists()  # it did rotate
    assert seen == list(range(200))
    tailer.close()


def test_log_tailer_skips_a_torn_line_and_waits_for_a_partial_one(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "risk.jsonl"
    path.write_text('{"event": "a"}\n{"event": "tor\n{"event": "b"')
    tailer = LogTailer(logs)
    assert [e["event"] for e in tailer.poll()] == ["a"]
    with path.open("a") as f:
        f.write("}\n")
    assert [e["event"] for e in tailer.poll()] == ["b"]


def test_hub_gives_late_clients_the_backlog_and_drops_a_slow_one_without_waiting() -> None:
    async def scenario() -> None:
        dropped: list[Any] = []
        hub = Hub(backlog=3, client_queue=5, on_drop=dropped.append)
        for i in range(10):
            hub.publish({"n": i})
        late = hub.subscribe()
        assert [json.loads(late.get_nowait())["n"] for _ in range(3)] == [7, 8, 9]
        fast, slow = hub.subscribe(), hub.subscribe()
        for i in range(10, 30):
            hub.publish({"n": i})
            while not fast.empty():
                fast.get_nowait()  # a client that keeps up
        assert slow not in hub.clients and late not in hub.clients  # neither read on: both dropped
        assert {id(q) for q in dropped} == {id(late), id(slow)} and hub.dropped == 2
        assert slow.get_nowait() is None  # its sender closes the socket
        assert fast in hub.clients

    asyncio.run(scenario())


def test_slippage_is_signed_against_the_reference_and_na_without_one() -> None:
    assert slippage_bps("buy", "100.10", "100") == 10.0
    assert slippage_bps("sell", "99.90", "100") == 10.0
    assert slippage_bps("sell", "100.10", "100") == -10.0
    assert slippage_bps("buy", "100", None) == "n/a"


# --- a running bot's dashboard ------------------------------------------------------------------


def _get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def _dashboard(bot: Any) -> tuple[str, str]:
    url = poll(lambda: bot.status().get("dashboard_url"), timeout=30, what="dashboard_url in status --json")
    base, _, token = url.partition("/?token=")
    assert base.startswith("http://127.0.0.1:") and token
    return base, token


def _stream_frames(base: str, token: str, want: int, stages: set[str], timeout: float = 30) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        async with websockets.connect(base.replace("http://", "ws://") + "/stream",
                                      additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            while len(frames) < want or not stages <= {f["stage"] for f in frames}:
                frames.append(json.loads(await ws.recv()))
        return frames

    return asyncio.run(asyncio.wait_for(read(), timeout))


def test_running_dashboard_serves_only_with_the_token_streams_and_takes_controls(make_bot: Any) -> None:
    bot = make_bot(FAST).start()
    base, token = _dashboard(bot)
    assert any(line.strip() == f"dashboard: {base}/?token={token}" for line in bot.output)  # printed at start
    info = Path(bot.data_dir) / "dashboard.token"
    assert stat.S_IMODE(info.stat().st_mode) == 0o600 and info.read_text().strip() == token
    bearer = {"Authorization": f"Bearer {token}"}
    for path in ("/", "/api/state", "/metrics", "/static/plotly.min.js"):
        assert _get(base + path)[0] == 401, path
        assert _get(base + path + "?token=wrong")[0] == 401, path
        assert _get(base + path, {"Authorization": "Bearer wrong"})[0] == 401, path
    code, body, headers = _get(f"{base}/?token={token}")
    assert code == 200 and b"equity-chart" in body
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
    assert _get(base + "/api/state", {"Cookie": cookie})[0] == 200  # the page's own requests
    code, js, _ = _get(base + "/static/plotly.min.js", bearer)
    assert code == 200 and len(js) > 1_000_000  # the bundled plotly.js, from the installed package

    with pytest.raises(websockets.InvalidStatus) as denied:
        asyncio.run(websockets.connect(base.replace("http://", "ws://") + "/stream").__aenter__())
    assert denied.value.response.status_code == 401

    frames = _stream_frames(base, token, 5, {"order.filled", "equity.update"}, timeout=60)
    for f in frames:
        assert {"run_id", "stage", "message", "timestamp"} <= set(f) and f["stage"] in STAGES
    connected_at = datetime.now(UTC).isoformat()
    late = _stream_frames(base, token, 3, set())  # a late client starts with the backlog: frames from before
    assert late[0]["timestamp"] < connected_at

    state = json.loads(_get(base + "/api/state", bearer)[1])
    assert list(state)[:11] == ["alive", "trading", "actors", "equity", "positions", "open_orders", "fills",
                                "risk_limits", "alerts", "log_tail", "reconciliation"]
    assert state["fills"] and {"client_order_id", "price", "slippage_bps"} <= set(state["fills"][0])
    assert "dashboard" in state["actors"] and state["equity"]["curve"]

    metrics = _get(base + "/metrics", bearer)[1].decode()
    for name in ("steadyhand_orders{", "steadyhand_fills_total", "steadyhand_rejections_total", "steadyhand_equity ",
                 "steadyhand_realized_pnl", "steadyhand_unrealized_pnl", "steadyhand_actor_restarts_total{",
                 "steadyhand_heartbeat_age_seconds{", "steadyhand_feed_age_seconds", "steadyhand_broker_circuit_open",
                 "steadyhand_bar_to_ack_seconds_bucket"):
        assert name in metrics, name
    assert 'steadyhand_bar_to_ack_seconds_count 0.0' not in metrics  # fed by the stream's order.placed

    def post(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        code, raw, _ = _get(base + "/api/command", {**bearer, "Content-Type": "application/json"},
                            json.dumps(body).encode())
        return code, json.loads(raw)

    assert post({"name": "halt"})[0] == 400  # halt needs its confirmation
    assert post({"name": "shutdown"})[0] == 400  # not a dashboard control
    code, reply = post({"name": "pause"})
    assert code == 200 and reply["ok"] and reply["result"]["trading_state"] == "reducing"
    assert bot.status()["trading_state"] == "reducing"
    code, reply = post({"name": "resume"})
    assert code == 200 and bot.status()["trading_state"] == "active"
    journal = bot.cli("status", "--json")  # the commands are in the operator journal, as the CLI's
    assert journal.returncode == 0
    from steadyhand.state import store

    db = store.open_readonly(bot.data_dir)
    names = [r[0] for r in db.execute("SELECT name FROM operator_commands WHERE status = 'ok' ORDER BY id")]
    db.close()
    assert names[-2:] == ["pause", "resume"]

    # a crashed dashboard is restarted; trading is not touched
    old = bot.status()["actors"]["dashboard"]["pid"]
    fills_before = bot.status()["fills"]
    os.kill(old, signal.SIGKILL)
    poll(lambda: (a := bot.status()["actors"]["dashboard"])["alive"] and a["pid"] != old, timeout=30,
         what="the dashboard restarted")
    status = poll(lambda: (s := bot.status())["fills"] > fills_before and s, timeout=40, what="fills go on")
    assert status["trading_state"] == "active"
    base2, token2 = _dashboard(bot)
    assert token2 == token  # the same token file: the operator's bookmark still works
    poll(lambda: _get(base2 + "/api/state", bearer)[0] == 200, timeout=15, what="the restarted dashboard answers")
    bot.stop()
    assert not (Path(bot.data_dir) / "dashboard.json").exists()


def test_dashboard_disabled_runs_no_dashboard(make_bot: Any) -> None:
    bot = make_bot(FAST + "[dashboard]\nenabled = false\n").start()
    status = bot.status()
    assert "dashboard" not in status["actors"] and status["dashboard_url"] is None
    assert status["running"] and len(status["actors"]) == 7
    bot.stop()
