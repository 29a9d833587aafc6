"""The Docker sandbox against a real engine and the real sandbox image."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runner.docker_sandbox import DockerSandbox, container_name
from runner.image import build_image
from runner.local_sandbox import LocalSandbox
from runner.metrics import parse_metrics_line
from runner.sandbox import (
    METRICS_FILE,
    GPUUnavailable,
    SandboxError,
    SandboxLimits,
    SandboxSpec,
)
from runner.sandbox_factory import SandboxUnavailable, create_sandbox, docker_available
from tests.conftest import until


@pytest.fixture(scope="session")
def sandbox_image(docker_client: Any) -> str:
    # Reused when the fingerprint matches, so only the first session ever builds.
    return build_image(log=lambda line: None, client=docker_client)


def _spec(workspace: Path, image: str, **kw: Any) -> SandboxSpec:
    return SandboxSpec(run=f"test-{uuid.uuid4().hex[:10]}", workspace=workspace, image=image, **kw)


@pytest.fixture
async def sandbox(tmp_path: Path, sandbox_image: str, docker_client: Any,
                  ) -> AsyncIterator[DockerSandbox]:
    sb = DockerSandbox(_spec(tmp_path / "ws", sandbox_image,
                             limits=SandboxLimits(cpus=1.5, memory_bytes=1024**3, pids=256),
                             env=(("MLRB_RUN", "r1"),)),
                       client=docker_client)
    await sb.start()
    yield sb
    await sb.stop()


def _inspect(docker_client: Any, sb: DockerSandbox) -> dict[str, Any]:
    return docker_client.api.inspect_container(sb.name)


async def test_container_is_locked_down(sandbox: DockerSandbox, docker_client: Any) -> None:
    res = await sandbox.exec(
        "id -u; id -g; ls /sys/class/net; grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status")
    assert res.exit_code == 0, res.output
    lines = res.output.split()
    assert lines[:3] == ["1000", "1000", "lo"]
    status = dict(zip(lines[3::2], lines[4::2], strict=True))
    assert status == {"CapPrm:": "0000000000000000", "CapEff:": "0000000000000000",
                      "NoNewPrivs:": "1"}
    net = await sandbox.exec(
        "python3 -c \"import socket; s=socket.socket(); s.settimeout(3); "
        "s.connect(('1.1.1.1', 53))\"", timeout_s=30)
    assert net.exit_code != 0
    assert "Network is unreachable" in net.output
    info = _inspect(docker_client, sandbox)
    host = info["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 256
    assert host["Memory"] == 1024**3
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Init"] is True
    assert info["Config"]["User"] == "1000:1000"
    assert info["Config"]["Labels"]["mlrb.run"] == sandbox.spec.run
    assert info["Name"] == "/" + container_name(sandbox.spec.run)


async def test_environment_holds_only_the_spec(tmp_path: Path, sandbox_image: str,
                                               docker_client: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-host-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    sb = DockerSandbox(_spec(tmp_path / "ws", sandbox_image, env=(("MLRB_TASK", "demo"),)),
                       client=docker_client)
    await sb.start()
    try:
        res = await sb.exec("env")
    finally:
        await sb.stop()
    env = dict(line.split("=", 1) for line in res.output.splitlines() if "=" in line)
    assert "ANTHROPIC_API_KEY" not in env and "OPENAI_API_KEY" not in env
    assert "host-secret" not in res.output
    assert env["MLRB_TASK"] == "demo"
    assert env["MLRB_METRICS_FILE"] == "/workspace/.mlrb/metrics.jsonl"
    assert env["HF_HUB_OFFLINE"] == "1"


async def test_workspace_is_shared_and_readonly_mounts_are_readonly(
        tmp_path: Path, sandbox_image: str, docker_client: Any) -> None:
    workspace, scorer = tmp_path / "ws", tmp_path / "scorer"
    workspace.mkdir()
    scorer.mkdir()
    (workspace / "starter.py").write_text("print('starter')\n")
    (scorer / "score.py").write_text("SECRET = 1\n")
    sb = DockerSandbox(_spec(workspace, sandbox_image, readonly_mounts=((scorer, "/scorer"),)),
                       client=docker_client)
    await sb.start()
    try:
        edit = await sb.exec("echo more >> starter.py && mkdir -p out && echo ok > out/a.txt")
        assert edit.exit_code == 0, edit.output
        cheat = await sb.exec("echo 'SECRET = 2' > /scorer/score.py")
        assert cheat.exit_code != 0
        assert "Read-only file system" in cheat.output
    finally:
        await sb.stop()
    assert (workspace / "starter.py").read_text() == "print('starter')\nmore\n"
    assert (workspace / "out" / "a.txt").stat().st_uid == 1000
    assert (scorer / "score.py").read_text() == "SECRET = 1\n"


async def test_exec_streams_output_as_it_arrives(sandbox: DockerSandbox) -> None:
    chunks: list[tuple[str, str]] = []
    first_seen = asyncio.Event()

    def on_output(stream: str, text: str) -> None:
        chunks.append((stream, text))
        if "first" in "".join(t for _, t in chunks):
            first_seen.set()

    go = sandbox.spec.workspace / "go"
    task = asyncio.create_task(sandbox.exec(
        "echo first; echo warn >&2; while [ ! -e go ]; do sleep 0.05; done; echo second; exit 7",
        on_output=on_output, timeout_s=60))
    await asyncio.wait_for(first_seen.wait(), 30)
    assert not task.done()  # the command still waits: "first" came while it ran
    go.touch()
    res = await asyncio.wait_for(task, 30)
    assert res.exit_code == 7 and not res.timed_out and not res.truncated
    stdout = "".join(t for s, t in chunks if s == "stdout")
    assert stdout == "first\nsecond\n"
    assert "".join(t for s, t in chunks if s == "stderr") == "warn\n"
    assert res.output.index("first") < res.output.index("second")
    assert "warn" in res.output


async def test_exec_keeps_utf8_whole_and_runs_in_workdir(sandbox: DockerSandbox) -> None:
    res = await sandbox.exec("mkdir -p sub && cd sub && pwd && printf 'h\\xc3\\xa9llo \\xe2\\x9c\\x93\\n'")
    assert res.output == "/workspace/sub\nhéllo ✓\n"
    res = await sandbox.exec("pwd", workdir="/tmp")
    assert res.output == "/tmp\n"


async def test_timeout_kills_the_command(sandbox: DockerSandbox) -> None:
    res = await sandbox.exec("echo started; sleep 60", timeout_s=1)
    assert res.timed_out and res.exit_code is None
    assert res.output == "started\n"
    assert res.duration_s < 10
    # a command that ignores SIGTERM is killed after the grace period
    stubborn = await sandbox.exec("trap '' TERM; sleep 60; echo survived", timeout_s=1)
    assert stubborn.timed_out and stubborn.output == ""
    left = await sandbox.exec("cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "sleep 60" not in left.output


async def test_a_killed_command_is_an_exit_code_not_an_error(sandbox: DockerSandbox) -> None:
    res = await sandbox.exec("echo before; sh -c 'kill -9 $$'; exit $?")
    assert res.exit_code == 137 and not res.timed_out
    assert res.output.startswith("before\n") and "Killed" in res.output  # bash's own notice
    assert (await sandbox.status()).running


async def test_output_is_capped_with_head_and_tail(sandbox: DockerSandbox) -> None:
    seen: list[str] = []
    res = await sandbox.exec("seq 1 200000", output_cap=1000, on_output=lambda s, t: seen.append(t))
    assert res.exit_code == 0 and res.truncated
    assert res.output.startswith("1\n2\n3\n")
    assert res.output.endswith("199999\n200000\n")
    cut = int(res.output.split("[... ")[1].split(" bytes cut")[0])
    full = "".join(seen)  # the callback still saw every byte
    assert full == "".join(f"{i}\n" for i in range(1, 200001))
    assert len(res.output) < 1100
    assert cut == len(full) - 1000


async def test_cancelled_exec_kills_its_processes(sandbox: DockerSandbox) -> None:
    started = asyncio.Event()
    task = asyncio.create_task(sandbox.exec(
        "echo up; sleep 4321", on_output=lambda s, t: started.set()))
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    left = await sandbox.exec("cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "sleep 4321" not in left.output


async def test_freeze_pauses_the_container(sandbox: DockerSandbox, docker_client: Any) -> None:
    await sandbox.pause()
    assert _inspect(docker_client, sandbox)["State"]["Paused"] is True
    st = await sandbox.status()
    assert st.paused and not st.running
    await sandbox.pause()  # twice is fine
    with pytest.raises(SandboxError, match="paused"):
        await sandbox.exec("true")
    await sandbox.unpause()
    state = _inspect(docker_client, sandbox)["State"]
    assert state["Paused"] is False and state["Running"] is True
    assert (await sandbox.status()).running
    assert (await sandbox.exec("echo back")).output == "back\n"
    await sandbox.pause()
    await sandbox.stop()  # a frozen sandbox can be killed without resuming it first
    assert not docker_client.containers.list(all=True, filters={"name": sandbox.name})
    assert (await sandbox.status()).reason == "removed"


async def test_status_after_a_kill_from_outside(sandbox: DockerSandbox, docker_client: Any) -> None:
    assert (await sandbox.status()).running
    docker_client.containers.get(sandbox.name).kill()
    st = await sandbox.status()
    assert not st.running and not st.paused
    assert st.reason == "exited" and st.exit_code == 137
    with pytest.raises(SandboxError, match="not running"):
        await sandbox.exec("true")
    docker_client.containers.get(sandbox.name).remove(force=True)
    st = await sandbox.status()
    assert not st.running and st.reason == "removed"
    with pytest.raises(SandboxError, match="gone"):
        await sandbox.exec("true")
    await sandbox.stop()
    await sandbox.stop()


async def test_container_killed_during_exec_raises(sandbox: DockerSandbox,
                                                   docker_client: Any) -> None:
    started = asyncio.Event()
    task = asyncio.create_task(sandbox.exec("echo up; sleep 600",
                                            on_output=lambda s, t: started.set()))
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.to_thread(docker_client.containers.get(sandbox.name).kill)
    with pytest.raises(SandboxError, match="sandbox died while a command ran"):
        await asyncio.wait_for(task, 30)


async def test_stats_report_cpu_and_memory(sandbox: DockerSandbox) -> None:
    busy = asyncio.create_task(sandbox.exec(
        "python3 -c 'import time; x=bytearray(64<<20); t=time.time()\nwhile time.time()-t<20: pass'",
        timeout_s=30))
    await sandbox.exec("while ! grep -q python3 /proc/[0-9]*/cmdline 2>/dev/null; do sleep 0.05; done")
    try:
        async def spinning() -> dict[str, Any] | None:
            sample = await sandbox.stats()
            return sample if (sample["cpu_pct"] or 0) > 20 else None

        # samples stream about once a second: wait for one taken while the loop spins
        sample = await until(spinning, "a stats sample taken while the loop spins", timeout=20,
                             interval=0.1)
    finally:
        busy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await busy
    assert sample["cpu_limit"] == 1.5
    assert sample["mem_limit"] == 1024**3
    assert isinstance(sample["cpu_pct"], float) and sample["cpu_pct"] > 20
    assert isinstance(sample["mem_bytes"], int) and sample["mem_bytes"] > 32 << 20


async def test_torch_trains_and_metrics_reach_the_host(sandbox: DockerSandbox) -> None:
    script = sandbox.spec.workspace / "train.py"
    script.write_text(
        "import torch\n"
        "from mlrb_metrics import log\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(256, 8); y = x @ torch.randn(8, 1)\n"
        "model = torch.nn.Linear(8, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for step in range(1, 6):\n"
        "    loss = torch.nn.functional.mse_loss(model(x), y)\n"
        "    opt.zero_grad(); loss.backward(); opt.step()\n"
        "    log(step=step, loss=loss, lr=0.1, bad=float('nan'), text='x')\n"
        "print('done')\n")
    res = await sandbox.exec("python3 train.py", timeout_s=300)
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("done")
    lines = (sandbox.spec.workspace / METRICS_FILE).read_text().splitlines()
    parsed = [parse_metrics_line(line) for line in lines]
    assert [p["step"] for p in parsed if p] == [1, 2, 3, 4, 5]
    losses = [p["values"]["loss"] for p in parsed if p]
    assert losses[-1] < losses[0]
    raw = json.loads(lines[0])
    assert set(raw) == {"ts", "step", "values"}
    assert set(raw["values"]) == {"loss", "lr"}  # nan and text were dropped, not fatal


async def test_gpu_request_without_gpu_runtime(tmp_path: Path, sandbox_image: str,
                                               docker_client: Any) -> None:
    if "nvidia" in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("this engine has a GPU runtime")
    sb = DockerSandbox(_spec(tmp_path / "ws", sandbox_image, limits=SandboxLimits(gpus=1)),
                       client=docker_client)
    with pytest.raises(GPUUnavailable, match="needs 1 GPU but this Docker engine has no GPU runtime"):
        await sb.start()
    assert not docker_client.containers.list(all=True, filters={"name": sb.name})


async def test_missing_image_is_a_clear_error(tmp_path: Path, docker_client: Any) -> None:
    sb = DockerSandbox(_spec(tmp_path / "ws", "mlrb-no-such-image:never"), client=docker_client)
    with pytest.raises(SandboxError, match="mlrb-no-such-image:never is missing"):
        await sb.start()


def test_shell_argv(tmp_path: Path) -> None:
    sb = DockerSandbox(SandboxSpec(run="r-42", workspace=tmp_path))
    assert sb.shell_argv() == ["docker", "exec", "-it", "-u", "1000:1000", "-w", "/workspace",
                               "mlrb-r-42", "bash"]


# -- choosing a backend ----------------------------------------------------------------------

def test_docker_available_with_an_engine(docker_client: Any) -> None:
    ok, reason = docker_available()
    assert ok and reason == ""


def test_auto_picks_docker_when_an_engine_answers(tmp_path: Path, docker_client: Any) -> None:
    sb = create_sandbox(SandboxSpec(run="r", workspace=tmp_path))
    assert isinstance(sb, DockerSandbox) and sb.isolated and sb.backend == "docker"
    assert isinstance(create_sandbox(SandboxSpec(run="r", workspace=tmp_path), "local"), LocalSandbox)


def test_without_an_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    ok, reason = docker_available()
    assert not ok and reason.startswith("no Docker engine answers")
    sb = create_sandbox(SandboxSpec(run="r", workspace=tmp_path))
    assert isinstance(sb, LocalSandbox) and sb.isolated is False
    with pytest.raises(SandboxUnavailable, match="docker sandbox was asked for but no Docker engine"):
        create_sandbox(SandboxSpec(run="r", workspace=tmp_path), "docker")
    with pytest.raises(SandboxUnavailable, match="unknown sandbox backend"):
        create_sandbox(SandboxSpec(run="r", workspace=tmp_path), "vm")
