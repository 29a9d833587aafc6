"""Operator control commands: the console's side of the control contract.

Every command carries an id, an operator identity and a reason. The runner answers each
with a `control.ack` event (accepted or refused, and why) and records an `operator.*`
event. Commands arrive over MQTT, so they are validated like any untrusted input.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

Action = Literal[
    "hold",  # stop at the next agent step; the clock stops
    "freeze",  # hold, and `docker pause` the sandbox
    "resume",
    "kill",
    "message",  # args: text
    "approve",  # args: call_id, optional edited args
    "reject",  # args: call_id (the reason is what the agent sees)
    "approval_mode",  # args: on (bool)
    "limit",  # args: name (time_s | tokens | cost_usd | steps), value
    "score",  # score now, off the clock
    "shell",  # args: state ("start" | "end"): recorded, the shell itself runs on the host
]
ACTIONS: frozenset[str] = frozenset(Action.__args__)  # type: ignore[attr-defined]
LimitName = Literal["time_s", "steps", "tokens", "cost_usd"]
LIMIT_NAMES: tuple[str, ...] = LimitName.__args__  # type: ignore[attr-defined]
MAX_CONTROL_BYTES = 64 * 1024


class ControlError(ValueError):
    pass


class ControlArgs(BaseModel):
    """The arguments of one action; each action has its own model (`ACTION_ARGS`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArgs(ControlArgs):
    """hold, freeze, resume, kill, score: the reason says it all."""


class MessageArgs(ControlArgs):
    text: str = Field(max_length=20_000)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("message has no text")
        return v


class ApproveArgs(ControlArgs):
    call_id: str = Field(min_length=1, max_length=200)
    # edited arguments to run instead of the agent's (edit, then approve)
    args: dict[str, Any] | None = None


class RejectArgs(ControlArgs):
    call_id: str = Field(min_length=1, max_length=200)


class ApprovalModeArgs(ControlArgs):
    on: StrictBool = True


class LimitArgs(ControlArgs):
    name: LimitName
    value: float = Field(gt=0, allow_inf_nan=False)

    @field_validator("value", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("limit value must be a positive number")
        return v


class ShellArgs(ControlArgs):
    state: Literal["start", "end"] = "start"
    exit_code: int | None = None  # the shell's, at its end


ACTION_ARGS: dict[str, type[ControlArgs]] = {
    "hold": NoArgs, "freeze": NoArgs, "resume": NoArgs, "kill": NoArgs, "score": NoArgs,
    "message": MessageArgs, "approve": ApproveArgs, "reject": RejectArgs,
    "approval_mode": ApprovalModeArgs, "limit": LimitArgs, "shell": ShellArgs,
}
assert set(ACTION_ARGS) == ACTIONS



class InvalidArgs(ControlArgs):
    """Args that did not fit their action's model: the command is refused, never applied."""

    error: str


AnyArgs = (NoArgs | MessageArgs | ApproveArgs | RejectArgs | ApprovalModeArgs | LimitArgs
           | ShellArgs | InvalidArgs)


class ControlCommand(BaseModel):
    """One operator command. On the wire `args` is an object; here it is its action's model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=80)
    run: str = Field(min_length=1, max_length=64)
    action: Action
    operator: str = Field(min_length=1, max_length=120)
    reason: str = Field(default="", max_length=2000)
    args: AnyArgs = Field(default_factory=NoArgs)
    ts: float = Field(default_factory=time.time)

    @model_validator(mode="before")
    @classmethod
    def _args_of_action(cls, obj: Any) -> Any:
        # the action names the model its args must fit (a union keyed on the action)
        if isinstance(obj, dict) and obj.get("action") in ACTION_ARGS:
            model = ACTION_ARGS[obj["action"]]
            args = obj.get("args")
            if not isinstance(args, model):
                args = {} if args is None else args
                if isinstance(args, ControlArgs):
                    args = args.model_dump()
                try:
                    obj = {**obj, "args": model.model_validate(args)}
                except ValidationError as exc:
                    # kept, so the runner can refuse it with a control.ack that says why
                    obj = {**obj, "args": InvalidArgs(error=f"args.{_first_error(exc)}")}
        return obj

    @property
    def invalid(self) -> str:
        """Why the args do not fit the action's model; empty when they do."""
        return self.args.error if isinstance(self.args, InvalidArgs) else ""

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    def args_dict(self) -> dict[str, Any]:
        """The arguments that were given, as recorded in the `operator.*` event."""
        return {} if self.invalid else self.args.model_dump(exclude_none=True)


def control_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each action's args, for `mlrb schema`."""
    return {action: model.model_json_schema() for action, model in sorted(ACTION_ARGS.items())}


def default_operator() -> str:
    """Who is at the keyboard: MLRB_OPERATOR, else user@host."""
    env = os.environ.get("MLRB_OPERATOR")
    if env:
        return env
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def parse_control(payload: bytes | str) -> ControlCommand:
    if len(payload) > MAX_CONTROL_BYTES:
        raise ControlError(f"oversized control payload ({len(payload)} bytes)")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlError(f"control payload is not JSON: {exc}") from None
    try:
        return ControlCommand.model_validate(obj)
    except ValidationError as exc:
        raise ControlError(f"invalid control command: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(x) for x in first.get("loc", ()))
    msg = str(first.get("msg", "")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg
