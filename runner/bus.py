"""The bus: MQTT v5 topics that carry events, control commands, runner state and jobs.

The journal is the source of truth and is written first; the bus publishes after it. A
runner's `RunnerEndpoint` keeps one long-lived connection, batches events per run, and after
an outage (or when its bounded in-memory queue overflows) re-reads what was not confirmed
from the journal, so subscribers see every event. Subscribers dedupe on `(run, seq)`, track
each run's highest contiguous `seq`, and ask the owning runner to re-publish a missing range
on `run/{run}/repair`; the runner serves it from its journal, capped and coalesced. A
runner's retained state says how far each of its runs is journaled, so a subscriber also
notices a tail it never received.

Everything that arrives from the bus is untrusted: payloads are size-checked and validated,
and a bad one is counted in a `RejectCounter`, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runner.broker_access import topic_name
from runner.control import ControlCommand, ControlError, parse_control
from runner.escapes import strip_escapes
from runner.events import (
    MAX_PAYLOAD_BYTES,
    Event,
    EventError,
    RejectCounter,
    decode_payload,
    valid_run_id,
)
from runner.seq_tracker import SeqTracker

log = logging.getLogger(__name__)

MAX_BATCH_EVENTS = 500
MAX_BATCH_BYTES = 256 * 1024
MAX_PENDING_EVENTS = 50_000  # per run, in memory; beyond it the journal is re-read instead
RESEND_PAGE = 2000
MAX_JOB_BYTES = 64 * 1024
MAX_STATE_BYTES = 64 * 1024
PUBLISH_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
INCOMING_QUEUE = 100_000  # aiomqtt's queue of received messages; drained by a sync callback
MAX_REPAIR_EVENTS = 5000  # per request: a larger range is served in part and asked for again
MAX_REPAIR_RANGES = 8  # per run, waiting to be served
REPAIR_COOLDOWN = 1.0  # seconds a served range is not served again
MAX_REPAIR_BYTES = 1024
REPAIR_TICK = 0.2  # how often a subscriber looks for gaps that are due
MAX_STATE_RUNS = 5000  # run seqs one runner's state may carry
MAX_RUNNERS = 1000  # runners whose counts a subscriber keeps


class BusUnavailable(RuntimeError):
    """The broker cannot be reached."""


@dataclass(frozen=True)
class BusConfig:
    """How every client reaches the broker: URL, prefix, credentials, TLS files.

    `mqtts://` verifies the server's certificate against `ca_file` (else the system's CAs)
    and its host name; `cert_file`/`key_file` add a client certificate.
    """

    url: str = "mqtt://127.0.0.1:1883"
    prefix: str = "mlrb/v1"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{self.url}: the bus URL must look like mqtt://host:port or mqtts://host:port")
        if not self.tls and (self.ca_file or self.cert_file or self.key_file):
            raise ValueError(f"{self.url}: TLS files are set but the URL is not mqtts://")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("a client certificate needs both cert_file and key_file")
        try:
            port = parts.port or (8883 if self.tls else 1883)
        except ValueError as exc:
            raise ValueError(f"{self.url}: bad port ({exc})") from None
        return parts.hostname, port

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context of an `mqtts://` URL (server verified), else None."""
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file and self.key_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"bus TLS files: {exc}") from None
        return ctx

    def as_user(self, username: str | None, password: str | None) -> BusConfig:
        return replace(self, username=username, password=password)


class RepairRequest(BaseModel):
    """A subscriber asks the run's owner to re-publish `from_seq..to_seq` (inclusive)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    from_seq: int = Field(ge=1)
    to_seq: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> RepairRequest:
        if self.to_seq < self.from_seq:
            raise ValueError("to_seq is below from_seq")
        return self


class BusCounts(BaseModel):
    """What one runner's bus connection has done: in its retained state, for `mlrb status`."""

    model_config = ConfigDict(extra="ignore", strict=True)
    published: int = Field(default=0, ge=0)
    resent: int = Field(default=0, ge=0)  # re-read from the journal after an outage
    repaired: int = Field(default=0, ge=0)  # re-published because a subscriber asked
    reconnects: int = Field(default=0, ge=0)
    rejects: dict[str, int] = Field(default_factory=dict, max_length=64)


class RunnerSeqs(BaseModel):
    """The part of a runner's retained state a subscriber reads: each run's last journaled
    seq, and the runner's bus counts. The rest of the state is the runner's own business."""

    model_config = ConfigDict(extra="ignore", strict=True)
    seqs: dict[str, int] = Field(default_factory=dict, max_length=MAX_STATE_RUNS)
    bus: BusCounts | None = None

    @model_validator(mode="after")
    def _valid(self) -> RunnerSeqs:
        if not all(valid_run_id(r) and s >= 1 for r, s in self.seqs.items()):
            raise ValueError("seqs maps run ids to seqs from 1")
        return self


