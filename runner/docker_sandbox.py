"""The Docker sandbox: one long-lived container per run, commands run in it with docker exec.

The container is locked down by default: no network, a non-root user, every capability
dropped, no-new-privileges, pids/memory/CPU limits, and only the environment the spec names
(never the host's). GPUs come by device request. Every Docker SDK call blocks, so each one
runs in a thread.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import DeviceRequest

from runner.sandbox import (
    WORKSPACE,
    CappedOutput,
    ExecResult,
    GPUUnavailable,
    OutputCallback,
    SandboxError,
    SandboxSpec,
    SandboxStatus,
)

KILL_GRACE_S = 5  # `timeout -k`: SIGTERM first, SIGKILL this long after
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")


def container_name(run: str) -> str:
    return "mlrb-" + _NAME_BAD.sub("-", run)[:120]


def _uid_gid(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        raise SandboxError(f"sandbox user must be numeric uid[:gid], not {user!r}") from None


def _own_tree(root: Path, uid: int, gid: int) -> None:
    """Give the workspace to the sandbox user so the agent can write its own files."""
    if os.geteuid() != 0:
        # Not root: cannot chown, so open the folders to everyone instead (a private host
        # folder; the container user is not the host user).
        for folder, _dirs, _files in os.walk(root):
            with contextlib.suppress(OSError):
                os.chmod(folder, 0o777)
        return
    os.lchown(root, uid, gid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(folder, name), uid, gid)


def _gpu_refused(exc: docker.errors.APIError) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("could not select device driver", "nvidia", "gpu"))


class DockerSandbox:
    backend = "docker"
    isolated = True

    def __init__(self, spec: SandboxSpec, client: docker.DockerClient | None = None) -> None:
        self.spec = spec
        self.name = container_name(spec.run)
        self._client = client
        self._container: Any = None
        self._stopped = False
        self._stats_stream: Any = None  # runner.telemetry.StatsStream once started

    # -- helpers -----------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._container.id[:12] if self._container is not None else self.name

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=60)
            except docker.errors.DockerException as exc:
                raise SandboxError(f"no Docker engine answers: {exc}") from None
        return self._client

    def _require(self) -> Any:
        if self._container is None:
            raise SandboxError(f"sandbox {self.name} was never started")
        return self._container

    def _gone(self, action: str) -> SandboxError:
        return SandboxError(f"cannot {action}: sandbox container {self.name} is gone (removed)")

    def _died(self, status: SandboxStatus) -> SandboxError:
        code = f", exit code {status.exit_code}" if status.exit_code is not None else ""
        return SandboxError(f"sandbox died while a command ran ({self.name}: "
                            f"{status.reason or 'not running'}{code})")

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        spec, limits = self.spec, self.spec.limits
        uid, gid = _uid_gid(spec.user)
        workspace = spec.workspace.resolve()
        (workspace / ".mlrb").mkdir(parents=True, exist_ok=True)
        _own_tree(workspace, uid, gid)
        volumes: dict[str, dict[str, str]] = {str(workspace): {"bind": WORKSPACE, "mode": "rw"}}
        for host, inside in spec.readonly_mounts:
            volumes[str(Path(host).resolve())] = {"bind": inside, "mode": "ro"}
        device_requests = []
        if limits.gpus > 0 or limits.gpu_ids:
            if limits.gpu_ids:
                device_requests.append(DeviceRequest(driver="nvidia", device_ids=list(limits.gpu_ids),
                                                     capabilities=[["gpu"]]))
            else:
                device_requests.append(DeviceRequest(driver="nvidia", count=limits.gpus,
                                                     capabilities=[["gpu"]]))
        client = self._docker()
        # A container left by a crashed runner under the same name would block the new one.
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(self.name).remove(force=True)
        try:
            container = client.containers.create(
                spec.image,
                command=["sleep", "infinity"],
                name=self.name,
                init=True,
                user=spec.user,
                working_dir=WORKSPACE,
                environment=dict(spec.env),
                labels={"mlrb.run": spec.run, **dict(spec.labels)},
                network_mode=spec.docker_network or ("bridge" if spec.network else "none"),
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                pids_limit=limits.pids,
                mem_limit=limits.memory_bytes,
                memswap_limit=limits.memory_bytes,  # no swap: an over-limit run is OOM-killed
                shm_size=min(limits.memory_bytes // 4, 2 * 1024**3),
                nano_cpus=int(limits.cpus * 1e9),
                volumes=volumes,
                tmpfs={d: "mode=1777,size=64m" for d in spec.scratch_dirs} or None,
                device_requests=device_requests or None,
                hostname="sandbox",
                detach=True,
            )
        except docker.errors.ImageNotFound:
            raise SandboxError(f"sandbox image {spec.image} is missing: run `mlrb image build` "
                               "first (`mlrb image build --scorer` for the scorer image)") from None
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot create sandbox {self.name}: {exc.explanation or exc}") from None
        try:
            container.start()
        except docker.errors.APIError as exc:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            if device_requests and _gpu_refused(exc):
                wanted = (f"GPUs {','.join(limits.gpu_ids)}" if limits.gpu_ids
                          else f"{limits.gpus} GPU{'s' if limits.gpus != 1 else ''}")
                raise GPUUnavailable(
                    f"run needs {wanted} but this Docker engine has no GPU runtime (nvidia); "
                    f"install the NVIDIA Container Toolkit or run with gpus=0 "
                    f"({exc.explanation or exc})") from None
            raise SandboxError(f"cannot start sandbox {self.name}: {exc.explanation or exc}") from None
        self._container = container
        self._follow_stats()

    async def adopt(self) -> None:
        """Take over this run's container, left running by an earlier runner."""
        await asyncio.to_thread(self._adopt)

    def _adopt(self) -> None:
        try:
            container = self._docker().containers.get(self.name)
        except docker.errors.NotFound:
            raise SandboxError(f"the sandbox container {self.name} is gone") from None
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot inspect sandbox {self.name}: {exc.explanation or exc}") from None
        labels = container.labels or {}
        if labels.get("mlrb.run") != self.spec.run:
            raise SandboxError(f"container {self.name} is not this run's sandbox "
                               f"(label mlrb.run={labels.get('mlrb.run')!r})")
        state = container.attrs.get("State", {})
        if not state.get("Running"):
            raise SandboxError(f"the sandbox container {self.name} is not running "
                               f"({state.get('Status') or 'stopped'})")
        self._container = container
        self._follow_stats()

    def release(self) -> None:
        """Let go of the container without stopping it (the runner is detaching)."""
        if self._stats_stream is not None:
            self._stats_stream.stop()
            self._stats_stream = None
        self._stopped = True

    # -- jobs: commands that outlive the runner (runner.jobs) -----------------------------
    @property
    def workspace_host(self) -> Path:
        return self.spec.workspace.resolve()

    async def start_job(self, job_id: str, command: str, timeout_s: float) -> None:
        from runner.jobs import JOBS_DIR, wrapper

        container = self._require()
        script = wrapper(f"{WORKSPACE}/{JOBS_DIR}", job_id, timeout_s)
        argv = ["bash", "-c", script, "mlrb-job", command]
        res = await asyncio.to_thread(self._exec_run, container, argv)
        if res[0] != 0:
            raise SandboxError(f"cannot start a command in {self.name}: {res[1][-500:]}")

    def _exec_run(self, container: Any, argv: list[str]) -> tuple[int, str]:
        try:
            code, out = container.exec_run(argv, user=self.spec.user, workdir=WORKSPACE)
        except docker.errors.NotFound:
            raise self._gone("run a command") from None
        except docker.errors.APIError as exc:
            raise self._exec_refused(exc) from None
        return int(code or 0), (out or b"").decode("utf-8", "replace")

    async def kill_job(self, job_id: str) -> None:
        from runner.jobs import JOBS_DIR, kill_script

        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._exec_quiet, ["bash", "-c", kill_script(f"{WORKSPACE}/{JOBS_DIR}", job_id)])

    def job_alive(self, pid: int) -> bool | None:
        return None  # the container's pids are not the host's; its status tells instead

    async def stop(self) -> None:
        if self._container is None or self._stopped:
            return
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        if self._stats_stream is not None:
            self._stats_stream.stop()
        try:
            self._container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # "removal already in progress" means someone else is doing our job
            if "in progress" not in str(exc):
                raise SandboxError(f"cannot remove sandbox {self.name}: {exc.explanation or exc}") from None
        self._stopped = True

    # -- exec --------------------------------------------------------------------------
    async def exec(
        self,
        command: str,
        *,
        timeout_s: float = 600,
        output_cap: int = 64 * 1024,
        on_output: OutputCallback | None = None,
        workdir: str = WORKSPACE,
    ) -> ExecResult:
        container = self._require()
        loop = asyncio.get_running_loop()
        pidfile = f"/tmp/.mlrb-exec-{uuid.uuid4().hex}"
        # `timeout` makes itself a process-group leader; its pid is recorded so a cancelled
        # exec can kill that whole group from a second exec.
        argv = ["bash", "-c",
                f'timeout -k {KILL_GRACE_S} {max(timeout_s, 0.1):.3f}s bash -lc "$1" & p=$!; '
                f'echo "$p" > {pidfile}; wait "$p" 2>/dev/null; rc=$?; rm -f {pidfile}; exit "$rc"',
                "mlrb-exec", command]
        out = CappedOutput(output_cap)
        started = time.monotonic()

        cancelled = False

        def emit(stream: str, text: str) -> None:
            if cancelled:
                return
            out.add(text)
            if on_output is not None:
                try:
                    on_output(stream, text)
                except Exception:  # noqa: BLE001 - a consumer's bug must not kill the command
                    pass

        try:
            exec_id = await asyncio.to_thread(self._exec_create, container, argv, workdir)
            chunks = await asyncio.to_thread(self._exec_start, exec_id)
            await asyncio.to_thread(self._pump, chunks, loop, emit)
        except asyncio.CancelledError:
            cancelled = True
            await asyncio.shield(self._kill_exec(pidfile))
            raise
        info = await asyncio.to_thread(self._exec_inspect, exec_id)
        duration = time.monotonic() - started
        code = info.get("ExitCode")
        if code is None or info.get("Running"):
            raise self._died(await self.status())
        timed_out = code in (124, 137) and duration >= timeout_s * 0.98
        if not timed_out and code == 137:
            # Killed: by the kernel inside a live container (an OOM kill of one process), or
            # with the whole container, whose state lags the exec's by a moment.
            for _ in range(10):
                status = await self.status()
                if not status.running and not status.paused:
                    raise self._died(status)
                await asyncio.sleep(0.05)
        return ExecResult(
            exit_code=None if timed_out else int(code),
            output=out.text(),
            truncated=out.truncated,
            timed_out=timed_out,
            duration_s=round(duration, 3),
        )

    def _exec_create(self, container: Any, argv: list[str], workdir: str) -> str:
        try:
            res = container.client.api.exec_create(container.id, argv, stdout=True, stderr=True,
                                                   user=self.spec.user, workdir=workdir)
        except docker.errors.NotFound:
            raise self._gone("run a command") from None
        except docker.errors.APIError as exc:
            raise self._exec_refused(exc) from None
        return str(res["Id"])

    def _exec_refused(self, exc: docker.errors.APIError) -> SandboxError:
        """Why the engine refused to run a command, for the operator."""
        text = str(exc.explanation or exc)
        if "paused" in text:
            return SandboxError(f"cannot run a command: sandbox {self.name} is paused (resume it first)")
        if "not running" in text:
            return SandboxError(f"cannot run a command: sandbox {self.name} is not running")
        return SandboxError(f"cannot run a command in {self.name}: {text}")

    def _exec_start(self, exec_id: str) -> Iterator[tuple[bytes | None, bytes | None]]:
        try:
            return self._require().client.api.exec_start(exec_id, stream=True, demux=True)
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot run a command in {self.name}: {exc.explanation or exc}") from None

    @staticmethod
    def _pump(chunks: Iterator[tuple[bytes | None, bytes | None]], loop: asyncio.AbstractEventLoop,
              emit: Any) -> None:
        # UTF-8 split across chunk boundaries is decoded whole: one incremental decoder per stream.
        decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace")
                    for name in ("stdout", "stderr")}
        try:
            for stdout, stderr in chunks:
                for name, data in (("stdout", stdout), ("stderr", stderr)):
                    if data:
                        text = decoders[name].decode(data)
                        if text:
                            loop.call_soon_threadsafe(emit, name, text)
        except (docker.errors.APIError, OSError, ValueError):
            pass  # the stream broke (container killed); exec_inspect tells what happened
        for name, decoder in decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                loop.call_soon_threadsafe(emit, name, tail)

    def _exec_inspect(self, exec_id: str) -> dict[str, Any]:
        api = self._require().client.api
        info: dict[str, Any] = {}
        for _ in range(50):  # the exit code lands a moment after the stream closes
            try:
                info = api.exec_inspect(exec_id)
            except docker.errors.NotFound:
                return {}
            if not info.get("Running"):
                return info
            time.sleep(0.02)
        return info

    def _exec_quiet(self, argv: list[str]) -> None:
        self._require().exec_run(argv, user=self.spec.user, detach=False)

    async def _kill_exec(self, pidfile: str) -> None:
        script = (f'p=$(cat {pidfile} 2>/dev/null) && [ -n "$p" ] && '
                  f'{{ kill -TERM -- -"$p" 2>/dev/null; sleep 1; kill -KILL -- -"$p" 2>/dev/null; }}; '
                  f'rm -f {pidfile}')
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._exec_quiet, ["bash", "-c", script])

    # -- pause, status, stats ----------------------------------------------------------
    async def pause(self) -> None:
        await asyncio.to_thread(self._pause_or_unpause, True)

    async def unpause(self) -> None:
        await asyncio.to_thread(self._pause_or_unpause, False)

    def _pause_or_unpause(self, pause: bool) -> None:
        container = self._require()
        action = "pause" if pause else "resume"
        try:
            container.reload()
            if bool(container.attrs["State"].get("Paused")) == pause:
                return  # already there: pausing twice is not an error
            container.pause() if pause else container.unpause()
        except docker.errors.NotFound:
            raise self._gone(action) from None
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot {action} sandbox {self.name}: {exc.explanation or exc}") from None

    async def status(self) -> SandboxStatus:
        if self._container is None:
            return SandboxStatus(running=False, reason="not started")
        return await asyncio.to_thread(self._status)

    def _status(self) -> SandboxStatus:
        try:
            self._container.reload()
        except docker.errors.NotFound:
            return SandboxStatus(running=False, reason="removed")
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot inspect sandbox {self.name}: {exc.explanation or exc}") from None
        state = self._container.attrs.get("State", {})
        paused = bool(state.get("Paused"))
        running = bool(state.get("Running")) and not paused
        if running or paused:
            return SandboxStatus(running=running, paused=paused)
        reason = "OOMKilled" if state.get("OOMKilled") else str(state.get("Status") or "exited")
        return SandboxStatus(running=False, exit_code=state.get("ExitCode"), reason=reason)

    def _follow_stats(self) -> None:
        from runner.telemetry import StatsStream

        cpus = self.spec.limits.cpus
        self._stats_stream = StatsStream(self._container, lambda raw: stats_sample(raw, cpus),
                                         name=self.name).start()

    async def stats(self) -> dict[str, float | int | None]:
        container = self._require()
        # the streamed sample is free; a one-shot read takes the engine one to two seconds
        stream = self._stats_stream
        if stream is not None:
            latest = stream.latest()
            # the stream's first sample has no previous one to compute CPU from
            if latest is not None and latest.get("cpu_pct") is not None:
                return latest
            if not stream.alive and not self._stopped:
                self._follow_stats()  # the stream broke (engine restart): follow it again
        return await asyncio.to_thread(self._stats, container)

    def _stats(self, container: Any) -> dict[str, float | int | None]:
        try:
            raw = container.stats(stream=False)
        except docker.errors.NotFound:
            raise self._gone("read stats") from None
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot read stats of {self.name}: {exc.explanation or exc}") from None
        return stats_sample(raw, self.spec.limits.cpus)

    def shell_argv(self) -> list[str]:
        return ["docker", "exec", "-it", "-u", self.spec.user, "-w", WORKSPACE, self.name, "bash"]


