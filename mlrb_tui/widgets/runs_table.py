"""The runs table: one row per run, updated cell by cell, keyed by run id."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Self

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from mlrb_tui.cells import COLUMNS, Value, fit, row_values, sort_value
from mlrb_tui.state import FleetState, one_line

SegmentLines = list[list[Segment]]

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
    """A DataTable that never rebuilds: rows are added, updated in place, sorted, removed.

    At fleet scale the repaint is kept to what is on screen: a changed row inside the
    viewport gets its changed cells updated (cells are compared as plain values before any
    Text is built); a changed row outside it is only marked stale and is drawn when it
    scrolls into view. A rendered cell stays cached until that cell changes or its row
    moves, instead of every cell being rendered again after any update.
    """

    BINDINGS = [
        Binding("enter", "select_cursor", "Open", id="open"),
        Binding("space", "toggle_mark", "Mark", id="mark"),
        Binding("o", "cycle_sort", "Sort", id="sort"),
        Binding("O", "reverse_sort", "Reverse", show=False, id="reverse_sort"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, cell_padding=0, **kwargs)
        self._shown: dict[str, tuple[Value, ...]] = {}  # run -> the cell values as drawn
        self._stale: set[str] = set()  # shown runs that changed while out of view
        self._sort_keys: dict[str, Any] = {}  # run -> its sort value when last sorted
        self.sort_column = "run"
        self.sort_reverse = False
        self.filter_text = ""
        self.marked: set[str] = set()
        self.fleet: FleetState | None = None
        self.now = 0.0
        self.updates = 0  # cells updated in place, for tests and figures
        self.drawn: list[str] = []  # runs brought up to date by the last sync
        self._stamp = 0
        self._stamps: dict[tuple[RowKey, ColumnKey], int] = {}
        self._neutral = 0  # DataTable updates that do not invalidate other cells' renders
        self._run_of: dict[int, str] = {}  # id of a drawn run cell -> its run, for sorting

    def on_mount(self) -> None:
        for col in COLUMNS:
            # one column of gap after each cell stands in for the (two-sided) cell padding
            self.add_column(col.header, key=col.key, width=col.width + 1)

    # -- rendering: a cell's render is cached until that cell changes ---------------
    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: Text | str,
                    *, update_width: bool = False) -> None:
        before = self._update_count
        super().update_cell(row_key, column_key, value, update_width=update_width)
        self._neutral += self._update_count - before
        self._stamp += 1
        self._stamps[(RowKey(row_key) if isinstance(row_key, str) else row_key,
                      ColumnKey(column_key) if isinstance(column_key, str) else column_key)] = self._stamp

    def sort(self, *columns: ColumnKey | str, key: Callable[[Any], Any] | None = None,
             reverse: bool = False) -> Self:
        before = self._update_count
        super().sort(*columns, key=key, reverse=reverse)
        self._neutral += self._update_count - before  # the row index is in the cell's key
        return self

    def remove_row(self, row_key: RowKey | str) -> None:
        super().remove_row(row_key)
        key = RowKey(row_key) if isinstance(row_key, str) else row_key
        for col in self.columns:
            self._stamps.pop((key, col), None)

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False) -> SegmentLines:
        if row_index < 0 or column_index < 0:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        count = self._update_count
        # DataTable keys its cell cache on a counter bumped by any update, so one changed
        # cell would re-render the whole screen; key it on this cell's own stamp instead
        # (stamps are unique per update, so the row renderables cached under it agree)
        self._update_count = (row_key, row_index, width,  # type: ignore[assignment]
                              self._stamps.get((row_key, column_key), 0),  # type: ignore[arg-type]
                              count - self._neutral)
        try:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        finally:
            self._update_count = count

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
    def _values(self, run: str) -> tuple[Value, ...]:
        assert self.fleet is not None
        values = row_values(self.fleet.rows[run], self.now, self.fleet.signals.get(run))
        return ((*values[0], run in self.marked), *values[1:])

    def _cell_text(self, index: int, value: Value) -> Text:
        col = COLUMNS[index]
        if index == 0:  # the run cell carries the mark, and names the row when sorting
            text = fit(col.render(value[:-1]), col.width - (len(MARK) if value[-1] else 0))
            if value[-1]:
                text = Text(MARK, style="bold magenta") + text
            self._run_of[id(text)] = value[0]
            return text
        return fit(col.render(value), col.width)

    def _set_cell(self, run: str, index: int, value: Value) -> None:
        if index == 0:
            self._run_of.pop(id(self.get_cell(run, "run")), None)
        self.update_cell(run, COLUMNS[index].key, self._cell_text(index, value))

    def visible_rows(self, margin: int = 2) -> range:
        """Row indexes inside the viewport, with a small margin for a scroll in flight."""
        top = int(self.scroll_y)
        height = max(0, self.size.height - self.header_height)
        return range(max(0, top - margin), top + height + margin)

    def _in_view(self, run: str, view: range) -> bool:
        try:
            return self._row_locations.get(RowKey(run)) in view
        except Exception:  # a row that is not there is not in view
            return False

    def sync(self, fleet: FleetState, now: float, runs: Iterable[str]) -> None:
        """Bring the rows of `runs` up to date: add, update changed cells, drop filtered.

        Rows out of the viewport are marked stale and drawn when they come into view."""
        self.fleet, self.now = fleet, now
        moved = False
        view = self.visible_rows()
        drawn: list[str] = []
        sort_col = self.sort_column if (self.sort_column != "run" or self.sort_reverse) else None
        for run in runs:
            row = fleet.rows.get(run)
            if row is None:
                continue
            if not matches(row, self.filter_text):
                if run in self._shown:
                    self._run_of.pop(id(self.get_cell(run, "run")), None)
                    self.remove_row(run)
                    del self._shown[run]
                    self._stale.discard(run)
                continue
            if sort_col is not None:
                key = sort_value(row, sort_col, now)
                if self._sort_keys.get(run) != key:
                    self._sort_keys[run] = key
                    moved = True
            old = self._shown.get(run)
            if old is None:
                values = self._values(run)
                self.add_row(*(self._cell_text(i, v) for i, v in enumerate(values)), key=run)
                self._shown[run] = values
                moved = True
                drawn.append(run)
            elif self._in_view(run, view):
                self._draw(run, old)
                drawn.append(run)
            else:
                self._stale.add(run)
        if moved and sort_col is not None:
            self.resort()
        drawn += self.draw_stale()
        self.drawn = drawn

    def _draw(self, run: str, old: tuple[Value, ...]) -> None:
        values = self._values(run)
        if values != old:
            for i, (was, now_) in enumerate(zip(old, values, strict=True)):
                if was != now_:
                    self._set_cell(run, i, now_)
                    self.updates += 1
            self._shown[run] = values
        self._stale.discard(run)

    def draw_stale(self) -> list[str]:
        """Draw the stale rows that are now in view; returns them."""
        if not self._stale or self.fleet is None:
            return []
        view = self.visible_rows()
        due = [r for r in self._stale if self._in_view(r, view)]
        for run in due:
            if run in self._shown and run in self.fleet.rows:
                self._draw(run, self._shown[run])
            else:
                self._stale.discard(run)
        return due

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self.draw_stale()

    def resort(self) -> None:
        fleet, now, col = self.fleet, self.now, self.sort_column
        if fleet is None:
            return
        keep = self.current_run

        def key(cell: Text | str) -> Any:
            # the drawn run cell may be cut short: find its run by the cell itself
            run = self._run_of.get(id(cell), "")
            row = fleet.rows.get(run)
            return sort_value(row, col, now) if row else (2, 0.0)

        self.sort("run", key=key, reverse=self.sort_reverse)
        if keep is not None and keep in self._shown:
            self.move_cursor(row=self.get_row_index(keep))
        self.draw_stale()

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
        old = self._shown[run]
        self._draw(run, old)
        if self.cursor_row < self.row_count - 1:
            self.move_cursor(row=self.cursor_row + 1)

    def action_cycle_sort(self) -> None:
        keys = [c.key for c in COLUMNS]
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
        label = {c.key: c.header for c in COLUMNS}[self.sort_column]
        self.notify(f"sorted by {one_line(label, 20)} {arrow}", timeout=2)
