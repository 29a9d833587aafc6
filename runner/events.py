"""The event contract: every fact about a run is an Event(v, run, seq, ts, kind, data).

`seq` is per run, starts at 1 and is gapless; `(run, seq)` is the primary key everywhere,
so a re-sent event is a no-op and a gap is detectable. Events enter from untrusted places
(MQTT payloads, files written by sandboxes), so everything that builds an Event from
outside goes through `parse_event`, which raises `EventError` with a short reason code.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1

# The closed, versioned list of kinds (version 1). Adding a kind is a contract change.
KINDS: frozenset[str] = frozenset(
    {
        # run lifecycle
        "run.created",  # data: task, agent, model, scale, limits, runner, job
        "run.started",
        "run.held",  # data: level ("hold" | "freeze")
        "run.resumed",
        "run.warning",  # data: message, code
        "run.limit",  # data: limit, used, fraction (a limit crossed 80% or 100%)
        "run.ended",  # data: status, reason
        # the agent
        "agent.step",  # data: step, time_left_s
        "agent.message",  # data: role, text
        "agent.error",  # data: error, detail
        "agent.submit",  # data: path, summary
        # tools
        "tool.call",  # data: id, name, args
        "tool.result",  # data: id, name, ok, output, exit_code, duration_s
        "tool.approval",  # data: id, state ("pending" | "approved" | "rejected")
        # the sandbox
        "sandbox.started",  # data: backend, id, image, isolated, limits
        "sandbox.output",  # data: stream, text
        "sandbox.stopped",  # data: exit_code, reason
        # telemetry
        "metric",  # data: step, values {name: number}, source
        "gpu",  # data: device, util, mem_used, mem_total, power_w, temp_c, proc_mem (the run's own)
        "resource",  # data: cpu_pct, mem_bytes, mem_limit, cpu_limit
        "usage",  # data: model, input_tokens, output_tokens, cost_usd, latency_s
        # operators
        "operator.hold",
        "operator.freeze",
        "operator.resume",
        "operator.kill",
        "operator.message",
        "operator.approve",
        "operator.reject",
        "operator.approval_mode",
        "operator.limit",
        "operator.shell",
        "operator.score",
        "control.ack",  # data: command_id, action, accepted, reason
        # results
        "score",  # data: metric, value, details, final
        "integrity.flag",  # data: check, severity, detail
    }
)

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_DATA_BYTES = 256 * 1024  # one event's data; sandbox output is chunked below this
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024  # one MQTT payload (a batch of events)


class RunStatus(StrEnum):
    """A run's status, derived from its events (`status_after`); members compare equal to str.

    Listed in the order a summary names them: live, waiting, ended.
    """

    RUNNING = "running"
    HELD = "held"
    FROZEN = "frozen"
    QUEUED = "queued"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    LIMIT = "limit"


TERMINAL_STATUSES: frozenset[str] = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.KILLED, RunStatus.LIMIT})
# a run with a sandbox that an operator can act on (shell, freeze, ...)
LIVE_STATUSES: frozenset[str] = frozenset({RunStatus.RUNNING, RunStatus.HELD, RunStatus.FROZEN})
# the order runs are grouped in: live first, then waiting, then ended
STATUS_ORDER: tuple[RunStatus, ...] = (
    RunStatus.RUNNING, RunStatus.HELD, RunStatus.FROZEN, RunStatus.QUEUED, RunStatus.LIMIT,
    RunStatus.FAILED, RunStatus.KILLED, RunStatus.SUCCEEDED)


class EventError(ValueError):
    """An event that breaks the contract. `reason` is a short code for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    run: str
    seq: int
    ts: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    v: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "run": self.run,
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "data": self.data,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.run, self.seq)


def valid_run_id(run: object) -> bool:
    return isinstance(run, str) and bool(RUN_ID_RE.match(run))


def parse_event(obj: object) -> Event:
    """Validate one decoded event (a dict from JSON); raise EventError on any breach."""
    if not isinstance(obj, dict):
        raise EventError("not_object", type(obj).__name__)
    v = obj.get("v", SCHEMA_VERSION)
    if v != SCHEMA_VERSION:
        raise EventError("bad_version", repr(v)[:40])
    run = obj.get("run")
    if not valid_run_id(run):
        raise EventError("bad_run", repr(run)[:80])
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise EventError("bad_seq", repr(seq)[:40])
    ts = obj.get("ts")
    if (
        not isinstance(ts, (int, float))
        or isinstance(ts, bool)
        or not math.isfinite(ts)
        or ts < 0
    ):
        raise EventError("bad_ts", repr(ts)[:40])
    kind = obj.get("kind")
    if not isinstance(kind, str):
        raise EventError("bad_kind", repr(kind)[:40])
    if kind not in KINDS:
        raise EventError("unknown_kind", kind[:80])
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise EventError("bad_data", type(data).__name__)
    extra = set(obj) - {"v", "run", "seq", "ts", "kind", "data"}
    if extra:
        raise EventError("unknown_field", ",".join(sorted(extra))[:80])
    assert isinstance(run, str)
    return Event(run=run, seq=seq, ts=float(ts), kind=kind, data=data)


def decode_payload(payload: bytes | str) -> list[Event]:
    """Decode an MQTT payload (one event object or a JSON array of them).

    Raises EventError for the payload as a whole (size, encoding, JSON); a batch with
    some bad events raises for the first bad one, since a sender that breaks the
    contract in one event is not trusted for the rest of its batch.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EventError("oversized", f"{len(payload)} bytes")
    try:
        decoded = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EventError("bad_json", str(exc)[:80]) from None
    items = decoded if isinstance(decoded, list) else [decoded]
    return [parse_event(item) for item in items]


def encode_batch(events: list[Event]) -> bytes:
    return json.dumps(
        [e.to_dict() for e in events], separators=(",", ":"), allow_nan=False
    ).encode()


class RejectCounter:
    """Counts rejected inputs by reason, so bad input is visible but never fatal."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last: dict[str, str] = {}

    def add(self, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        self.last[reason] = detail[:200]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class EventFactory:
    """Makes the events of one run with gapless sequence numbers (owned by one runner)."""

    def __init__(self, run: str, next_seq: int = 1) -> None:
        if not valid_run_id(run):
            raise EventError("bad_run", run)
        self.run = run
        self.next_seq = next_seq

    def make(self, kind: str, data: dict[str, Any] | None = None, ts: float | None = None) -> Event:
        if kind not in KINDS:
            raise EventError("unknown_kind", kind)
        data = data or {}
        _check_data_size(data)
        ev = Event(self.run, self.next_seq, time.time() if ts is None else ts, kind, data)
        self.next_seq += 1
        return ev


def _check_data_size(data: dict[str, Any]) -> None:
    try:
        size = len(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise EventError("bad_data", str(exc)[:80]) from None
    if size > MAX_DATA_BYTES:
        raise EventError("oversized", f"data {size} bytes")


def status_after(status: str, event: Event) -> str:
    """Fold one event into a run's status: the status is derived from events, never stored apart."""
    if status in TERMINAL_STATUSES:
        return status
    k = event.kind
    if k == "run.created":
        return "queued"
    if k in ("run.started", "run.resumed"):
        return "running"
    if k == "run.held":
        return "frozen" if event.data.get("level") == "freeze" else "held"
    if k == "run.ended":
        s = event.data.get("status", "failed")
        return s if s in TERMINAL_STATUSES else "failed"
    return status
