"""The results screen: `mlrb results` live, one row per task × agent, beside the paper's figure.

Rows are derived from the fleet's runs rows by `runner.results` and diffed by key on each
repaint (at most once a second); below the table, the highlighted row's task is charted, each
agent's runs against the paper's figure, with how the row's scores were computed. Enter on a
row asks for its runs on the dashboard; `c` compares them side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from mlrb_tui.frame import Frame
from mlrb_tui.widgets.results_chart import ResultsChart
from runner.results import HEADERS, ResultRow, cells, results

REFRESH_S = 1.0


def row_key(r: ResultRow) -> str:
    return "|".join((r.task, r.agent, r.model or "", r.scaffold or ""))


def runs_filter(r: ResultRow) -> str:
    """The dashboard filter that shows a result row's runs."""
    terms = [("task", r.task), ("agent", r.agent), ("model", r.model), ("scaffold", r.scaffold)]
    return " ".join(f"{k}:{v}" for k, v in terms if v)


class ResultsScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "close", "Back", id="close_results"),
        Binding("c", "compare", "Compare runs", show=False, id="results.compare"),
    ]

    @dataclass
    class OpenRuns(Message):
        """The operator asked for a result row's runs: show them on the dashboard."""

        filter: str

    @dataclass
    class CompareRuns(Message):
        """The operator asked to compare a result row's runs."""

        runs: tuple[str, ...]

    def __init__(self, frame: Frame) -> None:
        super().__init__()
        self._rows: dict[str, ResultRow] = {}
        self._drawn: dict[str, list[str]] = {}
        self._painted_at: float | None = None
        self._first = frame
        self._ready = False  # the repaint timer can come before the table has its columns

    def compose(self) -> ComposeResult:
        yield Static(id="topbar")
        yield Static(Text(" Results: ended runs per task × agent; mean/std/best of the succeeded "
                          "runs; Enter shows a row's runs", style="bold"), id="results-title")
        yield DataTable(id="results", cursor_type="row", zebra_stripes=True)
        yield ResultsChart(id="results-chart")
        yield Footer()

    @property
    def table(self) -> DataTable[str]:
        return self.query_one("#results", DataTable)

    @property
    def chart(self) -> ResultsChart:
        return self.query_one("#results-chart", ResultsChart)

    @property
    def highlighted(self) -> ResultRow | None:
        """The row under the table's cursor."""
        table = self.table
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return self._rows.get(str(key.value))

    def on_mount(self) -> None:
        for h in HEADERS:
            self.table.add_column(h, key=h)
        self._ready = True
        self.repaint(self._first)
        self.table.focus()

    def repaint(self, frame: Frame) -> None:
        if not self._ready:
            return
        if self._painted_at is not None and (not frame.fresh or frame.now - self._painted_at < REFRESH_S):
            return
        self._painted_at = frame.now
        self.query_one("#topbar", Static).update(frame.topbar)
        rows = {row_key(r): r for r in results(frame.fleet.rows.values())}
        table = self.table
        for key in [k for k in self._drawn if k not in rows]:
            table.remove_row(key)
            del self._drawn[key]
        for key, r in rows.items():
            values = cells(r)
            drawn = self._drawn.get(key)
            if drawn is None:
                table.add_row(*values, key=key)
            else:
                for h, old, new in zip(HEADERS, drawn, values, strict=True):
                    if old != new:
                        table.update_cell(key, h, new)
            self._drawn[key] = values
        self._rows = rows
        self.chart.show(self.shown, self.highlighted)

    @on(DataTable.RowHighlighted, "#results")
    def _highlighted(self) -> None:
        self.chart.show(self.shown, self.highlighted)  # the chart follows the cursor's task

    @property
    def shown(self) -> list[ResultRow]:
        """The rows, top to bottom."""
        return [self._rows[str(k.value)] for k in self.table.rows]

    @on(DataTable.RowSelected, "#results")
    def _selected(self, event: DataTable.RowSelected) -> None:
        r = self._rows.get(str(event.row_key.value))
        if r is not None:
            self.post_message(self.OpenRuns(runs_filter(r)))

    def action_compare(self) -> None:
        r = self.highlighted
        if r is None:
            return
        if len(r.run_ids) < 2:
            self.notify(f"{r.task} × {r.agent} has {len(r.run_ids)} ended run: nothing to compare",
                        severity="warning", timeout=4)
            return
        self.post_message(self.CompareRuns(r.run_ids))

    def action_close(self) -> None:
        self.dismiss()
