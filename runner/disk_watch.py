"""DiskWatch: a run's workspace quota and the host's free-space floor.

Each scale of a task names a workspace quota (`disk_gb` in its task.toml). Where the host
allows it (the runner is root, loop devices exist, `mkfs.ext4` and `mount` are installed) the
kernel enforces it: the workspace is a sparse ext4 image of the quota's size
(`runs/RUN/workspace.img`), loop-mounted at `runs/RUN/workspace/` before the workspace is
filled and unmounted when the run ends, so a write past the quota fails with ENOSPC and the
host never gives more than the quota. Elsewhere the run says why once (a `run.warning`) and a
watcher measures the workspace instead (a walk that counts allocated blocks and follows no
symlink), which can overshoot by what a command writes between two looks.

Either way a follower samples the workspace and the host's free space off the event loop:
at 80% of the quota the operator is warned and the agent told; at 100% the run is held with
the reason. Below the host floor (`[runner] min_free_gb`, measured on the filesystem of the
journal, i.e. MLRB_HOME) a new run waits held before its workspace is made and a live run is
held. Each alert fires once, and again only after its condition cleared and came back, so an
operator's resume lets the agent go on (to delete checkpoints, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from runner.journal import Journal, JournalFullError

log = logging.getLogger(__name__)

GB = 10**9  # as disks are sold, and as task.toml's disk_gb counts
WARN_AT = 0.8
FULL_SLACK = 1 << 20  # a kernel-quota'd workspace with less than this left is full
WALK_LIMIT = 2_000_000  # entries one workspace walk visits at most
QuotaMode = Literal["auto", "watch"]
AlertCode = Literal["disk_quota", "disk_quota_full", "disk_floor"]


class QuotaError(RuntimeError):
    """The kernel cannot enforce the quota here; the message says why."""


@dataclass(frozen=True)
class DiskPolicy:
    """The runner's side of disk limits (the task's side is the quota)."""

    min_free_gb: float = 0.0  # the host floor; 0: none
    quota_mode: QuotaMode = "watch"  # auto: the kernel where the host allows it
    every_s: float = 5.0  # how often the follower looks
    walk_limit: int = WALK_LIMIT

    @property
    def floor_bytes(self) -> int:
        return int(self.min_free_gb * GB)


@dataclass(frozen=True)
class DiskSample:
    used: int | None  # bytes the workspace holds; None: no quota to measure against
    capacity: int | None  # bytes it may hold
    host_free: int  # bytes free to the runner on the journal's filesystem
    partial: bool = False  # the walk stopped at its limit: `used` is a lower bound
    kernel: bool = False  # measured on the quota'd filesystem itself

    @property
    def fraction(self) -> float | None:
        if self.used is None or not self.capacity:
            return None
        return self.used / self.capacity

    @property
    def full(self) -> bool:
        if self.used is None or self.capacity is None:
            return False
        return self.used >= self.capacity or (self.kernel and self.capacity - self.used < FULL_SLACK)


@dataclass(frozen=True)
class DiskAlert:
    code: AlertCode
    message: str  # for the operator (run.warning, or the hold's reason)
    notice: str  # for the agent, at its next turn
    hold: bool


def fmt_gb(n: float) -> str:
    """'1.66 GB', '0.25 GB', '300 GB'."""
    gb = n / GB
    return f"{gb:.0f} GB" if gb >= 100 else f"{gb:.2f} GB".replace(".00 GB", " GB")


# -- measuring ---------------------------------------------------------------------------------
def tree_usage(root: Path, limit: int = WALK_LIMIT) -> tuple[int, bool]:
    """Bytes allocated under `root` (st_blocks, each inode once, symlinks never followed, other
    filesystems not entered) and whether the walk stopped at `limit` entries."""
    try:
        top = os.lstat(root)
    except FileNotFoundError:
        return 0, False
    seen: set[tuple[int, int]] = set()
    total = top.st_blocks * 512
    stack = [str(root)]
    visited = 0
    while stack:
        folder = stack.pop()
        try:
            it = os.scandir(folder)
        except OSError:  # vanished or unreadable: the agent's files come and go
            continue
        with it:
            for entry in it:
                visited += 1
                if visited > limit:
                    return total, True
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != top.st_dev:
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total, False


def fs_usage(path: Path) -> tuple[int, int]:
    """(used, capacity) of the filesystem at `path` as an unprivileged writer sees it."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return used, used + st.f_bavail * st.f_frsize


