"""The data of each event kind, as a model: what a journal row's `data` holds, kind by kind.

`EVENT_DATA` maps every kind of the contract (version `SCHEMA_VERSION`) to its model. The
models are strict: a number is a finite int or float and never a bool, a string is a string,
and an unknown key is refused, since every shape here is closed. What is open by nature (a
tool call's arguments, a scorer's details, a metric's values, a run's limits) is a mapping
inside a closed shape. Optional fields have defaults, so any event this version's emitters
wrote still validates when a journal is read back.

`runner.events.Event` validates its `data` with these once, when it is built, and keeps the
model as `Event.body`; nothing downstream re-checks a field's type.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from runner.control import (
    Action,
    ApprovalModeArgs,
    ApproveArgs,
    LimitArgs,
    LimitName,
    MessageArgs,
    RejectArgs,
    ShellArgs,
)

SCHEMA_VERSION = 1  # the contract's version: every event's `v`

EndStatus = Literal["succeeded", "failed", "killed", "limit"]  # the terminal statuses
Mapping = dict[str, Any]  # open content: its keys are the emitter's to choose


class EventData(BaseModel):
    """The data of one event kind. Closed: a key the model does not name is refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Clocked(EventData):
    """A kind that carries the run's clock: seconds on the budget so far."""

    elapsed_s: float | None = None


# -- run lifecycle ---------------------------------------------------------------------------
class RunCreatedData(EventData):
    task: str | None = None
    agent: str | None = None
    model: str | None = None
    scale: str | None = None
    limits: dict[str, float] = {}  # limit name -> its maximum (time_s, steps, tokens, cost_usd)
    runner: str | None = None
    job: str | None = None  # the job this run was created for
    approval: bool | None = None  # whether every tool call waits for an operator
    submitted_by: str | None = None
    metric: str | None = None  # the task's metric
    campaign: str | None = None  # the campaign this run is a slot of
    slot: str | None = None  # that slot: task/agent/repeat
    scaffold: str | None = None  # the agent scaffold's name (mlrb, the project's own, by default)
    thinking_tokens: int | None = None  # the run's Anthropic extended-thinking budget
    reasoning_effort: str | None = None  # the run's OpenAI reasoning effort


class RunStartedData(Clocked):
    """The agent's clock started."""


class RunHeldData(Clocked):
    level: Literal["hold", "freeze"] = "hold"
    reason: str | None = None  # set when the runner held the run itself (e.g. a full disk)


class RunResumedData(Clocked):
    """A hold or freeze ended."""


class RunAdoptedData(Clocked):
    """A runner took the run over after the one before it stopped or died."""

    runner: str = ""
    downtime_s: float | None = None  # from the last event journaled before to this one
    counted_s: float | None = None  # of that downtime, how much the run's clock counts
    resumed_call: str | None = None  # the tool call whose command was still running, followed on


class RunDetachedData(EventData):
    """The runner let go of the run, which goes on in its sandbox (`mlrb down --keep-runs`)."""

    reason: str = ""
    runner: str = ""


class RunWarningData(EventData):
    code: str = ""  # e.g. not_isolated, no_gpu; the stall alarms: stalled, gpu_idle, llm_slow
    message: str = ""
    idle_s: float | None = None  # a stall alarm: how long its condition has held


class RunLimitData(EventData):
    """A limit crossed its warning line or was reached."""

    limit: LimitName
    used: float | None = None
    max: float | None = None
    fraction: float | None = None
    level: Literal["warning", "reached"]


class RunEndedData(Clocked):
    status: EndStatus
    reason: str = ""
    steps: int | None = None


# -- the agent -------------------------------------------------------------------------------
class AgentStepData(Clocked):
    step: int | None = None
    time_left_s: float | None = None
    # delivered to the agent at this step, as it saw them (an adopted run rebuilds from these)
    messages: list[str] = []
    notices: list[str] = []


class TurnCall(EventData):
    id: str
    name: str
    args: Mapping = {}


class AgentTurnData(EventData):
    """What the agent decided at a step: its words, its calls with their full arguments, and
    what it needs to rebuild its own state (its conversation) from the journal."""

    step: int
    text: str = ""
    done: bool = False
    calls: list[TurnCall] = []
    state: Mapping = {}  # the agent's own record of the turn (e.g. the calls as sent on the wire)
    payload: str | None = None  # calls and state too large for an event: a file beside the journal


