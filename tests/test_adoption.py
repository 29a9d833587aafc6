"""Runs that outlive their runner: commands as jobs, the agent's conversation rebuilt from the
journal, and a new runner adopting the runs an earlier one left (after `kill -9`, or an
upgrade with `mlrb down --keep-runs`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.agents.base import AgentContext, Observation, ToolResult, TurnRecord
from runner.config import Config
from runner.engine import Engine
from runner.events import EventFactory
from runner.jobs import JOBS_DIR, JobFiles, follow_job, run_job
from runner.journal import Journal, JournalReader
from runner.local_sandbox import LocalSandbox
from runner.sandbox import SandboxSpec
from runner.tools import TOOL_SPECS
from tests.conftest import alive, pids_naming, require, until, until_blocking
from tests.conftest import journal_events as _events
from tests.conftest import tiny_train_script as _train_script
from tests.llm_server import LLMServer, Reply

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"
KEY = "sk-adopt-SECRET-0123456789"


# -- jobs ----------------------------------------------------------------------------------------
@pytest.fixture
async def local_sb(tmp_path: Path):  # type: ignore[no-untyped-def]
    ws = tmp_path / "ws"
    ws.mkdir()
    sb = LocalSandbox(SandboxSpec(run="jobs", workspace=ws))
    await sb.start()
    yield sb
    await sb.stop()


async def test_a_job_keeps_running_when_its_follower_is_cancelled_and_is_followed_on(local_sb) -> None:
    seen: list[str] = []
    task = asyncio.create_task(run_job(
        local_sb, "c1", "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.2; done; exit 7",
        timeout_s=60, output_cap=10_000, on_output=lambda s, t: seen.append(t),
        keep_on_cancel=lambda: True))
    await until(lambda: "line2" in "".join(seen), "two lines", timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    before = "".join(seen)
    offsets: list[int] = []
    rest: list[str] = []
    res = await follow_job(local_sb, "c1", timeout_s=60, output_cap=10_000, skip=len(before.encode()),
                           on_output=lambda s, t: rest.append(t), on_offset=offsets.append)
    assert res.exit_code == 7 and not res.timed_out
    assert res.output == "".join(f"line{i}\n" for i in range(1, 7))  # the whole output, once
    assert before + "".join(rest) == res.output  # nothing handed on twice, nothing missed
    assert offsets[-1] == len(res.output.encode())


async def test_a_cancelled_job_is_killed_unless_it_is_kept(local_sb) -> None:
    task = asyncio.create_task(run_job(local_sb, "c2", "sleep 30", timeout_s=60, output_cap=100))
    group = await until(JobFiles(local_sb.workspace_host, "c2").pid, "the job's pid", timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: local_sb.job_alive(group) is False, "the job's end", timeout=15)


async def test_a_job_times_out_and_a_planted_link_reads_nothing_of_the_host(local_sb) -> None:
    res = await run_job(local_sb, "c3", "sleep 10", timeout_s=0.5, output_cap=100)
    assert res.timed_out and res.exit_code is None
    # the agent replaces its job's output file with a link to a host file
    job = local_sb.workspace_host / JOBS_DIR / "c4"
    res = await run_job(local_sb, "c4", f"rm -f {job}/out; ln -s /etc/passwd {job}/out; sleep 0.3",
                        timeout_s=30, output_cap=10_000)
    assert res.exit_code == 0 and "root:" not in res.output


# -- the conversation rebuilt from the journal ----------------------------------------------------
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_an_agent_rebuilt_from_its_turns_has_the_same_conversation(provider: str) -> None:
    from runner.agents import make_agent

    async def emit(kind: str, data: dict[str, Any]) -> None:
        return None

    with LLMServer() as srv:
        srv.script(
            Reply.call("bash", {"command": "ls"}, text="Looking around."),
            Reply.say("thinking without a tool"),
            Reply.error(500),
            Reply.calls_(("write_file", {"path": "a.py", "content": "x" * 3000}), ("bash", "{not json")),
            Reply.call("read_file", {"path": "a.py"}),
        )
        url = srv.url if provider == "anthropic" else srv.openai_url
        opts = {"base_url": url, "backoff_s": 0.01, "api_key": KEY, "max_retries": 0,
                "context_window": 4000, "max_tokens": 500}
        first = make_agent(provider, None, opts)
        ctx = AgentContext(run="r", task_prompt="Train a model.", tools=TOOL_SPECS, emit=emit,
                           time_limit_s=3600)
        await first.start(ctx)
        records: list[TurnRecord] = []
        results: list[ToolResult] = []
        for step in range(1, 6):
            obs = Observation(step, 3600 - step * 60, results, [f"note {step}"] if step == 2 else [],
                              ["Warning: you have used 80% of your steps limit."] if step == 4 else [])
            turn = await first.turn(obs)
            records.append(TurnRecord(obs, turn))
            results = [ToolResult(c.id, c.name, ok=True, output=f"out of {c.name} " + "y" * 1500)
                       for c in turn.calls]
        # the state recorded with each turn survives the journal's JSON
        records = [TurnRecord(r.obs, type(r.turn)(r.turn.calls, r.turn.text, r.turn.done,
                                                  json.loads(json.dumps(r.turn.state))))
                   for r in records]
        second = make_agent(provider, None, opts)
        await second.resume(ctx, records)
        try:
            assert second.history == first.history  # type: ignore[attr-defined]
            assert second.consecutive_failures == first.consecutive_failures  # type: ignore[attr-defined]
            assert second.totals == first.totals  # type: ignore[attr-defined]
            assert second._tokens_per_char == first._tokens_per_char  # type: ignore[attr-defined]
            assert first.history.dropped or any(  # type: ignore[attr-defined]
                r.output.startswith("[output elided") for ex in first.history.exchanges  # type: ignore[attr-defined]
                for r in ex.results or []), "the small window should have trimmed the history"
            # both send the same next request
            srv.script(Reply.say("a"), Reply.say("a"))
            nxt = Observation(6, 3000, results)
            await first.turn(nxt)
            await second.turn(nxt)
            a, b = srv.requests[-2].body, srv.requests[-1].body
            assert a == b
            assert srv.refusals == []
        finally:
            await first.close()
            await second.close()


# -- adoption by the engine -------------------------------------------------------------------------
def _write_runner_id(home: Path, rid: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "runner.id").write_text(rid + "\n")


@pytest.mark.docker
async def test_a_run_whose_sandbox_is_gone_fails_and_an_unowned_sandbox_is_stopped(tmp_path, docker_client,
                                                                                    monkeypatch) -> None:
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    home = tmp_path / "h"
    _write_runner_id(home, "host-abc")
    db = home / "mlrb.db"
    j = Journal(db)
    f = EventFactory("tiny_train-gone")
    j.write_sync([f.make("run.created", {"task": "tiny_train", "agent": "scripted", "scale": "smoke",
                                         "runner": "host-abc", "limits": {"time_s": 300}}),
                  f.make("sandbox.started", {"backend": "docker", "id": "mlrb-tiny_train-gone"}),
                  f.make("run.started", {"elapsed_s": 0.0})])
    j.close()
    ghost = docker_client.containers.run(
        "mlrb-sandbox:latest", ["sleep", "infinity"], detach=True, name="mlrb-ghost-run",
        labels={"mlrb.run": "ghost-run", "mlrb.journal": str(db.resolve())}, network_mode="none")
    try:
        engine = Engine(Config(home=home, backend="docker"), use_bus=False)
        await engine.start()
        try:
            assert engine.runner_id == "host-abc"
            assert engine.adoption["orphans"] == ["mlrb-ghost-run"]
            await asyncio.wait_for(engine.wait(["tiny_train-gone"]), 60)
        finally:
            await engine.stop()
        row = JournalReader(db).get_run("tiny_train-gone")
        assert row is not None and row["status"] == "failed"
        assert "sandbox is gone" in row["reason"], row["reason"]
        import docker

        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get("mlrb-ghost-run")
    finally:
        with pytest.raises(Exception):  # noqa: B017 - it is gone already, as it should be
            ghost.remove(force=True)


# -- the daemon killed mid-command, and upgraded ------------------------------------------------------
def _mlrb(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"mlrb {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _daemon_env(tmp_path: Path, srv: LLMServer, backend: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[sandbox]\nbackend = "{backend}"\n[providers.anthropic]\nbase_url = "{srv.url}"\n'
        'backoff_s = 0.01\n')
    env = {**os.environ, "MLRB_HOME": str(home), "MLRB_TASKS_PATH": str(FIXTURE_TASKS),
           "ANTHROPIC_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    env.pop("MLRB_BUS_URL", None)
    env.pop("MLRB_SANDBOX", None)
    return env


def _kinds(db: Path, run: str) -> list[str]:
    return [e.kind for e in _events(db, run)]




def _plain(value: Any) -> Any:
    """A request's content without its cache breakpoints."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _submit(env: dict[str, str]) -> str:
    run = _mlrb(env, "submit", "tiny_train", "--agent", "anthropic").stdout.strip().splitlines()[-1]
    assert run.startswith("tiny_train-"), run
    return run


