"""Telemetry: the GPU sampler (through a stand-in NVML module that speaks pynvml's API and
raises its exceptions, and the real pynvml on a host without a GPU), process-to-run mapping
through crafted /proc files, the GPU allocator, the bounded window, and the Docker stats
stream of a real container feeding the supervisor's resource events."""

from __future__ import annotations

import asyncio
import sys
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.events import Event
from runner.gpu import (
    GpuAllocator,
    GpuRequestError,
    GpuSampler,
    GpuWatch,
    container_id_of,
    process_group_of,
    watch_for_sandbox,
)
from runner.telemetry import StatsStream, TelemetryWindow
from tests.conftest import describe, until, until_blocking

CID_A = "a1" * 32
CID_B = "b2" * 32


# -- a stand-in for pynvml -----------------------------------------------------------------
def fake_nvml(devices: list[dict[str, Any]], init_error: str | None = None) -> types.ModuleType:
    """A module with pynvml's names: NVMLError and its per-code subclasses, nvmlInit, device
    handles, utilisation/memory/power/temperature readers and the compute process list."""
    m = types.ModuleType("pynvml")

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(value)
            self.value = value

    m.NVMLError = NVMLError  # type: ignore[attr-defined]
    for name, code in (("NVMLError_LibraryNotFound", 12), ("NVMLError_DriverNotLoaded", 9),
                       ("NVMLError_NotSupported", 3), ("NVMLError_NoPermission", 4)):
        setattr(m, name, type(name, (NVMLError,), {"__str__": lambda self, n=name: n}))
        setattr(m, name.replace("NVMLError_", "CODE_"), code)
    m.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    m.calls = []  # type: ignore[attr-defined]
    m.shutdowns = 0  # type: ignore[attr-defined]

    def init() -> None:
        m.calls.append("init")  # type: ignore[attr-defined]
        if init_error:
            raise getattr(m, init_error)(0)

    def shutdown() -> None:
        m.shutdowns += 1  # type: ignore[attr-defined]

    def dev(h: int) -> dict[str, Any]:
        return devices[h]

    def power(h: int) -> int:
        if dev(h).get("power_mw") is None:
            raise m.NVMLError_NotSupported(3)  # type: ignore[attr-defined]
        return int(dev(h)["power_mw"])

    m.nvmlInit = init  # type: ignore[attr-defined]
    m.nvmlShutdown = shutdown  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    m.nvmlDeviceGetName = lambda h: dev(h)["name"].encode()  # type: ignore[attr-defined]
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        gpu=dev(h)["util"], memory=0)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        used=dev(h)["used"], total=dev(h)["total"], free=dev(h)["total"] - dev(h)["used"])
    m.nvmlDeviceGetPowerUsage = power  # type: ignore[attr-defined]
    m.nvmlDeviceGetTemperature = lambda h, sensor: dev(h)["temp"]  # type: ignore[attr-defined]
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: [  # type: ignore[attr-defined]
        types.SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in dev(h)["procs"]]
    return m


def write_proc(root: Path, pid: int, cgroup: str, pgrp: int, comm: str = "python") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(cgroup)
    (d / "stat").write_text(f"{pid} ({comm}) S 1 {pgrp} {pgrp} 0 -1 4194560 0 0 0 0\n")


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    # run A's trainer, in its Docker container (cgroup v2, systemd driver)
    write_proc(root, 101, f"0::/system.slice/docker-{CID_A}.scope\n", 101)
    # a second process of run A (cgroup v1 layout)
    write_proc(root, 102, f"12:memory:/docker/{CID_A}\n11:cpu:/docker/{CID_A}\n", 102)
    # run B's process in the local sandbox: process group 500, a name with ") (" in it
    write_proc(root, 201, "0::/user.slice/user-0.slice/session-3.scope\n", 500, comm="a) (b")
    # someone else's container
    write_proc(root, 301, f"0::/docker/{CID_B}\n", 301)
    # 401 has vanished from /proc by the time it is looked up
    return root


