"""The engine: a journal, a bus connection and the runs one runner owns.

It takes work from two doors: `submit()` in-process (`mlrb demo --headless`, tests) and
the bus's jobs queue (`mlrb submit`, other hosts), from which it takes a job only when it
has a free slot and the GPUs the job needs (`runner.job_queue`). It routes operator commands to
the run they name, and publishes its own state (retained, with a last will of
`offline`). `runner.daemon` wraps it in a detached process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.adoption import TURNS_DIR, RunResume, load_resume
from runner.agents.base import Agent, ScriptedAgent
from runner.assets import AssetError, asset_mounts
from runner.broker_access import private_file
from runner.campaign import CampaignDriver
from runner.config import Config, private_home
from runner.control import ControlCommand
from runner.disk_watch import DiskPolicy
from runner.events import TERMINAL_STATUSES, Event, EventFactory, RejectCounter
from runner.gpu import GpuAllocator, GpuRequestError, GpuSampler
from runner.journal import Journal, JournalReader
from runner.notify import Notifier
from runner.sandbox import Sandbox, SandboxSpec
from runner.stall_watch import Thresholds
from runner.supervisor import RunLimits, RunRequest, RunSupervisor
from tasks.api import TaskSpecError, load_task, scripted_plan

log = logging.getLogger(__name__)

AGENT_KINDS = ("scripted", "anthropic", "openai")
# the agent scaffolds a run can name: mlrb is the project's own, mlrb-paper the paper's
SCAFFOLDS = ("mlrb", "mlrb-paper")
DEFAULT_SCAFFOLD = "mlrb"
KEEP_ENDED = 200


CAMPAIGN_REQUEST_HOPS = 64  # times a request addressed to one runner goes round before it is refused


class SubmitError(ValueError):
    """A run that cannot be started as asked; the message says why."""


@dataclass(frozen=True)
class Job:
    task: str
    scale: str = "smoke"
    agent: str = "scripted"
    model: str | None = None
    limits: dict[str, float] | None = None
    approval: bool = False
    id: str = ""
    submitted_by: str = ""
    campaign: str | None = None
    slot: str | None = None
    scaffold: str = DEFAULT_SCAFFOLD
    thinking_tokens: int | None = None  # this run's Anthropic extended-thinking budget
    reasoning_effort: str | None = None  # this run's OpenAI reasoning effort

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Job:
        if not isinstance(d.get("task"), str):
            raise SubmitError("job has no task")
        limits = d.get("limits")
        if limits is not None and (not isinstance(limits, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                for v in limits.values())):
            raise SubmitError("job limits must map names to positive numbers")
        thinking = d.get("thinking_tokens")
        if thinking is not None and (isinstance(thinking, bool) or not isinstance(thinking, int)):
            raise SubmitError("job thinking_tokens must be a whole number of tokens")
        effort = d.get("reasoning_effort")
        if effort is not None and not isinstance(effort, str):
            raise SubmitError("job reasoning_effort must be a word (low, medium, high)")
        campaign, slot = d.get("campaign"), d.get("slot")
        if (campaign is None) != (slot is None) or not all(
                v is None or isinstance(v, str) for v in (campaign, slot)):
            raise SubmitError("a campaign's job names both its campaign and its slot, as words")
        return Job(task=d["task"], scale=str(d.get("scale", "smoke")), agent=str(d.get("agent", "scripted")),
                   model=d.get("model") if isinstance(d.get("model"), str) else None,
                   limits=limits, approval=bool(d.get("approval", False)), id=str(d.get("id", ""))[:80],
                   submitted_by=str(d.get("submitted_by", ""))[:120],
                   scaffold=str(d.get("scaffold") or DEFAULT_SCAFFOLD)[:40],
                   campaign=campaign[:64] if campaign else None, slot=slot[:200] if slot else None,
                   thinking_tokens=thinking, reasoning_effort=effort[:20] if effort else None)


class Engine:
    def __init__(self, cfg: Config, *, use_bus: bool = True, runner_id: str | None = None) -> None:
        self.cfg = cfg
        self.use_bus = use_bus
        # an explicit id, or the bus account's name (stable), else one from the home (below)
        self._given_id = runner_id or self._account_runner_id()
        self.runner_id = self._given_id or f"{socket.gethostname()}-{os.getpid()}"
        self._lock: Any = None  # the home's runner lock: who holds it adopts the home's runs
        self.adoption: dict[str, list[str]] = {"adopted": [], "orphans": []}
        self.journal: Journal | None = None
        self.reader: JournalReader | None = None
        self.publisher: Any = None
        self.job_taker: Any = None
        self.broker: Any = None
        self.bus_url: str | None = None
        self.broker_kind = "none"
        self.supervisors: dict[str, RunSupervisor] = {}
        self.tasks: dict[str, asyncio.Task[str]] = {}
        self.rejects = RejectCounter()
        self._slots: asyncio.Semaphore | None = None
        self._bg: list[asyncio.Task[Any]] = []
        self._backend: str = cfg.backend
        self.docker_note = ""
        self.gpu_sampler = GpuSampler()
        self.gpus = GpuAllocator()
        self.campaigns = CampaignDriver(self)
        self._bus_runs: dict[str, Any] = {}  # run -> the offer from the bus that started it
        self.notifier = Notifier(cfg.notify, self._record_notice, self._live_runs,
                                 lambda: self.runner_id)

    def _account_runner_id(self) -> str | None:
        # on an authenticating broker the runner id is the account: the ACL holds it there
        if self.use_bus and self.cfg.bus_url and self.cfg.bus.username:
            return self.cfg.bus.username
        if self.use_bus and not self.cfg.bus_url:
            from runner.embedded_broker import local_runner_name

            return local_runner_name()
        return None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self.notifier.start()  # a bad [notify] URL stops the start before anything is opened
        if self.use_bus and not self.cfg.bus_url:
            from runner.embedded_broker import MosquittoMissing, find_mosquitto

            if find_mosquitto() is None:  # before the journal opens: nothing to undo
                raise MosquittoMissing()
        private_home(self.cfg)
        self.cfg.runs_dir.mkdir(parents=True, exist_ok=True)
        self._take_home()
        private_file(self.cfg.db_path)  # before SQLite creates it: its -wal/-shm take its mode
        self.journal = Journal(self.cfg.db_path)
        self.reader = JournalReader(self.cfg.db_path)
        self._slots = asyncio.Semaphore(self.cfg.max_runs)
        await self.gpu_sampler.start()
        self.gpus.set_devices(self.gpu_sampler.devices)
        self._backend = await asyncio.to_thread(self._choose_backend)
        if self.use_bus:
            from runner.bus import RunnerEndpoint
            from runner.bus_options import configured_bus
            from runner.embedded_broker import EmbeddedBroker

            if self.cfg.bus_url:
                bus = configured_bus(self.cfg)
                self.bus_url, self.broker_kind = self.cfg.bus_url, "external"
            else:
                self.broker = EmbeddedBroker(self.cfg.broker_dir, prefix=self.cfg.prefix,
                                             runner=self.runner_id)
                self.bus_url = await self.broker.start()
                self.broker_kind = self.broker.kind
                bus = self.broker.bus_config("runner")
            reader = self.reader
            self.publisher = RunnerEndpoint(bus, self.runner_id,
                                            resend_from=lambda run, after, limit: reader.events(run, after, limit))
            self.publisher.on_link = self.notifier.link_changed
            await self.publisher.start()
            self._bg.append(asyncio.create_task(self.publisher.listen_controls(self.handle_control, self.rejects)))
            self._bg.append(asyncio.create_task(self._state_loop()))
            from runner.job_queue import JobTaker

            self.job_taker = JobTaker(bus, self.runner_id, self._on_job, self.rejects,
                                      on_state=self._record_job)
            await self.job_taker.start()
        # once the bus is up, so an adopted run's first events reach the subscribers
        await self._adopt_or_settle()
        await self._end_jobs_left()
        await self.campaigns.start()

    def _choose_backend(self) -> str:
        if self.cfg.backend != "auto":
            return self.cfg.backend
        from runner.sandbox_factory import docker_available

        ok, why = docker_available()
        if not ok:
            self.docker_note = (f"No Docker engine answered ({why}); runs use the local sandbox, "
                                "which is NOT isolated.")
            log.warning(self.docker_note)
            return "local"
        return "docker"

    def _take_home(self) -> None:
        """The first engine on a home holds its lock and its stable runner id, so it is the
        one that adopts the runs an earlier runner of this home left; another engine on the
        same home (a headless demo beside the daemon) runs apart under an id of its own."""
        lock = open(self.cfg.home / "runner.lock", "a+")  # noqa: SIM115 - held while the engine lives
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            return
        self._lock = lock
        if self._given_id is None:
            path = self.cfg.home / "runner.id"
            try:
                self.runner_id = path.read_text().strip() or ""
            except OSError:
                self.runner_id = ""
            if not self.runner_id:
                self.runner_id = f"{socket.gethostname()}-{secrets.token_hex(3)}"
                path.write_text(self.runner_id + "\n")

    async def _adopt_or_settle(self) -> None:
        """Runs this journal shows as live: this home's runner adopts its own and goes on with
        them; runs of a runner that is gone for good are ended. A sandbox no live run owns is
        stopped and reported."""
        assert self.journal is not None and self.reader is not None
        live: set[str] = set()
        for row in await asyncio.to_thread(self.reader.list_runs):
            if row["status"] in TERMINAL_STATUSES:
                continue
            run = row["run"]
            if self._lock is None or row.get("runner") != self.runner_id:
                await self._end_left(run, "the runner stopped before the run ended")
                continue
            try:
                resume = await asyncio.to_thread(load_resume, self.reader, run, row["status"],
                                                 self.cfg.runs_dir / run / TURNS_DIR)
                sup = self._adopted_supervisor(resume)
            except (ValueError, TaskSpecError, RuntimeError) as exc:
                await self._end_left(run, f"the runner stopped and cannot adopt the run: {exc}")
                continue
            live.add(run)
            self.adoption["adopted"].append(run)
            self.supervisors[run] = sup
            self.tasks[run] = asyncio.create_task(self._run(sup, resume), name=f"run-{run}")
        if self._backend == "docker" or self.cfg.backend == "auto":
            self.adoption["orphans"] = await asyncio.to_thread(self._stop_orphan_sandboxes, live)

    async def _end_left(self, run: str, reason: str) -> None:
        assert self.journal is not None
        from runner.disk_watch import WorkspaceImage

        image = WorkspaceImage(self.cfg.runs_dir / run / "workspace", 0)
        if image.mounted:  # its quota'd workspace, mounted by the runner that is gone
            with contextlib.suppress(Exception):
                await asyncio.to_thread(image.unmount)
        factory = EventFactory(run, self.journal.last_seq(run) + 1)
        await self.journal.write([factory.make("run.ended", {"status": "failed", "reason": reason})])

    def _stop_orphan_sandboxes(self, live: set[str]) -> list[str]:
        """Containers labelled with this journal whose run is not live: stop them, so none
        keeps a GPU the allocator hands to the next run."""
        from runner.sandbox_factory import stop_orphans

        stopped = stop_orphans(str(self.cfg.db_path.resolve()), live)
        for name in stopped:
            log.warning("stopped sandbox %s: no live run of this journal owns it", name)
        return stopped

    def _adopted_supervisor(self, r: RunResume) -> RunSupervisor:
        c = r.created
        job = Job(task=c.task or "", scale=c.scale or "smoke", agent=c.agent or "scripted",
                  model=c.model if c.agent != "scripted" else None, approval=r.approval,
                  id=c.job or "", submitted_by=c.submitted_by or "", campaign=c.campaign,
                  slot=c.slot, scaffold=c.scaffold or DEFAULT_SCAFFOLD,
                  thinking_tokens=c.thinking_tokens, reasoning_effort=c.reasoning_effort)
        task = load_task(job.task)
        plan = scripted_plan(task, job.scale) if job.agent == "scripted" else None
        agent = self._make_agent(job, plan)
        backend = r.sandbox.backend if r.sandbox is not None and r.sandbox.backend else self._backend
        return self._supervisor(r.run, job, task, agent, r.limits, backend)

    async def stop(self, reason: str = "runner stopped", *, keep_runs: bool = False) -> None:
        """Stop the engine. Its live runs are killed with `reason`, or with `keep_runs` left
        going in their sandboxes for the next runner of this home to adopt."""
        await self.campaigns.stop()  # first: no campaign starts a run while the others end
        if self.job_taker is not None:  # nor a job: those not taken wait at the broker
            await self.job_taker.stop()
        live = [sup for sup in self.supervisors.values() if not sup.ended]
        if keep_runs:
            await asyncio.gather(*(asyncio.wait_for(sup.detach(reason), timeout=60) for sup in live),
                                 return_exceptions=True)
        for sup in live:
            if not sup.ended:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sup.kill(reason), timeout=60)
        for t in self.tasks.values():
            t.cancel()
        for t in self._bg:
            t.cancel()
        await asyncio.gather(*self.tasks.values(), *self._bg, return_exceptions=True)
        await self.notifier.close()  # the runs' last notifications, recorded while the journal is open
        await self.gpu_sampler.stop()
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.flush(timeout=5)
            with contextlib.suppress(Exception):
                await self.publisher.stop()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.stop()
        if self.journal is not None:
            await asyncio.to_thread(self.journal.close)
        if self.reader is not None:
            self.reader.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- runs --------------------------------------------------------------------------
    def _publish(self, events: Sequence[Event]) -> None:
        if self.publisher is not None:
            self.publisher.publish(events)
        self.notifier.observe(events)

    def _live_runs(self) -> list[str]:
        return [r for r, s in self.supervisors.items() if not s.ended]

    async def _record_notice(self, run: str, data: dict[str, Any]) -> None:
        """A notification sent about `run`, as its `notify.sent` event."""
        sup = self.supervisors.get(run)
        if sup is not None:
            await sup.emit("notify.sent", data)
            return
        assert self.journal is not None
        # a run the engine no longer holds in memory: after the journal's last event of it
        ev = EventFactory(run, self.journal.last_seq(run) + 1).make("notify.sent", data)
        await self.journal.write([ev])
        self._publish([ev])

    def _make_agent(self, job: Job, plan: list[dict[str, Any]] | None) -> Agent:
        if job.agent == "scripted":
            assert plan is not None
            return ScriptedAgent(plan)
        from runner.agents import make_agent

        opts = dict(self.cfg.providers.get(job.agent) or {})
        # this run's reasoning settings win over the config file's
        if job.thinking_tokens is not None:
            opts["thinking_budget"] = job.thinking_tokens
            if job.scaffold == DEFAULT_SCAFFOLD:  # the reply keeps its room: thinking comes on top
                opts["max_tokens"] = int(opts.get("max_tokens", 4096)) + job.thinking_tokens
        if job.reasoning_effort is not None:
            opts["reasoning_effort"] = job.reasoning_effort
        return make_agent(job.agent, job.model, opts, scaffold=job.scaffold)

    def _make_sandbox(self, spec: SandboxSpec, backend: str | None = None) -> Sandbox:
        from runner.sandbox_factory import create_sandbox

        return create_sandbox(spec, backend=backend or self._backend)

    async def submit(self, job: Job) -> str:
        """Start a run (it waits for a free slot); returns its id. Raises SubmitError."""
        assert self.journal is not None and self._slots is not None, "engine not started"
        try:
            task = load_task(job.task)
            task.scale(job.scale)
        except TaskSpecError as exc:
            raise SubmitError(str(exc)) from None
        if job.agent not in AGENT_KINDS:
            raise SubmitError(f"unknown agent {job.agent!r} (use {', '.join(AGENT_KINDS)})")
        if job.scaffold not in SCAFFOLDS:
            raise SubmitError(f"unknown scaffold {job.scaffold!r} (use {', '.join(SCAFFOLDS)})")
        if job.agent == "scripted" and job.scaffold != DEFAULT_SCAFFOLD:
            raise SubmitError(f"the scripted baseline plays the {DEFAULT_SCAFFOLD} scaffold's tools; "
                              f"the {job.scaffold} scaffold is for LLM agents")
        if job.thinking_tokens is not None and job.agent != "anthropic":
            raise SubmitError("thinking_tokens (extended thinking) is for the anthropic agent")
        if job.reasoning_effort is not None and job.agent != "openai":
            raise SubmitError("reasoning_effort is for the openai agent (its reasoning models)")
        plan = None
        try:
            if job.agent == "scripted":
                plan = await asyncio.to_thread(scripted_plan, task, job.scale)
            agent = self._make_agent(job, plan)
        except (TaskSpecError, ValueError, RuntimeError) as exc:
            raise SubmitError(str(exc)) from None
        run_id = f"{task.name}-{secrets.token_hex(3)}"
        scale = task.scale(job.scale)
        problems = []  # all of what this host lacks for the run, in one refusal
        try:
            self.gpus.check(scale.gpus)
        except GpuRequestError as exc:
            problems.append(str(exc))
        try:
            await asyncio.to_thread(asset_mounts, task, job.scale, self.cfg.home, audience="scorer")
        except AssetError as exc:
            problems.append(str(exc))
        if self._backend == "docker" and (job.scale == "full" or scale.gpus):
            from runner.doctor import submit_problems

            # what would fail only at sandbox start or at scoring, refused now with its fix
            problems += await asyncio.to_thread(submit_problems, self.cfg, task, job.scale)
        if problems:
            raise SubmitError("; ".join(problems))
        limits = RunLimits(time_s=scale.time_s, steps=scale.steps, tokens=scale.tokens,
                           cost_usd=scale.cost_usd)
        for k, v in (job.limits or {}).items():
            if hasattr(limits, k):
                setattr(limits, k, v)
        sup = self._supervisor(run_id, job, task, agent, limits, self._backend)
        self.supervisors[run_id] = sup
        self.tasks[run_id] = asyncio.create_task(self._run(sup), name=f"run-{run_id}")
        return run_id

    def _supervisor(self, run_id: str, job: Job, task: Any, agent: Agent, limits: RunLimits,
                    backend: str) -> RunSupervisor:
        assert self.journal is not None
        return RunSupervisor(
            RunRequest(run=run_id, task=task, scale=job.scale, agent_kind=job.agent, model=job.model,
                       limits=limits, approval=job.approval, job=job.id or None,
                       submitted_by=job.submitted_by, campaign=job.campaign, slot=job.slot,
                       scaffold=job.scaffold, thinking_tokens=job.thinking_tokens,
                       reasoning_effort=job.reasoning_effort),
            journal=self.journal, publish=self._publish,
            make_sandbox=lambda spec: self._make_sandbox(spec, backend),
            agent=agent, workspace=self.cfg.runs_dir / run_id / "workspace",
            runner_id=self.runner_id, image=self.cfg.image, scorer_image=self.cfg.scorer_image,
            gpu_sampler=self.gpu_sampler,
            asset_home=self.cfg.home,
            alarms=Thresholds(quiet_s=self.cfg.alarms.quiet_min * 60,
                              gpu_idle_s=self.cfg.alarms.gpu_idle_min * 60,
                              llm_call_s=self.cfg.alarms.llm_call_s),
            disk=DiskPolicy(min_free_gb=self.cfg.min_free_gb,
                            quota_mode="watch" if self.cfg.workspace_quota == "watch" else "auto"))

    async def _run(self, sup: RunSupervisor, resume: RunResume | None = None) -> str:
        assert self._slots is not None
        try:
            if resume is not None:
                # an adopted run keeps the devices and the slot it had: it does not queue
                if resume.sandbox is not None:
                    sup.gpu_ids = self.gpus.claim(sup.run_id, resume.sandbox.gpu_ids)
                    return await sup.adopt(resume)
                sup.gpu_ids = await self.gpus.acquire(sup.run_id, sup.req.task.scale(sup.req.scale).gpus)
                async with self._slots:
                    return await sup.adopt(resume)
            # GPUs first, then a slot: a run waiting for a GPU must not hold a slot that a
            # CPU-only run could use
            sup.gpu_ids = await self.gpus.acquire(sup.run_id, sup.req.task.scale(sup.req.scale).gpus)
            async with self._slots:
                return await sup.run()
        finally:
            self.gpus.release(sup.run_id)
            self._forget_ended()
            if self.job_taker is not None:
                self.job_taker.notify_room()
                if sup.end_status is not None:  # ended here, not detached for the next runner
                    with contextlib.suppress(Exception):  # the journal keeps it `started`: sent at the next start
                        await self._job_ended(sup.req.job, sup.run_id, sup.end_status, sup.end_reason)

    async def _job_ended(self, job: str | None, run: str, status: str, reason: str) -> None:
        """A run that a job from the bus started has ended: say so in the job's state, so
        whoever counts that job's runs (a campaign's driver) sees it end."""
        from runner.job_queue import JobState

        assert self.reader is not None
        if not job or self.job_taker is None:
            return
        offer = self._bus_runs.pop(run, None)
        if offer is not None:  # taken in this process: its journal row may not be written yet
            await self.job_taker.ended(offer.state("ended", self.runner_id, run=run, reason=reason)
                                       .model_copy(update={"run_status": status[:20]}))
            return
        row = await asyncio.to_thread(self.reader.get_job, job)
        if row is None or row.get("runner") != self.runner_id or row.get("run") != run:
            return  # not a job this runner took from the bus
        await self.job_taker.ended(JobState(
            job=job, status="ended", runner=self.runner_id, submitter=row.get("submitter") or "",
            task=row.get("task") or "", scale=row.get("scale") or "", agent=row.get("agent") or "",
            run=run, reason=(reason or "")[:500], ts=time.time(), campaign=row.get("campaign"),
            slot=row.get("slot"), run_status=status[:20]))

    async def _end_jobs_left(self) -> None:
        """Jobs this runner started whose run ended while their state could not be sent (the
        runner stopped first, or the broker was away): send it now."""
        if self.job_taker is None:
            return
        assert self.reader is not None
        reader = self.reader
        rows = await asyncio.to_thread(reader.jobs, 10_000, "started")
        for row in rows:
            if row.get("runner") != self.runner_id or not row.get("run") or row["run"] in self.tasks:
                continue
            run = await asyncio.to_thread(reader.get_run, row["run"])
            if run is not None and run["status"] in TERMINAL_STATUSES:
                await self._job_ended(row["id"], row["run"], run["status"], run.get("reason") or "")

    def _forget_ended(self) -> None:
        """A daemon runs for weeks: keep only the latest ended runs in memory (the journal
        keeps them all)."""
        ended = [r for r, s in self.supervisors.items() if s.ended]
        for run in ended[:max(0, len(ended) - KEEP_ENDED)]:
            self.supervisors.pop(run, None)
            task = self.tasks.pop(run, None)
            if task is not None and not task.done():
                self.tasks[run] = task  # still finishing: keep it until it is done

    async def wait(self, run_ids: Sequence[str] | None = None) -> dict[str, str]:
        ids = list(run_ids) if run_ids is not None else list(self.tasks)
        results = await asyncio.gather(*(self.tasks[r] for r in ids), return_exceptions=True)
        return {r: (res if isinstance(res, str) else f"failed: {res}") for r, res in zip(ids, results, strict=True)}

    # -- the bus's doors ---------------------------------------------------------------
    async def handle_control(self, cmd: ControlCommand) -> None:
        sup = self.supervisors.get(cmd.run)
        if sup is not None:
            await sup.control(cmd)
            return
        # a run this journal holds but no supervisor owns any more: refuse, so the
        # operator is not left waiting
        assert self.reader is not None and self.journal is not None
        row = await asyncio.to_thread(self.reader.get_run, cmd.run)
        if row is None or row.get("runner") not in (self.runner_id, None):
            return
        factory = EventFactory(cmd.run, self.journal.last_seq(cmd.run) + 1)
        ev = factory.make("control.ack", {"command_id": cmd.id, "action": cmd.action, "accepted": False,
                                          "reason": f"run has ended ({row['status']})",
                                          "operator": cmd.operator})
        await self.journal.write([ev])
        self._publish([ev])

    def room_for(self, job: Job) -> str | None:
        """Why this runner cannot start `job` now (no free slot, too few free GPUs), or None.
        Raises SubmitError for a job it could never start."""
        # a job no runner of this kind could start is refused at once, full or not
        try:
            need = load_task(job.task).scale(job.scale).gpus
        except TaskSpecError as exc:
            raise SubmitError(str(exc)) from None
        try:
            self.gpus.check(need)
        except GpuRequestError as exc:
            raise SubmitError(str(exc)) from None
        if job.agent not in AGENT_KINDS:
            raise SubmitError(f"unknown agent {job.agent!r} (use {', '.join(AGENT_KINDS)})")
        live = sum(1 for s in self.supervisors.values() if not s.ended)
        if live >= self.cfg.max_runs:
            return f"all {self.cfg.max_runs} slots are taken"
        if need and self.gpus.total and (len(self.gpus.free) < need or self.gpus.waiting):
            return f"{len(self.gpus.free)} of the {need} GPUs it needs are free"
        return None

    async def _on_job(self, offer: Any) -> Any:
        """A job from the bus: started (once its run is journaled), refused, or busy."""
        from runner.job_queue import Verdict

        payload = offer.job
        if payload.get("kind") == "campaign":
            target = payload.get("runner")
            if isinstance(target, str) and target and target != self.runner_id:
                # its sender waits for the answer in that runner's journal: pass it on to it
                if offer.hops >= CAMPAIGN_REQUEST_HOPS:
                    return Verdict("refused", reason=f"runner {target} did not take it")
                return Verdict("busy", reason=f"a campaign request for runner {target}")
            return Verdict("done", reason=await self.campaigns.handle(payload))
        try:
            # who submitted it is the account the broker authenticated, not the payload's claim
            job = Job.from_dict({**payload, "submitted_by": offer.submitter})
            busy = self.room_for(job)
            if busy is not None:
                return Verdict("busy", reason=busy)
            run = await self.submit(job)
        except SubmitError as exc:
            return Verdict("refused", reason=str(exc))
        sup, task = self.supervisors[run], self.tasks[run]
        self._bus_runs[run] = offer
        created = asyncio.ensure_future(sup.created.wait())
        try:
            await asyncio.wait([created, task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            created.cancel()
        return Verdict("started", run=run)

    async def _record_job(self, state: Any) -> None:
        """What became of a job, in the journal's `jobs` table (never in `runs`)."""
        assert self.journal is not None
        now = time.time()
        old = await asyncio.to_thread(self.reader.get_job, state.job) if self.reader is not None else None
        await self.journal.put_job({"id": state.job, "submitter": state.submitter, "task": state.task,
                                    "scale": state.scale, "agent": state.agent, "status": state.status,
                                    "reason": state.reason or None, "runner": self.runner_id,
                                    "run": state.run, "updated_ts": now,
                                    "created_ts": old["created_ts"] if old and old.get("created_ts") else now,
                                    "campaign": state.campaign, "slot": state.slot,
                                    "run_status": state.run_status or None})

    def state(self) -> dict[str, Any]:
        live = [r for r, s in self.supervisors.items() if not s.ended]
        return {"state": "online", "runner": self.runner_id, "host": socket.gethostname(), "pid": os.getpid(),
                "runs": live, "max_runs": self.cfg.max_runs, "backend": self._backend,
                "broker": self.broker_kind, "ts": time.time(), "note": self.docker_note,
                "gpu": self.gpu_sampler.state, "gpus_free": self.gpus.free,
                "gpus_waiting": self.gpus.waiting, "adoption": self.adoption,
                # ended runs still in memory too: a tail lost in an outage often holds run.ended
                "seqs": {r: n for r in self.supervisors if self.journal and (n := self.journal.last_seq(r))},
                "bus": self.publisher.counts().model_dump() if self.publisher is not None else None,
                "rescued": self.job_taker.rescued[-20:] if self.job_taker is not None else []}

    async def _state_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.publisher.set_state(self.state())
            await asyncio.sleep(5)
