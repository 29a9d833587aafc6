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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.text import Text
from textual import on
from textual._compositor import ChopsUpdate
from textual.app import App, SuspendNotSupported
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer

from mlrb_tui.controls import CONTROL_ACTIONS, Aim, Controls, Notice, Selection
from mlrb_tui.frame import Aimed, Frame, Repaintable
from mlrb_tui.notify import ConsoleBell
from mlrb_tui.output import CroppedUpdate, WriteWatch
from mlrb_tui.pacing import RepaintPacer
from mlrb_tui.replay import ReplayController, ReplayError
from mlrb_tui.screens.compare import CompareScreen
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
from mlrb_tui.screens.results import ResultsScreen
from mlrb_tui.screens.run_view import RunScreen
from mlrb_tui.source import LiveSource, SendFailed
from mlrb_tui.state import FleetState, one_line
from mlrb_tui.widgets.runs_table import RunsTable
from runner.bus import BusConfig
from runner.config import NotifyTable
from runner.control import ControlCommand, default_operator
from runner.events import RunStatus
from runner.journal import JournalReader
from runner.shell import ShellError, shell_command

# the actions that change a run: hidden in --readonly and in a replay
OPERATOR_ACTIONS = frozenset({"control", "kill", "message", "approval_mode", "shell", "score",
                              "limit", "approve", "edit_approve", "reject"})
