"""RunSupervisor: owns one run from creation to its end.

It prepares the workspace, starts the sandbox, drives the agent turn by turn (the LLM call
on the host, each tool call in the sandbox), follows the sandbox's resources and liveness,
and ends the run with a status and a reason. Its parts do the rest: `SandboxOutput` turns
output and metrics into events, `Budget` keeps the clock and the limits, `Pause` and
`Approvals` are where operators stop the agent, `ControlDispatch` applies their commands,
`Scorer` scores the submission, and `integrity_flags` checks the finished run. Every fact
becomes an event, written to the journal first and published on the bus after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.adoption import TURNS_DIR, CallState, RunResume
from runner.agents.base import Agent, AgentContext, AgentTurn, Observation, ToolCall, ToolResult
from runner.approvals import Approvals
from runner.assets import AssetError, asset_env, asset_mounts, asset_scratch
from runner.budget import Budget, LimitCrossing, RunClock, RunLimits
from runner.config import mlrb_home
from runner.control import ControlCommand
from runner.control_dispatch import ControlDispatch
from runner.disk_watch import DiskPolicy, DiskWatch
from runner.egress_proxy import EgressProxy, NetRequest
from runner.escapes import strip_escapes
from runner.event_data import UsageData
from runner.events import Event, EventFactory
from runner.gpu import GpuSample, GpuSampler, watch_for_sandbox
from runner.integrity_check import integrity_flags
from runner.journal import Journal, JournalFullError
from runner.paper_tools import SCAFFOLD as PAPER_SCAFFOLD
from runner.paper_tools import PaperToolBox
from runner.pause import Level, Pause
from runner.sandbox import WORKSPACE, Sandbox, SandboxError, SandboxLimits, SandboxSpec
from runner.sandbox_output import SandboxOutput
from runner.scoring import Scorer
from runner.stall_watch import StallWatch, Thresholds
from runner.telemetry import TelemetryWindow
from runner.tools import SubmitArgs, ToolBox, job_id_for
from tasks.api import TaskSpec, prepare_workspace

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Event]], None]
SandboxFactory = Callable[[SandboxSpec], Sandbox]

SAMPLE_EVERY_S = 2.0
WATCH_EVERY_S = 1.0
MAX_CONSECUTIVE_AGENT_FAILURES = 5
MAX_MESSAGE = 20_000
MAX_RESULT_TEXT = 200_000  # a tool result as journaled, and so as the agent is shown it
MAX_TURN_EVENT = 64 * 1024  # an agent.turn larger than this keeps its calls in a file beside


@dataclass
class RunRequest:
    run: str
    task: TaskSpec
    scale: str
    agent_kind: str
    model: str | None = None
    limits: RunLimits | None = None
    approval: bool = False
    job: str | None = None
    submitted_by: str = ""
    campaign: str | None = None
    slot: str | None = None
    scaffold: str | None = None
    thinking_tokens: int | None = None  # Anthropic extended thinking, this run's budget
    reasoning_effort: str | None = None  # OpenAI reasoning models, this run's effort


class RunSupervisor:
    def __init__(
        self,
        request: RunRequest,
        *,
        journal: Journal,
        publish: Publish | None,
        make_sandbox: SandboxFactory,
        agent: Agent,
        workspace: Path,
        runner_id: str,
        image: str = "mlrb-sandbox:latest",
        scorer_image: str | None = None,
        score_sandbox: SandboxFactory | None = None,
        gpu_sampler: GpuSampler | None = None,
        alarms: Thresholds | None = None,
        disk: DiskPolicy | None = None,
        asset_home: Path | None = None,
    ) -> None:
        self.req = request
        self.asset_home = asset_home or mlrb_home()  # where `mlrb assets` staged the task's assets
        self.journal = journal
        self._publish = publish
        self._make_sandbox = make_sandbox
        self.agent = agent
        self.workspace = workspace
        self.runner_id = runner_id
        self.image = image
        self.gpu_sampler = gpu_sampler
        self.gpu_ids: tuple[int, ...] = ()  # NVML indices the engine's allocator assigned
        self.telemetry = TelemetryWindow()  # recent resource/gpu samples; older ones are in SQLite
        self.status = "queued"
        self.sandbox: Sandbox | None = None
        self.toolbox: ToolBox | None = None
        self.proxy: EgressProxy | None = None  # an allowlist run's only way out
        self._net_task: asyncio.Task[None] | None = None
        self._factory = EventFactory(self.run_id, journal.last_seq(self.run_id) + 1)
        self._emit_lock = asyncio.Lock()
        self._bg: list[asyncio.Task[Any]] = []  # work spawned along the way, awaited at the end

        scale = request.task.scale(request.scale)
        self.budget = Budget(request.limits or RunLimits(
            time_s=scale.time_s, steps=scale.steps, tokens=scale.tokens, cost_usd=scale.cost_usd))
        self.output = SandboxOutput(workspace, self.emit, self._spawn)
        self.pause = Pause(self.budget.clock)
        self.approvals = Approvals(request.approval)
        self.controls = ControlDispatch(self)
        # scoring runs in its own image (the evaluation toolchain); the sandbox's by default
        self.scorer = Scorer(self.run_id, request.task, request.scale, workspace,
                             scorer_image or image,
                             score_sandbox or make_sandbox, self.budget.clock, self.emit,
                             asset_home=self.asset_home)
        self.stalls = StallWatch(alarms)
        self.disk = DiskWatch(workspace, journal.path.parent, scale.disk_bytes, disk)
        self._messages: list[str] = []  # from operators, for the agent's next turn
        self._notices: list[str] = []  # from the runner (limit warnings), likewise

        self._loop_task: asyncio.Task[None] | None = None
        self._followers: list[asyncio.Task[None]] = []
        self.turns_dir = workspace.parent / TURNS_DIR
        self._job_offsets: dict[str, int] = {}  # an adopted run's: how far each job's output is journaled
        self.adopted = False
        self.detached = False
        self._ending = False
        self._ended = asyncio.Event()
        self.created = asyncio.Event()  # run.created is journaled: the job that asked for it is taken
        self.end_status: str | None = None
        self.end_reason = ""

    @property
    def run_id(self) -> str:
        return self.req.run

    @property
    def limits(self) -> RunLimits:
        return self.budget.limits

    @property
    def clock(self) -> RunClock:
        return self.budget.clock

    # -- events ----------------------------------------------------------------------
    async def emit(self, kind: str, data: dict[str, Any] | None = None) -> Event:
        try:
            async with self._emit_lock:
                ev = self._factory.make(kind, data or {})
                await self.journal.write([ev])
        except JournalFullError as exc:  # the journal keeps the event; the run must stop
            why = self.disk.journal_full(exc)
            if why is not None and not self._ending:
                self._spawn(self.hold(why))
            self._observe(ev)
            return ev  # published once written: subscribers repair the gap from the journal
        self._observe(ev)
        if self._publish is not None:
            self._publish([ev])
        return ev

    def _observe(self, ev: Event) -> None:
        self.stalls.saw_event(ev.kind)
        if ev.kind in ("resource", "gpu"):
            self.telemetry.add(ev.kind, ev.data, ev.ts)
        elif isinstance(ev.body, UsageData):
            self.budget.count_usage(ev.body)

    async def _agent_emit(self, kind: str, data: dict[str, Any]) -> None:
        if kind not in ("agent.error", "agent.message", "agent.delta", "usage"):
            raise ValueError(f"an agent may not emit {kind}")
        if "text" in data and isinstance(data["text"], str):
            data = {**data, "text": strip_escapes(data["text"])[:64_000]}
        await self.emit(kind, data)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.append(task)
        task.add_done_callback(lambda t: self._bg.remove(t) if t in self._bg else None)

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> str:
        """Run to the end; returns the final status. Never raises for a run's failure."""
        try:
            await self._run()
        except asyncio.CancelledError:
            if not self._ending:
                await self._finish("failed", "runner stopped")
            raise
        except SandboxError as exc:  # e.g. the container died under a running command
            if not self._ending:
                why = str(exc)
                await self._finish("failed", why if why.startswith("sandbox") else f"sandbox: {why}")
        except Exception as exc:  # the run fails; the runner lives on
            log.exception("run %s failed", self.run_id)
            await self._finish("failed", f"{exc.__class__.__name__}: {exc}")
        await self._ended.wait()
        return "detached" if self.detached else (self.end_status or "failed")

    @property
    def _labels(self) -> tuple[tuple[str, str], ...]:
        return (("mlrb.runner", self.runner_id), ("mlrb.journal", str(Path(self.journal.path).resolve())))

    def _spec(self, mounts: tuple[tuple[Path, str], ...] = ()) -> SandboxSpec:
        task, scale = self.req.task, self.req.task.scale(self.req.scale)
        proxy = self._proxy_for(scale.network, scale.allow_hosts)
        return SandboxSpec(
            run=self.run_id, workspace=self.workspace, image=self.image,
            limits=SandboxLimits(cpus=scale.cpus, memory_bytes=int(scale.memory_gb * 1024**3),
                                 gpus=scale.gpus, gpu_ids=tuple(str(i) for i in self.gpu_ids)),
            env=(("MLRB_RUN", self.run_id), ("MLRB_TASK", task.name), ("MLRB_SCALE", self.req.scale),
                 *asset_env(mounts), *(proxy.env if proxy is not None else ())),
            readonly_mounts=mounts, scratch_dirs=asset_scratch(mounts),
            labels=self._labels,
            docker_network=proxy.network if proxy is not None else None,
        )

    def _proxy_for(self, network: str, hosts: tuple[str, ...]) -> EgressProxy | None:
        if network != "allowlist":
            return None
        if self.proxy is None:
            self.proxy = EgressProxy(self.run_id, hosts, labels=self._labels)
        return self.proxy

    async def _start_proxy(self, sb: Sandbox) -> None:
        """An allowlist run's proxy, up before its sandbox; the local sandbox refuses such a
        run when it starts, so no proxy is made for it."""
        if self.proxy is None or sb.backend != "docker":
            return
        await self.proxy.start()
        self._net_task = asyncio.create_task(self.proxy.follow(self._on_net_request),
                                             name=f"{self.run_id}-net")

    async def _on_net_request(self, req: NetRequest) -> None:
        await self.emit("net.request", req.as_data())

    async def _stop_proxy(self) -> None:
        """Remove the proxy, then let its log's last lines become events."""
        if self.proxy is None:
            return
        with contextlib.suppress(Exception):
            await self.proxy.stop()
        if self._net_task is not None:
            await asyncio.wait([self._net_task], timeout=10)
            if not self._net_task.done():
                self._net_task.cancel()

    async def _run(self, created: bool = False) -> None:
        task = self.req.task
        scale = task.scale(self.req.scale)
        if not created:
            await self._emit_created()
        try:  # before anything is made: a missing staged asset fails the run at once
            mounts = await asyncio.to_thread(asset_mounts, task, self.req.scale, self.asset_home)
        except AssetError as exc:
            await self._finish("failed", str(exc))
            return
        if not await self.disk.prepare(self):  # host below its floor, then killed
            return
        await asyncio.to_thread(prepare_workspace, task, self.req.scale, self.workspace)
        spec = self._spec(mounts)
        try:
            self.sandbox = self._make_sandbox(spec)
            await self._start_proxy(self.sandbox)
            await self.sandbox.start()
        except SandboxError as exc:
            await self._finish("failed", f"sandbox: {exc}")
            return
        sb = self.sandbox
        await self.emit("sandbox.started", {
            "backend": sb.backend, "id": sb.id, "image": self.image if sb.isolated else None,
            "isolated": sb.isolated, "limits": {"cpus": scale.cpus, "memory_gb": scale.memory_gb,
                                                "gpus": scale.gpus},
            "gpu_ids": list(self.gpu_ids)})
        if not sb.isolated:
            await self.emit("run.warning", {
                "code": "not_isolated",
                "message": "local sandbox: no Docker engine answered, so the agent's commands "
                           "run on this host without isolation"})
        await self._watch_gpus(scale.gpus)
        self.toolbox = self._toolbox(sb)
        self.clock.start()
        self.status = "running"
        await self.emit("run.started", {"elapsed_s": 0.0})
        await self._go(None)

    async def _go(self, resume: RunResume | None) -> None:
        """Follow the sandbox and drive the agent, until the run ends."""
        self._followers = [
            asyncio.create_task(self.output.follow_metrics(), name=f"{self.run_id}-metrics"),
            asyncio.create_task(self._sample(), name=f"{self.run_id}-sample"),
            asyncio.create_task(self._watch(), name=f"{self.run_id}-watch"),
            asyncio.create_task(self.output.flush_every(), name=f"{self.run_id}-flush"),
            asyncio.create_task(self.disk.follow(self), name=f"{self.run_id}-disk"),
        ]
        if self.stalls.thresholds.any:
            self._followers.append(asyncio.create_task(self._watch_stalls(),
                                                       name=f"{self.run_id}-stalls"))
        self._loop_task = asyncio.create_task(self._agent_loop(resume), name=f"{self.run_id}-agent")
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task

    def _toolbox(self, sb: Sandbox, notes: list[str] | None = None) -> ToolBox:
        """The tools of the run's scaffold, in its sandbox."""
        kw: dict[str, Any] = {"on_output": self.output.add, "on_offset": self.output.job_offset,
                              "notes": notes or []}
        if self.req.scaffold == PAPER_SCAFFOLD:
            return PaperToolBox(sb, internet=self.network_policy != "none", **kw)
        return ToolBox(sb, **kw)

    @property
    def network_policy(self) -> str:
        """The task's network policy at the run's scale: "none" (the default) or "allowlist"."""
        return str(self.req.task.scale(self.req.scale).network)

    async def _emit_created(self) -> None:
        task = self.req.task
        await self.emit("run.created", {
            "task": task.name, "agent": self.req.agent_kind, "model": self.agent.model,
            "scale": self.req.scale, "limits": self.limits.as_dict(), "runner": self.runner_id,
            "job": self.req.job, "approval": self.approvals.on, "submitted_by": self.req.submitted_by,
            "metric": task.metric,
            **{k: v for k, v in (("campaign", self.req.campaign), ("slot", self.req.slot),
                                 ("scaffold", self.req.scaffold),
                                 ("thinking_tokens", self.req.thinking_tokens),
                                 ("reasoning_effort", self.req.reasoning_effort)) if v is not None},
        })
        self.created.set()

    # -- adoption: going on with a run an earlier runner left ------------------------------
    async def adopt(self, resume: RunResume) -> str:
        """Take the run over from the journal and its sandbox, and run it to its end."""
        self.adopted = True
        try:
            await self._adopt(resume)
        except asyncio.CancelledError:
            if not self._ending:
                await self._finish("failed", "runner stopped")
            raise
        except SandboxError as exc:
            if not self._ending:
                await self._finish("failed", f"sandbox: {exc}")
        except Exception as exc:  # the run fails; the runner lives on
            log.exception("adopting run %s failed", self.run_id)
            if not self._ending:
                await self._finish("failed", f"cannot adopt the run: {exc.__class__.__name__}: {exc}")
        await self._ended.wait()
        return "detached" if self.detached else (self.end_status or "failed")

    async def _adopt(self, r: RunResume) -> None:
        self.budget.restore(r.limits, steps=r.last.step if r.last is not None else 0,
                            tokens=r.tokens, cost=r.cost, warned=r.warned)
        self.approvals.on = r.approval
        self._messages = [strip_escapes(m)[:MAX_MESSAGE] for m in r.pending_messages()]
        self._notices = list(r.notices_after)
        if r.sandbox is None:  # it never had a sandbox: start it as a new run would
            await self.emit("run.adopted", {"runner": self.runner_id, "elapsed_s": 0.0})
            await self._run(created=True)
            return
        self.disk.readopt()  # a quota'd workspace stays mounted across the runner's stop
        scale = self.req.task.scale(self.req.scale)
        self.gpu_ids = tuple(r.sandbox.gpu_ids) or self.gpu_ids
        try:
            mounts = await asyncio.to_thread(asset_mounts, self.req.task, self.req.scale, self.asset_home)
        except AssetError as exc:
            await self._finish("failed", str(exc))
            return
        sb = self._make_sandbox(self._spec(mounts))
        try:
            await sb.adopt()
        except SandboxError as exc:
            await self._finish("failed", f"the run's sandbox is gone: {exc}")
            return
        self.sandbox = sb
        if self.proxy is not None:
            try:
                await self.proxy.adopt()
            except SandboxError as exc:
                await self._finish("failed", f"the run's egress proxy is gone: {exc}")
                return
            self._net_task = asyncio.create_task(
                self.proxy.follow(self._on_net_request, since=r.last_ts), name=f"{self.run_id}-net")
        elapsed, down, counted = r.elapsed_now()
        self.clock.used = elapsed
        self.output.resume(r.metric_step, r.metrics_offset)
        self._job_offsets = dict(r.job_offsets)
        self.toolbox = self._toolbox(sb, notes=list(r.notes))
        if r.submitted is not None:
            self.toolbox.submission = SubmitArgs(path=r.submitted[0] or ".", summary=r.submitted[1])
        last = r.last
        running = [c.call.id for c in (last.calls if last else []) if c.called and c.result is None]
        await self.emit("run.adopted", {"runner": self.runner_id, "downtime_s": round(down, 1),
                                        "counted_s": round(counted, 1), "elapsed_s": round(elapsed, 1),
                                        "resumed_call": running[0] if running else None})
        if r.status == "frozen":
            await self.pause.freeze(sb)
            self.status = "frozen"
        elif r.status == "held":
            self.pause.hold()
            self.status = "held"
        else:
            self.status = "running"
        if r.started:
            self.clock.start()
        else:
            self.clock.start()
            await self.emit("run.started", {"elapsed_s": round(self.clock.elapsed, 1)})
        await self._watch_gpus(scale.gpus)
        if self.toolbox.submission is not None:  # it was being scored when the runner stopped
            await self._finish("succeeded", "submitted", submitted=True)
            return
        await self._go(r)

    async def detach(self, reason: str) -> None:
        """Let go of the run and leave it going in its sandbox: a command keeps running, an
        LLM call in flight is asked again by the runner that adopts the run."""
        if self._ending:
            return
        self._ending = True
        self.detached = True
        if self.toolbox is not None:
            self.toolbox.keep_jobs = True
        if self.gpu_sampler is not None:
            self.gpu_sampler.unwatch(self.run_id)
        tasks = [t for t in [*self._followers, self._loop_task] if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        with contextlib.suppress(Exception):
            await self.output.flush()
        if self.sandbox is not None:
            self.sandbox.release()
        if self._net_task is not None:  # the proxy goes on with the sandbox; the next runner follows it
            self._net_task.cancel()
        self.approvals.cancel()
        await self.emit("run.detached", {"reason": reason, "runner": self.runner_id})
        self._ended.set()

    # -- the agent ---------------------------------------------------------------------
    async def _agent_loop(self, resume: RunResume | None = None) -> None:
        assert self.toolbox is not None
        ctx = AgentContext(run=self.run_id, task_prompt=self.req.task.prompt(self.req.scale),
                           tools=self.toolbox.specs(), emit=self._agent_emit,
                           time_limit_s=self.limits.time_s)
        results: list[ToolResult] = []
        failures = 0
        pending: tuple[AgentTurn, list[CallState]] | None = None
        if resume is None:
            await self.agent.start(ctx)
        else:
            records = resume.turn_records()
            await self.agent.resume(ctx, records)
            for rec in reversed(records):  # the turns without progress the run ended on
                if rec.turn.calls or rec.turn.done:
                    break
                failures += 1
            last = resume.last
            if last is not None and last.turn is None:
                # the model was being asked when the runner stopped: ask it again
                obs = Observation(last.step, last.time_left_s, resume.results_before(last),
                                  list(last.messages), list(last.notices))
                turn = await self._ask(obs)
                pending = (turn, [CallState(c) for c in turn.calls])
            elif last is not None and last.turn is not None:
                pending = (last.turn, last.calls)
        while True:
            if pending is not None:
                turn, states = pending
                pending = None
            else:
                await self.pause.gate()
                if await self._check_limits():
                    return
                self.budget.steps += 1
                step = self.budget.steps
                time_left = self.budget.time_left
                messages, self._messages = self._messages, []
                notices, self._notices = self._notices, []
                await self.emit("agent.step", {"step": step, "time_left_s": round(time_left, 3),
                                               "elapsed_s": round(self.clock.elapsed, 1),
                                               "messages": messages, "notices": notices})
                turn = await self._ask(Observation(step, time_left, results, messages, notices))
                states = [CallState(c) for c in turn.calls]
            if not turn.calls:
                failures = failures + 1 if not turn.done else 0
                if turn.done:
                    await self._finish("failed", "the agent stopped without submitting a model")
                    return
                if failures >= MAX_CONSECUTIVE_AGENT_FAILURES:
                    # the last turn's words say why (e.g. the provider refused the key)
                    why = strip_escapes(turn.text)[:500]
                    await self._finish("failed", f"the agent made no progress in {failures} turns"
                                                 + (f": {why}" if why else ""))
                    return
                results = []
                continue
            failures = 0
            results = []
            for cs in states:
                # a call whose result the journal holds ran before the runner stopped
                result = cs.result if cs.result is not None else await self._tool(cs.call, cs)
                results.append(result)
                if self.toolbox.submission is not None:
                    await self._finish("succeeded", "submitted", submitted=True)
                    return
                await self.pause.gate()

    async def _ask(self, obs: Observation) -> AgentTurn:
        """One turn of the agent, recorded whole as `agent.turn`."""
        self.stalls.llm_started()
        try:
            turn = await self.agent.turn(obs)
        finally:
            self.stalls.llm_ended()
        await self._emit_turn(obs.step, turn)
        return turn

    async def _emit_turn(self, step: int, turn: AgentTurn) -> None:
        calls: list[dict[str, Any]] = [{"id": c.id, "name": c.name, "args": c.args} for c in turn.calls]
        data: dict[str, Any] = {"step": step, "text": strip_escapes(turn.text)[:64_000],
                                "done": turn.done, "calls": calls, "state": turn.state}
        if len(json.dumps(data, default=str)) > MAX_TURN_EVENT:
            # a large write_file: the full calls go to a file beside the journal, the event
            # keeps them clipped
            name = f"{step}.json"
            body = json.dumps({"calls": calls, "state": turn.state})
            await asyncio.to_thread(_write_atomic, self.turns_dir / name, body)
            data = {**data, "calls": [{**c, "args": _clip_args(c["args"])} for c in calls],
                    "state": {}, "payload": name}
        await self.emit("agent.turn", data)

    async def _tool(self, call: ToolCall, cs: CallState | None = None) -> ToolResult:
        assert self.toolbox is not None
        resumed = cs is not None and cs.called  # its tool.call is journaled: an earlier runner's
        if not resumed:
            await self.emit("tool.call", {"id": call.id, "name": call.name, "args": _clip_args(call.args)})
        edited: dict[str, Any] | None = None
        decided = cs.approval if cs is not None and cs.approval in ("approved", "rejected") else None
        if decided == "rejected":
            assert cs is not None
            return await self._rejected(call, cs.reason)
        if decided == "approved":
            assert cs is not None
            edited = cs.edited
        elif self.approvals.on:
            # waiting before it is announced: an operator who answers at once is not refused
            self.approvals.expect(call.id)
            if not (resumed and cs is not None and cs.approval == "pending"):
                await self.emit("tool.approval", {"id": call.id, "state": "pending", "name": call.name})
            self.clock.stop("approval")
            try:
                decision = await self.approvals.wait(call.id)
            finally:
                self.clock.release("approval")
            if not decision.ok:
                return await self._rejected(call, decision.reason)
            edited = decision.edited
        if edited is not None:
            call = ToolCall(call.id, call.name, edited)
        self.stalls.command_started()
        try:
            if resumed and self.toolbox.job_started(call):
                # its command outlived the runner that started it: follow it to its end
                result = await self.toolbox.resume(call, self._job_offsets.get(job_id_for(call.id), 0))
            else:
                result = await self.toolbox.execute(call)
        finally:
            self.stalls.command_ended()
        if edited is not None:
            # the model's history shows its own arguments: say what actually ran
            ran = json.dumps(_clip_args(edited))[:2000]
            result = replace(result, output=f"[The operator edited this call before it ran; "
                                            f"it ran with arguments {ran}]\n{result.output}",
                             meta={**result.meta, "edited": True})
        await self.output.flush()
        return await self._emit_result(result)

    async def _rejected(self, call: ToolCall, reason: str) -> ToolResult:
        return await self._emit_result(ToolResult(
            call.id, call.name, ok=False,
            output=f"The operator rejected this call: {reason or 'no reason given'}",
            meta={"rejected": True}))

    async def _emit_result(self, r: ToolResult) -> ToolResult:
        """Journal a result; what is journaled is what the agent is shown, so a runner that
        adopts the run rebuilds the same conversation."""
        output = strip_escapes(r.output)
        meta = dict(r.meta)
        if len(output) > MAX_RESULT_TEXT:
            output, meta["clipped"] = output[-MAX_RESULT_TEXT:], True
        r = replace(r, output=output, meta=meta)
        await self.emit("tool.result", {
            "id": r.call_id, "name": r.name, "ok": r.ok, "exit_code": r.exit_code,
            "duration_s": r.duration_s, "output": output, **meta})
        return r

    async def _check_limits(self) -> bool:
        """Warn of limits near their end; True when one is reached (and the run ended)."""
        for crossing in self.budget.check():
            await self.emit("run.limit", crossing.data)
            if crossing.reached:
                await self._finish("limit", crossing.reason)
                return True
            self._notices.append(crossing.notice)
        return False

    # -- background followers ---------------------------------------------------------
    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            if self.sandbox is None:
                continue
            try:
                s = await self.sandbox.stats()
            except Exception as exc:  # a sample lost is not a run lost
                log.debug("stats failed for %s: %s", self.run_id, exc)
                continue
            await self.emit("resource", {**s, "elapsed_s": round(self.clock.elapsed, 1)})
            crossing: LimitCrossing | None = self.budget.time_ran_out()
            if crossing is not None and not self._ending:
                # the budget ran out in the middle of a tool call: end now
                await self.emit("run.limit", crossing.data)
                self._spawn(self._finish("limit", crossing.reason))

    async def _watch_gpus(self, wanted: int) -> None:
        """Have the runner's GPU sampler report this run's devices; say once if it cannot."""
        sampler = self.gpu_sampler
        if sampler is not None and sampler.available and self.sandbox is not None:
            sampler.watch(watch_for_sandbox(self.run_id, self.sandbox, self.gpu_ids, self._on_gpu))
        elif wanted > 0:
            why = sampler.state if sampler is not None else "none: no GPU sampler"
            await self.emit("run.warning", {"code": "no_gpu",
                                            "message": f"the run asked for {wanted} GPU"
                                                       f"{'s' if wanted != 1 else ''} but this "
                                                       f"runner has no GPU telemetry ({why})"})

    async def _on_gpu(self, samples: list[GpuSample]) -> None:
        self.stalls.gpu(s.get("util") for s in samples)
        for sample in samples:
            if self._ending:
                return
            await self.emit("gpu", sample)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            if self.sandbox is None or self._ending:
                continue
            try:
                st = await self.sandbox.status()
            except Exception as exc:
                self._spawn(self._finish("failed", f"sandbox lost: {exc}"))
                return
            if not st.running and not st.paused:
                code = f" (exit code {st.exit_code})" if st.exit_code is not None else ""
                self._spawn(self._finish("failed", f"sandbox died: {st.reason or 'stopped'}{code}"))
                return

    async def _watch_stalls(self) -> None:
        every = self.stalls.thresholds.tick_s
        while True:
            await asyncio.sleep(every)
            if self._ending:
                return
            # held, frozen, waiting for approval or scoring: the clock is stopped, no alarm
            active = self.status == "running" and self.clock.since is not None
            for alarm in self.stalls.due(active):
                await self.emit("run.warning", {"code": alarm.code, "message": alarm.message,
                                                "idle_s": round(alarm.idle_s, 1)})

    # -- control: what ControlDispatch acts on -------------------------------------------
    async def control(self, cmd: ControlCommand) -> None:
        """Apply an operator command; answer with control.ack, record operator.*."""
        await self.controls.handle(cmd)

    @property
    def ending(self) -> bool:
        return self._ending or self.end_status is not None

    @property
    def pause_level(self) -> Level | None:
        return self.pause.level

    @property
    def has_sandbox(self) -> bool:
        return self.sandbox is not None

    async def hold(self, reason: str | None = None) -> None:
        self.pause.hold()
        self.status = "held"
        await self.emit("run.held", {"level": "hold", "elapsed_s": round(self.clock.elapsed, 1),
                                     **({"reason": reason} if reason else {})})

    async def freeze(self) -> None:
        assert self.sandbox is not None
        await self.pause.freeze(self.sandbox)
        self.status = "frozen"
        await self.emit("run.held", {"level": "freeze", "elapsed_s": round(self.clock.elapsed, 1)})

    async def resume(self) -> None:
        await self.pause.resume(self.sandbox)
        self.status = "running"
        await self.emit("run.resumed", {"elapsed_s": round(self.clock.elapsed, 1)})

    def end_soon(self, status: str, reason: str) -> None:
        self._spawn(self._finish(status, reason))

    def tell_agent(self, text: str) -> None:
        self._messages.append(strip_escapes(text)[:MAX_MESSAGE])

    def notice(self, text: str) -> None:
        """A word from the runner itself (a limit near, a disk filling) for the agent's next turn."""
        self._notices.append(text)

    def score_soon(self) -> None:
        self._spawn(self._score(final=False))

    # -- scoring and the end -------------------------------------------------------------
    async def _score(self, final: bool) -> dict[str, Any]:
        submission = self.toolbox.submission if self.toolbox is not None else None
        return await self.scorer.score(final, submission.path if submission else None, self.gpu_ids)

    async def _finish(self, status: str, reason: str, submitted: bool = False) -> None:
        if self._ending:
            await self._ended.wait()
            return
        self._ending = True
        self.status = status
        if self.gpu_sampler is not None:
            self.gpu_sampler.unwatch(self.run_id)
        for t in self._followers:
            t.cancel()
        await self.pause.end(self.sandbox)
        current = asyncio.current_task()
        if self._loop_task is not None and self._loop_task is not current and not self._loop_task.done():
            self._loop_task.cancel()
            await asyncio.wait([self._loop_task], timeout=30)
        self.approvals.cancel()
        with contextlib.suppress(Exception):
            await self.output.flush()
        if self.sandbox is not None:
            with contextlib.suppress(Exception):
                await self.sandbox.stop()
        await self._stop_proxy()
        # metrics written in the last moments still count
        with contextlib.suppress(Exception):
            await self.output.read_last_metrics()
        pending = [t for t in self._bg if not t.done() and t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=5)
        if submitted:
            result = await self._score(final=True)
            if result.get("value") is None:
                status, reason = "failed", f"scoring failed: {result.get('error')}"
        for flag in await integrity_flags(self.journal.path, self.run_id, self.req.task,
                                          self.req.scale, self.workspace):
            await self.emit("integrity.flag", flag)
        await self.disk.release(self)  # after scoring and the checks: they read the workspace
        self.end_status, self.end_reason = status, reason
        await self.emit("run.ended", {"status": status, "reason": reason,
                                      "elapsed_s": round(self.clock.elapsed, 1),
                                      "steps": self.budget.steps})
        with contextlib.suppress(Exception):
            await self.agent.close()
        self._ended.set()

    # -- for the engine ---------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    async def kill(self, reason: str) -> None:
        await self._finish("killed", reason)

    def summary(self) -> dict[str, Any]:
        return {"run": self.run_id, "task": self.req.task.name, "status": self.end_status or self.status,
                "reason": self.end_reason, "elapsed_s": round(self.clock.elapsed, 1),
                "steps": self.budget.steps, "workspace": str(self.workspace)}


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _clip_args(args: dict[str, Any]) -> dict[str, Any]:
    """Tool arguments as recorded: long strings (file contents) are clipped."""
    out: dict[str, Any] = {}
    for k, v in args.items():
        if isinstance(v, str) and len(v) > 8000:
            out[k] = v[:8000] + f"\n[... {len(v) - 8000} more characters]"
        else:
            out[k] = v
    return out


__all__ = ["RunLimits", "RunRequest", "RunSupervisor", "WORKSPACE"]