def host_free(path: Path) -> int:
    """Bytes free to an unprivileged writer on the filesystem holding `path`."""
    for p in (path, *path.parents):
        if p.exists():
            st = os.statvfs(p)
            return st.f_bavail * st.f_frsize
    return 0


# -- the kernel path: a quota'd filesystem image ----------------------------------------------------
def _tools() -> dict[str, str | None]:
    return {name: shutil.which(name) for name in ("mkfs.ext4", "mount", "umount")}


class WorkspaceImage:
    """A sparse ext4 image of the quota's size, loop-mounted as the workspace."""

    def __init__(self, workspace: Path, size: int) -> None:
        self.workspace = workspace
        self.size = size
        self.path = workspace.with_name(workspace.name + ".img")

    @property
    def mounted(self) -> bool:
        return os.path.ismount(self.workspace)

    def unavailable(self) -> str | None:
        """Why the kernel cannot enforce the quota on this host, or None when it can."""
        if os.geteuid() != 0:
            return "the runner is not root, and mounting a filesystem image needs root"
        missing = [name for name, path in _tools().items() if path is None]
        if missing:
            return f"{', '.join(missing)} not installed"
        if not Path("/dev/loop-control").exists():
            return "this host has no loop devices (/dev/loop-control)"
        if self.workspace.is_dir() and any(self.workspace.iterdir()):
            return "the workspace already holds files"
        return None

    def mount(self) -> None:
        """Make the image and mount it at the workspace; raises QuotaError saying why not."""
        why = self.unavailable()
        if why is not None:
            raise QuotaError(why)
        tools = _tools()
        self.workspace.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "wb") as f:
                f.truncate(self.size)  # sparse: the host gives blocks only as they are written
            # no root reserve, an inode per 64 KiB, and no zeroing pass over the image
            self._run([tools["mkfs.ext4"], "-q", "-F", "-m", "0", "-i", "65536", "-L", "mlrb-ws",
                       "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", str(self.path)])
            self._run([tools["mount"], "-o", "loop,nosuid,nodev", str(self.path),
                       str(self.workspace)])
        except (OSError, QuotaError) as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise QuotaError(str(exc)) from None
        with contextlib.suppress(OSError):
            (self.workspace / "lost+found").rmdir()  # e2fsck makes it again if ever needed
        os.chmod(self.workspace, 0o755)

    def unmount(self) -> None:
        """Unmount the workspace; the image stays beside it, holding the run's files."""
        if not self.mounted:
            return
        umount = _tools()["umount"] or "umount"
        try:
            self._run([umount, str(self.workspace)])
        except QuotaError:
            # still busy (a process that outlived its sandbox): detach now, free when it ends
            self._run([umount, "-l", str(self.workspace)])

    @staticmethod
    def _run(argv: list[str | None]) -> None:
        args = [a for a in argv if a is not None]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-300:]
            raise QuotaError(f"{Path(args[0]).name} failed ({proc.returncode}): {tail}")