def _check_the_run(db: Path, run: str, workspace: Path) -> list[Any]:
    evs = _events(db, run)
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1)), "the journal has a gap"
    ended = [e for e in evs if e.kind == "run.ended"]
    assert len(ended) == 1 and ended[0].data["status"] == "succeeded", ended
    assert any(e.kind == "run.adopted" for e in evs)
    # every metric step the sandbox logged to its metrics file is in the journal, once
    logged = [json.loads(line)["step"] for line in
              (workspace / ".mlrb" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    journaled = [e.data["step"] for e in evs if e.kind == "metric" and e.data.get("source") == "file"]
    assert journaled == logged and logged == list(range(1, len(logged) + 1))
    return evs


@pytest.mark.docker
def test_a_runner_killed_mid_command_is_adopted_and_the_run_succeeds(tmp_path, docker_client) -> None:
    require(Path("/usr/sbin/mosquitto").exists(), "mosquitto")
    with LLMServer() as srv:
        srv.script(
            Reply.call("write_file", {"path": "train.py", "content": _train_script()}),
            Reply.call("bash", {"command": "python3 train.py 60 0.1", "timeout_s": 300}),
            Reply.call("submit", {"path": "model", "summary": "linear fit"}),
        )
        env = _daemon_env(tmp_path, srv, "docker")
        home = Path(env["MLRB_HOME"])
        db = home / "mlrb.db"
        conf = str(home / "broker" / "mosquitto.conf")
        try:
            _mlrb(env, "up")
            first = json.loads((home / "daemon.json").read_text())
            run = _submit(env)
            workspace = home / "runs" / run / "workspace"
            until_blocking(lambda: sum(k == "metric" for k in _kinds(db, run)) >= 5,
                           "the training command to log metrics", timeout=180, interval=0.2)
            os.kill(first["pid"], signal.SIGKILL)
            until_blocking(lambda: not alive(first["pid"]) and not pids_naming(f"-c {conf}"),
                           "the daemon and its broker to be gone", timeout=20)
            # nobody watches, the training goes on in its container
            state = docker_client.containers.get(f"mlrb-{run}").attrs["State"]
            assert state["Running"], state
            lines = lambda: len((workspace / ".mlrb" / "metrics.jsonl").read_text().splitlines())  # noqa: E731
            n = lines()
            until_blocking(lambda: lines() > n + 5, "metrics written while no runner watched", timeout=60)
            up = _mlrb(env, "up").stdout
            assert f"adopted 1 live run(s): {run}" in up, up
            until_blocking(lambda: "run.ended" in _kinds(db, run), "the adopted run to end",
                           timeout=240, interval=0.5)
            evs = _check_the_run(db, run, workspace)
            adopted = next(e for e in evs if e.kind == "run.adopted")
            assert adopted.data["resumed_call"] and adopted.data["downtime_s"] > 0
            assert adopted.data["runner"] == first["runner_id"]  # the home's runner, the same id
            # the model saw the interrupted command's real result, in the same conversation
            assert srv.remaining == 0 and srv.refusals == [] and len(srv.requests) == 3
            last = json.dumps(srv.requests[2].body)
            assert "saved model/weights.pt" in last
            # the same conversation (the cache breakpoints move on with it, as they do every turn)
            assert _plain(srv.requests[2].body["messages"][:3]) == _plain(srv.requests[1].body["messages"][:3])
            results = [e.data for e in evs if e.kind == "tool.result"]
            assert [r["name"] for r in results] == ["write_file", "bash", "submit"]
            assert results[1]["ok"] and "step 60 loss" in results[1]["output"]
            assert any(e.kind == "score" for e in evs)
        finally:
            _mlrb(env, "down", check=False)
        # no container and no broker process is left over
        left = docker_client.containers.list(all=True, filters={"label": f"mlrb.journal={db.resolve()}"})
        assert left == []
        assert not pids_naming(f"-c {conf}")


def test_an_upgrade_keeps_the_runs_and_repeats_an_llm_call_in_flight(tmp_path) -> None:
    require(Path("/usr/sbin/mosquitto").exists(), "mosquitto")
    with LLMServer() as srv:
        srv.script(
            Reply.call("write_file", {"path": "train.py", "content": _train_script()}),
            Reply.call("bash", {"command": "python3 train.py 30 0.1", "timeout_s": 300}),
            # the runner stops while the model thinks about this one: it is asked again
            Reply(text="", calls=[("bash", {"command": "ls model"})], delay_s=4.0),
            Reply(text="", calls=[("bash", {"command": "ls model"})], delay_s=0.0),
            Reply.call("submit", {"path": "model", "summary": "linear fit"}),
        )
        env = _daemon_env(tmp_path, srv, "local")
        home = Path(env["MLRB_HOME"])
        db = home / "mlrb.db"
        try:
            _mlrb(env, "up")
            run = _submit(env)
            workspace = home / "runs" / run / "workspace"
            # first, the upgrade in the middle of a command
            until_blocking(lambda: sum(k == "metric" for k in _kinds(db, run)) >= 3,
                           "the training command to log metrics", timeout=120, interval=0.2)
            assert "its runs go on" in _mlrb(env, "down", "--keep-runs").stdout
            kinds = _kinds(db, run)
            assert kinds[-1] == "run.detached" and "run.ended" not in kinds
            assert f"adopted 1 live run(s): {run}" in _mlrb(env, "up").stdout
            # then in the middle of an LLM call
            until_blocking(lambda: len(srv.requests) >= 3, "the third LLM call", timeout=120, interval=0.1)
            out = _mlrb(env, "restart").stdout
            assert f"adopted 1 live run(s): {run}" in out, out + (home / "daemon.log").read_text()[-3000:]
            until_blocking(lambda: "run.ended" in _kinds(db, run), "the run to end", timeout=180,
                           interval=0.5)
            evs = _check_the_run(db, run, workspace)
            assert sum(e.kind == "run.detached" for e in evs) == 2
            assert sum(e.kind == "run.adopted" for e in evs) == 2
            assert srv.remaining == 0 and srv.refusals == [] and len(srv.requests) == 5
            # the call cut short was asked again, with the same conversation
            assert srv.requests[3].body == srv.requests[2].body
            results = [e.data for e in evs if e.kind == "tool.result"]
            assert [r["name"] for r in results] == ["write_file", "bash", "bash", "submit"]
            assert "weights.pt" in results[2]["output"]
        finally:
            _mlrb(env, "down", check=False)
        # the local sandbox's commands ended with the run
        assert not pids_naming(str(workspace))


def test_a_second_engine_on_a_home_adopts_nothing(tmp_path) -> None:
    home = tmp_path / "h"
    _write_runner_id(home, "host-1")

    async def both() -> tuple[str, str]:
        a = Engine(Config(home=home, backend="local"), use_bus=False)
        await a.start()
        try:
            b = Engine(Config(home=home, backend="local"), use_bus=False)
            await b.start()
            await b.stop()
            return a.runner_id, b.runner_id
        finally:
            await a.stop()

    first, second = asyncio.run(both())
    assert first == "host-1" and second != "host-1"
