"""The local-process sandbox: the fallback when no Docker engine answers. NOT isolated.

Commands run as subprocesses of the runner, each in its own process group (so pause, stop
and timeouts reach every child), with the host workspace as the working directory and a
clean environment: nothing of the host's is passed on, so provider keys never reach the
agent's commands. There is no `/workspace` here: the runner passes relative paths, and
commands find the workspace in $MLRB_WORKSPACE and as their working directory. Memory is
bounded by an address-space rlimit; CPU count and network are not limited. Read-only mounts
are symlinks in a folder of their own outside the workspace (`view`), and an environment value
naming a mount's sandbox path (e.g. HF_HUB_CACHE) is rewritten to point into that folder.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from runner.sandbox import (
    METRICS_FILE,
    WORKSPACE,
    CappedOutput,
    ExecResult,
    OutputCallback,
    SandboxError,
    SandboxSpec,
    SandboxStatus,
)

KILL_GRACE_S = 5  # SIGTERM first, SIGKILL this long after, as the Docker sandbox does
READ_CHUNK = 64 * 1024
HELPER_DIR = Path(__file__).with_name("sandbox_image")  # where mlrb_metrics.py lives


def address_space_limit(memory_bytes: int) -> int:
    # Allocators and thread stacks reserve address space they never touch, so the rlimit
    # gets slack above the memory budget; a runaway allocation still fails.
    return max(2 * memory_bytes, memory_bytes + 2 * 1024**3)


class LocalSandbox:
    backend = "local"
    isolated = False

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.cwd: Path = spec.workspace.resolve()  # where shell_argv() must be started
        self.view = Path(tempfile.gettempdir()) / f"mlrb-mounts-{spec.run}-{uuid.uuid4().hex[:8]}"
        self.env: dict[str, str] = self._environment()
        self._groups: set[int] = set()  # process-group ids of the commands now running
        self._jobs: dict[str, int] = {}  # job id -> its process group (runner.jobs)
        self._paused = False
        self._started = False
        self._stopped = False

    @property
    def id(self) -> str:
        return f"local-{self.spec.run}"

    @property
    def process_groups(self) -> frozenset[int]:
        """The process groups of the commands now running (the GPU sampler's view of a run)."""
        return frozenset(self._all_groups())

    def _all_groups(self) -> set[int]:
        alive = {job: g for job, g in self._jobs.items() if self.job_alive(g)}
        self._jobs = alive
        return self._groups | set(alive.values())

    def _environment(self) -> dict[str, str]:
        path = os.pathsep.join(dict.fromkeys(
            [os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]))
        env = {
            "PATH": path,
            "HOME": str(self.cwd),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(HELPER_DIR),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "MLRB_WORKSPACE": str(self.cwd),
            "MLRB_METRICS_FILE": str(self.cwd / METRICS_FILE),
        }
        env.update({k: self._in_view(v) for k, v in self.spec.env})
        return env

    def _in_view(self, value: str) -> str:
        """A sandbox path at or above a read-only mount, as this host sees it; else unchanged."""
        if value.startswith("/") and any(inside == value or inside.startswith(value.rstrip("/") + "/")
                                         for _host, inside in self.spec.readonly_mounts):
            return str(self.view) + value
        return value

    def _link_mounts(self) -> None:
        for host, inside in self.spec.readonly_mounts:
            link = self.view / inside.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(Path(host).resolve())

    def _host_dir(self, workdir: str) -> Path:
        if workdir == WORKSPACE or workdir.startswith(WORKSPACE + "/"):
            return self.cwd / workdir[len(WORKSPACE):].lstrip("/")
        return Path(workdir)

    async def start(self) -> None:
        if self.spec.docker_network:
            raise SandboxError("this task's network policy is \"allowlist\", which the local "
                               "sandbox cannot enforce (a host process reaches every network); "
                               "run it with the docker sandbox")
        await asyncio.to_thread((self.cwd / METRICS_FILE).parent.mkdir, parents=True, exist_ok=True)
        if self.spec.readonly_mounts:
            await asyncio.to_thread(self._link_mounts)
        self._started = True

    async def adopt(self) -> None:
        """Take over a run an earlier runner left: its jobs run in sessions of their own, so
        they outlived that runner; find them from their pid files."""
        from runner.jobs import JOBS_DIR, JobFiles

        if not self.cwd.is_dir():
            raise SandboxError(f"the local sandbox's workspace {self.cwd} is gone")
        self._started = True
        root = self.cwd / JOBS_DIR
        names = await asyncio.to_thread(lambda: sorted(p.name for p in root.iterdir()) if root.is_dir() else [])
        for name in names:
            with contextlib.suppress(SandboxError):
                files = JobFiles(self.cwd, name)
                pid = files.pid()
                if pid is not None and files.rc() is None and self.job_alive(pid):
                    self._jobs[name] = pid

    def release(self) -> None:
        self._stopped = True  # this object lets go; the jobs' processes go on

    # -- jobs: commands that outlive the runner (runner.jobs) -----------------------------
    @property
    def workspace_host(self) -> Path:
        return self.cwd

    async def start_job(self, job_id: str, command: str, timeout_s: float) -> None:
        from runner.jobs import JOBS_DIR, JobFiles, wrapper

        self._check_usable()
        kb = address_space_limit(self.spec.limits.memory_bytes) // 1024
        # not a login shell: /etc/profile would reset the PATH this sandbox sets
        script = wrapper(str(self.cwd / JOBS_DIR), job_id, timeout_s, login=False)
        argv = ["bash", "-c", f'ulimit -v {kb} 2>/dev/null; ulimit -c 0; {script}', "mlrb-job", command]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=self.cwd, env=self.env, start_new_session=True,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise SandboxError(f"cannot run a command in {self.cwd}: {exc}") from None
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise SandboxError(f"cannot start a command in {self.cwd}: "
                               f"{err.decode('utf-8', 'replace')[-500:]}")
        files = JobFiles(self.cwd, job_id)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the pid lands a moment after the wrapper returns
            pid = await asyncio.to_thread(files.pid)
            if pid is not None:
                self._jobs[job_id] = pid
                if self._paused:  # frozen while it started: it freezes too
                    self._signal(pid, signal.SIGSTOP)
                return
            await asyncio.sleep(0.005)

    async def kill_job(self, job_id: str) -> None:
        from runner.jobs import JOBS_DIR, JobFiles

        group = self._jobs.pop(job_id, None)
        files = JobFiles(self.cwd, job_id)
        deadline = time.monotonic() + 5
        # cancelled while it started: its pid lands a moment later, and it must not outlive us
        while group is None and (self.cwd / JOBS_DIR / job_id).is_dir() and files.rc() is None:
            group = files.pid()
            if group is None:
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.01)
        if group is None:
            return
        self._signal(group, signal.SIGTERM)
        self._signal(group, signal.SIGCONT)
        deadline = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < deadline and self.job_alive(group):
            await asyncio.sleep(0.05)
        self._signal(group, signal.SIGKILL)

    def _job_groups_on_disk(self) -> set[int]:
        """Every job of this workspace still running, as its pid files say (one started by an
        earlier runner, or one whose start was cut short)."""
        from runner.jobs import JOBS_DIR, JobFiles

        root = self.cwd / JOBS_DIR
        found: set[int] = set()
        if not root.is_dir():
            return found
        for entry in root.iterdir():
            with contextlib.suppress(SandboxError, OSError):
                pid = JobFiles(self.cwd, entry.name).pid()
                if pid is not None and self.job_alive(pid):
                    found.add(pid)
        return found

    def job_alive(self, pid: int) -> bool | None:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _check_usable(self) -> None:
        if not self._started or self._stopped:
            raise SandboxError(f"cannot run a command: local sandbox {self.id} is "
                               f"{'stopped' if self._stopped else 'not started'}")
        if self._paused:
            raise SandboxError(f"cannot run a command: local sandbox {self.id} is paused "
                               "(resume it first)")

    async def exec(
        self,
        command: str,
        *,
        timeout_s: float = 600,
        output_cap: int = 64 * 1024,
        on_output: OutputCallback | None = None,
        workdir: str = WORKSPACE,
    ) -> ExecResult:
        self._check_usable()
        kb = address_space_limit(self.spec.limits.memory_bytes) // 1024
        argv = ["bash", "-c", f'ulimit -v {kb} 2>/dev/null; ulimit -c 0; exec bash -c "$1"',
                "mlrb-exec", command]
        started = time.monotonic()
        cwd = self._host_dir(workdir)
        if not cwd.is_dir():
            # as docker exec does: a missing working directory is exit 126, not an exception
            return ExecResult(exit_code=126, output=f"cannot change to {workdir}: no such directory\n")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=self.env, start_new_session=True,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise SandboxError(f"cannot run a command in {self.cwd}: {exc}") from None
        group = proc.pid  # start_new_session: the shell leads its own group
        self._groups.add(group)
        out = CappedOutput(output_cap)

        async def pump(stream: asyncio.StreamReader, name: str) -> None:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            while True:
                data = await stream.read(READ_CHUNK)
                text = decoder.decode(data, final=not data)
                if text:
                    out.add(text)
                    if on_output is not None:
                        with contextlib.suppress(Exception):
                            on_output(name, text)
                if not data:
                    return

        assert proc.stdout is not None and proc.stderr is not None
        readers = asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"),
                                 proc.wait())
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(readers), timeout_s)
        except TimeoutError:
            timed_out = True
            await self._terminate(group, proc)
            try:
                await asyncio.wait_for(asyncio.shield(readers), KILL_GRACE_S)
            except TimeoutError:
                readers.cancel()  # a daemonised grandchild still holds the pipes: stop reading
        except asyncio.CancelledError:
            await asyncio.shield(self._terminate(group, proc))
            readers.cancel()
            raise
        finally:
            self._groups.discard(group)
        if self._stopped:
            raise SandboxError(f"sandbox died while a command ran ({self.id}: stopped)")
        code = proc.returncode
        if code is not None and code < 0:
            code = 128 - code  # killed by a signal: report it as a shell would (137 for KILL)
        return ExecResult(
            exit_code=None if timed_out else code,
            output=out.text(),
            truncated=out.truncated,
            timed_out=timed_out,
            duration_s=round(time.monotonic() - started, 3),
        )

    async def _terminate(self, group: int, proc: asyncio.subprocess.Process) -> None:
        self._signal(group, signal.SIGTERM)
        self._signal(group, signal.SIGCONT)  # a frozen group must wake to die of SIGTERM
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
        except TimeoutError:
            pass
        self._signal(group, signal.SIGKILL)  # children that outlived the shell, too
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), KILL_GRACE_S)

    @staticmethod
    def _signal(group: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)

    async def pause(self) -> None:
        self._paused = True
        for group in self._all_groups():
            self._signal(group, signal.SIGSTOP)
        # Signals land asynchronously; like `docker pause`, return once everything is frozen.
        await asyncio.to_thread(self._wait_stopped)

    def _wait_stopped(self, timeout_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            running = 0
            for proc in self._members():
                with contextlib.suppress(psutil.Error):
                    if proc.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE,
                                             psutil.STATUS_DEAD):
                        running += 1
            if not running:
                return
            time.sleep(0.01)

    async def unpause(self) -> None:
        self._paused = False
        for group in self._all_groups():
            self._signal(group, signal.SIGCONT)

    async def status(self) -> SandboxStatus:
        if self._stopped:
            return SandboxStatus(running=False, reason="stopped")
        if not self._started:
            return SandboxStatus(running=False, reason="not started")
        return SandboxStatus(running=not self._paused, paused=self._paused)

    async def stats(self) -> dict[str, float | int | None]:
        return await asyncio.to_thread(self._stats)

    def _members(self) -> list[psutil.Process]:
        groups = self._all_groups()
        found: list[psutil.Process] = []
        if not groups:
            return found
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) in groups:
                    found.append(proc)
        return found

    def _stats(self, interval: float = 0.5) -> dict[str, float | int | None]:
        members = self._members()

        def cpu_seconds() -> float:
            total = 0.0
            for proc in members:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system
            return total

        before, t0 = cpu_seconds(), time.monotonic()
        if members:
            time.sleep(interval)
        elapsed = time.monotonic() - t0
        used = cpu_seconds() - before
        rss = 0
        for proc in members:
            with contextlib.suppress(psutil.Error):
                rss += proc.memory_info().rss
        return {
            "cpu_pct": round(max(used, 0.0) / elapsed * 100.0, 2) if elapsed > 0 else 0.0,
            "mem_bytes": rss,
            "mem_limit": self.spec.limits.memory_bytes,
            "cpu_limit": self.spec.limits.cpus,
            "pids": len(members),
        }

    async def stop(self) -> None:
        self._stopped = True
        for group in self._all_groups() | await asyncio.to_thread(self._job_groups_on_disk):
            self._signal(group, signal.SIGKILL)
        self._jobs.clear()
        shutil.rmtree(self.view, ignore_errors=True)  # only links: the mounted folders stay

    def shell_argv(self) -> list[str]:
        """`bash`, to be started with cwd=self.cwd and env=self.env (no /workspace here)."""
        return ["bash"]
