"""Commands that outlive the runner: an agent's bash and run_python calls run as *jobs*.

A job is started detached inside the sandbox, in a session of its own, and writes what a
runner needs to files the sandbox keeps, under `/workspace/.mlrb/jobs/<id>/`:

    pid      the process group of the command (its `timeout`), to stop it
    started  when it started (seconds since the epoch)
    out      its stdout and stderr, interleaved as they were written
    rc       its exit status, written last (124 when its timeout ended it)

The runner follows `out` from the host side of the workspace and finishes when `rc` appears.
If the runner dies, the command goes on; the next runner follows the same files from where
the journal says output stopped (`skip`), and hands the agent the command's real result.

The folder is the agent's to write, so every file is opened under the workspace without
following a symbolic link at any step: a link planted there cannot make the runner read
a host file.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shlex
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runner.sandbox import CappedOutput, ExecResult, OutputCallback, SandboxError, SandboxStatus

JOBS_DIR = ".mlrb/jobs"  # relative to the workspace
KILL_GRACE_S = 5
READ_CHUNK = 256 * 1024
POLL_MIN_S, POLL_MAX_S = 0.01, 0.25
STATUS_EVERY_S = 1.0
STATUS_GRACE_S = 2.0  # a job whose processes are gone this long without `rc` wrote none
START_GRACE_S = 15.0  # a job that has not written `started` by then never started
_ID_OK = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")

OffsetCallback = Callable[[int], None]  # bytes of `out` handed to on_output so far


class JobHost(Protocol):
    """What a sandbox offers for jobs."""

    @property
    def workspace_host(self) -> Path: ...

    async def start_job(self, job_id: str, command: str, timeout_s: float) -> None: ...

    async def kill_job(self, job_id: str) -> None: ...

    async def status(self) -> SandboxStatus: ...

    def job_alive(self, pid: int) -> bool | None:
        """Whether a job's process still runs, where the host can tell (None: cannot)."""
        ...


def check_id(job_id: str) -> str:
    if not _ID_OK.match(job_id):
        raise SandboxError(f"bad job id {job_id!r}")
    return job_id


def wrapper(jobs_root: str, job_id: str, timeout_s: float, login: bool = True) -> str:
    """The bash script that starts a job detached; `$1` is the command.

    `timeout` leads its own process group, which `pid` names; `rc` is written through a
    temporary name so a reader never sees half of it.
    """
    d = shlex.quote(f"{jobs_root}/{check_id(job_id)}")
    inner = (f'd={d}; date +%s.%N > "$d/started"; '
             f'timeout -k {KILL_GRACE_S} {max(timeout_s, 0.1):.3f}s bash {"-lc" if login else "-c"} "$1" '
             f'>"$d/out" 2>&1 </dev/null & p=$!; echo "$p" > "$d/pid"; '
             f'wait "$p"; rc=$?; echo "$rc" > "$d/rc.tmp" && mv -f "$d/rc.tmp" "$d/rc"')
    # only `setsid` goes to the background, so the starting shell returns at once
    return (f'mkdir -p {d} && rm -f {d}/rc {d}/out || exit 1; '
            f'setsid bash -c {shlex.quote(inner)} mlrb-job "$1" </dev/null >/dev/null 2>&1 &')


def kill_script(jobs_root: str, job_id: str) -> str:
    d = shlex.quote(f"{jobs_root}/{check_id(job_id)}")
    return (f'p=$(cat {d}/pid 2>/dev/null) && [ -n "$p" ] && '
            f'{{ kill -TERM -- -"$p" 2>/dev/null; kill -CONT -- -"$p" 2>/dev/null; '
            f'for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 -- -"$p" 2>/dev/null || exit 0; sleep 0.5; done; '
            f'kill -KILL -- -"$p" 2>/dev/null; }}; exit 0')


# -- reading the job's files from the host, safely -------------------------------------------
def _open_under(root: Path, rel: str) -> int | None:
    """An fd for `root/rel` opened without following a link at any step; None if absent."""
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(root, flags_dir)
    except OSError:
        return None
    parts = [p for p in rel.split("/") if p]
    try:
        for part in parts[:-1]:
            nfd = os.open(part, flags_dir, dir_fd=fd)
            os.close(fd)
            fd = nfd
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        return None
    return leaf


def read_small(root: Path, rel: str, limit: int = 256) -> str | None:
    fd = _open_under(root, rel)
    if fd is None:
        return None
    try:
        return os.read(fd, limit).decode("ascii", errors="replace")
    finally:
        os.close(fd)


def read_from(root: Path, rel: str, offset: int, limit: int = READ_CHUNK) -> bytes:
    fd = _open_under(root, rel)
    if fd is None:
        return b""
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, limit)
    finally:
        os.close(fd)


