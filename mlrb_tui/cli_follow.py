"""`mlrb logs` and `mlrb events`: one run's record read from a journal, and followed live.

Following polls the SQLite file rather than the bus, so it works with no broker, on the
runner's host and beside a recorder's database alike, and for a run that ended long ago. A
poll that finds nothing new costs one seek on the `(run, seq)` key. Events are handed out in
seq order up to the first gap only: a recorder fills a gap by asking the run's runner, so a
follower waits for it a while before it goes on without the missing events.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from runner.events import Event

POLL_S = 0.2  # how often a follower looks for new rows
GAP_WAIT_S = 10.0  # how long a follower waits for a recorder to fill a gap before going on
PAGE = 1000  # events read per query
SEQ_PAGE = 5000  # seqs read per query while looking for the end of the contiguous part
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C


class FollowError(click.ClickException):
    """A run or journal that cannot be read: said in one line, exit 1."""


@dataclass
class RunTail:
    """One run's events from a journal file, in seq order, page by page, as they are written.

    `patterns` (globs such as `tool.*`) choose the kinds handed out; `run.ended` is always
    read too, so the tail knows when the run is over. `wait_gaps` holds back what follows a
    missing seq for up to `gap_wait_s` (following); otherwise a gap is skipped at once.
    """

    path: Path
    run: str
    patterns: Sequence[str] = ()
    wait_gaps: bool = False
    gap_wait_s: float = GAP_WAIT_S
    clock: Callable[[], float] = time.monotonic
    ended: bool = False
    skipped: list[tuple[int, int]] = field(default_factory=list)  # seq ranges given up on
    rejected: int = 0  # rows that broke the event contract, left out
    _frontier: int = 0  # every seq up to here is in the journal (or was given up on)
    _handed: int = 0  # events up to here were read
    _gap_at: int | None = None  # the first missing seq, while it is waited for
    _gap_since: float | None = None
    _conn: sqlite3.Connection | None = None

    def open(self) -> None:
        from runner.journal import connect

        self._conn = connect(self.path, readonly=True)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _rows(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        assert self._conn is not None, "open() first"
        return self._conn.execute(sql, tuple(params)).fetchall()

    def _max_seq(self) -> int:
        return int(self._rows("SELECT MAX(seq) AS m FROM events WHERE run = ?", [self.run])[0]["m"] or 0)

    def _advance(self) -> None:
        """Move the frontier over the seqs present without a break, and over a gap given up on."""
        while True:
            seqs = [int(r["seq"]) for r in self._rows(
                "SELECT seq FROM events WHERE run = ? AND seq > ? ORDER BY seq LIMIT ?",
                [self.run, self._frontier, SEQ_PAGE])]
            for s in seqs:
                if s != self._frontier + 1 and not self._give_up_on(self._frontier + 1, s - 1):
                    return
                self._frontier = s
            if len(seqs) < SEQ_PAGE:
                self._gap_at = self._gap_since = None
                return

    def _give_up_on(self, first: int, last: int) -> bool:
        """Whether to go on past the missing seqs first..last now."""
        if self.wait_gaps:
            now = self.clock()
            if self._gap_at != first:
                self._gap_at, self._gap_since = first, now
            if now - (self._gap_since or now) < self.gap_wait_s:
                return False
        self._gap_at = self._gap_since = None
        self.skipped.append((first, last))
        return True

    def poll(self) -> Iterator[Event]:
        """The events written since the last poll, up to the first gap still waited for."""
        if self._max_seq() > self._frontier:
            self._advance()
        while self._handed < self._frontier:
            page = self._page(self._handed, self._frontier)
            for ev in page:
                if ev.kind == "run.ended":
                    self.ended = True
                if self._wanted(ev.kind):
                    yield ev
            if len(page.rows) < PAGE:
                self._handed = self._frontier
            else:
                self._handed = page.last_seq

    def _wanted(self, kind: str) -> bool:
        return not self.patterns or any(fnmatch.fnmatchcase(kind, p) for p in self.patterns)

    def _page(self, after: int, upto: int) -> _Page:
        where, params = "", []
        if self.patterns:
            # plain names go through IN, which the (run, kind, seq) index serves
            names = [p for p in (*self.patterns, "run.ended") if not any(c in p for c in "*?[")]
            globs = [p for p in self.patterns if p not in names]
            terms = ([f"kind IN ({', '.join('?' * len(names))})"] if names else []) \
                + ["kind GLOB ?"] * len(globs)
            where = " AND (" + " OR ".join(terms) + ")"
            params = [*names, *globs]
        rows = self._rows(
            "SELECT run, seq, ts, kind, data FROM events WHERE run = ? AND seq > ? AND seq <= ?"
            f"{where} ORDER BY seq LIMIT ?", [self.run, after, upto, *params, PAGE])
        return _Page(rows, self._parse(rows))

    def _parse(self, rows: list[sqlite3.Row]) -> list[Event]:
        from runner.events import parse_event

        out = []
        for r in rows:
            try:
                out.append(parse_event({"run": r["run"], "seq": r["seq"], "ts": r["ts"],
                                        "kind": r["kind"], "data": json.loads(r["data"])}))
            except ValueError:  # an EventError, or data that is not JSON: left out, counted
                self.rejected += 1
        return out


@dataclass
class _Page:
    rows: list[sqlite3.Row]
    events: list[Event]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    @property
    def last_seq(self) -> int:
        return int(self.rows[-1]["seq"])


class Lines:
    """Sandbox output chunks as whole lines, per stream: a line split over two chunks, or
    with the other stream's chunk between its halves, comes out once and whole."""

    def __init__(self) -> None:
        self._partial: dict[str, str] = {}

    def add(self, stream: str, text: str) -> list[str]:
        from runner.escapes import overwrite_line, strip_escapes

        # carriage returns kept until a line is whole: a progress bar's redraw may be split
        pieces = (self._partial.pop(stream, "") + strip_escapes(text, keep_cr=True)).split("\n")
        if pieces[-1]:
            self._partial[stream] = pieces[-1]
        return [overwrite_line(p) for p in pieces[:-1]]

    def rest(self) -> list[str]:
        """The unfinished last line of each stream (the run has ended)."""
        from runner.escapes import overwrite_line

        rest, self._partial = [overwrite_line(p) for p in self._partial.values()], {}
        return [line for line in rest if line]


