"""The run view: header, the agent's actions, metric charts, sandbox output; live or replay.

Side by side on a wide terminal; below `NARROW_BELOW` columns (80x24, a common SSH size)
the panes become tabs, each the whole width, and side by side again once widened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static, TabbedContent, TabPane

from mlrb_tui.controls import Selection
from mlrb_tui.frame import Frame
from mlrb_tui.replay import ReplayController
from mlrb_tui.signals import RunSignals
from mlrb_tui.state import RunState
from mlrb_tui.widgets.approvals import ApprovalQueue
from mlrb_tui.widgets.audit_log import AuditLog
from mlrb_tui.widgets.live_reply import LiveReplyView
from mlrb_tui.widgets.metric_charts import MetricCharts
from mlrb_tui.widgets.output_log import OutputLog
from mlrb_tui.widgets.run_header import RunHeader
from mlrb_tui.widgets.scrubber import Scrubber
from mlrb_tui.widgets.timeline import IS_ERROR, IS_INTERVENTION, IS_SCORE, ActionLog

NARROW_BELOW = 100  # columns: under this the panes are tabs
TABS = ("actions", "metrics", "output", "interventions")

REPLAY_BINDINGS = [
    Binding("space", "play_pause", "Play/pause", id="replay.play", priority=True),
    Binding("plus,equals_sign", "faster", "Faster", id="replay.faster"),
    Binding("minus", "slower", "Slower", id="replay.slower"),
    Binding("left_square_bracket", "step_back", "Step back", id="replay.step_back"),
    Binding("right_square_bracket", "step_forward", "Step", id="replay.step_forward"),
    # priority: the logs' own home/end (scroll) would take these keys first
    Binding("home", "seek(0)", "Start", show=False, id="replay.start", priority=True),
    Binding("end", "seek(1)", "End", show=False, id="replay.end", priority=True),
    *[Binding(str(d), f"seek({d / 10})", f"{d * 10}%", show=False, id=f"replay.seek{d}")
      for d in range(10)],
]


class RunFeed(Protocol):
    """Where a live run view gets its run's state (the console's LiveSource)."""

    async def open_run(self, run: str) -> RunState: ...

    def close_run(self, run: str) -> None: ...


class RunScreen(Screen[None]):
    """One run. With a ReplayController it plays the recording; else it follows live,
    its state backfilled from `feed`."""

    BINDINGS = [
        Binding("escape", "back", "Back", id="back"),
        Binding("y", "approve", "Approve", id="approve"),
        Binding("e", "edit_approve", "Edit+approve", id="edit_approve"),
        Binding("n", "reject", "Reject", id="reject"),
        Binding("slash", "search", "Search", id="timeline.search"),
        Binding("E", "jump('error')", "Next error", id="jump.error"),
        Binding("I", "jump('intervention')", "Next intervention", id="jump.intervention"),
        Binding("G", "jump('score')", "Next score", id="jump.score"),
        Binding("l", "logs", "Logs", id="output.logs"),
        Binding("t", "follow", "Follow output", id="output.follow"),
        Binding("X", "x_axis", "Step/time axis", show=False, id="charts.x_axis"),
        Binding("space", "toggle_entry", "Expand", show=False, id="timeline.space"),
        Binding("greater_than_sign", "next_tab(1)", "Next tab", id="tabs.next"),
        Binding("less_than_sign", "next_tab(-1)", "Prev tab", show=False, id="tabs.prev"),
        *REPLAY_BINDINGS,
    ]

    @dataclass
    class Approve(Message):
        """Approve the waiting call as the agent made it."""

        run: str
        call_id: str

    @dataclass
    class EditApprove(Message):
        """Edit the waiting call's arguments (`args_json`), then approve it."""

        run: str
        call_id: str
        name: str
        args_json: str

    @dataclass
    class Reject(Message):
        """Reject the waiting call, with a reason the agent reads."""

        run: str
        call_id: str
        name: str

    class ReplayClosed(Message):
        """The operator left the replay, the console's only screen."""

    def __init__(self, run: str, feed: RunFeed | None = None, *,
                 replay: ReplayController | None = None, logs: bool = False,
                 readonly: bool = False, frame: Frame | None = None) -> None:
        super().__init__()
        self.run = run
        self.feed = feed
        self.replay = replay
        self.readonly = readonly
        self.logs_first = logs  # opened with `l`: the sandbox output fills the screen
        self._ready = False  # its widgets are mounted: the repaint timer may paint it
        self._frame = frame  # the latest the timer handed over, painted from between frames
        self.state: RunState | None = replay.state if replay is not None else None
        self._last_tick = time.monotonic()
        self.narrow: bool | None = None  # tabs, not side by side; decided at compose

    def compose(self) -> ComposeResult:
        if self.narrow is None:
            self.narrow = self.app.size.width < NARROW_BELOW
        yield Static(id="topbar")
        yield RunHeader(id="run-header")
        search = Input(placeholder="search the timeline (enter: next match, esc: close)",
                       id="search")
        if self.narrow:
            with TabbedContent(id="panes", initial="tab-actions"):
                with TabPane("Actions", id="tab-actions"):
                    yield ApprovalQueue(id="approvals")
                    yield ActionLog(id="actions")
                    yield LiveReplyView(id="live-reply")
                    yield search
                with TabPane("Metrics", id="tab-metrics"):
                    yield MetricCharts(id="charts")
                with TabPane("Output", id="tab-output"):
                    yield OutputLog(id="output")
                with TabPane("Interventions", id="tab-interventions"):
                    yield AuditLog(id="audit")
        else:
            with Horizontal(id="panes"):
                with Vertical(id="left"):
                    yield Static("Actions", classes="pane-title")
                    yield ApprovalQueue(id="approvals")
                    yield ActionLog(id="actions")
                    yield LiveReplyView(id="live-reply")
                    yield search
                    yield Static("Interventions", classes="pane-title")
                    yield AuditLog(id="audit")
                with Vertical(id="right"):
                    yield Static("Metrics", classes="pane-title")
                    yield MetricCharts(id="charts")
                    yield Static("Sandbox output", classes="pane-title")
                    yield OutputLog(id="output")
        if self.replay is not None:
            yield Scrubber(id="scrubber")
        yield Footer()

    async def on_resize(self, event: events.Resize) -> None:
        narrow = event.size.width < NARROW_BELOW
        if self.narrow is None or narrow == self.narrow or not self._ready:
            return
        # the widgets are built anew for the other layout; what the operator set is kept
        out, charts = self.query_one(OutputLog), self.query_one(MetricCharts)
        follow, x_axis = out.auto_scroll, charts.x_axis
        self._ready = False  # the repaint timer waits until the new widgets are mounted
        self.narrow = narrow
        if self.maximized is not None:
            self.minimize()
        await self.recompose()
        self.query_one(OutputLog).auto_scroll = follow
        self.query_one(MetricCharts).x_axis = x_axis
        self.query_one("#search", Input).display = False
        self._ready = True
        self.query_one(ActionLog).focus()
        self.refresh_bindings()
        self._paint()

    def show_tab(self, name: str) -> None:
        """Bring a pane to the front (narrow: its tab; wide: every pane shows already)."""
        if self.narrow:
            self.query_one(TabbedContent).active = f"tab-{name}"

    def action_next_tab(self, step: int) -> None:
        tabs = self.query_one(TabbedContent)
        now = TABS.index(tabs.active.removeprefix("tab-")) if tabs.active else 0
        name = TABS[(now + int(step)) % len(TABS)]
        self.show_tab(name)
        pane = self.query_one("#" + {"actions": "actions", "metrics": "charts", "output": "output",
                                     "interventions": "audit"}[name])
        if pane.can_focus:
            pane.focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next_tab":
            return bool(self.narrow)
        if action in ("play_pause", "faster", "slower", "step_back", "step_forward", "seek"):
            return self.replay is not None
        if action == "toggle_entry":
            return self.replay is None
        if action in ("approve", "edit_approve", "reject"):
            if self.replay is not None or self.readonly:
                return False
            return self.pending_call() is not None or None  # None: shown greyed out
        return True

    def pending_call(self) -> Any:
        if not self.is_mounted:
            return None
        return self.query_one(ApprovalQueue).selected

    def on_mount(self) -> None:
        self._ready = True
        self.query_one("#search", Input).display = False
        self.query_one(ActionLog).focus()
        if self.logs_first:
            self.action_logs()
        if self.replay is None:
            self._load()
        else:
            self._last_tick = time.monotonic()  # the replay plays from when it shows, not before
            self._paint()

    @work(exclusive=True, group="run-backfill")
    async def _load(self) -> None:
        if self.feed is not None:
            self.state = await self.feed.open_run(self.run)
        self._paint()

    def on_unmount(self) -> None:
        if self.replay is None and self.feed is not None:
            self.feed.close_run(self.run)

    def selection(self) -> Selection:
        return Selection(self.run)

    # -- painting -------------------------------------------------------------------
    def row(self) -> dict[str, Any]:
        if self.replay is not None:
            return self.replay.row
        fleet = self._frame.fleet if self._frame is not None else None
        return (fleet.rows.get(self.run) if fleet else None) or {"run": self.run, "status": "?"}

    def signals(self) -> RunSignals | None:
        """Live: the fleet's (it saw every event since the console opened); replay: the view's."""
        fleet = self._frame.fleet if self._frame is not None else None
        if self.replay is None and fleet is not None and self.run in fleet.signals:
            return fleet.signals[self.run]
        return self.state.signals if self.state is not None else None

    def repaint(self, frame: Frame) -> None:
        """At the repaint rate: a playing replay moves on; the view follows the frame."""
        self._frame = frame
        if not self.is_active:  # under a dialog it waits, and a replay does not play on
            return
        if self.replay is not None:
            mono = time.monotonic()
            dt, self._last_tick = mono - self._last_tick, mono
            if self.replay.playing:
                self.replay.advance(dt)
        elif not frame.fresh:
            return
        self._paint()

    def _paint(self) -> None:
        frame = self._frame
        if not self._ready or frame is None:  # pushed, not yet mounted: the timer got here first
            return
        now = self.replay.now_ts if self.replay is not None else frame.now
        self.query_one("#topbar", Static).update(frame.topbar)
        state = self.state
        self.query_one(RunHeader).show(self.row(), now, self.signals())
        if state is not None:
            if self.query_one(ActionLog).origin == 0.0:
                created = self.row().get("created_ts")
                if isinstance(created, (int, float)):
                    self.query_one(ActionLog).origin = float(created)
            self.query_one(ActionLog).sync(state)
            self.query_one(LiveReplyView).sync(state)
            self.query_one(AuditLog).sync(state)
            queue = self.query_one(ApprovalQueue)
            had = bool(queue.calls)
            queue.sync(state.signals)
            if had != bool(queue.calls):
                self.refresh_bindings()
            self.query_one(OutputLog).sync(state)
            self.query_one(MetricCharts).sync(state)
        if self.replay is not None:
            self.query_one(Scrubber).show(self.replay)

    # -- actions --------------------------------------------------------------------
    def action_back(self) -> None:
        if self.maximized is not None:  # out of the full-screen logs first
            self.minimize()
            self.query_one(ActionLog).focus()
            return
        box = self.query_one("#search", Input)
        if box.display:
            box.display = False
            self.query_one(ActionLog).focus()
            return
        if self.replay is not None:
            self.post_message(self.ReplayClosed())
            return
        self.dismiss(None)

    def action_search(self) -> None:
        self.show_tab("actions")
        box = self.query_one("#search", Input)
        box.display = True
        box.focus()

    @on(Input.Submitted, "#search")
    def _search(self, event: Input.Submitted) -> None:
        if not self.query_one(ActionLog).search(event.value):
            self.notify(f"no entry matches {event.value!r}", timeout=2)

    def action_toggle_entry(self) -> None:
        self.query_one(ActionLog).action_toggle_entry()

    def action_jump(self, what: str) -> None:
        self.show_tab("actions")
        log = self.query_one(ActionLog)
        if self.replay is not None and self.replay.jump_next(what) is not None:
            self._after_replay_action()
            log.find_next(lambda e: e.seq >= self.replay.position)  # type: ignore[union-attr]
            return
        test = {"error": IS_ERROR, "intervention": IS_INTERVENTION, "score": IS_SCORE}[what]
        if not log.find_next(test):
            self.notify(f"no {what} after the cursor", timeout=2)

    def action_logs(self) -> None:
        """The sandbox output full screen (`l` or `esc` again for every pane)."""
        out = self.query_one(OutputLog)
        if self.maximized is out:
            self.minimize()
            self.query_one(ActionLog).focus()
            return
        self.show_tab("output")
        out.focus()
        self.maximize(out, container=False)

    def action_follow(self) -> None:
        out = self.query_one(OutputLog)
        out.auto_scroll = not out.auto_scroll
        if out.auto_scroll:
            out.scroll_end(animate=False)
        self.notify("output: following the tail" if out.auto_scroll else "output: paused (t follows)",
                    timeout=2)

    def action_x_axis(self) -> None:
        if self.state is not None:
            axis = self.query_one(MetricCharts).toggle_x(self.state)
            self.notify(f"charts against {axis}", timeout=2)

    def action_approve(self) -> None:
        call = self.pending_call()
        if call is not None:
            self.post_message(self.Approve(self.run, call.call_id))

    def action_edit_approve(self) -> None:
        call = self.pending_call()
        if call is not None:
            self.post_message(self.EditApprove(self.run, call.call_id, call.name, call.args_json()))

    def action_reject(self) -> None:
        call = self.pending_call()
        if call is not None:
            self.post_message(self.Reject(self.run, call.call_id, call.name))

    def _after_replay_action(self) -> None:
        self._last_tick = time.monotonic()
        self._paint()

    def action_play_pause(self) -> None:
        if self.replay is not None:
            if self.replay.finished and not self.replay.playing:
                self.replay.seek_seq(0)
            self.replay.toggle()
            self._after_replay_action()

    def action_faster(self) -> None:
        if self.replay is not None:
            self.replay.faster()
            self._after_replay_action()

    def action_slower(self) -> None:
        if self.replay is not None:
            self.replay.slower()
            self._after_replay_action()

    def action_step_back(self) -> None:
        if self.replay is not None:
            self.replay.step_back()
            self._after_replay_action()

    def action_step_forward(self) -> None:
        if self.replay is not None:
            self.replay.step_forward()
            self._after_replay_action()

    def action_seek(self, fraction: float) -> None:
        if self.replay is not None:
            self.replay.seek_fraction(float(fraction))
            self._after_replay_action()

    @on(Scrubber.Seek)
    def _scrub(self, event: Scrubber.Seek) -> None:
        self.action_seek(event.fraction)