def two_gpus() -> list[dict[str, Any]]:
    return [
        {"name": "NVIDIA H100", "util": 87, "used": 30 * 2**30, "total": 80 * 2**30,
         "power_mw": 412_345, "temp": 61,
         "procs": [(101, 20 * 2**30), (102, 2 * 2**30), (301, 7 * 2**30), (401, 2**30)]},
        {"name": "NVIDIA H100", "util": 5, "used": 3 * 2**30, "total": 80 * 2**30,
         "power_mw": None, "temp": 40, "procs": [(201, 3 * 2**30), (102, None)]},
    ]


async def _noop(samples: list[dict[str, Any]]) -> None:
    return None


# -- /proc --------------------------------------------------------------------------------
def test_cgroup_and_process_group_readers(proc_root: Path) -> None:
    assert container_id_of(101, proc_root) == CID_A
    assert container_id_of(102, proc_root) == CID_A
    assert container_id_of(301, proc_root) == CID_B
    assert container_id_of(201, proc_root) is None
    assert container_id_of(401, proc_root) is None
    assert process_group_of(201, proc_root) == 500
    assert process_group_of(101, proc_root) == 101
    assert process_group_of(401, proc_root) is None


def test_readers_on_the_real_proc() -> None:
    import os

    assert process_group_of(os.getpid()) == os.getpgid(os.getpid())
    assert container_id_of(2**22 + 7) is None  # no such process


