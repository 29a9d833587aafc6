"""Campaigns: tasks × agents × repeats at one scale, driven to the end by the runner daemon.

A campaign is a named spec (`CampaignSpec`) whose slots are every task × agent × repeat. Its
spec and state live in the journal's `campaigns` table; each run it starts names its
campaign and slot in `run.created`, so the runs table says which slot every run filled.
Nothing the driver needs is only in memory: after a restart it reads both tables and goes on.

With a bus, the driver queues each slot's run as a job on the fleet's queue, which any runner
with room takes; the job states every runner keeps at the broker say which of them are live
(queued, requeued or started) and how each ended, so at most `max_concurrent` are live across
the fleet. The driver's `jobs` table records where each slot's runs went.

A slot is done once one of its runs ended succeeded or at a limit (scored either way); a run
that failed or was killed is retried as a new run of the same slot, up to `retries` times.
`mlrb campaign run` reaches the daemon as a request on the jobs topic (`kind = "campaign"`);
the daemon answers in the campaign's row (`request`, `answer`). A request names the runner of
the host it was sent from (`runner`): another runner handed it puts it back on the queue, since
its sender reads the answer from that runner's journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runner.control import LIMIT_NAMES, ControlCommand
from runner.events import TERMINAL_STATUSES

if TYPE_CHECKING:
    from runner.engine import Engine

log = logging.getLogger(__name__)

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
AGENT_RE = r"^(scripted|(anthropic|openai):[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99})$"
DONE_STATUSES = frozenset({"succeeded", "limit"})  # ended and scored: the slot is filled
# runs the runner ended because it stopped, not because of the slot: they cost no retry
RUNNER_GONE_REASONS = frozenset({"the runner stopped before the run ended",
                                 "the runner daemon was stopped"})
MAX_ENDED = 10_000
SlotState = Literal["done", "running", "queued", "failed"]


class CampaignError(ValueError):
    """A campaign that cannot be run as asked; the message says why, in one line."""


class CampaignSpec(BaseModel):
    """What a campaign runs. Tasks are stored by name (`all` is expanded when the spec is made)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tasks: tuple[str, ...] = Field(min_length=1)
    agents: tuple[str, ...] = Field(default=("scripted",), min_length=1)
    repeats: int = Field(default=1, ge=1, le=1000)
    scale: Literal["smoke", "full"] = "smoke"
    max_concurrent: int = Field(default=1, ge=1, le=1000)
    retries: int = Field(default=1, ge=0, le=100)
    limits: dict[str, float] = Field(default_factory=dict)
    scaffold: str = Field(default="mlrb", pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    # per-run reasoning settings, each for the slots of its provider's agents
    thinking_tokens: int | None = Field(default=None, ge=1024, le=200_000)
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None

    @model_validator(mode="after")
    def _fits_the_agents(self) -> CampaignSpec:
        from runner.agents import SCAFFOLDS

        if self.scaffold not in SCAFFOLDS:
            raise ValueError(f"unknown scaffold {self.scaffold!r} (use {', '.join(SCAFFOLDS)})")
        kinds = {a.partition(":")[0] for a in self.agents}
        if self.scaffold != "mlrb" and "scripted" in kinds:
            raise ValueError(f"the scripted baseline plays the mlrb scaffold's tools; the {self.scaffold} "
                             "scaffold is for LLM agents")
        if self.thinking_tokens is not None and "anthropic" not in kinds:
            raise ValueError("thinking_tokens (extended thinking) is for anthropic agents; none is named")
        if self.reasoning_effort is not None:
            from runner.agents.openai_agent import is_reasoning_model

            openai = [a.partition(":")[2] for a in self.agents if a.startswith("openai:")]
            if not openai or not all(is_reasoning_model(m) for m in openai):
                raise ValueError("reasoning_effort is for openai reasoning models (o1, o3, o4, gpt-5); "
                                 f"the openai agents named: {', '.join(openai) or 'none'}")
        return self

    @field_validator("agents")
    @classmethod
    def _agents(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            if not re.fullmatch(AGENT_RE, a):
                raise ValueError(f"{a!r} is not scripted, anthropic:MODEL or openai:MODEL")
        if len(set(v)) != len(v):
            raise ValueError("an agent is named twice")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("a task is named twice")
        return v

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: dict[str, float]) -> dict[str, float]:
        for name, value in v.items():
            if name not in LIMIT_NAMES:
                raise ValueError(f"{name!r} is not one of {', '.join(LIMIT_NAMES)}")
            if isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number")
        return v

    def slots(self) -> list[Slot]:
        return [Slot(task, agent, r) for task in self.tasks for agent in self.agents
                for r in range(1, self.repeats + 1)]

    def canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def changes_from(self, other: CampaignSpec) -> list[str]:
        """The fields whose value differs from `other`'s."""
        mine, theirs = self.model_dump(mode="json"), other.model_dump(mode="json")
        return [k for k in mine if mine[k] != theirs.get(k)]


@dataclass(frozen=True, slots=True)
class Slot:
    task: str
    agent: str  # scripted, anthropic:MODEL or openai:MODEL
    repeat: int

    @property
    def id(self) -> str:
        return f"{self.task}/{self.agent}/{self.repeat}"

    @property
    def agent_kind(self) -> str:
        return self.agent.partition(":")[0]

    @property
    def model(self) -> str | None:
        return self.agent.partition(":")[2] or None


def _split(value: Any) -> list[str]:
    """A list field given as a list or as `a,b`."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(x).strip() for x in items if str(x).strip()]


FIELDS = tuple(CampaignSpec.model_fields)


def build_spec(fields: dict[str, Any], *, where: str = "campaign",
               task_names: Sequence[str] | None = None) -> CampaignSpec:
    """A spec from flags or a file's fields; `tasks = "all"` names every task. Raises
    CampaignError naming `where` and the key at fault."""
    for key in fields:
        if key not in FIELDS:
            raise CampaignError(f"{where}: {key}: unknown field (use {', '.join(FIELDS)})")
    data = dict(fields)
    if "tasks" in data:
        names = _split(data["tasks"]) if isinstance(data["tasks"], (str, list, tuple)) else data["tasks"]
        if names == ["all"]:
            from tasks.api import task_names as installed

            names = list(task_names if task_names is not None else installed())
        data["tasks"] = names
    if isinstance(data.get("agents"), (str, list, tuple)):
        data["agents"] = _split(data["agents"])
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise CampaignError(f"{where}: {key}: {msg}" if key else f"{where}: {msg}") from None
    check_tasks(spec, where)
    return spec


def check_tasks(spec: CampaignSpec, where: str = "campaign") -> None:
    """Every task is installed and has the scale; the scripted agent has a baseline."""
    from tasks.api import TaskSpecError, load_task

    for name in spec.tasks:
        try:
            load_task(name).scale(spec.scale)
        except TaskSpecError as exc:
            raise CampaignError(f"{where}: tasks: {exc}") from None


def load_file(path: Path) -> dict[str, Any]:
    """A campaign file's fields (TOML); CampaignError with the file's name when it is not TOML."""
    from tasks.api import read_toml

    return read_toml(path, CampaignError)


def check_name(name: str) -> str:
    if not re.fullmatch(NAME_RE, name):
        raise CampaignError(f"campaign name {name!r}: use letters, digits, '.', '_' or '-' "
                            "(at most 64)")
    return name


# -- slot states: derived from the runs table ---------------------------------------------------
@dataclass(slots=True)
class SlotView:
    slot: Slot
    runs: list[dict[str, Any]]  # the runs rows of this slot, oldest first
    state: SlotState
    failures: int  # failed or killed runs that count against the retry budget
    pending: bool = False  # queued: a job of it waits on the fleet's queue


LIVE_JOB_STATUSES = frozenset({"queued", "requeued", "started"})


def fleet_attempts(runs: Sequence[dict[str, Any]], jobs: Sequence[dict[str, Any]],
                   states: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """A campaign's attempts, as runs rows for `view_slots`: its runs in this journal, and the
    jobs it queued on the fleet (their journal rows, updated by the newer `states` the runners
    keep at the broker). A job waiting for a runner is a row with `pending` and no run."""
    from runner.job_queue import _RANK

    by_run = {r["run"]: r for r in runs}
    newest: dict[str, dict[str, Any]] = {j["id"]: dict(j) for j in jobs}
    for st in states:
        row = newest.get(st.job)
        if row is None:  # queued by this campaign, not yet in the journal (or lost from it)
            row = newest[st.job] = {"id": st.job, "created_ts": st.ts}
        elif _RANK.get(str(row.get("status")), 0) > _RANK[st.status]:
            continue
        row.update({"status": st.status, "runner": st.runner, "run": st.run, "reason": st.reason,
                    "slot": st.slot or row.get("slot"), "run_status": st.run_status})
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for j in sorted(newest.values(), key=lambda j: float(j.get("created_ts") or 0)):
        status, run, slot = j.get("status"), j.get("run"), j.get("slot")
        if status == "refused" and not j.get("runner"):
            continue  # it never reached the queue: no attempt
        base = {"job": j["id"], "slot": slot, "runner": j.get("runner"), "created_ts": j.get("created_ts")}
        local = by_run.get(run) if run else None
        if local is not None and (local["status"] in TERMINAL_STATUSES or status != "ended"):
            seen.add(str(run))
            out.append({**local, **{k: v for k, v in base.items() if k != "created_ts"}})
        elif status in ("queued", "requeued"):
            out.append({**base, "run": None, "status": "queued", "pending": True, "reason": None})
        elif status == "started":
            out.append({**base, "run": run, "status": "running", "reason": None})
        elif status == "ended":
            seen.add(run or "")
            out.append({**base, "run": run, "status": j.get("run_status") or "failed",
                        "reason": j.get("reason")})
        else:  # refused by the runner it reached
            out.append({**base, "run": None, "status": "failed",
                        "reason": f"refused by {j.get('runner')}: {j.get('reason') or ''}"})
    out.extend(r for r in runs if r["run"] not in seen)
    return sorted(out, key=lambda r: float(r.get("created_ts") or 0))


def view_slots(spec: CampaignSpec, rows: Sequence[dict[str, Any]],
               live_slots: frozenset[str] = frozenset(),
               ended: frozenset[str] = frozenset()) -> list[SlotView]:
    """Each slot's state from the campaign's runs rows.

    `live_slots` holds the slots with a run started here and not ended, journaled or not yet;
    `ended` holds runs whose task has finished (a row still live there never got its
    run.ended: it failed).
    """
    by_slot: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_slot.setdefault(str(r.get("slot")), []).append(r)
    out: list[SlotView] = []
    for slot in spec.slots():
        runs = by_slot.get(slot.id, [])
        statuses = [r["status"] if r["status"] in TERMINAL_STATUSES or r["run"] not in ended
                    else "failed" for r in runs]
        failures = sum(1 for r, st in zip(runs, statuses, strict=True)
                       if st in ("failed", "killed") and (r.get("reason") or "") not in RUNNER_GONE_REASONS)
        state: SlotState
        pending = any(r.get("pending") for r in runs)
        if slot.id in live_slots or any(st not in TERMINAL_STATUSES and not r.get("pending")
                                        for r, st in zip(runs, statuses, strict=True)):
            state = "running"
        elif pending:
            state = "queued"
        elif any(st in DONE_STATUSES for st in statuses):
            state = "done"
        elif failures > spec.retries:
            state = "failed"
        else:
            state = "queued"
        out.append(SlotView(slot, runs, state, failures, pending and state == "queued"))
    return out


def task_summary(spec: CampaignSpec, slots: Sequence[SlotView]) -> list[dict[str, Any]]:
    """Per task: slots done, running, queued, failed, runs started and the cost spent."""
    out: list[dict[str, Any]] = []
    for task in spec.tasks:
        mine = [s for s in slots if s.slot.task == task]
        counts = {k: sum(1 for s in mine if s.state == k) for k in ("done", "running", "queued", "failed")}
        runs = [r for s in mine for r in s.runs if r.get("run")]
        out.append({"task": task, **counts, "slots": len(mine), "runs": len(runs),
                    "cost_usd": round(sum(float(r.get("cost_usd") or 0) for r in runs), 6)})
    return out


def campaign_status(row: dict[str, Any], runs: Sequence[dict[str, Any]],
                    jobs: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """What `mlrb campaign status --json` prints: the campaign, its spec and its tasks
    (`jobs`: the jobs it queued on the fleet, from the driver's journal)."""
    spec = CampaignSpec.model_validate_json(row["spec"])
    slots = view_slots(spec, fleet_attempts(runs, jobs) if jobs else runs)
    tasks = task_summary(spec, slots)
    totals = {k: sum(t[k] for t in tasks) for k in ("done", "running", "queued", "failed", "slots", "runs")}
    totals["cost_usd"] = round(sum(t["cost_usd"] for t in tasks), 6)
    return {"name": row["name"], "state": row["state"], "reason": row.get("reason"),
            "spec": spec.model_dump(mode="json"), "tasks": tasks, "total": totals,
            "slots": [{"slot": s.slot.id, "state": s.state, "runs": [r["run"] for r in s.runs if r.get("run")],
                       "runners": sorted({str(r["runner"]) for r in s.runs if r.get("runner")})}
                      for s in slots]}


# -- the driver, in the daemon ------------------------------------------------------------------
class CampaignDriver:
    """Drives the engine's campaigns: at most `max_concurrent` live runs each, slots retried."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._live: dict[str, dict[str, str]] = {}  # campaign -> run id -> slot id
        # runs started here whose task has finished, newest last (a daemon runs for weeks: bounded)
        self._ended: dict[str, None] = {}
        self._stopping = False

    @property
    def reader(self) -> Any:
        assert self.engine.reader is not None
        return self.engine.reader

    async def start(self) -> None:
        """Resume every campaign the journal holds as active."""
        if self.engine.job_taker is not None:
            self.engine.job_taker.watch(self._on_job_state)
        for row in await asyncio.to_thread(self.reader.campaigns):
            if row["state"] == "active":
                self._ensure_driving(row["name"])

    async def stop(self) -> None:
        self._stopping = True
        for t in self._drivers.values():
            t.cancel()
        await asyncio.gather(*self._drivers.values(), return_exceptions=True)
        self._drivers.clear()

    def live_runs(self, name: str) -> list[str]:
        """The campaign's runs live on this runner."""
        mine = [r for r, sup in self.engine.supervisors.items()
                if sup.req.campaign == name and not sup.ended]
        return list(dict.fromkeys([*self._live.get(name, {}), *mine]))

    def _on_job_state(self, state: Any) -> None:
        if state.campaign is not None and state.campaign in self._wake:
            self._wake[state.campaign].set()

    # -- requests ---------------------------------------------------------------------------
    async def handle(self, payload: dict[str, Any]) -> str:
        """Answer one request (run or cancel); the answer is also put in the campaign's row."""
        action = payload.get("action")
        try:
            name = check_name(str(payload.get("name", "")))
        except CampaignError as exc:
            log.warning("campaign request refused: %s", exc)
            return f"refused: {exc}"
        request = str(payload.get("id", ""))[:80]
        if action == "run":
            return await self._run_request(name, payload, request)
        if action == "cancel":
            return await self.cancel(name, str(payload.get("reason", ""))[:500],
                                     str(payload.get("operator", ""))[:120], request)
        log.warning("campaign %s: unknown action %r", name, action)
        return f"refused: unknown action {action!r}"

    async def _run_request(self, name: str, payload: dict[str, Any], request: str) -> str:
        row = await asyncio.to_thread(self.reader.get_campaign, name)
        try:
            spec = CampaignSpec.model_validate(payload.get("spec"))
            await asyncio.to_thread(check_tasks, spec, name)
        except ValidationError as exc:
            err = exc.errors()[0]
            return await self._answer(name, row, request,
                                      f"refused: {'.'.join(map(str, err['loc']))}: {err['msg']}")
        except CampaignError as exc:
            return await self._answer(name, row, request, f"refused: {exc}")
        if row is not None and not payload.get("update"):
            old = CampaignSpec.model_validate_json(row["spec"])
            changed = spec.changes_from(old)
            if changed:
                return await self._answer(name, row, request, f"refused: {spec_changed(name, changed)}")
        now = time.time()
        await self.engine.journal.put_campaign({  # type: ignore[union-attr]
            "name": name, "spec": spec.canonical(), "state": "active", "reason": None,
            "created_ts": row["created_ts"] if row else now, "updated_ts": now,
            "request": request, "answer": "accepted", "runner": self.engine.runner_id})
        self._ensure_driving(name)
        self._wake.setdefault(name, asyncio.Event()).set()
        return "accepted"

    async def _answer(self, name: str, row: dict[str, Any] | None, request: str, answer: str) -> str:
        log.warning("campaign %s: %s", name, answer)
        if row is not None:  # a refusal leaves the campaign as it was, with the answer
            await self.engine.journal.put_campaign(  # type: ignore[union-attr]
                {**row, "request": request, "answer": answer[:1000], "updated_ts": time.time()})
        return answer

    async def cancel(self, name: str, reason: str, operator: str = "", request: str = "") -> str:
        """Stop starting runs and kill the live ones with `reason`."""
        row = await asyncio.to_thread(self.reader.get_campaign, name)
        if row is None:
            return f"refused: no campaign {name!r}"
        await self.engine.journal.put_campaign({  # type: ignore[union-attr]
            **row, "state": "cancelled", "reason": reason, "updated_ts": time.time(),
            "request": request, "answer": "accepted"})
        task = self._drivers.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.engine.job_taker is not None:
            await self._withdraw(name, reason or f"campaign {name} cancelled")
        for run in self.live_runs(name):
            cmd = ControlCommand.model_validate({
                "run": run, "action": "kill", "reason": reason or f"campaign {name} cancelled",
                "operator": operator or "campaign"})
            await self.engine.handle_control(cmd)
        return "accepted"

    # -- driving ----------------------------------------------------------------------------
    def _ensure_driving(self, name: str) -> None:
        if self._stopping:
            return
        task = self._drivers.get(name)
        if task is None or task.done():
            self._drivers[name] = asyncio.create_task(self._drive(name), name=f"campaign-{name}")

    async def _drive(self, name: str) -> None:
        if self.engine.job_taker is not None:
            return await self._drive_fleet(name)
        wake = self._wake.setdefault(name, asyncio.Event())
        live = self._live.setdefault(name, {})
        try:
            while True:
                wake.clear()
                self._prune(live)
                row = await asyncio.to_thread(self.reader.get_campaign, name)
                if row is None or row["state"] != "active":
                    return
                spec = CampaignSpec.model_validate_json(row["spec"])
                runs = await asyncio.to_thread(self.reader.campaign_runs, name)
                slots = view_slots(spec, runs, frozenset(live.values()), frozenset(self._ended))
                if not live and all(s.state in ("done", "failed") for s in slots):
                    failed = sum(1 for s in slots if s.state == "failed")
                    await self._finish(row, "done", f"{failed} slots failed" if failed else "")
                    return
                for s in slots:
                    if len(live) >= spec.max_concurrent:
                        break
                    if s.state == "queued":
                        try:
                            run = await self._start(name, spec, s.slot)
                        except ValueError as exc:  # SubmitError: the spec cannot run here
                            await self._finish(row, "failed", f"{s.slot.id}: {exc}")
                            return
                        live[run] = s.slot.id
                waits = [self.engine.tasks[r] for r in live if r in self.engine.tasks]
                waker = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait([*waits, waker], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waker.cancel()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("campaign %s: the driver failed; it resumes when asked again", name)

    async def _drive_fleet(self, name: str) -> None:
        """Queue the slots' runs as jobs on the fleet's queue, at most `max_concurrent` live."""
        wake = self._wake.setdefault(name, asyncio.Event())
        taker = self.engine.job_taker
        try:
            while True:
                wake.clear()
                await taker.ready()  # the retained job states arrive once subscribed
                row = await asyncio.to_thread(self.reader.get_campaign, name)
                if row is None or row["state"] != "active":
                    return
                spec = CampaignSpec.model_validate_json(row["spec"])
                jobs = await self._note_states(name, taker.states(name))
                runs = await asyncio.to_thread(self.reader.campaign_runs, name)
                attempts = fleet_attempts(runs, jobs, taker.states(name))
                slots = view_slots(spec, attempts)
                live = sum(1 for r in attempts if r["status"] not in TERMINAL_STATUSES)
                if not live and all(s.state in ("done", "failed") for s in slots):
                    failed = sum(1 for s in slots if s.state == "failed")
                    await self._finish(row, "done", f"{failed} slots failed" if failed else "")
                    return
                stalled = False
                for s in slots:
                    if live >= spec.max_concurrent:
                        break
                    if s.state == "queued" and not s.pending:
                        if not await self._queue(name, spec, s.slot):
                            stalled = True
                            break
                        live += 1
                with contextlib.suppress(TimeoutError):  # a queue that refused: try again soon
                    await asyncio.wait_for(wake.wait(), 2.0 if stalled else None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("campaign %s: the driver failed; it resumes when asked again", name)

    async def _withdraw(self, name: str, reason: str) -> None:
        """End the campaign's jobs that no runner has started: a runner handed one drops it."""
        from runner.job_queue import JobState

        taker = self.engine.job_taker
        jobs = await asyncio.to_thread(self.reader.campaign_jobs, name)
        rows = {j["id"]: j for j in jobs}
        for r in fleet_attempts([], jobs, taker.states(name)):
            if r.get("pending"):
                row = rows.get(r["job"], {})
                await taker.ended(JobState(
                    job=r["job"], status="ended", runner=self.engine.runner_id,
                    submitter=f"campaign {name}"[:120], task=row.get("task") or "",
                    scale=row.get("scale") or "", agent=row.get("agent") or "", run=None,
                    reason=reason[:500], ts=time.time(), campaign=name, slot=r.get("slot"),
                    run_status="killed"))

    async def _note_states(self, name: str, states: Sequence[Any]) -> list[dict[str, Any]]:
        """Record in this journal where the campaign's jobs went (what other runners said of
        them: this runner records its own); returns the campaign's jobs rows."""
        rows = {j["id"]: j for j in await asyncio.to_thread(self.reader.campaign_jobs, name)}
        for st in states:
            old = rows.get(st.job)
            if st.runner == self.engine.runner_id or old is None or (
                    old["status"], old["runner"], old["run"]) == (st.status, st.runner, st.run):
                continue
            new = {**old, "status": st.status, "runner": st.runner, "run": st.run,
                   "reason": st.reason or None, "run_status": st.run_status or None, "updated_ts": time.time()}
            await self.engine.journal.put_job(new)  # type: ignore[union-attr]
            rows[st.job] = new
        return list(rows.values())

    async def _queue(self, name: str, spec: CampaignSpec, slot: Slot) -> bool:
        """Put one run of `slot` on the fleet's queue; False when the broker did not take it."""
        job = {"id": f"{name}.{uuid.uuid4().hex[:12]}", "task": slot.task, "scale": spec.scale,
               "agent": slot.agent_kind, "model": slot.model, "limits": dict(spec.limits) or None,
               "campaign": name, "slot": slot.id, "scaffold": spec.scaffold,
               "thinking_tokens": spec.thinking_tokens if slot.agent_kind == "anthropic" else None,
               "reasoning_effort": spec.reasoning_effort if slot.agent_kind == "openai" else None}
        submitter = f"campaign {name}"[:120]
        now = time.time()
        row = {"id": job["id"], "submitter": submitter, "task": slot.task, "scale": spec.scale,
               "agent": slot.agent_kind, "status": "queued", "reason": None, "runner": None, "run": None,
               "created_ts": now, "updated_ts": now, "campaign": name, "slot": slot.id}
        journal = self.engine.journal
        assert journal is not None
        await journal.put_job(row)  # first: a job on the queue is always one the journal knows
        try:
            await self.engine.job_taker.offer(job, submitter)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("campaign %s: slot %s not queued: %s", name, slot.id, exc)
            await journal.put_job({**row, "status": "refused", "reason": f"not queued: {exc}"[:500],
                                   "updated_ts": time.time()})
            return False
        log.info("campaign %s: slot %s queued as job %s", name, slot.id, job["id"])
        return True

    def _prune(self, live: dict[str, str]) -> None:
        """Forget the runs whose task has finished (the engine may have dropped it already)."""
        for r in list(live):
            t = self.engine.tasks.get(r)
            if t is None or t.done():
                live.pop(r)
                self._ended[r] = None
                if len(self._ended) > MAX_ENDED:
                    del self._ended[next(iter(self._ended))]

    async def _start(self, name: str, spec: CampaignSpec, slot: Slot) -> str:
        from runner.engine import Job

        job = Job(task=slot.task, scale=spec.scale, agent=slot.agent_kind, model=slot.model,
                  limits=dict(spec.limits) or None, id=f"campaign:{name}:{slot.id}"[:80],
                  submitted_by=f"campaign {name}"[:120], campaign=name, slot=slot.id,
                  scaffold=spec.scaffold,
                  thinking_tokens=spec.thinking_tokens if slot.agent_kind == "anthropic" else None,
                  reasoning_effort=spec.reasoning_effort if slot.agent_kind == "openai" else None)
        run = await self.engine.submit(job)
        log.info("campaign %s: slot %s started as run %s", name, slot.id, run)
        return run

    async def _finish(self, row: dict[str, Any], state: str, reason: str) -> None:
        await self.engine.journal.put_campaign(  # type: ignore[union-attr]
            {**row, "state": state, "reason": reason or None, "updated_ts": time.time()})
        log.info("campaign %s %s %s", row["name"], state, reason)


def spec_changed(name: str, changed: Sequence[str]) -> str:
    return (f"campaign {name!r} exists with a different {', '.join(changed)}; "
            "pass --update to change it, or choose another name")


def request(action: str, name: str, **fields: Any) -> dict[str, Any]:
    """A campaign request as published on the jobs topic."""
    return {"kind": "campaign", "action": action, "name": name, "id": uuid.uuid4().hex, **fields}


__all__ = [
    "CampaignDriver", "CampaignError", "CampaignSpec", "Slot", "SlotView", "build_spec",
    "campaign_status", "check_name", "load_file", "request", "spec_changed", "task_summary",
    "view_slots",
]
