"""What the console writes to its terminal: partial updates cut to what changed, and a watch
on the writes that tells when the terminal does not keep up.

Textual sends a changed span of a line from the left edge of the widget under it; in a table
one line wide, a changed cell then resends every cell to its left. `CroppedUpdate` starts at
the first segment the span touches instead, and sends a colour change alone where that is
all that changes between two segments. `WriteWatch` times the driver's writes and reads
the depth of its writer thread's queue: a write blocks, and the queue fills, when the
terminal (an SSH link) reads more slowly than the console writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.cells import cell_len
from rich.color import ColorSystem
from rich.console import Console
from rich.control import Control
from rich.style import Style
from textual._compositor import ChopsUpdate
from textual.strip import Strip


class CroppedUpdate(ChopsUpdate):
    """A partial update that sends each changed span alone, cut on both sides."""

    @classmethod
    def of(cls, update: ChopsUpdate) -> CroppedUpdate:
        return cls(update.chops, update.spans, update.chop_ends)

    def render_segments(self, console: Console) -> str:
        sequences: list[str] = []
        append = sequences.append
        move_to = Control.move_to
        last_y = self.spans[-1][0]
        for y, x1, x2 in self.spans:
            for end, (x, strip) in zip(self.chop_ends[y], self.chops[y].items(), strict=False):
                if strip is None or x >= x2 or end <= x1:
                    continue
                if x < x1:
                    # whole segments only: a wide character is never split at the left edge
                    segments = list(strip)
                    skip = 0
                    for segment in segments:
                        width = cell_len(segment.text)
                        if x + width > x1:
                            break
                        x += width
                        skip += 1
                    strip = Strip(segments[skip:])
                if end > x2:
                    strip = strip.crop(0, x2 - x)
                append(move_to(x, y).segment.text)
                append(render_strip(strip, console))
            if y != last_y:
                append("\n")
        return "".join(sequences)


def _shown_alike(a: Style, b: Style) -> bool:
    """The same style but for its foreground colour (neither a link)."""
    return (a._attributes & a._set_attributes) == (b._attributes & b._set_attributes) \
        and a._bgcolor == b._bgcolor and not a._link and not b._link


def render_strip(strip: Strip, console: Console) -> str:
    """A strip's terminal sequences, as Textual's own but for one thing: where only the
    foreground colour changes from one segment to the next, that colour is all that is sent
    (Textual resets and restates the whole style, about twenty bytes a segment)."""
    color_system = console._color_system or ColorSystem.TRUECOLOR
    out: list[str] = []
    shown: Style | None = None  # the style the terminal is in, when not reset
    for text, style, _ in strip:
        if shown is not None and style is not None and style._color is not None \
                and _shown_alike(shown, style):
            if style._color != shown._color:
                codes = style._color.downgrade(color_system).get_ansi_codes()
                out.append(f"\x1b[{';'.join(codes)}m")
            out.append(text)
            shown = style
            continue
        if shown is not None:
            out.append("\x1b[0m")
            shown = None
        if style is None or style._link:
            out.append(text if style is None else Strip.render_style(style, text, color_system))
            continue
        ansi = style._ansi if style._ansi is not None else Strip.render_ansi(style, color_system)
        if not ansi:
            out.append(text)
            continue
        out.append(f"\x1b[{ansi}m{text}")
        shown = style
    if shown is not None:
        out.append("\x1b[0m")
    return "".join(out)


class WriteWatch:
    """Times a driver's writes and reads how many wait in its writer thread's queue."""

    def __init__(self, driver: Any, clock: Callable[[], float] = time.perf_counter) -> None:
        self.driver = driver
        self.clock = clock
        self.slowest = 0.0  # the longest write since the last `take`
        self.written = 0  # characters handed to the driver, for figures
        self._write: Callable[[str], None] = driver.write
        driver.write = self._timed

    def _timed(self, data: str) -> None:
        start = self.clock()
        self._write(data)
        self.slowest = max(self.slowest, self.clock() - start)
        self.written += len(data)

    def queued(self) -> int:
        """Writes waiting for the terminal (0 for a driver with no writer thread)."""
        thread = getattr(self.driver, "_writer_thread", None)
        queue = getattr(thread, "_queue", None)
        return queue.qsize() if queue is not None else 0

    def take(self) -> tuple[float, int]:
        """The longest write since the last call, and the writes queued now."""
        slowest, self.slowest = self.slowest, 0.0
        return slowest, self.queued()

    def close(self) -> None:
        self.driver.write = self._write


__all__ = ["CroppedUpdate", "WriteWatch", "render_strip"]
