"""The model's reply as it streams in: the last few lines of it, shown only while it streams."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from mlrb_tui.state import LiveReply, RunState

MAX_LINES = 6
PART_STYLE = {"text": "", "thinking": "dim italic", "tool_args": "cyan"}


def render_live(live: LiveReply, max_lines: int = MAX_LINES) -> Text:
    """The reply so far: thinking dimmed, tool arguments after their tool's name, tail only."""
    out = Text()
    for part, tool, text in live.parts:
        if part == "tool_args":
            out.append(f"{tool}(", style="bold cyan")
        out.append(text, style=PART_STYLE.get(part, ""))
        if part == "tool_args":
            out.append("\n")
    lines = out.split("\n", allow_blank=True)
    tail = Text("\n").join(lines[-max_lines:]) if len(lines) > max_lines else out
    step = f" step {live.step}" if live.step is not None else ""
    return Text.assemble((f"model replying{step}… ", "bold"), "\n", tail)


class LiveReplyView(Static):
    DEFAULT_CSS = """
    LiveReplyView {
        height: auto;
        max-height: 8;
        padding: 0 1;
        border-top: solid $primary 30%;
        display: none;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", markup=False, **kwargs)  # type: ignore[arg-type]
        self._version = -1

    def sync(self, state: RunState) -> None:
        live = state.live
        if live.version == self._version:
            return
        self._version = live.version
        self.display = bool(live.parts)
        if live.parts:
            self.update(render_live(live))
