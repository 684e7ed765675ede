"""Trading state and operator commands: the supervisor's half that is not supervision.

The supervisor is the only receiver of operator requests and the only writer of ``control``
(the trading state). This mixin is that half of it: the trading state (ACTIVE, REDUCING, HALTED)
and its broadcast, and each signed operator command (``steadyhand pause``, ``halt``, ``flatten``
...): checked (``control/commands.py``), journaled in ``operator_commands`` so a repeated command
id returns the first result and does nothing again, then carried out. Commands that need the OMS
(halt, cancel-all, flatten) are answered when the OMS replies, or after 10 s.

:class:`~steadyhand.supervisor.Supervisor` mixes it in and provides what it uses: ``children``,
``db``, ``run``, ``secret``, ``waiting``, ``_durably`` (journal writes that survive a store
fault), ``_restart``, ``_actor_table``, ``on_shutdown`` and the actor's ``send``, ``tell_peer``,
``alert``, ``event`` and ``after``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from steadyhand.actors.messages import (
    AckAlert,
    CancelAll,
    CancelAllCompleted,
    CommandResult,
    DebugToActor,
    Flatten,
    FlattenCompleted,
    OperatorCommand,
    Reconfigure,
    RequestHalt,
    RequestShutdown,
    TradingStateChanged,
)
from steadyhand.config import ConfigError, load_settings, with_overrides
from steadyhand.control import commands
from steadyhand.domain import Severity, TradingState
from steadyhand.state import store
from thespian.actors import ActorAddress

COMMAND_DEADLINE_S = 10.0  # a command waiting for the OMS is answered with an error after this


class OperatorControl:
    """The trading state and the operator's commands (mixed into the supervisor)."""

    # --- trading state ----------------------------------------------------------------------

    def on_request_halt(self, message: RequestHalt, sender: ActorAddress) -> None:
        if self.trading_state is TradingState.HALTED:
            return
        self._set_trading_state(TradingState.HALTED, f"{message.source}: {message.reason}")
        self.alert(f"halt:{message.source}", Severity.CRITICAL, "steadyhand HALTED",
                   f"{message.source}: {message.reason}")

    def _set_trading_state(self, state: TradingState, reason: str, cancel: bool = True) -> None:
        self.trading_state, self.halt_reason = state, reason
        self._durably("trading_state", lambda: store.set_control(self.db, trading_state=state.value,
                                                                  halt_reason=reason))
        self.event("trading_state", state=state.value, reason=reason)
        change = TradingStateChanged(state, reason)
        for child in self.children.values():
            if child.address is not None:
                self.send(child.address, change)
        if state is TradingState.HALTED and cancel:  # the kill switch: nothing stays working at the broker
            self.tell_peer("oms", CancelAll(command_id=f"halt-{time.time():.6f}", reason=reason))

    # --- replies the OMS owes -------------------------------------------------------------

    def on_cancel_all_completed(self, message: CancelAllCompleted, sender: ActorAddress) -> None:
        self.event("cancel_all_done", command_id=message.command_id, cancel_requests=message.cancel_requests)
        self._finish_waiting(message.command_id, {"cancel_requests": message.cancel_requests})

    def on_flatten_completed(self, message: FlattenCompleted, sender: ActorAddress) -> None:
        self._finish_waiting(message.command_id, {"cancel_requests": message.cancel_requests,
                                                  "closing_orders": list(message.closing_orders)})

    # --- operator commands ------------------------------------------------------------------

    def on_command(self, command: OperatorCommand, sender: ActorAddress) -> None:
        received = time.time()
        problem = commands.refusal(command, self.secret, received)
        if problem is None and command.name == "status":
            # A read with no effect: answered, not journaled (the live view asks every 2 s).
            self.send(sender, self._cmd_status(command, sender, received))
            return
        if problem is None:
            first = self._journaled_result(command)
            if isinstance(first, CommandResult):  # a repeat: the first result, nothing done again
                self.send(sender, CommandResult(first.command_id, first.ok, {**first.result, "repeated": True},
                                                first.error))
                return
            problem = first  # None, or "command id reused"
        if problem is not None:
            result = CommandResult(getattr(command, "command_id", ""), False, error=f"refused: {problem}")
            self._journal_command(command, "refused", result)
            self.alert("operator:refused", Severity.HIGH, "operator command refused",
                       f"{getattr(command, 'name', '?')} from {getattr(command, 'operator', '?')}: {problem}")
            self.send(sender, result)
            return
        self.event("operator_command", command_id=command.command_id, command=command.name,
                   args=command.args, operator=command.operator)
        handler = getattr(self, "_cmd_" + command.name.replace("-", "_"))
        immediate = handler(command, sender, received)
        if immediate is not None:
            self._reply(command, sender, immediate)

    def _reply(self, command: OperatorCommand, sender: ActorAddress, result: CommandResult) -> None:
        self._journal_command(command, "ok" if result.ok else "error", result)
        self.send(sender, result)

    def _wait_for(self, command: OperatorCommand, sender: ActorAddress, received: float) -> None:
        self.waiting[command.command_id] = (sender, command, received)
        self.after(COMMAND_DEADLINE_S, "command_deadline")

    def _finish_waiting(self, command_id: str, result: dict[str, Any]) -> None:
        entry = self.waiting.pop(command_id, None)
        if entry is None:
            return
        sender, command, received = entry
        result = {**result, "trading_state": self.trading_state.value,
                  "elapsed_ms": round((time.time() - received) * 1000, 3)}
        self._reply(command, sender, CommandResult(command_id, True, result))

    def _command_deadline(self) -> None:
        now = time.time()
        for command_id, (sender, command, received) in list(self.waiting.items()):
            if now - received >= COMMAND_DEADLINE_S:
                del self.waiting[command_id]
                self._reply(command, sender, CommandResult(command_id, False, error="the OMS did not answer in 10s"))

    def _cmd_status(self, command: OperatorCommand, sender: ActorAddress, received: float) -> CommandResult:
        return CommandResult(command.command_id, True, {
            "trading_state": self.trading_state.value, "halt_reason": self.halt_reason,
            "actors": self._actor_table(), "started_at": self.started_at.isoformat(),
            "stopping": self.shutting_down, "risk_limits": self._risk_limits()})

    def _risk_limits(self) -> dict[str, float]:
        """The numeric risk limits in force (after any `reload`), for status' utilization figures."""
        risk = self.run.settings.risk
        return {k: getattr(risk, k) for k in ("max_order_qty", "max_position_qty", "max_order_value",
                                              "max_gross_exposure", "max_daily_loss", "max_drawdown",
                                              "max_open_orders", "max_orders_per_minute")}

    def _cmd_pause(self, command: OperatorCommand, sender: ActorAddress, received: float) -> CommandResult:
        self._set_trading_state(TradingState.REDUCING, f"operator pause ({command.operator})")
        self.alert(f"operator:{command.command_id}", Severity.HIGH, "steadyhand paused", f"by {command.operator}")
        return CommandResult(command.command_id, True, {"trading_state": self.trading_state.value})

    def _cmd_resume(self, command: OperatorCommand, sender: ActorAddress, received: float) -> CommandResult:
        self._set_trading_state(TradingState.ACTIVE, f"operator resume ({command.operator})")
        self.alert(f"operator:{command.command_id}", Severity.HIGH, "steadyhand resumed", f"by {command.operator}")
        down = [n for n, c in self.children.items() if not c.alive]
        return CommandResult(command.command_id, True, {"trading_state": self.trading_state.value,
                                                        "actors_down": down})

    def _cmd_halt(self, command: OperatorCommand, sender: ActorAddress, received: float) -> CommandResult | None:
        if not self.children["oms"].alive:
            self._set_trading_state(TradingState.HALTED, f"operator halt ({command.operator})")
            return CommandResult(command.command_id, False, {"trading_state": "halted"},
                                 error="halted, but the OMS is down: open orders were not cancelled")
        self._wait_for(command, sender, received)
        self.trading_state, self.halt_reason = TradingState.HALTED, f"operator halt ({command.operator})"
        # Cancels first (they are what protects money), then the durable state write and broadcast.
        self.tell_peer("oms", CancelAll(command_id=command.command_id, reason="operator halt"))
        self._set_trading_state(TradingState.HALTED, self.halt_reason, cancel=False)
        self.alert(f"operator:{command.command_id}", Severity.CRITICAL, "steadyhand HALTED by the operator",
                   f"by {command.operator}")
        return None

    def _cmd_cancel_all(self, command: OperatorCommand, sender: ActorAddress,
                        received: float) -> CommandResult | None:
        if not self.tell_peer("oms", CancelAll(command_id=command.command_id, reason="operator cancel-all")):
            return CommandResult(command.command_id, False, error="the OMS is down")
        self._wait_for(command, sender, received)
        return None

    def _cmd_flatten(self, command: OperatorCommand, sender: ActorAddress,
                     received: float) -> CommandResult | None:
        # HALTED first (without cancelling: the OMS does that itself): risk denies everything and the
        # OMS drops any request still in flight, so only the closing orders reach the broker.
        self._set_trading_state(TradingState.HALTED, f"operator flatten ({command.operator})", cancel=False)
        if not self.tell_peer("oms", Flatten(command_id=command.command_id)):
            return CommandResult(command.command_id, False, error="the OMS is down")
        self._wait_for(command, sender, received)
        self.alert(f"operator:{command.command_id}", Severity.CRITICAL, "steadyhand flattening",
                   f"by {command.operator}")
        return None

    def _cmd_restart(self, command: OperatorCommand, sender: ActorAddress, received: float) -> CommandResult:
        name = str(command.args.get("actor", ""))
        child = self.children.get(name)
        if child is None:
            return CommandResult(command.command_id, False,
                                 error=f"no actor {name!r} (one of {', '.join(self.children)})")
        if child.alive and child.pid and child.pid != os.getpid():
            child.operator_restart = True
            os.kill(child.pid, signal.SIGKILL)  # the exit path restarts it at once
        elif not child.alive:
            child.down_reason = ""
            assert child.recent is not None
            child.recent.clear()
            self._restart(name)
        return CommandResult(command.command_id, True, {"actor": name, "restarting": True})

    def _cmd_reload(self, command: OperatorCommand, sender: ActorAddress, received: float) -> CommandResult:
        path = self.run.config_path or None
        try:
            new = with_overrides(load_settings(path), **self.run.cli_overrides)
        except ConfigError as exc:
            return CommandResult(command.command_id, False, error=f"configuration error: {exc}")
        old = self.run.settings
        applied = [section for section in ("risk", "alerts") if getattr(new, section) != getattr(old, section)]
        needs_restart = [k for k in ("broker", "symbols", "sim", "strategy", "oms", "heartbeat", "supervisor",
                                     "admin_port", "alpaca", "ibkr", "strategies")
                         if getattr(new, k) != getattr(old, k)]
        merged = type(old)(**{**{f: getattr(old, f) for f in old.__dataclass_fields__},
                              "risk": new.risk, "alerts": new.alerts})
        self.run = type(self.run)(**{**{f: getattr(self.run, f) for f in self.run.__dataclass_fields__},
                                     "settings": merged})
        for name in ("risk", "alerter"):
            self.tell_peer(name, Reconfigure(merged))
        return CommandResult(command.command_id, True, {"applied": applied, "needs_restart": needs_restart})

    def _cmd_shutdown(self, command: OperatorCommand, sender: ActorAddress, received: float) -> CommandResult:
        result = CommandResult(command.command_id, True, {"stopping": True})
        self._reply(command, sender, result)
        self.on_shutdown(RequestShutdown(f"operator ({command.operator})"), None)
        return None  # type: ignore[return-value]  # already replied: the reply must precede the stop

    def _cmd_ack(self, command: OperatorCommand, sender: ActorAddress, received: float) -> CommandResult:
        alert_id = command.args.get("alert_id")
        if not self.tell_peer("alerter", AckAlert(int(alert_id or 0), command.operator)):
            return CommandResult(command.command_id, False, error="the alerter is down")
        return CommandResult(command.command_id, True, {"acknowledged": alert_id})

    def _journaled_result(self, command: OperatorCommand) -> CommandResult | str | None:
        """The first result of an already-executed id; "command id reused" if it was another command."""
        row = self.db.execute(
            "SELECT name, args, signature, result FROM operator_commands"
            " WHERE command_id = ? AND status != 'refused' ORDER BY id LIMIT 1", [command.command_id]).fetchone()
        if row is None:
            return None
        if row[0] != command.name or json.loads(row[1]) != json.loads(store.to_json(command.args)):
            return "command id reused for a different command"
        data = json.loads(row[3])
        return CommandResult(data["command_id"], data["ok"], data["result"], data["error"])

    def _journal_command(self, command: Any, status: str, result: CommandResult) -> None:
        self._durably(f"command:{getattr(command, 'command_id', '')}:{status}",
                      lambda: self._insert_command(command, status, result))

    def _insert_command(self, command: Any, status: str, result: CommandResult) -> None:
        with store.transaction(self.db):
            self.db["operator_commands"].insert({
                "command_id": getattr(command, "command_id", ""), "name": getattr(command, "name", ""),
                "args": store.to_json(getattr(command, "args", {})),
                "operator": getattr(command, "operator", ""), "issued_at": getattr(command, "issued_at", 0.0),
                "received_at": store.now_iso(), "signature": getattr(command, "signature", ""),
                "status": status,
                "result": store.to_json({"command_id": result.command_id, "ok": result.ok, "result": result.result,
                                         "error": result.error}),
            })

    def on_debug(self, message: DebugToActor, sender: ActorAddress) -> None:
        if self.run is not None and self.run.test_hooks:
            self.tell_peer(message.actor, message.message)
            self.send(sender, True)
