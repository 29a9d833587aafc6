"""One run as an export reads it: its `runs` row and its events, paged from the journal."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runner.event_data import RunCreatedData
from runner.events import Event
from runner.journal import JournalReader

PAGE = 5000  # events read per query: a long run never loads in one go


class ExportError(LookupError):
    """The run cannot be exported (unknown, ambiguous, or not in this journal)."""


@dataclass(slots=True)
class RunRecord:
    row: dict[str, Any]
    events: list[Event]
    created: RunCreatedData = field(default_factory=RunCreatedData)

    @property
    def run(self) -> str:
        return str(self.row["run"])

    @property
    def status(self) -> str:
        return str(self.row.get("status") or "queued")


def find(reader: JournalReader, run: str) -> dict[str, Any]:
    """The run's row by its id or an unambiguous prefix; ExportError when there is none."""
    row = reader.find_run(run)
    if row is None:
        raise ExportError(f"no run {run!r} in {reader.path} (see `mlrb runs`)")
    return row


def iter_events(reader: JournalReader, run: str) -> Iterator[Event]:
    """Every event of `run` in seq order, a page at a time."""
    after = 0
    while True:
        page = reader.events(run, after, PAGE)
        if not page:
            return
        yield from page
        after = page[-1].seq


def load_record(reader: JournalReader, run: str) -> RunRecord:
    row = find(reader, run)
    events = list(iter_events(reader, row["run"]))
    created = next((e.body for e in events if type(e.body) is RunCreatedData), None)
    return RunRecord(row=row, events=events, created=created or RunCreatedData())


def iso(ts: float | None) -> str:
    """A timestamp as ISO 8601 in UTC ('' for none)."""
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()
