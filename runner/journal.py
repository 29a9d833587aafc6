"""The journal: one SQLite file (WAL) per runner or recorder, the source of truth.

Writes go through one dedicated writer thread that drains its queue into batched
transactions, so the event loop never blocks on disk and many small writes cost one commit.
The `runs` rows are upserted with sqlite-utils; the hot tables (events and the side tables)
take `executemany` directly. `(run, seq)` is the primary key of `events` and of every
side table, so re-sent events are no-ops. The `runs` table is derived from events.

Readers (`JournalReader`) open their own connections; WAL lets them read while the writer
writes, from this process or another (the console, `mlrb runs`, sqlite3, Datasette).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from runner.event_data import (
    CLOCKED_KINDS,
    AgentStepData,
    Clocked,
    GpuData,
    IntegrityFlagData,
    MetricData,
    OperatorData,
    ResourceData,
    RunCreatedData,
    RunEndedData,
    RunStartedData,
    SandboxStartedData,
    ScoreData,
    UsageData,
)
from runner.events import Event, EventError, RejectCounter, parse_event, status_after

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    task TEXT, agent TEXT, model TEXT, scale TEXT, runner TEXT,
    status TEXT NOT NULL DEFAULT 'queued',
    reason TEXT,
    created_ts REAL, started_ts REAL, ended_ts REAL, updated_ts REAL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    budget_s REAL,
    active_s REAL NOT NULL DEFAULT 0,   -- time on the clock as of active_ts
    active_ts REAL,
    metric_name TEXT, metric_value REAL, metric_step INTEGER,
    score REAL, score_metric TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    cpu_pct REAL, mem_bytes INTEGER, mem_limit INTEGER, cpu_limit REAL,
    gpu_util REAL, gpu_mem_used INTEGER, gpu_mem_total INTEGER,
    sandbox TEXT, isolated INTEGER,
    flags INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0,
    campaign TEXT, slot TEXT, scaffold TEXT,
    score_method TEXT                   -- how `score` was computed: its details.method, as JSON
);
CREATE TABLE IF NOT EXISTS campaigns (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,                    -- the campaign's fields, as JSON
    state TEXT NOT NULL DEFAULT 'active',  -- active | done | cancelled
    reason TEXT,
    created_ts REAL, updated_ts REAL,
    request TEXT,                          -- the id of the last request answered
    answer TEXT,                           -- what that request got: accepted, or why not
    runner TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    submitter TEXT,                        -- the account the broker authenticated
    task TEXT, scale TEXT, agent TEXT,     -- what the job asked for, in short
    status TEXT NOT NULL,                  -- queued | started | refused | requeued | ended
    reason TEXT,                           -- why it was refused or put back, or how its run ended
    runner TEXT, run TEXT,
    created_ts REAL, updated_ts REAL,
    campaign TEXT, slot TEXT,              -- the campaign slot the job fills, if any
    run_status TEXT                        -- its run's end status, once ended
);
CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated_ts);
CREATE TABLE IF NOT EXISTS events (
    run TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_run_ts ON events (run, ts);
CREATE INDEX IF NOT EXISTS events_run_kind ON events (run, kind, seq);
CREATE TABLE IF NOT EXISTS metrics (
    run TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL,
    step INTEGER, value REAL, ts REAL NOT NULL,
    PRIMARY KEY (run, seq, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metrics_run_name ON metrics (run, name, seq);
CREATE TABLE IF NOT EXISTS gpu_samples (
    run TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, device INTEGER,
    util REAL, mem_used INTEGER, mem_total INTEGER, power_w REAL, temp_c REAL,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS resources (
    run TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    cpu_pct REAL, mem_bytes INTEGER, mem_limit INTEGER, cpu_limit REAL,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
    run TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, model TEXT,
    input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, latency_s REAL,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS interventions (
    run TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    action TEXT NOT NULL, operator TEXT, reason TEXT, command_id TEXT, detail TEXT,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scores (
    run TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    metric TEXT, value REAL, final INTEGER, details TEXT,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS integrity (
    run TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    "check" TEXT, severity TEXT, detail TEXT,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
"""

