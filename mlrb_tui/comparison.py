"""Two or more runs side by side, with no Textual in it: what the compare screen draws.

Each run is a `RunTrack` read from the journal (the source of truth, written before the bus
sees an event, so a live run is read to where the console's fleet is and followed from
there): its metric series, and its tool calls grouped by the agent step they were made in.
`align` lines the tracks up step by step and says, per step, whether the runs called the
same tools with the same arguments; `divergence` is the first step where the tools differ.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlrb_tui.state import elapsed_of, fmt_duration, one_line, summarize_args
from runner.event_data import AgentStepData, ToolCallData
from runner.events import Event
from runner.journal import JournalReader

MAX_POINTS = 2000  # per run and metric; older points give way
MAX_METRICS = 16  # metric names per run, the first seen
MAX_STEPS = 2000  # steps held per run, the first ones (where runs part is near the start)
MAX_CALLS_PER_STEP = 8
PAGE = 2000
MAX_PAGES = 20  # per read: a huge run is read a slice at a time, a repaint apart
STEP_KINDS = ("agent.step", "tool.call")

SAME, SAME_TOOLS, DIFFERENT = "=", "≈", "≠"


@dataclass(frozen=True, slots=True)
class Call:
    """One tool call as the timelines show it: the tool, and its arguments in a line."""

    name: str
    summary: str
    args: str = ""  # a digest of the full arguments: two calls agree only when these do

    def text(self) -> str:
        return f"{self.name} {self.summary}".rstrip()


@dataclass(frozen=True, slots=True)
class Point:
    step: float
    ts: float
    value: float


@dataclass
class RunTrack:
    """One run's metric series and tool calls by step, read from the journal in pages."""

    run: str
    metrics: dict[str, deque[Point]] = field(default_factory=dict)
    steps: dict[int, list[Call]] = field(default_factory=dict)
    step: int = 0  # the step the next tool call belongs to (0: before the first step)
    metric_seq: int = 0  # the journal read up to here, per side: metrics and events
    event_seq: int = 0
    version: int = 0  # bumped on every change, for the view
    read_to: int = -1  # the journal holds nothing of this run past here that it has not read

    @property
    def full(self) -> bool:
        """It holds MAX_STEPS steps: later calls are past what the timelines keep."""
        return len(self.steps) >= MAX_STEPS

    @property
    def seen(self) -> int:
        """The last seq this track has read (either side)."""
        return max(self.metric_seq, self.event_seq)

    def add_metric_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rows of the journal's `metrics` table, oldest first."""
        for r in rows:
            self.metric_seq = max(self.metric_seq, int(r["seq"]))
            value = r.get("value")
            if not isinstance(value, (int, float)):
                continue
            name = one_line(r.get("name") or "?", 40)
            series = self.metrics.get(name)
            if series is None:
                if len(self.metrics) >= MAX_METRICS:
                    continue
                series = self.metrics[name] = deque(maxlen=MAX_POINTS)
            step = r.get("step")
            series.append(Point(float(step if step is not None else r["seq"]),
                                float(r.get("ts") or 0.0), float(value)))
        self.version += 1

    def take(self, read: Read) -> None:
        """A read of the journal, in."""
        self.add_metric_rows(read.metric_rows)
        self.metric_seq = max(self.metric_seq, read.metrics_upto)
        self.apply(read.events)

    def apply(self, events: Iterable[Event]) -> None:
        """`agent.step` and `tool.call` events, oldest first."""
        for ev in events:
            self.event_seq = max(self.event_seq, ev.seq)
            b = ev.body
            if type(b) is AgentStepData:
                if b.step is not None:
                    self.step = b.step
                continue
            if type(b) is ToolCallData:
                calls = self.steps.get(self.step)
                if calls is None:
                    if len(self.steps) >= MAX_STEPS:
                        continue
                    calls = self.steps[self.step] = []
                if len(calls) < MAX_CALLS_PER_STEP:
                    calls.append(Call(one_line(b.name, 30), summarize_args(b.args, 80),
                                      args_digest(b.args)))
        self.version += 1


