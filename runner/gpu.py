"""GPUs: which devices a run may use (GpuAllocator) and what they are doing (GpuSampler).

The allocator hands out NVML device indices to runs whose scale asks for GPUs, first come
first served; a run that finds none free waits in the queue. The sampler reads every device
through NVML (nvidia-ml-py) from one dedicated thread, maps each GPU process to the run it
belongs to through its cgroup (the Docker container id) or its process group (the local
sandbox), and hands each watched run one sample per device it uses. Without a GPU or a
driver it settles in a "none: <why>" state once, and never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 1.0
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")

GpuSample = dict[str, Any]
GpuEmit = Callable[[list[GpuSample]], Awaitable[None]]


class GpuRequestError(ValueError):
    """A GPU request this host can never satisfy; the message says why."""


# -- processes ---------------------------------------------------------------------------
def container_id_of(pid: int, proc_root: str | Path = "/proc") -> str | None:
    """The container id in a process's cgroup path (Docker, containerd, podman), if any.

    Covers cgroup v1 (`…:/docker/<id>`), v2 with systemd (`0::/system.slice/docker-<id>.scope`)
    and v2 with cgroupfs (`0::/docker/<id>`): the last 64-hex name in the path is the id.
    """
    try:
        text = (Path(proc_root) / str(pid) / "cgroup").read_text(errors="replace")
    except OSError:
        return None
    found: str | None = None
    for line in text.splitlines():
        ids = _CONTAINER_ID.findall(line.rpartition(":")[2])
        if ids:
            found = ids[-1]
    return found


def process_group_of(pid: int, proc_root: str | Path = "/proc") -> int | None:
    """A process's group id from /proc/PID/stat (the name in parentheses may hold anything)."""
    try:
        text = (Path(proc_root) / str(pid) / "stat").read_text(errors="replace")
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    try:
        return int(fields[2])  # state, ppid, pgrp
    except (IndexError, ValueError):
        return None


# -- allocation --------------------------------------------------------------------------
class GpuAllocator:
    """Device indices for runs: FIFO, so a run asking for two GPUs is not starved by runs
    asking for one. With no devices at all it hands out nothing (the caller warns)."""

    def __init__(self, devices: Sequence[int] = ()) -> None:
        self._devices: list[int] = list(devices)
        self._held: dict[str, tuple[int, ...]] = {}
        self._waiters: deque[tuple[str, int, asyncio.Future[tuple[int, ...]]]] = deque()

    def set_devices(self, devices: Sequence[int]) -> None:
        self._devices = list(devices)
        self._grant()

    @property
    def total(self) -> int:
        return len(self._devices)

    @property
    def free(self) -> list[int]:
        used = {d for ids in self._held.values() for d in ids}
        return [d for d in self._devices if d not in used]

    @property
    def waiting(self) -> list[str]:
        return [run for run, _n, fut in self._waiters if not fut.done()]

    def assigned(self, run: str) -> tuple[int, ...]:
        return self._held.get(run, ())

    def claim(self, run: str, ids: Sequence[int]) -> tuple[int, ...]:
        """Hold the devices an adopted run already uses (those this host still has)."""
        held = tuple(i for i in ids if i in self._devices)
        if held:
            self._held[run] = held
        return held

    def check(self, n: int) -> None:
        """Raise GpuRequestError for a request that could never be granted here."""
        if self._devices and n > len(self._devices):
            raise GpuRequestError(f"the run needs {n} GPUs but this runner has "
                                  f"{len(self._devices)}")

    def try_acquire(self, run: str, n: int) -> tuple[int, ...] | None:
        """Devices now, or None when not enough are free (or others queue before this run)."""
        if n <= 0 or not self._devices:
            return ()
        self.check(n)
        if run in self._held:
            return self._held[run]
        if any(not fut.done() for _r, _n, fut in self._waiters):
            return None
        ids = self._take(n)
        if ids is not None:
            self._held[run] = ids
        return ids

    async def acquire(self, run: str, n: int) -> tuple[int, ...]:
        """Devices for `run`, waiting in line while too few are free."""
        got = self.try_acquire(run, n)
        if got is not None:
            return got
        fut: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        self._waiters.append((run, n, fut))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(run)  # granted in the same instant it was cancelled
            with contextlib.suppress(ValueError):
                self._waiters.remove((run, n, fut))
            self._grant()
            raise

    def release(self, run: str) -> tuple[int, ...]:
        ids = self._held.pop(run, ())
        self._grant()
        return ids

    def _take(self, n: int) -> tuple[int, ...] | None:
        free = self.free
        return tuple(free[:n]) if len(free) >= n else None

    def _grant(self) -> None:
        while self._waiters:
            run, n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if n > len(self._devices) > 0:
                self._waiters.popleft()
                fut.set_exception(GpuRequestError(f"the run needs {n} GPUs but this runner has "
                                                  f"{len(self._devices)}"))
                continue
            ids = self._take(n) if self._devices else ()
            if ids is None:
                return
            self._waiters.popleft()
            self._held[run] = ids
            fut.set_result(ids)