LINK_LOOK_S = 0.25  # how often the console looks at how its terminal keeps up
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
                 keymap: dict[str, str] | None = None, runs_dir: Path | None = None,
                 notify: NotifyTable | None = None) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir) if runs_dir is not None else Path(journal_path).parent / "runs"
        self.journal_path = Path(journal_path)
        self.bus = bus
        self.readonly = readonly or replay_run is not None
        self.replay_run = replay_run
        self.replay_speed = replay_speed
        # on an authenticating broker the account is who the record names; say so here too
        self.operator = operator or (bus.username if bus is not None and bus.username
                                     else default_operator())
        self.clock = clock
        self.repaint_hz = max(0.5, min(float(repaint_hz), 30.0))
        self._keymap = dict(keymap or {})
        self.animation_level = "none"  # over SSH every frame costs; nothing here animates
        self.fleet = FleetState()
        self.source = LiveSource(self.journal_path, bus, fleet=self.fleet,
                                 on_change=self.request_repaint)
        self.dashboard: DashboardScreen | None = None
        self.controls = Controls(self.fleet, self.operator)
        self.console_bell = ConsoleBell(notify or NotifyTable(), self.write_terminal, clock=self.now)
        if self.replay_run is None:  # a replay is history: nothing in it calls anyone
            self.fleet.listeners.append(self.console_bell.saw)
        self._dirty = True
        self._last_full = 0.0
        # over a link that cannot keep up, fewer repaints a second; back up when it drains
        self.pacer = RepaintPacer(self.repaint_hz)
        self.write_watch: WriteWatch | None = None
        self._repaint_timer: Timer | None = None
        self.ticks = 0  # repaint timer ticks, for tests and figures
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
        self._repaint_timer = self.set_interval(1.0 / self.pacer.hz, self._tick, name="repaint")
        if self._driver is not None:
            self.write_watch = WriteWatch(self._driver)
        self.set_interval(LINK_LOOK_S, self.look_at_link, name="link")

    def look_at_link(self) -> None:
        """How the terminal keeps up: repaint less often while its output backs up."""
        if self.write_watch is None:
            return
        slowest, queued = self.write_watch.take()
        if self.pacer.observe(time.monotonic(), slowest, queued):
            if self._repaint_timer is not None:
                self._repaint_timer.stop()
            self._repaint_timer = self.set_interval(1.0 / self.pacer.hz, self._tick,
                                                    name="repaint")
            self.request_repaint()  # the status line says so

    def _display(self, screen: Screen[Any], renderable: RenderableType | None) -> None:
        # a changed cell goes out alone, not with every cell to its left
        if type(renderable) is ChopsUpdate:
            renderable = CroppedUpdate.of(renderable)
        super()._display(screen, renderable)

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
        await self.push_screen(RunScreen(ctl.run, replay=ctl, frame=self.frame()))

    async def on_unmount(self) -> None:
        await self.source.stop()
        if self._replay_reader is not None:
            self._replay_reader.close()

    # -- repainting -----------------------------------------------------------------
    def request_repaint(self) -> None:
        self._dirty = True

    def frame(self) -> Frame:
        """The console now, for a screen that paints before the next tick."""
        return Frame(self.fleet, self.now(), self.topbar_text())

    def _tick(self) -> None:
        if not self.is_running:  # shutting down: the screens are being taken apart
            return
        self.ticks += 1
        now = self.now()
        second = now - self._last_full >= 1.0
        fresh = self._dirty or second
        changed: tuple[str, ...] = ()
        if fresh:
            self._dirty = False
            added, moved = self.fleet.take_changes()
            runs = added + sorted(moved.difference(added))
            if second:
                # elapsed time moves on for running runs without any event
                self._last_full = now
                runs += [r for r, row in self.fleet.rows.items()
                         if row.get("status") == RunStatus.RUNNING and r not in moved]
            changed = tuple(runs)
        frame = Frame(self.fleet, now, self.topbar_text(), changed, fresh)
        with self.batch_update():
            for screen in self.screen_stack:
                if isinstance(screen, Repaintable):
                    screen.repaint(frame)
        if fresh:
            self._say(*self.controls.answers())
        self.console_bell.tick()

    def write_terminal(self, text: str) -> None:
        """Raw output for the terminal (the bell, OSC 9), between frames."""
        # App.bell stays silent when headless; this goes to whatever driver there is
        if self._driver is not None:
            self._driver.write(text)

    def _say(self, *notices: Notice) -> None:
        for n in notices:
            self.notify(n.text, title=n.title, severity=n.severity, timeout=n.timeout)

    def topbar_text(self) -> Text:
        text = Text()
        text.append(" MLRB Console ", style="bold reverse")
        if self.replay_run is not None:
            text.append("  REPLAY ", style="bold magenta")
            text.append(one_line(self.replay_run, 64))
            text.append(f"   journal: {self.journal_path.name}", style="dim")
            if self.pacer.slowed:
                text.append(f"   {self.pacer.status()}", style="bold yellow")
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
        if self.pacer.slowed:
            text.append(f"   {self.pacer.status()}", style="bold yellow")
        counts = self.source.counts_text()
        if counts:  # last: on a narrow terminal it is what gets cut
            text.append(f"   {counts}", style="yellow")
        return text

    # -- navigation -----------------------------------------------------------------
    def open_run(self, run: str, *, logs: bool = False) -> None:
        self.push_screen(RunScreen(run, self.source, logs=logs, readonly=self.readonly,
                                   frame=self.frame()))

    @on(DashboardScreen.OpenRun)
    def _open_run(self, event: DashboardScreen.OpenRun) -> None:
        self.open_run(event.run, logs=event.logs)

    @on(DashboardScreen.OpenResults)
    def _open_results(self) -> None:
        self.push_screen(ResultsScreen(self.frame()))

    @on(ResultsScreen.OpenRuns)
    def _open_result_runs(self, event: ResultsScreen.OpenRuns) -> None:
        self.pop_screen()
        if self.dashboard is not None:
            self.dashboard.show_filter(event.filter)

    @on(DashboardScreen.CompareRuns)
    @on(ResultsScreen.CompareRuns)
    def _compare(self, event: DashboardScreen.CompareRuns | ResultsScreen.CompareRuns) -> None:
        self.push_screen(CompareScreen(event.runs, self.source.reader, self.frame()))

    @on(DashboardScreen.FilterChanged)
    def _filter_changed(self) -> None:
        self.request_repaint()

    @on(RunScreen.ReplayClosed)
    def _replay_closed(self) -> None:
        self.exit()

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
                    or isinstance(active.node, RunsTable)):
                continue
            label = b.description or b.action
            shown = grouped.setdefault((id(active.node), b.action, label), [])
            if (name := key_label(b.key_display or key)) not in shown:
                shown.append(name)
        keys = [(" ".join(names), label) for (_, _, label), names in grouped.items()]
        keys.append(("ctrl+p", "command palette"))
        notes = ["Controls act on the marked runs (space), else on the run under the cursor.",
                 "c compares the marked runs (two or more); on the results screen, a row's runs.",
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
            return isinstance(self.screen, Aimed)
        return True

    def aim(self) -> Aim:
        """The runs the operator points at on the current screen, split live and ended."""
        screen = self.screen
        return self.controls.aim(screen.selection() if isinstance(screen, Aimed) else Selection())

    def live_targets(self) -> tuple[str, ...]:
        """The targeted runs that have not ended (each ended one is named in a notice)."""
        aim = self.aim()
        self._say(*aim.notices())
        return aim.live

    def action_control(self, action: str) -> None:
        if self.readonly or action not in CONTROL_ACTIONS:
            return
        runs = self.live_targets()
        if self.controls.bulk_confirmed(action, runs):
            def confirmed(result: Entered | None) -> None:
                if result is None:
                    self.notify(f"bulk {action} cancelled", timeout=2)
                    return
                for run in runs:
                    self.send(self.controls.control(run, action, result.reason))

            self.push_screen(BulkConfirm(action, list(runs)), confirmed)
            return
        for run in runs:
            self.send(self.controls.control(run, action))

    def action_message(self) -> None:
        runs = self.live_targets()
        if not runs:
            return

        def done(result: Entered | None) -> None:
            if result is not None:
                for run in runs:
                    self.send(self.controls.message(run, result.value, result.reason))

        self.push_screen(MessageDialog(list(runs)), done)

    def action_approval_mode(self) -> None:
        for run in self.live_targets():
            self.send(self.controls.toggle_approval_mode(run))

    def action_score(self) -> None:
        for run in self.live_targets():
            self.send(self.controls.score(run))

    def action_limit(self) -> None:
        runs = self.live_targets()
        if not runs:
            return

        def done(result: Entered | None) -> None:
            if result is not None:
                name, value = result.value
                for run in runs:
                    self.send(self.controls.limit(run, name, value, result.reason))

        self.push_screen(LimitDialog(list(runs)), done)

    # -- approvals (the run view's queue) ---------------------------------------------
    @on(RunScreen.Approve)
    def _approve(self, event: RunScreen.Approve) -> None:
        self.send(self.controls.approve(event.run, event.call_id))

    @on(RunScreen.EditApprove)
    def _edit_then_approve(self, event: RunScreen.EditApprove) -> None:
        def done(result: Entered | None) -> None:
            if result is not None:
                self.send(self.controls.approve(event.run, event.call_id, result.reason,
                                                args=result.value))

        self.push_screen(EditCallDialog(event.run, event.name, event.args_json), done)

    @on(RunScreen.Reject)
    def _reject(self, event: RunScreen.Reject) -> None:
        def done(result: Entered | None) -> None:
            if result is not None:
                self.send(self.controls.reject(event.run, event.call_id, result.reason))

        self.push_screen(RejectDialog(event.run, event.name), done)

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
        self.send(self.controls.shell(run, "start"))
        try:
            code = self.run_shell(argv, cwd)
        except SuspendNotSupported:
            self.notify(f"this terminal cannot be handed over; run: {' '.join(argv)}",
                        severity="warning", timeout=15)
            code = None
        except OSError as exc:
            self.notify(f"shell failed: {one_line(exc, 200)}", severity="error", timeout=10)
            code = None
        self.send(self.controls.shell(run, "end", code))
        self.refresh(layout=True)

    def _run_shell_suspended(self, argv: list[str], cwd: Path | None) -> int:
        with self.suspend():
            return subprocess.call(argv, cwd=cwd)

    def action_kill(self) -> None:
        if self.readonly:
            return
        runs = self.aim().live
        if not runs:
            self.notify("no live run selected to kill", severity="warning")
            return
        if len(runs) > 1:
            def typed(result: Entered | None) -> None:
                if result is None:
                    self.notify("kill cancelled", timeout=2)
                    return
                for run in runs:
                    self.send(self.controls.control(run, "kill", result.reason))

            self.push_screen(BulkConfirm("kill", list(runs)), typed)
            return
        modal = KillConfirm(list(runs), self.controls.kill_detail(runs[0]))

        def done(confirmed: bool | None) -> None:
            if not confirmed:
                self.notify("kill cancelled", timeout=2)
                return
            for run in runs:
                self.send(self.controls.control(run, "kill", modal.reason))

        self.push_screen(modal, done)

    def send(self, command: ControlCommand) -> None:
        """Hand a command to the bus in a worker; one whose args fit no model is refused."""
        refused = self.controls.admit(command)
        if refused is not None:
            self._say(refused)
            return
        self.run_worker(self._send(command), group="controls")

    async def _send(self, command: ControlCommand) -> None:
        try:
            await self.source.send(command)
        except SendFailed as exc:
            self._say(self.controls.not_sent(command, exc))
            return
        except Exception as exc:  # any failure to send is the operator's to see, not a crash
            self._say(self.controls.not_sent(command, exc, failed=True))
            return
        self._say(self.controls.handed(command))


def run_console(journal_path: Path, bus: BusConfig | None = None, *, readonly: bool = False,
                replay_run: str | None = None, replay_speed: float = 1.0,
                operator: str | None = None, clock: Callable[[], float] = time.time,
                repaint_hz: float = 8.0, keymap: dict[str, str] | None = None,
                runs_dir: Path | None = None, notify: NotifyTable | None = None) -> None:
    """Open the console and return when the operator quits."""
    app = MLRBApp(journal_path, bus, readonly=readonly, replay_run=replay_run,
                  replay_speed=replay_speed, operator=operator, clock=clock,
                  repaint_hz=repaint_hz, keymap=keymap, runs_dir=runs_dir, notify=notify)
    app.run()
    if app.return_code:
        raise SystemExit(app.return_code)


__all__ = ["MLRBApp", "run_console"]


