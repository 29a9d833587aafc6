"""The intervention audit log: who did what to the run, when, why, and what the runner said."""

from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from mlrb_tui.state import RunState, one_line


def audit_table(state: RunState, limit: int = 50) -> Table | Text:
    if not state.audit:
        return Text("no interventions", style="dim")
    table = Table(box=None, show_header=True, header_style="dim", padding=(0, 1), expand=True)
    for col in ("when", "who", "what", "why", "ack"):
        table.add_column(col, no_wrap=True, overflow="ellipsis")
    for r in list(state.audit)[-limit:]:
        what = r["action"]
        detail = {k: v for k, v in r["detail"].items() if k in ("text", "call_id", "on", "name",
                                                               "value", "state")}
        if detail:
            what += " " + one_line(" ".join(f"{k}={v}" for k, v in detail.items()), 50)
        ack = r.get("ack") or "waiting"
        table.add_row(time.strftime("%H:%M:%S", time.gmtime(r["ts"])), r["operator"], what,
                      r["reason"] or "—",
                      Text(ack, style="green" if ack.startswith("accepted") else
                           "red" if ack.startswith("refused") else "yellow"))
    return table


class AuditLog(Static):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._version = -1

    def sync(self, state: RunState) -> None:
        if state.audit_version != self._version:
            self._version = state.audit_version
            self.update(audit_table(state))
