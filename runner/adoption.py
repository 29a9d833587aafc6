"""What a runner needs to take over a run an earlier runner left, read from the journal.

The journal holds the whole of a run's state: the agent's conversation (each step's
observation in `agent.step`, each reply in `agent.turn`, each result in `tool.result`, as
the agent saw them), the clock, usage against the limits, the operators' decisions, and how
far the sandbox's output and metrics files are journaled. `load_resume` folds a run's events
into a `RunResume`; `RunSupervisor.adopt` goes on from it.

The time budget across a runner's downtime: the sandbox kept running while no runner
watched, so downtime counts as time on the run's clock, as any other time does, unless the
clock was stopped then (the run held or frozen, or a tool call waiting for approval).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.agents.base import AgentTurn, Observation, ToolCall, ToolResult, TurnRecord
from runner.budget import RunLimits
from runner.event_data import (
    AgentStepData,
    AgentTurnData,
    Clocked,
    MetricData,
    OperatorApprovalModeData,
    OperatorApproveData,
    OperatorLimitData,
    OperatorMessageData,
    RunCreatedData,
    RunLimitData,
    SandboxOutputData,
    SandboxStartedData,
    ToolApprovalData,
    ToolCallData,
    ToolResultData,
    UsageData,
)
from runner.journal import JournalReader
from runner.tools import submission_of

PAGE = 5000
TURNS_DIR = "turns"  # beside the workspace: agent.turn payloads too large for an event


@dataclass
class CallState:
    """One tool call of a step, as far as the journal saw it."""

    call: ToolCall
    called: bool = False  # its tool.call was journaled
    approval: str | None = None  # pending | approved | rejected
    edited: dict[str, Any] | None = None  # the operator's arguments, when approved edited
    reason: str = ""  # the operator's reason, when rejected
    result: ToolResult | None = None


@dataclass
class StepState:
    step: int
    time_left_s: float
    messages: list[str]
    notices: list[str]
    turn: AgentTurn | None = None
    calls: list[CallState] = field(default_factory=list)

    @property
    def obs_without_results(self) -> Observation:
        return Observation(self.step, self.time_left_s, [], list(self.messages), list(self.notices))


@dataclass
class RunResume:
    run: str
    created: RunCreatedData
    limits: RunLimits
    approval: bool
    status: str  # the journal's status: running, held or frozen (queued: never started)
    sandbox: SandboxStartedData | None = None
    started: bool = False
    steps: list[StepState] = field(default_factory=list)
    elapsed_s: float = 0.0  # on the clock at the last event that carried it
    elapsed_ts: float = 0.0  # that event's time
    last_ts: float = 0.0  # the last event's time: when the earlier runner was last heard
    clock_stopped: bool = False  # held, frozen or waiting for approval at that moment
    tokens: int = 0
    cost: float = 0.0
    warned: set[str] = field(default_factory=set)
    metric_step: int = 0
    metrics_offset: int = 0
    job_offsets: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    messages_told: list[str] = field(default_factory=list)  # every operator message, in order
    notices_after: list[str] = field(default_factory=list)  # limit warnings since the last step
    submitted: tuple[str, str] | None = None  # (path, summary) of an accepted submission

    # -- what the supervisor asks ----------------------------------------------------------
    def turn_records(self) -> list[TurnRecord]:
        """The turns the agent finished, each with the observation it was shown."""
        out: list[TurnRecord] = []
        prev: StepState | None = None
        for st in self.steps:
            if st.turn is None:
                break
            results = [c.result for c in prev.calls if c.result is not None] if prev else []
            obs = Observation(st.step, st.time_left_s, results, list(st.messages), list(st.notices))
            out.append(TurnRecord(obs, st.turn))
            prev = st
        return out

    @property
    def last(self) -> StepState | None:
        return self.steps[-1] if self.steps else None

    def results_before(self, st: StepState) -> list[ToolResult]:
        i = self.steps.index(st)
        if i == 0:
            return []
        return [c.result for c in self.steps[i - 1].calls if c.result is not None]

    def pending_messages(self) -> list[str]:
        """Operator messages accepted but not yet shown to the agent."""
        delivered = sum(len(s.messages) for s in self.steps)
        return self.messages_told[delivered:]

    def elapsed_now(self, now: float | None = None) -> tuple[float, float, float]:
        """(elapsed on the clock now, the downtime, how much of it the clock counts)."""
        now = time.time() if now is None else now
        down = max(now - self.last_ts, 0.0)
        if self.clock_stopped or not self.started:
            return self.elapsed_s, down, 0.0
        counted = max(now - self.elapsed_ts, 0.0)
        return self.elapsed_s + counted, down, counted


def load_turn(body: AgentTurnData, turns_dir: Path) -> AgentTurn:
    """An `agent.turn` event back as the agent's turn, its calls' full arguments included."""
    calls = [ToolCall(c.id, c.name, dict(c.args)) for c in body.calls]
    state = dict(body.state)
    if body.payload:
        path = turns_dir / Path(body.payload).name
        try:
            full = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"the agent's turn {body.step} is not readable at {path}: {exc}") from None
        calls = [ToolCall(c["id"], c["name"], dict(c["args"])) for c in full["calls"]]
        state = dict(full.get("state") or {})
    return AgentTurn(calls=calls, text=body.text, done=body.done, state=state)


def load_resume(reader: JournalReader, run: str, status: str, turns_dir: Path) -> RunResume:
    """Fold a live run's events into what a new runner needs to go on with it."""
    created: RunCreatedData | None = None
    res: RunResume | None = None
    by_call: dict[str, CallState] = {}
    held = waiting = False  # the clock's stops, as the events left them
    for ev in reader.all_events(run, PAGE):
        b = ev.body
        if type(b) is RunCreatedData:
            created = b
            lim = b.limits
            res = RunResume(run=run, created=b, approval=bool(b.approval), status=status,
                            limits=RunLimits(time_s=float(lim.get("time_s", 0.0)),
                                             steps=_int(lim.get("steps")), tokens=_int(lim.get("tokens")),
                                             cost_usd=lim.get("cost_usd")))
            continue
        if res is None:
            continue
        res.last_ts = ev.ts
        if isinstance(b, Clocked) and b.elapsed_s is not None:
            res.elapsed_s, res.elapsed_ts = b.elapsed_s, ev.ts
        kind = ev.kind
        if type(b) is SandboxStartedData:
            res.sandbox = b
        elif kind == "run.started":
            res.started = True
        elif kind == "run.held":
            held = True
        elif kind == "run.resumed":
            held = False
        elif type(b) is AgentStepData:
            res.steps.append(StepState(b.step or len(res.steps) + 1, b.time_left_s or 0.0,
                                       list(b.messages), list(b.notices)))
            res.notices_after = []
        elif type(b) is AgentTurnData:
            if res.steps and res.steps[-1].step == b.step:
                st = res.steps[-1]
                st.turn = load_turn(b, turns_dir)
                st.calls = [CallState(c) for c in st.turn.calls]
                by_call.update({c.call.id: c for c in st.calls})
        elif type(b) is ToolCallData:
            cs = by_call.get(b.id)
            if cs is not None:
                cs.called = True
        elif type(b) is ToolApprovalData:
            cs = by_call.get(b.id)
            if cs is not None:
                cs.approval = b.state
            waiting = b.state == "pending"
        elif type(b) is OperatorApproveData:
            cs = by_call.get(b.call_id)
            if cs is not None and b.args is not None:
                cs.edited = dict(b.args)
        elif kind == "operator.reject":
            cs = by_call.get(str(ev.data.get("call_id", "")))
            if cs is not None:
                cs.reason = str(ev.data.get("reason") or "")
        elif type(b) is ToolResultData:
            cs = by_call.get(b.id)
            r = ToolResult(b.id, b.name, b.ok, b.output, b.exit_code, b.duration_s or 0.0,
                           _result_meta(b))
            if cs is not None:
                cs.result = r
            if b.name == "scratchpad" and b.ok and cs is not None:
                res.notes.append(str(cs.call.args.get("note", "")))
            if b.submitted and cs is not None:
                res.submitted = submission_of(cs.call)
        elif type(b) is UsageData:
            res.tokens += b.input_tokens + b.output_tokens
            res.cost += b.cost_usd or 0.0
        elif type(b) is RunLimitData:
            if b.level == "warning":
                res.warned.add(b.limit)
                res.notices_after.append(f"Warning: you have used {b.fraction:.0%} of your "
                                         f"{b.limit} limit.")
        elif type(b) is OperatorLimitData:
            value = b.value
            setattr(res.limits, b.name, int(value) if b.name in ("steps", "tokens") else value)
            res.warned.discard(b.name)
        elif type(b) is OperatorApprovalModeData:
            res.approval = b.on
        elif type(b) is OperatorMessageData:
            res.messages_told.append(b.text)
        elif type(b) is MetricData:
            if b.step is not None:
                res.metric_step = b.step
            if b.source == "file" and b.offset is not None:
                res.metrics_offset = b.offset
        elif type(b) is SandboxOutputData:
            if b.job is not None and b.offset is not None:
                res.job_offsets[b.job] = b.offset
    if res is None or created is None:
        raise ValueError(f"run {run} has no run.created event")
    res.clock_stopped = held or waiting
    return res


def _int(v: float | None) -> int | None:
    return int(v) if v is not None else None


def _result_meta(b: ToolResultData) -> dict[str, Any]:
    keys = ("error", "truncated", "timed_out", "submitted", "rejected", "edited", "clipped")
    return {k: getattr(b, k) for k in keys if getattr(b, k) is not None}