# -- the thresholds ------------------------------------------------------------------------------
class DiskJudge:
    """Turns samples into alerts: each once, and again only after it cleared and came back."""

    def __init__(self, quota: int | None, floor: int, warn_at: float = WARN_AT) -> None:
        self.quota = quota
        self.floor = floor
        self.warn_at = warn_at
        self._fired: set[AlertCode] = set()

    @property
    def firing(self) -> frozenset[AlertCode]:
        return frozenset(self._fired)

    def due(self, s: DiskSample) -> list[DiskAlert]:
        out: list[DiskAlert] = []
        frac = s.fraction
        if frac is None or (frac < self.warn_at and not s.full):
            self._fired.difference_update(("disk_quota", "disk_quota_full"))
        elif not s.full:
            self._fired.discard("disk_quota_full")
        quota = fmt_gb(self.quota) if self.quota else fmt_gb(s.capacity or 0)
        if s.full and frac is not None and "disk_quota_full" not in self._fired:
            self._fired.update(("disk_quota", "disk_quota_full"))
            out.append(DiskAlert(
                "disk_quota_full",
                f"disk quota: the workspace holds {fmt_gb(s.used or 0)} of its {quota} quota",
                f"Your workspace is full: {fmt_gb(s.used or 0)} of its {quota} disk quota. The run "
                "is held until an operator resumes it; then delete what you no longer need "
                "(old checkpoints) before writing more.", hold=True))
        elif frac is not None and frac >= self.warn_at and "disk_quota" not in self._fired:
            self._fired.add("disk_quota")
            out.append(DiskAlert(
                "disk_quota",
                f"workspace at {frac:.0%} of its {quota} disk quota ({fmt_gb(s.used or 0)})",
                f"Your workspace uses {fmt_gb(s.used or 0)} of its {quota} disk quota "
                f"({frac:.0%}). At 100% the run is held: delete old checkpoints and data you "
                "no longer need, and keep only what you will submit.", hold=False))
        if self.floor > 0 and s.host_free < self.floor:
            if "disk_floor" not in self._fired:
                self._fired.add("disk_floor")
                out.append(DiskAlert("disk_floor", floor_reason(s.host_free, self.floor),
                                     "The host is nearly out of disk space: the run is held "
                                     "until an operator resumes it.", hold=True))
        else:
            self._fired.discard("disk_floor")
        return out


def floor_reason(free: int, floor: int) -> str:
    return (f"host disk: {fmt_gb(free)} free under MLRB_HOME, below the {fmt_gb(floor)} floor "
            "([runner] min_free_gb)")


# -- the run's side ------------------------------------------------------------------------------
class DiskRun(Protocol):
    """What DiskWatch needs of the run it watches (RunSupervisor)."""

    journal: Journal

    @property
    def ending(self) -> bool: ...

    @property
    def pause_level(self) -> Any: ...

    async def emit(self, kind: str, data: dict[str, Any] | None = None) -> Any: ...

    async def hold(self, reason: str | None = None) -> None: ...

    async def resume(self) -> None: ...

    def notice(self, text: str) -> None: ...