class Topics:
    """Topic names under one prefix.

    A topic names who may publish on it, and the broker's ACL (`runner.broker_access`)
    holds each account to its own name: a runner's events and state live under
    `runner/{runner}/`, and an operator's control under `run/{run}/control/{operator}`.
    """

    def __init__(self, prefix: str) -> None:
        prefix = prefix.strip("/")
        if not prefix or any(c in prefix for c in "+#\0"):
            raise ValueError(f"bad topic prefix {prefix!r}")
        self.prefix = prefix
        self.jobs = f"{prefix}/jobs"  # a job is published under its submitter: jobs/{user}
        self.all_jobs = f"{prefix}/jobs/+"
        self.shared_jobs = f"$share/mlrb-runners/{prefix}/jobs/+"
        # a job a runner could not take (or took over from a runner that died) goes on here
        self.shared_requeue = f"$share/mlrb-runners/{prefix}/runner/+/requeue"
        self.all_job_states = f"{prefix}/runner/+/job/+"
        # what each operator queued and no runner has answered yet (retained, by its submitter)
        self.all_submitted = f"{prefix}/submitted/+/+"
        self.all_events = f"{prefix}/runner/+/run/+/event"
        self.all_controls = f"{prefix}/run/+/control/+"
        self.all_repairs = f"{prefix}/run/+/repair"
        self.all_runner_states = f"{prefix}/runner/+/state"

    def event(self, runner: str, run: str) -> str:
        return f"{self.prefix}/runner/{runner}/run/{run}/event"

    def run_events(self, run: str) -> str:
        """One run's events, from whichever runner publishes them."""
        return f"{self.prefix}/runner/+/run/{run}/event"

    def control(self, run: str, operator: str) -> str:
        return f"{self.prefix}/run/{run}/control/{operator}"

    def repair(self, run: str) -> str:
        return f"{self.prefix}/run/{run}/repair"

    def runner_state(self, runner_id: str) -> str:
        return f"{self.prefix}/runner/{runner_id}/state"

    def jobs_of(self, submitter: str) -> str:
        return f"{self.jobs}/{submitter}"

    def submitted(self, submitter: str, job: str) -> str:
        """Where `mlrb submit` keeps (retained) a job it queued, until a runner answers it."""
        return f"{self.prefix}/submitted/{submitter}/{job}"

    def submitted_source(self, topic: str) -> tuple[str, str] | None:
        """(submitter, job) of a submitted-job topic, else None."""
        parts = self._levels(topic, "submitted")
        if parts is None or len(parts) != 2 or not parts[0] or not parts[1]:
            return None
        return parts[0], parts[1]

    def requeue(self, runner: str) -> str:
        return f"{self.prefix}/runner/{runner}/requeue"

    def job_state(self, runner: str, job: str) -> str:
        """Where a runner keeps (retained) what became of one job it was handed."""
        return f"{self.prefix}/runner/{runner}/job/{job}"

    def job_states_of(self, job: str) -> str:
        return f"{self.prefix}/runner/+/job/{job}"

    def submitter_of(self, topic: str) -> str | None:
        """The account a job was published under (its topic `jobs/{user}`), else None."""
        parts = self._levels(topic, "jobs")
        return parts[0] if parts is not None and len(parts) == 1 and parts[0] else None

    def requeued_by(self, topic: str) -> str | None:
        """The runner that put a job back on the queue (`runner/{runner}/requeue`), else None."""
        parts = self._levels(topic, "runner")
        return parts[0] if parts is not None and len(parts) == 2 and parts[1] == "requeue" else None

    def job_state_source(self, topic: str) -> tuple[str, str] | None:
        """(runner, job) of a job-state topic, else None."""
        parts = self._levels(topic, "runner")
        if parts is None or len(parts) != 3 or parts[1] != "job" or not parts[0] or not parts[2]:
            return None
        return parts[0], parts[2]

    def event_source(self, topic: str) -> tuple[str, str] | None:
        """(runner, run) of an event topic, else None."""
        parts = self._levels(topic, "runner")
        if parts is None or len(parts) != 4 or parts[1] != "run" or parts[3] != "event":
            return None
        runner, run = parts[0], parts[2]
        return (runner, run) if runner and valid_run_id(run) else None

    def control_source(self, topic: str) -> tuple[str, str] | None:
        """(run, operator) of a control topic, else None."""
        parts = self._levels(topic, "run")
        if parts is None or len(parts) != 3 or parts[1] != "control" or not parts[2]:
            return None
        return (parts[0], parts[2]) if valid_run_id(parts[0]) else None

    def run_of(self, topic: str) -> str | None:
        """The run id in an event or control topic, else None."""
        source = self.event_source(topic)
        if source is not None:
            return source[1]
        control = self.control_source(topic)
        return control[0] if control is not None else None

    def run_of_repair(self, topic: str) -> str | None:
        """The run id in a repair topic, else None."""
        parts = self._levels(topic, "run")
        if parts is None or len(parts) != 2 or parts[1] != "repair" or not valid_run_id(parts[0]):
            return None
        return parts[0]

    def _levels(self, topic: str, head: str) -> list[str] | None:
        start = f"{self.prefix}/{head}/"
        return topic[len(start):].split("/") if topic.startswith(start) else None

    def runner_of(self, topic: str) -> str | None:
        head = f"{self.prefix}/runner/"
        if not topic.startswith(head) or not topic.endswith("/state"):
            return None
        rid = topic[len(head):-len("/state")]
        return rid if rid and "/" not in rid else None


