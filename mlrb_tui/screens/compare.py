"""The compare screen: two or more runs side by side, live or ended.

A table of what each run cost and scored (from the fleet's runs rows, so a live run's cells
move as it runs), its metric curves overlaid per metric name, and its tool calls aligned by
step with the first step where the runs' tools part marked. Each run's curves and calls are
read from the journal in a thread, then followed: when the fleet has seen events of a run
past what was read, the journal (written first) holds them, and only those are read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from mlrb_tui.comparison import FIELD_LABELS, FIELDS, RunTrack, field_values, origin_of, read_track
from mlrb_tui.frame import Frame
from mlrb_tui.state import one_line
from mlrb_tui.widgets.compare_charts import OverlaidCharts
from mlrb_tui.widgets.step_timelines import DIVERGED, StepTimelines
from runner.journal import JournalReader


class CompareScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "close", "Back", id="close_compare"),
        Binding("X", "x_axis", "Step/time axis", id="compare.x_axis"),
        Binding("d", "divergence", "To divergence", id="compare.divergence"),
    ]

    DEFAULT_CSS = """
    CompareScreen #compare-title { height: 1; background: $primary 20%; text-style: bold; padding: 0 1; }
    CompareScreen #compare-table { height: auto; max-height: 9; }
    CompareScreen #compare-charts { height: 1fr; }
    CompareScreen #compare-steps-title { height: 1; background: $primary 20%; text-style: bold; padding: 0 1; }
    CompareScreen #compare-steps { height: 1fr; }
    """

    def __init__(self, runs: Sequence[str], reader: JournalReader, frame: Frame) -> None:
        super().__init__()
        self.runs = list(dict.fromkeys(runs))
        self.reader = reader
        self.tracks = [RunTrack(r) for r in self.runs]
        self.loaded = False  # the first read of every run is in
        self._frame = frame
        self._ready = False
        self._reading = False
        self._again = False
        self._cells: dict[tuple[str, str], str] = {}
        self._drawn: dict[str, tuple[str, ...]] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="topbar")
        yield Static(id="compare-title")
        yield DataTable(id="compare-table", cursor_type="none", zebra_stripes=True)
        yield OverlaidCharts(id="compare-charts")
        yield Static(id="compare-steps-title")
        yield StepTimelines(self.runs, id="compare-steps")
        yield Footer()

    @property
    def table(self) -> DataTable[Text]:
        return self.query_one("#compare-table", DataTable)

    @property
    def charts(self) -> OverlaidCharts:
        return self.query_one(OverlaidCharts)

    @property
    def timelines(self) -> StepTimelines:
        return self.query_one(StepTimelines)

    def cell(self, run: str, field: str) -> str:
        """A cell of the side-by-side table as the operator reads it."""
        return self._cells[(run, field)]

    def on_mount(self) -> None:
        table = self.table
        table.add_column("Run", key="run")
        for f in FIELDS:
            table.add_column(FIELD_LABELS[f], key=f)
        for run in self.runs:
            table.add_row(Text(one_line(run, 40), style="bold"), *(Text("") for _ in FIELDS), key=run)
        self.timelines.set_columns(self.app.size.width)
        self._ready = True
        self._paint(self._frame)
        self.timelines.focus()
        self._read()

    # -- painting -------------------------------------------------------------------
    def repaint(self, frame: Frame) -> None:
        self._frame = frame
        if self._ready and frame.fresh:
            self._paint(frame)

    def _paint(self, frame: Frame) -> None:
        self.query_one("#topbar", Static).update(frame.topbar)
        self._table(frame)
        if any(frame.fleet.last_seq(t.run) > t.read_to for t in self.tracks):
            self._read()

    def _row(self, run: str) -> dict[str, Any] | None:
        return self._frame.fleet.rows.get(run)

    def _table(self, frame: Frame) -> None:
        table = self.table
        columns = {run: field_values(self._row(run), frame.now) for run in self.runs}
        for f in FIELDS:
            values = tuple(columns[run][f] for run in self.runs)
            if self._drawn.get(f) == values:
                continue
            differ = len(set(values)) > 1  # what tells the runs apart stands out
            style = "" if differ else "dim"
            for run, value in zip(self.runs, values, strict=True):
                self._cells[(run, f)] = value
                table.update_cell(run, f, Text(value, style=style), update_width=True)
            self._drawn[f] = values

    def _draw(self) -> None:
        """The curves and the timelines, from the tracks (after a read)."""
        origins = {t.run: origin_of(self._row(t.run), t) for t in self.tracks}
        self.charts.sync(self.tracks, origins)
        self.timelines.sync(self.tracks)
        self._titles()

    def _titles(self) -> None:
        n = len(self.runs)
        title = Text(f" Compare {n} runs", style="bold")
        title.append(f"   charts against {self.charts.x_axis} (X switches)", style="dim")
        self.query_one("#compare-title", Static).update(title)
        at = self.timelines.diverged_at
        steps = Text(" Tool calls by step", style="bold")
        if not self.loaded:
            steps.append("   reading the journal…", style="dim")
        elif not self.timelines.steps:
            steps.append("   no tool calls yet", style="dim")
        elif at is None:
            steps.append("   the same tools step by step so far", style="green")
        else:
            steps.append(f"   {DIVERGED} the tools part at step {at}", style="bold red")
            steps.append(" (d jumps there)   = same calls  ≈ same tools  ≠ other tools", style="dim")
        self.query_one("#compare-steps-title", Static).update(steps)

    # -- reading the journal -----------------------------------------------------------
    @work(group="compare-read")
    async def _read(self) -> None:
        """Read each run's journal past what its track holds, until the fleet is caught up."""
        if self._reading:
            self._again = True
            return
        self._reading = True
        try:
            while True:
                self._again = False
                for track in self.tracks:
                    target = self._frame.fleet.last_seq(track.run)
                    if track.read_to >= 0 and target <= track.read_to:
                        continue
                    read = await asyncio.to_thread(read_track, self.reader, track)
                    track.take(read)
                    if read.more:
                        self._again = True  # a long run: read on, drawing each slice as it comes
                    else:
                        track.read_to = max(track.read_to, target, track.seen)
                self.loaded = True
                self._draw()
                if not self._again:
                    break
        finally:
            self._reading = False

    # -- actions --------------------------------------------------------------------
    def action_close(self) -> None:
        self.dismiss()

    def action_x_axis(self) -> None:
        self.charts.toggle_x()
        self._draw()  # the title says which axis: no toast to cover the timelines

    def action_divergence(self) -> None:
        if not self.timelines.jump_to_divergence():
            self.notify("the runs' tools have not parted", timeout=2)
        self.timelines.focus()
