"""The runs dashboard: every run in one table, a status line, a filter."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from mlrb_tui.controls import Selection
from mlrb_tui.frame import Frame
from mlrb_tui.state import FleetState
from mlrb_tui.widgets.runs_table import RunsTable
from runner.events import RunStatus


class DashboardScreen(Screen[None]):
    BINDINGS = [
        Binding("slash", "filter", "Filter", id="filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="clear_filter"),
        Binding("l", "logs", "Logs", show=False, id="logs"),
        Binding("R", "results", "Results", show=False, id="results"),
        Binding("c", "compare", "Compare marked", show=False, id="compare"),
    ]

    @dataclass
    class OpenRun(Message):
        """The operator asked for a run's view (`logs`: its sandbox output full screen)."""

        run: str
        logs: bool = False

    @dataclass
    class CompareRuns(Message):
        """The operator asked to compare the marked runs (two or more, in the table's order)."""

        runs: tuple[str, ...]

    class FilterChanged(Message):
        """The filter changed what the table shows: the summary line is out of date."""

    class OpenResults(Message):
        """The operator asked for the results table."""

    def __init__(self) -> None:
        super().__init__()
        self._drawn: dict[str, object] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="topbar")
        yield RunsTable(id="runs")
        yield Input(placeholder="filter runs (run, task, agent, campaign, status; "
                                "key:value terms; !text inverts)",
                    id="filter")
        yield Static(id="summary")
        yield Footer()

    @property
    def table(self) -> RunsTable:
        return self.query_one("#runs", RunsTable)

    @property
    def filter_input(self) -> Input:
        return self.query_one("#filter", Input)

    def on_mount(self) -> None:
        self.filter_input.display = False
        self.table.focus()

    def repaint(self, frame: Frame) -> None:
        """The changed rows, the top bar and the summary; nothing when nothing changed."""
        if not frame.fresh:
            return
        self.table.sync(frame.fleet, frame.now, frame.changed)
        self._set("#topbar", frame.topbar)
        self._set("#summary", self._summary(frame.fleet))

    def selection(self) -> Selection:
        return self.table.selection()

    def _set(self, selector: str, text: Text) -> None:
        # a Static's update lays out the whole screen again: skip it when nothing changed
        drawn = (text.plain, tuple(text.spans))
        if self._drawn.get(selector) != drawn:
            self._drawn[selector] = drawn
            self.query_one(selector, Static).update(text)

    def _summary(self, fleet: FleetState) -> Text:
        counts: dict[str, int] = {}
        for row in fleet.rows.values():
            counts[str(row.get("status"))] = counts.get(str(row.get("status")), 0) + 1
        text = Text(f" {len(fleet.rows)} runs", style="bold")
        for status in RunStatus:
            if counts.get(status):
                text.append(f" · {counts[status]} {status}")
        table = self.table
        if table.filter_text:
            text.append(f"   filter: {table.filter_text!r} ({table.row_count} shown)",
                        style="yellow")
        if table.marked:
            text.append(f"   {len(table.marked)} marked", style="magenta")
        return text

    # -- actions --------------------------------------------------------------------
    def action_open_run(self) -> None:
        run = self.table.current_run
        if run is not None:
            self.post_message(self.OpenRun(run))

    def action_logs(self) -> None:
        """The run under the cursor, its sandbox output full screen."""
        run = self.table.current_run
        if run is not None:
            self.post_message(self.OpenRun(run, logs=True))

    @on(RunsTable.MarksChanged, "#runs")
    def _marks_changed(self) -> None:
        # at once, not at the next repaint: the operator is about to act on the marked runs
        if self.table.fleet is not None:
            self._set("#summary", self._summary(self.table.fleet))

    @on(RunsTable.RunSelected, "#runs")
    def _run_selected(self, event: RunsTable.RunSelected) -> None:
        self.post_message(self.OpenRun(event.run))

    def action_compare(self) -> None:
        table = self.table
        marked = tuple(r for r in table.shown if r in table.marked)
        if len(marked) < 2:
            self.notify(f"mark two or more runs (space) to compare them: {len(marked)} marked",
                        severity="warning", timeout=4)
            return
        self.post_message(self.CompareRuns(marked))

    def action_results(self) -> None:
        self.post_message(self.OpenResults())

    def show_filter(self, text: str) -> None:
        """Filter the table by `text`, with the filter box showing it."""
        self.filter_input.value = text
        self.filter_input.display = bool(text)
        self.table.set_filter(text)
        self.table.focus()
        self.post_message(self.FilterChanged())

    def action_filter(self) -> None:
        box = self.filter_input
        box.display = True
        box.value = self.table.filter_text
        box.focus()

    def action_clear_filter(self) -> None:
        if self.table.filter_text or self.filter_input.display:
            self.filter_input.value = ""
            self.filter_input.display = False
            self.table.set_filter("")
            self.table.focus()
            self.post_message(self.FilterChanged())

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.table.set_filter(event.value)
        self.post_message(self.FilterChanged())

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        self.filter_input.display = bool(event.value)
        self.table.focus()
