"""The console's state: plain objects folded from events, with no Textual in them.

`FleetState` holds one row per run (folded by `runner.journal.RunFold`, the same fold the
journal writer uses), dedupes on `(run, seq)`, detects gaps, and remembers which rows
changed since the last repaint so the table updates cells in place. `RunState` holds what
the run view shows for one run: bounded deques of actions, output lines, metric series,
and the model's reply while it streams in (`LiveReply`, the tail of it, gone once whole).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mlrb_tui.signals import RunSignals
from runner.escapes import overwrite_line, strip_escapes
from runner.event_data import (
    AgentDeltaData,
    AgentErrorData,
    AgentMessageData,
    AgentStepData,
    AgentSubmitData,
    ControlAckData,
    IntegrityFlagData,
    MetricData,
    NetRequestData,
    OperatorData,
    RunEndedData,
    RunHeldData,
    RunLimitData,
    RunWarningData,
    SandboxOutputData,
    SandboxStartedData,
    SandboxStoppedData,
    ScoreData,
    ToolApprovalData,
    ToolCallData,
    ToolResultData,
)
from runner.events import Event
from runner.journal import RunFold

MAX_TIMELINE = 2000
MAX_OUTPUT_LINES = 5000
MAX_POINTS = 2000  # per metric series
MAX_PENDING = 5000  # events held back per run while a gap is being filled
MAX_LINE_CHARS = 2000
MAX_LIVE_CHARS = 4000  # of a reply still streaming, the tail kept for the run view
# a streaming reply is whole (or abandoned, on an error) once one of these comes
LIVE_ENDS = frozenset({"usage", "agent.message", "agent.error", "agent.step", "tool.call",
                       "run.ended"})

TIMELINE_KINDS = frozenset({
    "run.created", "run.started", "run.held", "run.resumed", "run.warning", "run.limit",
    "run.ended", "agent.step", "agent.message", "agent.error", "agent.submit", "tool.call",
    "tool.result", "tool.approval", "sandbox.started", "sandbox.stopped", "control.ack", "score",
    "integrity.flag", "net.request",
})


def clean(text: object, limit: int = MAX_LINE_CHARS) -> str:
    """Untrusted text made safe for a screen: escapes stripped, length capped."""
    s = strip_escapes(text if isinstance(text, str) else str(text))
    return s if len(s) <= limit else s[: limit - 1] + "…"


def one_line(text: object, limit: int = 120) -> str:
    s = " ".join(clean(text, limit * 4).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def elapsed_of(row: dict[str, Any], now: float) -> float:
    """Time on the run's clock: active_s as of active_ts, plus wall time while running."""
    active = float(row.get("active_s") or 0.0)
    ts = row.get("active_ts")
    if row.get("status") == "running" and isinstance(ts, (int, float)):
        active += max(0.0, now - float(ts))
    return active


def summarize_args(args: object, limit: int = 100) -> str:
    """A tool call's arguments in one line: the command or path first, the rest as k=v."""
    if not isinstance(args, dict):
        return one_line(args, limit)
    for key in ("command", "cmd", "code", "path"):
        if isinstance(args.get(key), str):
            rest = [k for k in args if k != key]
            head = one_line(args[key], limit)
            return head + (f"  (+{', '.join(rest)})" if rest else "")
    try:
        return one_line(json.dumps(args, default=str), limit)
    except (TypeError, ValueError):
        return one_line(repr(args), limit)


MAX_DETAIL_LINES = 60


def args_detail(args: object) -> str:
    """A tool call's arguments in full, for the expanded timeline entry."""
    if isinstance(args, dict):
        lines = []
        for key, value in list(args.items())[:20]:
            text = clean(value if isinstance(value, str) else json.dumps(value, default=str), 4000)
            body = text.splitlines() or [""]
            lines.append(f"{one_line(key, 30)}: {body[0]}")
            lines += [f"    {x}" for x in body[1:MAX_DETAIL_LINES]]
        return "\n".join(lines[:MAX_DETAIL_LINES])
    return clean(args, 4000)


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a run's action timeline."""

    seq: int
    ts: float
    kind: str
    label: str  # short tag shown in a fixed-width column
    text: str
    tone: str = "normal"  # normal | ok | bad | warn | operator | dim
    detail: str = ""  # what the entry shows when expanded (arguments, full output)


