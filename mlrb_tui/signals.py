"""What the operator must notice about a run besides its row: tool calls waiting for approval,
limit warnings, stall alarms, the approval mode, whether the console is still catching up on
its events, and a short telemetry history drawn as sparklines.

Textual-free and bounded: the fleet keeps one `RunSignals` per run, the run view one more.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, TypeGuard

from runner.event_data import (
    GpuData,
    OperatorApprovalModeData,
    OperatorLimitData,
    ResourceData,
    RunCreatedData,
    RunEndedData,
    RunLimitData,
    RunWarningData,
    ToolApprovalData,
    ToolCallData,
    ToolResultData,
)
from runner.events import Event
from runner.stall_watch import ALARM_CODES, IDLE_UTIL_PCT, QUIET_KINDS

HISTORY = 60  # telemetry samples kept per series (a minute at 1 Hz)
RECENT_CALLS = 32  # tool calls remembered per run, to find an approval's arguments
MAX_PENDING = 64
SPARK = "▁▂▃▄▅▆▇█"
ALARM_MARKS = {"stalled": "stall", "gpu_idle": "idle", "llm_slow": "llm"}  # in the flags cell
CATCHING_UP = "↻catching up"  # in the flags cell while a gap in the run's events is repaired
LLM_DONE = frozenset({"agent.step", "agent.message", "agent.error", "usage", "tool.call"})


def sparkline(values: list[float], width: int = 12, top: float | None = None) -> str:
    """The last `width` values as block characters, scaled to `top` (else the max seen)."""
    vals = values[-width:]
    if not vals:
        return ""
    hi = top if top else max(vals)
    if hi <= 0:
        return SPARK[0] * len(vals)
    out = []
    for v in vals:
        i = int(round(max(0.0, min(1.0, v / hi)) * (len(SPARK) - 1)))
        out.append(SPARK[i])
    return "".join(out)


@dataclass(frozen=True, slots=True)
class PendingCall:
    """A tool call the agent is blocked on until an operator approves or rejects it."""

    call_id: str
    name: str
    args: Any
    ts: float
    seq: int

    def args_json(self) -> str:
        try:
            return json.dumps(self.args, indent=2, sort_keys=True, default=str)
        except (TypeError, ValueError):
            return json.dumps(str(self.args))


class RunSignals:
    """Folded from one run's events, in order; every collection bounded."""

    def __init__(self, history: int = HISTORY) -> None:
        self.cpu: deque[float] = deque(maxlen=history)  # percent of one core
        self.mem: deque[float] = deque(maxlen=history)  # bytes
        self.gpu: deque[float] = deque(maxlen=history)  # util percent
        self.cpu_limit: float | None = None
        self.mem_limit: float | None = None
        self.approval_mode: bool | None = None  # None: not known from what was seen
        self.pending: OrderedDict[str, PendingCall] = OrderedDict()
        self.limit_warnings: dict[str, float] = {}  # limit name -> fraction used
        self.alarms: dict[str, float | None] = {}  # active stall alarm code -> seconds it held
        # set by the fleet, not folded: the console misses some of this run's events for now
        self.catching_up = False
        self._calls: OrderedDict[str, tuple[str, Any]] = OrderedDict()

    def apply(self, ev: Event) -> None:
        b = ev.body  # `type(b) is`: cheaper than an isinstance() that misses, on every event
        if self.alarms and ev.kind not in QUIET_KINDS:
            self._clear_alarms(ev.kind)
        if type(b) is ResourceData:
            if b.cpu_pct is not None:
                self.cpu.append(b.cpu_pct)
            if b.mem_bytes is not None:
                self.mem.append(float(b.mem_bytes))
            if b.cpu_limit is not None:
                self.cpu_limit = b.cpu_limit
            if b.mem_limit is not None:
                self.mem_limit = float(b.mem_limit)
        elif type(b) is GpuData:
            if b.util is not None:
                self.gpu.append(b.util)
                if b.util >= IDLE_UTIL_PCT:
                    self.alarms.pop("gpu_idle", None)
        elif type(b) is RunCreatedData:
            if b.approval is not None:
                self.approval_mode = b.approval
        elif type(b) is OperatorApprovalModeData:
            self.approval_mode = b.on
            if not self.approval_mode:
                self.pending.clear()  # the runner lets every waiting call through
        elif type(b) is ToolCallData:
            call_id = b.id[:80]
            if call_id:
                self._calls[call_id] = ((b.name or "?")[:80], b.args)
                while len(self._calls) > RECENT_CALLS:
                    self._calls.popitem(last=False)
        elif type(b) is ToolApprovalData:
            call_id = b.id[:80]
            if b.state == "pending" and call_id:
                self.approval_mode = True
                name, args = self._calls.get(call_id, ((b.name or "?")[:80], {}))
                self.pending[call_id] = PendingCall(call_id, name, args, ev.ts, ev.seq)
                while len(self.pending) > MAX_PENDING:
                    self.pending.popitem(last=False)
            else:
                self.pending.pop(call_id, None)
        elif type(b) is ToolResultData:
            self.pending.pop(b.id, None)
        elif type(b) is RunLimitData:
            if b.level == "warning" and b.fraction is not None:
                self.limit_warnings[b.limit] = b.fraction
        elif type(b) is OperatorLimitData:
            self.limit_warnings.pop(b.name, None)  # a new limit, a fresh warning
        elif type(b) is RunWarningData:
            if b.code in ALARM_CODES:
                self.alarms[b.code] = b.idle_s
        elif type(b) is RunEndedData:
            self.pending.clear()

    def _clear_alarms(self, kind: str) -> None:
        """An event that ends an alarm's condition: any activity ends a stall, and so on."""
        self.alarms.pop("stalled", None)
        if kind == "tool.result":
            self.alarms.pop("gpu_idle", None)
        if kind in LLM_DONE:
            self.alarms.pop("llm_slow", None)
        if kind in ("run.held", "run.ended"):
            self.alarms.clear()  # a stopped run raises no alarm

    def alarm_text(self) -> str:
        """'stall idle' for the active stall alarms; '' when none."""
        return " ".join(ALARM_MARKS[c] for c in ALARM_CODES if c in self.alarms)

    def warning_text(self) -> str:
        """'time_s 82%' for the worst limit past its warning line; '' when none."""
        if not self.limit_warnings:
            return ""
        name, frac = max(self.limit_warnings.items(), key=lambda kv: kv[1])
        return f"{name} {frac:.0%}"


def is_number(x: object) -> TypeGuard[int | float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