class BusRefused(BusUnavailable):
    """The broker refused a publish or a subscription (the account's role does not allow it)."""


class BusClient(aiomqtt.Client):
    """aiomqtt's client, keeping the broker's refusals of publishes (PUBACK reason codes)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.refusals = 0  # publishes the broker acknowledged with a failure reason code
        self.last_refusal = ""

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self.refusals += 1
            self.last_refusal = str(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(self, topic: str, payload: bytes, *, qos: int = 1,
                              retain: bool = False, timeout: float = PUBLISH_TIMEOUT) -> None:
        """Publish (QoS 1) and raise BusRefused when the broker says no.

        aiomqtt hides the message id, so a refusal during concurrent publishes on one client
        fails each of them: they are re-sent, and only a publish the ACL forbids is refused.
        """
        before = self.refusals
        await self.publish(topic, payload, qos=qos, retain=retain, timeout=timeout)
        if self.refusals > before:
            raise BusRefused(f"the broker refused to publish on {topic}: {self.last_refusal}")

    async def subscribe_checked(self, topic: str, *, qos: int = 1,
                                timeout: float = PUBLISH_TIMEOUT) -> None:
        """Subscribe and raise BusRefused when the broker grants nothing."""
        granted = await self.subscribe(topic, qos=qos, timeout=timeout)
        codes = granted if isinstance(granted, list | tuple) else [granted]
        bad = [str(c) for c in codes if getattr(c, "is_failure", False)]
        if bad:
            raise BusRefused(f"the broker refused the subscription {topic}: {bad[0]}")


def _client(config: BusConfig, identifier: str, **kw: Any) -> BusClient:
    host, port = config.host_port()
    return BusClient(host, port, identifier=identifier, username=config.username,
                     password=config.password, tls_context=config.tls_context(),
                     protocol=aiomqtt.ProtocolVersion.V5, timeout=CONNECT_TIMEOUT, **kw)


def open_client(config: BusConfig, identifier: str | None = None, **kw: Any) -> BusClient:
    """One connection with `config`'s account and TLS (use it as `async with`)."""
    return _client(config, identifier or f"mlrb-{uuid.uuid4().hex[:12]}", **kw)


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return b"" if payload is None else str(payload).encode()


class Reconnector:
    """One broker connection kept up: connect, run a session, and after it ends (or fails)
    wait a jittered backoff that doubles up to `backoff_max`, cut short by `retry_now`."""

    def __init__(self, config: BusConfig, what: str) -> None:
        self.config = config
        self.what = what
        self.backoff_min, self.backoff_max = BACKOFF_MIN, BACKOFF_MAX
        self.last_error = ""
        self.stopping = False  # set before cancelling: a cleanup may swallow the cancel
        self._backoff = BACKOFF_MIN
        self._wake = asyncio.Event()

    def up(self) -> None:
        """The connection works: the next failure waits the shortest backoff again."""
        self._backoff = self.backoff_min

    def retry_now(self) -> None:
        self._wake.set()

    async def run(self, connect: Callable[[], BusClient],
                  session: Callable[[BusClient], Awaitable[None]],
                  down: Callable[[], Awaitable[None]]) -> None:
        """Until cancelled: connect, `session(client)`, then `down()` however the session ended."""
        self._backoff = self.backoff_min
        while not self.stopping:
            try:
                async with connect() as client:
                    await session(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "reconnect later"
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("bus: %s: %s unreachable (%s); retrying in %.1fs", self.what,
                            self.config.url, self.last_error, self._backoff)
            finally:
                await down()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(),
                                       self._backoff * (0.8 + 0.4 * random.random()))
            self._wake.clear()
            self._backoff = min(self._backoff * 2, self.backoff_max)


@dataclass
class _RunState:
    run: str
    confirmed: int  # every event of this run up to here was acknowledged by the broker
    pending: deque[Event] = field(default_factory=deque)
    resend_after: int | None = None  # re-read the journal after this seq before `pending`
    overflows: int = 0
    task: asyncio.Task[None] | None = None
    repairs: list[tuple[int, int]] = field(default_factory=list)  # disjoint, sorted, inclusive
    served: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=16))

    def has_work(self) -> bool:
        return bool(self.pending) or self.resend_after is not None or bool(self.repairs)

    def add_repair(self, first: int, last: int, now: float) -> str | None:
        """Queue a range to re-publish, merged with the others; a reason when it is dropped."""
        if any(now - t < REPAIR_COOLDOWN and a <= first and last <= b for t, a, b in self.served):
            return "repair_coalesced"  # just served: a request already on its way is a no-op
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self.repairs, (first, last)]):
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        if len(merged) > MAX_REPAIR_RANGES:
            return "repair_backlog"
        self.repairs = merged
        return None

    def need_resend(self, after: int) -> None:
        # what is dropped here is in the journal, which the sender re-reads
        self.resend_after = after if self.resend_after is None else min(self.resend_after, after)
        self.pending.clear()