def resolve_run(path: Path, run: str) -> str:
    """The full id of `run` (a full id, or a prefix only one run has) in the journal at `path`."""
    from runner.journal import JournalReader

    if not path.exists():
        raise FollowError(f"no journal at {path}")
    try:
        reader = JournalReader(path)
        try:
            if reader.get_run(run) is not None:
                return run
            found = reader.runs_with_prefix(run, 6)
        finally:
            reader.close()
    except sqlite3.Error as exc:
        raise FollowError(f"cannot read the journal at {path}: {exc}") from None
    if len(found) == 1:
        return str(found[0])
    if found:
        more = ", ..." if len(found) > 5 else ""
        raise FollowError(f"{run!r} names more than one run: {', '.join(found[:5])}{more}")
    raise FollowError(f"no run {run!r} in {path} (see `mlrb runs`)")


def check_patterns(patterns: Sequence[str]) -> None:
    """Every --kind must name at least one kind of the contract (a typo is said, not silent)."""
    from runner.events import KINDS

    for p in patterns:
        if not any(fnmatch.fnmatchcase(k, p) for k in KINDS):
            raise click.BadParameter(f"{p!r} matches no event kind (see `mlrb schema`)",
                                     param_hint="--kind")


def describe(ev: Event) -> str:
    """One event as one readable line: time, seq, kind, and what it says."""
    from mlrb_tui.state import entry_for, one_line

    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.ts)) + f".{int(ev.ts * 1000) % 1000:03d}"
    entry = entry_for(ev)
    if entry is not None and entry.text != ev.kind.split(".", 1)[-1]:
        text = entry.text
    elif ev.kind == "sandbox.output":
        lines = [x for x in str(ev.data.get("text", "")).splitlines() if x.strip()]
        more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
        text = f"{ev.data.get('stream', 'stdout')}: {one_line(lines[0], 160) if lines else ''}{more}"
    else:
        text = one_line(json.dumps(ev.data, separators=(",", ":"), default=str), 200) \
            if ev.data else ""
    return f"{stamp} {ev.seq:>7} {ev.kind:<18} {text}".rstrip()