def entry_for(ev: Event) -> Entry | None:
    """The timeline entry of an event, or None for kinds the timeline does not show."""
    b, k = ev.body, ev.kind
    if k.startswith("operator.") and isinstance(b, OperatorData):
        who = one_line(b.operator, 40)
        reason = one_line(b.reason, 80)
        return Entry(ev.seq, ev.ts, k, k.split(".", 1)[1], f"{who}: {reason}" if reason else who,
                     "operator")
    if k not in TIMELINE_KINDS:
        return None
    if type(b) is ToolCallData:
        return Entry(ev.seq, ev.ts, k, "call", f"{one_line(b.name, 30)} {summarize_args(b.args)}",
                     detail=args_detail(b.args))
    if type(b) is ToolResultData:
        head = "ok" if b.ok else "failed"
        if b.exit_code is not None:
            head += f" exit {b.exit_code}"
        if b.duration_s is not None:
            head += f" {b.duration_s:.1f}s"
        lines = [line for line in clean(b.output, 4000).splitlines() if line.strip()]
        first = one_line(lines[0], 90) if lines else ""
        more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
        return Entry(ev.seq, ev.ts, k, "result", f"{head}  {first}{more}".rstrip(),
                     "ok" if b.ok else "bad", detail="\n".join(lines[:MAX_DETAIL_LINES]))
    if type(b) is ToolApprovalData:
        name = b.name if b.name is not None else b.id
        return Entry(ev.seq, ev.ts, k, "approval", f"{one_line(name, 40)} {b.state}", "warn")
    if type(b) is AgentStepData:
        tail = f"  ({fmt_duration(b.time_left_s)} left)" if b.time_left_s is not None else ""
        step = b.step if b.step is not None else "?"
        return Entry(ev.seq, ev.ts, k, "step", f"step {step}{tail}", "dim")
    if type(b) is AgentMessageData:
        return Entry(ev.seq, ev.ts, k, "agent", one_line(b.text, 160))
    if type(b) is AgentErrorData:
        return Entry(ev.seq, ev.ts, k, "error", f"{one_line(b.error, 60)} {one_line(b.detail, 80)}",
                     "bad")
    if type(b) is AgentSubmitData:
        return Entry(ev.seq, ev.ts, k, "submit", one_line(b.summary or b.path, 120), "ok")
    if type(b) is ControlAckData:
        why = one_line(b.reason, 80)
        text = f"{b.action} {'accepted' if b.accepted else 'refused'}"
        return Entry(ev.seq, ev.ts, k, "ack", f"{text}: {why}" if why else text,
                     "ok" if b.accepted else "bad")
    if type(b) is ScoreData:
        val = f"{b.value:.4g}" if b.value is not None else "—"
        final = " (final)" if b.final else ""
        return Entry(ev.seq, ev.ts, k, "score", f"{one_line(b.metric, 40)} = {val}{final}", "ok")
    if type(b) is IntegrityFlagData:
        return Entry(ev.seq, ev.ts, k, "flag", f"{one_line(b.check, 40)}: {one_line(b.detail, 100)}",
                     "bad")
    if type(b) is SandboxStartedData:
        iso = "isolated" if b.isolated else "NOT isolated"
        return Entry(ev.seq, ev.ts, k, "sandbox", f"{one_line(b.backend or '?', 20)} "
                     f"{one_line(b.id, 16)} ({iso})", "dim" if b.isolated else "warn")
    if type(b) is SandboxStoppedData:
        return Entry(ev.seq, ev.ts, k, "sandbox", f"stopped exit {b.exit_code} "
                     f"{one_line(b.reason, 80)}", "dim")
    if type(b) is NetRequestData:
        where = one_line(b.host or "?", 60) + (f":{b.port}" if b.port is not None else "")
        verdict = "allowed" if b.allowed else "REFUSED"
        status = f" {b.status}" if b.status is not None else ""
        size = f" {fmt_bytes(b.received_bytes)} in, {fmt_bytes(b.sent_bytes)} out" \
            if b.allowed and b.received_bytes is not None and b.sent_bytes is not None else ""
        return Entry(ev.seq, ev.ts, k, "net", f"{verdict} {one_line(b.method, 12)} {where}{status}{size}",
                     "dim" if b.allowed else "bad", detail=one_line(b.result, 40))
    if type(b) is RunWarningData:
        return Entry(ev.seq, ev.ts, k, "warning", one_line(b.message, 140), "warn")
    if type(b) is RunLimitData:
        pct = f" {b.fraction:.0%}" if b.fraction is not None else ""
        return Entry(ev.seq, ev.ts, k, "limit", f"{b.limit}{pct} {b.level}", "warn")
    if type(b) is RunHeldData:
        why = f": {one_line(b.reason, 100)}" if b.reason else ""
        return Entry(ev.seq, ev.ts, k, "run", f"{b.level} in effect{why}", "warn")
    if type(b) is RunEndedData:
        return Entry(ev.seq, ev.ts, k, "run", f"ended {b.status}: {one_line(b.reason, 100)}",
                     "ok" if b.status == "succeeded" else "bad")
    return Entry(ev.seq, ev.ts, k, "run", k.split(".", 1)[1], "dim")


