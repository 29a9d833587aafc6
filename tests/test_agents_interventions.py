"""Whole runs of LLM agents under operator intervention, in real Docker sandboxes.

The real anthropic and openai SDKs talk to the local wire-protocol server (tests/llm_server.py),
the run supervisor executes each tool call in a real container, and operators step in while
the run is live: provider errors mid-run, bad tool calls, limits reached, warned about and
raised, messages, approval with edits and rejections, and scoring on demand. Each test asserts
on what the model was sent next, on the journal, and on the run's end.

A run is held at a known point without sleeping: the model asks for a bash command that waits
for a file (`gate`), the test acts, then creates the file from the host (the workspace is
bind-mounted) and the command returns.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from runner.agents import make_agent
from runner.config import Config
from runner.control import ControlCommand
from runner.engine import Engine, Job
from runner.events import Event
from runner.journal import Journal, JournalReader
from runner.supervisor import RunLimits, RunRequest, RunSupervisor
from tasks.api import load_spec_file
from tests.conftest import require, until
from tests.conftest import tiny_train_script as _train_script
from tests.llm_server import LLMServer, Reply

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"
FIXTURE = FIXTURE_TASKS / "tiny_train" / "task.toml"
IMAGE = "mlrb-sandbox:latest"
KEY = "sk-interventions-0123456789"
OPERATOR = "ana@ops"
PROVIDERS = ["anthropic", "openai"]

pytestmark = pytest.mark.docker


def gate(name: str) -> Reply:
    """A bash call that returns once the test releases it (see `release`)."""
    cmd = f"while [ ! -e /workspace/.go-{name} ]; do sleep 0.05; done; echo released {name}"
    return Reply.call("bash", {"command": cmd, "timeout_s": 120})


def release(workspace: Path, name: str) -> None:
    (workspace / f".go-{name}").touch()


def echo(word: str) -> Reply:
    return Reply.call("bash", {"command": f"echo {word}"})


class Watch:
    """Every published event, and futures that resolve when a matching one arrives."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def feed(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    async def wait(self, kind: str, run: str | None = None, timeout: float = 90,
                   after_seq: int = 0, **match: Any) -> Event:
        """The first event of `kind` (of `run`, after `after_seq`) whose data has `match`."""

        def pred(ev: Event) -> bool:
            return (ev.kind == kind and (run is None or ev.run == run) and ev.seq > after_seq
                    and all(ev.data.get(k) == v for k, v in match.items()))

        return await until(lambda: next((ev for ev in self.events if pred(ev)), None),
                           f"a {kind} event of {run or 'any run'} after seq {after_seq} with {match}",
                           timeout=timeout)


def command(run: str, action: str, reason: str = "", **args: Any) -> ControlCommand:
    return ControlCommand(run=run, action=action, operator=OPERATOR, reason=reason, args=args)


def tool_results(provider: str, body: dict[str, Any]) -> list[tuple[str, bool]]:
    """The tool results in the newest turn of a request body: (content, is_error)."""
    msgs = body["messages"]
    if provider == "anthropic":
        return [(b["content"], bool(b.get("is_error"))) for b in msgs[-1]["content"]
                if b.get("type") == "tool_result"]
    out: list[tuple[str, bool]] = []
    i = len(msgs) - 1
    while i >= 0 and msgs[i]["role"] != "assistant":
        if msgs[i]["role"] == "tool":
            out.insert(0, (msgs[i]["content"], msgs[i]["content"].startswith("[error]")))
        i -= 1
    return out


def newest_user_text(body: dict[str, Any]) -> str:
    """Everything the newest turn says to the model besides tool results."""
    msgs = body["messages"]
    texts: list[str] = []
    for m in reversed(msgs):
        if m["role"] == "assistant":
            break
        content = m["content"]
        if isinstance(content, str):
            if m["role"] == "user":
                texts.append(content)
        else:
            texts.extend(b.get("text", "") for b in content if b.get("type") == "text")
    return "\n".join(reversed(texts))


