"""The operator's intervention dialogs: message the agent, reject with a reason, edit a call's
arguments before approving it, change a limit, and the typed confirmation of a bulk action.

Each is a ModalScreen that dismisses with what the operator entered (None when cancelled),
validated before it is handed back, so the app only ever sends well-formed commands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, TextArea

from mlrb_tui.frame import Frame
from mlrb_tui.state import one_line
from runner.control import LIMIT_NAMES


@dataclass(frozen=True)
class Entered:
    """What a dialog hands back: the main text (or parsed value) and the reason."""

    value: Any
    reason: str


class Dialog(ModalScreen[Entered | None]):
    """A titled box with fields, an error line, and OK/Cancel; subclasses validate."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel"),
        Binding("ctrl+s", "ok", "Send", id="dialog.ok"),
    ]
    OK_LABEL = "Send"
    OK_VARIANT = "primary"

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title_text = title

    def fields(self) -> ComposeResult:
        yield from ()

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            yield from self.fields()
            yield Label("", id="error")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(self.OK_LABEL, variant=self.OK_VARIANT, id="ok")  # type: ignore[arg-type]

    def repaint(self, frame: Frame) -> None:
        """It shows what it was opened with: a new frame changes nothing in it."""

    def entered(self) -> Entered:
        """The dialog's result; raises ValueError with words the operator reads."""
        raise NotImplementedError

    def fail(self, why: str) -> None:
        self.query_one("#error", Label).update(why)

    @on(Button.Pressed, "#ok")
    def action_ok(self) -> None:
        try:
            result = self.entered()
        except ValueError as exc:
            self.fail(str(exc))
            return
        self.dismiss(result)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_ok()

    def reason(self, default: str) -> str:
        return self.query_one("#reason", Input).value.strip() or default


class MessageDialog(Dialog):
    """A message to the agent, delivered at its next turn as from the operator."""

    def __init__(self, runs: list[str]) -> None:
        super().__init__(f"Message to the agent of {_names(runs)}")

    def fields(self) -> ComposeResult:
        yield Label("Delivered at the agent's next turn, marked as from the operator.")
        yield Input(placeholder="message", id="text")
        yield Input(placeholder="reason (for the audit log)", id="reason")

    def on_mount(self) -> None:
        self.query_one("#text", Input).focus()

    def entered(self) -> Entered:
        text = self.query_one("#text", Input).value.strip()
        if not text:
            raise ValueError("the message is empty")
        return Entered(text, self.reason("message from the console"))


class RejectDialog(Dialog):
    OK_LABEL = "Reject"
    OK_VARIANT = "error"

    def __init__(self, run: str, call: str) -> None:
        super().__init__(f"Reject {call} in {one_line(run, 64)}")

    def fields(self) -> ComposeResult:
        yield Label("The agent sees the reason as the call's result.")
        yield Input(placeholder="reason", id="reason")

    def on_mount(self) -> None:
        self.query_one("#reason", Input).focus()

    def entered(self) -> Entered:
        reason = self.query_one("#reason", Input).value.strip()
        if not reason:
            raise ValueError("say why: the agent reads the reason")
        return Entered(None, reason)


class EditCallDialog(Dialog):
    """The call's arguments as JSON; approved only once they parse to an object."""

    OK_LABEL = "Approve edited"

    def __init__(self, run: str, call: str, args_json: str) -> None:
        super().__init__(f"Edit {call} in {one_line(run, 64)}, then approve")
        self.args_json = args_json

    def fields(self) -> ComposeResult:
        yield TextArea(self.args_json, language=None, id="args")
        yield Input(placeholder="reason (for the audit log)", id="reason")

    def on_mount(self) -> None:
        self.query_one("#args", TextArea).focus()

    def entered(self) -> Entered:
        raw = self.query_one("#args", TextArea).text
        try:
            args = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"not JSON: {one_line(exc, 100)}") from None
        if not isinstance(args, dict):
            raise ValueError("the arguments must be a JSON object")
        return Entered(args, self.reason("approved with edited arguments"))


class LimitDialog(Dialog):
    def __init__(self, runs: list[str]) -> None:
        super().__init__(f"Change a limit of {_names(runs)}")

    def fields(self) -> ComposeResult:
        yield Select([(n, n) for n in LIMIT_NAMES], value="time_s", allow_blank=False, id="name")
        yield Input(placeholder="new value (seconds, steps, tokens or USD)", id="value")
        yield Input(placeholder="reason", id="reason")

    def on_mount(self) -> None:
        self.query_one("#value", Input).focus()

    def entered(self) -> Entered:
        name = str(self.query_one("#name", Select).value)
        if name not in LIMIT_NAMES:
            raise ValueError("choose a limit")
        raw = self.query_one("#value", Input).value.strip()
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError("the limit must be a positive number")
        number: float | int = int(value) if name in ("steps", "tokens") else value
        return Entered((name, number), self.reason(f"{name} limit changed from the console"))


class BulkConfirm(Dialog):
    """A bulk action on marked runs, confirmed by typing the number of runs or the action."""

    OK_VARIANT = "error"

    def __init__(self, action: str, runs: list[str]) -> None:
        super().__init__(f"{action.capitalize()} {len(runs)} runs: {_names(runs)}?")
        self.action_name = action
        self.runs = runs
        self.OK_LABEL = f"{action.capitalize()} {len(runs)} runs"

    def fields(self) -> ComposeResult:
        yield Label(f"Type {len(self.runs)} or {self.action_name} to confirm:")
        yield Input(id="typed")
        yield Input(value=f"{self.action_name} from the console (bulk)", id="reason")

    def on_mount(self) -> None:
        self.query_one("#typed", Input).focus()

    def entered(self) -> Entered:
        typed = self.query_one("#typed", Input).value.strip().lower()
        if typed not in (str(len(self.runs)), self.action_name):
            raise ValueError(f"type {len(self.runs)} or {self.action_name}")
        return Entered(self.runs, self.reason(f"{self.action_name} from the console"))


def _names(runs: list[str]) -> str:
    names = ", ".join(one_line(r, 40) for r in runs[:4])
    return names + (f" and {len(runs) - 4} more" if len(runs) > 4 else "")