def args_digest(args: object) -> str:
    """The same for the same arguments, whatever their order; short whatever their size."""
    text = json.dumps(args, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Read:
    """One read of a run's journal for its track: apply it with `RunTrack.take`."""

    metric_rows: list[dict[str, Any]]
    events: list[Event]
    metrics_upto: int  # the metrics side is read to here (past the last row, when the first)
    more: bool  # pages are left past this read


def read_track(reader: JournalReader, track: RunTrack) -> Read:
    """What the journal holds for `track` past what it has read (blocking: call in a thread).

    The first read takes the last MAX_POINTS points of each series (index seeks, whatever
    the run's length); later reads take the rows after them. Applying is left to the caller,
    on its own thread, so a read never races a repaint."""
    more = False
    if track.read_to < 0 and track.metric_seq == 0:
        upto = reader.max_seq(track.run)
        metric_rows = reader.metric_tails(track.run, upto + 1, MAX_POINTS, MAX_METRICS)
    else:
        metric_rows = []
        after = track.metric_seq
        for i in range(MAX_PAGES):
            page = reader.metrics(track.run, after_seq=after, limit=PAGE)
            metric_rows += page
            if len(page) < PAGE:
                break
            after = int(page[-1]["seq"])
            more = i == MAX_PAGES - 1
        upto = after if not metric_rows else max(after, int(metric_rows[-1]["seq"]))
    events: list[Event] = []
    after = track.event_seq
    for i in range(0 if track.full else MAX_PAGES):
        got = reader.events(track.run, after, PAGE, kinds=STEP_KINDS)
        events += got
        if len(got) < PAGE:
            break
        after = got[-1].seq
        more = more or i == MAX_PAGES - 1
    return Read(metric_rows, events, upto, more)


# -- the side-by-side table -----------------------------------------------------------------
# what sets runs apart first, so it fits on a narrow terminal; what they share after
FIELDS = ("status", "score", "cost", "tokens", "steps", "time", "flags", "scaffold", "model",
          "task", "agent")
FIELD_LABELS = {"status": "Status", "task": "Task", "agent": "Agent", "model": "Model",
                "scaffold": "Scaffold", "score": "Score", "cost": "Cost", "tokens": "Tokens",
                "steps": "Steps", "time": "Time", "flags": "Flags"}


def _int(x: object) -> int:
    return int(x) if isinstance(x, (int, float)) else 0


def field_values(row: dict[str, Any] | None, now: float) -> dict[str, str]:
    """One run's column of the table, as the operator reads it, from its runs row."""
    if row is None:
        return {f: "—" for f in FIELDS}
    score = row.get("score")
    metric = row.get("score_metric")
    tokens = _int(row.get("input_tokens")) + _int(row.get("output_tokens"))
    budget = row.get("budget_s")
    time = fmt_duration(elapsed_of(row, now))
    if isinstance(budget, (int, float)) and budget > 0:
        time += f" / {fmt_duration(budget)}"
    return {
        "status": one_line(row.get("status") or "?", 12),
        "task": one_line(row.get("task") or "—", 40),
        "agent": one_line(row.get("agent") or "—", 40),
        "model": one_line(row.get("model") or "—", 40),
        "scaffold": one_line(row.get("scaffold") or "—", 40),
        "score": (f"{score:.4g}" + (f" {one_line(metric, 20)}" if metric else ""))
        if isinstance(score, (int, float)) else "—",
        "cost": f"${float(row.get('cost_usd') or 0.0):.4f}",
        "tokens": f"{tokens:,}",
        "steps": str(_int(row.get("steps"))),
        "time": time,
        "flags": str(_int(row.get("flags"))),
    }


# -- the timelines, aligned by step ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StepRow:
    """One step across the runs: each run's calls (None: the run has no such step)."""

    step: int
    calls: tuple[tuple[Call, ...] | None, ...]
    agreement: str  # SAME, SAME_TOOLS or DIFFERENT


def _agreement(calls: Sequence[tuple[Call, ...] | None]) -> str:
    if len(set(calls)) == 1:
        return SAME
    names = {None if c is None else tuple(x.name for x in c) for c in calls}
    return SAME_TOOLS if len(names) == 1 else DIFFERENT


def align(tracks: Sequence[RunTrack]) -> list[StepRow]:
    """Every step any run reached with a tool call, in order, each run's calls side by side."""
    steps = sorted({s for t in tracks for s in t.steps})
    out = []
    for step in steps:
        calls = tuple(tuple(t.steps[step]) if step in t.steps else None for t in tracks)
        out.append(StepRow(step, calls, _agreement(calls)))
    return out


def divergence(rows: Sequence[StepRow]) -> int | None:
    """The first step where the runs' tool calls part (other tools, or one run has none)."""
    return next((r.step for r in rows if r.agreement == DIFFERENT), None)


# -- the overlaid curves ---------------------------------------------------------------------
def metric_names(tracks: Sequence[RunTrack]) -> list[str]:
    """Every metric any run logged, in the order first seen run by run."""
    names: dict[str, None] = {}
    for t in tracks:
        names.update(dict.fromkeys(t.metrics))
    return list(names)


def curves(tracks: Sequence[RunTrack], name: str, axis: str,
           origins: dict[str, float]) -> list[tuple[str, list[float], list[float]]]:
    """(run, xs, ys) of each run that logged `name`: x in steps, or in minutes since the run's
    origin (its start), so that runs started at different times line up at zero."""
    out = []
    for t in tracks:
        series = t.metrics.get(name)
        if not series:
            continue
        if axis == "time":
            origin = origins.get(t.run, series[0].ts)
            xs = [(p.ts - origin) / 60.0 for p in series]
        else:
            xs = [p.step for p in series]
        out.append((t.run, xs, [p.value for p in series]))
    return out


def origin_of(row: dict[str, Any] | None, track: RunTrack) -> float:
    """Where a run's time axis starts: its start, else its creation, else its first point."""
    for key in ("started_ts", "created_ts"):
        v = (row or {}).get(key)
        if isinstance(v, (int, float)):
            return float(v)
    firsts = [s[0].ts for s in track.metrics.values() if s]
    return min(firsts, default=0.0)


__all__ = ["Call", "Point", "Read", "RunTrack", "StepRow", "align", "curves", "divergence",
           "field_values", "metric_names", "origin_of", "read_track"]