# -- sampling ----------------------------------------------------------------------------
@dataclass
class GpuWatch:
    """A run the sampler reports on: its devices and how to recognise its processes."""

    run: str
    devices: tuple[int, ...]
    emit: GpuEmit
    container_id: str | None = None  # full or short Docker id: matched as a prefix
    process_groups: Callable[[], Iterable[int]] | None = None  # the local sandbox's groups

    def owns(self, container: str | None, pgid: int | None) -> bool:
        if self.container_id and container and container.startswith(self.container_id):
            return True
        if self.process_groups is not None and pgid is not None:
            with contextlib.suppress(Exception):
                return pgid in set(self.process_groups())
        return False


def watch_for_sandbox(run: str, sandbox: Any, devices: Sequence[int], emit: GpuEmit) -> GpuWatch:
    """A GpuWatch for a started sandbox: Docker by container id, local by process groups."""
    if getattr(sandbox, "backend", "") == "docker":
        container = getattr(sandbox, "_container", None)
        cid = getattr(container, "id", None) or str(sandbox.id)
        return GpuWatch(run, tuple(devices), emit, container_id=cid)
    # read on every tick: the groups change as commands start and end
    return GpuWatch(run, tuple(devices), emit,
                    process_groups=lambda: getattr(sandbox, "process_groups", ()) or ())


def _no_gpu_reason(nvml: Any, exc: BaseException) -> str:
    def is_(name: str) -> bool:
        cls = getattr(nvml, name, None)
        return isinstance(cls, type) and isinstance(exc, cls)

    if is_("NVMLError_LibraryNotFound"):
        return "NVIDIA driver library (libnvidia-ml) not found"
    if is_("NVMLError_DriverNotLoaded"):
        return "NVIDIA driver not loaded"
    if is_("NVMLError_NoPermission"):
        return "no permission to use NVML"
    return f"NVML failed: {exc}"


