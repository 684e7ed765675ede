"""Dashboard: the thin actor shell around the web dashboard (dashboard/app.py).

Its process runs uvicorn on an event loop thread of its own; the actor thread answers the heartbeat,
carries the page's controls to the supervisor as signed operator commands (the same
``control/commands.new_command`` as the CLI, so the same journal) and watches the server: a server
that died makes this actor crash, and the supervisor restarts it. The spec is not essential
(supervisor.CHILD_SPECS): crashing too often leaves the dashboard down, trading goes on. Nothing
trades through it, and it reads the store read-only: a slow browser slows only this process.
"""

from __future__ import annotations

import json
import os
import queue
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

from steadyhand.actors.base import SteadyActor
from steadyhand.actors.messages import CommandResult
from steadyhand.control.commands import load_secret, new_command
from steadyhand.dashboard.status import DASHBOARD_FILE
from thespian.actors import ActorAddress

CHECK_S = 0.25  # how often queued controls are sent and the server is looked at, while someone watches
IDLE_CHECK_S = 2.0  # ... while nobody does (no page open, no stream client): an idle dashboard costs ~0


class DashboardActor(SteadyActor):
    def setup(self) -> None:
        from steadyhand.dashboard.app import Context, DashboardServer
        from steadyhand.sim.server.app import ServerThread

        data_dir = Path(self.run.data_dir)
        settings = self.run.settings.dashboard
        self.outbox: queue.Queue[tuple[str, dict[str, Any], Future[dict[str, Any]]]] = queue.Queue()
        self.waiting: dict[str, Future[dict[str, Any]]] = {}
        self.server = DashboardServer(Context(
            data_dir=data_dir, run_id=_run_id(data_dir), clock=self.run.clock,
            risk_limits=asdict(self.run.settings.risk), send_command=self.submit,
            backlog=settings.stream_backlog, client_queue=settings.client_queue), port=settings.port)
        self.thread = ServerThread(self.server).start()  # type: ignore[arg-type]  # start()/close() suffice
        _write_info(data_dir, {"url": self.server.url, "port": self.server.port, "pid": os.getpid()})
        self.event("dashboard_serving", port=self.server.port)
        self.handlers = {CommandResult: self.on_result}
        self.timers = {"check": self.check}

    def on_first_wiring(self) -> None:
        self.every("check", CHECK_S, slow_period_s=IDLE_CHECK_S, slow_when=self.server.idle)

    # --- controls: web thread -> actor thread -> supervisor ------------------------------------

    def submit(self, name: str, args: dict[str, Any]) -> Future[dict[str, Any]]:
        """Called on the web server's thread: queue it for the actor thread (Thespian's send is not
        thread-safe); the future is answered with the supervisor's CommandResult."""
        future: Future[dict[str, Any]] = Future()
        self.outbox.put((name, args, future))
        return future

    def check(self) -> None:
        if not self.server.serving:
            raise RuntimeError("the dashboard's web server stopped")  # crash: the supervisor restarts us
        while True:
            try:
                name, args, future = self.outbox.get_nowait()
            except queue.Empty:
                return
            try:
                command = new_command(name, load_secret(self.run.data_dir), args)
            except Exception as exc:  # noqa: BLE001 - e.g. the secret file unreadable: tell the page
                future.set_result({"ok": False, "error": str(exc)})
                continue
            if self.supervisor is None:
                future.set_result({"ok": False, "error": "no supervisor"})
                continue
            self.waiting[command.command_id] = future
            self.send(self.supervisor, command)

    def on_result(self, message: CommandResult, sender: ActorAddress) -> None:
        future = self.waiting.pop(message.command_id, None)
        if future is not None and not future.done():
            future.set_result({"command_id": message.command_id, "ok": message.ok, "result": message.result,
                               "error": message.error})

    def on_stop(self) -> None:
        (Path(self.run.data_dir) / DASHBOARD_FILE).unlink(missing_ok=True)
        self.thread.stop()


def _run_id(data_dir: Path) -> str:
    """The run's id: when ``steadyhand run`` started (run.json), stable across this actor's restarts."""
    try:
        info = json.loads((data_dir / "run.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(info.get("run_id") or info.get("started_at") or "")


def _write_info(data_dir: Path, info: dict[str, Any]) -> None:
    """dashboard.json (url with the token, port, pid): 0600 as it carries the token."""
    tmp = data_dir / (DASHBOARD_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.replace(tmp, data_dir / DASHBOARD_FILE)
