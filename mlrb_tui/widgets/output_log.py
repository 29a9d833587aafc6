"""The sandbox's output: bounded, escape-free lines (the state strips them on the way in).

Finished lines are kept in a bounded deque and drawn one row each; the lines a command is
still writing (a progress bar redrawn with carriage returns) follow them and are replaced
in place at each repaint, so a bar updates on its own row instead of piling up.
"""

from __future__ import annotations

from collections import deque

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mlrb_tui.state import RunState

MAX_LINES = 2000
STREAM_STYLE = {"stdout": "", "stderr": "yellow", "result": "dim"}
_STYLES = {stream: Style.parse(spec) if spec else Style() for stream, spec in STREAM_STYLE.items()}


class OutputLog(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    OutputLog {
        background: $surface;
        color: $foreground;
        overflow-y: scroll;
        overflow-x: auto;
    }
    OutputLog:focus {
        background-tint: $foreground 5%;
    }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.auto_scroll = True
        self._done: deque[tuple[str, str]] = deque(maxlen=MAX_LINES)
        self._tail: list[tuple[str, str]] = []  # lines still being written, redrawn in place
        self._widest = 0
        self._drawn = 0
        self._generation = -1
        self._partial_version = -1

    @property
    def lines(self) -> list[Strip]:
        """Every row as drawn, finished lines first, then those still being written."""
        return [self._strip(stream, text) for stream, text in (*self._done, *self._tail)]

    def clear(self) -> None:
        self._done.clear()
        self._tail = []
        self._widest = 0
        self._resized()

    def sync(self, state: RunState) -> None:
        if state.generation != self._generation:
            self.clear()
            self._generation, self._drawn, self._partial_version = state.generation, 0, -1
        new = state.output_total - self._drawn
        moved = False
        if new > 0:
            for stream, line in list(state.output)[-min(new, MAX_LINES):]:
                self._add(self._done, stream, line)
            self._drawn = state.output_total
            moved = True
        if state.partial_version != self._partial_version:
            self._partial_version = state.partial_version
            self._tail = []
            for stream, line in state.partial_lines():
                self._add(self._tail, stream, line)
            moved = True
        if moved:
            self._resized()

    def _add(self, into: deque[tuple[str, str]] | list[tuple[str, str]], stream: str, line: str) -> None:
        line = line.expandtabs(8)
        into.append((stream, line))
        self._widest = max(self._widest, Segment(line).cell_length)

    def _resized(self) -> None:
        self.virtual_size = Size(self._widest, len(self._done) + len(self._tail))
        if self.auto_scroll:
            self.scroll_end(animate=False, immediate=False, x_axis=False)
        self.refresh()

    def _strip(self, stream: str, text: str) -> Strip:
        # a Segment, not markup: sandbox text like "[red]" must show as typed
        return Strip([Segment(text, _STYLES.get(stream, Style()))])

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        row = scroll_y + y
        width = self.scrollable_content_region.width
        done = len(self._done)
        if row < done:
            stream, text = self._done[row]
        elif row - done < len(self._tail):
            stream, text = self._tail[row - done]
        else:
            return Strip.blank(width, self.rich_style)
        return self._strip(stream, text).crop_extend(scroll_x, scroll_x + width, self.rich_style) \
            .apply_style(self.rich_style)