class RunnerEndpoint:
    """Runner side. Owns one long-lived aiomqtt client with reconnect + backoff."""

    def __init__(self, config: BusConfig, runner_id: str,
                 resend_from: Callable[[str, int, int], list[Event]]) -> None:
        self.config = config
        self.topics = Topics(config.prefix)
        self.runner_id = runner_id
        self._resend_from = resend_from
        self._runs: dict[str, _RunState] = {}
        self._client: aiomqtt.Client | None = None
        self._main_task: asyncio.Task[None] | None = None
        self.link = Reconnector(config, f"runner {runner_id}")
        self._idle = asyncio.Event()
        self._idle.set()
        self._state: dict[str, Any] | None = None
        self._control_handler: tuple[Callable[[ControlCommand], Awaitable[None]], RejectCounter] | None = None
        # jobs come on a connection of their own (runner.job_queue), so none holds up a kill
        self._inboxes: dict[str, asyncio.Queue[aiomqtt.Message]] = {
            "control": asyncio.Queue(maxsize=1000)}
        self._workers: list[asyncio.Task[None]] = []
        self.connected = False
        self.subscribed: set[str] = set()  # topics the broker confirmed on this connection
        self.published = 0
        self.resent = 0
        self.repaired = 0  # events re-published because a subscriber asked for them
        self.repair_rejects = RejectCounter()
        self.extra_rejects: list[RejectCounter] = []  # counted in counts() too
        self.skipped = 0  # events that could not be encoded (should never happen)
        self.connects = 0
        # told (up, last error) when the broker link comes up or goes down (runner.notify)
        self.on_link: Callable[[bool, str], None] | None = None

    @property
    def last_error(self) -> str:
        return self.link.last_error

    def counts(self) -> BusCounts:
        """Events published, resent and repaired, reconnects, and rejected input by reason
        (controls, repair requests, and `extra` counters such as the jobs')."""
        rejects: Counter[str] = Counter()
        seen: set[int] = set()
        handlers = [self._control_handler[1]] if self._control_handler is not None else []
        for counter in (*handlers, self.repair_rejects, *self.extra_rejects):
            if id(counter) not in seen:  # the engine shares one for controls and jobs
                seen.add(id(counter))
                rejects.update(counter.counts)
        return BusCounts(published=self.published, resent=self.resent, repaired=self.repaired,
                         reconnects=max(0, self.connects - 1), rejects=dict(rejects))

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting in the background; never fails because the broker is down."""
        self.config.host_port()  # a malformed URL is a configuration error: raise now
        if self.config.username and self.config.username != self.runner_id:
            # the ACL lets an account publish only under its own name
            raise ValueError(f"runner id {self.runner_id!r} is not the bus account "
                             f"{self.config.username!r} it authenticates as")
        if self._main_task is None:
            self._main_task = asyncio.create_task(self._main(), name=f"bus-{self.runner_id}")
            self._workers = [asyncio.create_task(self._handle_inbox(q), name=f"bus-{name}s")
                             for name, q in self._inboxes.items()]

    async def stop(self) -> None:
        """Flush briefly, publish state `offline`, disconnect cleanly."""
        if self._main_task is None:
            return
        if self.connected:
            await self.flush(timeout=2.0)
        client = self._client
        if client is not None and self.connected:
            with contextlib.suppress(Exception):
                await client.publish(self.topics.runner_state(self.runner_id), b"offline",
                                     qos=1, retain=True, timeout=2.0)
        self.link.stopping = True
        for task in (self._main_task, *self._workers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._main_task, self._workers = None, []
        self.connected = False

    # -- publishing -----------------------------------------------------------------
    def publish(self, events: Sequence[Event]) -> None:
        """Queue journaled events for the bus; returns at once. Batches per run."""
        for ev in events:
            st = self._runs.get(ev.run)
            if st is None:
                st = self._runs[ev.run] = _RunState(ev.run, confirmed=ev.seq - 1)
            if len(st.pending) >= MAX_PENDING_EVENTS:
                st.overflows += 1
                st.need_resend(st.confirmed)
                continue
            if st.resend_after is not None and ev.seq <= st.resend_after:
                continue
            st.pending.append(ev)
        if events:
            self._idle.clear()
            for run in {e.run for e in events}:
                self._kick(self._runs[run])

    async def set_state(self, state: dict[str, Any]) -> None:
        """Publish the retained runner state (re-sent on every reconnect)."""
        self._state = dict(state)
        client = self._client
        if client is not None and self.connected:
            try:
                await client.publish(self.topics.runner_state(self.runner_id),
                                     json.dumps(self._state, default=str).encode(),
                                     qos=1, retain=True, timeout=PUBLISH_TIMEOUT)
            except aiomqtt.MqttError as exc:  # re-sent once reconnected
                log.warning("bus: runner state not published: %s", exc)

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event is confirmed by the broker; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _check_idle(self) -> None:
        if not any(s.has_work() or s.task is not None for s in self._runs.values()):
            self._idle.set()

    def _kick(self, st: _RunState) -> None:
        client = self._client
        if client is not None and self.connected and st.task is None and st.has_work():
            st.task = asyncio.create_task(self._send_run(client, st), name=f"bus-send-{st.run}")

    async def _send_run(self, client: aiomqtt.Client, st: _RunState) -> None:
        topic = self.topics.event(self.runner_id, st.run)
        try:
            while True:
                if st.resend_after is not None:
                    after, overflows = st.resend_after, st.overflows
                    page = await asyncio.to_thread(self._resend_from, st.run, after, RESEND_PAGE)
                    for chunk in self._chunks(page):
                        await self._send(client, topic, chunk)
                        st.confirmed = max(st.confirmed, chunk[-1].seq)
                        if st.resend_after is not None:
                            st.resend_after = max(st.resend_after, chunk[-1].seq)
                        self.resent += len(chunk)
                    if st.resend_after is None:  # pragma: no cover - only this task clears it
                        continue
                    upto = st.resend_after
                    while st.pending and st.pending[0].seq <= upto:
                        st.pending.popleft()
                    if not page and overflows == st.overflows:
                        st.resend_after = None
                    continue
                if st.repairs:
                    await self._serve_repair(client, topic, st)
                    continue
                if not st.pending:
                    return
                batch: list[Event] = []
                size = 2
                while st.pending and len(batch) < MAX_BATCH_EVENTS:
                    n = len(st.pending[0].wire) + 1
                    if batch and size + n > MAX_BATCH_BYTES:
                        break
                    batch.append(st.pending.popleft())
                    size += n
                await self._send(client, topic, batch)
                st.confirmed = max(st.confirmed, batch[-1].seq)
                self.published += len(batch)
        except BaseException as exc:  # noqa: BLE001 - cancelled or lost: the journal has it all
            # unconfirmed: re-read from the journal once the connection is back
            st.need_resend(st.confirmed)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.link.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("bus: publishing run %s failed: %s", st.run, self.last_error)
        finally:
            st.task = None
            self._check_idle()

    async def _serve_repair(self, client: aiomqtt.Client, topic: str, st: _RunState) -> None:
        first, last = st.repairs.pop(0)
        page = await asyncio.to_thread(self._resend_from, st.run, first - 1, last - first + 1)
        page = [e for e in page if e.seq <= last]
        for chunk in self._chunks(page):
            await self._send(client, topic, chunk)
            self.repaired += len(chunk)
        st.served.append((asyncio.get_running_loop().time(), first, last))

    def _on_repair(self, run: str, payload: bytes) -> None:
        st = self._runs.get(run)
        if st is None:
            return  # another runner's run: its owner answers
        if len(payload) > MAX_REPAIR_BYTES:
            self.repair_rejects.add("oversized", f"repair {len(payload)} bytes")
            return
        try:
            req = RepairRequest.model_validate_json(payload)
        except ValidationError as exc:
            self.repair_rejects.add("bad_repair", str(exc.errors()[0].get("msg", ""))[:80])
            return
        # what is not yet confirmed is on its way anyway
        last = min(req.to_seq, req.from_seq + MAX_REPAIR_EVENTS - 1, st.confirmed)
        if last < req.from_seq:
            return
        reason = st.add_repair(req.from_seq, last, asyncio.get_running_loop().time())
        if reason is not None:
            self.repair_rejects.add(reason, f"{run} {req.from_seq}-{last}")
            return
        self._idle.clear()
        self._kick(st)

    def _chunks(self, events: list[Event]) -> list[list[Event]]:
        out: list[list[Event]] = []
        cur: list[Event] = []
        size = 2
        for ev in events:
            n = len(ev.wire) + 1
            if cur and (len(cur) >= MAX_BATCH_EVENTS or size + n > MAX_BATCH_BYTES):
                out.append(cur)
                cur, size = [], 2
            cur.append(ev)
            size += n
        if cur:
            out.append(cur)
        return out

    async def _send(self, client: aiomqtt.Client, topic: str, events: list[Event]) -> None:
        parts: list[bytes] = []
        for ev in events:
            try:
                parts.append(ev.wire)
            except (TypeError, ValueError) as exc:
                self.skipped += 1
                log.error("bus: event %s/%s cannot be encoded: %s", ev.run, ev.seq, exc)
        payload = b"[" + b",".join(parts) + b"]"
        if isinstance(client, BusClient):
            await client.publish_checked(topic, payload, qos=1, timeout=PUBLISH_TIMEOUT)
        else:  # pragma: no cover - every client here is a BusClient
            await client.publish(topic, payload, qos=1, timeout=PUBLISH_TIMEOUT)

    # -- the connection -------------------------------------------------------------
    def retry_now(self) -> None:
        """Cut the reconnect backoff short (e.g. once a local broker is known to be back)."""
        self.link.retry_now()

    async def _main(self) -> None:
        state_topic = self.topics.runner_state(self.runner_id)

        def connect() -> BusClient:
            return _client(self.config, f"mlrb-runner-{self.runner_id}-{uuid.uuid4().hex[:8]}",
                           will=aiomqtt.Will(state_topic, b"offline", qos=1, retain=True),
                           keepalive=15, max_inflight_messages=200,
                           max_queued_incoming_messages=1000)

        await self.link.run(connect, self._session, self._disconnected)

    async def _session(self, client: BusClient) -> None:
        self._client = client
        self.connected = True
        self.connects += 1
        self.link.up()
        log.info("bus: connected to %s", self.config.url)
        self._tell_link(True)
        await self._on_connect(client)
        for st in list(self._runs.values()):
            self._kick(st)
        async for message in client.messages:
            repair_run = self.topics.run_of_repair(message.topic.value)
            if repair_run is not None:
                self._on_repair(repair_run, _payload_bytes(message.payload))
                continue
            if not self.topics.run_of(message.topic.value):
                continue
            inbox = self._inboxes["control"]
            try:
                inbox.put_nowait(message)
            except asyncio.QueueFull:
                self._reject_message(message, "backlog")

    async def _disconnected(self) -> None:
        self.connected = False
        if not self.link.stopping:
            self._tell_link(False)
        self.subscribed.clear()
        self._client = None
        senders = [s.task for s in self._runs.values() if s.task is not None]
        for task in senders:
            task.cancel()
        for task in senders:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _tell_link(self, up: bool) -> None:
        if self.on_link is not None:
            try:
                self.on_link(up, self.link.last_error)
            except Exception:  # a listener's fault must not break the link
                log.exception("bus: link listener failed")

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        if self._state is not None:
            await client.publish(self.topics.runner_state(self.runner_id),
                                 json.dumps(self._state, default=str).encode(),
                                 qos=1, retain=True, timeout=PUBLISH_TIMEOUT)
        # every runner answers repairs of the runs it owns
        await client.subscribe(self.topics.all_repairs, qos=1)
        self.subscribed.add(self.topics.all_repairs)
        if self._control_handler is not None:
            await client.subscribe(self.topics.all_controls, qos=1)
            self.subscribed.add(self.topics.all_controls)

    # -- what arrives ---------------------------------------------------------------
    async def listen_controls(self, handler: Callable[[ControlCommand], Awaitable[None]],
                              rejects: RejectCounter) -> None:
        """Deliver control commands to `handler` (one at a time, in arrival order).

        Registers and subscribes, then returns; the subscription is renewed on reconnect.
        """
        self._control_handler = (handler, rejects)
        await self._subscribe(self.topics.all_controls)

    async def _subscribe(self, topic: str) -> None:
        client = self._client
        if client is not None and self.connected:
            try:
                await client.subscribe(topic, qos=1, timeout=PUBLISH_TIMEOUT)
                self.subscribed.add(topic)
            except aiomqtt.MqttError as exc:  # renewed by _on_connect
                log.warning("bus: subscribe %s failed: %s", topic, exc)

    def _reject_message(self, message: aiomqtt.Message, reason: str, detail: str = "") -> None:
        topic = message.topic.value
        if self._control_handler is not None:
            self._control_handler[1].add(reason, detail or topic)

    async def _handle_inbox(self, inbox: asyncio.Queue[aiomqtt.Message]) -> None:
        while True:
            message = await inbox.get()
            try:
                await self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception:  # a handler's failure must not stop the next command
                log.exception("bus: handler failed for %s", message.topic.value)

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = _payload_bytes(message.payload)
        source = self.topics.control_source(topic)
        if source is not None and self._control_handler:
            run, operator = source
            handler, rejects = self._control_handler
            try:
                command = parse_control(payload)
            except ControlError as exc:
                reason = "oversized" if "oversized" in str(exc) else "bad_control"
                rejects.add(reason, str(exc))
                return
            if command.run != run:
                rejects.add("run_mismatch", f"{command.run} on {topic}")
                return
            # who sent it is the name in the topic, which the broker's ACL ties to the
            # account it authenticated; the payload's own claim is not believed
            await handler(command.model_copy(update={"operator": operator}))


class RunOwners:
    """Which runner owns each run, as a subscriber learned it: events come only from there.

    The owner is the runner whose `run.created` (published under its own id, which the
    broker's ACL enforces) names it; a run joined mid-way belongs to the first runner heard
    for it, unless seeded (the recorder seeds what it holds). Bounded: the oldest is
    forgotten first.
    """

    def __init__(self, seed: dict[str, str] | None = None, max_runs: int = 100_000) -> None:
        self._owners: OrderedDict[str, str] = OrderedDict(seed or {})
        self.max_runs = max_runs

    def get(self, run: str) -> str | None:
        return self._owners.get(run)

    def accept(self, run: str, runner: str, events: Sequence[Event]) -> bool:
        """Whether `runner` may publish these events of `run`; learns the owner on first sight."""
        created = next((e for e in events if e.kind == "run.created"), None)
        claimed = getattr(created.body, "runner", None) if created is not None else None
        if claimed is not None and claimed != runner:
            return False  # a run.created that names another runner than its publisher
        owner = self._owners.get(run)
        if owner is None:
            self._owners[run] = runner
            while len(self._owners) > self.max_runs:
                self._owners.popitem(last=False)
            return True
        return owner == runner


class EventSubscriber:
    """Console / recorder side: receives event batches, validates them, hands them on.

    Each run's seqs go to a `SeqTracker`; a gap that outlasts its grace is asked for on the
    run's repair topic, and again with a backoff while it stays open. The runners' retained
    states say how far each run is journaled, so a missed tail is a gap too. With `client_id`
    the session is persistent (clean start off, `session_expiry` seconds), so the broker
    queues events for this subscriber while it reconnects; `clean_start` drops what the
    broker kept for it, on the first connection only. `on_gaps` hears the runs with an open
    gap whenever that set changes.
    """

    def __init__(self, config: BusConfig, on_events: Callable[[list[Event]], None],
                 rejects: RejectCounter | None = None, runs: Sequence[str] | None = None,
                 *, tracker: SeqTracker | None = None, client_id: str | None = None,
                 session_expiry: int = 3600, owners: RunOwners | None = None,
                 clean_start: bool = False,
                 on_gaps: Callable[[list[str]], None] | None = None) -> None:
        self.config = config
        self.topics = Topics(config.prefix)
        self.on_events = on_events
        self.rejects = rejects if rejects is not None else RejectCounter()
        self.runs = list(runs) if runs is not None else None
        # a viewer that joins a run mid-way starts there; the recorder passes its own
        self.tracker = tracker if tracker is not None else SeqTracker(from_start=False)
        self.client_id = client_id
        self.session_expiry = session_expiry
        self.owners = owners if owners is not None else RunOwners()
        self.clean_start = clean_start
        self.on_gaps = on_gaps
        self.connected = False
        self.ready = asyncio.Event()
        self.received = 0  # valid events handed on
        self.repairs_requested = 0
        self.connects = 0
        # each runner's latest bus counts, from its retained state (bounded, oldest out)
        self.runners: OrderedDict[str, BusCounts] = OrderedDict()
        self._gaps_seen: tuple[str, ...] = ()
        self.link = Reconnector(config, "subscriber")

    @property
    def gaps(self) -> list[str]:
        """Runs with an open gap (being repaired)."""
        return self.tracker.gaps

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    @property
    def last_error(self) -> str:
        return self.link.last_error

    def fleet_counts(self) -> BusCounts:
        """The runners' counts added up: what they resent and repaired, their reconnects."""
        total = BusCounts()
        rejects: Counter[str] = Counter()
        for c in self.runners.values():
            total.published += c.published
            total.resent += c.resent
            total.repaired += c.repaired
            total.reconnects += c.reconnects
            rejects.update(c.rejects)
        total.rejects = dict(rejects)
        return total

    async def run(self) -> None:
        """Connect, subscribe, deliver; reconnect with backoff until cancelled."""
        self.config.host_port()
        topics = [self.topics.run_events(r) for r in self.runs] if self.runs is not None \
            else [self.topics.all_events]
        topics.append(self.topics.all_runner_states)

        def connect() -> BusClient:
            if self.client_id is None:
                return _client(self.config, f"mlrb-sub-{uuid.uuid4().hex[:12]}",
                               keepalive=15, max_queued_incoming_messages=INCOMING_QUEUE)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry
            # a clean start only once: a reconnect must find what the broker queued meanwhile
            clean = self.clean_start and self.connects == 0
            return _client(self.config, self.client_id, keepalive=15, clean_start=clean,
                           properties=props, max_queued_incoming_messages=INCOMING_QUEUE)

        async def session(client: BusClient) -> None:
            for topic in topics:
                await client.subscribe_checked(topic, qos=1)
            self.connected = True
            self.connects += 1
            self.ready.set()
            self.link.up()
            repairer = asyncio.create_task(self._repair_loop(client), name="bus-repairs")
            try:
                async for message in client.messages:
                    self._deliver(message.topic.value, _payload_bytes(message.payload))
            finally:
                repairer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await repairer

        async def down() -> None:
            self.connected = False
            self.ready.clear()

        await self.link.run(connect, session, down)

    def _deliver(self, topic: str, payload: bytes) -> None:
        rid = self.topics.runner_of(topic)
        if rid is not None:
            self._on_state(rid, payload)
            return
        if len(payload) > MAX_PAYLOAD_BYTES:
            self.rejects.add("oversized", f"{len(payload)} bytes on {topic}")
            return
        source = self.topics.event_source(topic)
        if source is None:
            self.rejects.add("bad_topic", topic)
            return
        runner, run = source
        try:
            events = decode_payload(payload)
        except EventError as exc:
            self.rejects.add(exc.reason, exc.detail)
            return
        if any(e.run != run for e in events):
            self.rejects.add("run_mismatch", f"events of another run on {topic}")
            return
        if not events:
            return
        if not self.owners.accept(run, runner, events):
            self.rejects.add("not_owner", f"run {run} from runner {runner}")
            return
        now = asyncio.get_running_loop().time()
        for e in events:
            self.tracker.observe(run, e.seq, now)
        self.received += len(events)
        try:
            self.on_events(events)
        except Exception:  # the consumer's bug must not stop the stream
            log.exception("bus: on_events failed")

    def _on_state(self, runner: str, payload: bytes) -> None:
        """A runner's retained state: its runs' last seqs feed the tracker; its counts are kept."""
        if payload in (b"", b"offline"):  # the last will, or a retained state cleared
            self.runners.pop(runner, None)
            return
        if len(payload) > MAX_STATE_BYTES:
            self.rejects.add("oversized", f"state of {runner[:80]}: {len(payload)} bytes")
            return
        try:
            state = RunnerSeqs.model_validate_json(payload)
        except ValidationError as exc:
            self.rejects.add("bad_state", str(exc.errors()[0].get("msg", ""))[:80])
            return
        now = asyncio.get_running_loop().time()
        for run, last in state.seqs.items():
            # only the owner's word on a run's last seq counts
            if (self.runs is None or run in self.runs) and self.owners.get(run) in (None, runner):
                self.tracker.expect(run, last, now)
        if state.bus is not None:
            self.runners[runner] = state.bus
            self.runners.move_to_end(runner)
            while len(self.runners) > MAX_RUNNERS:
                self.runners.popitem(last=False)

    def _report_gaps(self) -> None:
        gaps = tuple(self.tracker.gaps)
        if gaps != self._gaps_seen:
            self._gaps_seen = gaps
            if self.on_gaps is not None:
                try:
                    self.on_gaps(list(gaps))
                except Exception:  # the consumer's bug must not stop the repairs
                    log.exception("bus: on_gaps failed")

    async def _repair_loop(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(REPAIR_TICK)
            self._report_gaps()
            for run, first, last in self.tracker.due(loop.time()):
                body = RepairRequest(from_seq=first, to_seq=last).model_dump_json().encode()
                try:
                    await client.publish(self.topics.repair(run), body, qos=1,
                                         timeout=PUBLISH_TIMEOUT)
                except (aiomqtt.MqttError, TimeoutError) as exc:  # asked again after its backoff
                    log.warning("bus: repair request for run %s not sent: %s", run, exc)
                    continue
                self.repairs_requested += 1
                log.info("bus: run %s misses seq %d-%d; asked its runner", run, first, last)


async def _publish_once(config: BusConfig, topic: str, payload: bytes, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            async with _client(config, f"mlrb-cli-{uuid.uuid4().hex[:12]}") as client:
                await client.publish_checked(topic, payload, qos=1, timeout=timeout)
    except BusRefused:
        raise
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        raise BusUnavailable(f"cannot reach the MQTT broker at {config.url}: "
                             f"{type(exc).__name__}: {exc}") from None


async def send_control(config: BusConfig, command: ControlCommand, timeout: float = 5.0) -> None:
    """Publish one control command (QoS 1) under the account's name; BusUnavailable if no
    broker answers, BusRefused if the broker does not let this account control runs."""
    operator = config.username or topic_name(command.operator)
    await _publish_once(config, Topics(config.prefix).control(command.run, operator),
                        command.to_json(), timeout)


def submitter(config: BusConfig) -> str:
    """The name a job is published under: the account, else (no broker checks it) the user's."""
    from runner.control import default_operator

    return config.username or topic_name(default_operator())


async def submit_job(config: BusConfig, job: dict[str, Any], timeout: float = 5.0) -> None:
    """Queue one job (QoS 1) under the account's name, for whichever runner has room for it;
    the broker keeps it while no runner is online."""
    await _publish_once(config, Topics(config.prefix).jobs_of(submitter(config)),
                        json.dumps(job).encode(), timeout)


async def retained_messages(client: BusClient, timeout: float,
                            quiet: float) -> AsyncIterator[tuple[str, bytes]]:
    """(topic, payload) of the retained messages that follow a subscription: they come at once
    after the SUBACK, so this stops after a `quiet` gap, or after `timeout` in all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    it = client.messages.__aiter__()
    while (left := deadline - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(it.__anext__(), min(quiet, left))
        except TimeoutError:
            return
        yield message.topic.value, _payload_bytes(message.payload)


async def read_runner_states(config: BusConfig, timeout: float = 1.0) -> dict[str, dict[str, Any] | str]:
    """The retained runner states the broker holds now: a dict, or a string such as 'offline'."""
    topics = Topics(config.prefix)
    states: dict[str, dict[str, Any] | str] = {}
    # retained messages follow the SUBACK at once; stop after a short quiet gap
    quiet = min(0.25, timeout)
    try:
        async with asyncio.timeout(timeout + CONNECT_TIMEOUT):
            async with _client(config, f"mlrb-cli-{uuid.uuid4().hex[:12]}") as client:
                await client.subscribe(topics.all_runner_states, qos=1, timeout=timeout)
                async for topic, payload in retained_messages(client, timeout, quiet):
                    rid = topics.runner_of(topic)
                    if rid is None or not payload or len(payload) > MAX_STATE_BYTES:
                        continue
                    try:
                        value = json.loads(payload)
                    except (UnicodeDecodeError, ValueError):
                        value = payload.decode(errors="replace")
                    if isinstance(value, dict):
                        states[rid] = value
                    else:
                        states[rid] = strip_escapes(str(value))[:200]
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        raise BusUnavailable(f"cannot reach the MQTT broker at {config.url}: "
                             f"{type(exc).__name__}: {exc}") from None
    return states


__all__ = [
    "BusClient", "BusConfig", "BusCounts", "BusRefused", "BusUnavailable", "Reconnector", "RunOwners",
    "RepairRequest", "RunnerEndpoint", "RunnerSeqs", "EventSubscriber", "Topics",
    "open_client", "read_runner_states", "retained_messages", "send_control", "submit_job", "submitter",
]
