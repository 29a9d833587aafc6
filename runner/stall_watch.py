"""StallWatch: notices a run that has gone quiet, GPUs idle under a running command, or an LLM
call past its timeout, and says so once per episode.

The supervisor tells it what happens (an event, a command's start and end, GPU samples, an
LLM call's start and end) and ticks it from a task of its own; `due()` returns the alarms to
raise now. An alarm fires once, and again only after its condition cleared and came back.
While the run is not active (held, frozen, waiting for approval, scoring) nothing fires and
the episodes start over, so time spent stopped never counts towards an alarm.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

AlarmCode = Literal["stalled", "gpu_idle", "llm_slow"]
ALARM_CODES: tuple[AlarmCode, ...] = ("stalled", "gpu_idle", "llm_slow")
IDLE_UTIL_PCT = 5.0  # a device below this utilisation is idle
# the runner's own sampling and word, not progress
QUIET_KINDS = frozenset({"resource", "gpu", "run.warning", "notify.sent"})


@dataclass(frozen=True)
class Thresholds:
    """Seconds before each alarm; 0 turns that alarm off."""

    quiet_s: float = 30 * 60
    gpu_idle_s: float = 20 * 60
    llm_call_s: float = 600

    @property
    def any(self) -> bool:
        return self.quiet_s > 0 or self.gpu_idle_s > 0 or self.llm_call_s > 0

    @property
    def tick_s(self) -> float:
        """How often to look: often enough to fire within a fifth of the shortest threshold."""
        on = [t for t in (self.quiet_s, self.gpu_idle_s, self.llm_call_s) if t > 0]
        return max(0.05, min([5.0, *(t / 5 for t in on)]))


@dataclass(frozen=True)
class Alarm:
    code: AlarmCode
    message: str
    idle_s: float  # how long the condition has held


def fmt_span(seconds: float) -> str:
    """'45s', '12m', '2h05m'."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class StallWatch:
    def __init__(self, thresholds: Thresholds | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.thresholds = thresholds or Thresholds()
        self._now = clock
        now = clock()
        self._last_event = now
        self._command_since: float | None = None
        self._gpu_busy = now  # the last moment a device was busy (or the idle clock restarted)
        self._gpu_seen = False  # a run without GPU samples is not a GPU run
        self._llm_since: float | None = None
        self._fired: set[AlarmCode] = set()
        self._active = True

    # -- what happens ------------------------------------------------------------------
    def saw_event(self, kind: str) -> None:
        if kind not in QUIET_KINDS:
            self._last_event = self._now()
            self._fired.discard("stalled")

    def command_started(self) -> None:
        self._command_since = self._now()

    def command_ended(self) -> None:
        self._command_since = None
        self._fired.discard("gpu_idle")

    def gpu(self, utils: Iterable[object]) -> None:
        """Per-device utilisation percents of one sample; a missing reading is skipped."""
        seen = [float(u) for u in utils if isinstance(u, (int, float)) and not isinstance(u, bool)]
        if not seen:
            return
        self._gpu_seen = True
        if max(seen) >= IDLE_UTIL_PCT:
            self._gpu_busy = self._now()
            self._fired.discard("gpu_idle")

    def llm_started(self) -> None:
        self._llm_since = self._now()

    def llm_ended(self) -> None:
        self._llm_since = None
        self._fired.discard("llm_slow")

    @property
    def firing(self) -> frozenset[AlarmCode]:
        return frozenset(self._fired)

    # -- the tick ----------------------------------------------------------------------
    def due(self, active: bool) -> list[Alarm]:
        """The alarms to raise now. `active`: the run is running and its clock is on."""
        now = self._now()
        if not active:
            self._active = False
            self._fired.clear()
            return []
        if not self._active:
            # back from a stop: every episode starts over from now
            self._active = True
            self._last_event = now
            self._gpu_busy = now
            if self._command_since is not None:
                self._command_since = now
            if self._llm_since is not None:
                self._llm_since = now
        t = self.thresholds
        out: list[Alarm] = []
        quiet = now - self._last_event
        if t.quiet_s > 0 and quiet >= t.quiet_s:
            out.append(Alarm("stalled", f"no event for {fmt_span(quiet)}", quiet))
        if t.gpu_idle_s > 0 and self._gpu_seen and self._command_since is not None:
            idle = now - max(self._gpu_busy, self._command_since)
            if idle >= t.gpu_idle_s:
                out.append(Alarm("gpu_idle", f"GPUs idle for {fmt_span(idle)} while a command runs",
                                 idle))
        if t.llm_call_s > 0 and self._llm_since is not None:
            waited = now - self._llm_since
            if waited >= t.llm_call_s:
                out.append(Alarm("llm_slow", f"LLM call running for {fmt_span(waited)}, past its "
                                             f"{fmt_span(t.llm_call_s)} timeout", waited))
        fresh = [a for a in out if a.code not in self._fired]
        self._fired.update(a.code for a in fresh)
        return fresh


__all__ = ["ALARM_CODES", "IDLE_UTIL_PCT", "Alarm", "AlarmCode", "StallWatch", "Thresholds",
           "fmt_span"]
