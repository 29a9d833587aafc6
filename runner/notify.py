"""Notifier: calls an operator back when one is needed, through Apprise.

The engine hands it every event its runs publish (`observe`) and the bus link's ups and downs
(`link_changed`). What calls for an operator (`alert_for`: a tool call waiting for approval, a
run's end, a limit at 80%, a stall alarm, an integrity flag; and the broker lost for longer
than `broker_after_s`) passes a `Gate`: one per run per kind within `window_s`, and when more
than `digest_after` go out within `digest_s`, the rest wait and go as one digest. Each message
goes to every `[notify] urls` target from a thread pool of its own, so a slow or failing
target never holds up the runner, and each one sent becomes a `notify.sent` event on the run
it concerns (a broker lost concerns every live run, and is in the daemon's log too). The
console reuses `alert_for` and `Gate` for its bell (mlrb_tui.notify).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, get_args

from runner.config import ConfigError, NotifyTable
from runner.escapes import strip_escapes
from runner.event_data import (
    IntegrityFlagData,
    RunEndedData,
    RunLimitData,
    RunWarningData,
    ToolApprovalData,
)
from runner.events import Event
from runner.stall_watch import ALARM_CODES

log = logging.getLogger(__name__)

NotifyKind = Literal["approval", "ended", "limit", "stall", "integrity", "broker"]
NOTIFY_KINDS: tuple[str, ...] = get_args(NotifyKind)
Verdict = Literal["send", "held", "repeat"]
Record = Callable[[str, dict[str, Any]], Awaitable[None]]

SENDERS = 4  # threads that talk to the targets
SEND_TIMEOUT_S = 30.0  # past this a target's answer is not waited for (its thread may go on)
MAX_INFLIGHT = 200  # messages on their way; more are dropped (and logged), never queued without end
MAX_HELD = 1000  # alerts a digest names; more are counted
MAX_KEYS = 10_000  # (run, kind) pairs remembered for the window
DIGEST_LINES = 40
MAX_TEXT = 500


def clean(text: object, limit: int = MAX_TEXT) -> str:
    """Untrusted text (run ids, reasons, tool names) as one line without terminal escapes."""
    s = " ".join(strip_escapes(str(text)).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


@dataclass(frozen=True)
class Alert:
    """One reason to call an operator: its kind, its run (None: the runner itself), its words."""

    kind: NotifyKind
    run: str | None
    title: str
    body: str
    seq: int | None = None  # the event that raised it
    once: str | None = None  # raised at most once per run under this name (a limit's)


def alert_for(ev: Event) -> Alert | None:
    """The alert an event raises, or None for an event that needs no operator."""
    body = ev.body
    run = clean(ev.run, 80)
    if isinstance(body, ToolApprovalData):
        if body.state != "pending":
            return None
        name = clean(body.name or "tool", 60)
        return Alert("approval", ev.run, f"{run}: a {name} call waits for approval",
                     f"Run {run} is waiting: its {name} call {clean(body.id, 80)} needs an "
                     f"operator's approval.", ev.seq)
    if isinstance(body, RunEndedData):
        why = f": {clean(body.reason, 300)}" if body.reason else ""
        return Alert("ended", ev.run, f"{run} ended {body.status}",
                     f"Run {run} ended {body.status}{why}.", ev.seq)
    if isinstance(body, RunLimitData):
        if body.level != "warning":
            return None  # a limit reached ends the run: its end says so
        share = f"{body.fraction:.0%}" if body.fraction is not None else "80%"
        of = f" ({body.used:g} of {body.max:g})" if body.used is not None and body.max is not None else ""
        return Alert("limit", ev.run, f"{run}: {share} of its {body.limit} limit used",
                     f"Run {run} has used {share} of its {body.limit} limit{of}.", ev.seq,
                     once=body.limit)
    if isinstance(body, RunWarningData):
        if body.code not in ALARM_CODES:
            return None
        return Alert("stall", ev.run, f"{run}: {body.code}",
                     f"Run {run}: {clean(body.message, 300)}.", ev.seq)
    if isinstance(body, IntegrityFlagData):
        check = clean(body.check or "integrity", 60)
        return Alert("integrity", ev.run, f"{run}: integrity flag {check}",
                     f"Run {run} was flagged by the {check} check ({clean(body.severity, 20)}): "
                     f"{clean(body.detail, 300)}", ev.seq)
    return None


@dataclass(frozen=True)
class Digest:
    """Alerts that fired together, sent as one message."""

    alerts: tuple[Alert, ...]
    more: int = 0  # past MAX_HELD: counted, not named

    @property
    def count(self) -> int:
        return len(self.alerts) + self.more

    def lines(self, limit: int = DIGEST_LINES) -> list[str]:
        out = [a.title for a in self.alerts[:limit]]
        rest = self.count - len(out)
        return [*out, f"… and {rest} more"] if rest > 0 else out


class Gate:
    """Which alerts go out alone now, which wait for a digest, and which repeat one sent lately.

    One per (run, kind) within `window_s`; at most `digest_after` alone within `digest_s`;
    while a digest is pending every new alert joins it, and it is due `digest_s` after its
    first. Times come from the caller (a monotonic clock)."""

    def __init__(self, window_s: float, digest_after: int, digest_s: float) -> None:
        self.window_s = window_s
        self.digest_after = digest_after
        self.digest_s = digest_s
        self._last: dict[tuple[str | None, str], float] = {}
        self._once: set[tuple[str, str, str]] = set()
        self._sent: deque[float] = deque()
        self._held: list[Alert] = []
        self._held_since: float | None = None
        self._more = 0
        self.repeats = 0

    def offer(self, alert: Alert, now: float) -> Verdict:
        if alert.once is not None and alert.run is not None:
            once = (alert.run, alert.kind, alert.once)
            if once in self._once:
                self.repeats += 1
                return "repeat"
            self._once.add(once)
        key = (alert.run, alert.kind)
        last = self._last.get(key)
        if last is not None and now - last < self.window_s:
            self.repeats += 1
            return "repeat"
        self._last[key] = now
        if len(self._last) > MAX_KEYS:
            self._last = {k: t for k, t in self._last.items() if now - t < self.window_s}
        if alert.kind == "ended" and alert.run is not None:  # nothing more comes of that run
            self._once = {k for k in self._once if k[0] != alert.run}
        while self._sent and now - self._sent[0] >= self.digest_s:
            self._sent.popleft()
        if self._held or len(self._sent) >= self.digest_after:
            if not self._held:
                self._held_since = now
            if len(self._held) < MAX_HELD:
                self._held.append(alert)
            else:
                self._more += 1
            return "held"
        self._sent.append(now)
        return "send"

    @property
    def next_due(self) -> float | None:
        """When the pending digest is due, or None when none is pending."""
        if self._held_since is None:
            return None
        return self._held_since + self.digest_s

    def due(self, now: float, *, force: bool = False) -> Digest | None:
        """The pending digest once it is due (or at once with `force`), else None."""
        due = self.next_due
        if due is None or (not force and now < due):
            return None
        digest = Digest(tuple(self._held), self._more)
        self._held, self._held_since, self._more = [], None, 0
        self._sent.append(now)
        return digest


@dataclass(frozen=True)
class Message:
    """What one send carries: a title, a body, and the alerts it tells of."""

    title: str
    body: str
    alerts: tuple[Alert, ...]
    digest: int | None = None

    @staticmethod
    def of(alert: Alert) -> Message:
        return Message(f"MLRB: {alert.title}", alert.body, (alert,))

    @staticmethod
    def of_digest(digest: Digest) -> Message:
        return Message(f"MLRB: {digest.count} notifications at once",
                       "\n".join(f"- {line}" for line in digest.lines()), digest.alerts,
                       digest=digest.count)


# -- delivery ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Channel:
    """One Apprise target: its URL with the secrets masked, and Apprise's object for it."""

    name: str
    target: Any