_RUN_COLUMNS = (
    "run task agent model scale runner status reason created_ts started_ts ended_ts updated_ts "
    "last_seq budget_s active_s active_ts metric_name metric_value metric_step score score_metric "
    "input_tokens output_tokens cost_usd cpu_pct mem_bytes mem_limit cpu_limit gpu_util "
    "gpu_mem_used gpu_mem_total sandbox isolated flags steps campaign slot scaffold score_method"
).split()

log = logging.getLogger(__name__)
# columns added to `runs` after its first release: a journal written before gets them on open
_ADDED_RUN_COLUMNS = ("campaign", "slot", "scaffold", "score_method")
_CAMPAIGN_COLUMNS = ("name", "spec", "state", "reason", "created_ts", "updated_ts", "request",
                     "answer", "runner")
JOB_COLUMNS = ("id", "submitter", "task", "scale", "agent", "status", "reason", "runner", "run",
               "created_ts", "updated_ts", "campaign", "slot", "run_status")
# columns added to `jobs` after its first release
_ADDED_JOB_COLUMNS = ("campaign", "slot", "run_status")
MAX_JOB_ROWS = 10_000  # a flood of bad jobs keeps the newest rows, not all of them

_SENTINEL = object()
MAX_DEFERRED = 100_000  # events a full disk refused that are kept in memory for the next write


class JournalFullError(RuntimeError):
    """The disk under the journal is full. The refused events are kept in memory (up to
    MAX_DEFERRED) and written, in order, before anything else once space is freed."""

    def __init__(self, path: Path, cause: str, kept: int, refused: int) -> None:
        self.path, self.cause, self.kept, self.refused = path, cause, kept, refused
        lost = (f"; {refused} events could not be kept and are lost" if refused else "")
        super().__init__(f"journal {path}: the disk is full ({cause}); {kept} events wait in "
                         f"memory to be written once space is freed{lost}")


def disk_full(exc: BaseException) -> bool:
    """Whether SQLite (or the OS beneath it) refused a write for lack of space."""
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                or "database or disk is full" in str(exc))
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    path = Path(path)
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.row_factory = sqlite3.Row
    return conn


def ensure_schema(path: str | Path) -> None:
    conn = connect(path)
    try:
        have = {r["name"] for r in conn.execute("PRAGMA table_info(runs)")}
        if have:  # an existing journal: add what later versions put in `runs` first
            for col in _ADDED_RUN_COLUMNS:
                if col not in have:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {col} TEXT")
        have_jobs = {r["name"] for r in conn.execute("PRAGMA table_info(jobs)")}
        if have_jobs:
            for col in _ADDED_JOB_COLUMNS:
                if col not in have_jobs:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {col} TEXT")
        conn.executescript(SCHEMA)
        conn.execute("CREATE INDEX IF NOT EXISTS runs_campaign ON runs (campaign, slot)")
    finally:
        conn.close()


