"""Where the console's events come from: the journal (backfill, history) and the bus (live).

`LiveSource` backfills run rows from SQLite in a thread, follows the MQTT bus through an
`EventSubscriber` (or any async feed, for tests), and polls the journal as a fallback while
the bus is down or absent, so the console works without a broker. A run whose events have a
gap is "catching up" until the gap is filled, from the journal or by the run's runner over the
bus. It sends control commands with `send_control`. Every SQLite call runs off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from mlrb_tui.state import FleetState, Gap, RunState
from runner.bus import BusConfig, BusUnavailable, EventSubscriber, RunOwners, send_control
from runner.control import ControlCommand
from runner.events import TERMINAL_STATUSES, Event, RejectCounter
from runner.journal import JournalReader

log = logging.getLogger(__name__)

Send = Callable[[ControlCommand], Awaitable[None]]
BACKFILL_EVENTS = 400  # the run view opens on the last N events, not the whole run
CATCH_UP_PAGE = 2000
POLL_S = 2.0
REPAIR_WAIT_S = 10.0  # events past a gap wait this long for the runner to re-publish it
SIGNAL_EVENTS = 200  # per run, read when the console first sees it
SIGNAL_KINDS = ("resource", "gpu", "tool.call", "tool.approval", "tool.result", "run.limit",
                "operator.limit", "operator.approval_mode", "run.ended")


class SendFailed(RuntimeError):
    """A control command could not be handed to the bus."""


class LiveSource:
    """Feeds a FleetState from the journal and the bus; sends controls.

    `on_change` is called (on the event loop) after any change to the state, so the app can
    schedule a throttled repaint; `feed` replaces the bus with any async stream of event
    batches; `send` replaces `send_control` (tests capture commands with it).
    """

    def __init__(self, journal_path: str | Path, bus: BusConfig | None = None, *,
                 fleet: FleetState | None = None,
                 on_change: Callable[[], None] | None = None,
                 feed: AsyncIterator[list[Event]] | None = None,
                 send: Send | None = None,
                 poll_s: float = POLL_S) -> None:
        self.journal_path = Path(journal_path)
        self.bus = bus
        self.fleet = fleet if fleet is not None else FleetState()
        self.on_change = on_change or (lambda: None)
        self.rejects = RejectCounter()
        self.poll_s = poll_s
        self._feed = feed
        self._send = send
        self._reader: JournalReader | None = None
        self._subscriber: EventSubscriber | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._backfilling: set[str] = set()
        self._bus_gaps: set[str] = set()
        self._holding: set[str] = set()  # runs whose events past a gap wait for the bus's repair
        self.polls = 0
        self.started = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------
    @property
    def reader(self) -> JournalReader:
        if self._reader is None:
            self._reader = JournalReader(self.journal_path)
        return self._reader

    @property
    def bus_state(self) -> str:
        """'online', 'offline' (configured but unreachable) or 'none' (journal only)."""
        if self._feed is not None:
            return "online"
        if self.bus is None:
            return "none"
        sub = self._subscriber
        return "online" if sub is not None and sub.connected else "offline"

    @property
    def subscriber(self) -> EventSubscriber | None:
        """The bus side, for its counts (rejects, reconnects, repairs); None without a bus."""
        return self._subscriber

    def counts_text(self) -> str:
        """The bus's counts for the status line, '' while all are zero: payloads rejected by
        reason (here and at the runners), reconnects, repairs asked, events resent and repaired."""
        sub = self._subscriber
        if sub is None:
            return ""
        fleet = sub.fleet_counts()
        rejects = Counter(self.rejects.counts)
        rejects.update(fleet.rejects)
        parts = []
        if rejects:
            top = ", ".join(f"{r} {n}" for r, n in rejects.most_common(3))
            more = ", …" if len(rejects) > 3 else ""
            parts.append(f"rejected {rejects.total()} ({top}{more})")
        for label, n in (("reconnects", sub.reconnects + fleet.reconnects),
                         ("repairs asked", sub.repairs_requested), ("resent", fleet.resent),
                         ("repaired", fleet.repaired)):
            if n:
                parts.append(f"{label} {n}")
        return " · ".join(parts)

    @property
    def catching_up(self) -> set[str]:
        """Runs with missed events on their way: from the bus's repair, or the journal."""
        return self._bus_gaps | self._backfilling | self._holding

    async def start(self) -> None:
        """Backfill run rows, then follow the bus (or feed) and poll as a fallback."""
        await asyncio.to_thread(lambda: self.reader)  # opening creates the schema if needed
        if self.bus is not None and self._feed is None:
            # the runs this journal holds take events only from the runner that created them
            owners = await asyncio.to_thread(lambda: {
                r["run"]: r["runner"] for r in self.reader.list_runs() if r.get("runner")})
            self._subscriber = EventSubscriber(self.bus, self.deliver, rejects=self.rejects,
                                               owners=RunOwners(owners), on_gaps=self._on_bus_gaps)
            self._tasks.append(asyncio.create_task(self._subscriber.run(), name="console-bus"))
        if self._feed is not None:
            self._tasks.append(asyncio.create_task(self._follow(self._feed), name="console-feed"))
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._poll(), name="console-poll"))
        self.started.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await asyncio.to_thread(reader.close)

    # -- incoming events ------------------------------------------------------------
    def deliver(self, events: list[Event]) -> None:
        """Apply a batch of live events (the bus callback; runs on the event loop)."""
        gaps = self.fleet.apply(events)
        for gap in gaps:
            self._fill(gap)
        self.on_change()

    async def _follow(self, feed: AsyncIterator[list[Event]]) -> None:
        async for batch in feed:
            self.deliver(batch)

    def _on_bus_gaps(self, runs: list[str]) -> None:
        self._bus_gaps = set(runs)
        self._show_catching_up()

    def _show_catching_up(self) -> None:
        if self.fleet.set_catching_up(self.catching_up):
            self.on_change()

    def _seed(self, run: str, *, start: bool = False) -> None:
        """What the journal filled the bus need not repair: the tracker starts past it (and
        with `start`, a live run the bus has not shown yet starts where the journal is)."""
        sub = self._subscriber
        if sub is not None and (start or sub.tracker.get(run) is not None):
            sub.tracker.seed(run, self.fleet.last_seq(run))
            self._bus_gaps = set(sub.gaps)
            self._show_catching_up()

    def _fill(self, gap: Gap) -> None:
        if gap.run in self._backfilling or gap.run in self._holding:
            return
        self._backfilling.add(gap.run)
        self._show_catching_up()
        self._tasks.append(asyncio.create_task(self._backfill(gap.run), name=f"fill-{gap.run}"))

    async def _backfill(self, run: str) -> None:
        """Fill a gap from the journal; if the journal cannot, apply what was held back."""
        try:
            await self.catch_up(run)
        except Exception as exc:  # a journal read error must not stop the console
            log.warning("backfill of %s failed: %s", run, exc)
        finally:
            self._backfilling.discard(run)
            if self.fleet.pending.get(run):
                sub = self._subscriber
                if sub is not None and sub.connected and run in sub.gaps:
                    # the run's runner re-publishes the gap: the events past it wait for that
                    self._holding.add(run)
                    self._tasks.append(asyncio.create_task(self._flush_later(run),
                                                           name=f"hold-{run}"))
                else:
                    self.fleet.flush_pending(run)
            self._show_catching_up()
            self.on_change()

    async def _flush_later(self, run: str) -> None:
        """Apply what is held past a gap once the bus filled it, or after REPAIR_WAIT_S anyway."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPAIR_WAIT_S
        try:
            while self.fleet.pending.get(run) and loop.time() < deadline:
                await asyncio.sleep(0.2)
        finally:
            self._holding.discard(run)
            if self.fleet.pending.get(run):
                self.fleet.flush_pending(run)
            self._show_catching_up()
            self.on_change()

    async def catch_up(self, run: str, upto: int | None = None) -> int:
        """Apply the journal's events of `run` after what the fleet has; returns how many."""
        n = 0
        while True:
            after = self.fleet.last_seq(run)
            if upto is not None and after >= upto:
                break
            page = await asyncio.to_thread(self.reader.events, run, after, CATCH_UP_PAGE)
            if not page:
                break
            self.fleet.apply(page)
            n += len(page)
            if len(page) < CATCH_UP_PAGE:
                break
        if n:
            self._seed(run)
        return n

    async def refresh(self) -> None:
        """One poll of the journal: new runs, and runs whose last seq moved on."""
        rows = await asyncio.to_thread(self.reader.list_runs)
        behind = []
        fresh = []
        for row in rows:
            run = row["run"]
            if run not in self.fleet.rows:
                fresh.append(row)
            elif int(row.get("last_seq") or 0) > self.fleet.last_seq(run):
                behind.append(run)
        self.fleet.load_rows(fresh)
        for row in fresh:
            if row.get("status") not in TERMINAL_STATUSES:
                self._seed(row["run"], start=True)
        if fresh:
            wanted = [(row["run"], self.fleet.last_seq(row["run"])) for row in fresh]
            for run, events in await asyncio.to_thread(self._read_signals, wanted):
                sig = self.fleet.signals_of(run)
                for ev in events:
                    sig.apply(ev)
                # the rows may have been drawn while these were read: draw their cells again
                self.fleet.changed.add(run)
        for run in behind:
            await self.catch_up(run)
        self.polls += 1
        self.on_change()

    def _read_signals(self, wanted: list[tuple[str, int]]) -> list[tuple[str, list[Event]]]:
        """Recent telemetry, pending approvals and limit warnings of runs first seen in a poll
        (their rows come from the runs table, which does not hold these), up to the row's seq."""
        reader = self.reader
        out = []
        for run, upto in wanted:
            first = reader.events(run, 0, 1, kinds=["run.created"])
            recent = reader.events_before(run, upto + 1, limit=SIGNAL_EVENTS, kinds=SIGNAL_KINDS)
            out.append((run, [*first, *recent]))
        return out

    async def _poll(self) -> None:
        while True:
            # with the bus up the poll is a slow safety net; without it, the live source
            await asyncio.sleep(self.poll_s if self.bus_state != "online" else self.poll_s * 5)
            try:
                await self.refresh()
            except Exception as exc:  # the file may be mid-checkpoint; try again next time
                log.debug("journal poll failed: %s", exc)

    # -- the run view ---------------------------------------------------------------
    async def open_run(self, run: str, limit: int = BACKFILL_EVENTS) -> RunState:
        """Backfill a RunState from the last `limit` events and its metrics, then watch it."""
        reader = self.reader

        def load() -> tuple[list[Event], list[dict[str, Any]], list[dict[str, Any]]]:
            last = reader.max_seq(run)
            window = reader.events_before(run, last + 1, limit=limit)
            start = window[0].seq if window else last + 1
            metrics = [r for r in reader.metrics(run, limit=20000) if r["seq"] < start]
            audit = [r for r in reader.interventions(run)[-200:] if r["seq"] < start]
            return window, metrics, audit

        window, metrics, audit = await asyncio.to_thread(load)
        rs = RunState(run)
        rs.add_metric_rows(metrics)
        for record in audit:
            rs.add_audit(record)
        for ev in window:
            rs.apply(ev)
        # anything the fleet saw while we read is in the journal (it is written first)
        for _ in range(3):
            if rs.last_seq >= self.fleet.last_seq(run):
                break
            more = await asyncio.to_thread(reader.events, run, rs.last_seq, CATCH_UP_PAGE)
            if not more:
                break
            for ev in more:
                rs.apply(ev)
        self.fleet.watched[run] = rs
        return rs

    def close_run(self, run: str) -> None:
        self.fleet.unwatch(run)

    # -- controls -------------------------------------------------------------------
    async def send(self, command: ControlCommand) -> None:
        """Hand a command to the bus; raises SendFailed with a reason the operator can read."""
        if self._send is not None:
            await self._send(command)
            return
        if self.bus is None:
            raise SendFailed("no bus configured: this console reads the journal only")
        try:
            await send_control(self.bus, command)
        except BusUnavailable as exc:
            raise SendFailed(str(exc)) from None
