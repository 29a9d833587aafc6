"""`mlrb export RUN --format jsonl|inspect|html`: one run out of the journal, to share."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from runner.config import ConfigError, load_config

FORMATS = ("jsonl", "inspect", "html")
SUFFIX = {"jsonl": ".jsonl", "inspect": ".json", "html": ".html"}


def _target(out: str | None, fmt: str, default_name: str) -> Path | None:
    """Where to write: None for stdout (jsonl's default); a directory gets the default name."""
    if out == "-" or (out is None and fmt == "jsonl"):
        return None
    if out is None:
        return Path(default_name)
    path = Path(out)
    if path.is_dir() or out.endswith("/"):
        return path / default_name
    return path


@click.command("export")
@click.argument("run")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="jsonl: every event, one JSON object a line; inspect: an Inspect eval log "
                   "(.json, for `inspect view`); html: one self-contained page.")
@click.option("-o", "--output", "out", default=None,
              help="A file, or a directory for the default name; `-` is stdout. Default: stdout "
                   "for jsonl, else <name> in the current directory.")
def export(run: str, fmt: str, out: str | None) -> None:
    """Export RUN (an id or an unambiguous prefix) from the journal."""
    from runner.export import (
        ExportError,
        html_report,
        inspect_file_name,
        iter_events,
        load_record,
        write_jsonl,
    )
    from runner.export.inspect_log import eval_log_json
    from runner.export.record import find
    from runner.journal import JournalReader

    try:
        cfg = load_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not cfg.db_path.exists():
        raise click.ClickException(f"no journal at {cfg.db_path}")
    reader = JournalReader(cfg.db_path)
    try:
        try:
            row = find(reader, run)
        except ExportError as exc:
            raise click.ClickException(str(exc)) from None
        run_id = str(row["run"])
        if fmt == "jsonl":
            path = _target(out, fmt, run_id + SUFFIX[fmt])
            if path is None:
                write_jsonl(iter_events(reader, run_id), sys.stdout)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                n = write_jsonl(iter_events(reader, run_id), f)
            click.echo(f"{n} events to {path}", err=True)
            return
        record = load_record(reader, run_id)
        if fmt == "inspect":
            text, name = eval_log_json(record), inspect_file_name(record)
        else:
            text, name = html_report(record), run_id + SUFFIX[fmt]
    finally:
        reader.close()
    path = _target(out, fmt, name)
    if path is None:
        sys.stdout.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    click.echo(f"{run_id} to {path}", err=True)
