"""Provider keys never reach a sandbox or the journal.

The keys sit in the host's environment, as in production, while an LLM agent's run is live
in a real Docker sandbox. The running container is searched everywhere a key could hide: its
configured environment (`docker inspect`), the environment of pid 1 and of a fresh
`docker exec`, every file under /workspace, /home, /tmp and /etc, the command line and
environment of every process, and the host's workspace folder. Then the journal: every event.
The local sandbox's environment is checked the same way. Each search carries a positive
control (something known to be there is found), so an unreadable place cannot pass as clean.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from runner.agents import make_agent
from runner.events import Event
from runner.journal import Journal
from runner.sandbox import SandboxSpec
from runner.supervisor import RunLimits, RunRequest, RunSupervisor
from tasks.api import load_spec_file
from tests.conftest import journal_events as _events
from tests.conftest import require
from tests.llm_server import LLMServer, Reply

FIXTURE = Path(__file__).parent / "fixtures" / "tasks" / "tiny_train" / "task.toml"
IMAGE = "mlrb-sandbox:latest"
KEYS = {"ANTHROPIC_API_KEY": "sk-ant-FAKE-7e1c9d0b-never-in-a-sandbox",
        "OPENAI_API_KEY": "sk-proj-FAKE-3f8a2c55-never-in-a-sandbox"}
# The middle of each key: a key cut or re-encoded in part is still found.
NEEDLES = [k[8:28] for k in KEYS.values()]

# Runs inside the container: reads every file under the roots and every process's command
# line and environment, and reports which needles (hex, comma-separated) it saw where,
# and how much it read.
SCAN = r"""
import json, os, sys
needles = [bytes.fromhex(n) for n in sys.argv[1].split(",")]
hits, files, procs, seen_env = [], 0, 0, []
for root in ("/workspace", "/home", "/tmp", "/etc"):
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            try:
                if not os.path.isfile(p) or os.path.islink(p):
                    continue
                with open(p, "rb") as f:
                    data = f.read(8 << 20)
            except OSError:
                continue
            files += 1
            hits += [p for x in needles if x in data]
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    for part in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{part}", "rb") as f:
                data = f.read()
        except OSError:
            continue
        procs += part == "environ"
        if part == "environ":
            seen_env.append(data.decode(errors="replace"))
        hits += [f"/proc/{pid}/{part}" for x in needles if x in data]
