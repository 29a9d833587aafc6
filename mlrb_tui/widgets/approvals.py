"""The approval queue: the run's tool calls waiting for an operator, oldest first."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from mlrb_tui.signals import PendingCall, RunSignals
from mlrb_tui.state import summarize_args


def call_text(call: PendingCall) -> Text:
    text = Text("✋ ", style="bold yellow")
    text.append(summarize_args(call.name, 30), style="bold cyan")
    text.append(f" {summarize_args(call.args, 90)}")
    text.append(f"  [{call.call_id[:12]}]", style="dim")
    return text


class ApprovalQueue(OptionList):
    """Shown only while something waits; the highlighted call is what y/e/n act on."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._ids: list[str] = []
        self.calls: dict[str, PendingCall] = {}

    def sync(self, signals: RunSignals) -> None:
        ids = list(signals.pending)
        self.display = bool(ids)
        if ids == self._ids:
            return
        keep = self.selected
        self._ids = ids
        self.calls = dict(signals.pending)
        self.clear_options()
        self.add_options(Option(call_text(c), id=c.call_id) for c in signals.pending.values())
        if ids:
            self.highlighted = ids.index(keep.call_id) if keep and keep.call_id in ids else 0

    @property
    def selected(self) -> PendingCall | None:
        if not self._ids:
            return None
        i = self.highlighted if self.highlighted is not None else 0
        return self.calls.get(self._ids[min(i, len(self._ids) - 1)])