class Rig:
    """A journal, a Docker sandbox factory and a watch, for supervisors run in this process."""

    def __init__(self, tmp: Path, docker_client: Any) -> None:
        self.tmp = tmp
        self.client = docker_client
        self.journal = Journal(tmp / "j.db")
        self.watch = Watch()

    def supervisor(self, provider: str, srv: LLMServer, run: str, limits: RunLimits,
                   approval: bool = False) -> RunSupervisor:
        from runner.docker_sandbox import DockerSandbox

        base_url = srv.url if provider == "anthropic" else srv.openai_url
        agent = make_agent(provider, None, {"base_url": base_url, "api_key": KEY,
                                            "backoff_s": 0.01, "max_retries": 3})
        return RunSupervisor(
            RunRequest(run=run, task=load_spec_file(FIXTURE), scale="smoke", agent_kind=provider,
                       limits=limits, approval=approval),
            journal=self.journal, publish=self.watch.feed,
            make_sandbox=lambda spec: DockerSandbox(spec, self.client),
            agent=agent, workspace=self.tmp / run / "workspace", runner_id="test", image=IMAGE)

    def reader(self) -> JournalReader:
        return JournalReader(self.tmp / "j.db")

    def events(self, run: str) -> list[Event]:
        r = self.reader()
        try:
            return r.events(run, 0, 100_000)
        finally:
            r.close()