def _journal_path(db: Path | None) -> Path:
    if db is not None:
        return db
    from runner.config import ConfigError, load_config

    try:
        return load_config().db_path
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _tail(db: Path | None, run: str, patterns: Sequence[str], follow: bool,
          emit: Callable[[Event], str], end: Callable[[], str] = lambda: "") -> None:
    """Print the run's events through `emit` (each returns the text to write), then `end()`;
    following, until the run has ended."""
    path = _journal_path(db)
    tail = RunTail(path, resolve_run(path, run), patterns, wait_gaps=follow)
    tail.open()
    try:
        while True:
            # a poll reads up to what the journal held when it began: once is a snapshot
            text = "".join(emit(ev) for ev in tail.poll())
            if text:
                click.echo(text, nl=False)
            if not follow or tail.ended:
                break
            time.sleep(POLL_S)
        click.echo(end(), nl=False)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # the reader went away (`| head`): what is still buffered goes nowhere, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except sqlite3.Error as exc:
        raise FollowError(f"cannot read the journal at {path}: {exc}") from None
    finally:
        tail.close()
    for first, last in tail.skipped:
        seqs = f"seq {first}" if first == last else f"seqs {first}-{last}"
        click.echo(f"warning: {seqs} of {tail.run} are missing from {path}; left out", err=True)
    if tail.rejected:
        click.echo(f"warning: {tail.rejected} events of {tail.run} in {path} break the event "
                   "contract; left out", err=True)


_db_option = click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The journal to read (default: this host's; a recorder's database works too).")
_follow_option = click.option(
    "-f", "--follow", is_flag=True, help="Keep printing as the run goes on, until it ends.")


@click.command()
@click.argument("run")
@_follow_option
@_db_option
def logs(run: str, follow: bool, db: Path | None) -> None:
    """RUN's sandbox output as plain text (terminal escapes stripped); -f follows it live.

    RUN is a run id, or a prefix only one run has. Exits 0 once everything is printed (with -f:
    once the run has ended), 1 when there is no such run, 130 on Ctrl-C."""
    lines = Lines()

    def emit(ev: Event) -> str:
        got = lines.add(str(ev.data.get("stream", "stdout")), str(ev.data.get("text", "")))
        return "".join(f"{line}\n" for line in got)

    def end() -> str:
        return "".join(f"{line}\n" for line in lines.rest())

    _tail(db, run, ("sandbox.output",), follow, emit, end)


@click.command()
@click.argument("run")
@_follow_option
@click.option("--kind", "kinds", multiple=True,
              help="Only events of this kind; a glob such as 'tool.*' works (repeatable).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line: the event as the journal stores it.")
@_db_option
def events(run: str, follow: bool, kinds: tuple[str, ...], as_json: bool, db: Path | None) -> None:
    """RUN's events in seq order, a line each; -f follows them live.

    RUN is a run id, or a prefix only one run has. Exits 0 once everything is printed (with -f:
    once the run has ended), 1 when there is no such run, 130 on Ctrl-C."""
    check_patterns(kinds)

    def emit(ev: Event) -> str:
        return (ev.to_json() if as_json else describe(ev)) + "\n"

    _tail(db, run, kinds, follow, emit)


def register_follow(group: click.Group) -> None:
    """Add `logs` and `events` to the `mlrb` group."""
    group.add_command(logs)
    group.add_command(events)


__all__ = ["Lines", "RunTail", "check_patterns", "describe", "register_follow", "resolve_run"]