@dataclass
class JobFiles:
    """A job's files as the host sees them."""

    workspace: Path
    job_id: str

    def _rel(self, name: str) -> str:
        return f"{JOBS_DIR}/{check_id(self.job_id)}/{name}"

    def exists(self) -> bool:
        return read_small(self.workspace, self._rel("started")) is not None

    def rc(self) -> int | None:
        text = read_small(self.workspace, self._rel("rc"))
        if text is None:
            return None
        try:
            return int(text.strip())
        except ValueError:
            return 255  # a garbled status file: the command's end is known, its code is not

    def pid(self) -> int | None:
        text = read_small(self.workspace, self._rel("pid"))
        try:
            return int(text.strip()) if text else None
        except ValueError:
            return None

    def started(self) -> float | None:
        text = read_small(self.workspace, self._rel("started"))
        try:
            return float(text.strip()) if text else None
        except ValueError:
            return None

    def read(self, offset: int) -> bytes:
        return read_from(self.workspace, self._rel("out"), offset)


async def follow_job(
    host: JobHost,
    job_id: str,
    *,
    timeout_s: float,
    output_cap: int,
    on_output: OutputCallback | None = None,
    on_offset: OffsetCallback | None = None,
    skip: int = 0,
    keep_on_cancel: Callable[[], bool] = lambda: False,
) -> ExecResult:
    """Follow a started job to its end. Output before byte `skip` counts toward the result
    but is not handed to `on_output` again (it was, by an earlier runner)."""
    import codecs

    files = JobFiles(host.workspace_host, job_id)
    out = CappedOutput(output_cap)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offset = 0
    poll = POLL_MIN_S
    last_status = time.monotonic()
    began = time.monotonic()
    gone_since: float | None = None

    def take(data: bytes, final: bool = False) -> None:
        nonlocal offset
        start, offset = offset, offset + len(data)
        text = decoder.decode(data, final=final)
        if text:
            out.add(text)
        if on_output is not None and offset > skip:
            fresh = data[max(skip - start, 0):] if start < skip else data
            piece = fresh.decode("utf-8", errors="replace") if start < skip else text
            if piece:
                try:
                    on_output("stdout", piece)
                except Exception:  # noqa: BLE001 - a consumer's bug must not stop the follow
                    pass
        if on_offset is not None and offset > skip:
            on_offset(offset)

    try:
        while True:
            code = await asyncio.to_thread(files.rc)
            data = await asyncio.to_thread(files.read, offset)
            while data:
                take(data)
                data = await asyncio.to_thread(files.read, offset) if len(data) >= READ_CHUNK else b""
            if code is not None:
                take(b"", final=True)
                break
            if time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = time.monotonic()
                st = await host.status()
                if not st.running and not st.paused:
                    code_txt = f", exit code {st.exit_code}" if st.exit_code is not None else ""
                    raise SandboxError(f"sandbox died while a command ran "
                                       f"({st.reason or 'not running'}{code_txt})")
                if time.monotonic() - began > START_GRACE_S and not files.exists() and skip == 0:
                    return ExecResult(exit_code=126, output="[the command could not be started in "
                                                           "the sandbox]", duration_s=0.0)
                pid = files.pid()
                if pid is None or host.job_alive(pid) is not False:
                    gone_since = None
                elif gone_since is None:
                    gone_since = time.monotonic()  # its status lands a moment after it ends
                elif time.monotonic() - gone_since > STATUS_GRACE_S and files.rc() is None:
                    # the command's processes are gone and it never wrote its status
                    take(b"", final=True)
                    out.add("\n[the command's processes ended without an exit status]")
                    return ExecResult(exit_code=None, output=out.text(), truncated=out.truncated,
                                      duration_s=round(time.monotonic() - began, 3))
            await asyncio.sleep(poll)
            poll = min(poll * 1.5, POLL_MAX_S)
    except asyncio.CancelledError:
        if not keep_on_cancel():
            await asyncio.shield(host.kill_job(job_id))
        raise
    started = await asyncio.to_thread(files.started)
    duration = (time.time() - started) if started is not None else time.monotonic() - began
    timed_out = code in (124, 137) and duration >= timeout_s * 0.98
    return ExecResult(exit_code=None if timed_out else code, output=out.text(),
                      truncated=out.truncated, timed_out=timed_out,
                      duration_s=round(max(duration, 0.0), 3))


async def run_job(
    host: JobHost,
    job_id: str,
    command: str,
    *,
    timeout_s: float,
    output_cap: int,
    on_output: OutputCallback | None = None,
    on_offset: OffsetCallback | None = None,
    keep_on_cancel: Callable[[], bool] = lambda: False,
) -> ExecResult:
    """Start a job and follow it to its end."""
    try:
        await host.start_job(job_id, command, timeout_s)
    except asyncio.CancelledError:
        if not keep_on_cancel():
            await asyncio.shield(host.kill_job(job_id))
        raise
    return await follow_job(host, job_id, timeout_s=timeout_s, output_cap=output_cap,
                            on_output=on_output, on_offset=on_offset,
                            keep_on_cancel=keep_on_cancel)
