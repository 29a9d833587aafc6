"""The event contract: every fact about a run is an Event(v, run, seq, ts, kind, data).

`seq` is per run, starts at 1 and is gapless; `(run, seq)` is the primary key everywhere,
so a re-sent event is a no-op and a gap is detectable. Events enter from untrusted places
(MQTT payloads, files written by sandboxes), so everything that builds an Event from
outside goes through `parse_event`, which raises `EventError` with a short reason code.
Each kind's `data` is checked against its model (`runner.event_data`) whenever an Event is
built, so an Event that exists is one that fits the contract.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, get_args

from pydantic import ValidationError

from runner.event_data import (
    EVENT_DATA,
    SCHEMA_VERSION,
    EndStatus,
    EventData,
    RunEndedData,
    RunHeldData,
)

# The closed, versioned list of kinds (version SCHEMA_VERSION); each kind's data has a model
# in `runner.event_data`. Adding a kind is a contract change.
KINDS: frozenset[str] = frozenset(EVENT_DATA)

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
assert TERMINAL_STATUSES == frozenset(get_args(EndStatus))
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
    """One event. `data` is the JSON object on the wire and in the journal; `body` is the same
    data validated by its kind's model, once, when the event is built (EventError if it fails).
    """

    run: str
    seq: int
    ts: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    v: int = SCHEMA_VERSION
    body: EventData = field(init=False, repr=False, compare=False)
    # the encoded event, made once: a publisher sizes its batch with it, then sends it
    _wire: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "body", validate_data(self.kind, self.data))

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
    def wire(self) -> bytes:
        """The event as it goes on the bus (UTF-8 JSON), encoded once."""
        if self._wire is None:
            object.__setattr__(self, "_wire", self.to_json().encode())
        assert self._wire is not None
        return self._wire

    @property
    def key(self) -> tuple[str, int]:
        return (self.run, self.seq)


# each model's core validator, called directly: model_validate's wrapper costs per event
_VALIDATE: dict[str, Callable[[object], EventData]] = {
    kind: model.__pydantic_validator__.validate_python for kind, model in EVENT_DATA.items()}


def validate_data(kind: str, data: object) -> EventData:
    """The model of `data` for `kind`; EventError (unknown_kind, bad_data) if it does not fit."""
    validate = _VALIDATE.get(kind)
    if validate is None:
        raise EventError("unknown_kind", kind[:80])
    if not isinstance(data, dict):
        raise EventError("bad_data", type(data).__name__)
    try:
        return validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "data"
        raise EventError("bad_data", f"{kind} {where}: {first.get('msg', '')}"[:200]) from None


def valid_run_id(run: object) -> bool:
    return isinstance(run, str) and bool(RUN_ID_RE.match(run))


_FIELDS = frozenset({"v", "run", "seq", "ts", "kind", "data"})


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
    if not _FIELDS.issuperset(obj):
        extra = set(obj) - _FIELDS
        raise EventError("unknown_field", ",".join(sorted(extra))[:80])
    assert isinstance(run, str)
    return Event(run=run, seq=seq, ts=float(ts), kind=kind, data=data)  # validates the data


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
        """The next event of this run; EventError if `data` breaks its kind's model."""
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
    body = event.body
    if type(body) is RunHeldData:
        return "frozen" if body.level == "freeze" else "held"
    if type(body) is RunEndedData:
        return body.status
    return status