class DiskWatch:
    """One run's quota and floor: `prepare` before the workspace is made, `follow` as a
    follower task while the run lives, `journal_full` when the journal cannot write, and
    `release` at the end."""

    def __init__(self, workspace: Path, host_path: Path, quota: int | None,
                 policy: DiskPolicy | None = None,
                 free: Callable[[Path], int] = host_free) -> None:
        self.workspace = workspace
        self.host_path = host_path
        self.quota = quota
        self.policy = policy or DiskPolicy()
        self._free = free
        self.judge = DiskJudge(quota, self.policy.floor_bytes)
        self.image: WorkspaceImage | None = None  # set once the kernel enforces the quota
        self.kernel_note: str | None = None  # why the kernel does not, when it was asked to
        self._journal_full = False
        self._partial_said = False

    @property
    def enforced_by(self) -> str:
        """'kernel', 'watcher' or 'none'."""
        if self.quota is None:
            return "none"
        return "kernel" if self.image is not None else "watcher"

    @property
    def active(self) -> bool:
        return self.quota is not None or self.policy.floor_bytes > 0

    # -- before the workspace ----------------------------------------------------------------
    async def prepare(self, run: DiskRun) -> bool:
        """Wait (held, with the reason) while the host is below its floor, then make the
        workspace a quota'd filesystem where the host allows it. False: the run ended meanwhile."""
        floor = self.policy.floor_bytes
        if floor > 0:
            free = await asyncio.to_thread(self._free, self.host_path)
            if free < floor:
                await run.hold(floor_reason(free, floor))
                while not run.ending and run.pause_level is not None:
                    await asyncio.sleep(self.policy.every_s)
                    if await asyncio.to_thread(self._free, self.host_path) >= floor:
                        await run.resume()
                # an operator's resume lets the run start below the floor: theirs to decide
        if run.ending:
            return False
        if self.quota is not None and self.policy.quota_mode == "auto":
            image = WorkspaceImage(self.workspace, self.quota)
            try:
                await asyncio.to_thread(image.mount)
                self.image = image
            except QuotaError as exc:
                self.kernel_note = str(exc)
        return True

    def readopt(self) -> None:
        """An adopted run: its workspace image, mounted by the runner before, still enforces
        the quota."""
        if self.quota is not None and os.path.ismount(self.workspace):
            self.image = WorkspaceImage(self.workspace, self.quota)

    # -- while the run lives ---------------------------------------------------------------
    def sample(self) -> DiskSample:
        """The workspace's use and the host's free space now (blocking: run it in a thread)."""
        free = self._free(self.host_path)
        if self.quota is None:
            return DiskSample(None, None, free)
        if self.image is not None and self.image.mounted:
            used, capacity = fs_usage(self.workspace)
            return DiskSample(used, capacity, free, kernel=True)
        used, partial = tree_usage(self.workspace, self.policy.walk_limit)
        return DiskSample(used, self.quota, free, partial)

    async def follow(self, run: DiskRun) -> None:
        """The follower: sample every `every_s`, warn, tell the agent and hold as due."""
        if self.kernel_note is not None:
            await run.emit("run.warning", {
                "code": "disk_quota_watch",
                "message": f"the kernel cannot enforce the {fmt_gb(self.quota or 0)} workspace "
                           f"quota ({self.kernel_note}); a watcher measures it instead, and a "
                           "command may overshoot it between two looks"})
        while not run.ending:
            if self._journal_full and run.journal.deferred == 0:
                self._journal_full = False  # written since: the next full disk holds again
            if not self.active:
                await asyncio.sleep(self.policy.every_s)
                continue
            started = time.monotonic()
            sample = await asyncio.to_thread(self.sample)
            took = time.monotonic() - started
            if sample.partial and not self._partial_said:
                self._partial_said = True
                await run.emit("run.warning", {
                    "code": "disk_quota_partial",
                    "message": f"the workspace holds more than {self.policy.walk_limit:,} files; "
                               "its measured size is a lower bound"})
            for alert in self.judge.due(sample):
                if run.ending:
                    return
                await self.act(run, alert)
            # a walk over a huge workspace is slow: keep it to a tenth of a core
            await asyncio.sleep(max(self.policy.every_s, 9 * took))

    async def act(self, run: DiskRun, alert: DiskAlert) -> None:
        run.notice(alert.notice)
        if alert.hold:
            if run.pause_level is None:
                await run.hold(alert.message)
            else:  # already held or frozen: still say why it would have been
                await run.emit("run.warning", {"code": alert.code, "message": alert.message})
        else:
            await run.emit("run.warning", {"code": alert.code, "message": alert.message})

    def journal_full(self, exc: JournalFullError) -> str | None:
        """The reason to hold the run with, the first time the journal reports a full disk
        (and again only after it has written since); None when the run is held for it already."""
        if self._journal_full:
            return None
        self._journal_full = True
        log.error("%s", exc)
        return f"journal: the disk is full ({exc.cause}); {exc.kept} events wait in memory"

    # -- the end -----------------------------------------------------------------------------
    async def release(self, run: DiskRun) -> None:
        """Unmount a kernel-quota'd workspace (its files stay in the image beside it)."""
        if self.image is None:
            return
        try:
            await asyncio.to_thread(self.image.unmount)
        except (QuotaError, OSError) as exc:
            await run.emit("run.warning", {"code": "disk_unmount",
                                           "message": f"the workspace stays mounted: {exc}"})


__all__ = ["GB", "WARN_AT", "DiskAlert", "DiskJudge", "DiskPolicy", "DiskRun", "DiskSample",
           "DiskWatch", "QuotaError", "WorkspaceImage", "floor_reason", "fmt_gb", "fs_usage",
           "host_free", "tree_usage"]