def fmt_duration(seconds: object) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    s = int(max(0, seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h >= 100:  # a run left behind for days: the seconds no longer matter
        d, h = divmod(h, 24)
        return f"{d}d{h:02d}h"
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_bytes(n: object) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit in ("B", "K") else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"  # pragma: no cover - the loop returns


@dataclass
class LiveReply:
    """The model's reply while it streams: its pieces in arrival order as [part, tool, text],
    merged while the part stays the same, at most `MAX_LIVE_CHARS` kept from the end."""

    step: int | None = None
    attempt: int | None = None
    parts: deque[list[str]] = field(default_factory=deque)
    chars: int = 0
    version: int = 0  # bumped on every change, for the view
    first_ts: float | None = None  # journal time of the reply's first piece

    def add(self, b: AgentDeltaData, ts: float) -> None:
        if (b.step, b.attempt) != (self.step, self.attempt) or not self.parts:
            self.clear()  # a retried call streams its reply from the start
            self.step, self.attempt, self.first_ts = b.step, b.attempt, ts
        text = clean(b.text, MAX_LIVE_CHARS)
        tool = b.tool or ""
        if self.parts and self.parts[-1][0] == b.part and self.parts[-1][1] == tool:
            self.parts[-1][2] += text
        else:
            self.parts.append([b.part, tool, text])
        self.chars += len(text)
        while self.chars > MAX_LIVE_CHARS and self.parts:
            head = self.parts[0]
            cut = min(self.chars - MAX_LIVE_CHARS, len(head[2]))
            head[2] = head[2][cut:]
            self.chars -= cut
            if not head[2] and len(self.parts) > 1:
                self.parts.popleft()
        self.version += 1

    def clear(self) -> None:
        if self.parts or self.step is not None:
            self.parts.clear()
            self.chars = 0
            self.step = self.attempt = self.first_ts = None
            self.version += 1

    def text(self) -> str:
        """The reply so far as plain text: tool arguments after their tool's name."""
        out = []
        for part, tool, text in self.parts:
            out.append(f"{tool}({text}" if part == "tool_args" else text)
        return "".join(out)


class RunState:
    """What the run view shows for one run, every stream bounded."""

    def __init__(self, run: str, *, max_timeline: int = MAX_TIMELINE,
                 max_output: int = MAX_OUTPUT_LINES, max_points: int = MAX_POINTS) -> None:
        self.run = run
        self.timeline: deque[Entry] = deque(maxlen=max_timeline)
        self.output: deque[tuple[str, str]] = deque(maxlen=max_output)  # (stream, line)
        self.metrics: dict[str, deque[tuple[float, float]]] = {}
        self.interventions: deque[Entry] = deque(maxlen=200)
        self.metric_times: dict[str, deque[float]] = {}  # journal time of each metric point
        self.audit: deque[dict[str, Any]] = deque(maxlen=200)  # who, when, what, why, ack
        self.audit_version = 0
        self.signals = RunSignals()
        self.live = LiveReply()
        self._partial: dict[str, str] = {}  # per stream, the line still being written
        self._streamed = False  # the command running now sent its output as sandbox.output
        self._max_points = max_points
        self.last_seq = 0
        # counters the view compares against what it last drew (deques forget, counters don't)
        self.timeline_total = 0
        self.output_total = 0
        self.partial_version = 0  # bumped when a line still being written changes
        self.metrics_version = 0
        self.generation = 0  # bumped by reset(): the view redraws from scratch

    def reset(self) -> None:
        self.timeline.clear()
        self.output.clear()
        self.metrics.clear()
        self.interventions.clear()
        self.metric_times.clear()
        self.audit.clear()
        self.audit_version += 1
        self.signals = RunSignals()
        self.live.clear()
        self._partial.clear()
        self._streamed = False
        self.partial_version += 1
        self.last_seq = 0
        self.timeline_total = self.output_total = 0
        self.metrics_version += 1
        self.generation += 1

    def apply(self, ev: Event) -> bool:
        """Apply one event of this run; False when it was already applied."""
        if ev.run != self.run or ev.seq <= self.last_seq:
            return False
        self.last_seq = ev.seq
        self.signals.apply(ev)
        b = ev.body  # `type(b) is`: cheaper than an isinstance() that misses, on every event
        if type(b) is SandboxOutputData:
            self._streamed = True
            self._output(b.stream, b.text)
            return True
        if type(b) is MetricData:
            self._metric(ev, b)
            return True
        if type(b) is AgentDeltaData:
            self.live.add(b, ev.ts)
            return True
        if ev.kind in LIVE_ENDS:
            self.live.clear()
        if type(b) is ControlAckData:
            self._ack(ev, b)
        elif ev.kind.startswith("operator.") and isinstance(b, OperatorData):
            self.add_audit({"ts": ev.ts, "action": ev.kind.split(".", 1)[1],
                            "operator": b.operator, "reason": b.reason,
                            "command_id": b.command_id, "detail": b.action_args()})
        entry = entry_for(ev)
        if entry is not None:
            self.timeline.append(entry)
            self.timeline_total += 1
            if entry.tone == "operator":
                self.interventions.append(entry)
        if type(b) is ToolCallData:
            self._streamed = False
        elif type(b) is ToolResultData:
            # a command that did not stream (the local backend, an old run's record): its
            # result is the only copy of its output the operator can read
            out = clean(b.output, 4000)
            if out.strip() and not (b.streamed or self._streamed):
                for line in out.splitlines()[-20:]:
                    self._push_line("result", line)
            self._streamed = False
        return True

    def add_audit(self, record: dict[str, Any]) -> None:
        """One intervention (from an operator.* event or the journal's interventions table)."""
        cid = record.get("command_id")
        if cid and any(r.get("command_id") == cid for r in self.audit):
            return
        detail = record.get("detail")
        if isinstance(detail, str):
            try:
                detail = json.loads(detail)
            except ValueError:
                detail = {"detail": detail}
        self.audit.append({"ts": float(record.get("ts") or 0.0),
                           "operator": one_line(record.get("operator") or "?", 40),
                           "action": one_line(record.get("action") or "?", 20),
                           "reason": one_line(record.get("reason") or "", 120),
                           "command_id": cid, "detail": detail if isinstance(detail, dict) else {},
                           "ack": record.get("ack")})
        self.audit_version += 1

    def _ack(self, ev: Event, b: ControlAckData) -> None:
        cid = b.command_id
        verdict = ("accepted" if b.accepted else "refused") + (
            f": {one_line(b.reason, 80)}" if b.reason else "")
        for r in reversed(self.audit):
            if cid and r.get("command_id") == cid:
                r["ack"] = verdict
                break
        else:  # a refused command leaves no operator.* event, only its ack
            self.audit.append({"ts": ev.ts, "operator": one_line(b.operator or "?", 40),
                               "action": b.action, "reason": "",
                               "command_id": cid, "detail": {}, "ack": verdict})
        self.audit_version += 1

    def add_metric_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Metric points from the journal's `metrics` side table (backfill)."""
        for r in rows:
            step, value = r.get("step"), r.get("value")
            if isinstance(value, (int, float)):
                self._point(str(r.get("name", "?")), float(step if step is not None else r["seq"]),
                            float(value), float(r.get("ts") or 0.0))
        self.metrics_version += 1

    def _metric(self, ev: Event, b: MetricData) -> None:
        x = float(b.step) if b.step is not None else float(ev.seq)
        for name, value in list(b.values.items())[:16]:
            self._point(one_line(name, 40), x, value, ev.ts)
        self.metrics_version += 1

    def _point(self, name: str, x: float, y: float, ts: float = 0.0) -> None:
        series = self.metrics.get(name)
        if series is None:
            if len(self.metrics) >= 16:  # a run that logs hundreds of names shows the first 16
                return
            series = self.metrics[name] = deque(maxlen=self._max_points)
            self.metric_times[name] = deque(maxlen=self._max_points)
        series.append((x, y))
        self.metric_times[name].append(ts)

    def partial_lines(self) -> list[tuple[str, str]]:
        """The lines still being written (a progress bar), as (stream, text) as they show now."""
        return [(stream, text) for stream, raw in self._partial.items()
                if (text := overwrite_line(raw))]

    def _output(self, stream: str, text: str) -> None:
        # carriage returns stay until a line ends: a redraw may come in the next chunk
        s = strip_escapes(text, keep_cr=True)
        had = self._partial.pop(stream, "")
        pieces = (had + s).split("\n")
        for line in pieces[:-1]:
            self._push_line(stream, overwrite_line(line))
        tail = pieces[-1]
        if tail:
            # only the latest redraw matters; a carriage return at the end still waits
            tail = overwrite_line(tail) + ("\r" if tail.endswith("\r") else "")
            if len(tail) > MAX_LINE_CHARS:
                self._push_line(stream, tail.rstrip("\r"))
            else:
                self._partial[stream] = tail
        if tail or had:
            self.partial_version += 1

    def _push_line(self, stream: str, line: str) -> None:
        self.output.append((stream, line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + "…"))
        self.output_total += 1


@dataclass
class Gap:
    run: str
    after_seq: int  # the journal holds what comes after this


@dataclass
class FleetState:
    """Every run's row, folded from events; which rows changed since the last repaint."""

    fold: RunFold = field(default_factory=RunFold)
    changed: set[str] = field(default_factory=set)
    added: list[str] = field(default_factory=list)  # new runs since the last repaint, in order
    watched: dict[str, RunState] = field(default_factory=dict)
    pending: dict[str, dict[int, Event]] = field(default_factory=dict)
    acks: deque[Event] = field(default_factory=lambda: deque(maxlen=200))  # control.ack seen
    signals: dict[str, RunSignals] = field(default_factory=dict)
    duplicates: int = 0
    gaps: int = 0
    catching_up: set[str] = field(default_factory=set)  # runs whose missed events are on their way
    listeners: list[Callable[[Event], None]] = field(default_factory=list)  # told of each event folded in

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        return self.fold.rows

    def load_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rows read from the journal's `runs` table (backfill); newer rows replace older."""
        for row in rows:
            run = row.get("run")
            if not isinstance(run, str):
                continue
            have = self.fold.rows.get(run)
            if have is not None and int(have.get("last_seq") or 0) >= int(row.get("last_seq") or 0):
                continue
            if have is None:
                self.added.append(run)
            self.fold.load(row)
            self.changed.add(run)

    def last_seq(self, run: str) -> int:
        row = self.fold.rows.get(run)
        return int(row["last_seq"] or 0) if row else 0

    def apply(self, events: Iterable[Event]) -> list[Gap]:
        """Fold events in; return the gaps found (each wants a backfill from the journal).

        An event past a gap is held back (bounded) until the gap is filled, so the fold never
        skips a sequence number; `flush_pending` applies what is held when no backfill comes.
        """
        gaps: dict[str, Gap] = {}
        for ev in sorted(events, key=lambda e: (e.run, e.seq)):
            last = self.last_seq(ev.run)
            if ev.seq <= last:
                self.duplicates += 1
                continue
            if ev.seq > last + 1:
                held = self.pending.setdefault(ev.run, {})
                if len(held) < MAX_PENDING:
                    held[ev.seq] = ev
                if ev.run not in gaps:
                    self.gaps += 1
                    gaps[ev.run] = Gap(ev.run, last)
                continue
            self._apply_one(ev)
            self._drain(ev.run)
        return list(gaps.values())

    def _apply_one(self, ev: Event) -> None:
        new = ev.run not in self.fold.rows
        if self.fold.apply(ev) is None:
            return
        if new:
            self.added.append(ev.run)
        self.changed.add(ev.run)
        self.signals_of(ev.run).apply(ev)
        for listen in self.listeners:
            listen(ev)
        if ev.kind == "control.ack":
            self.acks.append(ev)
        rs = self.watched.get(ev.run)
        if rs is not None:
            rs.apply(ev)

    def _drain(self, run: str) -> None:
        held = self.pending.get(run)
        while held:
            nxt = held.pop(self.last_seq(run) + 1, None)
            if nxt is None:
                break
            self._apply_one(nxt)
        if held is not None and not held:
            self.pending.pop(run, None)

    def flush_pending(self, run: str) -> None:
        """Apply held-back events even across a gap the journal could not fill."""
        held = self.pending.pop(run, {})
        for seq in sorted(held):
            self._apply_one(held[seq])

    def set_catching_up(self, runs: Iterable[str]) -> bool:
        """The runs the console is repairing now; True when that changed (their rows redraw)."""
        now = set(runs)
        moved = now ^ self.catching_up
        for run in moved:
            self.signals_of(run).catching_up = run in now
            if run in self.fold.rows:
                self.changed.add(run)
        self.catching_up = now
        return bool(moved)

    def take_changes(self) -> tuple[list[str], set[str]]:
        """(runs added, runs changed) since the last call; the repaint consumes them."""
        added, changed = self.added, self.changed
        self.added, self.changed = [], set()
        return added, changed

    def signals_of(self, run: str) -> RunSignals:
        sig = self.signals.get(run)
        if sig is None:
            sig = self.signals[run] = RunSignals()
        return sig

    def watch(self, run: str) -> RunState:
        rs = self.watched.get(run)
        if rs is None:
            rs = self.watched[run] = RunState(run)
        return rs

    def unwatch(self, run: str) -> None:
        self.watched.pop(run, None)
