"""RunSupervisor: owns one run from creation to its end.

It prepares the workspace, starts the sandbox, drives the agent turn by turn (the LLM call
on the host, each tool call in the sandbox), follows the sandbox's output, metrics and
resources, keeps the clock (paused and scoring time excluded), enforces limits, obeys
operator commands, scores the submission with the task's protected scorer, and ends the
run with a status and a reason. Every fact becomes an event, written to the journal first
and published on the bus after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from runner.agents.base import Agent, AgentContext, Observation, ToolCall, ToolResult
from runner.control import (
    ApprovalModeArgs,
    ApproveArgs,
    ControlCommand,
    LimitArgs,
    MessageArgs,
    RejectArgs,
    ShellArgs,
)
from runner.escapes import strip_escapes
from runner.events import Event, EventFactory
from runner.gpu import GpuSample, GpuSampler, watch_for_sandbox
from runner.journal import Journal
from runner.metrics import MetricsTail, parse_trainer_line
from runner.sandbox import (
    METRICS_FILE,
    WORKSPACE,
    Sandbox,
    SandboxError,
    SandboxLimits,
    SandboxSpec,
)
from runner.telemetry import TelemetryWindow
from runner.tools import TOOL_SPECS, ToolBox
from tasks.api import SCORELIB, ScoreOutputError, TaskSpec, parse_score_output, score_command

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Event]], None]
SandboxFactory = Callable[[SandboxSpec], Sandbox]

OUTPUT_FLUSH_S = 0.1
OUTPUT_CHUNK = 8 * 1024
SAMPLE_EVERY_S = 2.0
WARN_FRACTION = 0.8
MAX_CONSECUTIVE_AGENT_FAILURES = 5


@dataclass
class RunLimits:
    time_s: float
    steps: int | None = None
    tokens: int | None = None
    cost_usd: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


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


@dataclass
class _Clock:
    """Time on the run's budget: stops while held, frozen, waiting for approval or scoring."""

    used: float = 0.0
    since: float | None = None
    stops: set[str] = field(default_factory=set)

    def start(self) -> None:
        if self.since is None and not self.stops:
            self.since = time.monotonic()

    def stop(self, why: str) -> None:
        self.stops.add(why)
        if self.since is not None:
            self.used += time.monotonic() - self.since
            self.since = None

    def release(self, why: str) -> None:
        self.stops.discard(why)
        if not self.stops and self.since is None:
            self.since = time.monotonic()

    @property
    def elapsed(self) -> float:
        return self.used + (time.monotonic() - self.since if self.since is not None else 0.0)


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
        score_sandbox: SandboxFactory | None = None,
        gpu_sampler: GpuSampler | None = None,
    ) -> None:
        self.req = request
        self.run_id = request.run
        self.journal = journal
        self._publish = publish
        self._make_sandbox = make_sandbox
        self._score_sandbox = score_sandbox or make_sandbox
        self.agent = agent
        self.workspace = workspace
        self.runner_id = runner_id
        self.image = image
        scale = request.task.scale(request.scale)
        self.limits = request.limits or RunLimits(
            time_s=scale.time_s, steps=scale.steps, tokens=scale.tokens, cost_usd=scale.cost_usd)
        self.approval = request.approval
        self.status = "queued"
        self.sandbox: Sandbox | None = None
        self.toolbox: ToolBox | None = None
        self.clock = _Clock()
        self._factory = EventFactory(self.run_id, journal.last_seq(self.run_id) + 1)
        self._emit_lock = asyncio.Lock()
        self._hold: str | None = None  # None | "hold" | "freeze"
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._messages: list[str] = []
        self._notices: list[str] = []
        self._approvals: dict[str, asyncio.Future[tuple[bool, dict[str, Any] | None, str]]] = {}
        self._warned: set[str] = set()
        self._ended = asyncio.Event()
        self._ending = False
        self._loop_task: asyncio.Task[None] | None = None
        self._bg: list[asyncio.Task[None]] = []
        self._out_buf: list[tuple[str, str]] = []
        self._out_size = 0
        self._out_line = ""
        self._metric_step = 0
        self._tokens = 0
        self._cost = 0.0
        self._steps = 0
        self._scoring = asyncio.Lock()
        self._tail: MetricsTail | None = None
        self._bg_fixed: list[asyncio.Task[None]] = []
        self.end_status: str | None = None
        self.end_reason = ""
        self.gpu_sampler = gpu_sampler
        self.gpu_ids: tuple[int, ...] = ()  # NVML indices the engine's allocator assigned
        self.telemetry = TelemetryWindow()  # recent resource/gpu samples; older ones are in SQLite

    # -- events ----------------------------------------------------------------------
    async def emit(self, kind: str, data: dict[str, Any] | None = None) -> Event:
        async with self._emit_lock:
            ev = self._factory.make(kind, data or {})
            await self.journal.write([ev])
        self._observe(ev)
        if self._publish is not None:
            self._publish([ev])
        return ev

    def _observe(self, ev: Event) -> None:
        if ev.kind in ("resource", "gpu"):
            self.telemetry.add(ev.kind, ev.data, ev.ts)
        elif ev.kind == "usage":
            self._tokens += int(ev.data.get("input_tokens") or 0) + int(ev.data.get("output_tokens") or 0)
            self._cost += float(ev.data.get("cost_usd") or 0.0)

    async def _agent_emit(self, kind: str, data: dict[str, Any]) -> None:
        if kind not in ("agent.error", "agent.message", "usage"):
            raise ValueError(f"an agent may not emit {kind}")
        if "text" in data and isinstance(data["text"], str):
            data = {**data, "text": strip_escapes(data["text"])[:64_000]}
        await self.emit(kind, data)

    # -- sandbox output ----------------------------------------------------------------
    def _on_output(self, stream: str, text: str) -> None:
        text = strip_escapes(text)
        if not text:
            return
        self._out_buf.append((stream, text))
        self._out_size += len(text)
        # metrics printed as Trainer log dicts
        lines = (self._out_line + text).split("\n")
        self._out_line = lines.pop()[-4096:]
        for line in lines:
            parsed = parse_trainer_line(line)
            if parsed is not None:
                self._queue_metric(parsed, "stdout")
        if self._out_size >= OUTPUT_CHUNK:
            self._spawn(self._flush_output())

    def _metric_data(self, parsed: dict[str, Any], source: str) -> dict[str, Any]:
        step = parsed["step"]
        if step is None:
            self._metric_step += 1
            step = self._metric_step
        else:
            self._metric_step = step
        return {"step": step, "values": parsed["values"], "source": source}

    def _queue_metric(self, parsed: dict[str, Any], source: str) -> None:
        self._spawn(self.emit("metric", self._metric_data(parsed, source)))

    async def _emit_metric(self, parsed: dict[str, Any], source: str) -> None:
        await self.emit("metric", self._metric_data(parsed, source))

    async def _flush_output(self) -> None:
        if not self._out_buf:
            return
        buf, self._out_buf, self._out_size = self._out_buf, [], 0
        merged: list[tuple[str, str]] = []
        for stream, text in buf:
            if merged and merged[-1][0] == stream and len(merged[-1][1]) < OUTPUT_CHUNK:
                merged[-1] = (stream, merged[-1][1] + text)
            else:
                merged.append((stream, text))
        for stream, text in merged:
            await self.emit("sandbox.output", {"stream": stream, "text": text[:200_000]})

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.append(task)  # type: ignore[arg-type]
        task.add_done_callback(lambda t: self._bg.remove(t) if t in self._bg else None)  # type: ignore[arg-type]

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
        return self.end_status or "failed"

    async def _run(self) -> None:
        task = self.req.task
        scale = task.scale(self.req.scale)
        await self.emit("run.created", {
            "task": task.name, "agent": self.req.agent_kind, "model": self.agent.model,
            "scale": self.req.scale, "limits": self.limits.as_dict(), "runner": self.runner_id,
            "job": self.req.job, "approval": self.approval, "submitted_by": self.req.submitted_by,
            "metric": task.metric,
        })
        from tasks.api import prepare_workspace  # the engine calls the tasks API

        await asyncio.to_thread(prepare_workspace, task, self.req.scale, self.workspace)
        spec = SandboxSpec(
            run=self.run_id, workspace=self.workspace, image=self.image,
            limits=SandboxLimits(cpus=scale.cpus, memory_bytes=int(scale.memory_gb * 1024**3),
                                 gpus=scale.gpus, gpu_ids=tuple(str(i) for i in self.gpu_ids)),
            env=(("MLRB_RUN", self.run_id), ("MLRB_TASK", task.name), ("MLRB_SCALE", self.req.scale)),
        )
        try:
            self.sandbox = self._make_sandbox(spec)
            await self.sandbox.start()
        except SandboxError as exc:
            await self._finish("failed", f"sandbox: {exc}")
            return
        sb = self.sandbox
        await self.emit("sandbox.started", {
            "backend": sb.backend, "id": sb.id, "image": self.image if sb.isolated else None,
            "isolated": sb.isolated, "limits": {"cpus": scale.cpus, "memory_gb": scale.memory_gb,
                                                "gpus": scale.gpus}})
        if not sb.isolated:
            await self.emit("run.warning", {
                "code": "not_isolated",
                "message": "local sandbox: no Docker engine answered, so the agent's commands "
                           "run on this host without isolation"})
        await self._watch_gpus(scale.gpus)
        self.toolbox = ToolBox(sb, on_output=self._on_output)
        self.clock.start()
        self.status = "running"
        await self.emit("run.started", {"elapsed_s": 0.0})
        self._bg_fixed = [
            asyncio.create_task(self._follow_metrics(), name=f"{self.run_id}-metrics"),
            asyncio.create_task(self._sample(), name=f"{self.run_id}-sample"),
            asyncio.create_task(self._watch(), name=f"{self.run_id}-watch"),
            asyncio.create_task(self._flusher(), name=f"{self.run_id}-flush"),
        ]
        self._loop_task = asyncio.create_task(self._agent_loop(), name=f"{self.run_id}-agent")
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task

    async def _agent_loop(self) -> None:
        assert self.toolbox is not None
        await self.agent.start(AgentContext(
            run=self.run_id, task_prompt=self.req.task.prompt(self.req.scale), tools=TOOL_SPECS,
            emit=self._agent_emit, time_limit_s=self.limits.time_s))
        results: list[ToolResult] = []
        failures = 0
        while True:
            await self._gate()
            if await self._check_limits():
                return
            self._steps += 1
            time_left = max(0.0, self.limits.time_s - self.clock.elapsed)
            await self.emit("agent.step", {"step": self._steps, "time_left_s": round(time_left, 1),
                                           "elapsed_s": round(self.clock.elapsed, 1)})
            messages, self._messages = self._messages, []
            notices, self._notices = self._notices, []
            turn = await self.agent.turn(Observation(self._steps, time_left, results, messages, notices))
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
            for call in turn.calls:
                result = await self._tool(call)
                results.append(result)
                if self.toolbox.submission is not None:
                    await self._finish("succeeded", "submitted", submitted=True)
                    return
                await self._gate()

    async def _tool(self, call: ToolCall) -> ToolResult:
        assert self.toolbox is not None
        await self.emit("tool.call", {"id": call.id, "name": call.name, "args": _clip_args(call.args)})
        edited: dict[str, Any] | None = None
        if self.approval:
            await self.emit("tool.approval", {"id": call.id, "state": "pending", "name": call.name})
            fut: asyncio.Future[tuple[bool, dict[str, Any] | None, str]] = (
                asyncio.get_running_loop().create_future())
            self._approvals[call.id] = fut
            self.clock.stop("approval")
            try:
                ok, edited, reason = await fut
            finally:
                self._approvals.pop(call.id, None)
                self.clock.release("approval")
            if not ok:
                result = ToolResult(call.id, call.name, ok=False,
                                    output=f"The operator rejected this call: {reason or 'no reason given'}",
                                    meta={"rejected": True})
                await self._emit_result(result)
                return result
            if edited is not None:
                call = ToolCall(call.id, call.name, edited)
        result = await self.toolbox.execute(call)
        if edited is not None:
            # the model's history shows its own arguments: say what actually ran
            ran = json.dumps(_clip_args(edited))[:2000]
            result = replace(result, output=f"[The operator edited this call before it ran; "
                                            f"it ran with arguments {ran}]\n{result.output}",
                             meta={**result.meta, "edited": True})
        await self._flush_output()
        await self._emit_result(result)
        return result

    async def _emit_result(self, r: ToolResult) -> None:
        await self.emit("tool.result", {
            "id": r.call_id, "name": r.name, "ok": r.ok, "exit_code": r.exit_code,
            "duration_s": r.duration_s, "output": strip_escapes(r.output)[-16_000:], **r.meta})

    async def _gate(self) -> None:
        """Where a hold takes effect: the agent stops here until resumed."""
        if self._hold is not None:
            self.clock.stop("hold")
            await self._resumed.wait()

    async def _check_limits(self) -> bool:
        checks = [("time_s", self.clock.elapsed, self.limits.time_s),
                  ("steps", float(self._steps), self.limits.steps),
                  ("tokens", float(self._tokens), self.limits.tokens),
                  ("cost_usd", self._cost, self.limits.cost_usd)]
        for name, used, limit in checks:
            if not limit:
                continue
            frac = used / limit
            if frac >= 1.0:
                await self.emit("run.limit", {"limit": name, "used": round(used, 4), "max": limit,
                                              "fraction": round(frac, 3), "level": "reached"})
                await self._finish("limit", f"{name} limit reached ({used:g} of {limit:g})")
                return True
            if frac >= WARN_FRACTION and name not in self._warned:
                self._warned.add(name)
                await self.emit("run.limit", {"limit": name, "used": round(used, 4), "max": limit,
                                              "fraction": round(frac, 3), "level": "warning"})
                self._notices.append(f"Warning: you have used {frac:.0%} of your {name} limit.")
        return False

    # -- background followers ---------------------------------------------------------
    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(OUTPUT_FLUSH_S)
            await self._flush_output()

    async def _follow_metrics(self) -> None:
        self._tail = tail = MetricsTail(self.workspace, METRICS_FILE)
        while True:
            for parsed in await asyncio.to_thread(tail.read):
                await self._emit_metric(parsed, "file")
            await asyncio.sleep(0.5)

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
            if self.limits.time_s and self.clock.elapsed >= self.limits.time_s and not self._ending:
                # the budget ran out in the middle of a tool call: end now
                await self.emit("run.limit", {"limit": "time_s", "used": round(self.clock.elapsed, 1),
                                              "max": self.limits.time_s, "fraction": 1.0,
                                              "level": "reached"})
                self._spawn(self._finish("limit", f"time_s limit reached ({self.limits.time_s:g} s)"))

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
        for sample in samples:
            if self._ending:
                return
            await self.emit("gpu", sample)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.sandbox is None or self._ending:
                continue
            try:
                st = await self.sandbox.status()
            except Exception as exc:
                st_reason = str(exc)
                self._spawn(self._finish("failed", f"sandbox lost: {st_reason}"))
                return
            if not st.running and not st.paused:
                code = f" (exit code {st.exit_code})" if st.exit_code is not None else ""
                self._spawn(self._finish("failed", f"sandbox died: {st.reason or 'stopped'}{code}"))
                return

    # -- control -----------------------------------------------------------------------
    async def control(self, cmd: ControlCommand) -> None:
        """Apply an operator command; answer with control.ack, record operator.*."""
        refusal = self._refusal(cmd)
        if refusal:
            await self.emit("control.ack", {"command_id": cmd.id, "action": cmd.action,
                                            "accepted": False, "reason": refusal,
                                            "operator": cmd.operator})
            return
        detail = cmd.args_dict()
        await self.emit(f"operator.{cmd.action}", {"operator": cmd.operator, "reason": cmd.reason,
                                                   "command_id": cmd.id, "ts_sent": cmd.ts, **detail})
        try:
            note = await self._apply(cmd)
        except Exception as exc:
            await self.emit("control.ack", {"command_id": cmd.id, "action": cmd.action,
                                            "accepted": False, "reason": f"failed: {exc}",
                                            "operator": cmd.operator})
            return
        await self.emit("control.ack", {"command_id": cmd.id, "action": cmd.action,
                                        "accepted": True, "reason": note, "operator": cmd.operator})

    def _refusal(self, cmd: ControlCommand) -> str:
        if self._ending or self.end_status is not None:
            return f"run has ended ({self.end_status or 'ending'})"
        if cmd.invalid:
            return cmd.invalid
        a = cmd.action
        if a == "hold" and self._hold is not None:
            return f"run is already {self._hold}"
        if a == "freeze" and self._hold == "freeze":
            return "run is already frozen"
        if a == "freeze" and self.sandbox is None:
            return "run has no sandbox yet"
        if a == "resume" and self._hold is None:
            return "run is not paused"
        if isinstance(cmd.args, ApproveArgs | RejectArgs) and cmd.args.call_id not in self._approvals:
            return "no tool call is waiting for approval with that id"
        return ""

    async def _apply(self, cmd: ControlCommand) -> str:
        a = cmd.action
        if a == "hold":
            self._hold = "hold"
            self._resumed.clear()
            self.status = "held"
            await self.emit("run.held", {"level": "hold", "elapsed_s": round(self.clock.elapsed, 1)})
            return "the agent stops at its next step"
        if a == "freeze":
            assert self.sandbox is not None
            await self.sandbox.pause()
            self._hold = "freeze"
            self._resumed.clear()
            self.clock.stop("freeze")
            self.status = "frozen"
            await self.emit("run.held", {"level": "freeze", "elapsed_s": round(self.clock.elapsed, 1)})
            return "sandbox paused"
        if a == "resume":
            if self._hold == "freeze" and self.sandbox is not None:
                await self.sandbox.unpause()
            self._hold = None
            self.clock.release("freeze")
            self.clock.release("hold")
            self._resumed.set()
            self.status = "running"
            await self.emit("run.resumed", {"elapsed_s": round(self.clock.elapsed, 1)})
            return "resumed"
        if a == "kill":
            self._spawn(self._finish("killed", cmd.reason or f"killed by {cmd.operator}"))
            return "killing"
        if a == "message":
            assert isinstance(cmd.args, MessageArgs)
            self._messages.append(strip_escapes(cmd.args.text)[:20_000])
            return "delivered at the agent's next turn"
        if a == "approval_mode":
            assert isinstance(cmd.args, ApprovalModeArgs)
            self.approval = cmd.args.on
            if not self.approval:
                for fut in self._approvals.values():
                    if not fut.done():
                        fut.set_result((True, None, ""))
            return f"approval mode {'on' if self.approval else 'off'}"
        if a in ("approve", "reject"):
            assert isinstance(cmd.args, ApproveArgs | RejectArgs)
            call_id = cmd.args.call_id
            fut = self._approvals[call_id]
            edited = cmd.args.args if isinstance(cmd.args, ApproveArgs) else None
            if not fut.done():
                fut.set_result((a == "approve", edited, cmd.reason))
            await self.emit("tool.approval", {"id": call_id, "state": "approved" if a == "approve" else "rejected",
                                              "edited": edited is not None})
            return "approved" if a == "approve" else "rejected"
        if a == "limit":
            assert isinstance(cmd.args, LimitArgs)
            name, value = cmd.args.name, cmd.args.value
            setattr(self.limits, name, int(value) if name in ("steps", "tokens") else value)
            self._warned.discard(name)
            return f"{name} limit is now {value:g}"
        if a == "score":
            self._spawn(self._score(final=False))
            return "scoring off the clock"
        if a == "shell":
            assert isinstance(cmd.args, ShellArgs)
            return f"shell {cmd.args.state}"
        return ""

    # -- scoring and the end -------------------------------------------------------------
    async def _score(self, final: bool) -> dict[str, Any] | None:
        async with self._scoring:
            self.clock.stop("scoring")
            try:
                result = await self._run_scorer()
            finally:
                self.clock.release("scoring")
        data = {"metric": result.get("metric") or self.req.task.metric,
                "value": result.get("value"), "metrics": result.get("metrics", {}),
                "details": result.get("details", {}), "error": result.get("error"),
                "final": final}
        await self.emit("score", data)
        return result

    async def _run_scorer(self) -> dict[str, Any]:
        task = self.req.task
        scratch = Path(tempfile.mkdtemp(prefix=f"mlrb-score-{self.run_id}-"))
        spec = SandboxSpec(
            run=f"{self.run_id}-score", workspace=scratch, image=self.image,
            limits=SandboxLimits(cpus=2.0, memory_bytes=8 * 1024**3,
                                 gpus=task.scale(self.req.scale).gpus,
                                 gpu_ids=tuple(str(i) for i in self.gpu_ids)),
            readonly_mounts=((self.workspace, "/submission"), (task.scorer_dir, "/scorer"),
                             (SCORELIB, "/scorer_lib/scorelib.py")),
        )
        sb = self._score_sandbox(spec)

        model = self.toolbox.submission.path if self.toolbox and self.toolbox.submission else None
        if model is not None and model.startswith(WORKSPACE + "/"):
            model = model[len(WORKSPACE) + 1:]
        if sb.isolated:
            argv = score_command(task, self.req.scale, model, "/submission", "/scorer")
        else:
            argv = score_command(task, self.req.scale, model, str(self.workspace),
                                 str(task.scorer_dir), str(SCORELIB.parent))
        try:
            await sb.start()
            res = await sb.exec(" ".join(shlex.quote(a) for a in argv),
                                timeout_s=task.scale(self.req.scale).score_timeout_s,
                                output_cap=256 * 1024)
        except SandboxError as exc:
            return {"value": None, "error": f"scoring sandbox: {exc}"}
        finally:
            with contextlib.suppress(Exception):
                await sb.stop()
        try:
            return parse_score_output(res.output)
        except ScoreOutputError as exc:
            return {"value": None, "error": f"{exc} (scorer exit {res.exit_code}): "
                                            f"{strip_escapes(res.output)[-500:]}"}


    async def _finish(self, status: str, reason: str, submitted: bool = False) -> None:
        if self._ending:
            await self._ended.wait()
            return
        self._ending = True
        self.status = status
        if self.gpu_sampler is not None:
            self.gpu_sampler.unwatch(self.run_id)
        for t in self._bg_fixed:
            t.cancel()
        # a frozen sandbox cannot even be told to stop a command: thaw it first
        if self.sandbox is not None and self._hold == "freeze":
            with contextlib.suppress(Exception):
                await self.sandbox.unpause()
        self._hold = None
        self._resumed.set()
        current = asyncio.current_task()
        if self._loop_task is not None and self._loop_task is not current and not self._loop_task.done():
            self._loop_task.cancel()
            await asyncio.wait([self._loop_task], timeout=30)
        for fut in self._approvals.values():
            if not fut.done():
                fut.cancel()
        with contextlib.suppress(Exception):
            await self._flush_output()
        if self.sandbox is not None:
            with contextlib.suppress(Exception):
                await self.sandbox.stop()
        # metrics written in the last moments still count
        if self._tail is not None:
            with contextlib.suppress(Exception):
                for parsed in self._tail.read():
                    await self._emit_metric(parsed, "file")
        pending = [t for t in self._bg if not t.done() and t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=5)
        if submitted:
            result = await self._score(final=True)
            if result is None or result.get("value") is None:
                status, reason = "failed", f"scoring failed: {(result or {}).get('error')}"
        await self._integrity()
        self.end_status, self.end_reason = status, reason
        await self.emit("run.ended", {"status": status, "reason": reason,
                                      "elapsed_s": round(self.clock.elapsed, 1),
                                      "steps": self._steps})
        with contextlib.suppress(Exception):
            await self.agent.close()
        self._ended.set()

    async def _integrity(self) -> None:
        try:
            from tasks import integrity
        except ImportError:
            return
        check = getattr(integrity, "check_run", None)
        if check is None:
            return
        from runner.journal import JournalReader

        def _events() -> list[dict[str, Any]]:
            reader = JournalReader(self.journal.path)
            try:
                out: list[dict[str, Any]] = []
                after = 0
                while True:
                    page = reader.events(self.run_id, after_seq=after, limit=5000)
                    if not page:
                        return out
                    out.extend(e.to_dict() for e in page)
                    after = page[-1].seq
            finally:
                reader.close()

        try:
            events = await asyncio.to_thread(_events)
            flags = await asyncio.to_thread(check, self.req.task, self.req.scale, self.workspace, events)
        except Exception as exc:
            log.warning("integrity checks failed for %s: %s", self.run_id, exc)
            return
        for flag in flags or []:
            await self.emit("integrity.flag", {k: flag.get(k) for k in ("check", "severity", "detail")})

    # -- for the engine ---------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    async def kill(self, reason: str) -> None:
        await self._finish("killed", reason)

    def summary(self) -> dict[str, Any]:
        return {"run": self.run_id, "task": self.req.task.name, "status": self.end_status or self.status,
                "reason": self.end_reason, "elapsed_s": round(self.clock.elapsed, 1), "steps": self._steps,
                "workspace": str(self.workspace)}


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
