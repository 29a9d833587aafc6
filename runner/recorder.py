"""The recorder: a central journal for a fleet, fed from the bus.

Each runner journals its own runs; the recorder subscribes to every run's events and writes
them into one SQLite file beside the operator's database. `(run, seq)` is the key, so
events re-sent after an outage are no-ops. Its session is persistent (a stable client id,
clean start off), so the broker queues events while it reconnects; a gap that still shows
in a run's seqs, or a tail its runner's state says it has not got, is asked for from the
owning runner, which re-publishes it from its journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path

from runner.bus import BusConfig, EventSubscriber
from runner.events import Event, RejectCounter
from runner.journal import Journal
from runner.seq_tracker import SeqTracker

log = logging.getLogger(__name__)

CLIENT_ID = "mlrb-recorder"
SESSION_EXPIRY = 24 * 3600  # seconds the broker keeps queueing for a recorder that is away


class Recorder:
    def __init__(self, bus: BusConfig, db: Path, *, client_id: str = CLIENT_ID,
                 session_expiry: int = SESSION_EXPIRY, clean_start: bool = False) -> None:
        self.bus = bus
        self.journal = Journal(db)
        self.rejects = RejectCounter()
        self.received = 0
        self._pending: list[Event] = []
        self._wake = asyncio.Event()
        tracker = SeqTracker(from_start=True)  # the recorder wants every run whole
        for run, contiguous in _contiguous(db).items():
            tracker.seed(run, contiguous)
        self._subscriber = EventSubscriber(bus, self._on_events, self.rejects, tracker=tracker,
                                           client_id=client_id, session_expiry=session_expiry,
                                           clean_start=clean_start)

    @property
    def subscriber(self) -> EventSubscriber:
        """The bus side: `repairs_requested`, `gaps`, `connected` for a status line."""
        return self._subscriber

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


def _contiguous(db: Path) -> dict[str, int]:
    """Each run whose copy here is whole from seq 1: its last seq (a restart asks for no more)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT run, MAX(seq), COUNT(*) FROM events GROUP BY run").fetchall()
    return {run: int(top) for run, top, count in rows if top == count}
