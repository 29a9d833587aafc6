"""The replay bar: play state, speed, position, and a bar that seeks when clicked."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.message import Message
from textual.widgets import Static

from mlrb_tui.replay import ReplayController
from mlrb_tui.state import fmt_duration


class Scrubber(Static):
    @dataclass
    class Seek(Message):
        fraction: float

    BAR_START = 18  # columns before the bar starts (see `show`)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._bar_width = 20

    def show(self, ctl: ReplayController) -> None:
        width = max(10, self.size.width - 60)
        self._bar_width = width
        filled = int(round(ctl.fraction * width))
        text = Text()
        state = "▶ playing" if ctl.playing else ("■ ended  " if ctl.finished else "‖ paused ")
        text.append(f" {state}", style="bold green" if ctl.playing else "bold yellow")
        text.append(f" {ctl.speed:>5g}x ", style="bold")
        text.append("█" * filled, style="cyan")
        text.append("░" * (width - filled), style="dim")
        text.append(f" {ctl.fraction:4.0%}", style="bold")
        text.append(f"  seq {ctl.position}/{ctl.max_seq}", style="dim")
        text.append(f"  +{fmt_duration(ctl.now_ts - ctl.t0)} / {fmt_duration(ctl.t1 - ctl.t0)}",
                    style="dim")
        self.update(text)

    def on_click(self, event: events.Click) -> None:
        x = event.x - self.BAR_START
        if 0 <= x <= self._bar_width:
            self.post_message(self.Seek(x / max(1, self._bar_width)))
