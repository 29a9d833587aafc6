"""The run's events as JSON Lines: one event per line, as the journal holds it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TextIO

from runner.events import Event


def write_jsonl(events: Iterable[Event], out: TextIO) -> int:
    """Write each event as one line of JSON; the number written."""
    n = 0
    for ev in events:
        out.write(ev.to_json())
        out.write("\n")
        n += 1
    return n
