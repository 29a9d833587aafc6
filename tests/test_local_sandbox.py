"""The local-process sandbox: real subprocesses, real signals."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from runner.local_sandbox import LocalSandbox
from runner.metrics import parse_metrics_line
from runner.sandbox import METRICS_FILE, SandboxError, SandboxLimits, SandboxSpec
from tests.conftest import until


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[LocalSandbox]:
    sb = LocalSandbox(SandboxSpec(run="local-1", workspace=tmp_path / "ws",
                                  limits=SandboxLimits(memory_bytes=256 * 1024**2),
                                  env=(("MLRB_TASK", "demo"),)))
    await sb.start()
    yield sb
    await sb.stop()


async def _wait_for_line(lines: asyncio.Queue[str], needle: str) -> None:
    def seen() -> bool:  # takes lines off the queue up to the first that has `needle`
        while not lines.empty():
            if needle in lines.get_nowait():
                return True
        return False

    await until(seen, f"a line with {needle!r}", timeout=30)


async def test_exec_streams_and_returns_the_exit_code(sandbox: LocalSandbox) -> None:
    chunks: list[tuple[str, str]] = []
    res = await sandbox.exec("echo out; echo err >&2; pwd; exit 5",
                             on_output=lambda s, t: chunks.append((s, t)))
    assert res.exit_code == 5 and not res.timed_out
    assert "".join(t for s, t in chunks if s == "stdout") == f"out\n{sandbox.cwd}\n"
    assert "".join(t for s, t in chunks if s == "stderr") == "err\n"
    assert (await sandbox.exec("pwd", workdir="/workspace/sub")).exit_code == 126  # no such dir
    (sandbox.cwd / "sub").mkdir()
    assert (await sandbox.exec("pwd", workdir="/workspace/sub")).output == f"{sandbox.cwd}/sub\n"


async def test_environment_is_clean(sandbox: LocalSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-host-secret")
    res = await sandbox.exec("env")
    env = dict(line.split("=", 1) for line in res.output.splitlines() if "=" in line)
    assert "ANTHROPIC_API_KEY" not in env
    assert "host-secret" not in res.output
    assert env["HOME"] == str(sandbox.cwd) == env["MLRB_WORKSPACE"]
    assert env["MLRB_METRICS_FILE"] == str(sandbox.cwd / METRICS_FILE)
    assert env["MLRB_TASK"] == "demo"
    assert set(env) - {"PWD", "SHLVL", "_"} == set(sandbox.env)


async def test_metrics_helper_is_importable(sandbox: LocalSandbox) -> None:
    res = await sandbox.exec("python3 -c 'from mlrb_metrics import log; log(step=2, loss=0.5)'")
    assert res.exit_code == 0, res.output
    line = (sandbox.cwd / METRICS_FILE).read_text().strip()
    assert parse_metrics_line(line) == {"step": 2, "values": {"loss": 0.5}}


async def test_memory_is_limited(sandbox: LocalSandbox) -> None:
    res = await sandbox.exec("python3 -c 'x = bytearray(3 << 30)'")
    assert res.exit_code != 0
    assert "MemoryError" in res.output


async def test_timeout_kills_the_process_group(sandbox: LocalSandbox) -> None:
    res = await sandbox.exec("sleep 7771 & echo started; sleep 60", timeout_s=1)
    assert res.timed_out and res.exit_code is None
    assert res.output == "started\n"
    assert not [p for p in psutil.process_iter(["cmdline"]) if "7771" in (p.info["cmdline"] or [])]
    stubborn = await sandbox.exec("trap '' TERM; sleep 60", timeout_s=0.5)
    assert stubborn.timed_out and stubborn.duration_s < 10


async def test_output_cap(sandbox: LocalSandbox) -> None:
    res = await sandbox.exec("seq 1 100000", output_cap=500)
    assert res.truncated and res.output.startswith("1\n2\n") and res.output.endswith("100000\n")
    assert "bytes cut ...]" in res.output


async def test_pause_stops_a_running_command(sandbox: LocalSandbox) -> None:
    lines: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(sandbox.exec(
        "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.02; done",
        timeout_s=60, on_output=lambda s, t: lines.put_nowait(t)))
    await _wait_for_line(lines, "tick")
    await sandbox.pause()
    assert (await sandbox.status()).paused
    shells = [psutil.Process(pgid) for pgid in sandbox._groups]
    assert shells and all(p.status() == psutil.STATUS_STOPPED for p in shells)
    with pytest.raises(SandboxError, match="paused"):
        await sandbox.exec("true")
    while not lines.empty():  # drop what was in flight when the group stopped
        lines.get_nowait()
    await sandbox.unpause()
    assert (await sandbox.status()).running
    await _wait_for_line(lines, "tick")  # it moves again
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sandbox._groups


async def test_stop_kills_the_process_group(sandbox: LocalSandbox) -> None:
    lines: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(sandbox.exec(
        "sleep 7772 & echo $!; wait", timeout_s=60, on_output=lambda s, t: lines.put_nowait(t)))
    child = int((await asyncio.wait_for(lines.get(), 30)).strip())
    assert psutil.pid_exists(child) and os.getpgid(child) in sandbox._groups
    sample = await sandbox.stats()
    assert sample["pids"] == 2 and isinstance(sample["mem_bytes"], int) and sample["mem_bytes"] > 0
    assert sample["mem_limit"] == 256 * 1024**2
    await sandbox.stop()
    with pytest.raises(SandboxError, match="sandbox died while a command ran"):
        await asyncio.wait_for(task, 30)
    proc = psutil.Process(child) if psutil.pid_exists(child) else None
    assert proc is None or proc.status() == psutil.STATUS_ZOMBIE
    st = await sandbox.status()
    assert not st.running and st.reason == "stopped"
    await sandbox.stop()  # twice is fine
    with pytest.raises(SandboxError, match="stopped"):
        await sandbox.exec("true")


def test_local_sandbox_says_it_is_not_isolated(tmp_path: Path) -> None:
    sb = LocalSandbox(SandboxSpec(run="r", workspace=tmp_path))
    assert sb.backend == "local" and sb.isolated is False
    assert sb.shell_argv() == ["bash"] and sb.cwd == tmp_path.resolve()
