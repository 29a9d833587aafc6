"""The runs table: one row per run, updated cell by cell, keyed by run id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from mlrb_tui.cells import COLUMNS, row_cells, sort_value
from mlrb_tui.state import FleetState, one_line

MARK = "● "


def matches(row: dict[str, Any], text: str) -> bool:
    """The filter: a case-insensitive substring of run, task, agent, model or status;
    a leading `!` inverts it."""
    invert = text.startswith("!")
    needle = text[1:] if invert else text
    needle = needle.strip().lower()
    if not needle:
        return True
    hay = " ".join(str(row.get(k) or "") for k in ("run", "task", "agent", "model", "status"))
    return (needle in hay.lower()) != invert


class RunsTable(DataTable[Text | str]):
    """A DataTable that never rebuilds: rows are added, updated in place, sorted, removed."""

    BINDINGS = [
        Binding("enter", "select_cursor", "Open", id="open"),
        Binding("space", "toggle_mark", "Mark", id="mark"),
        Binding("o", "cycle_sort", "Sort", id="sort"),
        Binding("O", "reverse_sort", "Reverse", show=False, id="reverse_sort"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._shown: dict[str, tuple[str, ...]] = {}  # run -> the cells as drawn (as markup)
        self.sort_column = "run"
        self.sort_reverse = False
        self.filter_text = ""
        self.marked: set[str] = set()
        self.fleet: FleetState | None = None
        self.now = 0.0
        self.updates = 0  # cells updated in place, for tests and figures

    def on_mount(self) -> None:
        for key, label, _width in COLUMNS:
            self.add_column(label, key=key)

    # -- what the operator points at -------------------------------------------------
    @property
    def current_run(self) -> str | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:  # an empty or shrinking table has no cursor cell
            return None
        return key.value

    def targets(self) -> list[str]:
        """The runs a control applies to: the marked ones, else the one under the cursor."""
        if self.marked:
            return sorted(r for r in self.marked if r in self._shown)
        run = self.current_run
        return [run] if run else []

    # -- syncing from the state ----------------------------------------------------
    def _cells(self, run: str) -> tuple[Text | str, ...]:
        assert self.fleet is not None
        cells = list(row_cells(self.fleet.rows[run], self.now, self.fleet.signals.get(run)))
        if run in self.marked:
            first = cells[0]
            cells[0] = Text(MARK, style="bold magenta") + (first if isinstance(first, Text)
                                                            else Text(first))
        return tuple(cells)

    def sync(self, fleet: FleetState, now: float, runs: Iterable[str]) -> None:
        """Bring the rows of `runs` up to date: add, update changed cells, drop filtered."""
        self.fleet, self.now = fleet, now
        moved = False
        for run in runs:
            row = fleet.rows.get(run)
            if row is None:
                continue
            visible = matches(row, self.filter_text)
            if not visible:
                if run in self._shown:
                    self.remove_row(run)
                    del self._shown[run]
                continue
            cells = self._cells(run)
            drawn = tuple(c.markup if isinstance(c, Text) else c for c in cells)
            old = self._shown.get(run)
            if old is None:
                self.add_row(*cells, key=run)
                moved = True
            elif old != drawn:
                for (key, _, _), cell, was, now_ in zip(COLUMNS, cells, old, drawn, strict=True):
                    if was != now_:
                        self.update_cell(run, key, cell)
                        self.updates += 1
                        if key == self.sort_column:
                            moved = True
            self._shown[run] = drawn
        if moved and (self.sort_column != "run" or self.sort_reverse):
            self.resort()

    def resort(self) -> None:
        fleet, now, col = self.fleet, self.now, self.sort_column
        if fleet is None:
            return
        keep = self.current_run

        def key(cell: Text | str) -> Any:
            run = cell.plain if isinstance(cell, Text) else str(cell)
            run = run.removeprefix(MARK)
            row = fleet.rows.get(run)
            return sort_value(row, col, now) if row else (2, 0.0)

        self.sort("run", key=key, reverse=self.sort_reverse)
        if keep is not None and keep in self._shown:
            self.move_cursor(row=self.get_row_index(keep))

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        if self.fleet is not None:
            self.sync(self.fleet, self.now, list(self.fleet.rows))
            self.resort()

    @property
    def shown(self) -> list[str]:
        return list(self._shown)

    # -- actions --------------------------------------------------------------------
    def action_toggle_mark(self) -> None:
        run = self.current_run
        if run is None or self.fleet is None:
            return
        self.marked.symmetric_difference_update({run})
        cells = self._cells(run)
        self.update_cell(run, "run", cells[0])
        self._shown[run] = tuple(c.markup if isinstance(c, Text) else c for c in cells)
        if self.cursor_row < self.row_count - 1:
            self.move_cursor(row=self.cursor_row + 1)

    def action_cycle_sort(self) -> None:
        keys = [k for k, _, _ in COLUMNS]
        self.sort_column = keys[(keys.index(self.sort_column) + 1) % len(keys)]
        self._sort_changed()

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._sort_changed()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        col = str(event.column_key.value)
        if col == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = col, False
        self._sort_changed()

    def _sort_changed(self) -> None:
        self.resort()
        arrow = "▼" if self.sort_reverse else "▲"
        label = dict((k, h) for k, h, _ in COLUMNS)[self.sort_column]
        self.notify(f"sorted by {one_line(label, 20)} {arrow}", timeout=2)
