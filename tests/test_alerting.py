"""Alerting: routing, dedup, the durable outbox and real apprise delivery on 127.0.0.1.

No mocks of apprise: a local SMTP server (aiosmtpd) and a local HTTP receiver take the
notifications; "unreachable" endpoints are a closed port and a listener that never answers.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from steadyhand.alerts.delivery import Notifier, deliver_pending
from steadyhand.alerts.outbox import AlertOutbox, retry_delay_s
from steadyhand.alerts.routes import ALERT_URLS_ENV, Route, alert_urls, mask_url, split_urls
from steadyhand.config import AlertSettings
from steadyhand.domain import Alert, Severity
from steadyhand.state.store import open_store

# Plain SMTP with AUTH on localhost is deliberate here.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

T0 = datetime(2025, 3, 3, 14, 30, tzinfo=UTC)
SMTP_USER, SMTP_PASSWORD = "bot", "hunter2-s3cret"
TIMEOUT_S = 1.0

# ---------------------------------------------------------------------------------------------
# Local servers
# ---------------------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
        length = int(self.headers.get("Content-Length", 0))
        payload = json.loads(self.rfile.read(length) or b"{}")
        self.server.received.put((self.path, payload))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:  # keep pytest output quiet
        pass


class HttpReceiver:
    """A JSON webhook receiver in a thread; ``received`` is a queue of (path, payload)."""

    def __init__(self, port: int = 0) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _Receiver)
        self.server.received = queue.Queue()  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        # A short poll interval only makes shutdown() quick; requests are served at once anyway.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def received(self) -> queue.Queue[tuple[str, dict[str, Any]]]:
        return self.server.received  # type: ignore[attr-defined]

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        items = []
        while not self.received.empty():
            items.append(self.received.get_nowait())
        return items

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    yield server
    server.close()


class _SmtpHandler:
    def __init__(self) -> None:
        self.messages: queue.Queue[email.message.EmailMessage] = queue.Queue()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.put(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok)


class _PortZeroController(Controller):
    """aiosmtpd's Controller on port 0: learn the bound port before its self-test connects."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtp() -> Iterator[tuple[_SmtpHandler, int]]:
    handler = _SmtpHandler()
    # Plain SMTP with AUTH (no TLS on localhost), so the URL's user:password is really used.
    controller = _PortZeroController(
        handler,
        hostname="127.0.0.1",
        port=0,
        authenticator=_authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    yield handler, controller.port
    controller.stop()


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listener that accepts connections (kernel backlog) but never reads or answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


class TricklingServer:
    """Answers every connection with ``prefix`` and then one byte every 0.2 s, never finishing.

    Each read succeeds, so per-socket read timeouts never fire: only a wall-clock deadline
    (apprise's ``timeout``/``service_timeout``) bounds a client talking to this.
    """

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(self.prefix)
                while not self.stop.wait(0.2):  # the pace of a pathological server, not a sync
                    conn.sendall(b"a")
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def outbox(tmp_path: Path) -> AlertOutbox:
    return AlertOutbox(open_store(tmp_path))


def json_url(port: int, path: str = "/hook") -> str:
    return f"json://127.0.0.1:{port}{path}"


# ---------------------------------------------------------------------------------------------
# alert_urls
# ---------------------------------------------------------------------------------------------


def test_alert_urls_severities_prefixes_and_env() -> None:
    settings = AlertSettings(
        urls=(
            "json://127.0.0.1:9/default",
            "critical:json://127.0.0.1:9/crit",
            "all:json://127.0.0.1:9/everything",
            "WARNING:json://127.0.0.1:9/warn",
            "slack://T000/B000/XXXX",  # parse only, never delivered to
        ),
        min_severity="warning",
    )
    env = {
        ALERT_URLS_ENV: "json://127.0.0.1:9/env1, mailto://u:p@127.0.0.1:25?from=bot@example.com&to=a@example.com,b@example.com"
        "  info:json://127.0.0.1:9/env-info"
    }
    routes = {r.url: r.min_severity for r in alert_urls(settings, env)}
    assert routes == {
        "json://127.0.0.1:9/default": Severity.WARNING,
        "json://127.0.0.1:9/crit": Severity.CRITICAL,
        "json://127.0.0.1:9/everything": Severity.INFO,
        "json://127.0.0.1:9/warn": Severity.WARNING,
        "slack://T000/B000/XXXX": Severity.WARNING,
        "json://127.0.0.1:9/env1": Severity.HIGH,
        # the comma inside the query did not split the URL
        "mailto://u:p@127.0.0.1:25?from=bot@example.com&to=a@example.com,b@example.com": Severity.HIGH,
        "json://127.0.0.1:9/env-info": Severity.INFO,
    }
    assert alert_urls(AlertSettings(), {}) == []


def test_alert_urls_same_url_twice_is_one_route_with_lower_threshold() -> None:
    settings = AlertSettings(urls=("critical:json://127.0.0.1:9/x",), min_severity="high")
    routes = alert_urls(settings, {ALERT_URLS_ENV: "warning:json://127.0.0.1:9/x"})
    assert routes == [Route("json://127.0.0.1:9/x", Severity.WARNING)]


def test_split_urls() -> None:
    assert split_urls("") == []
    assert split_urls(" a://x,b://y  c://z ;high:d://w ") == ["a://x", "b://y", "c://z", "high:d://w"]


@pytest.mark.parametrize(
    "bad",
    [
        "nosuchscheme://admin:hunter2-s3cret@mail.example.com/x",
        "json://",
        "mailto://",
        "critical:tgram://hunter2-s3cret",  # telegram needs a bot token AND a chat
    ],
)
def test_alert_urls_rejects_unusable_url_without_leaking_secrets(bad: str) -> None:
    with pytest.raises(ValueError, match="unusable apprise URL") as excinfo:
        alert_urls(AlertSettings(urls=(bad,)), {})
    assert "s3cret" not in str(excinfo.value)
    assert "admin" not in str(excinfo.value)
    with pytest.raises(ValueError, match=ALERT_URLS_ENV):
        alert_urls(AlertSettings(), {ALERT_URLS_ENV: bad})


def test_mask_url_and_route_repr_hide_secrets() -> None:
    assert mask_url("mailtos://me:hunter2-s3cret@smtp.example.com:587?to=x@y.com") == (
        "mailtos://smtp.example.com:587"
    )
    assert mask_url("slack://T000A/B000B/XXXXSECRET") == "slack://***"
    assert mask_url("tgram://123456:ABCsecret/987") == "tgram://***"
    assert mask_url("json://127.0.0.1:8080/hook?token=s3cret") == "json://127.0.0.1:8080"
    route = Route("mailto://me:hunter2-s3cret@smtp.example.com", Severity.HIGH)
    assert "s3cret" not in repr(route) and "smtp.example.com" in repr(route)


# ---------------------------------------------------------------------------------------------
# Real delivery
# ---------------------------------------------------------------------------------------------


def test_email_arrives_via_local_smtp(
    smtp: tuple[_SmtpHandler, int], outbox: AlertOutbox, caplog: pytest.LogCaptureFixture
) -> None:
    handler, port = smtp
    url = (
        f"mailto://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{port}"
        "?smtp=127.0.0.1&mode=insecure&from=bot@example.com&to=ops@example.com"
    )
    caplog.set_level(logging.DEBUG)
    notifier = Notifier(alert_urls(AlertSettings(urls=(url,)), {}), timeout_s=5.0)
    alert_id = outbox.record(
        Alert("restart:feed", Severity.CRITICAL, "Feed restarted 5 times", "escalating", source="supervisor"),
        cooldown_s=300,
        now=T0,
    )
    assert deliver_pending(outbox, notifier, T0) == 1

    msg = handler.messages.get(timeout=5)
    assert "Feed restarted 5 times" in msg["Subject"]
    assert "CRITICAL" in msg["Subject"]
    assert msg["To"] == "ops@example.com"
    assert "escalating" in msg.get_body(("plain",)).get_content()
    row = outbox.get(alert_id)
    assert row is not None and row["delivered_at"] is not None and row["attempts"] == 0
    # Nothing logged anywhere (ours or apprise's, DEBUG included) shows the SMTP password.
    assert SMTP_PASSWORD not in caplog.text


def test_json_webhook_payload(receiver: HttpReceiver, outbox: AlertOutbox) -> None:
    notifier = Notifier([Route(json_url(receiver.port), Severity.INFO)], timeout_s=5.0)
    cases = [
        (Severity.CRITICAL, "failure"),
        (Severity.HIGH, "failure"),
        (Severity.WARNING, "warning"),
        (Severity.INFO, "info"),
    ]
    for n, (severity, _) in enumerate(cases):
        outbox.record(Alert(f"k{n}", severity, f"title {n}", f"body {n}"), 300, T0)
    assert deliver_pending(outbox, notifier, T0) == len(cases)

    received = receiver.drain()
    assert [path for path, _ in received] == ["/hook"] * len(cases)
    for n, ((severity, notify_type), (_, payload)) in enumerate(zip(cases, received, strict=True)):
        assert payload["title"] == f"[{severity.name}] title {n}"
        assert payload["message"].startswith(f"body {n}")
        assert payload["type"] == notify_type
    assert outbox.pending(T0, 86400) == []


def test_severity_routing(receiver: HttpReceiver, outbox: AlertOutbox) -> None:
    settings = AlertSettings(
        urls=(f"critical:{json_url(receiver.port, '/crit')}", f"all:{json_url(receiver.port, '/all')}")
    )
    notifier = Notifier(alert_urls(settings, {}), timeout_s=5.0)

    outbox.record(Alert("dd", Severity.HIGH, "drawdown 4%"), 300, T0)
    assert deliver_pending(outbox, notifier, T0) == 1
    # deliver() waits for each HTTP response, so everything sent has been received by now.
    assert [(p, m["title"]) for p, m in receiver.drain()] == [("/all", "[HIGH] drawdown 4%")]

    outbox.record(Alert("halt", Severity.CRITICAL, "halted"), 300, T0)
    assert deliver_pending(outbox, notifier, T0) == 1
    assert sorted(p for p, _ in receiver.drain()) == ["/all", "/crit"]


def test_no_route_targeted_counts_as_delivered_to_the_log(
    receiver: HttpReceiver, outbox: AlertOutbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="steadyhand.alerts")
    notifier = Notifier([Route(json_url(receiver.port), Severity.HIGH)])
    alert_id = outbox.record(Alert("fresh", Severity.INFO, "feed fresh again"), 300, T0)
    assert deliver_pending(outbox, notifier, T0) == 1
    assert receiver.drain() == []
    assert outbox.get(alert_id)["delivered_at"] is not None  # type: ignore[index]
    [record] = [r for r in caplog.records if r.name == "steadyhand.alerts"]
    assert record.levelno == logging.INFO and record.getMessage() == "feed fresh again"


def test_log_levels_follow_severity(outbox: AlertOutbox, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="steadyhand.alerts")
    for n, severity in enumerate(Severity):
        outbox.record(Alert(f"k{n}", severity, f"t{n}"), 300, T0)
    outbox.record(Alert("k0", Severity.INFO, "t0"), 300, T0)  # a repeat: DEBUG only
    levels = [(r.levelno, getattr(r, "event", None)) for r in caplog.records if r.name == "steadyhand.alerts"]
    assert levels == [
        (logging.INFO, "alert"),
        (logging.WARNING, "alert"),
        (logging.ERROR, "alert"),
        (logging.CRITICAL, "alert"),
        (logging.DEBUG, "alert_suppressed"),
    ]


# ---------------------------------------------------------------------------------------------
# Dedup
# ---------------------------------------------------------------------------------------------


def test_dedup_within_cooldown_then_suppressed_count_in_next_message(
    receiver: HttpReceiver, outbox: AlertOutbox
) -> None:
    alert = Alert("feed:stale", Severity.HIGH, "Feed stale", "no bars for 90s")
    ids = [outbox.record(alert, 60, T0 + timedelta(seconds=i)) for i in range(10)]
    assert ids[0] is not None and ids[1:] == [None] * 9
    rows = list(outbox.db.query("SELECT * FROM alerts"))
    assert len(rows) == 1 and rows[0]["suppressed"] == 9

    later = T0 + timedelta(seconds=61)
    new_id = outbox.record(alert, 60, later)
    assert new_id is not None and new_id != ids[0]
    assert outbox.get(ids[0])["suppressed"] == 9  # type: ignore[index]

    notifier = Notifier([Route(json_url(receiver.port), Severity.HIGH)], timeout_s=5.0)
    assert deliver_pending(outbox, notifier, later) == 2
    first, second = (m["message"] for _, m in receiver.drain())
    assert "suppressed" not in first
    assert "no bars for 90s" in second and "(9 similar suppressed)" in second


def test_dedup_keys_are_independent_and_zero_cooldown_never_dedups(outbox: AlertOutbox) -> None:
    assert outbox.record(Alert("a", Severity.HIGH, "a"), 60, T0) is not None
    assert outbox.record(Alert("b", Severity.HIGH, "b"), 60, T0) is not None
    assert outbox.record(Alert("c", Severity.HIGH, "c"), 0, T0) is not None
    assert outbox.record(Alert("c", Severity.HIGH, "c"), 0, T0) is not None


# ---------------------------------------------------------------------------------------------
# Durability, retry, expiry
# ---------------------------------------------------------------------------------------------


def test_outbox_survives_restart_and_delivers_when_receiver_is_up(tmp_path: Path) -> None:
    port = closed_port()
    routes = [Route(json_url(port), Severity.HIGH)]
    outbox = AlertOutbox(open_store(tmp_path))
    alert_id = outbox.record(Alert("oms:reconcile", Severity.CRITICAL, "position mismatch", "AAPL"), 300, T0)

    assert deliver_pending(outbox, Notifier(routes, timeout_s=TIMEOUT_S), T0) == 0
    row = outbox.get(alert_id)
    assert row is not None and row["delivered_at"] is None and row["attempts"] == 1
    assert row["last_error"] and f"json://127.0.0.1:{port}" in row["last_error"]
    outbox.db.close()

    # "Restart": a new outbox and notifier on the same database file, receiver now up.
    server = HttpReceiver(port)
    try:
        outbox2 = AlertOutbox(open_store(tmp_path))
        assert [r["id"] for r in outbox2.pending(T0, 86400)] == [alert_id]
        assert deliver_pending(outbox2, Notifier(routes, timeout_s=5.0), T0 + timedelta(seconds=1)) == 1
        [(_, payload)] = server.drain()
        assert payload["title"] == "[CRITICAL] position mismatch"
        assert outbox2.pending(T0, 86400) == []
        assert deliver_pending(outbox2, Notifier(routes), T0 + timedelta(seconds=2)) == 0
        assert server.drain() == []  # delivered exactly once
    finally:
        server.close()


def test_backoff_between_failed_attempts(outbox: AlertOutbox) -> None:
    notifier = Notifier([Route(json_url(closed_port()), Severity.INFO)], timeout_s=TIMEOUT_S)
    alert_id = outbox.record(Alert("x", Severity.HIGH, "x"), 300, T0)

    def attempts() -> int:
        return outbox.get(alert_id)["attempts"]  # type: ignore[index]

    deliver_pending(outbox, notifier, T0)
    assert attempts() == 1
    deliver_pending(outbox, notifier, T0 + timedelta(seconds=0.5))  # within 1 s: not retried
    assert attempts() == 1
    deliver_pending(outbox, notifier, T0 + timedelta(seconds=1))
    assert attempts() == 2
    deliver_pending(outbox, notifier, T0 + timedelta(seconds=2.5))  # 2 s after the last try: wait
    assert attempts() == 2
    deliver_pending(outbox, notifier, T0 + timedelta(seconds=3))
    assert attempts() == 3
    assert [retry_delay_s(n) for n in range(0, 5)] == [0, 1, 2, 4, 8]
    assert retry_delay_s(50) == 300


def test_partial_failure_retries_only_the_failed_route(receiver: HttpReceiver, outbox: AlertOutbox) -> None:
    dead = closed_port()
    notifier = Notifier(
        [Route(json_url(receiver.port), Severity.INFO), Route(json_url(dead), Severity.INFO)],
        timeout_s=TIMEOUT_S,
    )
    alert_id = outbox.record(Alert("x", Severity.HIGH, "x"), 300, T0)
    assert deliver_pending(outbox, notifier, T0) == 0
    assert len(receiver.drain()) == 1
    # The dead route comes back (now served by a second receiver on its port).
    revived = HttpReceiver(dead)
    try:
        assert deliver_pending(outbox, notifier, T0 + timedelta(seconds=5)) == 1
        assert receiver.drain() == []  # not sent twice to the route that already had it
        assert len(revived.drain()) == 1
    finally:
        revived.close()
    assert outbox.get(alert_id)["delivered_at"] is not None  # type: ignore[index]


def test_expired_alerts_are_given_up(outbox: AlertOutbox) -> None:
    old = outbox.record(Alert("old", Severity.HIGH, "old"), 300, T0)
    new = outbox.record(Alert("new", Severity.HIGH, "new"), 300, T0 + timedelta(hours=2))
    now = T0 + timedelta(hours=2, minutes=30)
    assert [r["id"] for r in outbox.pending(now, 3600)] == [new]
    assert outbox.expire(now, 3600) == 1
    assert outbox.expire(now, 3600) == 0
    assert outbox.get(old)["last_error"].startswith("expired")  # type: ignore[index]
    assert outbox.get(old)["delivered_at"] is None  # type: ignore[index]
    # A longer max age later does not resurrect it.
    assert [r["id"] for r in outbox.pending(now, 86400)] == [new]


# ---------------------------------------------------------------------------------------------
# Time bounds: delivery must not hang
# ---------------------------------------------------------------------------------------------


def _timed_deliver(notifier: Notifier, severity: Severity = Severity.CRITICAL) -> tuple[bool, float]:
    row = {"id": 1, "key": "k", "severity": severity.name.lower(), "title": "t", "body": "b"}
    started = time.monotonic()
    ok = notifier.deliver(row)
    return ok, time.monotonic() - started


def test_closed_port_fails_fast() -> None:
    ok, elapsed = _timed_deliver(Notifier([Route(json_url(closed_port()), Severity.INFO)], TIMEOUT_S))
    assert not ok
    assert elapsed < TIMEOUT_S + 3


def test_silent_server_costs_at_most_about_the_timeout(silent_port: int) -> None:
    routes = [
        Route(json_url(silent_port), Severity.INFO),
        # SMTP waits for the server's greeting that never comes
        Route(
            f"mailto://u:p@127.0.0.1:{silent_port}?smtp=127.0.0.1&from=a@example.com&to=b@example.com",
            Severity.INFO,
        ),
    ]
    notifier = Notifier(routes, timeout_s=TIMEOUT_S)
    ok, elapsed = _timed_deliver(notifier)
    assert not ok
    # Both routes hang; they run in parallel and each is bounded by the timeout.
    assert elapsed < TIMEOUT_S + 3
    assert "json://127.0.0.1" in notifier.last_error and "mailto://127.0.0.1" in notifier.last_error
    assert "u:p" not in notifier.last_error


def test_trickling_servers_are_cut_off_at_the_deadline() -> None:
    http = TricklingServer(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    smtp = TricklingServer(b"220 ")
    try:
        routes = [
            Route(json_url(http.port), Severity.INFO),
            Route(
                f"mailto://127.0.0.1:{smtp.port}?smtp=127.0.0.1&from=a@example.com&to=b@example.com",
                Severity.INFO,
            ),
        ]
        notifier = Notifier(routes, timeout_s=TIMEOUT_S)
        ok, elapsed = _timed_deliver(notifier)
        assert not ok
        assert elapsed < TIMEOUT_S + 3
        assert notifier.last_error.count("timeout") == 2, notifier.last_error
    finally:
        http.close()
        smtp.close()