@pytest.fixture
def rig(tmp_path: Path, docker_client: Any, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    import docker

    try:
        docker_client.images.get(IMAGE)
        have = True
    except docker.errors.ImageNotFound:
        have = False
    require(have, f"the sandbox image {IMAGE}")
    # The environment would win over the test's endpoint and key.
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    r = Rig(tmp_path, docker_client)
    yield r
    r.journal.close()


def _ids(provider: str) -> str:
    return f"{provider}-{uuid.uuid4().hex[:4]}"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rate_limit_and_server_error_mid_run_are_retried_and_recorded(
        provider: str, rig: Rig) -> None:
    run = _ids(provider)
    with LLMServer() as srv:
        srv.script(Reply.error(429, "slow down", retry_after=0), Reply.error(429, retry_after_ms=10),
                   echo("first"), Reply.error(500, "upstream broke"), echo("second"))
        sup = rig.supervisor(provider, srv, run, RunLimits(time_s=300, steps=2))
        status = await sup.run()
    assert status == "limit", sup.end_reason
    assert srv.remaining == 0 and srv.refusals == []
    evs = rig.events(run)
    errors = [(e.data["error"], e.data["attempt"], e.data["retrying"], e.data["status"], e.data["step"])
              for e in evs if e.kind == "agent.error"]
    assert errors == [("rate_limit", 1, True, 429, 1), ("rate_limit", 2, True, 429, 1),
                      ("server_error", 1, True, 500, 2)]
    outputs = [e.data["output"].strip() for e in evs if e.kind == "tool.result"]
    assert outputs == ["first", "second"]
    # the run went on: the request after the 500 carried the first command's result
    assert tool_results(provider, srv.requests[3].body) == [("first\n", False)]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_malformed_arguments_and_unknown_tool_come_back_as_tool_errors(
        provider: str, rig: Rig) -> None:
    run = _ids(provider)
    with LLMServer() as srv:
        srv.script(Reply.calls_(("fly_to", {"where": "moon"}), ("bash", '{"command": "ls'),
                                text="Trying two things."),
                   echo("recovered"))
        sup = rig.supervisor(provider, srv, run, RunLimits(time_s=300, steps=2))
        status = await sup.run()
    assert status == "limit", sup.end_reason
    assert srv.refusals == [] and len(srv.requests) == 2
    sent = tool_results(provider, srv.requests[1].body)
    assert len(sent) == 2 and all(is_error for _, is_error in sent)
    assert "unknown tool 'fly_to'" in sent[0][0]
    # OpenAI carries the broken JSON text; Anthropic's wire decodes it to no arguments at all
    bad_args = "not valid JSON" if provider == "openai" else "command: Field required"
    assert "invalid arguments for bash" in sent[1][0] and bad_args in sent[1][0]
    evs = rig.events(run)
    kinds = [e.data["error"] for e in evs if e.kind == "agent.error"]
    assert kinds == ["unknown_tool", "bad_tool_arguments" if provider == "openai"
                     else "invalid_tool_arguments"]
    results = [(e.data["name"], e.data["ok"]) for e in evs if e.kind == "tool.result"]
    assert results == [("fly_to", False), ("bash", False), ("bash", True)]


async def test_steps_limit_warns_at_80_percent_then_ends_the_run(rig: Rig) -> None:
    run = _ids("anthropic")
    with LLMServer() as srv:
        srv.script(*(echo(f"s{i}") for i in range(1, 6)))
        sup = rig.supervisor("anthropic", srv, run, RunLimits(time_s=300, steps=5))
        status = await sup.run()
    assert status == "limit"
    assert sup.end_reason == "steps limit reached (5 of 5)"
    evs = rig.events(run)
    limits = [(e.data["limit"], e.data["level"], e.data["fraction"]) for e in evs if e.kind == "run.limit"]
    assert limits == [("steps", "warning", 0.8), ("steps", "reached", 1.0)]
    notice = "Warning: you have used 80% of your steps limit."
    said = [newest_user_text(r.body) for r in srv.requests]
    assert [notice in s for s in said] == [False, False, False, False, True]
    ended = [e for e in evs if e.kind == "run.ended"][-1]
    assert ended.data["status"] == "limit" and ended.data["steps"] == 5
    r = rig.reader()
    try:
        row = r.get_run(run)
    finally:
        r.close()
    assert row is not None and row["status"] == "limit"


async def test_cost_limit_from_usage_ends_the_run(rig: Rig) -> None:
    run = _ids("openai")
    with LLMServer() as srv:
        srv.script(echo("one"), echo("never asked for"))
        sup = rig.supervisor("openai", srv, run, RunLimits(time_s=300, cost_usd=1e-5))
        status = await sup.run()
    assert status == "limit" and sup.end_reason.startswith("cost_usd limit reached")
    assert len(srv.requests) == 1
    evs = rig.events(run)
    usage = [e.data for e in evs if e.kind == "usage"]
    reached = [e.data for e in evs if e.kind == "run.limit" and e.data["level"] == "reached"]
    assert reached[0]["limit"] == "cost_usd" and reached[0]["used"] == pytest.approx(usage[0]["cost_usd"], abs=1e-4)


async def test_operator_raises_a_limit_mid_run_and_the_run_goes_on(rig: Rig) -> None:
    run = _ids("openai")
    with LLMServer() as srv:
        srv.script(gate("a"), echo("two"), echo("three"))
        sup = rig.supervisor("openai", srv, run, RunLimits(time_s=300, steps=2))
        task = asyncio.create_task(sup.run())
        await rig.watch.wait("tool.call", run, name="bash")
        await sup.control(command(run, "limit", "the model is close to done", name="steps", value=3))
        ack = await rig.watch.wait("control.ack", run, action="limit")
        release(sup.workspace, "a")
        status = await asyncio.wait_for(task, 120)
    assert ack.data["accepted"] is True and "steps limit is now 3" in ack.data["reason"]
    assert status == "limit" and sup.end_reason == "steps limit reached (3 of 3)"
    assert len(srv.requests) == 3
    r = rig.reader()
    try:
        audit = r.interventions(run)
    finally:
        r.close()
    assert [(a["action"], a["operator"], a["reason"]) for a in audit] == [
        ("limit", OPERATOR, "the model is close to done")]
    detail = json.loads(audit[0]["detail"])
    assert (detail["name"], detail["value"]) == ("steps", 3)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_operator_message_changes_what_the_model_is_sent_next(provider: str, rig: Rig) -> None:
    run = _ids(provider)
    text = "Use a learning rate of 0.05 from now on."
    with LLMServer() as srv:
        srv.script(gate("m"), echo("ok"))
        sup = rig.supervisor(provider, srv, run, RunLimits(time_s=300, steps=2))
        task = asyncio.create_task(sup.run())
        await rig.watch.wait("tool.call", run, name="bash")
        await sup.control(command(run, "message", "steer it", text=text))
        release(sup.workspace, "m")
        status = await asyncio.wait_for(task, 120)
    assert status == "limit"
    first, second = (json.dumps(r.body) for r in srv.requests)
    assert text not in first
    assert f"[Message from the human operator]\n{text}" in newest_user_text(srv.requests[1].body)
    assert tool_results(provider, srv.requests[1].body)[0][0].startswith("released m")
    evs = rig.events(run)
    op = [e.data for e in evs if e.kind == "operator.message"]
    assert op == [{**op[0], "operator": OPERATOR, "text": text, "reason": "steer it"}]


async def test_approval_edits_and_rejections_while_another_run_goes_on(
        tmp_path: Path, rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    watch = rig.watch

    class WatchedEngine(Engine):
        def _publish(self, events: Sequence[Event]) -> None:
            super()._publish(events)
            watch.feed(events)

    with LLMServer() as held_srv, LLMServer() as free_srv:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", held_srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", free_srv.openai_url)
        monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
        held_srv.script(Reply.call("bash", {"command": "echo the model's command"}),
                        Reply.call("bash", {"command": "rm -rf /workspace/*"}),
                        echo("last"))
        free_srv.script(echo("a"), echo("b"))
        cfg = Config(home=tmp_path / "home", backend="docker", image=IMAGE, max_runs=2,
                     providers={"anthropic": {"backoff_s": 0.01}, "openai": {"backoff_s": 0.01}})
        engine = WatchedEngine(cfg, use_bus=False, runner_id="test")
        await engine.start()
        try:
            held = await engine.submit(Job(task="tiny_train", agent="anthropic", approval=True,
                                           limits={"steps": 3}))
            free = await engine.submit(Job(task="tiny_train", agent="openai", limits={"steps": 2}))
            sup = engine.supervisors[held]
            pending = await watch.wait("tool.approval", held, state="pending")
            # the other run is not blocked by this one's wait: it runs to its end meanwhile
            assert (await engine.wait([free]))[free] == "limit"
            assert not sup.ended and sup.status == "running"
            edited = {"command": "echo edited by the operator"}
            await sup.control(command(held, "approve", "safer", call_id=pending.data["id"], args=edited))
            second = await watch.wait("tool.approval", held, after_seq=pending.seq,
                                      state="pending")
            await sup.control(command(held, "reject", "do not delete the workspace",
                                      call_id=second.data["id"]))
            third = await watch.wait("tool.approval", held, after_seq=second.seq,
                                     state="pending")
            await sup.control(command(held, "approval_mode", "enough", on=False))
            assert third.data["name"] == "bash"
            status = (await engine.wait([held]))[held]
        finally:
            await engine.stop()
    assert status == "limit"
    bodies = [r.body for r in held_srv.requests]
    # the model learns that its call was edited, and what ran
    ran = ('[The operator edited this call before it ran; it ran with arguments '
           '{"command": "echo edited by the operator"}]\nedited by the operator\n')
    assert tool_results("anthropic", bodies[1]) == [(ran, False)]
    assert tool_results("anthropic", bodies[2]) == [
        ("The operator rejected this call: do not delete the workspace", True)]
    r = JournalReader(cfg.db_path)
    try:
        evs = r.events(held, 0, 100_000)
        audit = r.interventions(held)
    finally:
        r.close()
    states = [(e.data["state"], e.data.get("edited")) for e in evs if e.kind == "tool.approval"]
    assert states == [("pending", None), ("approved", True), ("pending", None), ("rejected", False),
                      ("pending", None)]
    assert [(a["action"], a["operator"], a["reason"]) for a in audit] == [
        ("approve", OPERATOR, "safer"), ("reject", OPERATOR, "do not delete the workspace"),
        ("approval_mode", OPERATOR, "enough")]
    calls = [e.data["args"]["command"] for e in evs if e.kind == "tool.call"]
    assert calls[1] == "rm -rf /workspace/*"
    results = [e.data["output"] for e in evs if e.kind == "tool.result"]
    assert results[0] == ran and results[2] == "last\n"


async def test_score_now_is_scored_off_the_clock(rig: Rig) -> None:
    run = _ids("anthropic")
    with LLMServer() as srv:
        srv.script(Reply.call("write_file", {"path": "train.py", "content": _train_script()}),
                   Reply.call("bash", {"command": "python3 train.py 10", "timeout_s": 120}),
                   gate("s"))
        sup = rig.supervisor("anthropic", srv, run, RunLimits(time_s=300, steps=3))
        task = asyncio.create_task(sup.run())
        await rig.watch.wait("tool.call", run, name="bash", args={
            "command": gate("s").calls[0][1]["command"], "timeout_s": 120})
        before_clock, before_wall = sup.clock.elapsed, time.monotonic()
        await sup.control(command(run, "score", "how good is it now"))
        score = await rig.watch.wait("score", run)
        after_clock, after_wall = sup.clock.elapsed, time.monotonic()
        release(sup.workspace, "s")
        status = await asyncio.wait_for(task, 120)
    assert status == "limit"
    assert score.data["final"] is False and score.data["error"] is None
    assert score.data["value"] is not None and 0 < score.data["value"] <= 1
    scoring_wall = after_wall - before_wall
    grew = after_clock - before_clock
    # a scorer in its own container takes seconds; the run's clock stood still meanwhile
    assert scoring_wall > 0.5, scoring_wall
    assert grew < 0.2 * scoring_wall, (grew, scoring_wall)
    r = rig.reader()
    try:
        scores = r.scores(run)
    finally:
        r.close()
    assert [(s["final"], s["value"]) for s in scores] == [(0, score.data["value"])]


def test_cli_submit_with_an_llm_agent_against_the_daemon(tmp_path: Path, docker_client: Any) -> None:
    import subprocess
    import sys

    require(Path("/usr/sbin/mosquitto").exists(), "mosquitto")
    from tests.test_cli import runs_json, wait_status

    with LLMServer() as srv:
        srv.script(echo("from-the-daemon"), echo("again"))
        env = {**os.environ, "MLRB_HOME": str(tmp_path / "home"), "MLRB_TASKS_PATH": str(FIXTURE_TASKS),
               "MLRB_OPERATOR": OPERATOR, "PYTHONUNBUFFERED": "1",
               "ANTHROPIC_BASE_URL": srv.url, "ANTHROPIC_API_KEY": KEY}
        env.pop("MLRB_BUS_URL", None)

        def mlrb(*args: str) -> str:
            proc = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", *args], env=env,
                                  capture_output=True, text=True, timeout=180,
                                  stdin=subprocess.DEVNULL)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return proc.stdout

        try:
            mlrb("up")
            run = mlrb("submit", "tiny_train", "--agent", "anthropic", "--model", "claude-test-x",
                       "--limit", "steps=2").strip()
            row = wait_status(env, run, {"limit"})
        finally:
            subprocess.run([sys.executable, "-m", "mlrb_tui.cli", "down"], env=env,
                           capture_output=True, timeout=120)
    assert row["reason"] == "steps limit reached (2 of 2)"
    assert [r.body["model"] for r in srv.requests] == ["claude-test-x", "claude-test-x"]
    # the daemon's environment carried the key to the provider (as x-api-key or a bearer token)
    assert all(KEY in (r.headers.get("x-api-key", ""), r.headers.get("authorization", "")
                       .removeprefix("Bearer ")) for r in srv.requests)
    assert tool_results("anthropic", srv.requests[1].body) == [("from-the-daemon\n", False)]
    assert runs_json(env)[run]["status"] == "limit"
    r = JournalReader(tmp_path / "home" / "mlrb.db")
    try:
        evs = r.events(run, 0, 100_000)
    finally:
        r.close()
    created = [e.data for e in evs if e.kind == "run.created"][0]
    assert created["agent"] == "anthropic" and created["model"] == "claude-test-x"
    usage = [e.data for e in evs if e.kind == "usage"]
    assert len(usage) == 2 and not any(u["priced"] for u in usage)  # an unknown model has no price
    assert KEY not in json.dumps([e.to_dict() for e in evs])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_kill_while_the_model_is_thinking_ends_the_run_at_once(provider: str, rig: Rig) -> None:
    run = _ids(provider)
    with LLMServer() as srv:
        srv.script(echo("one"), Reply(text="a very slow answer", delay_s=60))
        sup = rig.supervisor(provider, srv, run, RunLimits(time_s=300, steps=5))
        # know when the slow request is in the server's hands (it answers from a thread)
        loop, asked = asyncio.get_running_loop(), asyncio.Event()
        next_reply = srv.next_reply

        def next_reply_and_tell() -> Reply:
            reply = next_reply()
            if reply.delay_s:
                loop.call_soon_threadsafe(asked.set)
            return reply

        srv.next_reply = next_reply_and_tell  # type: ignore[method-assign]
        task = asyncio.create_task(sup.run())
        await asyncio.wait_for(asked.wait(), 60)
        started = time.monotonic()
        await sup.control(command(run, "kill", "stuck on the provider"))
        status = await asyncio.wait_for(task, 30)
        took = time.monotonic() - started
    assert status == "killed" and sup.end_reason == "stuck on the provider"
    assert took < 15, took  # not the provider's 60 s
    evs = rig.events(run)
    assert evs[-1].kind == "run.ended" and evs[-1].data["steps"] == 2
    assert not any(e.kind == "agent.message" and "slow answer" in e.data.get("text", "") for e in evs)


async def test_a_provider_that_keeps_refusing_fails_the_run_with_the_reason(rig: Rig) -> None:
    run = _ids("openai")
    with LLMServer() as srv:
        srv.script(*(Reply.error(401, "Incorrect API key provided") for _ in range(5)))
        sup = rig.supervisor("openai", srv, run, RunLimits(time_s=300, steps=20))
        status = await sup.run()
    assert status == "failed"
    assert sup.end_reason.startswith("the agent made no progress in 5 turns: [LLM call failed: auth;")
    assert "Incorrect API key provided" in sup.end_reason
    assert srv.remaining == 0 and len(srv.requests) == 5  # an auth error is not retried
    evs = rig.events(run)
    errors = [(e.data["error"], e.data["attempt"], e.data["retrying"]) for e in evs if e.kind == "agent.error"]
    assert errors == [("auth", 1, False)] * 5
    assert not any(KEY in json.dumps(e.to_dict()) for e in evs)
