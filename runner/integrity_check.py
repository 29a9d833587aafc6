"""Integrity checks on a finished run: the task's specification-gaming checks
(`tasks.integrity`) over its workspace and its events as the journal holds them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from runner.journal import JournalReader
from tasks.api import TaskSpec
from tasks.integrity import check_run

log = logging.getLogger(__name__)

PAGE = 5000
FLAG_FIELDS = ("check", "severity", "detail")


def journal_events(journal_path: Path, run: str) -> list[dict[str, Any]]:
    """Every event of the run, as dicts, read page by page."""
    reader = JournalReader(journal_path)
    try:
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            page = reader.events(run, after_seq=after, limit=PAGE)
            if not page:
                return out
            out.extend(e.to_dict() for e in page)
            after = page[-1].seq
    finally:
        reader.close()


async def integrity_flags(journal_path: Path, run: str, task: TaskSpec, scale: str,
                          workspace: Path) -> list[dict[str, Any]]:
    """The `integrity.flag` events' data for the run; none when the checks cannot run."""
    try:
        events = await asyncio.to_thread(journal_events, journal_path, run)
        flags = await asyncio.to_thread(check_run, task, scale, workspace, events)
    except Exception as exc:  # a check that cannot run must not fail the run
        log.warning("integrity checks failed for %s: %s", run, exc)
        return []
    return [{k: flag.get(k) for k in FLAG_FIELDS} for flag in flags or []]
