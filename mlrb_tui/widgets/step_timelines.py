"""The compare screen's timelines: one row per agent step, each run's tool calls in its own
column, the first step where the runs' tools part marked (◆), rows diffed by step."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable

from mlrb_tui.comparison import (
    DIFFERENT,
    SAME,
    SAME_TOOLS,
    Call,
    RunTrack,
    StepRow,
    align,
    divergence,
)

DIVERGED = "◆"
AGREEMENT_STYLE = {SAME: "green", SAME_TOOLS: "yellow", DIFFERENT: "bold red"}
STEP_WIDTH = 7


def calls_text(calls: tuple[Call, ...] | None) -> str:
    """A run's calls at one step, in a line: `·` where it made none."""
    return "; ".join(c.text() for c in calls) if calls else "·"


class StepTimelines(DataTable[Text]):
    """Adds the steps that are new and updates the cells that changed, by step key."""

    def __init__(self, runs: Sequence[str], **kwargs: str) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self.runs = list(runs)
        self.steps: list[StepRow] = []
        self.diverged_at: int | None = None
        self._drawn: dict[int, tuple[str, ...]] = {}
        self._columns_set = False
        self._width = 0
        self._tracks: list[RunTrack] = []

    def set_columns(self, width: int) -> None:
        """One column per run sharing `width` (less the step and agreement columns)."""
        self._width = width
        each = max(16, (width - STEP_WIDTH - 3 - 2 * (len(self.runs) + 2)) // max(1, len(self.runs)))
        self.add_column("step", key="step", width=STEP_WIDTH)
        self.add_column("", key="agree", width=1)
        for run in self.runs:
            self.add_column(run, key=run, width=each)
        self._columns_set = True

    def sync(self, tracks: Sequence[RunTrack]) -> None:
        self._tracks = list(tracks)
        if not self._columns_set:
            return
        rows = align(tracks)
        self.steps = rows
        self.diverged_at = divergence(rows)
        keys = [r.step for r in rows]
        if list(self._drawn) != keys[:len(self._drawn)]:  # a step came in between: redraw all
            self.clear()
            self._drawn.clear()
        for r in rows:
            cells = self._cells(r)
            plain = tuple(c.plain + str(c.style) for c in cells)
            old = self._drawn.get(r.step)
            if old is None:
                self.add_row(*cells, key=str(r.step))
            elif old != plain:
                for col, cell, before in zip(["step", "agree", *self.runs], cells, old, strict=True):
                    if cell.plain + str(cell.style) != before:
                        self.update_cell(str(r.step), col, cell)
            self._drawn[r.step] = plain

    def on_resize(self) -> None:
        width = self.app.size.width
        if self._columns_set and width != self._width:  # the run columns share the new width
            cursor = self.cursor_row
            self.clear(columns=True)
            self._drawn.clear()
            self.set_columns(width)
            self.sync(self._tracks)
            if self.row_count:
                self.move_cursor(row=min(cursor, self.row_count - 1))

    def _cells(self, r: StepRow) -> list[Text]:
        here = r.step == self.diverged_at
        step = Text(f"{DIVERGED if here else ' '}{r.step:>5}", style="bold red" if here else "dim")
        agree = Text(r.agreement, style=AGREEMENT_STYLE[r.agreement])
        return [step, agree, *(Text(calls_text(c), style="" if c else "dim") for c in r.calls)]

    def column_text(self, run: str) -> list[str]:
        """A run's column, top to bottom, as the operator reads it."""
        i = self.runs.index(run)
        return [calls_text(r.calls[i]) for r in self.steps]

    def jump_to_divergence(self) -> bool:
        if self.diverged_at is None:
            return False
        self.move_cursor(row=self.get_row_index(str(self.diverged_at)))
        return True
