"""Approval mode: with it on, each tool call waits for an operator to approve (possibly with
edited arguments) or reject it before it runs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    ok: bool
    edited: dict[str, Any] | None = None  # arguments to run instead of the agent's
    reason: str = ""


class Approvals:
    def __init__(self, on: bool) -> None:
        self.on = on
        self._waiting: dict[str, asyncio.Future[Decision]] = {}

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._waiting

    def expect(self, call_id: str) -> None:
        """The call waits from now on: a decision that arrives before `wait` is kept."""
        if call_id not in self._waiting:
            self._waiting[call_id] = asyncio.get_running_loop().create_future()

    async def wait(self, call_id: str) -> Decision:
        """Until an operator decides on the call (or approval mode is turned off)."""
        self.expect(call_id)
        fut = self._waiting[call_id]
        try:
            return await fut
        finally:
            self._waiting.pop(call_id, None)

    def decide(self, call_id: str, decision: Decision) -> None:
        fut = self._waiting[call_id]
        if not fut.done():
            fut.set_result(decision)

    def set_mode(self, on: bool) -> None:
        self.on = on
        if not on:  # nobody is asked any more: the waiting calls run as the agent wrote them
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_result(Decision(ok=True))

    def cancel(self) -> None:
        """The run ends: no call waits any longer."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