# -- sampler with a stand-in NVML ---------------------------------------------------------
async def test_sampler_maps_processes_to_runs(proc_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_nvml(two_gpus())
    monkeypatch.setitem(sys.modules, "pynvml", nvml)  # the sampler imports pynvml itself
    sampler = GpuSampler(proc_root=proc_root)
    await sampler.start()
    try:
        assert sampler.available and sampler.devices == [0, 1]
        assert sampler.state == "ok: 2 GPUs (NVIDIA H100)"
        sampler.watch(GpuWatch("run-a", (0,), _noop, container_id=CID_A[:12]))
        sampler.watch(GpuWatch("run-b", (1,), _noop, process_groups=lambda: {500}))
        sampler.watch(GpuWatch("run-c", (), _noop, container_id="c3" * 32))
        got = await sampler.sample_once()
    finally:
        await sampler.stop()
    assert got["run-a"] == [{"device": 0, "util": 87.0, "mem_used": 30 * 2**30, "mem_total": 80 * 2**30,
                             "power_w": 412.3, "temp_c": 61.0, "proc_mem": 22 * 2**30},
                            # 102 also holds a context on device 1 (memory not reported)
                            {"device": 1, "util": 5.0, "mem_used": 3 * 2**30, "mem_total": 80 * 2**30,
                             "power_w": None, "temp_c": 40.0, "proc_mem": 0}]
    assert [(s["device"], s["proc_mem"], s["power_w"]) for s in got["run-b"]] == [(1, 3 * 2**30, None)]
    assert got["run-c"] == []  # no devices of its own, no processes on any
    assert nvml.shutdowns == 1


async def test_sampler_loop_delivers_to_each_run(proc_root: Path) -> None:
    sampler = GpuSampler(interval_s=0.05, nvml=fake_nvml(two_gpus()), proc_root=proc_root)
    await sampler.start()
    got: list[list[dict[str, Any]]] = []
    three = asyncio.Event()

    async def emit(samples: list[dict[str, Any]]) -> None:
        got.append(samples)
        if len(got) >= 3:
            three.set()

    async def broken(samples: list[dict[str, Any]]) -> None:
        raise RuntimeError("a consumer's bug")

    try:
        sampler.watch(GpuWatch("run-b", (1,), emit, process_groups=lambda: {500}))
        sampler.watch(GpuWatch("run-x", (0,), broken))
        await asyncio.wait_for(three.wait(), 10)
        sampler.unwatch("run-b")
        assert sampler.watched == ["run-x"]
    finally:
        await sampler.stop()
    assert all(batch == [got[0][0]] and batch[0]["proc_mem"] == 3 * 2**30 for batch in got)


@pytest.mark.parametrize(("error", "state"), [
    ("NVMLError_LibraryNotFound", "none: NVIDIA driver library (libnvidia-ml) not found"),
    ("NVMLError_DriverNotLoaded", "none: NVIDIA driver not loaded"),
])
async def test_no_driver_is_a_state(error: str, state: str, caplog: pytest.LogCaptureFixture) -> None:
    nvml = fake_nvml(two_gpus(), init_error=error)
    sampler = GpuSampler(interval_s=0.01, nvml=nvml)
    with caplog.at_level("INFO", logger="runner.gpu"):
        await sampler.start()
        sampler.watch(GpuWatch("run-a", (0,), _noop, container_id=CID_A))
        assert await sampler.sample_once() == {}
        await sampler.start()  # twice is a no-op
        await sampler.stop()
    assert not sampler.available and sampler.state == state and sampler.devices == []
    assert nvml.calls == ["init"]
    assert [r.message for r in caplog.records] == [f"GPU sampler: {state}"]  # said once


async def test_zero_devices_is_no_gpu() -> None:
    nvml = fake_nvml([])
    sampler = GpuSampler(nvml=nvml)
    await sampler.start()
    await sampler.stop()
    assert (sampler.available, sampler.state, nvml.shutdowns) == (False, "none: no GPU devices", 1)


async def test_real_nvml_without_a_gpu() -> None:
    """The real pynvml on this host: no driver here, so a clear state and no exception."""
    pytest.importorskip("pynvml")
    sampler = GpuSampler(interval_s=0.05)
    await sampler.start()
    try:
        if sampler.available:  # a host with a GPU: the real path works too
            assert sampler.state.startswith("ok: ") and sampler.devices
            sampler.watch(GpuWatch("r", (sampler.devices[0],), _noop))
            (sample,) = (await sampler.sample_once())["r"]
            assert sample["mem_total"] > 0
        else:
            assert sampler.state.startswith("none: ") and sampler.devices == []
            assert await sampler.sample_once() == {}
    finally:
        await sampler.stop()


# -- allocator ------------------------------------------------------------------------------
async def test_allocator_assigns_queues_and_releases() -> None:
    gpus = GpuAllocator([0, 1, 2])
    assert await gpus.acquire("a", 2) == (0, 1)
    assert await gpus.acquire("cpu-only", 0) == ()
    assert gpus.free == [2]
    with pytest.raises(GpuRequestError, match="needs 4 GPUs but this runner has 3"):
        await gpus.acquire("huge", 4)
    b = asyncio.create_task(gpus.acquire("b", 2))  # must wait for a's devices
    c = asyncio.create_task(gpus.acquire("c", 1))  # queues behind b, though one is free
    await asyncio.sleep(0)
    assert gpus.waiting == ["b", "c"] and not b.done() and not c.done()
    assert gpus.try_acquire("d", 1) is None  # no jumping the queue either
    assert gpus.release("a") == (0, 1)
    assert await b == (0, 1) and await c == (2,)
    assert gpus.assigned("b") == (0, 1) and gpus.free == []
    d = asyncio.create_task(gpus.acquire("d", 1))
    await asyncio.sleep(0)
    d.cancel()  # a run killed while it waits leaves the queue
    with pytest.raises(asyncio.CancelledError):
        await d
    assert gpus.waiting == []
    gpus.release("b")
    gpus.release("c")
    gpus.release("never-held")
    assert gpus.free == [0, 1, 2] and gpus.try_acquire("e", 3) == (0, 1, 2)


async def test_allocator_without_devices_hands_out_nothing() -> None:
    gpus = GpuAllocator()
    gpus.check(8)  # nothing to check against: the run goes on and is warned
    assert await gpus.acquire("a", 1) == () and gpus.assigned("a") == ()


def test_telemetry_window_is_bounded() -> None:
    w = TelemetryWindow(window_s=60, maxlen=50)
    t0 = 1_000_000.0
    for i in range(500):
        w.add("resource", {"cpu_pct": float(i)}, ts=t0 + i * 0.1)
    assert len(w.items("resource")) == 50 and w.latest("resource") == {"cpu_pct": 499.0}
    w.add("gpu", {"util": 1.0}, ts=t0)
    w.add("gpu", {"util": 2.0}, ts=t0 + 61)
    assert [s["util"] for _ts, s in w.items("gpu")] == [2.0] and len(w) == 51


# -- Docker stats stream --------------------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox_image(docker_client: Any) -> str:
    from runner.image import build_image

    return build_image(log=lambda line: None, client=docker_client)


@pytest.fixture
def container(docker_client: Any, sandbox_image: str) -> Iterator[Any]:
    c = docker_client.containers.run(sandbox_image, ["sleep", "infinity"], detach=True, init=True,
                                     network_mode="none", name=f"mlrb-test-stats-{uuid.uuid4().hex[:8]}",
                                     labels={"mlrb.test": "telemetry"})
    yield c
    try:
        c.remove(force=True)
    except Exception:  # noqa: BLE001 - already removed by the test
        pass


def test_stats_stream_of_a_real_container(container: Any) -> None:
    from runner.docker_sandbox import stats_sample

    stream = StatsStream(container, lambda raw: stats_sample(raw, 1.0)).start()
    container.exec_run(["sh", "-c", "timeout 4 sh -c 'while :; do :; done'"], detach=True)
    assert stream.wait(3, timeout_s=20), stream.error
    s = stream.latest()
    assert s is not None and s["cpu_pct"] is not None and s["cpu_pct"] > 20  # the busy loop shows
    assert s["mem_bytes"] and s["mem_limit"] and s["pids"]
    container.pause()
    n = stream.count
    assert stream.wait(n + 2, timeout_s=20)  # a paused container still streams
    assert stream.latest()["cpu_pct"] == 0  # type: ignore[index]
    container.unpause()
    container.remove(force=True)  # the engine ends the stream; the thread ends with it
    until_blocking(lambda: not stream.alive, "the stats thread to end with its container", timeout=20,
                   interval=0.1)
    assert not stream.alive


async def test_docker_sandbox_stats_come_from_the_stream(tmp_path: Path, docker_client: Any,
                                                         sandbox_image: str) -> None:
    from runner.docker_sandbox import DockerSandbox
    from runner.sandbox import SandboxLimits, SandboxSpec

    sb = DockerSandbox(SandboxSpec(run=f"t-{uuid.uuid4().hex[:8]}", workspace=tmp_path / "ws",
                                   image=sandbox_image, limits=SandboxLimits(cpus=1.5)),
                       client=docker_client)
    await sb.start()
    try:
        stream = sb._stats_stream
        assert stream is not None
        assert await asyncio.to_thread(stream.wait, 2, 20)
        t0 = time.monotonic()
        s = await sb.stats()
        assert time.monotonic() - t0 < 0.5  # no one-shot round trip
        assert s["cpu_limit"] == 1.5 and s["mem_limit"] == sb.spec.limits.memory_bytes
        watch = watch_for_sandbox("r", sb, (0,), _noop)
        assert watch.container_id and len(watch.container_id) == 64
        assert watch.owns(watch.container_id, None) and not watch.owns(CID_B, None)
    finally:
        await sb.stop()
    await asyncio.to_thread(stream.wait, 10**9, 20)  # returns once the stream has ended
    assert not stream.alive


# -- the supervisor -------------------------------------------------------------------------
FIXTURE = Path(__file__).parent / "fixtures" / "tasks" / "tiny_train" / "task.toml"


class _Recorder:
    """The publish callback: records events and lets a test await one."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, events: Any) -> None:
        self.events.extend(events)

    async def wait_for(self, pred: Any, timeout: float = 60, after: int = 0) -> Event:
        """The first event from index `after` on that matches, awaited if none has yet."""
        return await until(lambda: next((ev for ev in self.events[after:] if pred(ev)), None),
                           f"an event that matches {describe(pred)}", timeout=timeout)


def _supervisor(tmp_path: Path, backend: str, scale: str, publish: _Recorder,
                sampler: GpuSampler | None, image: str = "mlrb-sandbox:latest") -> Any:
    from runner.agents.base import ScriptedAgent
    from runner.journal import Journal
    from runner.sandbox_factory import create_sandbox
    from runner.supervisor import RunLimits, RunRequest, RunSupervisor
    from tasks.api import load_spec_file

    plan = [{"name": "bash", "args": {"command": "timeout 60 sh -c 'while :; do :; done'",
                                      "timeout_s": 90}}]
    return RunSupervisor(
        RunRequest(run=f"tel-{uuid.uuid4().hex[:6]}", task=load_spec_file(FIXTURE), scale=scale,
                   agent_kind="scripted", limits=RunLimits(time_s=120)),
        journal=Journal(tmp_path / "j.db"), publish=publish,
        make_sandbox=lambda spec: create_sandbox(spec, backend=backend), agent=ScriptedAgent(plan),
        workspace=tmp_path / "ws", runner_id="test", image=image, gpu_sampler=sampler)


async def test_supervisor_resource_events_from_the_stream(tmp_path: Path, docker_client: Any,
                                                          sandbox_image: str) -> None:
    rec = _Recorder()
    sup = _supervisor(tmp_path, "docker", "smoke", rec, None, image=sandbox_image)
    task = asyncio.create_task(sup.run())
    try:
        busy = await rec.wait_for(lambda e: e.kind == "resource" and (e.data.get("cpu_pct") or 0) > 20)
        assert busy.data["cpu_limit"] == 1 and busy.data["mem_limit"] == 1024**3
        assert sup.telemetry.latest("resource") is not None
    finally:
        await sup.kill("test over")
        await asyncio.wait_for(task, 60)
    sup.journal.close()


async def test_supervisor_emits_gpu_events_for_its_processes(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A local-sandbox run on a stand-in GPU: its command's process group is on device 0."""
    procs: list[tuple[int, int]] = []
    devices = [{"name": "NVIDIA H100", "util": 99, "used": 10, "total": 100, "power_mw": 300_000,
                "temp": 70, "procs": procs}]
    sampler = GpuSampler(interval_s=0.1, nvml=fake_nvml(devices))
    await sampler.start()
    rec = _Recorder()
    sup = _supervisor(tmp_path, "local", "full", rec, sampler)  # full scale asks for one GPU
    sup.gpu_ids = (0,)
    task = asyncio.create_task(sup.run())
    try:
        await rec.wait_for(lambda e: e.kind == "tool.call")
        assert sup.sandbox is not None
        for _tick in range(300):  # the command's process group appears within a few ticks
            procs.extend((g, 7) for g in sup.sandbox.process_groups)
            if procs:
                break
            await rec.wait_for(lambda e: e.kind == "gpu", after=len(rec.events))
        ev = await rec.wait_for(lambda e: e.kind == "gpu" and e.data["proc_mem"] == 7 * len(procs))
        assert ev.data["device"] == 0 and ev.data["util"] == 99.0 and ev.data["power_w"] == 300.0
        assert sup.telemetry.latest("gpu") is not None
    finally:
        await sup.kill("test over")
        await asyncio.wait_for(task, 60)
        await sampler.stop()
    kinds = [e.kind for e in rec.events]
    assert "gpu" not in kinds[kinds.index("run.ended"):]
    assert sampler.watched == []
    sup.journal.close()


async def test_supervisor_warns_once_when_a_gpu_run_has_no_gpu(tmp_path: Path) -> None:
    sampler = GpuSampler(nvml=fake_nvml([], init_error="NVMLError_DriverNotLoaded"))
    await sampler.start()
    rec = _Recorder()
    sup = _supervisor(tmp_path, "local", "full", rec, sampler)
    task = asyncio.create_task(sup.run())
    try:
        warning = await rec.wait_for(lambda e: e.kind == "run.warning" and e.data["code"] == "no_gpu")
        assert "NVIDIA driver not loaded" in warning.data["message"]
        await rec.wait_for(lambda e: e.kind == "tool.call")
    finally:
        await sup.kill("test over")
        await asyncio.wait_for(task, 60)
    assert [e.data.get("code") for e in rec.events if e.kind == "run.warning"].count("no_gpu") == 1
    assert not any(e.kind == "gpu" for e in rec.events)
    sup.journal.close()
