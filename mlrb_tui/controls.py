"""The operator's controls without the terminal: which runs a control aims at, the typed
commands it sends, and the runner's answers matched to them.

The app asks this for every command and relays the `Notice`s it hands back; nothing here
imports Textual, so the rules are tested without a Pilot.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from mlrb_tui.state import FleetState, one_line
from runner.control import ControlCommand
from runner.event_data import ControlAckData
from runner.events import TERMINAL_STATUSES

# the actions of the `control(...)` key action: the reason says it all
CONTROL_ACTIONS = ("hold", "freeze", "resume", "kill")
BULK_CONFIRMED = ("hold", "freeze")  # bulk kill is confirmed too, by its own dialog
MAX_UNANSWERED = 500  # commands never answered are forgotten past this, oldest first
ACK_LOG = 50

Severity = Literal["information", "warning", "error"]


@dataclass(frozen=True, slots=True)
class Notice:
    """A line for the operator, shown as a toast."""

    text: str
    severity: Severity = "information"
    title: str = ""
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Selection:
    """Where the operator points: the run under the cursor, and the marked runs still shown."""

    cursor: str | None = None
    marked: tuple[str, ...] = ()

    @property
    def runs(self) -> list[str]:
        """The runs a control applies to: the marked ones, else the one under the cursor."""
        if self.marked:
            return sorted(self.marked)
        return [self.cursor] if self.cursor else []


@dataclass(frozen=True, slots=True)
class Aim:
    """The selected runs split into the live ones a control goes to and the ended ones."""

    selected: tuple[str, ...]
    live: tuple[str, ...]
    ended: tuple[tuple[str, str], ...]  # (run, its terminal status)

    def notices(self) -> list[Notice]:
        """Why some or all of the selected runs get nothing."""
        out = [Notice(f"{run} has ended ({status})", "warning") for run, status in self.ended]
        if not self.selected:
            out.append(Notice("no run selected", "warning"))
        return out


class Controls:
    """Builds the operator's commands, remembers them until the runner answers, and words
    the answers. `fleet` is read for run statuses and approval mode, and for the acks."""

    def __init__(self, fleet: FleetState, operator: str) -> None:
        self.fleet = fleet
        self.operator = operator
        self.sent: dict[str, ControlCommand] = {}  # command id -> command, to match acks
        self.acks_seen = 0
        self.ack_log: deque[str] = deque(maxlen=ACK_LOG)  # the runner's answers, newest last

    # -- aiming ---------------------------------------------------------------------
    def aim(self, selection: Selection) -> Aim:
        selected = tuple(selection.runs)
        live: list[str] = []
        ended: list[tuple[str, str]] = []
        for run in selected:
            status = self.fleet.rows.get(run, {}).get("status")
            if status in TERMINAL_STATUSES:
                ended.append((run, str(status)))
            else:
                live.append(run)
        return Aim(selected, tuple(live), tuple(ended))

    @staticmethod
    def bulk_confirmed(action: str, runs: tuple[str, ...] | list[str]) -> bool:
        """Hold or freeze of more than one run waits for a typed confirmation."""
        return len(runs) > 1 and action in BULK_CONFIRMED

    def kill_detail(self, run: str) -> str:
        """The line under the kill question: what the run is and where it stands."""
        row = self.fleet.rows.get(run, {})
        return (f"{one_line(row.get('task') or '?', 40)} · {one_line(row.get('agent') or '?', 20)}"
                f" · {one_line(row.get('status') or '?', 12)}")

    # -- building -------------------------------------------------------------------
    def command(self, run: str, action: str, reason: str, **args: Any) -> ControlCommand:
        """A command from this operator; its `invalid` says why when the args fit no model."""
        return ControlCommand.model_validate(
            {"run": run, "action": action, "operator": self.operator, "reason": reason,
             "args": args})

    def control(self, run: str, action: str, reason: str | None = None) -> ControlCommand:
        """hold, freeze, resume or kill."""
        return self.command(run, action, f"{action} from the console" if reason is None else reason)

    def message(self, run: str, text: str, reason: str) -> ControlCommand:
        return self.command(run, "message", reason, text=text)

    def toggle_approval_mode(self, run: str) -> ControlCommand:
        """Approval mode flipped from what the console last saw (off when never seen)."""
        on = not bool(self.fleet.signals_of(run).approval_mode)
        return self.command(run, "approval_mode",
                            f"approval mode {'on' if on else 'off'} from the console", on=on)

    def score(self, run: str) -> ControlCommand:
        return self.command(run, "score", "score requested from the console")

    def limit(self, run: str, name: str, value: float, reason: str) -> ControlCommand:
        return self.command(run, "limit", reason, name=name, value=value)

    def approve(self, run: str, call_id: str, reason: str = "approved from the console",
                args: dict[str, Any] | None = None) -> ControlCommand:
        if args is None:
            return self.command(run, "approve", reason, call_id=call_id)
        return self.command(run, "approve", reason, call_id=call_id, args=args)

    def reject(self, run: str, call_id: str, reason: str) -> ControlCommand:
        return self.command(run, "reject", reason, call_id=call_id)

    def shell(self, run: str, state: Literal["start", "end"],
              exit_code: int | None = None) -> ControlCommand:
        if state == "start":
            return self.command(run, "shell", "shell opened from the console", state="start")
        return self.command(run, "shell", "shell closed", state="end",
                            **({"exit_code": exit_code} if exit_code is not None else {}))

    # -- sending and answers -----------------------------------------------------------
    def admit(self, command: ControlCommand) -> Notice | None:
        """Remember a command about to be sent; a refusal (and nothing remembered) when its
        args fit no model, so the runner is never asked to refuse it."""
        if command.invalid:
            return Notice(f"{command.action} {command.run} not sent: "
                          f"{one_line(command.invalid, 200)}", "error", timeout=10)
        self.sent[command.id] = command
        if len(self.sent) > MAX_UNANSWERED:
            self.sent.pop(next(iter(self.sent)))
        return None

    def handed(self, command: ControlCommand) -> Notice:
        """The bus took the command."""
        return Notice(f"{command.action} sent to {command.run}; waiting for the runner",
                      timeout=3)

    def not_sent(self, command: ControlCommand, why: object, *, failed: bool = False) -> Notice:
        """The bus refused the command (`failed`: it broke on the way): no answer will come."""
        self.sent.pop(command.id, None)
        verb = "failed" if failed else "not sent"
        return Notice(f"{command.action} {command.run} {verb}: {one_line(why, 200)}", "error",
                      timeout=10)

    def answers(self) -> list[Notice]:
        """The runner's answers to this console's commands since the last call, worded;
        answers to other consoles' commands are dropped."""
        acks = list(self.fleet.acks)
        self.fleet.acks.clear()
        out = []
        for ev in acks:
            ack = ev.body
            if not isinstance(ack, ControlAckData):
                continue
            cmd = self.sent.pop(ack.command_id, None)
            if cmd is None:
                continue
            self.acks_seen += 1
            why = one_line(ack.reason, 120)
            if ack.accepted:
                text = f"{cmd.action} {cmd.run}: accepted" + (f" ({why})" if why else "")
                out.append(Notice(text, title="runner", timeout=6))
            else:
                text = f"{cmd.action} {cmd.run}: refused — {why or 'no reason given'}"
                out.append(Notice(text, "warning", title="runner", timeout=10))
            self.ack_log.append(text)
        return out


__all__ = ["Aim", "BULK_CONFIRMED", "CONTROL_ACTIONS", "Controls", "Notice", "Selection"]
