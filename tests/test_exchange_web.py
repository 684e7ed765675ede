"""The local exchange's web layer (Starlette on uvicorn) keeps what the hand-written server did at the
edges the alpaca-py conformance tests do not reach: error shapes of routes that do not exist, a 404
for an unknown stream path, the close code at shutdown, and Nagle off on every connection.

One server per module on 127.0.0.1 (port 0), in a thread; stopped and proven gone afterwards.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from alpaca_exchange import KEY, SECRET, admin, inject, module_exchange, start_exchange
from steadyhand.runtime import procs
from steadyhand.sim.server import ServerThread
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

AUTH = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    yield from module_exchange(tmp_path_factory, "web")


def _get(exchange: ServerThread, method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(method, exchange.server.urls["trading_url"] + path, timeout=5, **kw)


@pytest.mark.parametrize(("method", "path", "headers", "status", "message"), [
    ("GET", "/v2/assets", AUTH, 404, "endpoint not found"),
    ("GET", "/v2/assets", {}, 401, "request is not authorized"),  # keys first, as Alpaca
    ("PUT", "/v2/orders", AUTH, 405, "method PUT not allowed"),
    ("GET", "/v2/orders/", AUTH, 404, "endpoint not found"),  # no redirect to /v2/orders
    ("GET", "/v2/account/activities/fill", AUTH, 404, "endpoint not found"),  # kinds are upper case
    ("GET", "/_admin/nothing", {}, 404, "no such admin endpoint"),
    ("GET", "/_admin/faults", {}, 404, "no such admin endpoint"),
])
def test_missing_routes_answer_in_alpacas_error_shape(exchange: ServerThread, method: str, path: str,
                                                      headers: dict[str, str], status: int, message: str) -> None:
    reply = _get(exchange, method, path, headers=headers)
    assert reply.status_code == status
    assert reply.headers["content-type"] == "application/json; charset=utf-8"
    body = reply.json()
    assert body["message"] == message and isinstance(body["code"], int)


def test_bad_bodies_are_400_and_a_bad_fault_rule_a_500_that_keeps_serving(exchange: ServerThread) -> None:
    assert _get(exchange, "POST", "/v2/orders", headers=AUTH, data="{not json").status_code == 400
    assert _get(exchange, "POST", "/_admin/faults", json=["not", "an", "object"]).status_code == 400
    broken = _get(exchange, "POST", "/_admin/faults", json={"rules": [{"no_such_field": 1}]})
    assert broken.status_code == 500 and "no_such_field" in broken.json()["message"]
    assert _get(exchange, "GET", "/v2/clock", headers=AUTH).status_code == 200


def test_unknown_stream_path_is_a_404_and_logs_no_error(exchange: ServerThread,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(InvalidStatus) as denied:
        connect(f"ws://127.0.0.1:{exchange.server.port}/v2/nope", open_timeout=5)
    assert denied.value.response.status_code == 404
    # uvicorn logs (or would log) in the same loop step that wrote the 404, before the client has it.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_served_connections_have_nagle_off(exchange: ServerThread) -> None:
    # Without TCP_NODELAY every reply (headers, then body) waits ~40 ms for the client's delayed ACK.
    with requests.Session() as session:
        assert session.get(exchange.server.urls["trading_url"] + "/v2/clock", headers=AUTH, timeout=5).ok

        async def nodelay() -> list[int]:
            connections = exchange.server._uvicorn.server_state.connections  # type: ignore[union-attr]
            return [c.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    for c in connections]

        flags = exchange.run_coroutine(nodelay)
    assert flags and all(flags)


def test_stop_closes_streams_going_away_and_frees_the_port(tmp_path: Path) -> None:
    thread = start_exchange(tmp_path)
    port = thread.server.port
    try:
        with connect(thread.server.urls["trading_stream_url"], open_timeout=5) as ws:
            thread.stop()
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    finally:
        thread.stop()
    assert not procs.port_listening(port)


def test_streams_negotiate_no_compression(exchange: ServerThread) -> None:
    # alpaca-py's websockets client offers permessage-deflate; on loopback it would only cost CPU.
    with connect(exchange.server.urls["trading_stream_url"], open_timeout=5) as ws:
        assert ws.request is not None and "permessage-deflate" in ws.request.headers.get("Sec-WebSocket-Extensions", "")
        assert ws.response is not None and "Sec-WebSocket-Extensions" not in ws.response.headers


def test_a_fault_after_processing_leaves_a_failed_request_as_it_failed(exchange: ServerThread) -> None:
    order = {"symbol": "MSFT", "qty": 1, "side": "buy", "type": "limit", "limit_price": "1.00",
             "time_in_force": "day", "client_order_id": "web-after-dup"}
    assert _get(exchange, "POST", "/v2/orders", headers=AUTH, json=order).status_code == 200
    inject(exchange, method="POST", path="/v2/orders", status=503, after=True)
    duplicate = _get(exchange, "POST", "/v2/orders", headers=AUTH, json=order)
    assert duplicate.status_code == 422 and duplicate.json()["message"] == "client_order_id must be unique"
    assert admin(exchange, "GET", "status")["faults"] == []  # the rule was used up all the same
    landed = _get(exchange, "POST", "/v2/orders", headers=AUTH, json={**order, "client_order_id": "web-after-ok"})
    assert landed.status_code == 200  # no rule left
