"""The help screen: every key that works where the operator was, as currently mapped."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from mlrb_tui.frame import Frame


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,question_mark,q", "dismiss", "Close", id="close_help"),
    ]

    def __init__(self, keys: list[tuple[str, str]], title: str, notes: list[str]) -> None:
        super().__init__()
        self.keys = keys
        self.title_text = title
        self.notes = notes

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, what in self.keys:
            table.add_row(key, what)
        with VerticalScroll(id="help"):
            yield Static(Text(self.title_text, style="bold"), id="help-title")
            yield Static(table)
            for note in self.notes:
                yield Static(Text(note, style="dim"), classes="note")

    def repaint(self, frame: Frame) -> None:
        """It shows what it was opened with: a new frame changes nothing in it."""

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
