"""The sandbox's output: bounded, escape-free lines (the state strips them on the way in)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from mlrb_tui.state import RunState

MAX_LINES = 2000
STREAM_STYLE = {"stdout": "", "stderr": "yellow", "result": "dim"}


class OutputLog(RichLog):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=False, markup=False, highlight=False,
                         auto_scroll=True, **kwargs)  # type: ignore[arg-type]
        self._drawn = 0
        self._generation = -1

    def sync(self, state: RunState) -> None:
        if state.generation != self._generation:
            self.clear()
            self._generation, self._drawn = state.generation, 0
        new = state.output_total - self._drawn
        if new <= 0:
            return
        for stream, line in list(state.output)[-min(new, MAX_LINES):]:
            # Text, not markup: sandbox text like "[red]" must show as typed
            self.write(Text(line, style=STREAM_STYLE.get(stream, "")))
        self._drawn = state.output_total
