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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
MAX_CONTROL_BYTES = 64 * 1024


class ControlError(ValueError):
    pass


class ControlCommand(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=80)
    run: str = Field(min_length=1, max_length=64)
    action: Action
    operator: str = Field(min_length=1, max_length=120)
    reason: str = Field(default="", max_length=2000)
    args: dict[str, Any] = Field(default_factory=dict)
    ts: float = Field(default_factory=time.time)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


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
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise ControlError(f"invalid control command: {where}: {first.get('msg')}") from None
