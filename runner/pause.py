"""Pause levels: *hold* stops the agent at its next step; *freeze* also pauses the sandbox,
so a training job stops using the GPU. Both stop the run's clock."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from runner.budget import RunClock
from runner.sandbox import Sandbox

Level = Literal["hold", "freeze"]


class Pause:
    def __init__(self, clock: RunClock) -> None:
        self.clock = clock
        self.level: Level | None = None
        self._resumed = asyncio.Event()
        self._resumed.set()

    def hold(self) -> None:
        self.level = "hold"
        self._resumed.clear()

    async def freeze(self, sandbox: Sandbox) -> None:
        await sandbox.pause()
        self.level = "freeze"
        self._resumed.clear()
        self.clock.stop("freeze")

    async def resume(self, sandbox: Sandbox | None) -> None:
        if self.level == "freeze" and sandbox is not None:
            await sandbox.unpause()
        self.level = None
        self.clock.release("freeze")
        self.clock.release("hold")
        self._resumed.set()

    async def gate(self) -> None:
        """Where a hold takes effect: the agent stops here until resumed."""
        if self.level is not None:
            self.clock.stop("hold")
            await self._resumed.wait()

    async def end(self, sandbox: Sandbox | None) -> None:
        """The run ends: let everything waiting at the gate go, and thaw a frozen sandbox."""
        # a frozen sandbox cannot even be told to stop a command: thaw it first
        if sandbox is not None and self.level == "freeze":
            with contextlib.suppress(Exception):
                await sandbox.unpause()
        self.level = None
        self._resumed.set()
