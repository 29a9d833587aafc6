"""One run as an export reads it: its `runs` row, its `run.created` data, and its events,
paged from the journal as they are read (a day-long run never sits in memory whole)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runner.event_data import RunCreatedData
from runner.events import Event
from runner.journal import JournalReader

PAGE = 5000  # events read per query


class ExportError(LookupError):
    """The run cannot be exported (unknown, ambiguous, or not in this journal)."""


def iter_events(reader: JournalReader, run: str) -> Iterator[Event]:
    """Every event of `run` in seq order, a page at a time."""
    return reader.all_events(run, PAGE)


class JournalEvents:
    """A run's events, read again from the journal each time they are iterated."""

    def __init__(self, reader: JournalReader, run: str) -> None:
        self.reader = reader
        self.run = run

    def __iter__(self) -> Iterator[Event]:
        return iter_events(self.reader, self.run)


@dataclass(slots=True)
class RunRecord:
    """`events` may be iterated more than once (a list, or JournalEvents)."""

    row: dict[str, Any]
    events: Iterable[Event]
    created: RunCreatedData = field(default_factory=RunCreatedData)
    first_ts: float | None = None  # the first event's time: where the run's timeline starts

    def __post_init__(self) -> None:
        if self.first_ts is None:
            first = next(iter(self.events), None)
            self.first_ts = first.ts if first else float(self.row.get("created_ts") or 0.0)

    @property
    def run(self) -> str:
        return str(self.row["run"])

    @property
    def status(self) -> str:
        return str(self.row.get("status") or "queued")

    @property
    def t0(self) -> float:
        assert self.first_ts is not None
        return self.first_ts


def find(reader: JournalReader, run: str) -> dict[str, Any]:
    """The run's row by its id or an unambiguous prefix; ExportError when there is none."""
    row = reader.find_run(run)
    if row is None:
        raise ExportError(f"no run {run!r} in {reader.path} (see `mlrb runs`)")
    return row


def load_record(reader: JournalReader, run: str) -> RunRecord:
    """The run (by id or prefix) over `reader`, which must stay open while it is exported."""
    row = find(reader, run)
    run_id = str(row["run"])
    first = reader.first_events(run_id, ["run.created"], reader.max_seq(run_id) + 1)
    created = first[0].body if first and type(first[0].body) is RunCreatedData else None
    span = reader.ts_range(run_id)
    return RunRecord(row=row, events=JournalEvents(reader, run_id),
                     created=created or RunCreatedData(),
                     first_ts=span[0] if span else float(row.get("created_ts") or 0.0))


def iso(ts: float | None) -> str:
    """A timestamp as ISO 8601 in UTC ('' for none)."""
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()
