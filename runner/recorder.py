"""The recorder: a central journal for a fleet, fed from the bus.

Each runner journals its own runs; the recorder subscribes to every run's events and writes
them into one SQLite file beside the operator's database. `(run, seq)` is the key, so
events re-sent after an outage are no-ops, and a gap left by an outage is filled when the
runner re-sends from its own journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from runner.bus import BusConfig, EventSubscriber
from runner.events import Event, RejectCounter
from runner.journal import Journal

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, bus: BusConfig, db: Path) -> None:
        self.bus = bus
        self.journal = Journal(db)
        self.rejects = RejectCounter()
        self.received = 0
        self._pending: list[Event] = []
        self._wake = asyncio.Event()
        self._subscriber = EventSubscriber(bus, self._on_events, self.rejects)

    def _on_events(self, events: list[Event]) -> None:
        self._pending.extend(events)
        self.received += len(events)
        self._wake.set()

    async def run(self) -> None:
        sub = asyncio.create_task(self._subscriber.run())
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._pending = self._pending, []
                if batch:
                    await self.journal.write(batch)
        finally:
            sub.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub
            if self._pending:
                await self.journal.write(self._pending)
            await asyncio.to_thread(self.journal.close)

    @property
    def ready(self) -> asyncio.Event:
        return self._subscriber.ready
