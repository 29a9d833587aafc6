"""What the console writes to its terminal: partial updates cut to what changed, and a watch
on the writes that tells when the terminal does not keep up.

Textual sends a changed span of a line from the left edge of the widget under it; in a table
one line wide, a changed cell then resends every cell to its left. `CroppedUpdate` starts at
the first segment the span touches instead. `WriteWatch` times the driver's writes and reads
the depth of its writer thread's queue: a write blocks, and the queue fills, when the
terminal (an SSH link) reads more slowly than the console writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.control import Control
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
                append(strip.render(console))
            if y != last_y:
                append("\n")
        return "".join(sequences)


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


__all__ = ["CroppedUpdate", "WriteWatch"]
