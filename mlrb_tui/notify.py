"""The console's bell: an open console rings the terminal bell and sends an OSC 9 desktop
notification (`ESC ] 9 ; text BEL`, shown by iTerm2, WezTerm, kitty, Ghostty and others,
and carried through SSH like any output) for what calls an operator in the events
it sees live: the same triggers and gate as the daemon's notifications (runner.notify),
per kind as `[notify] kinds` says, off with `[notify] console = false`.

`saw` is told of each event folded into the fleet; `tick` (the app's repaint timer) writes
what is due, so alerts that fire together ring once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from runner.config import NotifyTable
from runner.escapes import strip_escapes
from runner.events import Event
from runner.notify import Alert, Gate, alert_for

BEL = "\x07"
STALE_S = 120.0  # an older event is history caught up on, not news
MAX_TEXT = 240
SHOWN = 5  # alerts named in one notification; the rest are counted


def osc9(text: str) -> str:
    """An OSC 9 notification carrying `text`, made safe: no escape or control byte of the
    text can end the sequence early or start another one."""
    safe = " ".join(strip_escapes(text).split())  # split() also drops the tabs and newlines it keeps
    if len(safe) > MAX_TEXT:
        safe = safe[: MAX_TEXT - 1] + "…"
    return f"\x1b]9;{safe}{BEL}"


def summary(alerts: list[Alert], more: int = 0) -> str:
    """One line for a notification about `alerts` (and `more` not named)."""
    if len(alerts) == 1 and not more:
        return f"MLRB: {alerts[0].title}"
    named = "; ".join(a.title for a in alerts[:SHOWN])
    rest = len(alerts) + more - min(len(alerts), SHOWN)
    return f"MLRB: {len(alerts) + more} alerts: {named}" + (f"; and {rest} more" if rest else "")


class ConsoleBell:
    """Rings for alerts in the live event stream; `write` puts text on the terminal."""

    def __init__(self, settings: NotifyTable, write: Callable[[str], None], *,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.gate = Gate(settings.window_s, settings.digest_after, settings.digest_s)
        self._write = write
        self._clock = clock
        self._mono = monotonic
        self._due: list[Alert] = []
        self.rung = 0

    @property
    def on(self) -> bool:
        return self.settings.console

    def saw(self, ev: Event) -> None:
        """An event folded into the fleet (FleetState.listeners)."""
        if not self.on or self._clock() - ev.ts > STALE_S:
            return
        alert = alert_for(ev)
        if alert is None or not self.settings.enabled(alert.kind):
            return
        if self.gate.offer(alert, self._mono()) == "send":
            self._due.append(alert)

    def tick(self) -> str:
        """Write what is due (one bell and one notification at most); returns what was written."""
        alerts, self._due = self._due, []
        more = 0
        digest = self.gate.due(self._mono())
        if digest is not None:
            alerts.extend(digest.alerts)
            more = digest.more
        if not alerts:
            return ""
        out = osc9(summary(alerts, more)) + BEL  # the BEL inside ends the OSC; this one rings
        self._write(out)
        self.rung += 1
        return out


__all__ = ["BEL", "ConsoleBell", "osc9", "summary"]
