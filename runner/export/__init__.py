"""Exporting one run from the journal: its events as JSON Lines, an Inspect eval log, or a
self-contained HTML page. Pure functions over what `runner.journal.JournalReader` reads."""

from __future__ import annotations

from runner.export.html_report import html_report
from runner.export.inspect_log import eval_log, eval_log_json, inspect_file_name
from runner.export.jsonl import write_jsonl
from runner.export.record import ExportError, JournalEvents, RunRecord, iter_events, load_record

FORMATS = ("jsonl", "inspect", "html")

__all__ = ["FORMATS", "ExportError", "JournalEvents", "RunRecord", "eval_log", "eval_log_json",
           "html_report", "inspect_file_name", "iter_events", "load_record", "write_jsonl"]
