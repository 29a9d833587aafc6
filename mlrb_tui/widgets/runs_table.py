"""The runs table: one line per run, kept by run id, drawn only where it is on screen.

A Line API widget (a `ScrollView` with `render_line`), after toolong: the table holds an
ordered index of run ids and, per run, the plain cell values last drawn. Rendering is two
LRU caches deep, cell segments by (column, value) and whole lines by (row values, style),
so a repaint touches only the lines whose values changed, and a changed run that is off
screen costs nothing until it scrolls into view.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from itertools import accumulate
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mlrb_tui.cells import (
    COLUMNS,
    COLUMNS_WITH_CAMPAIGN,
    Column,
    Value,
    fit,
    row_values,
    sort_value,
)
from mlrb_tui.controls import Selection
from mlrb_tui.state import FleetState, one_line

MARK = "● "
GAP = 1  # columns of space after each cell
WIDTHS = tuple(c.width + GAP for c in COLUMNS)  # before any campaign column
HEADER = 1  # lines above the first row
FIXED = WIDTHS[0]  # the run column does not scroll sideways (its narrowest)
MAX_RUN_CHARS = 64  # a run id longer than any the engine makes is cut here
# on a terminal too narrow for every column, which stay in view, first to last; the run and
# status columns always do, the rest follow these out of view (reachable by scrolling)
KEEP_ORDER = ("time", "metric", "flags", "score", "agent", "campaign", "gpu", "res", "cost",
              "trend", "task")


def arrange(columns: tuple[Column, ...], run_width: int, room: int) -> tuple[Column, ...]:
    """The columns as laid out for `room` cells: the run column at `run_width`, so a run id
    is never cut; then those that fit, by how much they matter, in their usual order; then
    the rest, off to the right."""
    cols = tuple(replace(c, width=run_width) if c.key == "run" else c for c in columns)
    left = room - sum(c.width + GAP for c in cols if c.key not in KEEP_ORDER)
    fits: set[str] = set()
    for key in KEEP_ORDER:
        col = next((c for c in cols if c.key == key), None)
        if col is not None and col.width + GAP <= left:
            fits.add(key)
            left -= col.width + GAP
    if len(fits) == sum(c.key in KEEP_ORDER for c in cols):
        return cols
    shown = tuple(c for c in cols if c.key not in KEEP_ORDER or c.key in fits)
    return shown + tuple(c for c in cols if c not in shown)


FILTER_KEYS = frozenset({"run", "task", "agent", "model", "campaign", "slot", "scaffold", "status"})


def matches(row: dict[str, Any], text: str) -> bool:
    """The filter: a case-insensitive substring of run, task, agent, model, campaign or
    status; or `key:value` terms (`campaign:NAME task:T`), each an exact match; a leading `!`
    inverts it."""
    invert = text.startswith("!")
    needle = text[1:] if invert else text
    needle = needle.strip().lower()
    if not needle:
        return True
    terms = [t.partition(":") for t in needle.split()]
    if all(sep and key in FILTER_KEYS for key, sep, _ in terms):
        return all(str(row.get(key) or "").lower() == value for key, _, value in terms) != invert
    hay = " ".join(str(row.get(k) or "") for k in ("run", "task", "agent", "model", "campaign", "status"))
    return (needle in hay.lower()) != invert


@dataclass(slots=True, eq=False)
class Row:
    """What the table knows of one shown run: its cell values as last drawn."""

    run: str
    values: tuple[Value, ...]
    sort_key: Any = None
    stale: bool = False  # changed while off screen: recompute the values when drawn


class RunsTable(ScrollView, can_focus=True):
    """Every run in one scrolling table with a fixed header line and a row cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open", id="open"),
        Binding("space", "toggle_mark", "Mark", id="mark"),
        Binding("o", "cycle_sort", "Sort", id="sort"),
        Binding("O", "reverse_sort", "Reverse", show=False, id="reverse_sort"),
        Binding("up,k", "cursor_up", "Up", show=False, id="cursor_up"),
        Binding("down,j", "cursor_down", "Down", show=False, id="cursor_down"),
        Binding("pageup", "page_up", "Page up", show=False, id="page_up"),
        Binding("pagedown", "page_down", "Page down", show=False, id="page_down"),
        Binding("home", "first", "First run", show=False, id="first"),
        Binding("end", "last", "Last run", show=False, id="last"),
        Binding("left", "scroll_left", "Scroll left", show=False),
        Binding("right", "scroll_right", "Scroll right", show=False),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "runs-table--header",
        "runs-table--cursor",
        "runs-table--even-row",
        "runs-table--odd-row",
    }

    DEFAULT_CSS = """
    RunsTable {
        background: $surface;
        color: $foreground;
        & > .runs-table--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        & > .runs-table--odd-row {
        }
        & > .runs-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:dark > .runs-table--even-row {
            background: $surface-darken-1 40%;
        }
        & > .runs-table--even-row {
            background: $surface-lighten-1 50%;
        }
        &:focus {
            background-tint: $foreground 5%;
            & > .runs-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .runs-table--header {
                background-tint: $foreground 5%;
            }
        }
    }
    """

    cursor_row: reactive[int] = reactive(0, always_update=False, init=False)

    class MarksChanged(Message):
        """The marked runs changed: what counts them is out of date."""

        def __init__(self, table: RunsTable) -> None:
            super().__init__()
            self.table = table

        @property
        def control(self) -> RunsTable:
            return self.table

    class RunSelected(Message):
        """The operator opened a run (enter, or a click on the row under the cursor)."""

        def __init__(self, table: RunsTable, run: str) -> None:
            super().__init__()
            self.table = table
            self.run = run

        @property
        def control(self) -> RunsTable:
            return self.table

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rows: dict[str, Row] = {}  # shown runs
        self._order: list[str] = []  # shown runs, top to bottom
        self._index: dict[str, int] = {}  # run -> its place in _order
        self.sort_column = "run"
        self.sort_reverse = False
        self.filter_text = ""
        self.marked: set[str] = set()
        self.fleet: FleetState | None = None
        self.now = 0.0
        self.updates = 0  # cells that changed value, for tests and figures
        self.drawn: list[str] = []  # on-screen runs brought up to date by the last sync
        self.lines_rendered = 0  # lines built from cells (cache misses), for figures
        self._cell_cache: LRUCache[tuple[int, Value], list[Segment]] = LRUCache(1024)
        self._line_cache: LRUCache[tuple[Any, ...], Strip] = LRUCache(256)
        self._styles: dict[str, Style] = {}
        self._base = COLUMNS  # every column, in the usual order
        self._run_width = COLUMNS[0].width  # grows to the longest run id shown
        self._set_columns(COLUMNS)

    def _set_columns(self, columns: tuple[Column, ...]) -> None:
        self.columns = columns
        self._widths = tuple(c.width + GAP for c in columns)
        self._edges = tuple(accumulate(self._widths))
        self._total = sum(self._widths)
        # the columns up to the run's stay put when the rest scroll sideways
        self._fixed = next((e for c, e in zip(columns, self._edges, strict=True) if c.key == "run"),
                           FIXED)

    def _room(self) -> int:
        """The cells a line has, with room kept for the scrollbar so rows arriving do not
        reflow the columns."""
        return max(0, self.size.width - self.styles.scrollbar_size_vertical)

    def _relayout(self) -> None:
        """Lay the columns out again (a resize, a longer run id, a campaign column)."""
        room = self._room()
        columns = arrange(self._base, self._run_width, room) if room else \
            tuple(replace(c, width=self._run_width) if c.key == "run" else c for c in self._base)
        if columns == self.columns:
            return
        self._set_columns(columns)
        self._cell_cache.clear()
        self._line_cache.clear()
        for row in self._rows.values():
            if self.fleet is not None and row.run in self.fleet.rows:
                row.values = self._values(row.run)
                row.stale = False
        self.virtual_size = Size(self._total, len(self._order) + HEADER)
        self.refresh()

    def _show_campaigns(self) -> None:
        """A run of a campaign arrived: from now on the table has a campaign column."""
        self._base = COLUMNS_WITH_CAMPAIGN
        self._relayout()

    def _fit_run(self, run: str) -> None:
        """Widen the run column for a longer run id (room for the mark beside it)."""
        need = Text(one_line(run, MAX_RUN_CHARS)).cell_len + len(MARK)
        if need > self._run_width:
            self._run_width = need
            self._relayout()

    # -- what the operator points at -------------------------------------------------
    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def shown(self) -> list[str]:
        """The shown runs, top to bottom."""
        return list(self._order)

    @property
    def rows(self) -> dict[str, Row]:
        return self._rows

    @property
    def current_run(self) -> str | None:
        if not self._order:
            return None
        return self._order[min(self.cursor_row, len(self._order) - 1)]

    def selection(self) -> Selection:
        """The run under the cursor and the marked runs the filter still shows."""
        return Selection(self.current_run, tuple(r for r in self.marked if r in self._rows))

    def row_index(self, run: str) -> int:
        return self._index[run]

    def move_cursor(self, row: int) -> None:
        self.cursor_row = max(0, min(row, len(self._order) - 1))

    def cell_text(self, run: str, column: str) -> str:
        """A cell as the operator reads it (cut to its column), by run and column key."""
        row = self._rows[run]
        if row.stale:
            self._update(row)
        index = next(i for i, c in enumerate(self.columns) if c.key == column)
        return self._cell(index, row.values[index]).plain

    # -- values ---------------------------------------------------------------------
    def _values(self, run: str) -> tuple[Value, ...]:
        assert self.fleet is not None
        self._fit_run(run)
        values = row_values(self.fleet.rows[run], self.now, self.fleet.signals.get(run), self.columns)
        return ((*values[0], run in self.marked), *values[1:])

    def _update(self, row: Row) -> tuple[int, ...]:
        """Recompute a row's values; the indexes of the cells that changed (none: empty)."""
        row.stale = False
        if self.fleet is None or row.run not in self.fleet.rows:
            return ()
        values = self._values(row.run)
        if values == row.values:
            return ()
        changed = tuple(i for i, (a, b) in enumerate(zip(values, row.values, strict=True))
                        if a != b)
        self.updates += len(changed)
        row.values = values
        return changed

    def _refresh_cells(self, index: int, cells: tuple[int, ...]) -> None:
        """Repaint only the changed cells of a row: over SSH a whole line costs ten cells."""
        y = index + HEADER - round(self.scroll_y)
        scroll_x = round(self.scroll_x)
        for i in cells:
            left, right = (self._edges[i - 1] if i else 0), self._edges[i]
            if right > self._fixed:  # the cells right of the run column scroll sideways under it
                left, right = max(self._fixed, left - scroll_x), right - scroll_x
            if right > left:
                self.refresh(Region(left, y, right - left, 1))

    def _view(self) -> range:
        """Indexes of the rows inside the viewport."""
        top = round(self.scroll_y)
        return range(top, top + max(0, self.size.height - HEADER))

    # -- syncing from the state ----------------------------------------------------
    @property
    def _sorting(self) -> bool:
        return self.sort_column != "run" or self.sort_reverse

    def sync(self, fleet: FleetState, now: float, runs: Iterable[str]) -> None:
        """Bring the rows of `runs` up to date: add, update changed lines, drop filtered.

        Rows out of the viewport are marked stale and drawn when they come into view."""
        self.fleet, self.now = fleet, now
        view = self._view()
        drawn: list[str] = []
        added = removed = moved = False
        sorting = self._sorting
        for run in runs:
            state = fleet.rows.get(run)
            if state is None:
                continue
            if state.get("campaign") and self._base is COLUMNS:
                self._show_campaigns()
            row = self._rows.get(run)
            if not matches(state, self.filter_text):
                if row is not None:
                    del self._rows[run]
                    removed = True
                continue
            if row is None:
                row = self._rows[run] = Row(run, self._values(run))
                self._index[run] = len(self._order)
                self._order.append(run)
                added = True
                drawn.append(run)
            elif self._index[run] in view:
                self._refresh_cells(self._index[run], self._update(row))
                drawn.append(run)
            else:
                row.stale = True
            if sorting:
                key = sort_value(state, self.sort_column, now)
                if key != row.sort_key:
                    row.sort_key = key
                    moved = True
        if moved:
            self.resort()
        elif removed:
            self._reindex([r for r in self._order if r in self._rows])
        elif added:
            self._grown()
        self.drawn = drawn

    def _grown(self) -> None:
        """Rows were appended: size the scroll area and draw the new lines."""
        self.virtual_size = Size(self._total, len(self._order) + HEADER)
        self.refresh()

    def _reindex(self, order: list[str]) -> None:
        """Put the rows in a new order; redraw only the lines that now show another run."""
        keep = self.current_run
        before = self._order
        self._order = order
        self._index = {run: i for i, run in enumerate(order)}
        self.virtual_size = Size(self._total, len(order) + HEADER)
        for i in self._view():
            if i >= len(order) or i >= len(before) or order[i] != before[i]:
                self.refresh_line(i + HEADER)
        if keep is not None and keep in self._index:
            self.cursor_row = self._index[keep]
        elif self.cursor_row >= len(order):
            self.cursor_row = max(0, len(order) - 1)

    def resort(self) -> None:
        """Order the shown rows by the sort column (creation order when it is `run`)."""
        fleet, now, col = self.fleet, self.now, self.sort_column
        if fleet is None:
            return
        for run, row in self._rows.items():
            state = fleet.rows.get(run)
            row.sort_key = sort_value(state, col, now) if state else (2, 0.0)
        rows = [r for r in self._order if r in self._rows]
        present = [r for r in rows if self._rows[r].sort_key[0] == 0]
        missing = [r for r in rows if self._rows[r].sort_key[0] != 0]  # last either way
        order = sorted(present, key=lambda r: self._rows[r].sort_key, reverse=self.sort_reverse)
        order += sorted(missing, key=lambda r: self._rows[r].sort_key)
        self._reindex(order)

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        if self.fleet is not None:
            self.sync(self.fleet, self.now, list(self.fleet.rows))
            self.resort()  # runs shown again go back to their place

    def clear_caches(self) -> None:
        self._cell_cache.clear()
        self._restyle()
        for row in self._rows.values():
            row.stale = True
        self.refresh()

    # -- rendering ------------------------------------------------------------------
    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._restyle()

    def _restyle(self) -> None:
        """A theme or focus change restyles every line."""
        self._styles.clear()
        self._line_cache.clear()

    def _cell(self, index: int, value: Value) -> Text:
        col = self.columns[index]
        if index == 0:  # the run cell carries the mark
            text = fit(col.render(value[:-1]), col.width - (len(MARK) if value[-1] else 0))
            return Text(MARK, style="bold magenta") + text if value[-1] else text
        return fit(col.render(value), col.width)

    def _cell_segments(self, index: int, value: Value) -> list[Segment]:
        key = (index, value)
        segments = self._cell_cache.get(key)
        if segments is None:
            text = self._cell(index, value)
            text.align("left", self._widths[index])
            console = self.app.console
            # Text.render leaves out the text's own style (its console protocol adds it)
            segments = list(Segment.apply_style(text.render(console), console.get_style(text.style)))
            self._cell_cache[key] = segments
        return segments

    def _style(self, part: str) -> Style:
        """The widget's style under a component's, computed once per restyle."""
        style = self._styles.get(part)
        if style is None:
            style = self._styles[part] = self.rich_style + self.get_component_rich_style(part)
        return style

    def _header_strip(self, scroll_x: int, width: int) -> Strip:
        key = ("header", self.sort_column, self.sort_reverse, scroll_x, width)
        strip = self._line_cache.get(key)
        if strip is None:
            style = self._style("runs-table--header")
            text = Text()
            for col, col_width in zip(self.columns, self._widths, strict=True):
                label = col.header
                if col.key == self.sort_column and self._sorting:
                    label += "▼" if self.sort_reverse else "▲"
                text.append(one_line(label, col_width - GAP).ljust(col_width))
            segments = Segment.apply_style(text.render(self.app.console), style)
            strip = _viewport(Strip(segments, self._total), scroll_x, width, style, self._fixed)
            self._line_cache[key] = strip
        return strip

    def _row_strip(self, index: int, scroll_x: int, width: int) -> Strip:
        row = self._rows[self._order[index]]
        if row.stale:
            self._update(row)
        cursor = index == self.cursor_row
        part = ("runs-table--cursor" if cursor else
                "runs-table--even-row" if index % 2 else "runs-table--odd-row")
        key = (row.values, part, scroll_x, width)
        strip = self._line_cache.get(key)
        if strip is None:
            self.lines_rendered += 1
            style = self._style(part)
            segments: list[Segment] = []
            for i, value in enumerate(row.values):
                segments += self._cell_segments(i, value)
            # under the cursor its colours win, so that every cell reads
            post = Style(color=style.color, bgcolor=style.bgcolor) if cursor else None
            line = Segment.simplify(Segment.apply_style(segments, style, post))
            strip = Strip(line, self._total)
            if scroll_x or width != self._total:
                strip = _viewport(strip, scroll_x, width, style, self._fixed)
            self._line_cache[key] = strip
        return strip

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x, scroll_y = self.scroll_offset
        if y < HEADER:
            return self._header_strip(scroll_x, width)
        index = scroll_y + y - HEADER
        if index >= len(self._order):
            return Strip.blank(width, self._style("runs-table--odd-row"))
        return self._row_strip(index, scroll_x, width)

    # -- the cursor -----------------------------------------------------------------
    def watch_cursor_row(self, old: int, new: int) -> None:
        for index in (old, new):
            self.refresh_line(index + HEADER)
        top, height = round(self.scroll_y), max(1, self.size.height - HEADER)
        if new < top:
            self.scroll_to(y=new, animate=False)
        elif new >= top + height:
            self.scroll_to(y=new - height + 1, animate=False)

    def on_resize(self, event: events.Resize) -> None:
        self._relayout()
        self.virtual_size = Size(self._total, len(self._order) + HEADER)

    def on_focus(self) -> None:
        self._restyle()
        self.refresh()

    def on_blur(self) -> None:
        self._restyle()
        self.refresh()

    # -- actions --------------------------------------------------------------------
    def action_cursor_up(self) -> None:
        self.move_cursor(self.cursor_row - 1)

    def action_cursor_down(self) -> None:
        self.move_cursor(self.cursor_row + 1)

    def action_page_up(self) -> None:
        self.move_cursor(self.cursor_row - max(1, self.size.height - HEADER - 1))

    def action_page_down(self) -> None:
        self.move_cursor(self.cursor_row + max(1, self.size.height - HEADER - 1))

    def action_first(self) -> None:
        self.move_cursor(0)

    def action_last(self) -> None:
        self.move_cursor(len(self._order) - 1)

    def action_select_cursor(self) -> None:
        run = self.current_run
        if run is not None:
            self.post_message(self.RunSelected(self, run))

    def action_toggle_mark(self) -> None:
        run = self.current_run
        if run is None or self.fleet is None:
            return
        self.marked.symmetric_difference_update({run})
        self.post_message(self.MarksChanged(self))
        if self._update(self._rows[run]):
            self.refresh_line(self._index[run] + HEADER)
        self.move_cursor(self.cursor_row + 1)

    def action_cycle_sort(self) -> None:
        keys = [c.key for c in self.columns]
        self.sort_by(keys[(keys.index(self.sort_column) + 1) % len(keys)], False)

    def action_reverse_sort(self) -> None:
        self.sort_by(self.sort_column, not self.sort_reverse)

    def sort_by(self, column: str, reverse: bool) -> None:
        self.sort_column, self.sort_reverse = column, reverse
        self.resort()
        self.refresh(Region(0, 0, self.size.width, HEADER))  # the header stays on top
        arrow = "▼" if reverse else "▲"
        label = {c.key: c.header for c in self.columns}[column]
        self.notify(f"sorted by {one_line(label, 20)} {arrow}", timeout=2)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y < HEADER:  # a header: sort by it, again to reverse
            x = offset.x if offset.x < self._fixed else offset.x + round(self.scroll_x)
            for col, right in zip(self.columns, self._edges, strict=True):
                if x < right:
                    same = col.key == self.sort_column
                    self.sort_by(col.key, not self.sort_reverse if same else False)
                    break
            return
        index = round(self.scroll_y) + offset.y - HEADER
        if 0 <= index < len(self._order):
            if index == self.cursor_row:
                self.action_select_cursor()
            else:
                self.move_cursor(index)


def _viewport(strip: Strip, scroll_x: int, width: int, style: Style, fixed: int = FIXED) -> Strip:
    """The part of a full line on screen: the run column stays put, the rest scrolls."""
    if scroll_x:
        strip = Strip.join([strip.crop(0, fixed), strip.crop(fixed + scroll_x, scroll_x + width)])
    return strip.crop_extend(0, width, style)