def stats_sample(raw: dict[str, Any], cpu_limit: float) -> dict[str, float | int | None]:
    """One Docker stats sample -> cpu_pct (of one core, as `docker stats`), mem_bytes, limits."""
    cpu = raw.get("cpu_stats") or {}
    pre = raw.get("precpu_stats") or {}
    cpu_pct: float | None = None
    try:
        cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        sys_delta = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
        online = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or []) or 1
        if sys_delta > 0 and cpu_delta >= 0:
            cpu_pct = round(cpu_delta / sys_delta * online * 100.0, 2)
    except (KeyError, TypeError):
        cpu_pct = None
    mem = raw.get("memory_stats") or {}
    usage = mem.get("usage")
    mem_bytes: int | None = None
    if isinstance(usage, int):
        st = mem.get("stats") or {}
        # what `docker stats` subtracts: inactive file cache (cgroup v1 and v2 names)
        cache = st.get("total_inactive_file", st.get("inactive_file", st.get("cache", 0))) or 0
        mem_bytes = max(usage - int(cache), 0)
    limit = mem.get("limit")
    return {
        "cpu_pct": cpu_pct,
        "mem_bytes": mem_bytes,
        "mem_limit": int(limit) if isinstance(limit, int) else None,
        "cpu_limit": cpu_limit,
        "pids": (raw.get("pids_stats") or {}).get("current"),
    }
