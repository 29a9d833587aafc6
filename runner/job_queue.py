"""The jobs queue: a runner takes a job from the bus only when it has room for it.

A job is published on `jobs/{submitter}`, where the broker's ACL lets each operator publish
only under its own name, and reaches the runners through one shared subscription. Mosquitto
2.0 hands a shared subscription's messages round-robin to every member, connected or not and
whatever its in-flight window, and never hands an unacknowledged message to another member
when its holder dies. So the queue is built this way:

- each runner takes jobs on a connection of its own, with a stable client id, a persistent
  session and a receive maximum of 1, and acknowledges a job (PUBACK) only once it is decided:
  its run journaled, or refused and recorded. Jobs submitted while no runner is online wait in
  the runners' sessions at the broker;
- a runner without room for a job (no free slot, or too few free GPUs) waits a moment for
  room, then puts the job back on the queue (`runner/{me}/requeue`, shared the same way) and
  acknowledges it, so no job waits behind a full runner;
- when a runner goes offline (its last will), the first live runner by id takes over its jobs
  session (same client id, no clean start, a session that ends with the connection): the job
  it held and those queued behind it come to the rescuer, which puts them back on the queue.

Each runner keeps a retained state per job it was handed (`runner/{me}/job/{id}`: started with
its run, refused with why, requeued, or ended once its run ended). `mlrb submit` and `mlrb queue`
read them, a runner handed a job that another runner already started drops it, and a campaign's
driver counts its slots' live runs across the fleet from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runner.bus import (
    MAX_JOB_BYTES,
    PUBLISH_TIMEOUT,
    BusClient,
    BusConfig,
    Reconnector,
    Topics,
    _client,
    _payload_bytes,
    retained_messages,
)
from runner.events import RejectCounter

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600  # how long the broker keeps jobs for a runner that is away
REQUEUE_WAIT_MIN_S, REQUEUE_WAIT_MAX_S = 0.1, 2.0  # how long a full runner waits for room
RESCUE_GRACE_S = 2.0  # a runner offline this long has its jobs session taken over
RESCUE_QUIET_S = 1.0  # a taken-over session is drained once nothing came for this long
MAX_KEPT_STATES = 500  # retained job states one runner keeps at the broker; older are cleared
MAX_KNOWN = 10_000  # jobs whose state a runner remembers (to drop a job started elsewhere)
MAX_RUNNERS = 1000
REFUSAL_LOG_EVERY_S = 10.0
STOP_WAIT_S = 5.0
JOB_ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,80}$")  # one topic level

# queued: submitted, no runner has answered yet (kept by its submitter, not by a runner);
# ended: the run it started has ended (with the run's status)
JobStatus = Literal["queued", "started", "refused", "requeued", "ended"]
# how far along a job is: a later state never gives way to an earlier one
_RANK = {"queued": 0, "requeued": 0, "refused": 1, "started": 2, "ended": 3}


class JobState(BaseModel):
    """What became of one job a runner was handed (retained on `runner/{runner}/job/{job}`)."""

    model_config = ConfigDict(extra="ignore")
    job: str = Field(max_length=80)
    status: JobStatus
    runner: str = Field(max_length=120)
    submitter: str = Field(default="", max_length=120)
    task: str = Field(default="", max_length=80)
    scale: str = Field(default="", max_length=20)
    agent: str = Field(default="", max_length=40)
    run: str | None = Field(default=None, max_length=120)
    reason: str = Field(default="", max_length=500)
    hops: int = Field(default=0, ge=0)  # times it was put back on the queue
    ts: float = 0.0
    campaign: str | None = Field(default=None, max_length=64)
    slot: str | None = Field(default=None, max_length=200)
    run_status: str = Field(default="", max_length=20)  # the run's end status, once ended


@dataclass(frozen=True)
class Offer:
    """A job as a runner is handed it: the payload, and who submitted it (the account the
    broker authenticated, from the topic; a requeued job carries it from the first runner)."""

    job: dict[str, Any]
    submitter: str
    hops: int = 0

    @property
    def id(self) -> str:
        return str(self.job.get("id", ""))

    def state(self, status: JobStatus, runner: str, *, run: str | None = None,
              reason: str = "") -> JobState:
        j = self.job
        campaign, slot = j.get("campaign"), j.get("slot")
        return JobState(job=self.id, status=status, runner=runner, submitter=self.submitter[:120],
                        task=str(j.get("task") or j.get("kind") or "")[:80],
                        scale=str(j.get("scale") or "")[:20], agent=str(j.get("agent") or "")[:40],
                        run=run, reason=reason[:500], hops=self.hops, ts=time.time(),
                        campaign=campaign[:64] if isinstance(campaign, str) else None,
                        slot=slot[:200] if isinstance(slot, str) else None)


@dataclass(frozen=True)
class Verdict:
    """What the runner made of an offer: `busy` puts it back on the queue; `done` is a request
    that needs no run (a campaign's)."""

    status: Literal["started", "refused", "busy", "done"]
    run: str | None = None
    reason: str = ""


Handler = Callable[[Offer], Awaitable[Verdict]]


def parse_offer(topics: Topics, topic: str, payload: bytes, rejects: RejectCounter) -> Offer | None:
    """The offer in a jobs or requeue message, or None (counted in `rejects` by reason)."""
    if len(payload) > MAX_JOB_BYTES:
        rejects.add("oversized", f"job {len(payload)} bytes")
        return None
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        rejects.add("bad_json", str(exc)[:80])
        return None
    submitter = topics.submitter_of(topic)
    hops = 0
    if submitter is None:
        if topics.requeued_by(topic) is None:
            rejects.add("bad_topic", topic[:120])
            return None
        # a runner put it back: only runner accounts may publish there (the broker's ACL)
        if not isinstance(body, dict) or not isinstance(body.get("submitted_by"), str):
            rejects.add("bad_job", "a requeued job names its submitter")
            return None
        submitter, raw_hops, body = body["submitted_by"], body.get("hops"), body.get("job")
        hops = raw_hops if isinstance(raw_hops, int) and not isinstance(raw_hops, bool) else 0
    if not isinstance(body, dict) or not (isinstance(body.get("task"), str) or body.get("kind") == "campaign"):
        rejects.add("bad_job", "a job is a JSON object with a string 'task', or a campaign request")
        return None
    job_id = body.get("id")
    if job_id in (None, ""):
        body = {**body, "id": uuid.uuid4().hex}  # a job without an id gets one, for its state
    elif not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        rejects.add("bad_job", "a job id is 1-80 letters, digits or . _ : @ -")
        return None
    return Offer(body, submitter[:120], max(0, hops))


class RefusalLog:
    """Refusals in the log, rate-limited: the first of a window is logged, then one line per
    `every` seconds says how many more there were."""

    def __init__(self, every: float = REFUSAL_LOG_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._window_start: float | None = None
        self._suppressed = 0
        self._last = ""
        self.lines = 0  # lines written: what a flood costs the log

    def note(self, job: str, reason: str) -> None:
        now = self.clock()
        if self._window_start is not None and now - self._window_start < self.every:
            self._suppressed += 1
            self._last = reason
            return
        self.flush()
        self._window_start = now
        self.lines += 1
        log.warning("job %s refused: %s", job, reason)

    def flush(self) -> None:
        if self._suppressed:
            self.lines += 1
            log.warning("%d more jobs refused in the last %.0f s (the last: %s)", self._suppressed,
                        self.every, self._last)
        self._suppressed = 0


class JobTaker:
    """A runner's door to the jobs queue: its own persistent connection, one job at a time."""

    def __init__(self, config: BusConfig, runner_id: str, handler: Handler, rejects: RejectCounter,
                 *, on_state: Callable[[JobState], Awaitable[None]] | None = None,
                 session_expiry: int = SESSION_EXPIRY_S) -> None:
        self.config = config
        self.topics = Topics(config.prefix)
        self.runner_id = runner_id
        self.handler = handler
        self.rejects = rejects
        self.on_state = on_state
        self.session_expiry = session_expiry
        self.link = Reconnector(config, f"jobs of runner {runner_id}")
        self.connected = False
        self.subscribed: set[str] = set()
        self.refusals = RefusalLog()
        self.rescued: list[str] = []  # runners whose jobs session this one took over
        self._client: BusClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._ready = asyncio.Event()  # connected and subscribed
        self._kept: OrderedDict[str, None] = OrderedDict()  # job states retained, oldest first
        self._known: OrderedDict[str, JobState] = OrderedDict()  # the latest state of each job
        self._online: OrderedDict[str, bool] = OrderedDict()
        self._rescues: dict[str, asyncio.Task[None]] = {}
        self._unsent: OrderedDict[str, JobState] = OrderedDict()  # ended states the broker lacks
        self._watchers: list[Callable[[JobState], None]] = []
        self._taking: str | None = None  # the job being decided: its end waits for its start

    @staticmethod
    def client_id(runner: str) -> str:
        return f"mlrb-jobs-{runner}"

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self.config.host_port()
        if self.config.username and self.config.username != self.runner_id:
            raise ValueError(f"runner id {self.runner_id!r} is not the bus account "
                             f"{self.config.username!r} it authenticates as")
        if self._task is None:
            self._task = asyncio.create_task(self._main(), name=f"jobs-{self.runner_id}")

    async def stop(self) -> None:
        """Disconnect; the session stays, so jobs wait at the broker for this runner or a rescuer."""
        self.link.stopping = True
        if self._task is not None and not self.connected and self.link.last_error == "":
            # a connection half made (subscribing) does not end cleanly when cancelled
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), STOP_WAIT_S)
        tasks = [*self._rescues.values(), *([self._task] if self._task else [])]
        for t in tasks:
            t.cancel()
        if tasks:  # bounded: a connection that does not close must not hold up the runner's stop
            _, stuck = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
            for t in stuck:
                log.warning("jobs: %s did not stop within %.0f s", t.get_name(), STOP_WAIT_S)
        self._task = None
        self._rescues.clear()
        self.refusals.flush()
        self.connected = False

    def notify_room(self) -> None:
        """A slot or a GPU was freed: a job waiting for room is offered again at once."""
        self._room.set()

    def state_of(self, job: str) -> JobState | None:
        return self._known.get(job)

    def states(self, campaign: str) -> list[JobState]:
        """The latest known state of each job of `campaign`, from every runner."""
        return [s for s in self._known.values() if s.campaign == campaign]

    def watch(self, callback: Callable[[JobState], None]) -> None:
        """Call `callback` with every job state this runner learns, its own or another's."""
        self._watchers.append(callback)

    async def ready(self) -> None:
        """Until the jobs connection is up and subscribed."""
        await self._ready.wait()

    async def offer(self, job: dict[str, Any], submitter: str) -> None:
        """Put a new job on the queue, where any runner with room takes it (this runner's
        requeue topic: the one queue a runner account may publish to). Raises MqttError or
        TimeoutError when the broker did not take it."""
        client = self._client
        if client is None:
            raise aiomqtt.MqttError("the jobs link is down")
        body = json.dumps({"job": job, "submitted_by": submitter, "hops": 0})
        await client.publish_checked(self.topics.requeue(self.runner_id), body.encode(), qos=1,
                                     timeout=PUBLISH_TIMEOUT)

    async def ended(self, state: JobState) -> None:
        """Keep a job's ended state, retained; kept here and sent on the next connection
        while the broker cannot be reached."""
        self._remember(state)
        self._unsent[state.job] = state
        self._unsent.move_to_end(state.job)
        while len(self._unsent) > MAX_KNOWN:
            self._unsent.popitem(last=False)
        if self._taking != state.job:  # else sent once its start is (a retained state: order counts)
            await self._send_unsent()

    async def _send_unsent(self) -> None:
        while self._unsent and (client := self._client) is not None:
            job, state = next(iter(self._unsent.items()))
            if not await self._record(client, state):
                return
            self._unsent.pop(job, None)

    # -- the connection -------------------------------------------------------------
    def _connect(self, client_id: str, *, expiry: int, receive_max: int) -> BusClient:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        props.ReceiveMaximum = receive_max
        client = _client(self.config, client_id, keepalive=15, clean_start=False, properties=props,
                         max_queued_incoming_messages=10_000)
        client._client.manual_ack_set(True)  # a job is acknowledged once decided, not on arrival
        return client

    async def _main(self) -> None:
        await self.link.run(lambda: self._connect(self.client_id(self.runner_id),
                                                  expiry=self.session_expiry, receive_max=1),
                            self._session, self._down)

    async def _down(self) -> None:
        self.connected = False
        self._ready.clear()
        self.subscribed.clear()
        self._client = None

    async def _session(self, client: BusClient) -> None:
        # subscribed on every connection: a rescuer may have ended this runner's session
        for topic in (self.topics.shared_jobs, self.topics.shared_requeue):
            await client.subscribe_checked(topic, qos=1)
            self.subscribed.add(topic)
        # who is offline and what became of each job: QoS 0, outside the one-job window
        for topic in (self.topics.all_runner_states, self.topics.all_job_states):
            await client.subscribe_checked(topic, qos=0)
            self.subscribed.add(topic)
        self._client = client
        self.connected = True
        self._ready.set()
        self.link.up()
        await self._send_unsent()
        async for message in client.messages:
            topic = message.topic.value
            payload = _payload_bytes(message.payload)
            if message.qos == 0:
                self._on_news(topic, payload)
                continue
            try:
                await self._take(client, topic, payload)
            except (aiomqtt.MqttError, TimeoutError):
                raise  # not acknowledged: the broker hands it again on the next connection
            except Exception:  # a handler's bug must not stop the queue, nor replay the job
                log.exception("jobs: taking a job from %s failed", topic)
            client._client.ack(message.mid, message.qos)

    # -- taking a job ---------------------------------------------------------------
    async def _take(self, client: BusClient, topic: str, payload: bytes) -> None:
        offer = parse_offer(self.topics, topic, payload, self.rejects)
        if offer is None:
            return
        if self._settled(offer):
            return
        self._taking = offer.id
        try:
            await self._decide(client, offer)
        finally:
            self._taking = None
        await self._send_unsent()

    async def _decide(self, client: BusClient, offer: Offer) -> None:
        self._room.clear()
        verdict = await self.handler(offer)
        if verdict.status == "busy":
            wait = min(REQUEUE_WAIT_MIN_S * 2 ** min(offer.hops, 10), REQUEUE_WAIT_MAX_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), wait)
            if self._settled(offer):  # started elsewhere, or withdrawn, while it waited for room
                return
            verdict = await self.handler(offer)
        if verdict.status == "busy":
            await self._requeue(client, offer, f"no room on {self.runner_id}: {verdict.reason}")
        elif verdict.status == "started":
            await self._record(client, offer.state("started", self.runner_id, run=verdict.run))
        elif verdict.status == "refused":
            self.refusals.note(offer.id, verdict.reason)
            await self._record(client, offer.state("refused", self.runner_id, reason=verdict.reason))

    def _settled(self, offer: Offer) -> bool:
        """Whether the job already started somewhere or ended (then it is dropped, counted)."""
        known = self._known.get(offer.id)
        if known is not None and known.status in ("started", "ended"):
            self.rejects.add("duplicate_job", f"{offer.id} {known.status} on {known.runner}")
            return True
        return False

    async def _requeue(self, client: BusClient, offer: Offer, reason: str) -> None:
        """Put a job back on the queue (QoS 1, confirmed) before its own message is acked."""
        body = json.dumps({"job": offer.job, "submitted_by": offer.submitter, "hops": offer.hops + 1})
        await client.publish_checked(self.topics.requeue(self.runner_id), body.encode(), qos=1,
                                     timeout=PUBLISH_TIMEOUT)
        await self._record(client, offer.state("requeued", self.runner_id, reason=reason))

    async def _record(self, client: BusClient, state: JobState) -> bool:
        """Keep the job's state retained (bounded: the oldest is cleared) and tell the owner;
        False when the broker did not take it. An ended state reaches the owner only once
        the broker has it, so a journal row still `started` says it is to be sent again."""
        self._remember(state)
        topic = self.topics.job_state(self.runner_id, state.job)
        try:
            await client.publish_checked(topic, state.model_dump_json().encode(), qos=1,
                                         retain=True, timeout=PUBLISH_TIMEOUT)
            self._kept[topic] = None
            self._kept.move_to_end(topic)
            while len(self._kept) > MAX_KEPT_STATES:
                old, _ = self._kept.popitem(last=False)
                await client.publish(old, b"", qos=1, retain=True, timeout=PUBLISH_TIMEOUT)
        except (aiomqtt.MqttError, TimeoutError) as exc:  # the journal has it; the bus is best effort
            log.warning("jobs: state of job %s not published: %s", state.job, exc)
            if state.status == "ended":
                return False
        if self.on_state is not None:
            await self.on_state(state)
        return True

    def _remember(self, state: JobState) -> None:
        old = self._known.get(state.job)
        if old is not None and _RANK[old.status] >= _RANK["started"] and _RANK[state.status] < _RANK[old.status]:
            return  # once started anywhere, a job stays started (or ended)
        self._known[state.job] = state
        self._known.move_to_end(state.job)
        while len(self._known) > MAX_KNOWN:
            self._known.popitem(last=False)
        for watcher in self._watchers:
            watcher(state)

    # -- the other runners ----------------------------------------------------------
    def _on_news(self, topic: str, payload: bytes) -> None:
        source = self.topics.job_state_source(topic)
        if source is not None:
            if payload:
                with contextlib.suppress(ValidationError, ValueError):
                    state = JobState.model_validate_json(payload)
                    if state.runner == source[0] and state.job == source[1]:
                        self._remember(state)
            return
        runner = self.topics.runner_of(topic)
        if runner is None or runner == self.runner_id:
            return
        online = payload not in (b"", b"offline")
        self._online[runner] = online
        self._online.move_to_end(runner)
        while len(self._online) > MAX_RUNNERS:
            self._online.popitem(last=False)
        if online:
            task = self._rescues.pop(runner, None)
            if task is not None and not task.done():
                task.cancel()
        elif runner not in self._rescues or self._rescues[runner].done():
            self._rescues[runner] = asyncio.create_task(self._rescue_later(runner),
                                                        name=f"jobs-rescue-{runner}")

    def _rescuer_is_me(self) -> bool:
        """The first live runner by id takes an offline runner's jobs: one rescuer, not many."""
        live = [r for r, up in self._online.items() if up]
        return all(self.runner_id <= r for r in live)

    async def _rescue_later(self, runner: str) -> None:
        await asyncio.sleep(RESCUE_GRACE_S)
        while not self.connected:  # the jobs go back on the queue over this runner's link
            await asyncio.sleep(0.2)
        if self._online.get(runner) is False and self._rescuer_is_me():
            try:
                await self.rescue(runner)
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                log.warning("jobs: the jobs of offline runner %s not taken over: %s", runner, exc)

    async def rescue(self, runner: str) -> int:
        """Take over `runner`'s jobs session and put every job in it back on the queue; the
        session ends with this connection. Returns how many jobs went back."""
        moved = 0
        async with self._connect(self.client_id(runner), expiry=0, receive_max=100) as dead:
            # no new job comes to the dead session; what it holds still does
            for topic in (self.topics.shared_jobs, self.topics.shared_requeue):
                await dead.unsubscribe(topic, timeout=PUBLISH_TIMEOUT)
            messages = dead.messages.__aiter__()
            while True:
                try:
                    message = await asyncio.wait_for(messages.__anext__(), RESCUE_QUIET_S)
                except TimeoutError:
                    break
                try:
                    if message.qos == 0:
                        continue
                    offer = parse_offer(self.topics, message.topic.value,
                                        _payload_bytes(message.payload), self.rejects)
                    known = self._known.get(offer.id) if offer is not None else None
                    if offer is None or (known is not None and known.status in ("started", "ended")):
                        continue
                    client = self._client
                    if client is None:
                        raise aiomqtt.MqttError("the jobs link is down")
                    await self._requeue(client, offer, f"runner {runner} went offline before starting it")
                    moved += 1
                finally:
                    dead._client.ack(message.mid, message.qos)
        self.rescued.append(runner)
        log.warning("jobs: runner %s is offline; %d of its jobs went back on the queue", runner, moved)
        return moved


