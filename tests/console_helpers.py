"""Shared pieces of the console's Pilot tests: an in-memory event feed, a command catcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from textual.pilot import Pilot

from mlrb_tui.app import MLRBApp
from mlrb_tui.source import LiveSource
from runner.control import ControlCommand
from runner.events import Event
from tests.fixtures.demo_journal import NOW, OPERATOR, write_demo_journal

SIZE = (150, 40)


class Feed:
    """An async stream of event batches that a test pushes into (stands in for the bus)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()

    def push(self, *events: Event) -> None:
        self.queue.put_nowait(list(events))

    async def __aiter__(self) -> AsyncIterator[list[Event]]:
        while True:
            yield await self.queue.get()


class Catcher:
    """Records every control command the console sends."""

    def __init__(self) -> None:
        self.commands: list[ControlCommand] = []
        self.sent = asyncio.Event()

    async def __call__(self, command: ControlCommand) -> None:
        self.commands.append(command)
        self.sent.set()


def make_app(tmp_path: Path, *, feed: Feed | None = None, send: Catcher | None = None,
             **kwargs: object) -> MLRBApp:
    path = write_demo_journal(tmp_path / "journal.db")
    kwargs.setdefault("operator", OPERATOR)
    kwargs.setdefault("clock", lambda: NOW)
    app = MLRBApp(path, None, **kwargs)  # type: ignore[arg-type]
    if feed is not None or send is not None:
        app.use_source(LiveSource(path, None, feed=feed.__aiter__() if feed else None, send=send))
    return app


async def until(pilot: Pilot[None], cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the app run until `cond()` holds (checked after each processed batch of messages)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.02)


async def started(pilot: Pilot[None]) -> None:
    app = pilot.app
    assert isinstance(app, MLRBApp)
    await until(pilot, lambda: app.source.started.is_set() and app.dashboard is not None
                and app.dashboard.table.row_count > 0)
    await pilot.pause()