def channels(urls: Sequence[str]) -> list[Channel]:
    """Apprise's object for each URL; a URL Apprise does not know is a ConfigError."""
    if not urls:
        return []
    import apprise  # only where notifications are configured: it loads every plugin

    out = []
    for i, url in enumerate(urls):
        target = apprise.Apprise.instantiate(url)
        if target is None:
            scheme = url.split("://", 1)[0][:20]
            raise ConfigError(f"[notify] urls[{i}]: Apprise cannot send to this URL "
                              f"({scheme}://…); see its list of supported services")
        out.append(Channel(str(target.url(privacy=True)).split("?", 1)[0], target))
    return out


class _ThreadLog(logging.Handler):
    """Apprise says why a send failed only in its log: keep each sender thread's warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._lines: dict[int, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        lines = self._lines.get(threading.get_ident())
        if lines is not None and len(lines) < 5:
            lines.append(record.getMessage())

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        ident = threading.get_ident()
        lines: list[str] = []
        self._lines[ident] = lines
        try:
            yield lines
        finally:
            self._lines.pop(ident, None)


_apprise_log = _ThreadLog()
_apprise_log_on = threading.Lock()


def _listen_to_apprise() -> None:
    with _apprise_log_on:
        logger = logging.getLogger("apprise")
        if _apprise_log not in logger.handlers:
            logger.addHandler(_apprise_log)


def send_blocking(target: Any, title: str, body: str) -> tuple[bool, str]:
    """One message to one target, in the calling thread: (ok, why it failed)."""
    with _apprise_log.capture() as lines:
        ok = bool(target.notify(body=body, title=title))
    return ok, "" if ok else clean("; ".join(lines) or "the target did not take it")


class Notifier:
    """The daemon's notifications: triggers in, through the gate, out to every Apprise target."""

    def __init__(self, settings: NotifyTable, record: Record, live_runs: Callable[[], list[str]],
                 runner: Callable[[], str], clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.gate = Gate(settings.window_s, settings.digest_after, settings.digest_s)
        self._record = record
        self._live_runs = live_runs
        self._runner = runner
        self._now = clock
        self._channels: list[Channel] = []
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._digest_task: asyncio.Task[None] | None = None
        self._broker_task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._closed = False
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        """Check the targets (a ConfigError names a bad URL) and make the senders."""
        self._channels = channels(self.settings.urls)
        if self._channels and self._pool is None:
            _listen_to_apprise()
            # its own threads: the event loop's default pool also does the journal's reads
            self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="mlrb-notify")

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self._channels]

    # -- what comes in -------------------------------------------------------------------
    def observe(self, events: Sequence[Event]) -> None:
        """Events just journaled and published (the engine's fan-out); returns at once."""
        if not self._channels:
            return
        for ev in events:
            alert = alert_for(ev)
            if alert is not None:
                self.offer(alert)

    def offer(self, alert: Alert) -> None:
        if self._closed or not self._channels or not self.settings.enabled(alert.kind):
            return
        verdict = self.gate.offer(alert, self._now())
        if verdict == "send":
            self._spawn(self._send(Message.of(alert)))
        elif verdict == "held" and self._digest_task is None:
            self._digest_task = asyncio.create_task(self._digest_later(), name="notify-digest")

    def link_changed(self, up: bool, error: str = "") -> None:
        """The bus link came up or went down (RunnerEndpoint.on_link)."""
        if up:
            if self._down_since is not None and self._broker_task is None:  # it was told of
                log.warning("notify: runner %s has its broker back after %.0f s", self._runner(),
                            self._now() - self._down_since)
            self._down_since = None
            if self._broker_task is not None:
                self._broker_task.cancel()
                self._broker_task = None
            return
        if self._down_since is not None or self._closed:
            return  # the same outage: every failed reconnect says so again
        self._down_since = self._now()
        self._broker_task = asyncio.create_task(self._broker_lost(error), name="notify-broker")

    async def _broker_lost(self, error: str) -> None:
        await asyncio.sleep(self.settings.broker_after_s)
        self._broker_task = None
        since = self._now() - (self._down_since if self._down_since is not None else self._now())
        why = f" ({clean(error, 200)})" if error else ""
        log.warning("notify: runner %s has lost its broker for %.0f s%s", self._runner(), since, why)
        self.offer(Alert("broker", None, f"runner {clean(self._runner(), 80)} lost its broker",
                         f"Runner {clean(self._runner(), 80)} has been without its broker for "
                         f"{since:.0f} s{why}. Its runs go on; the console and commands cannot "
                         "reach them until the broker is back."))

    # -- what goes out -------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if len(self._tasks) >= MAX_INFLIGHT:
            coro.close()
            self.dropped += 1
            log.warning("notify: %d messages already on their way; one dropped", len(self._tasks))
            return
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _digest_later(self) -> None:
        try:
            while (due := self.gate.next_due) is not None:
                await asyncio.sleep(max(0.0, due - self._now()))
                digest = self.gate.due(self._now())
                if digest is not None:
                    self._spawn(self._send(Message.of_digest(digest)))
        finally:
            self._digest_task = None

    async def _deliver(self, channel: Channel, msg: Message) -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, send_blocking, channel.target, msg.title, msg.body),
                SEND_TIMEOUT_S)
        except TimeoutError:
            return False, f"no answer within {SEND_TIMEOUT_S:g} s"
        except Exception as exc:  # noqa: BLE001 - a broken target is a failed send, never a crash
            return False, clean(f"{type(exc).__name__}: {exc}")

    async def _send(self, msg: Message) -> None:
        results = await asyncio.gather(*(self._deliver(c, msg) for c in self._channels))
        live: list[str] | None = None
        for channel, (ok, error) in zip(self._channels, results, strict=True):
            if ok:
                self.sent += 1
                log.info("notify: %s sent to %s", msg.title, channel.name)
            else:
                self.failed += 1
                log.warning("notify: %s to %s failed: %s", msg.title, channel.name, error)
            for alert in msg.alerts:
                if alert.run is None and live is None:
                    live = self._live_runs()
                runs = [alert.run] if alert.run is not None else live or []
                data: dict[str, Any] = {
                    "channel": channel.name, "kind": alert.kind, "result": "ok" if ok else "failed",
                    "title": clean(msg.title, 200)}
                if error:
                    data["error"] = error
                if alert.seq is not None:
                    data["trigger_seq"] = alert.seq
                if msg.digest is not None:
                    data["digest"] = msg.digest
                for run in runs:
                    try:
                        await self._record(run, data)
                    except Exception as exc:  # noqa: BLE001 - the record may be closing
                        log.warning("notify: cannot record on %s: %s", run, exc)

    async def close(self, timeout: float = 10.0) -> None:
        """Send what waits for a digest now, and wait (up to `timeout`) for what is on its way."""
        self._closed = True
        for task in (self._broker_task, self._digest_task):
            if task is not None:
                task.cancel()
        self._broker_task = None
        digest = self.gate.due(self._now(), force=True)
        if digest is not None:
            self._spawn(self._send(Message.of_digest(digest)))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


__all__ = ["NOTIFY_KINDS", "Alert", "Channel", "Digest", "Gate", "Message", "NotifyKind",
           "Notifier", "alert_for", "channels", "clean", "send_blocking"]