class RunFold:
    """Folds events into `runs` rows. Pure: used by the writer and by tests."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def load(self, row: dict[str, Any]) -> None:
        self.rows[row["run"]] = dict(row)

    def apply(self, ev: Event) -> dict[str, Any] | None:
        """Apply an event; return the changed row, or None for an event already applied."""
        row = self.rows.get(ev.run)
        if row is None:
            row = {c: None for c in _RUN_COLUMNS}
            row.update(run=ev.run, status="queued", last_seq=0, active_s=0.0, input_tokens=0,
                       output_tokens=0, cost_usd=0.0, flags=0, steps=0)
            self.rows[ev.run] = row
        if ev.seq <= row["last_seq"]:
            return None
        row["last_seq"] = ev.seq
        row["updated_ts"] = ev.ts
        b = ev.body
        row["status"] = status_after(row["status"], ev)
        if ev.kind in CLOCKED_KINDS and isinstance(b, Clocked) and b.elapsed_s is not None:
            row["active_s"] = b.elapsed_s
            row["active_ts"] = ev.ts
        # `type(b) is`, not isinstance(): a miss on a pydantic model is an ABC check, per event
        if type(b) is RunCreatedData:
            row["created_ts"] = ev.ts
            for key in ("task", "agent", "model", "scale", "runner", "campaign", "slot", "scaffold"):
                if getattr(b, key) is not None:
                    row[key] = getattr(b, key)
            row["budget_s"] = b.limits.get("time_s")
        elif type(b) is RunStartedData:
            row["started_ts"] = ev.ts
            row["active_ts"] = ev.ts
        elif type(b) is RunEndedData:
            row["ended_ts"] = ev.ts
            row["reason"] = b.reason[:500]
        elif type(b) is AgentStepData:
            row["steps"] = b.step or row["steps"]
        elif type(b) is MetricData:
            for name, value in b.values.items():  # the first value is the one a row shows
                row["metric_name"], row["metric_value"] = name, value
                row["metric_step"] = b.step
                break
        elif type(b) is ResourceData:
            row["cpu_pct"], row["mem_bytes"] = b.cpu_pct, b.mem_bytes
            row["mem_limit"], row["cpu_limit"] = b.mem_limit, b.cpu_limit
        elif type(b) is GpuData:
            row["gpu_util"], row["gpu_mem_used"], row["gpu_mem_total"] = (
                b.util, b.mem_used, b.mem_total)
        elif type(b) is UsageData:
            row["input_tokens"] += b.input_tokens
            row["output_tokens"] += b.output_tokens
            row["cost_usd"] += b.cost_usd or 0.0  # an unpriced call adds no cost, not a null
        elif type(b) is ScoreData:
            row["score"] = b.value
            row["score_metric"] = b.metric[:80]
            method = b.details.get("method")
            row["score_method"] = score_method_json(method) if isinstance(method, Mapping) else None
        elif type(b) is IntegrityFlagData:
            row["flags"] += 1
        elif type(b) is SandboxStartedData:
            row["sandbox"] = b.backend[:40]
            row["isolated"] = 1 if b.isolated else 0
        return row


MAX_METHOD_CHARS = 4000


def score_method_json(method: Mapping[str, Any]) -> str | None:
    """A score's method as the runs row keeps it: JSON, or None when too long to keep whole."""
    text = json.dumps(method, sort_keys=True, default=str)
    return text if len(text) <= MAX_METHOD_CHARS else None


def side_rows(ev: Event) -> list[tuple[str, dict[str, Any]]]:
    """The typed side-table rows an event contributes."""
    b = ev.body
    base = {"run": ev.run, "seq": ev.seq, "ts": ev.ts}
    if type(b) is MetricData:
        return [("metrics", {**base, "name": n[:120], "step": b.step, "value": v})
                for n, v in b.values.items()]
    if type(b) is GpuData:
        return [("gpu_samples", {**base, "device": b.device, "util": b.util,
                                 "mem_used": b.mem_used, "mem_total": b.mem_total,
                                 "power_w": b.power_w, "temp_c": b.temp_c})]
    if type(b) is ResourceData:
        return [("resources", {**base, "cpu_pct": b.cpu_pct, "mem_bytes": b.mem_bytes,
                               "mem_limit": b.mem_limit, "cpu_limit": b.cpu_limit})]
    if type(b) is UsageData:
        return [("usage", {**base, "model": b.model[:120], "input_tokens": b.input_tokens,
                           "output_tokens": b.output_tokens, "cost_usd": b.cost_usd,
                           "latency_s": b.latency_s})]
    if ev.kind.startswith("operator.") and isinstance(b, OperatorData):
        detail = b.model_dump(mode="json", exclude_unset=True,
                              exclude={"operator", "reason", "command_id"})
        return [("interventions", {**base, "action": ev.kind.split(".", 1)[1],
                                   "operator": b.operator[:120], "reason": b.reason[:1000],
                                   "command_id": b.command_id[:80],
                                   "detail": json.dumps(detail)[:4000]})]
    if type(b) is ScoreData:
        return [("scores", {**base, "metric": b.metric[:120], "value": b.value,
                            "final": 1 if b.final else 0,
                            "details": json.dumps(b.details)[:8000]})]
    if type(b) is IntegrityFlagData:
        return [("integrity", {**base, "check": b.check[:120], "severity": b.severity[:20],
                               "detail": b.detail[:2000]})]
    return []