print(json.dumps({"hits": hits, "files": files, "environs": procs, "env": seen_env}))
"""


def gate_reply() -> Reply:
    return Reply.call("bash", {"command": "while [ ! -e /workspace/.go ]; do sleep 0.05; done; "
                                          "echo released", "timeout_s": 120})


def _has_key(text: str) -> bool:
    return any(n in text for n in NEEDLES) or any(k in text for k in KEYS.values())


@pytest.fixture
def host_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, key in KEYS.items():
        monkeypatch.setenv(var, key)
    for var in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.docker
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_no_provider_key_in_a_running_docker_sandbox_or_the_journal(
        provider: str, tmp_path: Path, docker_client: Any, host_keys: None) -> None:
    import docker

    try:
        docker_client.images.get(IMAGE)
        have = True
    except docker.errors.ImageNotFound:
        have = False
    require(have, f"the sandbox image {IMAGE}")
    from runner.docker_sandbox import DockerSandbox

    run = f"secrets-{provider}"
    seen: list[Event] = []
    called: asyncio.Event = asyncio.Event()

    def publish(events: Any) -> None:
        seen.extend(events)
        if any(e.kind == "tool.call" for e in events):
            called.set()

    with LLMServer() as srv:
        # the model also asks for the environment, so the key is not in what it reads back
        srv.script(gate_reply(), Reply.call("bash", {"command": "env; cat ~/.bashrc 2>/dev/null"}))
        base_url = srv.url if provider == "anthropic" else srv.openai_url
        agent = make_agent(provider, None, {"base_url": base_url, "backoff_s": 0.01})
        journal = Journal(tmp_path / "j.db")
        sup = RunSupervisor(
            RunRequest(run=run, task=load_spec_file(FIXTURE), scale="smoke", agent_kind=provider,
                       limits=RunLimits(time_s=300, steps=2)),
            journal=journal, publish=publish,
            make_sandbox=lambda spec: DockerSandbox(spec, docker_client),
            agent=agent, workspace=tmp_path / run / "workspace", runner_id="test", image=IMAGE)
        task = asyncio.create_task(sup.run())
        try:
            await asyncio.wait_for(called.wait(), 90)
            assert sup.sandbox is not None
            container = await asyncio.to_thread(docker_client.containers.get, sup.sandbox.id)

            # configured environment
            env_config = container.attrs["Config"]["Env"]
            assert f"MLRB_RUN={run}" in env_config
            assert not _has_key("\n".join(env_config)), env_config
            assert not _has_key(json.dumps(container.attrs))  # labels, command, mounts, all of it

            # environment of pid 1 and of a fresh exec
            def sh(cmd: str, user: str = "1000:1000") -> str:
                code, out = container.exec_run(["sh", "-c", cmd], user=user)
                assert code == 0, out
                return out.decode(errors="replace")

            pid1 = await asyncio.to_thread(sh, "tr '\\0' '\\n' < /proc/1/environ")
            fresh = await asyncio.to_thread(sh, "env")
            for text in (pid1, fresh):
                assert f"MLRB_RUN={run}" in text and not _has_key(text), text

            # every file and every process, as the sandbox user and as root
            # passed in hex, or the scan would find them on its own command line
            # A canary planted in /tmp shows the scan finds what is there.
            canary = "canary-5d1e0f"
            await asyncio.to_thread(sh, f"echo {canary} > /tmp/canary.txt")
            needles = ",".join(n.encode().hex() for n in [*NEEDLES, canary])
            scans = [json.loads(await asyncio.to_thread(sh, f"python3 -c '{SCAN}' '{needles}'", user))
                     for user in ("1000:1000", "0")]
            for scan in scans:
                assert scan["hits"] == ["/tmp/canary.txt"], scan["hits"]
                assert scan["files"] > 20
            # the sandbox user sees its own processes' environments, the gate command's among them
            assert scans[0]["environs"] >= 3
            assert all(f"MLRB_RUN={run}" in e for e in scans[0]["env"] if e)

            # the host's view of the workspace
            for p in sup.workspace.rglob("*"):
                if p.is_file() and not p.is_symlink():
                    assert not _has_key(p.read_bytes().decode(errors="replace")), p
        finally:
            (sup.workspace / ".go").touch()
            status = await asyncio.wait_for(task, 120)
            await agent.close()
            journal.close()

    assert status == "limit", sup.end_reason
    # positive control: the key was in use, on the host, for the provider
    key = KEYS[f"{provider.upper()}_API_KEY"]
    assert all(key in (r.headers.get("x-api-key", ""),
                       r.headers.get("authorization", "").removeprefix("Bearer "))
               for r in srv.requests)
    assert len(srv.requests) == 2
    evs = _events(tmp_path / "j.db", run)
    env_result = [e.data["output"] for e in evs if e.kind == "tool.result"][-1]
    assert f"MLRB_RUN={run}" in env_result  # the model did read the sandbox's environment
    for e in evs:
        assert not _has_key(json.dumps(e.to_dict())), e
    assert not _has_key(json.dumps([e.to_dict() for e in seen]))
    assert not _has_key(json.dumps([r.body for r in srv.requests]))


async def test_the_local_sandbox_environment_holds_no_provider_key(tmp_path: Path, host_keys: None) -> None:
    from runner.local_sandbox import LocalSandbox

    assert all(os.environ[var] == key for var, key in KEYS.items())
    ws = tmp_path / "workspace"
    ws.mkdir()
    sb = LocalSandbox(SandboxSpec(run="secrets-local", workspace=ws, env=(("MLRB_RUN", "secrets-local"),)))
    assert not (set(sb.env) & set(KEYS)) and not _has_key(json.dumps(sb.env))
    await sb.start()
    try:
        res = await sb.exec("env; tr '\\0' '\\n' < /proc/$$/environ; sh -c 'cat /proc/self/environ'",
                            timeout_s=30, output_cap=256 * 1024)
    finally:
        await sb.stop()
    assert res.exit_code == 0, res.output
    assert "MLRB_RUN=secrets-local" in res.output
    assert not _has_key(res.output), res.output


async def test_an_llm_run_in_the_local_sandbox_never_shows_the_key(tmp_path: Path, host_keys: None) -> None:
    from runner.local_sandbox import LocalSandbox

    run = "secrets-local-run"
    with LLMServer() as srv:
        srv.script(Reply.call("bash", {"command": "env; tr '\\0' '\\n' < /proc/$$/environ; "
                                                  "ps -eo args 2>/dev/null | head -50"}))
        agent = make_agent("anthropic", None, {"base_url": srv.url, "backoff_s": 0.01})
        journal = Journal(tmp_path / "j.db")
        try:
            sup = RunSupervisor(
                RunRequest(run=run, task=load_spec_file(FIXTURE), scale="smoke", agent_kind="anthropic",
                           limits=RunLimits(time_s=300, steps=1)),
                journal=journal, publish=None, make_sandbox=LocalSandbox, agent=agent,
                workspace=tmp_path / run / "workspace", runner_id="test")
            status = await sup.run()
        finally:
            await agent.close()
            journal.close()
    assert status == "limit", sup.end_reason
    assert srv.requests[0].headers.get("x-api-key") == KEYS["ANTHROPIC_API_KEY"] or \
        srv.requests[0].headers.get("authorization") == f"Bearer {KEYS['ANTHROPIC_API_KEY']}"
    evs = _events(tmp_path / "j.db", run)
    out = [e.data["output"] for e in evs if e.kind == "tool.result"][0]
    assert f"MLRB_RUN={run}" in out
    for e in evs:
        assert not _has_key(json.dumps(e.to_dict())), e
