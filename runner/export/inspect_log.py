"""A run as an Inspect eval log (UK AISI's `inspect_ai` log format, version 2), as JSON.

The log is written by its documented schema (`inspect_ai.log.EvalLog`) without importing
Inspect: the task is the eval's task, the agent's model its model, and the run its one
sample. The agent's turns are assistant messages with their tool calls, each tool result a
tool message; the same facts are the sample's events (model, tool, approval, score, limit,
error, and info for the rest), timed as journaled. The final score is the sample's score and
the eval's result; usage is model usage; the run's end status is the log's status.

Inspect lists a directory's `.json` logs by a name that starts with an ISO timestamp, so
`inspect_file_name` gives the name `inspect view --log-dir` finds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from runner.escapes import strip_escapes
from runner.event_data import (
    AgentMessageData,
    AgentStepData,
    AgentTurnData,
    OperatorData,
    RunEndedData,
    RunLimitData,
    RunStartedData,
    ScoreData,
    ToolApprovalData,
    ToolCallData,
    ToolResultData,
    UsageData,
)
from runner.events import Event
from runner.export.record import RunRecord, iso

LOG_VERSION = 2
# the run's end status as the eval's: a run that reached a limit ended as it should, with the
# sample's `limit` saying which
EVAL_STATUS = {"succeeded": "success", "limit": "success", "failed": "error",
               "killed": "cancelled"}
# our limits as Inspect's sample limit types; the run's clock stops while held, as working time
LIMIT_TYPES = {"time_s": "working", "steps": "turn", "tokens": "token", "cost_usd": "cost"}
# event kinds that are telemetry or repeat another event: the log leaves them out
_SKIPPED = frozenset({"metric", "gpu", "resource", "agent.delta", "sandbox.output",
                      "net.request", "agent.message", "usage"})


def model_name(provider: str | None, model: str | None) -> str:
    """Inspect names a model `provider/model`; a scripted agent is its own provider."""
    provider = provider or "mlrb"
    return f"{provider}/{model}" if model else provider


def task_prompt(task: str | None, scale: str | None) -> str:
    """What the agent was told, from the task's bundle ('' when the bundle is not here)."""
    if not task:
        return ""
    from tasks.api import load_task

    try:
        return load_task(task).prompt(scale or "smoke")
    except (ValueError, OSError, KeyError):
        return ""


def inspect_file_name(record: RunRecord) -> str:
    """`<created>_<task>_<run>.json`: the name Inspect's log listing picks up."""
    stamp = iso(record.t0)[:19].replace(":", "-")
    # Inspect reads `_` as the separator of the name's parts
    task = (record.created.task or "run").replace("_", "-")
    return f"{stamp}+00-00_{task}_{record.run.replace('_', '-')}.json"


class _Usage:
    """Token and cost totals in Inspect's ModelUsage shape, per model."""

    def __init__(self) -> None:
        self.by_model: dict[str, dict[str, Any]] = {}

    @staticmethod
    def of(u: UsageData) -> dict[str, Any]:
        # Inspect counts cache reads and writes apart from input_tokens; ours includes them
        write, read = u.cache_write_tokens or 0, u.cache_read_tokens or 0
        out: dict[str, Any] = {"input_tokens": max(u.input_tokens - write - read, 0),
                               "output_tokens": u.output_tokens,
                               "total_tokens": u.input_tokens + u.output_tokens}
        if u.cache_write_tokens is not None:
            out["input_tokens_cache_write"] = write
        if u.cache_read_tokens is not None:
            out["input_tokens_cache_read"] = read
        if u.cost_usd is not None:
            out["total_cost"] = u.cost_usd
        return out

    def add(self, name: str, u: UsageData) -> dict[str, Any]:
        one = self.of(u)
        acc = self.by_model.setdefault(name, {"input_tokens": 0, "output_tokens": 0,
                                              "total_tokens": 0})
        for key, value in one.items():
            acc[key] = round((acc.get(key) or 0) + value, 8)
        return one


