"""Replay of a recorded run: maps wall time to journal time at a chosen speed.

`ReplayController` is Textual-free. It pages events out of the journal
(`JournalReader.events(after_seq, limit)`), never loading a whole run; seeks find their
sequence number by timestamp (`seq_at`) and rebuild the view state from a bounded window
(`events_before`), the last event of each kind the run row keeps, usage sums and each metric
series' tail: every query is an index seek, so a seek costs the same at event 10 or 10^6.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from mlrb_tui.state import MAX_POINTS, RunState
from runner.events import Event
from runner.journal import JournalReader, RunFold

SPEEDS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
PAGE = 500
WINDOW = 400  # events replayed into the view state after a seek or a step back
MAX_GAP_S = 2.0  # wall seconds: a longer quiet stretch in the recording is cut short
ERROR_KINDS = ("agent.error", "run.warning", "integrity.flag", "sandbox.stopped")
INTERVENTION_KINDS = ("operator.hold", "operator.freeze", "operator.resume", "operator.kill",
                      "operator.message", "operator.approve", "operator.reject",
                      "operator.approval_mode", "operator.limit", "operator.shell",
                      "operator.score", "control.ack")
SCORE_KINDS = ("score",)
JUMPS = {"error": ERROR_KINDS, "intervention": INTERVENTION_KINDS, "score": SCORE_KINDS}
# the run row keeps only the last of each of these (usage and integrity flags add up instead)
FOLD_LATEST_KINDS = (
    "run.created", "run.started", "run.held", "run.resumed", "run.ended", "sandbox.started",
    "score", "metric", "resource", "gpu", "agent.step",
)


class ReplayError(RuntimeError):
    pass


class ReplayController:
    """Plays one run's events back in order, at `speed` times real time."""

    def __init__(self, reader: JournalReader, run: str, speed: float = 1.0,
                 *, page: int = PAGE, window: int = WINDOW) -> None:
        rng = reader.ts_range(run)
        if rng is None:
            raise ReplayError(f"run {run!r} has no events in {reader.path}")
        self.reader = reader
        self.run = run
        self.t0, self.t1 = rng
        self.max_seq = reader.max_seq(run)
        self.speed = self._nearest_speed(speed)
        self.playing = True
        self.position = 0  # the last seq applied
        self.now_ts = self.t0  # replay clock, in journal time
        self._page = page
        self._window = window
        self._buffer: deque[Event] = deque()
        self._buffer_after = 0  # the buffer continues the journal after this seq
        self.state = RunState(run)
        self.fold = RunFold()

    # -- reading --------------------------------------------------------------------
    @property
    def row(self) -> dict[str, Any]:
        return self.fold.rows.get(self.run) or {"run": self.run, "status": "queued"}

    @property
    def finished(self) -> bool:
        return self.position >= self.max_seq

    @property
    def fraction(self) -> float:
        span = self.t1 - self.t0
        return 1.0 if span <= 0 else min(1.0, max(0.0, (self.now_ts - self.t0) / span))

    # -- playing --------------------------------------------------------------------
    def _nearest_speed(self, speed: float) -> float:
        return min(SPEEDS, key=lambda s: abs(s - speed))

    def faster(self) -> float:
        i = SPEEDS.index(self.speed)
        self.speed = SPEEDS[min(i + 1, len(SPEEDS) - 1)]
        return self.speed

    def slower(self) -> float:
        i = SPEEDS.index(self.speed)
        self.speed = SPEEDS[max(i - 1, 0)]
        return self.speed

    def toggle(self) -> bool:
        self.playing = not self.playing
        if self.finished:
            self.playing = False
        return self.playing

    def _peek(self) -> Event | None:
        if not self._buffer:
            page = self.reader.events(self.run, after_seq=max(self.position, self._buffer_after),
                                      limit=self._page)
            self._buffer.extend(page)
            if page:
                self._buffer_after = page[-1].seq
        return self._buffer[0] if self._buffer else None

    def _apply(self, ev: Event) -> None:
        self.fold.apply(ev)
        self.state.apply(ev)
        self.position = ev.seq

    def advance(self, wall_dt: float) -> list[Event]:
        """Move the replay clock by `wall_dt * speed`; apply and return the events passed.

        A quiet stretch in the recording is cut to MAX_GAP_S of wall time, so a replay at 1x
        of a run that slept for an hour does not show an hour of nothing.
        """
        if not self.playing:
            return []
        nxt = self._peek()
        if nxt is not None and nxt.ts - self.now_ts > MAX_GAP_S * self.speed:
            self.now_ts = nxt.ts - MAX_GAP_S * self.speed  # wait at most MAX_GAP_S of wall time
        target = self.now_ts + max(0.0, wall_dt) * self.speed
        out: list[Event] = []
        while True:
            ev = self._peek()
            if ev is None:
                self.now_ts = min(max(target, self.now_ts), self.t1)
                self.playing = False
                break
            if ev.ts > target:
                self.now_ts = target
                break
            self._buffer.popleft()
            self._apply(ev)
            self.now_ts = max(self.now_ts, ev.ts)
            out.append(ev)
            if len(out) >= self._page:  # bounded work per tick; the rest comes next tick
                break
        return out

    def step_forward(self) -> Event | None:
        """Apply exactly the next event (and pause)."""
        self.playing = False
        ev = self._peek()
        if ev is None:
            return None
        self._buffer.popleft()
        self._apply(ev)
        self.now_ts = ev.ts
        return ev

    def jump_next(self, what: str) -> int | None:
        """Seek to the next error, intervention or score after the position (and pause);
        the journal's (run, kind, seq) index finds it without reading what lies between."""
        kinds = JUMPS.get(what)
        if kinds is None:
            return None
        seq = self.reader.next_seq_of(self.run, self.position, kinds)
        if seq is None:
            return None
        self.playing = False
        self.seek_seq(seq)
        return seq

    def step_back(self) -> int:
        """Go back one event (and pause); the view state is rebuilt. Returns the new position."""
        self.playing = False
        self.seek_seq(max(0, self.position - 1))
        return self.position

    def seek_fraction(self, fraction: float) -> int:
        """Jump to a point in the run's time span (0.0 = start, 1.0 = end)."""
        fraction = min(1.0, max(0.0, fraction))
        ts = self.t0 + (self.t1 - self.t0) * fraction
        seq = self.reader.seq_at(self.run, ts)
        self.seek_seq(seq)
        self.now_ts = max(ts, self.now_ts) if seq else self.t0
        return self.position

    def seek_seq(self, seq: int) -> None:
        """Rebuild the state as it was right after event `seq` (0 = before the first)."""
        seq = min(max(0, seq), self.max_seq)
        self.fold = RunFold()
        self.state.reset()
        self._buffer.clear()
        self._buffer_after = seq
        self.position = 0
        self.now_ts = self.t0
        if seq == 0:
            return
        window = self.reader.events_before(self.run, seq + 1, limit=self._window)
        start = window[0].seq if window else seq + 1
        if start > 1:
            self._fold_before(start)
            # charts show each series' last MAX_POINTS points, as playing from the start would
            self.state.add_metric_rows(self.reader.metric_tails(self.run, start, MAX_POINTS))
        for ev in window:
            self.fold.apply(ev)
            self.state.apply(ev)
        self.position = seq
        self.now_ts = window[-1].ts if window else self.t0

    def _fold_before(self, start: int) -> None:
        """Fold the row as it stood before event `start` without reading the events between.

        The row keeps only the last of each of FOLD_LATEST_KINDS (the status is decided by the
        last lifecycle event, or for good by the first run.ended), so one index seek per kind
        finds them; usage and integrity flags add up, so they come as sums and a count.
        """
        before = self.reader.latest_events(self.run, FOLD_LATEST_KINDS, start)
        before += self.reader.first_events(self.run, ("run.ended",), start)
        before += self.reader.events(self.run, after_seq=0, limit=1)  # the row exists from seq 1
        seen: set[int] = set()
        for ev in sorted(before, key=lambda e: e.seq):
            if ev.seq not in seen:
                seen.add(ev.seq)
                self.fold.apply(ev)
        row = self.fold.rows.get(self.run)
        if row is None:
            return
        totals = self.reader.usage_totals(self.run, start)
        row["input_tokens"] = int(totals["input_tokens"])
        row["output_tokens"] = int(totals["output_tokens"])
        row["cost_usd"] = float(totals["cost_usd"])
        row["flags"] = self.reader.count_kind(self.run, "integrity.flag", start)
