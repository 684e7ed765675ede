"""Loopback admin of the TWS face (test and drill knobs), like the Alpaca face's ``/_admin``.

A minimal HTTP/1.1 server on 127.0.0.1 (its own port, written to ``tws.json`` as ``admin_port``),
JSON in and out, one request per connection, no authentication (loopback only):

- ``GET /_admin/status``: connections so far, live sessions, armed faults, the simulated now.
- ``POST /_admin/faults`` ``{"reject": 1, "reject_reason": "...", "commission_first": true,
  "exec_delay_s": 2.0, "silent_place": 1, "refuse_connections": true, "pacing": 3}``: arm knobs.
- ``POST /_admin/drop``: abort every API socket.
- ``POST /_admin/system`` ``{"code": 1100}`` (or 1101, 1102): a connectivity message to everyone.
- ``POST /_admin/restart``: a Gateway restart (drop everyone; ``nextValidId`` starts over).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steadyhand.sim.server.tws import TwsServer

_MAX_BODY = 64 * 1024


class TwsAdmin:
    def __init__(self, face: TwsServer, port: int = 0) -> None:
        self.face = face
        self.requested_port, self.port = port, 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.requested_port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, path, _ = head.split("\r\n", 1)[0].split(" ", 2)
            length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                           if line.lower().startswith("content-length:")), 0)
            body = json.loads(await reader.readexactly(min(length, _MAX_BODY)) or b"{}") if length else {}
            status, reply = await self._route(method, path, body if isinstance(body, dict) else {})
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            status, reply = 400, {"error": str(exc)}
        data = json.dumps(reply, default=str).encode()
        writer.write(f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: application/json"
                     f"\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()
        writer.close()

    async def _route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        face = self.face
        if (method, path) == ("GET", "/_admin/status"):
            return 200, {"connections": face.connections, "sessions": await face.session_count(),
                         "faults": dataclasses.asdict(face.faults), "now": face.clock.now().isoformat()}
        if (method, path) == ("POST", "/_admin/faults"):
            await face.arm(**body)
            return 200, {"faults": dataclasses.asdict(face.faults)}
        if (method, path) == ("POST", "/_admin/drop"):
            return 200, {"dropped": await face.drop_connections()}
        if (method, path) == ("POST", "/_admin/system"):
            code = int(body.get("code", 0))
            if code not in (1100, 1101, 1102):
                return 400, {"error": "code must be 1100, 1101 or 1102"}
            await face.send_system(code)
            return 200, {"sent": code}
        if (method, path) == ("POST", "/_admin/restart"):
            await face.gateway_restart()
            return 200, {"restarted": True}
        return 404, {"error": f"no such admin endpoint: {method} {path}"}
