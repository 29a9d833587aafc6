"""Operator commands applied to one run: each action has a route in a table, with the
action's args model, the check that may refuse it, and the handler that applies it.

Every command is answered with a `control.ack` (accepted, or refused and why); an accepted
one is recorded first as an `operator.<action>` event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from runner.approvals import Approvals, Decision
from runner.budget import Budget
from runner.control import (
    ACTION_ARGS,
    ApprovalModeArgs,
    ApproveArgs,
    ControlArgs,
    ControlCommand,
    LimitArgs,
    MessageArgs,
    NoArgs,
    RejectArgs,
    ShellArgs,
)
from runner.pause import Level

A = TypeVar("A", bound=ControlArgs)


class ControlledRun(Protocol):
    """What the commands act on: the run's supervisor."""

    end_status: str | None
    approvals: Approvals
    budget: Budget

    @property
    def ending(self) -> bool: ...

    @property
    def pause_level(self) -> Level | None: ...

    @property
    def has_sandbox(self) -> bool: ...

    async def emit(self, kind: str, data: dict[str, Any] | None = None) -> Any: ...

    async def hold(self) -> None: ...

    async def freeze(self) -> None: ...

    async def resume(self) -> None: ...

    def end_soon(self, status: str, reason: str) -> None: ...

    def tell_agent(self, text: str) -> None: ...

    def score_soon(self) -> None: ...


@dataclass(frozen=True)
class Route(Generic[A]):
    model: type[A]
    apply: Callable[[ControlCommand, A], Awaitable[str]]  # returns the ack's note
    refuse: Callable[[A], str] | None = None  # why the command cannot apply now; "" when it can

    def args(self, cmd: ControlCommand) -> A:
        # the command's validator gave the args their action's model (or InvalidArgs, refused first)
        assert isinstance(cmd.args, self.model), (cmd.action, type(cmd.args).__name__)
        return cmd.args


class ControlDispatch:
    def __init__(self, run: ControlledRun) -> None:
        self.run = run
        self.table: dict[str, Route[Any]] = {
            "hold": Route(NoArgs, self._hold, self._refuse_hold),
            "freeze": Route(NoArgs, self._freeze, self._refuse_freeze),
            "resume": Route(NoArgs, self._resume, self._refuse_resume),
            "kill": Route(NoArgs, self._kill),
            "message": Route(MessageArgs, self._message),
            "approve": Route(ApproveArgs, self._approve, self._refuse_unknown_call),
            "reject": Route(RejectArgs, self._reject, self._refuse_unknown_call),
            "approval_mode": Route(ApprovalModeArgs, self._approval_mode),
            "limit": Route(LimitArgs, self._limit),
            "score": Route(NoArgs, self._score),
            "shell": Route(ShellArgs, self._shell),
        }
        assert {a: r.model for a, r in self.table.items()} == ACTION_ARGS

    async def handle(self, cmd: ControlCommand) -> None:
        """Apply an operator command; answer with control.ack, record operator.*."""
        refusal = self.refusal(cmd)
        if refusal:
            await self._ack(cmd, False, refusal)
            return
        route = self.table[cmd.action]
        await self.run.emit(f"operator.{cmd.action}", {
            "operator": cmd.operator, "reason": cmd.reason, "command_id": cmd.id,
            "ts_sent": cmd.ts, **cmd.args_dict()})
        try:
            note = await route.apply(cmd, route.args(cmd))
        except Exception as exc:
            await self._ack(cmd, False, f"failed: {exc}")
            return
        await self._ack(cmd, True, note)

    def refusal(self, cmd: ControlCommand) -> str:
        """Why the command is refused; empty when it applies."""
        if self.run.ending:
            return f"run has ended ({self.run.end_status or 'ending'})"
        if cmd.invalid:
            return cmd.invalid
        route = self.table[cmd.action]
        return route.refuse(route.args(cmd)) if route.refuse is not None else ""

    async def _ack(self, cmd: ControlCommand, accepted: bool, reason: str) -> None:
        await self.run.emit("control.ack", {"command_id": cmd.id, "action": cmd.action,
                                            "accepted": accepted, "reason": reason,
                                            "operator": cmd.operator})

    # -- refusals ------------------------------------------------------------------------
    def _refuse_hold(self, _: NoArgs) -> str:
        level = self.run.pause_level
        return f"run is already {level}" if level is not None else ""

    def _refuse_freeze(self, _: NoArgs) -> str:
        if self.run.pause_level == "freeze":
            return "run is already frozen"
        if not self.run.has_sandbox:
            return "run has no sandbox yet"
        return ""

    def _refuse_resume(self, _: NoArgs) -> str:
        return "run is not paused" if self.run.pause_level is None else ""

    def _refuse_unknown_call(self, args: ApproveArgs | RejectArgs) -> str:
        if args.call_id not in self.run.approvals:
            return "no tool call is waiting for approval with that id"
        return ""

    # -- handlers ------------------------------------------------------------------------
    async def _hold(self, cmd: ControlCommand, _: NoArgs) -> str:
        await self.run.hold()
        return "the agent stops at its next step"

    async def _freeze(self, cmd: ControlCommand, _: NoArgs) -> str:
        await self.run.freeze()
        return "sandbox paused"

    async def _resume(self, cmd: ControlCommand, _: NoArgs) -> str:
        await self.run.resume()
        return "resumed"

    async def _kill(self, cmd: ControlCommand, _: NoArgs) -> str:
        self.run.end_soon("killed", cmd.reason or f"killed by {cmd.operator}")
        return "killing"

    async def _message(self, cmd: ControlCommand, args: MessageArgs) -> str:
        self.run.tell_agent(args.text)
        return "delivered at the agent's next turn"

    async def _approval_mode(self, cmd: ControlCommand, args: ApprovalModeArgs) -> str:
        self.run.approvals.set_mode(args.on)
        return f"approval mode {'on' if args.on else 'off'}"

    async def _approve(self, cmd: ControlCommand, args: ApproveArgs) -> str:
        await self._decide(args.call_id, Decision(True, args.args, cmd.reason))
        return "approved"

    async def _reject(self, cmd: ControlCommand, args: RejectArgs) -> str:
        await self._decide(args.call_id, Decision(False, None, cmd.reason))
        return "rejected"

    async def _decide(self, call_id: str, decision: Decision) -> None:
        self.run.approvals.decide(call_id, decision)
        await self.run.emit("tool.approval", {"id": call_id,
                                              "state": "approved" if decision.ok else "rejected",
                                              "edited": decision.edited is not None})

    async def _limit(self, cmd: ControlCommand, args: LimitArgs) -> str:
        self.run.budget.set_limit(args.name, args.value)
        return f"{args.name} limit is now {args.value:g}"

    async def _score(self, cmd: ControlCommand, _: NoArgs) -> str:
        self.run.score_soon()
        return "scoring off the clock"

    async def _shell(self, cmd: ControlCommand, args: ShellArgs) -> str:
        return f"shell {args.state}"