class _Builder:
    """Folds the run's events into the sample's messages and events."""

    def __init__(self, record: RunRecord, model: str, prompt: str) -> None:
        self.record = record
        self.run = record.run
        self.model = model
        self.messages: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.usage = _Usage()
        self.calls: dict[str, tuple[Event, ToolCallData]] = {}
        self.call_args: dict[str, dict[str, Any]] = {}
        self.approvals: dict[str, ToolApprovalData] = {}
        self.results: set[str] = set()  # the calls answered
        self.pending_usage: tuple[Event, UsageData] | None = None
        self.started: float | None = None
        self.ended: RunEndedData | None = None
        self.ended_ts: float | None = None
        self.score: tuple[Event, ScoreData] | None = None
        self.limit: RunLimitData | None = None
        self.turns = 0
        self.last_assistant: dict[str, Any] | None = None
        first = self.t0 = record.t0
        if prompt:
            self.messages.append({"id": f"{self.run}-input", "content": prompt, "source": "input",
                                  "role": "user"})
        self._event(first, "sample_init", sample={"id": self.run, "input": prompt, "target": ""},
                    state={"messages": list(self.messages)}, seq=0)

    # -- the pieces ------------------------------------------------------------------------
    def _event(self, ts: float, name: str, seq: int, **fields: Any) -> dict[str, Any]:
        ev = {"uuid": f"{self.run}-{seq}-{name}", "timestamp": iso(ts),
              "working_start": round(max(ts - self.t0, 0.0), 6), "event": name, **fields}
        self.events.append(ev)
        return ev

    def _info(self, ev: Event, data: dict[str, Any], source: str = "mlrb") -> None:
        self._event(ev.ts, "info", ev.seq, source=source,
                    data=_clean({"kind": ev.kind, **data}))

    def _message(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.messages.append(msg)
        return msg

    # -- the fold --------------------------------------------------------------------------
    def feed(self, events: Iterable[Event]) -> None:
        """Fold the events; `events` is read twice."""
        # a turn comes before its calls' own events, which hold the full arguments
        self.call_args = {e.body.id: dict(e.body.args) for e in events
                          if isinstance(e.body, ToolCallData)}
        for ev in events:
            match ev.body:
                case ToolCallData() as call:
                    self.calls[call.id] = (ev, call)
                case UsageData() as usage:
                    self.pending_usage = (ev, usage)  # the next turn's
                case AgentMessageData(role="system"):
                    self._info(ev, ev.data)  # the runner's word to the agent, e.g. history trimmed
                case _ if ev.kind in _SKIPPED:
                    pass
                case RunStartedData():
                    self.started = self.started or ev.ts
                    self._info(ev, ev.data)
                case AgentStepData() as step:
                    self._step(ev, step)
                case AgentTurnData() as turn:
                    self._turn(ev, turn)
                case ToolResultData() as result:
                    self.results.add(result.id)
                    self._result(ev, result)
                case ToolApprovalData() as approval:
                    self.approvals[approval.id] = approval
                    self._info(ev, ev.data)
                case ScoreData() as score:
                    self._score(ev, score)
                case RunLimitData() as limit:
                    self._limit(ev, limit)
                case RunEndedData() as end:
                    self._unanswered(ev)
                    self.ended, self.ended_ts = end, ev.ts
                    if end.status == "failed":
                        self._event(ev.ts, "error", ev.seq, error=_error(end.reason))
                    else:
                        self._info(ev, ev.data)
                case OperatorData() as op if ev.kind in ("operator.approve", "operator.reject"):
                    self._approval(ev, op)
                case OperatorData() as op:
                    self._info(ev, {"operator": op.operator, "reason": op.reason,
                                    **op.action_args()}, source="operator")
                case _:  # warnings, holds, adoption, agent errors, integrity flags, acks...
                    self._info(ev, ev.data)

    def _unanswered(self, end: Event) -> None:
        """A call the run ended during: its tool event, failed as cancelled, and no result."""
        for call_id, (ev, call) in self.calls.items():
            if call_id in self.results:
                continue
            self.results.add(call_id)
            error = {"type": "cancelled", "message": "the run ended before the call returned"}
            self._event(ev.ts, "tool", ev.seq, type="function", id=call_id, function=call.name,
                        arguments=self.call_args.get(call_id, {}), result="", events=[],
                        completed=iso(end.ts), error=error, failed=True)

    def _step(self, ev: Event, body: AgentStepData) -> None:
        for text in body.messages:
            self._message({"id": f"{self.run}-{ev.seq}-m{len(self.messages)}",
                           "content": strip_escapes(text), "source": "operator", "role": "user"})
        if body.notices:
            self._message({"id": f"{self.run}-{ev.seq}-n", "role": "user",
                           "content": "\n".join(strip_escapes(n) for n in body.notices)})

    def _turn(self, ev: Event, body: AgentTurnData) -> None:
        self.turns += 1
        before = len(self.messages)
        calls = [{"id": c.id, "function": c.name,
                  "arguments": self.call_args.get(c.id, dict(c.args)), "type": "function"}
                 for c in body.calls]
        msg: dict[str, Any] = {"id": f"{self.run}-{ev.seq}", "content": strip_escapes(body.text),
                               "source": "generate", "role": "assistant", "model": self.model}
        if calls:
            msg["tool_calls"] = calls
        self._message(msg)
        self.last_assistant = msg
        output: dict[str, Any] = {
            "model": self.model,
            "choices": [{"message": msg, "stop_reason": "tool_calls" if calls else "stop"}],
            "completion": msg["content"]}
        fields: dict[str, Any] = {}
        if self.pending_usage is not None:
            uev, usage = self.pending_usage
            output["usage"] = self.usage.add(model_name(usage.provider, usage.model), usage)
            if usage.latency_s is not None:
                output["time"] = usage.latency_s
                fields["working_time"] = usage.latency_s
            fields["completed"] = iso(uev.ts)
            self.pending_usage = None
        self._event(ev.ts, "model", ev.seq, model=self.model, input=[],
                    input_refs=[[0, before]], tools=[], tool_choice="auto", config={},
                    output=output, **fields)

    def _result(self, ev: Event, body: ToolResultData) -> None:
        call = self.calls.get(body.id)
        start = call[0].ts if call else ev.ts
        args = self.call_args.get(body.id, {})
        output = strip_escapes(body.output)
        error = None if body.ok else _tool_error(body)
        msg: dict[str, Any] = {"id": f"{self.run}-{ev.seq}", "content": output, "role": "tool",
                               "tool_call_id": body.id, "function": body.name}
        if error:
            msg["error"] = error
        self._message(msg)
        fields: dict[str, Any] = {"completed": iso(ev.ts), "message_id": msg["id"]}
        if body.duration_s is not None:
            fields["working_time"] = body.duration_s
        if error:
            fields["error"] = error
        self._event(start, "tool", ev.seq, type="function", id=body.id, function=body.name,
                    arguments=args, result=output, events=[], **fields)

    def _approval(self, ev: Event, body: OperatorData) -> None:
        args = body.action_args()
        call_id = str(args.get("call_id") or args.get("id") or "")
        name = self.approvals[call_id].name if call_id in self.approvals else None
        if name is None and call_id in self.calls:
            name = self.calls[call_id][1].name
        call = {"id": call_id, "function": name or "?", "arguments": self.call_args.get(call_id, {}),
                "type": "function"}
        fields: dict[str, Any] = {"message": body.reason, "call": call,
                                  "approver": body.operator}
        edited = args.get("args")
        if ev.kind == "operator.reject":
            fields["decision"] = "reject"
        elif isinstance(edited, dict):
            fields["decision"] = "modify"
            fields["modified"] = {**call, "arguments": edited}
        else:
            fields["decision"] = "approve"
        if body.reason:
            fields["explanation"] = body.reason
        self._event(ev.ts, "approval", ev.seq, **fields)

    def _score(self, ev: Event, body: ScoreData) -> None:
        if body.final or self.score is None:
            self.score = (ev, body)
        self._event(ev.ts, "score", ev.seq, score=_score(body), target="",
                    intermediate=not body.final, scorer=body.metric or "score")

    def _limit(self, ev: Event, body: RunLimitData) -> None:
        if body.level != "reached":
            self._info(ev, ev.data)
            return
        self.limit = body
        fields: dict[str, Any] = {"type": LIMIT_TYPES[body.limit],
                                  "message": f"{body.limit} limit reached"}
        if body.max is not None:
            fields["limit"] = body.max
        self._event(ev.ts, "sample_limit", ev.seq, **fields)


def _clean(value: Any) -> Any:
    """Untrusted text without its terminal escapes, all the way down."""
    if isinstance(value, str):
        return strip_escapes(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _error(message: str) -> dict[str, str]:
    return {"message": strip_escapes(message) or "the run failed", "traceback": "",
            "traceback_ansi": ""}


def _tool_error(body: ToolResultData) -> dict[str, str]:
    kind = ("timeout" if body.timed_out else "approval" if body.rejected
            else "parsing" if body.error and "argument" in body.error else "unknown")
    message = body.error or (f"exit code {body.exit_code}" if body.exit_code is not None
                             else "the tool call failed")
    return {"type": kind, "message": strip_escapes(message)}


def _score(body: ScoreData) -> dict[str, Any]:
    """The score in Inspect's shape; a run the scorer could not score is `unscored` (NaN)."""
    meta: dict[str, Any] = {}
    if body.metrics:
        meta["metrics"] = _clean(body.metrics)
    if body.details:
        meta["details"] = _clean(body.details)
    out: dict[str, Any] = {"value": body.value if body.value is not None else math.nan}
    if body.error:
        out["explanation"] = strip_escapes(body.error)
        if body.value is None:
            out["reason"] = "scoring_failed"
    if meta:
        out["metadata"] = meta
    return out


def _metrics(body: ScoreData) -> dict[str, dict[str, Any]]:
    name = body.metric or "score"
    out: dict[str, dict[str, Any]] = {}
    if body.value is not None:
        out[name] = {"name": name, "value": body.value, "params": {}}
    for key, value in body.metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out.setdefault(key, {"name": key, "value": value, "params": {}})
    return out


def eval_log(record: RunRecord, prompt: str | None = None) -> dict[str, Any]:
    """The run as an EvalLog (a JSON-ready dict). `prompt` is the sample's input; by default
    the task's prompt from its bundle."""
    c = record.created
    model = model_name(c.agent, c.model)
    if prompt is None:
        prompt = task_prompt(c.task, c.scale)
    b = _Builder(record, model, prompt)
    b.feed(record.events)
    status = record.status
    eval_status = EVAL_STATUS.get(status, "started")
    created_ts = record.t0
    limits = c.limits
    config: dict[str, Any] = {"epochs": 1}
    for ours, theirs in (("time_s", "working_limit"), ("steps", "turn_limit"),
                         ("tokens", "token_limit")):
        if ours in limits:
            config[theirs] = int(limits[ours])
    if "cost_usd" in limits:
        config["cost_limit"] = limits["cost_usd"]
    solver_args = {k: v for k, v in (("thinking_tokens", c.thinking_tokens),
                                     ("reasoning_effort", c.reasoning_effort),
                                     ("approval", c.approval)) if v is not None}
    scaffold = c.scaffold or "mlrb"
    meta = {k: v for k, v in {"runner": c.runner, "scale": c.scale, "agent": c.agent,
                              "campaign": c.campaign, "slot": c.slot, "job": c.job,
                              "submitted_by": c.submitted_by, "status": status,
                              "reason": record.row.get("reason"),
                              "limits": dict(limits)}.items() if v not in (None, "")}
    task = c.task or str(record.row.get("task") or "unknown")
    spec: dict[str, Any] = {
        "eval_id": f"mlrb-{record.run}", "run_id": record.run, "created": iso(created_ts),
        "task": task, "task_id": record.run, "task_version": 0,
        "task_display_name": task, "task_attribs": {}, "task_args": {}, "task_args_passed": {},
        "solver": scaffold, "solver_args": solver_args, "solver_args_passed": solver_args,
        "dataset": {"name": "mlrb", "samples": 1, "sample_ids": [record.run], "shuffled": False},
        "model": model, "model_generate_config": {}, "model_args": {},
        "config": config, "packages": {}, "metadata": meta,
    }
    scores: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    if b.score is not None:
        _, sd = b.score
        name = sd.metric or "score"
        scores = {name: _score(sd)}
        scored = sd.value is not None
        results = {"total_samples": 1, "completed_samples": 1 if record.status in EVAL_STATUS else 0,
                   "scores": [{"name": name, "scorer": name, "scored_samples": int(scored),
                               "unscored_samples": int(not scored), "params": {},
                               "metrics": _metrics(sd)}]}
        if scored:
            results["headline"] = {"scorer": name, "score": name, "metric": name}
        spec["scorers"] = [{"name": name, "options": {}, "metrics": [], "metadata": {}}]
    elif eval_status != "started":
        results = {"total_samples": 1, "completed_samples": 1, "scores": []}
    started_at = iso(b.started or created_ts)
    completed_at = iso(b.ended_ts) if b.ended_ts else ""
    output: dict[str, Any] = {"model": model, "choices": [], "completion": ""}
    if b.last_assistant is not None:
        output = {"model": model, "completion": b.last_assistant["content"],
                  "choices": [{"message": b.last_assistant, "stop_reason": "stop"}]}
    sample: dict[str, Any] = {
        "id": record.run, "epoch": 1, "input": prompt, "target": "",
        "messages": b.messages, "output": output, "scores": scores,
        "metadata": meta, "store": {}, "events": b.events,
        "events_data": {"messages": b.messages, "calls": []},
        "model_usage": b.usage.by_model, "role_usage": {},
        "started_at": started_at, "uuid": f"mlrb-{record.run}", "turn_count": b.turns,
        "attachments": {},
    }
    if completed_at:
        sample["completed_at"] = completed_at
        sample["total_time"] = round(b.ended_ts - (b.started or created_ts), 3) if b.ended_ts else None
    if b.ended is not None and b.ended.elapsed_s is not None:
        sample["working_time"] = b.ended.elapsed_s
    if "time_s" in limits:
        sample["time_limit"] = int(limits["time_s"])
    if "tokens" in limits:
        sample["token_limit"] = int(limits["tokens"])
    if b.ended is not None and b.ended.status == "failed":
        sample["error"] = _error(b.ended.reason)
    if status == "limit" and b.limit is not None:
        lim: dict[str, Any] = {"type": LIMIT_TYPES[b.limit.limit],
                               "limit": b.limit.max if b.limit.max is not None else 0.0,
                               "reason": f"{b.limit.limit} limit reached"}
        sample["limit"] = lim
    log: dict[str, Any] = {
        "version": LOG_VERSION, "status": eval_status, "eval": spec,
        "plan": {"name": "plan", "steps": [{"solver": scaffold, "params": solver_args}],
                 "config": {}},
        "results": results,
        "stats": {"started_at": started_at, "completed_at": completed_at,
                  "model_usage": b.usage.by_model, "role_usage": {}},
        "samples": [sample],
    }
    if "error" in sample:
        log["error"] = sample["error"]
    return log


def eval_log_json(record: RunRecord, prompt: str | None = None) -> str:
    """The eval log as JSON text; an unscored score is NaN, as Inspect writes it."""
    return json.dumps(eval_log(record, prompt), indent=1, allow_nan=True)
