"""The run supervisor end to end: a scripted agent trains a tiny torch model in a real
sandbox (the local one, and Docker), and operators hold, freeze, resume, kill, message,
approve and reject while it runs."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import pytest

from runner.agents.base import AgentContext, AgentTurn, Observation, ScriptedAgent, ToolCall
from runner.control import ControlCommand
from runner.events import Event
from runner.journal import Journal, JournalReader
from runner.sandbox import SandboxSpec
from runner.supervisor import RunLimits, RunRequest, RunSupervisor
from tasks.api import load_spec_file

FIXTURE = Path(__file__).parent / "fixtures" / "tasks" / "tiny_train" / "task.toml"
IMAGE = "mlrb-sandbox:latest"


def task():
    return load_spec_file(FIXTURE)


def plan(steps=40, delay=0.0, extra=()):
    from importlib import util

    spec = util.spec_from_file_location("tiny_baseline", FIXTURE.parent / "baseline.py")
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [
        {"name": "write_file", "args": {"path": "train.py", "content": mod.TRAIN}},
        *extra,
        {"name": "bash", "args": {"command": f"python3 train.py {steps} {delay}", "timeout_s": 120}},
        {"name": "submit", "args": {"path": "model", "summary": "linear fit"}},
    ]


class Harness:
    def __init__(self, tmp: Path, backend: str) -> None:
        self.tmp = tmp
        self.backend = backend
        self.journal = Journal(tmp / "j.db")
        self.published: list[Event] = []

    def make_sandbox(self, spec: SandboxSpec):
        from runner.sandbox_factory import create_sandbox

        return create_sandbox(spec, backend=self.backend)

    def supervisor(self, agent, run="tiny-1", limits=None, approval=False) -> RunSupervisor:
        return RunSupervisor(
            RunRequest(run=run, task=task(), scale="smoke", agent_kind=agent.name, limits=limits,
                       approval=approval),
            journal=self.journal, publish=self.published.extend, make_sandbox=self.make_sandbox,
            agent=agent, workspace=self.tmp / run / "workspace", runner_id="test", image=IMAGE)

    def events(self, run="tiny-1") -> list[Event]:
        r = JournalReader(self.tmp / "j.db")
        try:
            return r.events(run, 0, 100000)
        finally:
            r.close()

    def kinds(self, run="tiny-1") -> list[str]:
        return [e.kind for e in self.events(run)]

    def close(self) -> None:
        self.journal.close()


@pytest.fixture
def local(tmp_path):
    h = Harness(tmp_path, "local")
    yield h
    h.close()


@pytest.fixture
def docker_h(tmp_path, docker_client, sandbox_image):
    h = Harness(tmp_path, "docker")
    yield h
    h.close()


@pytest.fixture(scope="session")
def sandbox_image(docker_client):
    from runner.image import build_image

    build_image(tag=IMAGE, log=lambda s: None)
    return IMAGE


async def wait_for(pred, timeout=60.0):
    from tests.conftest import until

    await until(pred, timeout=timeout, interval=0.05)


def cmd(action, run="tiny-1", **args):
    return ControlCommand(run=run, action=action, operator="tester@host", reason=f"test {action}",
                          args=args)


def acks(h: Harness, run="tiny-1"):
    return [e.data for e in h.events(run) if e.kind == "control.ack"]


async def test_scripted_run_trains_scores_and_succeeds_locally(local):
    sup = local.supervisor(ScriptedAgent(plan()))
    status = await sup.run()
    evs = local.events()
    kinds = [e.kind for e in evs]
    assert status == "succeeded", sup.end_reason
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))  # gapless
    assert kinds[0] == "run.created" and kinds[-1] == "run.ended"
    assert "run.warning" in kinds  # the local sandbox says it is not isolated
    losses = [e.data["values"]["loss"] for e in evs if e.kind == "metric" and "loss" in e.data["values"]]
    assert len(losses) >= 40 and losses[-1] < losses[0]
    out = "".join(e.data["text"] for e in evs if e.kind == "sandbox.output")
    assert "step 40 loss" in out
    score = next(e for e in evs if e.kind == "score")
    assert score.data["final"] is True and 0.5 < score.data["value"] <= 1.0
    assert [e.seq for e in local.published] == [e.seq for e in evs]  # published after journaled
    row = JournalReader(local.tmp / "j.db").get_run("tiny-1")
    assert row["status"] == "succeeded" and row["score"] == score.data["value"]


async def test_hold_stops_the_agent_and_the_clock_then_resume(local):
    sup = local.supervisor(ScriptedAgent(plan(steps=15, delay=0.1)))
    runner = asyncio.create_task(sup.run())
    await wait_for(lambda: "tool.call" in local.kinds())
    await sup.control(cmd("hold"))
    await wait_for(lambda: sup.clock.since is None, 60)  # the agent reached its next step
    steps_held = local.kinds().count("agent.step")
    elapsed = sup.clock.elapsed
    await asyncio.sleep(1.0)
    assert local.kinds().count("agent.step") == steps_held
    assert sup.clock.elapsed == pytest.approx(elapsed)
    assert sup.status == "held"
    await sup.control(cmd("resume"))
    assert await runner == "succeeded"
    kinds = local.kinds()
    assert "operator.hold" in kinds and "run.held" in kinds and "run.resumed" in kinds
    assert [a["accepted"] for a in acks(local)] == [True, True]
    rows = JournalReader(local.tmp / "j.db").interventions("tiny-1")
    assert [(r["action"], r["operator"], r["reason"]) for r in rows] == [
        ("hold", "tester@host", "test hold"), ("resume", "tester@host", "test resume")]


async def test_refused_commands_are_acknowledged_with_why(local):
    sup = local.supervisor(ScriptedAgent(plan(steps=10, delay=0.1)))
    runner = asyncio.create_task(sup.run())
    await wait_for(lambda: "run.started" in local.kinds())
    await sup.control(cmd("resume"))
    await sup.control(cmd("limit", name="bogus", value=3))
    await sup.control(cmd("approve", call_id="nope"))
    assert await runner == "succeeded"
    refused = [a for a in acks(local) if not a["accepted"]]
    assert [a["action"] for a in refused] == ["resume", "limit", "approve"]
    assert "not paused" in refused[0]["reason"]
    await sup.control(cmd("hold"))
    assert "ended" in acks(local)[-1]["reason"]


async def test_kill_ends_the_run_with_the_reason(local):
    sup = local.supervisor(ScriptedAgent(plan(steps=400, delay=0.05)))
    runner = asyncio.create_task(sup.run())
    await wait_for(lambda: "metric" in local.kinds())
    await sup.control(ControlCommand(run="tiny-1", action="kill", operator="ops", reason="wrong config"))
    assert await runner == "killed"
    end = local.events()[-1]
    assert end.kind == "run.ended" and end.data == {**end.data, "status": "killed", "reason": "wrong config"}


async def test_step_limit_ends_the_run_as_limit(local):
    sup = local.supervisor(ScriptedAgent(plan()), limits=RunLimits(time_s=300, steps=2))
    assert await sup.run() == "limit"
    evs = local.events()
    assert evs[-1].data["reason"].startswith("steps limit reached")
    assert [e.data["level"] for e in evs if e.kind == "run.limit"] == ["reached"]


class RecordingAgent:
    """An agent that records what it is told and plays a fixed list of calls."""

    name = "recording"
    model = "none"

    def __init__(self, calls):
        self.calls = list(calls)
        self.seen: list[Observation] = []

    async def start(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    async def turn(self, obs: Observation) -> AgentTurn:
        self.seen.append(obs)
        if not self.calls:
            return AgentTurn(calls=[], done=True)
        return AgentTurn(calls=[self.calls.pop(0)])

    async def close(self) -> None:
        pass


async def test_message_reaches_the_agent_at_its_next_turn(local):
    agent = RecordingAgent([ToolCall("c1", "bash", {"command": "sleep 1"}),
                            ToolCall("c2", "bash", {"command": "echo hi"})])
    sup = local.supervisor(agent)
    runner = asyncio.create_task(sup.run())
    await wait_for(lambda: "tool.call" in local.kinds())
    await sup.control(cmd("message", text="try a smaller learning rate"))
    assert await runner == "failed"  # it never submits
    assert agent.seen[0].operator_messages == []
    assert agent.seen[1].operator_messages == ["try a smaller learning rate"]
    assert agent.seen[1].results[0].ok
    assert all(o.time_left_s > 0 for o in agent.seen)
    assert "operator.message" in local.kinds()
    assert "without submitting" in local.events()[-1].data["reason"]


async def test_approval_edit_and_reject(local):
    agent = RecordingAgent([ToolCall("c1", "bash", {"command": "echo original"}),
                            ToolCall("c2", "bash", {"command": "rm -rf model"})])
    sup = local.supervisor(agent, approval=True)
    runner = asyncio.create_task(sup.run())
    await wait_for(lambda: "tool.approval" in local.kinds())
    await sup.control(cmd("approve", call_id="c1", args={"command": "echo edited"}))
    await wait_for(lambda: local.kinds().count("tool.approval") >= 3)
    await sup.control(ControlCommand(run="tiny-1", action="reject", operator="ops",
                                     reason="never delete the model", args={"call_id": "c2"}))
    await runner
    results = [e.data for e in local.events() if e.kind == "tool.result"]
    assert "edited" in results[0]["output"] and "original" not in results[0]["output"]
    assert results[1]["ok"] is False and results[1]["rejected"] is True
    assert "never delete the model" in agent.seen[2].results[0].output


@pytest.mark.docker
async def test_docker_run_freeze_pauses_the_container(docker_h):
    run = f"tiny-d{uuid.uuid4().hex[:6]}"
    sup = docker_h.supervisor(ScriptedAgent(plan(steps=30, delay=0.1)), run=run)
    runner = asyncio.create_task(sup.run())
    await wait_for(lambda: "metric" in docker_h.kinds(run), 120)
    await sup.control(cmd("freeze", run=run))
    name = sup.sandbox.id
    state = subprocess.run(["docker", "inspect", "-f", "{{.State.Paused}}", name],
                           capture_output=True, text=True).stdout.strip()
    assert state == "true"
    await asyncio.sleep(1.0)  # lines written just before the freeze may still be read once
    frozen_metrics = docker_h.kinds(run).count("metric")
    await asyncio.sleep(1.5)
    assert docker_h.kinds(run).count("metric") == frozen_metrics  # training stopped
    await sup.control(cmd("resume", run=run))
    state = subprocess.run(["docker", "inspect", "-f", "{{.State.Paused}}", name],
                           capture_output=True, text=True).stdout.strip()
    assert state == "false"
    assert await runner == "succeeded"
    evs = docker_h.events(run)
    assert next(e for e in evs if e.kind == "sandbox.started").data["isolated"] is True
    assert "run.warning" not in [e.kind for e in evs]
    assert next(e for e in evs if e.kind == "score").data["value"] > 0.5
    assert any(e.kind == "resource" for e in evs)


@pytest.mark.docker
async def test_a_container_that_dies_fails_the_run_with_the_reason(docker_h):
    run = f"tiny-x{uuid.uuid4().hex[:6]}"
    sup = docker_h.supervisor(ScriptedAgent(plan(steps=1000, delay=0.05)), run=run)
    runner = asyncio.create_task(sup.run())
    await wait_for(lambda: "metric" in docker_h.kinds(run), 120)
    subprocess.run(["docker", "kill", sup.sandbox.id], check=True, capture_output=True)
    assert await asyncio.wait_for(runner, 60) == "failed"
    assert "sandbox died" in docker_h.events(run)[-1].data["reason"]


@pytest.mark.docker
async def test_a_gpu_run_on_a_host_without_gpus_fails_clearly(docker_h):
    run = f"tiny-g{uuid.uuid4().hex[:6]}"
    agent = ScriptedAgent(plan())
    sup = RunSupervisor(
        RunRequest(run=run, task=task(), scale="full", agent_kind="scripted"),
        journal=docker_h.journal, publish=None, make_sandbox=docker_h.make_sandbox, agent=agent,
        workspace=docker_h.tmp / run / "workspace", runner_id="test", image=IMAGE)
    assert await asyncio.wait_for(sup.run(), 120) == "failed"
    end = docker_h.events(run)[-1]
    assert end.kind == "run.ended" and "GPU" in end.data["reason"], end.data