class AgentMessageData(EventData):
    role: str = "assistant"
    text: str = ""
    step: int | None = None
    code: str | None = None  # a system message's reason, e.g. history_trimmed
    elided: int | None = None  # history_trimmed: outputs and arguments replaced by stubs
    dropped: int | None = None  # history_trimmed: whole exchanges removed
    truncated: int | None = None  # history_trimmed: outputs of the newest exchange cut


class AgentErrorData(EventData):
    error: str = ""
    detail: str = ""
    attempt: int | None = None
    retrying: bool | None = None
    status: int | None = None  # the provider's HTTP status
    step: int | None = None
    retry_after_s: float | None = None
    call_id: str | None = None  # a tool call the provider sent malformed
    tool: str | None = None


class AgentDeltaData(EventData):
    """A piece of the model's reply as it streams in, coalesced (a few a second at most)."""

    step: int | None = None
    part: Literal["text", "thinking", "tool_args"] = "text"
    text: str = ""
    tool: str | None = None  # tool_args: the tool whose arguments these are
    attempt: int | None = None  # the call's attempt; a retried stream starts over


class AgentSubmitData(EventData):
    path: str = ""
    summary: str = ""


# -- tools -----------------------------------------------------------------------------------
class ToolCallData(EventData):
    id: str
    name: str
    args: Mapping = {}


class ToolResultData(EventData):
    id: str
    name: str
    ok: bool
    output: str = ""
    exit_code: int | None = None
    duration_s: float | None = None
    # what the tool layer says about the result
    error: str | None = None
    truncated: bool | None = None
    timed_out: bool | None = None
    submitted: bool | None = None
    rejected: bool | None = None  # by an operator
    edited: bool | None = None  # run with an operator's edited arguments
    streamed: bool | None = None  # the output already came as sandbox.output
    clipped: bool | None = None  # the output was longer than an event holds (what the agent saw, too)


class ToolApprovalData(EventData):
    id: str
    state: Literal["pending", "approved", "rejected"]
    name: str | None = None
    edited: bool | None = None


# -- the sandbox -----------------------------------------------------------------------------
class SandboxStartedData(EventData):
    backend: str = ""
    id: str = ""
    image: str | None = None
    isolated: bool = False
    limits: dict[str, float] = {}  # cpus, memory_gb, gpus
    gpu_ids: list[int] = []  # the devices the runner's allocator assigned


class SandboxOutputData(EventData):
    stream: Literal["stdout", "stderr"] = "stdout"
    text: str = ""
    job: str | None = None  # the job (runner.jobs) this output came from
    offset: int | None = None  # how far into that job's output file this chunk reaches


class SandboxStoppedData(EventData):
    exit_code: int | None = None
    reason: str = ""


class NetRequestData(EventData):
    """One request through an allowlist run's egress proxy, as the proxy logged it."""

    method: str = ""
    host: str = ""
    port: int | None = None
    status: int | None = None  # the HTTP status the sandbox got; 403 when refused
    allowed: bool = False
    result: str = ""  # the proxy's verdict, e.g. TCP_TUNNEL, TCP_MISS, TCP_DENIED
    sent_bytes: int | None = None  # from the sandbox
    received_bytes: int | None = None  # to the sandbox
    duration_ms: int | None = None


# -- telemetry -------------------------------------------------------------------------------
class MetricData(EventData):
    step: int | None = None
    values: dict[str, float] = {}  # metric name -> value
    source: str | None = None  # stdout | file
    offset: int | None = None  # a file metric: where the file's next line starts


class GpuData(EventData):
    device: int | None = None
    util: float | None = None  # percent
    mem_used: int | None = None  # bytes
    mem_total: int | None = None
    power_w: float | None = None
    temp_c: float | None = None
    proc_mem: int | None = None  # bytes the run's own processes hold on the device


class ResourceData(Clocked):
    cpu_pct: float | None = None  # percent of one core
    mem_bytes: int | None = None
    mem_limit: int | None = None
    cpu_limit: float | None = None  # cores
    pids: int | None = None


class UsageData(EventData):
    model: str = ""
    provider: str | None = None
    input_tokens: int = 0  # every prompt token, cached or not
    output_tokens: int = 0
    cost_usd: float | None = 0.0  # at cache prices; None (null) when the model has no price
    priced: bool | None = None  # whether the model has a price
    cache_write_tokens: int | None = None  # of input_tokens, written to the provider's cache
    cache_read_tokens: int | None = None  # of input_tokens, read from it
    cache_ttl: Literal["5m", "1h"] | None = None  # the lifetime asked of what was written
    latency_s: float | None = None
    stop_reason: str | None = None


