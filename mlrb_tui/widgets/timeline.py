"""The agent's action stream: one line per tool call, result, step, message, operator act."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from mlrb_tui.state import Entry, RunState, fmt_duration

TONE_STYLE = {
    "normal": "", "ok": "green", "bad": "red", "warn": "yellow", "operator": "magenta",
    "dim": "dim",
}
LABEL_STYLE = {
    "call": "bold cyan", "result": "", "step": "dim", "agent": "bold blue",
    "ack": "bold", "flag": "bold red", "warning": "bold yellow", "limit": "bold yellow",
}
MAX_LINES = 1000


def entry_text(entry: Entry, origin: float) -> Text:
    text = Text(f"{'+' + fmt_duration(entry.ts - origin):>8} ", style="dim")
    style = LABEL_STYLE.get(entry.label, TONE_STYLE.get(entry.tone, ""))
    if entry.tone == "operator":
        style = "bold magenta"
    text.append(f"{entry.label:<8} ", style=style)
    text.append(entry.text, style=TONE_STYLE.get(entry.tone, ""))
    return text


class ActionLog(RichLog):
    """Draws only what is new since the last repaint; redraws when the state is reset."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=False, markup=False, highlight=False,
                         auto_scroll=True, **kwargs)  # type: ignore[arg-type]
        self._drawn = 0
        self._generation = -1
        self.origin = 0.0

    def sync(self, state: RunState) -> None:
        if state.generation != self._generation:
            self.clear()
            self._generation, self._drawn = state.generation, 0
        new = state.timeline_total - self._drawn
        if new <= 0:
            return
        entries = list(state.timeline)[-min(new, MAX_LINES):]
        if entries and not self.origin:
            self.origin = entries[0].ts
        for entry in entries:
            self.write(entry_text(entry, self.origin))
        self._drawn = state.timeline_total
