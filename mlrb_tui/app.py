"""The MLRB Console app: one client of the headless engine.

It reads the SQLite journal for backfill and history, follows the MQTT bus for live events
(falling back to polling the journal when the bus is down), and sends control commands over
the bus. Repaints are batched on a timer at `repaint_hz` and nothing animates, so it stays
light over SSH.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import App, SuspendNotSupported
from textual.binding import Binding

from mlrb_tui.replay import ReplayController, ReplayError
from mlrb_tui.screens.confirm_kill import KillConfirm
from mlrb_tui.screens.dashboard import DashboardScreen
from mlrb_tui.screens.help import HelpScreen
from mlrb_tui.screens.interventions import (
    BulkConfirm,
    EditCallDialog,
    Entered,
    LimitDialog,
    MessageDialog,
    RejectDialog,
)
from mlrb_tui.screens.run_view import RunScreen
from mlrb_tui.source import LiveSource, SendFailed
from mlrb_tui.state import FleetState, one_line
from runner.bus import BusConfig
from runner.control import ControlCommand, default_operator
from runner.events import TERMINAL_STATUSES
from runner.journal import JournalReader
from runner.shell import ShellError, shell_command

CONTROL_ACTIONS = ("hold", "freeze", "resume", "kill")
# the actions that change a run: hidden in --readonly and in a replay
OPERATOR_ACTIONS = frozenset({"control", "kill", "message", "approval_mode", "shell", "score",
                              "limit", "approve", "edit_approve", "reject"})
BULK_CONFIRMED = ("hold", "freeze")  # bulk kill is confirmed too, by its own dialog
KEY_NAMES = {
    "question_mark": "?", "slash": "/", "left_square_bracket": "[", "right_square_bracket": "]",
    "plus": "+", "equals_sign": "=", "minus": "-", "escape": "esc", "space": "space",
}


def key_label(keys: str) -> str:
    return " ".join(KEY_NAMES.get(k, k) for k in keys.split(","))


class MLRBApp(App[None]):
    CSS_PATH = "console.tcss"
    TITLE = "MLRB Console"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit"),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("p", "control('hold')", "Hold", id="hold"),
        Binding("f", "control('freeze')", "Freeze", id="freeze"),
        Binding("r", "control('resume')", "Resume", id="resume"),
        Binding("ctrl+k", "kill", "Kill", id="kill"),
        Binding("m", "message", "Message", id="message"),
        Binding("a", "approval_mode", "Approval mode", id="approval_mode"),
        Binding("s", "shell", "Shell", id="shell"),
        Binding("g", "score", "Score now", show=False, id="score"),
        Binding("L", "limit", "Limit", show=False, id="limit"),
    ]

    def __init__(self, journal_path: Path, bus: BusConfig | None = None, *,
                 readonly: bool = False, replay_run: str | None = None,
                 replay_speed: float = 1.0, operator: str | None = None,
                 clock: Callable[[], float] = time.time, repaint_hz: float = 8.0,
                 keymap: dict[str, str] | None = None, runs_dir: Path | None = None) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir) if runs_dir is not None else Path(journal_path).parent / "runs"
        self.journal_path = Path(journal_path)
        self.bus = bus
        self.readonly = readonly or replay_run is not None
        self.replay_run = replay_run
        self.replay_speed = replay_speed
        self.operator = operator or default_operator()
        self.clock = clock
        self.repaint_hz = max(0.5, min(float(repaint_hz), 30.0))
        self._keymap = dict(keymap or {})
        self.animation_level = "none"  # over SSH every frame costs; nothing here animates
        self.fleet = FleetState()
        self.source = LiveSource(self.journal_path, bus, fleet=self.fleet,
                                 on_change=self.request_repaint)
        self.dashboard: DashboardScreen | None = None
        self.sent: dict[str, ControlCommand] = {}  # command id -> command, to match acks
        self.acks_seen = 0
        self.ack_log: deque[str] = deque(maxlen=50)  # the runner's answers, newest last
        self._dirty = True
        self._last_full = 0.0
        self._replay_reader: JournalReader | None = None
        # runs a shell's argv with the terminal handed over; tests replace it
        self.run_shell: Callable[[list[str], Path | None], int] = self._run_shell_suspended

    # -- setup ----------------------------------------------------------------------
    def use_source(self, source: LiveSource) -> None:
        """Replace the live source before the app starts (tests inject feeds and senders)."""
        source.fleet = self.fleet
        source.on_change = self.request_repaint
        self.source = source

    def now(self) -> float:
        return self.clock()

    async def on_mount(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # the SSH session went away: end cleanly instead of writing to a dead terminal
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.exit)
        if self._keymap:
            self.set_keymap(self._keymap)
        if self.replay_run is not None:
            await self._open_replay(self.replay_run)
        else:
            self.dashboard = DashboardScreen()
            await self.push_screen(self.dashboard)
            self.run_worker(self._start_source(), name="live-source", group="source")
        self.set_interval(1.0 / self.repaint_hz, self._tick, name="repaint")

    async def _start_source(self) -> None:
        try:
            await self.source.start()
        except Exception as exc:  # a broken journal or bus URL is shown, not raised
            self.notify(f"cannot open the journal: {one_line(exc, 200)}", severity="error",
                        timeout=30)
        self.request_repaint()
        self._tick()
        # the widgets, styles and backfilled history live as long as the console: keep them
        # out of the cyclic collector, whose full passes over them stalled keys and repaints
        gc.collect()
        gc.freeze()

    async def _open_replay(self, run: str) -> None:
        def build() -> ReplayController:
            self._replay_reader = reader = JournalReader(self.journal_path)
            row = reader.find_run(run)
            return ReplayController(reader, row["run"] if row else run, speed=self.replay_speed)

        try:
            ctl = await asyncio.to_thread(build)
        except (ReplayError, OSError, Exception) as exc:
            self.exit(message=f"cannot replay {run}: {exc}")
            return
        await self.push_screen(RunScreen(ctl.run, replay=ctl))

    async def on_unmount(self) -> None:
        await self.source.stop()
        if self._replay_reader is not None:
            self._replay_reader.close()

    # -- repainting -----------------------------------------------------------------
    def request_repaint(self) -> None:
        self._dirty = True

    def _tick(self) -> None:
        now = self.now()
        screen = self.screen
        if isinstance(screen, RunScreen):
            screen.tick()
        second = now - self._last_full >= 1.0
        if not self._dirty and not second and not (isinstance(screen, RunScreen) and screen.replay):
            return
        self._dirty = False
        added, changed = self.fleet.take_changes()
        runs = added + sorted(changed.difference(added))
        if second:
            # elapsed time moves on for running runs without any event
            self._last_full = now
            runs += [r for r, row in self.fleet.rows.items()
                     if row.get("status") == "running" and r not in changed]
        if self.dashboard is not None and self.dashboard.is_mounted:
            with self.batch_update():
                self.dashboard.sync(self.fleet, now, runs)
        if isinstance(screen, RunScreen):
            screen.repaint(now)
        self._show_acks()

    def _show_acks(self) -> None:
        acks = list(self.fleet.acks)
        self.fleet.acks.clear()
        for ev in acks:
            cmd = self.sent.pop(str(ev.data.get("command_id")), None)
            if cmd is None:
                continue
            self.acks_seen += 1
            why = one_line(ev.data.get("reason", ""), 120)
            if ev.data.get("accepted"):
                text = f"{cmd.action} {cmd.run}: accepted" + (f" ({why})" if why else "")
                self.notify(text, title="runner", timeout=6)
            else:
                text = f"{cmd.action} {cmd.run}: refused — {why or 'no reason given'}"
                self.notify(text, title="runner", severity="warning", timeout=10)
            self.ack_log.append(text)

    def topbar_text(self) -> Text:
        text = Text()
        text.append(" MLRB Console ", style="bold reverse")
        if self.replay_run is not None:
            text.append("  REPLAY ", style="bold magenta")
            text.append(one_line(self.replay_run, 64))
            text.append(f"   journal: {self.journal_path.name}", style="dim")
            return text
        text.append(f"  journal: {self.journal_path.name}", style="dim")
        state = self.source.bus_state
        style = {"online": "green", "offline": "bold red", "none": "yellow"}[state]
        label = {"online": "online", "offline": "offline (polling the journal)",
                 "none": "none (journal only)"}[state]
        text.append("   bus: ", style="dim")
        text.append(label, style=style)
        text.append(f"   operator: {one_line(self.operator, 40)}", style="dim")
        if self.readonly:
            text.append("   READONLY", style="bold yellow")
        return text

    # -- navigation -----------------------------------------------------------------
    def open_run(self, run: str, *, logs: bool = False) -> None:
        self.push_screen(RunScreen(run, logs=logs))

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        # one line per action, with every key bound to it ("up k  Up")
        grouped: dict[tuple[int, str, str], list[str]] = {}
        screen = self.screen
        for key, active in self.active_bindings.items():
            b = active.binding
            # the app's, the screen's and the runs table's keys; not every widget's scrolling
            if not active.enabled or b.system or b.id is None or not (
                    active.node is self or active.node is screen
                    or type(active.node).__name__ == "RunsTable"):
                continue
            label = b.description or b.action
            shown = grouped.setdefault((id(active.node), b.action, label), [])
            if (name := key_label(b.key_display or key)) not in shown:
                shown.append(name)
        keys = [(" ".join(names), label) for (_, _, label), names in grouped.items()]
        keys.append(("ctrl+p", "command palette"))
        notes = ["Controls act on the marked runs (space), else on the run under the cursor.",
                 "Hold stops the agent at its next step (the clock stops); freeze also pauses"
                 " the sandbox.", "Keys can be remapped by binding id in the config (keys)."]
        if self.readonly:
            notes.insert(0, "Read-only: the controls that change a run are hidden.")
        where = type(self.screen).__name__.removesuffix("Screen").lower()
        self.push_screen(HelpScreen(keys, f"Keys ({where})", notes))

    # -- controls -------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in OPERATOR_ACTIONS:
            if self.readonly:
                return False
            return isinstance(self.screen, (DashboardScreen, RunScreen))
        return True

    def targets(self) -> list[str]:
        screen = self.screen
        if isinstance(screen, RunScreen):
            return [screen.run]
        if isinstance(screen, DashboardScreen):
            return screen.table.targets()
        return []

    def live_targets(self) -> list[str]:
        """The targeted runs that have not ended (each ended one is named in a notice)."""
        runs = []
        for run in self.targets():
            row = self.fleet.rows.get(run, {})
            if row.get("status") in TERMINAL_STATUSES:
                self.notify(f"{run} has ended ({row.get('status')})", severity="warning")
                continue
            runs.append(run)
        if not runs and not self.targets():
            self.notify("no run selected", severity="warning")
        return runs

    def command(self, run: str, action: str, reason: str, **args: Any) -> None:
        self.send(ControlCommand.model_validate(
            {"run": run, "action": action, "operator": self.operator, "reason": reason,
             "args": args}))

    def action_control(self, action: str) -> None:
        if self.readonly or action not in CONTROL_ACTIONS:
            return
        runs = self.live_targets()
        if len(runs) > 1 and action in BULK_CONFIRMED:
            def confirmed(result: Entered | None) -> None:
                if result is None:
                    self.notify(f"bulk {action} cancelled", timeout=2)
                    return
                for run in runs:
                    self.command(run, action, result.reason)

            self.push_screen(BulkConfirm(action, runs), confirmed)
            return
        for run in runs:
            self.command(run, action, f"{action} from the console")

    def action_message(self) -> None:
        runs = self.live_targets()
        if not runs:
            return

        def done(result: Entered | None) -> None:
            if result is not None:
                for run in runs:
                    self.command(run, "message", result.reason, text=result.value)

        self.push_screen(MessageDialog(runs), done)

    def action_approval_mode(self) -> None:
        for run in self.live_targets():
            on = not bool(self.fleet.signals_of(run).approval_mode)
            self.command(run, "approval_mode", f"approval mode {'on' if on else 'off'} from the console",
                         on=on)

    def action_score(self) -> None:
        for run in self.live_targets():
            self.command(run, "score", "score requested from the console")

    def action_limit(self) -> None:
        runs = self.live_targets()
        if not runs:
            return

        def done(result: Entered | None) -> None:
            if result is not None:
                name, value = result.value
                for run in runs:
                    self.command(run, "limit", result.reason, name=name, value=value)

        self.push_screen(LimitDialog(runs), done)

    # -- approvals (the run view's queue) ---------------------------------------------
    def approve(self, run: str, call_id: str) -> None:
        self.command(run, "approve", "approved from the console", call_id=call_id)

    def edit_then_approve(self, run: str, call_id: str, name: str, args_json: str) -> None:
        def done(result: Entered | None) -> None:
            if result is not None:
                self.command(run, "approve", result.reason, call_id=call_id, args=result.value)

        self.push_screen(EditCallDialog(run, name, args_json), done)

    def reject(self, run: str, call_id: str, name: str) -> None:
        def done(result: Entered | None) -> None:
            if result is not None:
                self.command(run, "reject", result.reason, call_id=call_id)

        self.push_screen(RejectDialog(run, name), done)

    # -- shell ----------------------------------------------------------------------
    def action_shell(self) -> None:
        runs = self.live_targets()
        if len(runs) != 1:
            if runs:
                self.notify("a shell opens in one run: unmark the others", severity="warning")
            return
        self.run_worker(self._shell(runs[0]), group="shell", exclusive=True)

    async def _shell(self, run: str) -> None:
        def find() -> tuple[list[str], Path | None]:
            reader = JournalReader(self.journal_path)
            try:
                return shell_command(reader, run, self.runs_dir)
            finally:
                reader.close()

        try:
            argv, cwd = await asyncio.to_thread(find)
        except ShellError as exc:
            self.notify(f"no shell: {one_line(exc, 200)}", severity="warning", timeout=8)
            return
        self.command(run, "shell", "shell opened from the console", state="start")
        try:
            code = self.run_shell(argv, cwd)
        except SuspendNotSupported:
            self.notify(f"this terminal cannot be handed over; run: {' '.join(argv)}",
                        severity="warning", timeout=15)
            code = None
        except OSError as exc:
            self.notify(f"shell failed: {one_line(exc, 200)}", severity="error", timeout=10)
            code = None
        self.command(run, "shell", "shell closed", state="end",
                     **({"exit_code": code} if code is not None else {}))
        self.refresh(layout=True)

    def _run_shell_suspended(self, argv: list[str], cwd: Path | None) -> int:
        with self.suspend():
            return subprocess.call(argv, cwd=cwd)

    def action_kill(self) -> None:
        if self.readonly:
            return
        runs = [r for r in self.targets()
                if self.fleet.rows.get(r, {}).get("status") not in TERMINAL_STATUSES]
        if not runs:
            self.notify("no live run selected to kill", severity="warning")
            return
        if len(runs) > 1:
            def typed(result: Entered | None) -> None:
                if result is None:
                    self.notify("kill cancelled", timeout=2)
                    return
                for run in runs:
                    self.command(run, "kill", result.reason)

            self.push_screen(BulkConfirm("kill", runs), typed)
            return
        detail = ""
        if len(runs) == 1:
            row = self.fleet.rows.get(runs[0], {})
            detail = (f"{one_line(row.get('task') or '?', 40)} · {one_line(row.get('agent') or '?', 20)}"
                      f" · {one_line(row.get('status') or '?', 12)}")
        modal = KillConfirm(runs, detail)

        def done(confirmed: bool | None) -> None:
            if not confirmed:
                self.notify("kill cancelled", timeout=2)
                return
            for run in runs:
                self.send(ControlCommand(run=run, action="kill", operator=self.operator,
                                         reason=modal.reason))

        self.push_screen(modal, done)

    def send(self, command: ControlCommand) -> None:
        self.sent[command.id] = command
        if len(self.sent) > 500:  # commands never answered are forgotten, oldest first
            self.sent.pop(next(iter(self.sent)))
        self.run_worker(self._send(command), group="controls")

    async def _send(self, command: ControlCommand) -> None:
        try:
            await self.source.send(command)
        except SendFailed as exc:
            self.sent.pop(command.id, None)
            self.notify(f"{command.action} {command.run} not sent: {one_line(exc, 200)}",
                        severity="error", timeout=10)
            return
        except Exception as exc:  # any failure to send is the operator's to see, not a crash
            self.sent.pop(command.id, None)
            self.notify(f"{command.action} {command.run} failed: {one_line(exc, 200)}",
                        severity="error", timeout=10)
            return
        self.notify(f"{command.action} sent to {command.run}; waiting for the runner", timeout=3)


def run_console(journal_path: Path, bus: BusConfig | None = None, *, readonly: bool = False,
                replay_run: str | None = None, replay_speed: float = 1.0,
                operator: str | None = None, clock: Callable[[], float] = time.time,
                repaint_hz: float = 8.0, keymap: dict[str, str] | None = None,
                runs_dir: Path | None = None) -> None:
    """Open the console and return when the operator quits."""
    app = MLRBApp(journal_path, bus, readonly=readonly, replay_run=replay_run,
                  replay_speed=replay_speed, operator=operator, clock=clock,
                  repaint_hz=repaint_hz, keymap=keymap, runs_dir=runs_dir)
    app.run()
    if app.return_code:
        raise SystemExit(app.return_code)


__all__ = ["MLRBApp", "run_console"]