class Journal:
    """The single writer of one SQLite journal. Thread-safe; `write` is awaitable."""

    def __init__(self, path: str | Path, max_batch: int = 20000) -> None:
        self.path = Path(path)
        ensure_schema(self.path)
        self._conn = connect(self.path)
        self._db = sqlite_utils.Database(self._conn)
        self._fold = RunFold()
        for row in self._conn.execute("SELECT * FROM runs"):
            self._fold.load(dict(row))
        self._queue: queue.Queue[Any] = queue.Queue()
        self._max_batch = max_batch
        self._closed = False
        self.written = 0
        self._deferred: list[Event] = []  # refused by a full disk; written first next time
        self.refused = 0  # events a full disk refused beyond MAX_DEFERRED: lost, and said so
        self._thread = threading.Thread(target=self._writer, name="journal-writer", daemon=True)
        self._thread.start()

    # -- writing ---------------------------------------------------------------------
    def submit(self, events: Sequence[Event]) -> concurrent.futures.Future[None]:
        """Queue events for the writer; the future resolves once they are committed."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self._closed:
            fut.set_exception(RuntimeError("journal is closed"))
            return fut
        self._queue.put((list(events), fut, ()))
        return fut

    async def put_campaign(self, row: dict[str, Any]) -> None:
        """Insert or update one `campaigns` row (by name), through the writer like events."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self._closed:
            raise RuntimeError("journal is closed")
        self._queue.put(([], fut, (("campaigns", {c: row.get(c) for c in _CAMPAIGN_COLUMNS}),)))
        await asyncio.wrap_future(fut)

    async def put_job(self, row: dict[str, Any]) -> None:
        """Insert or update one `jobs` row (by id), through the writer like events."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self._closed:
            raise RuntimeError("journal is closed")
        self._queue.put(([], fut, (("jobs", {c: row.get(c) for c in JOB_COLUMNS}),)))
        await asyncio.wrap_future(fut)

    async def write(self, events: Sequence[Event]) -> None:
        await asyncio.wrap_future(self.submit(events))

    def write_sync(self, events: Sequence[Event]) -> None:
        self.submit(events).result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_SENTINEL)
        self._thread.join()
        if self._deferred:  # a last try; what still fails is named, never dropped unseen
            try:
                self._write_batch(self._deferred)
                self._deferred = []
            except Exception as exc:
                log.error("journal %s closed with %d events unwritten: %s", self.path,
                          len(self._deferred), exc)
        self._conn.close()

    def _writer(self) -> None:
        while True:
            item = self._queue.get()
            if item is _SENTINEL:
                return
            batch = [item]
            n = len(item[0])
            stop = False
            while n < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _SENTINEL:
                    stop = True
                    break
                batch.append(more)
                n += len(more[0])
            events = [e for events, _, _ in batch for e in events]
            records = [c for _, _, rows in batch for c in rows]
            try:
                self._write_batch(self._deferred + events, records)
            except Exception as exc:  # report to every waiter; the writer lives on
                if disk_full(exc):
                    exc = self._defer(events, exc)
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                self._deferred = []
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_result(None)
            if stop:
                return

    def _defer(self, events: list[Event], exc: BaseException) -> JournalFullError:
        """Keep what a full disk refused, so that no event is dropped without a word."""
        room = max(0, MAX_DEFERRED - len(self._deferred))
        self._deferred += events[:room]
        refused = len(events) - min(room, len(events))
        self.refused += refused
        return JournalFullError(self.path, str(exc), len(self._deferred), refused)

    @property
    def deferred(self) -> int:
        """Events waiting in memory for space on the journal's disk."""
        return len(self._deferred)

    def _write_batch(self, events: list[Event],
                     records: Sequence[tuple[str, dict[str, Any]]] = ()) -> None:
        if not events and not records:
            return
        dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
        rows = [(e.run, e.seq, e.ts, e.kind, dumps(e.data)) for e in events]
        side: dict[str, list[dict[str, Any]]] = {}
        changed: dict[str, dict[str, Any]] = {}
        for e in sorted(events, key=lambda e: (e.run, e.seq)):
            row = self._fold.apply(e)
            if row is None:
                continue
            changed[e.run] = row
            for table, r in side_rows(e):
                side.setdefault(table, []).append(r)
        self._conn.execute("BEGIN")
        try:
            # the hot tables take plain executemany: sqlite-utils' per-row conversion costs
            # more than the insert itself at tens of thousands of events a second
            self._conn.executemany(
                "INSERT OR IGNORE INTO events (run, seq, ts, kind, data) VALUES (?, ?, ?, ?, ?)", rows)
            for table, trs in side.items():
                cols = list(trs[0])
                self._conn.executemany(
                    f"INSERT OR IGNORE INTO {table} ({', '.join(f'[{c}]' for c in cols)}) "
                    f"VALUES ({', '.join('?' * len(cols))})",
                    [tuple(r[c] for c in cols) for r in trs])
            if changed:
                self._db.table("runs").upsert_all(list(changed.values()), pk="run", batch_size=500)
            jobs = 0
            for table, c in records:
                names = _CAMPAIGN_COLUMNS if table == "campaigns" else JOB_COLUMNS
                jobs += table == "jobs"
                self._conn.execute(
                    f"INSERT OR REPLACE INTO {table} ({', '.join(names)}) "
                    f"VALUES ({', '.join('?' * len(names))})", [c[k] for k in names])
            if jobs:
                self._conn.execute(
                    "DELETE FROM jobs WHERE updated_ts < (SELECT updated_ts FROM jobs "
                    "ORDER BY updated_ts DESC LIMIT 1 OFFSET ?)", [MAX_JOB_ROWS - 1])
            self._conn.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some errors (a full disk among them)
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            # reload the fold from disk so it matches what was actually committed
            self._fold = RunFold()
            for row in self._conn.execute("SELECT * FROM runs"):
                self._fold.load(dict(row))
            raise
        self.written += len(events)

    # -- the owner's reads (same process) --------------------------------------------
    def last_seq(self, run: str) -> int:
        row = self._fold.rows.get(run)
        return int(row["last_seq"]) if row else 0