async def read_job_states(config: BusConfig, job: str | None = None,
                          timeout: float = 1.0, *, submitted: bool = False) -> list[JobState]:
    """The job states the runners keep at the broker (one job's, or all), newest first; with
    `submitted`, also the jobs their submitters queued that no runner has answered yet."""
    topics = Topics(config.prefix)
    found: list[JobState] = []
    quiet = min(0.3, timeout)
    async with asyncio.timeout(timeout + 5.0):
        async with _client(config, f"mlrb-cli-{uuid.uuid4().hex[:12]}") as client:
            await client.subscribe_checked(topics.job_states_of(job) if job else topics.all_job_states,
                                           qos=1)
            if submitted:
                await client.subscribe_checked(topics.all_submitted, qos=1)
            async for topic, payload in retained_messages(client, timeout, quiet):
                if not payload or len(payload) > MAX_JOB_BYTES:
                    continue
                with contextlib.suppress(ValidationError, ValueError):
                    state = JobState.model_validate_json(payload)
                    if (source := topics.job_state_source(topic)) is not None:
                        if state.runner == source[0]:  # a runner speaks only for itself
                            found.append(state)
                    elif (mine := topics.submitted_source(topic)) is not None:
                        # a submitter speaks only for its own jobs, and only of their waiting
                        if state.status == "queued" and (state.submitter, state.job) == mine:
                            found.append(state)
    return sorted(found, key=lambda s: s.ts, reverse=True)


def latest_by_job(states: list[JobState]) -> dict[str, JobState]:
    """Each job's latest state; a start anywhere wins over a later requeue elsewhere, an end
    over its start, and a runner's word over the submitter's "queued", whatever the clocks say."""
    out: dict[str, JobState] = {}
    for s in sorted(states, key=lambda s: (s.status != "queued", s.ts)):
        old = out.get(s.job)
        if old is None or _RANK[s.status] >= _RANK[old.status] or _RANK[old.status] < _RANK["started"]:
            out[s.job] = s
    return out


__all__ = [
    "JobState", "JobTaker", "Offer", "RefusalLog", "Verdict", "latest_by_job", "parse_offer",
    "read_job_states",
]