class GpuSampler:
    """One NVML reader for the whole runner, on one thread; never raises to its callers."""

    def __init__(self, interval_s: float = SAMPLE_EVERY_S, *, nvml: Any | None = None,
                 proc_root: str | Path = "/proc") -> None:
        self.interval_s = interval_s
        self.proc_root = Path(proc_root)
        self._nvml = nvml
        self._handles: list[tuple[int, Any]] = []
        self._names: list[str] = []
        self.available = False
        self.state = "none: not started"
        self._watches: dict[str, GpuWatch] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._read_errors = 0

    @property
    def devices(self) -> list[int]:
        return [i for i, _h in self._handles]

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Find the devices; with none, settle in the "none: <why>" state (logged once)."""
        if self._pool is not None:
            return
        # NVML calls block and are made from this one thread only
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlrb-nvml")
        await asyncio.get_running_loop().run_in_executor(self._pool, self._init)
        if self.available:
            log.info("GPU sampler: %s", self.state)
            self._task = asyncio.create_task(self._loop(), name="gpu-sampler")
        else:
            log.info("GPU sampler: %s", self.state)

    def _init(self) -> None:
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
        except ImportError as exc:
            self.state = f"none: nvidia-ml-py is not installed ({exc})"
            return
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:  # any NVML failure means "no GPU here", never a crash
            self.state = f"none: {_no_gpu_reason(nvml, exc)}"
            return
        try:
            count = int(nvml.nvmlDeviceGetCount())
            handles = [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
            names = []
            for _i, h in handles:
                name: Any = ""
                with contextlib.suppress(Exception):
                    name = nvml.nvmlDeviceGetName(h)
                names.append(name.decode() if isinstance(name, bytes) else str(name))
        except Exception as exc:
            self.state = f"none: {_no_gpu_reason(nvml, exc)}"
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
            return
        if not handles:
            self.state = "none: no GPU devices"
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
            return
        self._handles, self._names = handles, names
        self.available = True
        kinds = ", ".join(sorted(set(names))) or "unknown"
        self.state = f"ok: {count} GPU{'s' if count != 1 else ''} ({kinds})"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            if self.available and self._nvml is not None:
                with contextlib.suppress(Exception):
                    await asyncio.get_running_loop().run_in_executor(pool, self._nvml.nvmlShutdown)
            pool.shutdown(wait=False)
        self.available = False

    # -- runs ---------------------------------------------------------------------------
    def watch(self, w: GpuWatch) -> None:
        self._watches[w.run] = w

    def unwatch(self, run: str) -> None:
        self._watches.pop(run, None)

    @property
    def watched(self) -> list[str]:
        return list(self._watches)

    # -- reading ------------------------------------------------------------------------
    async def sample_once(self) -> dict[str, list[GpuSample]]:
        """Read every device once and return each watched run's samples (without emitting)."""
        if not self.available or self._pool is None:
            return {}
        watches = list(self._watches.values())
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._read, watches)

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                per_run = await self.sample_once()
            except Exception as exc:  # a lost tick is not a lost runner
                self._read_errors += 1
                if self._read_errors == 1:
                    log.warning("GPU sampling failed: %s", exc)
                per_run = {}
            if per_run:
                await asyncio.gather(*(self._deliver(run, samples) for run, samples in per_run.items()))
            await asyncio.sleep(max(0.05, self.interval_s - (time.monotonic() - started)))

    async def _deliver(self, run: str, samples: list[GpuSample]) -> None:
        w = self._watches.get(run)
        if w is None or not samples:
            return
        try:
            # a stuck consumer must not stall every other run's samples
            await asyncio.wait_for(w.emit(samples), timeout=max(self.interval_s * 5, 5.0))
        except Exception as exc:
            log.debug("GPU samples for %s dropped: %s", run, exc)

    def _call(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self._nvml, fn)(*args)
        except Exception:  # unsupported on this board, or the device fell off: a blank field
            return None

    def _read(self, watches: list[GpuWatch]) -> dict[str, list[GpuSample]]:
        nvml = self._nvml
        owners: dict[int, str | None] = {}

        def owner(pid: int) -> str | None:
            if pid not in owners:
                cid = container_id_of(pid, self.proc_root)
                pgid = process_group_of(pid, self.proc_root)
                owners[pid] = next((w.run for w in watches if w.owns(cid, pgid)), None)
            return owners[pid]

        devices: dict[int, GpuSample] = {}
        proc_mem: dict[tuple[str, int], int] = {}
        for index, handle in self._handles:
            util = self._call("nvmlDeviceGetUtilizationRates", handle)
            mem = self._call("nvmlDeviceGetMemoryInfo", handle)
            power = self._call("nvmlDeviceGetPowerUsage", handle)
            temp = self._call("nvmlDeviceGetTemperature", handle,
                              getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
            devices[index] = {
                "device": index,
                "util": float(util.gpu) if util is not None else None,
                "mem_used": int(mem.used) if mem is not None else None,
                "mem_total": int(mem.total) if mem is not None else None,
                "power_w": round(power / 1000.0, 1) if isinstance(power, (int, float)) else None,
                "temp_c": float(temp) if isinstance(temp, (int, float)) else None,
            }
            for proc in self._call("nvmlDeviceGetComputeRunningProcesses", handle) or []:
                run = owner(int(proc.pid))
                if run is None:
                    continue
                used = getattr(proc, "usedGpuMemory", None)
                proc_mem[(run, index)] = proc_mem.get((run, index), 0) + (
                    int(used) if isinstance(used, int) else 0)
        out: dict[str, list[GpuSample]] = {}
        for w in watches:
            # its own devices, and any other device its processes turned up on
            seen = set(w.devices) | {d for (r, d) in proc_mem if r == w.run}
            out[w.run] = [{**devices[d], "proc_mem": proc_mem.get((w.run, d), 0)}
                          for d in sorted(seen) if d in devices]
        return out


__all__ = [
    "GpuAllocator", "GpuRequestError", "GpuSample", "GpuSampler", "GpuWatch", "container_id_of",
    "process_group_of", "watch_for_sandbox",
]