class JournalReader:
    """Read-side queries over a journal file; every query pages, nothing loads a whole run.

    Every event read is validated like one from the bus: a row that breaks the contract (a
    file edited by hand, or written by another version) is left out and counted in `rejects`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rejects = RejectCounter()
        if not self.path.exists():
            ensure_schema(self.path)
        self._conn = connect(self.path, readonly=True)
        self._lock = threading.Lock()
        self._has_name_index = bool(self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'metrics_run_name'"
        ).fetchone())

    def close(self) -> None:
        self._conn.close()

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def _events_of(self, rows: Iterable[sqlite3.Row]) -> list[Event]:
        out: list[Event] = []
        for row in rows:
            try:
                out.append(parse_event({"run": row["run"], "seq": row["seq"], "ts": row["ts"],
                                        "kind": row["kind"], "data": json.loads(row["data"])}))
            except ValueError as exc:  # EventError, or data that is not JSON
                reason = exc.reason if isinstance(exc, EventError) else "bad_json"
                self.rejects.add(reason, f"{row['run']}#{row['seq']}: {exc}")
        return out

    def list_runs(self, status: str | None = None) -> list[dict[str, Any]]:
        if status:
            rows = self._all("SELECT * FROM runs WHERE status = ? ORDER BY created_ts", [status])
        else:
            rows = self._all("SELECT * FROM runs ORDER BY created_ts")
        return [dict(r) for r in rows]

    def get_run(self, run: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM runs WHERE run = ?", [run])
        return dict(rows[0]) if rows else None

    def find_run(self, prefix: str) -> dict[str, Any] | None:
        """A run by its full id or an unambiguous prefix."""
        exact = self.get_run(prefix)
        if exact:
            return exact
        found = self.runs_with_prefix(prefix, 2)
        return self.get_run(found[0]) if len(found) == 1 else None

    def runs_with_prefix(self, prefix: str, limit: int = 6) -> list[str]:
        """The ids of the runs whose id starts with `prefix` (every task name has a `_`, a
        LIKE wildcard, so the prefix is matched literally)."""
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._all("SELECT run FROM runs WHERE run LIKE ? ESCAPE '\\' ORDER BY run LIMIT ?",
                         [like, limit])
        return [str(r["run"]) for r in rows]

    def events(self, run: str, after_seq: int = 0, limit: int = 1000,
               kinds: Sequence[str] | None = None) -> list[Event]:
        if kinds:
            marks = ",".join("?" * len(kinds))
            rows = self._all(
                f"SELECT * FROM events WHERE run = ? AND seq > ? AND kind IN ({marks}) "
                "ORDER BY seq LIMIT ?", [run, after_seq, *kinds, limit])
        else:
            rows = self._all("SELECT * FROM events WHERE run = ? AND seq > ? ORDER BY seq LIMIT ?",
                             [run, after_seq, limit])
        return self._events_of(rows)

    def all_events(self, run: str, page: int = 5000) -> Iterator[Event]:
        """Every event of `run` in seq order, read `page` at a time (never the whole run)."""
        after = 0
        while batch := self.events(run, after, page):
            yield from batch
            after = batch[-1].seq

    def events_before(self, run: str, before_seq: int, limit: int = 1000,
                      kinds: Sequence[str] | None = None) -> list[Event]:
        """The `limit` events just before `before_seq`, oldest first."""
        if kinds:
            marks = ",".join("?" * len(kinds))
            rows = self._all(
                f"SELECT * FROM events WHERE run = ? AND seq < ? AND kind IN ({marks}) "
                "ORDER BY seq DESC LIMIT ?", [run, before_seq, *kinds, limit])
        else:
            rows = self._all(
                "SELECT * FROM events WHERE run = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                [run, before_seq, limit])
        return self._events_of(reversed(rows))

    def max_seq(self, run: str) -> int:
        rows = self._all("SELECT MAX(seq) AS m FROM events WHERE run = ?", [run])
        return int(rows[0]["m"] or 0)

    def seq_at(self, run: str, ts: float) -> int:
        """The last event at or before `ts` in time order (0 before the first event).

        An index seek on (run, ts): `MAX(seq) ... ts <= ?` would read every event up to `ts`.
        """
        rows = self._all("SELECT seq FROM events WHERE run = ? AND ts <= ? "
                         "ORDER BY ts DESC, seq DESC LIMIT 1", [run, ts])
        return int(rows[0]["seq"]) if rows else 0

    def ts_range(self, run: str) -> tuple[float, float] | None:
        rows = self._all(
            "SELECT (SELECT ts FROM events WHERE run = ? ORDER BY seq LIMIT 1) AS a, "
            "(SELECT ts FROM events WHERE run = ? ORDER BY seq DESC LIMIT 1) AS b", [run, run])
        a, b = rows[0]["a"], rows[0]["b"]
        return None if a is None else (float(a), float(b))

    def next_seq_of(self, run: str, after_seq: int, kinds: Sequence[str]) -> int | None:
        """The next seq after `after_seq` whose kind is in `kinds` (jump to next error, …)."""
        marks = ",".join("?" * len(kinds))
        rows = self._all(
            f"SELECT MIN(seq) AS m FROM events WHERE run = ? AND seq > ? AND kind IN ({marks})",
            [run, after_seq, *kinds])
        m = rows[0]["m"]
        return None if m is None else int(m)

    def _edge_event(self, run: str, kind: str, before_seq: int, last: bool) -> Event | None:
        # MAX/MIN in a subquery keeps the (run, kind, seq) index: with `ORDER BY seq LIMIT 1`
        # the planner walks the primary key instead and reads every event of other kinds
        agg = "MAX" if last else "MIN"
        rows = self._all(
            f"SELECT * FROM events WHERE run = ? AND seq = (SELECT {agg}(seq) FROM events "
            "WHERE run = ? AND kind = ? AND seq < ?)", [run, run, kind, before_seq])
        found = self._events_of(rows)
        return found[0] if found else None

    def latest_events(self, run: str, kinds: Sequence[str], before_seq: int) -> list[Event]:
        """The last event of each of `kinds` before `before_seq`, oldest first (one index
        seek per kind, whatever the run's length)."""
        found = (self._edge_event(run, k, before_seq, last=True) for k in dict.fromkeys(kinds))
        return sorted((e for e in found if e is not None), key=lambda e: e.seq)

    def first_events(self, run: str, kinds: Sequence[str], before_seq: int) -> list[Event]:
        """The first event of each of `kinds` before `before_seq`, oldest first."""
        found = (self._edge_event(run, k, before_seq, last=False) for k in dict.fromkeys(kinds))
        return sorted((e for e in found if e is not None), key=lambda e: e.seq)

    def count_kind(self, run: str, kind: str, before_seq: int) -> int:
        """How many events of `kind` come before `before_seq` (a covering-index count)."""
        rows = self._all("SELECT COUNT(*) AS n FROM events WHERE run = ? AND kind = ? AND seq < ?",
                         [run, kind, before_seq])
        return int(rows[0]["n"])

    def usage_totals(self, run: str, before_seq: int) -> dict[str, float]:
        """Tokens and cost summed over the usage rows before `before_seq`."""
        rows = self._all(
            "SELECT COALESCE(SUM(input_tokens), 0) AS input_tokens, "
            "COALESCE(SUM(output_tokens), 0) AS output_tokens, "
            "COALESCE(SUM(cost_usd), 0.0) AS cost_usd FROM usage WHERE run = ? AND seq < ?",
            [run, before_seq])
        return dict(rows[0])

    def metric_tails(self, run: str, before_seq: int, points: int, max_names: int = 16,
                     scan_names: int = 1024) -> list[dict[str, Any]]:
        """The last `points` metric rows of each series before `before_seq`, series by series
        in the order they first appeared (the first `max_names` of them), oldest first.

        Names come from a skip-scan of the (run, name, seq) index, so a run that logged
        millions of points of a few series costs a few index seeks per series.
        """
        if not self._has_name_index:  # a journal from before the index: the latest rows only
            rows = self._all("SELECT * FROM metrics WHERE run = ? AND seq < ? "
                             "ORDER BY seq DESC LIMIT ?", [run, before_seq, points])
            return [dict(r) for r in reversed(rows)]
        first: list[tuple[int, str]] = []
        name: str | None = None
        for _ in range(scan_names):
            if name is None:
                rows = self._all("SELECT MIN(name) AS n FROM metrics WHERE run = ?", [run])
            else:
                rows = self._all("SELECT MIN(name) AS n FROM metrics WHERE run = ? AND name > ?",
                                 [run, name])
            if rows[0]["n"] is None:
                break
            name = str(rows[0]["n"])
            seq = self._all("SELECT MIN(seq) AS s FROM metrics WHERE run = ? AND name = ?",
                            [run, name])[0]["s"]
            if seq is not None and seq < before_seq:
                first.append((int(seq), name))
        out: list[dict[str, Any]] = []
        for _, name in sorted(first)[:max_names]:
            rows = self._all("SELECT * FROM metrics WHERE run = ? AND name = ? AND seq < ? "
                             "ORDER BY seq DESC LIMIT ?", [run, name, before_seq, points])
            out += [dict(r) for r in reversed(rows)]
        return out

    def metrics(self, run: str, name: str | None = None, after_seq: int = 0,
                limit: int = 100000) -> list[dict[str, Any]]:
        if name:
            rows = self._all("SELECT * FROM metrics WHERE run = ? AND name = ? AND seq > ? "
                             "ORDER BY seq LIMIT ?", [run, name, after_seq, limit])
        else:
            rows = self._all("SELECT * FROM metrics WHERE run = ? AND seq > ? ORDER BY seq LIMIT ?",
                             [run, after_seq, limit])
        return [dict(r) for r in rows]

    def interventions(self, run: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._all(
            "SELECT * FROM interventions WHERE run = ? ORDER BY seq", [run])]

    def campaigns(self) -> list[dict[str, Any]]:
        if not self._has_campaigns():
            return []
        return [dict(r) for r in self._all("SELECT * FROM campaigns ORDER BY created_ts")]

    def get_campaign(self, name: str) -> dict[str, Any] | None:
        if not self._has_campaigns():
            return None
        rows = self._all("SELECT * FROM campaigns WHERE name = ?", [name])
        return dict(rows[0]) if rows else None

    def campaign_runs(self, name: str) -> list[dict[str, Any]]:
        """The runs of one campaign, oldest first."""
        if "campaign" not in {r["name"] for r in self._all("PRAGMA table_info(runs)")}:
            return []  # a journal from before campaigns, not opened by a writer since
        rows = self._all("SELECT * FROM runs WHERE campaign = ? ORDER BY created_ts", [name])
        return [dict(r) for r in rows]

    def jobs(self, limit: int = 200, status: str | None = None) -> list[dict[str, Any]]:
        """The newest `jobs` rows first: what became of each job this runner was handed."""
        if not self._has_table("jobs"):
            return []
        if status:
            rows = self._all("SELECT * FROM jobs WHERE status = ? ORDER BY updated_ts DESC LIMIT ?",
                             [status, limit])
        else:
            rows = self._all("SELECT * FROM jobs ORDER BY updated_ts DESC LIMIT ?", [limit])
        return [dict(r) for r in rows]

    def campaign_jobs(self, name: str) -> list[dict[str, Any]]:
        """The jobs one campaign queued on the fleet, oldest first."""
        if not self._has_table("jobs") or "campaign" not in {
                r["name"] for r in self._all("PRAGMA table_info(jobs)")}:
            return []
        rows = self._all("SELECT * FROM jobs WHERE campaign = ? ORDER BY created_ts", [name])
        return [dict(r) for r in rows]

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        if not self._has_table("jobs"):
            return None
        rows = self._all("SELECT * FROM jobs WHERE id = ?", [job_id])
        return dict(rows[0]) if rows else None

    def _has_table(self, name: str) -> bool:
        return bool(self._all("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]))

    def _has_campaigns(self) -> bool:
        # a reader opened on a journal a writer has not migrated yet (read-only) sees none
        return bool(self._all("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'campaigns'"))

    def scores(self, run: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._all("SELECT * FROM scores WHERE run = ? ORDER BY seq", [run])]
