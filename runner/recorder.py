"""The recorder: a central journal for a fleet, fed from the bus.

Each runner journals its own runs; the recorder subscribes to every run's events and writes
them into one SQLite file beside the operator's database. `(run, seq)` is the key, so
events re-sent after an outage are no-ops. Its session is persistent (a stable client id,
clean start off), so the broker queues events while it reconnects; a gap that still shows
in a run's seqs, or a tail its runner's state says it has not got, is asked for from the
owning runner, which re-publishes it from its journal.

A run's events are taken only from the runner that owns it (`RunOwners`, seeded with the
runners this journal names). For a `(run, seq)` already held, a different payload is a
forgery or a bug: it is counted (`conflict`) and dropped, never written over the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from runner.broker_access import private_file
from runner.bus import BusConfig, EventSubscriber, RunOwners
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
        db.parent.mkdir(parents=True, exist_ok=True)
        private_file(db)  # every transcript of the fleet: made 0600 before SQLite opens it
        self.journal = Journal(db)
        self.rejects = RejectCounter()
        self.received = 0
        self.conflicts = 0  # events that differ from the copy already held: dropped
        self._held = sqlite3.connect(db, check_same_thread=False)  # used from one thread at a time
        self._pending: list[Event] = []
        self._wake = asyncio.Event()
        tracker = SeqTracker(from_start=True)  # the recorder wants every run whole
        for run, contiguous in _contiguous(db).items():
            tracker.seed(run, contiguous)
        self._subscriber = EventSubscriber(bus, self._on_events, self.rejects, tracker=tracker,
                                           client_id=client_id, session_expiry=session_expiry,
                                           owners=RunOwners(_owners(db)), clean_start=clean_start)

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
                    fresh = await asyncio.to_thread(self._fresh, batch)
                    if fresh:
                        await self.journal.write(fresh)
        finally:
            sub.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub
            if self._pending:
                fresh = await asyncio.to_thread(self._fresh, self._pending)
                await self.journal.write(fresh)
            await asyncio.to_thread(self.journal.close)
            self._held.close()

    def _fresh(self, batch: list[Event]) -> list[Event]:
        """The events not held yet; one that differs from the held copy is counted and dropped."""
        first: dict[tuple[str, int], Event] = {}
        for e in batch:
            seen = first.setdefault((e.run, e.seq), e)
            if seen is not e and not _same(seen.ts, seen.kind, seen.data, e):
                self._conflict(e)
        held: dict[tuple[str, int], tuple[float, str, Any]] = {}
        by_run: dict[str, list[int]] = {}
        for run, seq in first:
            by_run.setdefault(run, []).append(seq)
        for run, seqs in by_run.items():
            rows = self._held.execute(
                "SELECT seq, ts, kind, data FROM events WHERE run = ? AND seq BETWEEN ? AND ?",
                (run, min(seqs), max(seqs))).fetchall()
            held.update({(run, int(seq)): (ts, kind, data) for seq, ts, kind, data in rows})
        out: list[Event] = []
        for key, e in first.items():
            row = held.get(key)
            if row is None:
                out.append(e)
            elif not _same(row[0], row[1], json.loads(row[2]), e):
                self._conflict(e)
        return out

    def _conflict(self, e: Event) -> None:
        self.conflicts += 1
        self.rejects.add("conflict", f"{e.run}/{e.seq} differs from the copy held")

    @property
    def ready(self) -> asyncio.Event:
        return self._subscriber.ready


def _same(ts: float, kind: str, data: Any, e: Event) -> bool:
    return ts == e.ts and kind == e.kind and data == e.data


def _owners(db: Path) -> dict[str, str]:
    """The runner each held run came from (its run.created names it)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT run, runner FROM runs WHERE runner IS NOT NULL").fetchall()
    return {str(run): str(runner) for run, runner in rows}


def _contiguous(db: Path) -> dict[str, int]:
    """Each run whose copy here is whole from seq 1: its last seq (a restart asks for no more)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT run, MAX(seq), COUNT(*) FROM events GROUP BY run").fetchall()
    return {run: int(top) for run, top, count in rows if top == count}
