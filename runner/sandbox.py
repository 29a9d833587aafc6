"""What every sandbox offers the runner, and how one is chosen.

Agents never run on the host: their tool calls run in a sandbox. The Docker sandbox is the
default whenever an engine answers; the local-process sandbox is the fallback, and says
loudly that it is not isolated.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

WORKSPACE = "/workspace"  # the workspace's path inside every sandbox
METRICS_FILE = ".mlrb/metrics.jsonl"  # relative to the workspace; appended by mlrb_metrics


class SandboxError(RuntimeError):
    """A sandbox could not do what was asked; the message is for the operator."""


class GPUUnavailable(SandboxError):
    """GPUs were requested but this host has no GPU runtime."""


@dataclass(frozen=True)
class SandboxLimits:
    cpus: float = 2.0
    memory_bytes: int = 4 * 1024**3
    pids: int = 512
    gpus: int = 0  # number of GPUs, by device request
    gpu_ids: tuple[str, ...] = ()  # explicit device ids, when the scheduler assigned them


@dataclass(frozen=True)
class SandboxSpec:
    run: str
    workspace: Path  # host folder mounted read-write at WORKSPACE
    image: str = "mlrb-sandbox:latest"
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    readonly_mounts: tuple[tuple[Path, str], ...] = ()  # (host path, sandbox path)
    env: tuple[tuple[str, str], ...] = ()  # never provider keys
    # empty writable folders that read-only mounts sit in (tmpfs in a container; the local
    # sandbox's view folders are writable already), e.g. a datasets cache root for its lock files
    scratch_dirs: tuple[str, ...] = ()
    network: bool = False
    docker_network: str | None = None  # a Docker network to join instead (an allowlist run's)
    user: str = "1000:1000"
    labels: tuple[tuple[str, str], ...] = ()  # e.g. the runner and journal that own the run


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None  # None when killed by the timeout
    output: str  # stdout and stderr interleaved, capped
    truncated: bool = False
    timed_out: bool = False
    duration_s: float = 0.0


@dataclass(frozen=True)
class SandboxStatus:
    running: bool
    paused: bool = False
    exit_code: int | None = None
    reason: str = ""  # e.g. "OOMKilled", "exited", "removed"


OutputCallback = Callable[[str, str], None]  # (stream, text chunk) as it arrives


class Sandbox(Protocol):
    backend: str  # "docker" | "local"
    isolated: bool
    spec: SandboxSpec

    @property
    def id(self) -> str: ...

    async def start(self) -> None: ...

    async def adopt(self) -> None:
        """Take over the run's sandbox that an earlier runner left running; SandboxError if
        it is gone."""
        ...

    def release(self) -> None:
        """Let go of the sandbox without stopping it: the runner detaches, its runs go on."""
        ...

    @property
    def workspace_host(self) -> Path:
        """The workspace as the host sees it."""
        ...

    async def start_job(self, job_id: str, command: str, timeout_s: float) -> None:
        """Start `command` detached, writing its output and status under the workspace's
        `.mlrb/jobs/<job_id>/` (runner.jobs)."""
        ...

    async def kill_job(self, job_id: str) -> None: ...

    def job_alive(self, pid: int) -> bool | None: ...

    async def exec(
        self,
        command: str,
        *,
        timeout_s: float = 600,
        output_cap: int = 64 * 1024,
        on_output: OutputCallback | None = None,
        workdir: str = WORKSPACE,
    ) -> ExecResult:
        """Run `bash -lc command` as the sandbox user; never raises for a non-zero exit."""
        ...

    async def pause(self) -> None: ...

    async def unpause(self) -> None: ...

    async def status(self) -> SandboxStatus: ...

    async def stats(self) -> dict[str, float | int | None]:
        """One sample: cpu_pct, mem_bytes, mem_limit, cpu_limit."""
        ...

    async def stop(self) -> None:
        """Stop and remove the sandbox; safe to call twice."""
        ...

    def shell_argv(self) -> list[str]:
        """argv for an interactive shell in the sandbox as the sandbox user."""
        ...


class CappedOutput:
    """A command's interleaved output, bounded: the head and the tail are kept, the middle is
    counted and replaced by a marker, so a chatty training loop cannot fill the runner's memory.
    """

    def __init__(self, cap: int) -> None:
        self.cap = max(cap, 0)
        self._head: list[str] = []
        self._head_len = 0
        self._tail: deque[str] = deque()
        self._tail_len = 0
        self.cut_bytes = 0

    def add(self, text: str) -> None:
        room = self.cap // 2 - self._head_len
        if room > 0:
            self._head.append(text[:room])
            self._head_len += min(len(text), room)
            text = text[room:]
        if not text:
            return
        self._tail.append(text)
        self._tail_len += len(text)
        keep = self.cap - self.cap // 2
        while self._tail_len > keep:
            extra = self._tail_len - keep
            first = self._tail[0]
            if len(first) <= extra:
                self._tail.popleft()
                self._tail_len -= len(first)
                self.cut_bytes += len(first.encode("utf-8", "replace"))
            else:
                self._tail[0] = first[extra:]
                self._tail_len -= extra
                self.cut_bytes += len(first[:extra].encode("utf-8", "replace"))

    @property
    def truncated(self) -> bool:
        return self.cut_bytes > 0

    def text(self) -> str:
        head, tail = "".join(self._head), "".join(self._tail)
        if not self.truncated:
            return head + tail
        return f"{head}\n[... {self.cut_bytes} bytes cut ...]\n{tail}"