# -- operators -------------------------------------------------------------------------------
class OperatorData(EventData):
    """Who did what and why; the action's own args follow, as the command carried them."""

    operator: str
    reason: str = ""
    command_id: str = ""
    ts_sent: float | None = None

    def action_args(self) -> dict[str, Any]:
        """The action's args as given (what the record's `detail` holds)."""
        return self.model_dump(mode="json", exclude_unset=True,
                               exclude={"operator", "reason", "command_id", "ts_sent"})


class OperatorMessageData(MessageArgs, OperatorData):
    """operator.message: the text delivered at the agent's next turn."""


class OperatorApproveData(ApproveArgs, OperatorData):
    """operator.approve: the call approved, and the edited args it runs with, if any."""


class OperatorRejectData(RejectArgs, OperatorData):
    """operator.reject: the call refused (the reason is what the agent sees)."""


class OperatorApprovalModeData(ApprovalModeArgs, OperatorData):
    """operator.approval_mode: whether tool calls now wait for an operator."""


class OperatorLimitData(LimitArgs, OperatorData):
    """operator.limit: a limit set to a new value."""


class OperatorShellData(ShellArgs, OperatorData):
    """operator.shell: an operator's shell in the sandbox began or ended."""


class ControlAckData(EventData):
    command_id: str = ""
    action: Action
    accepted: bool
    reason: str = ""
    operator: str | None = None


# -- results ---------------------------------------------------------------------------------
class ScoreData(EventData):
    metric: str = ""
    value: float | None = None
    metrics: Mapping = {}
    details: Mapping = {}
    error: str | None = None
    final: bool = False


class IntegrityFlagData(EventData):
    check: str = ""
    severity: str = "warning"
    detail: str = ""


# -- notifications ---------------------------------------------------------------------------
class NotifySentData(EventData):
    """A notification sent about this run (runner.notify): where, for what, and how it went."""

    channel: str  # the Apprise target, its secrets masked
    kind: Literal["approval", "ended", "limit", "stall", "integrity", "broker"]
    result: Literal["ok", "failed"]
    error: str | None = None
    title: str = ""
    trigger_seq: int | None = None  # the event of this run that raised it
    digest: int | None = None  # sent in a digest of this many notifications


# The closed, versioned list of kinds and the model of each one's data. Adding a kind, or a
# field, is a contract change.
EVENT_DATA: dict[str, type[EventData]] = {
    "run.created": RunCreatedData,
    "run.started": RunStartedData,
    "run.held": RunHeldData,
    "run.resumed": RunResumedData,
    "run.warning": RunWarningData,
    "run.adopted": RunAdoptedData,
    "run.detached": RunDetachedData,
    "run.limit": RunLimitData,
    "run.ended": RunEndedData,
    "agent.step": AgentStepData,
    "agent.turn": AgentTurnData,
    "agent.message": AgentMessageData,
    "agent.error": AgentErrorData,
    "agent.delta": AgentDeltaData,
    "agent.submit": AgentSubmitData,
    "tool.call": ToolCallData,
    "tool.result": ToolResultData,
    "tool.approval": ToolApprovalData,
    "sandbox.started": SandboxStartedData,
    "sandbox.output": SandboxOutputData,
    "sandbox.stopped": SandboxStoppedData,
    "net.request": NetRequestData,
    "metric": MetricData,
    "gpu": GpuData,
    "resource": ResourceData,
    "usage": UsageData,
    "operator.hold": OperatorData,
    "operator.freeze": OperatorData,
    "operator.resume": OperatorData,
    "operator.kill": OperatorData,
    "operator.message": OperatorMessageData,
    "operator.approve": OperatorApproveData,
    "operator.reject": OperatorRejectData,
    "operator.approval_mode": OperatorApprovalModeData,
    "operator.limit": OperatorLimitData,
    "operator.shell": OperatorShellData,
    "operator.score": OperatorData,
    "control.ack": ControlAckData,
    "score": ScoreData,
    "integrity.flag": IntegrityFlagData,
    "notify.sent": NotifySentData,
}

CLOCKED_KINDS: frozenset[str] = frozenset(k for k, m in EVENT_DATA.items() if issubclass(m, Clocked))


def event_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each kind's data, for `mlrb schema`."""
    return {kind: model.model_json_schema() for kind, model in sorted(EVENT_DATA.items())}
