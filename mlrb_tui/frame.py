"""What one repaint draws from, and the hook every screen implements to draw it.

The app's repaint timer builds a `Frame` and hands it to each screen on the stack; a screen
draws from the frame and what it was given when it was made, never from the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rich.text import Text

from mlrb_tui.controls import Selection
from mlrb_tui.state import FleetState


@dataclass(frozen=True, slots=True)
class Frame:
    """The console at one repaint."""

    fleet: FleetState
    now: float
    topbar: Text  # journal, bus state, operator, read-only
    changed: tuple[str, ...] = ()  # runs whose rows changed since the last fresh frame
    # something changed, or a second passed: False when only a playing replay moves on
    fresh: bool = True


@runtime_checkable
class Repaintable(Protocol):
    """A screen the repaint timer paints."""

    def repaint(self, frame: Frame) -> None: ...


@runtime_checkable
class Aimed(Protocol):
    """A screen the operator's controls act from: it says which runs they aim at."""

    def selection(self) -> Selection: ...


__all__ = ["Aimed", "Frame", "Repaintable"]
