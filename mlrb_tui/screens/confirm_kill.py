"""The kill confirmation: names the run(s), asks for a reason, defaults to No."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from mlrb_tui.frame import Frame
from mlrb_tui.state import one_line

DEFAULT_REASON = "killed by operator"


class KillConfirm(ModalScreen[bool]):
    """Dismissed with True only by the Kill button (or ctrl+k again); `reason` holds the text."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="cancel"),
        Binding("ctrl+k", "confirm", "Kill", id="confirm_kill"),
    ]

    def __init__(self, runs: list[str], detail: str = "") -> None:
        super().__init__()
        self.runs = runs
        self.detail = detail
        self.reason = DEFAULT_REASON

    def compose(self) -> ComposeResult:
        names = ", ".join(one_line(r, 64) for r in self.runs[:5])
        if len(self.runs) > 5:
            names += f" and {len(self.runs) - 5} more"
        with Vertical(id="dialog"):
            yield Label(f"Kill {names}?", id="question")
            if self.detail:
                yield Label(self.detail, id="detail")
            yield Label("The sandbox is stopped and the run ends as killed. Reason:")
            yield Input(value=DEFAULT_REASON, id="reason")
            with Horizontal(id="buttons"):
                yield Button("Cancel", variant="primary", id="cancel")
                yield Button(f"Kill {len(self.runs)} run" + ("s" if len(self.runs) > 1 else ""),
                             variant="error", id="kill")

    def repaint(self, frame: Frame) -> None:
        """It shows what it was opened with: a new frame changes nothing in it."""

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    @on(Button.Pressed, "#kill")
    def action_confirm(self) -> None:
        self.reason = self.query_one("#reason", Input).value.strip() or DEFAULT_REASON
        self.dismiss(True)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(False)

    @on(Input.Submitted, "#reason")
    def _reason_entered(self) -> None:
        self.query_one("#kill", Button).focus()
