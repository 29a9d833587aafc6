"""The repaint rate over a link that may not keep up: halved while the terminal's output backs
up, down to a floor, and doubled back to the chosen rate once it has drained for a while.

Textual-free: the app feeds it what it sees of its writes (the slowest write since the last
look, the writes still queued) and retimes its repaint timer when the rate changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

FLOOR_HZ = 1.0
SLOW_WRITE_S = 0.05  # a write that blocked this long: the terminal is not reading
BACKLOG = 4  # writes queued for the terminal at one look: it is behind
HOLD_S = 1.0  # between two halvings, so one burst halves once
RECOVER_S = 5.0  # clear this long before each doubling


@dataclass
class RepaintPacer:
    """The repaint rate now, from looks at the terminal's output."""

    top_hz: float
    floor_hz: float = FLOOR_HZ
    slow_write_s: float = SLOW_WRITE_S
    backlog: int = BACKLOG
    hold_s: float = HOLD_S
    recover_s: float = RECOVER_S
    on_change: Callable[[float], None] | None = None
    hz: float = field(init=False)
    _changed_at: float | None = field(init=False, default=None)
    _clear_since: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.floor_hz = min(self.floor_hz, self.top_hz)
        self.hz = self.top_hz

    @property
    def slowed(self) -> bool:
        return self.hz < self.top_hz

    def backed_up(self, slowest_write_s: float, queued: int) -> bool:
        return slowest_write_s >= self.slow_write_s or queued >= self.backlog

    def observe(self, now: float, slowest_write_s: float, queued: int) -> bool:
        """One look at the output since the last; True when the rate changed."""
        if self.backed_up(slowest_write_s, queued):
            self._clear_since = None
            held = self._changed_at is not None and now - self._changed_at < self.hold_s
            if held or self.hz <= self.floor_hz:
                return False
            return self._set(max(self.floor_hz, self.hz / 2), now)
        if self._clear_since is None:
            self._clear_since = now
        if not self.slowed or now - self._clear_since < self.recover_s:
            return False
        self._clear_since = now  # the next doubling waits for another clear spell
        return self._set(min(self.top_hz, self.hz * 2), now)

    def _set(self, hz: float, now: float) -> bool:
        self.hz, self._changed_at = hz, now
        if self.on_change is not None:
            self.on_change(hz)
        return True

    def status(self) -> str:
        """What the status line says of the link: nothing while it keeps up."""
        return f"slow link: repainting at {self.hz:g} Hz" if self.slowed else ""


__all__ = ["RepaintPacer"]
