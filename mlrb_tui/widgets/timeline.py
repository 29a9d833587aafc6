"""The agent's action timeline: one line per tool call, result, step, message, operator act.

A cursor moves over the entries; enter (or space outside a replay) expands a call's full
arguments or a result's output, and collapses it again. Only the last MAX_LINES entries are
held as options, so a long run costs the same as a short one.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.binding import Binding
from textual.widgets import OptionList
from textual.widgets.option_list import Option

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

# what the jump keys look for
IS_ERROR: Callable[[Entry], bool] = lambda e: e.tone == "bad"  # noqa: E731
IS_INTERVENTION: Callable[[Entry], bool] = lambda e: e.tone == "operator" or e.kind == "control.ack"  # noqa: E731
IS_SCORE: Callable[[Entry], bool] = lambda e: e.kind == "score"  # noqa: E731


def entry_text(entry: Entry, origin: float, expanded: bool = False) -> Text:
    text = Text(f"{'+' + fmt_duration(entry.ts - origin):>8} ", style="dim")
    style = LABEL_STYLE.get(entry.label, TONE_STYLE.get(entry.tone, ""))
    if entry.tone == "operator":
        style = "bold magenta"
    text.append(f"{entry.label:<8} ", style=style)
    text.append(entry.text, style=TONE_STYLE.get(entry.tone, ""))
    if entry.detail:
        text.append(" ▾" if expanded else " ▸", style="dim")
        if expanded:
            for line in entry.detail.splitlines():
                text.append("\n" + " " * 18 + line, style="dim")
    return text


class ActionLog(OptionList):
    """Adds only what is new since the last sync; rebuilds when the state is reset."""

    BINDINGS = [
        Binding("enter", "toggle_entry", "Expand/collapse", id="timeline.toggle"),
    ]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.entries: list[Entry] = []
        self.expanded: set[int] = set()  # seqs shown in full
        self._drawn = 0
        self._generation = -1
        self.origin = 0.0
        self.follow = True  # the cursor stays on the newest entry until the operator moves it

    def sync(self, state: RunState) -> None:
        if state.generation != self._generation:
            self.clear_options()
            self.entries, self.expanded = [], set()
            self._generation, self._drawn = state.generation, 0
        new = state.timeline_total - self._drawn
        if new <= 0:
            return
        entries = list(state.timeline)[-min(new, MAX_LINES):]
        if entries and not self.origin:
            self.origin = entries[0].ts
        self._drawn = state.timeline_total
        follow = self.follow or self.highlighted is None or (
            self.highlighted >= self.option_count - 1)
        if len(self.entries) + len(entries) > MAX_LINES * 3 // 2:
            # trim in one go now and then, not one option per new entry
            keep = self.entries[-(MAX_LINES - len(entries)):] if len(entries) < MAX_LINES else []
            self.clear_options()
            self.entries = []
            entries = keep + entries
        self.entries += entries
        self.add_options(Option(entry_text(e, self.origin, e.seq in self.expanded))
                         for e in entries)
        if follow and self.option_count:
            self.highlighted = self.option_count - 1

    def plain_lines(self) -> list[str]:
        return [entry_text(e, self.origin, e.seq in self.expanded).plain for e in self.entries]

    @property
    def current(self) -> Entry | None:
        i = self.highlighted
        return self.entries[i] if i is not None and 0 <= i < len(self.entries) else None

    def action_toggle_entry(self) -> None:
        i = self.highlighted
        entry = self.current
        if i is None or entry is None or not entry.detail:
            return
        self.expanded.symmetric_difference_update({entry.seq})
        self.replace_option_prompt_at_index(i, entry_text(entry, self.origin,
                                                          entry.seq in self.expanded))
        self.follow = False

    def find_next(self, test: Callable[[Entry], bool]) -> bool:
        """Move the cursor to the next entry after it that passes `test`; False if none."""
        start = (self.highlighted if self.highlighted is not None else -1) + 1
        for i in range(start, len(self.entries)):
            if test(self.entries[i]):
                self.highlighted = i
                self.follow = False
                self.scroll_to_highlight()
                return True
        return False

    def search(self, needle: str) -> bool:
        """The next entry containing `needle` (case-insensitive), wrapping to the top."""
        n = needle.strip().lower()
        if not n:
            return False

        def hit(e: Entry) -> bool:
            return n in e.text.lower() or n in e.detail.lower() or n in e.label.lower()

        if self.find_next(hit):
            return True
        self.highlighted = None
        return self.find_next(hit)

    def on_key(self, event: object) -> None:
        # moving the cursor by hand stops following the newest entry
        key = getattr(event, "key", "")
        if key in ("up", "pageup", "home"):
            self.follow = False
        elif key == "end":
            self.follow = True
