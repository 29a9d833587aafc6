"""Disk limits: the workspace quota (the kernel's filesystem image, or the watcher), the
host's free-space floor, and a journal whose disk fills up.

The fault tests run a real sandbox that writes past its quota and check that the run is held
with the reason and that the host gave no more than the quota."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runner.agents.base import AgentTurn, Observation, ScriptedAgent
from runner.config import ConfigError, load_config
from runner.control import ControlCommand
from runner.disk_watch import (
    GB,
    DiskJudge,
    DiskPolicy,
    DiskSample,
    DiskWatch,
    WorkspaceImage,
    fmt_gb,
    tree_usage,
)
from runner.event_data import RunHeldData
from runner.events import Event, EventFactory
from runner.journal import Journal, JournalFullError, JournalReader
from runner.sandbox import SandboxSpec
from runner.supervisor import RunRequest, RunSupervisor
from tasks.api import TaskSpec, TaskSpecError, list_tasks, load_spec_file
from tests.conftest import require, until

FIXTURE = Path(__file__).parent / "fixtures" / "tasks" / "tiny_train" / "task.toml"
IMAGE = "mlrb-sandbox:latest"
MB = 10**6


def can_mount() -> bool:
    return WorkspaceImage(Path("/nonexistent/ws"), MB).unavailable() is None


def task(disk_gb: float | None) -> TaskSpec:
    spec = load_spec_file(FIXTURE)
    smoke = spec.scales["smoke"].model_copy(update={"disk_gb": disk_gb})
    return replace(spec, scales={**spec.scales, "smoke": smoke})


class StandIn(ScriptedAgent):
    """The scripted plan, recording what the runner told it; before the call numbered
    `wait_at` it waits for `cond` (as an LLM would take its time)."""

    def __init__(self, plan: list[dict[str, Any]], wait_at: int = -1,
                 cond: Callable[[], bool] | None = None) -> None:
        super().__init__(plan)
        self.notices: list[str] = []
        self.wait_at, self.cond = wait_at, cond

    async def turn(self, obs: Observation) -> AgentTurn:
        self.notices += obs.notices
        if self._next == self.wait_at and self.cond is not None:
            await until(self.cond, timeout=60)
        return await super().turn(obs)


def bash(command: str) -> dict[str, Any]:
    return {"name": "bash", "args": {"command": command, "timeout_s": 300}}


class Runs:
    def __init__(self, tmp: Path, backend: str, journal_dir: Path | None = None) -> None:
        self.tmp = tmp
        self.backend = backend
        self.db = (journal_dir or tmp) / "j.db"
        self.journal = Journal(self.db)

    def make_sandbox(self, spec: SandboxSpec):  # type: ignore[no-untyped-def]
        from runner.sandbox_factory import create_sandbox

        return create_sandbox(spec, backend=self.backend)

    def supervisor(self, agent: ScriptedAgent, spec: TaskSpec, policy: DiskPolicy,
                   run: str = "disk-1") -> RunSupervisor:
        return RunSupervisor(
            RunRequest(run=run, task=spec, scale="smoke", agent_kind=agent.name),
            journal=self.journal, publish=None, make_sandbox=self.make_sandbox, agent=agent,
            workspace=self.tmp / "runs" / run / "workspace", runner_id="test", image=IMAGE,
            disk=policy)

    def events(self, run: str = "disk-1") -> list[Event]:
        r = JournalReader(self.db)
        try:
            return r.events(run, 0, 100000)
        finally:
            r.close()

    def held(self, run: str = "disk-1") -> list[RunHeldData]:
        return [e.body for e in self.events(run) if isinstance(e.body, RunHeldData)]

    def warnings(self, code: str, run: str = "disk-1") -> list[str]:
        return [e.data["message"] for e in self.events(run)
                if e.kind == "run.warning" and e.data.get("code") == code]

    def output(self, run: str = "disk-1") -> str:
        return "".join(e.data["text"] for e in self.events(run) if e.kind == "sandbox.output")


def kill(run: str = "disk-1") -> ControlCommand:
    return ControlCommand(run=run, action="kill", operator="tester@host", reason="test over")


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Runs]:
    r = Runs(tmp_path, "local")
    yield r
    r.journal.close()


@pytest.fixture
def docker_runs(tmp_path: Path, docker_client: Any, sandbox_image: str) -> Iterator[Runs]:
    r = Runs(tmp_path, "docker")
    yield r
    r.journal.close()


@pytest.fixture(scope="session")
def sandbox_image(docker_client: Any) -> str:
    from runner.image import build_image

    build_image(tag=IMAGE, log=lambda s: None)
    return IMAGE


# -- the task specs ----------------------------------------------------------------------------
def test_every_scale_of_every_task_has_a_quota_and_full_scale_needs_more() -> None:
    for spec in list_tasks():
        smoke, full = spec.scale("smoke"), spec.scale("full")
        assert smoke.disk_gb == 2, spec.name
        assert full.disk_gb is not None and full.disk_gb > smoke.disk_gb, spec.name
        assert full.disk_bytes == int(full.disk_gb * GB)
    quotas = {s.name: s.scale("full").disk_gb for s in list_tasks()}
    assert quotas["llm_merging"] > quotas["baby_lm"]  # 7B merges against a 10M-word corpus


@pytest.mark.parametrize("value, wanted", [
    ("0", "smoke.disk_gb: Input should be greater than 0"),
    ("-2", "smoke.disk_gb: Input should be greater than 0"),
    ('"lots"', "smoke.disk_gb: Input should be a valid number"),
])
def test_a_broken_quota_is_a_one_line_task_spec_error(tmp_path: Path, value: str,
                                                      wanted: str) -> None:
    bundle = tmp_path / "tiny_train"
    shutil.copytree(FIXTURE.parent, bundle)
    text = FIXTURE.read_text().replace("[smoke]\n", f"[smoke]\ndisk_gb = {value}\n", 1)
    (bundle / "task.toml").write_text(text)
    with pytest.raises(TaskSpecError) as caught:
        load_spec_file(bundle / "task.toml")
    assert wanted in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(bundle / "task.toml"))


# -- the runner's config -------------------------------------------------------------------------
def test_the_floor_and_the_quota_mode_come_from_the_runner_table(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLRB_CONFIG", raising=False)
    cfg = load_config(tmp_path)
    assert (cfg.min_free_gb, cfg.workspace_quota) == (5.0, "auto")
    (tmp_path / "config.toml").write_text('[runner]\nmin_free_gb = 20\nworkspace_quota = "watch"\n')
    cfg = load_config(tmp_path)
    assert (cfg.min_free_gb, cfg.workspace_quota) == (20.0, "watch")
    for text, message in [("min_free_gb = -1", "runner.min_free_gb must be at least 0"),
                          ('workspace_quota = "xfs"',
                           "runner.workspace_quota must be auto or watch, not 'xfs'")]:
        (tmp_path / "config.toml").write_text(f"[runner]\n{text}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path)
        assert str(caught.value) == f"{tmp_path / 'config.toml'}: {message}"


# -- measuring -----------------------------------------------------------------------------------
def test_the_walk_counts_allocated_blocks_once_and_follows_no_symlink(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "a" / "b").mkdir(parents=True)
    (ws / "a" / "b" / "blob").write_bytes(os.urandom(3 * MB))
    os.link(ws / "a" / "b" / "blob", ws / "hardlink")  # the same blocks, counted once
    with open(ws / "sparse", "wb") as f:
        f.truncate(500 * MB)  # holds no blocks
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(os.urandom(5 * MB))
    (ws / "link").symlink_to(outside)  # not followed: the host's files are not the run's
    used, partial = tree_usage(ws)
    assert not partial
    assert 3 * MB <= used < 3 * MB + 200_000
    used, partial = tree_usage(ws, limit=2)
    assert partial and used < 3 * MB + 200_000
    assert tree_usage(tmp_path / "missing") == (0, False)


def test_the_judge_warns_at_80_holds_at_100_and_fires_again_only_after_clearing() -> None:
    quota = 100 * MB
    judge = DiskJudge(quota, floor=0)

    def at(used: int) -> list[tuple[str, bool]]:
        return [(a.code, a.hold) for a in judge.due(DiskSample(used, quota, 50 * GB))]

    assert at(70 * MB) == []
    assert at(81 * MB) == [("disk_quota", False)]
    assert at(85 * MB) == []  # once per episode
    assert at(100 * MB) == [("disk_quota_full", True)]
    assert at(120 * MB) == []
    assert at(90 * MB) == []  # below 100% but still above 80%: no new warning
    assert at(101 * MB) == [("disk_quota_full", True)]  # cleared and came back
    assert at(10 * MB) == []
    assert at(50 * MB) == []
    assert at(100 * MB) == [("disk_quota_full", True)]  # a jump past 80% holds, no warning


def test_alerts_name_the_numbers_and_tell_the_agent_what_to_do() -> None:
    judge = DiskJudge(2 * GB, floor=5 * GB)
    warn, = judge.due(DiskSample(int(1.7 * GB), 2 * GB, 80 * GB))
    assert warn.message == "workspace at 85% of its 2 GB disk quota (1.70 GB)"
    assert "delete old checkpoints" in warn.notice and not warn.hold
    full, = judge.due(DiskSample(2 * GB, 2 * GB, 80 * GB))
    assert full.hold and full.message == "disk quota: the workspace holds 2 GB of its 2 GB quota"
    floor, = judge.due(DiskSample(2 * GB, 2 * GB, int(3.2 * GB)))
    assert floor.hold and floor.code == "disk_floor"
    assert floor.message == ("host disk: 3.20 GB free under MLRB_HOME, below the 5 GB floor "
                             "([runner] min_free_gb)")
    assert judge.due(DiskSample(2 * GB, 2 * GB, GB)) == []
    judge.due(DiskSample(2 * GB, 2 * GB, 6 * GB))  # back above the floor
    assert [a.code for a in judge.due(DiskSample(2 * GB, 2 * GB, GB))] == ["disk_floor"]
    assert fmt_gb(300 * GB) == "300 GB" and fmt_gb(0.25 * GB) == "0.25 GB"


def test_a_kernel_quota_is_full_when_less_than_a_mebibyte_is_left() -> None:
    assert DiskSample(99 * MB, 99 * MB + 500_000, GB, kernel=True).full
    assert not DiskSample(99 * MB, 99 * MB + 500_000, GB).full  # the watcher counts bytes
    assert not DiskSample(None, None, GB).full


# -- the kernel's image ------------------------------------------------------------------------
@pytest.fixture
def mountable() -> None:
    require(can_mount(), "root with loop devices, mkfs.ext4 and mount")


def test_the_image_is_sparse_mounted_as_the_workspace_and_stops_writes_at_the_quota(
        tmp_path: Path, mountable: None) -> None:
    ws = tmp_path / "run" / "workspace"
    image = WorkspaceImage(ws, 40 * MB)
    image.mount()
    try:
        assert image.mounted and list(ws.iterdir()) == []
        assert image.path.stat().st_blocks * 512 < 5 * MB  # sparse until written
        with pytest.raises(OSError, match="No space left"), open(ws / "blob", "wb") as f:
            for _ in range(60):
                f.write(b"\0" * MB)
                f.flush()
                os.fsync(f.fileno())
        # the host gave the image no more than its size
        assert image.path.stat().st_blocks * 512 <= 40 * MB
        assert tree_usage(tmp_path / "run")[0] <= 40 * MB + MB  # the mount is not entered
    finally:
        image.unmount()
    assert not image.mounted and image.path.is_file()


def test_the_kernel_is_not_asked_to_mount_over_files(tmp_path: Path) -> None:
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "notes.txt").write_text("already here")
    why = WorkspaceImage(ws, MB).unavailable()
    assert why is not None
    if can_mount():
        assert why == "the workspace already holds files"


# -- the journal on a full disk ------------------------------------------------------------------
@contextlib.contextmanager
def tiny_fs(tmp: Path, size: int = 8 * MB) -> Iterator[Path]:
    image = WorkspaceImage(tmp / "tiny", size)
    image.mount()
    try:
        yield image.workspace
    finally:
        image.unmount()


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def test_a_full_disk_raises_a_clear_error_and_loses_no_event(tmp_path: Path,
                                                             mountable: None) -> None:
    with tiny_fs(tmp_path) as fs:
        journal = Journal(fs / "mlrb.db")
        try:
            f = EventFactory("r1")
            journal.write_sync([f.make("run.created", {"task": "t"})])
            filler = fill(fs)
            refused = [f.make("sandbox.output", {"text": "x" * 3000}) for _ in range(400)]
            with pytest.raises(JournalFullError) as caught:
                journal.write_sync(refused)
            err = caught.value
            assert "the disk is full (database or disk is full)" in str(err)
            assert str(fs / "mlrb.db") in str(err) and err.kept == 400 and err.refused == 0
            assert journal.deferred == 400
            filler.unlink()
            journal.write_sync([f.make("run.ended", {"status": "failed", "reason": "test"})])
            assert journal.deferred == 0
        finally:
            journal.close()
        r = JournalReader(fs / "mlrb.db")
        try:
            assert [e.seq for e in r.events("r1", 0, 10000)] == list(range(1, 403))  # gapless
        finally:
            r.close()


def test_a_run_holds_when_its_journal_fills_and_goes_on_once_space_is_freed(
        tmp_path: Path, mountable: None) -> None:
    async def main(fs: Path) -> None:
        runs = Runs(tmp_path, "local", journal_dir=fs)  # the workspace is elsewhere
        filler: list[Path] = []
        agent = StandIn([bash("echo first"), bash("echo second"), bash("echo third")],
                        wait_at=1, cond=lambda: bool(filler.append(fill(fs)) or True))
        sup = runs.supervisor(agent, task(None), DiskPolicy(every_s=0.05))
        try:
            run = asyncio.create_task(sup.run())
            await until(lambda: sup.status == "held", timeout=60)
            assert runs.journal.deferred > 0
            filler[0].unlink()
            await until(lambda: runs.journal.deferred == 0 or sup.ending, timeout=30)
            await sup.control(ControlCommand(run="disk-1", action="resume", operator="op@host",
                                             reason="space freed"))
            assert await asyncio.wait_for(run, 120) == "failed"  # the plan ends unsubmitted
            evs = runs.events()
            assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
            held = [e.body for e in evs if isinstance(e.body, RunHeldData)]
            assert held and held[0].reason is not None
            assert held[0].reason.startswith("journal: the disk is full (database or disk is full)")
            assert "third" in "".join(e.data.get("text", "") for e in evs
                                      if e.kind == "sandbox.output")
        finally:
            runs.journal.close()

    with tiny_fs(tmp_path, 16 * MB) as fs:
        asyncio.run(main(fs))


# -- the host's floor ----------------------------------------------------------------------------
async def test_a_new_run_below_the_floor_waits_held_with_the_reason(local: Runs) -> None:
    sup = local.supervisor(StandIn([bash("echo hi")]), task(None),
                           DiskPolicy(min_free_gb=1e9, every_s=0.05))
    run = asyncio.create_task(sup.run())
    await until(lambda: local.held(), timeout=30)
    held, = local.held()
    assert held.reason is not None and held.reason.startswith("host disk: ")
    assert "below the 1000000000 GB floor" in held.reason
    assert "sandbox.started" not in [e.kind for e in local.events()]  # nothing made yet
    await sup.control(kill())
    assert await asyncio.wait_for(run, 60) == "killed"
    assert not (local.tmp / "runs" / "disk-1" / "workspace").exists()


async def test_a_waiting_run_starts_by_itself_once_the_host_has_space_again(local: Runs) -> None:
    free = [GB]
    sup = local.supervisor(StandIn([bash("echo started")]), task(None),
                           DiskPolicy(min_free_gb=5, every_s=0.05))
    sup.disk = DiskWatch(sup.workspace, local.tmp, None, sup.disk.policy, free=lambda p: free[0])
    run = asyncio.create_task(sup.run())
    await until(lambda: local.held(), timeout=30)
    assert sup.status == "held" and not sup.has_sandbox
    free[0] = 50 * GB  # an operator cleaned up the host
    assert await asyncio.wait_for(run, 120) == "failed"  # the plan ends unsubmitted
    kinds = [e.kind for e in local.events()]
    assert kinds.index("run.held") < kinds.index("run.resumed") < kinds.index("sandbox.started")
    assert "started" in local.output()


async def test_a_live_run_is_held_when_the_host_drops_below_the_floor(local: Runs) -> None:
    free = [100 * GB]
    # the host fills while the agent thinks; it answers once the runner has held the run
    agent = StandIn([bash("echo one"), bash("echo two")], wait_at=1,
                    cond=lambda: bool(free.__setitem__(0, GB) or local.held()))
    sup = local.supervisor(agent, task(None), DiskPolicy(min_free_gb=5, every_s=0.05))
    sup.disk = DiskWatch(sup.workspace, local.tmp, None, sup.disk.policy, free=lambda p: free[0])
    run = asyncio.create_task(sup.run())
    await until(lambda: local.held(), timeout=30)
    assert local.held()[0].reason == ("host disk: 1 GB free under MLRB_HOME, below the 5 GB "
                                      "floor ([runner] min_free_gb)")
    assert any("nearly out of disk space" in n for n in sup._notices + agent.notices)
    await sup.control(kill())
    assert await asyncio.wait_for(run, 60) == "killed"


# -- the quota fault tests: a real Docker sandbox writes past its quota -----------------------------
def footprint(run_dir: Path) -> int:
    """What the run took of the host's disk: its files' allocated blocks, no mount entered."""
    return tree_usage(run_dir)[0]


async def test_quota_kernel_a_run_writing_past_its_quota_is_held_and_the_host_gives_no_more(
        docker_runs: Runs, mountable: None) -> None:
    quota = 50 * MB
    before = shutil.disk_usage(docker_runs.tmp).free
    agent = StandIn([bash("dd if=/dev/zero of=blob bs=1M count=400; df -B1 /workspace; "
                          "echo wrote; sleep 300")])
    sup = docker_runs.supervisor(agent, task(quota / GB), DiskPolicy(quota_mode="auto",
                                                                    every_s=0.1))
    run = asyncio.create_task(sup.run())
    await until(lambda: docker_runs.held(), timeout=120)
    assert sup.disk.enforced_by == "kernel"
    reason = docker_runs.held()[0].reason
    assert reason is not None and reason.startswith("disk quota: the workspace holds ")
    assert reason.endswith("of its 0.05 GB quota")
    await until(lambda: "wrote" in docker_runs.output(), timeout=60)
    assert "No space left on device" in docker_runs.output()
    assert docker_runs.warnings("disk_quota_watch") == []  # the kernel did it
    run_dir = docker_runs.tmp / "runs" / "disk-1"
    assert footprint(run_dir) <= quota + 2 * MB
    # others share this disk: allow for their writes, far below the 400 MB the run tried
    assert before - shutil.disk_usage(docker_runs.tmp).free < quota + 150 * MB
    await sup.control(kill())
    assert await asyncio.wait_for(run, 120) == "killed"
    assert not os.path.ismount(run_dir / "workspace")
    assert (run_dir / "workspace.img").is_file()  # the run's files, kept after the run
    out = subprocess.run(["losetup", "-j", str(run_dir / "workspace.img")], capture_output=True,
                         text=True)
    assert out.stdout.strip() == ""  # the loop device went with the mount


async def test_quota_watcher_warns_at_80_tells_the_agent_and_holds_at_100(
        docker_runs: Runs) -> None:
    quota = 50 * MB
    agent = StandIn(
        [bash("dd if=/dev/urandom of=a bs=1M count=42"), bash("echo next"),
         bash("dd if=/dev/urandom of=b bs=1M count=20; echo wrote; sleep 300")],
        wait_at=1, cond=lambda: bool(docker_runs.warnings("disk_quota")))
    sup = docker_runs.supervisor(agent, task(quota / GB), DiskPolicy(quota_mode="watch",
                                                                    every_s=0.1))
    run = asyncio.create_task(sup.run())
    await until(lambda: docker_runs.held(), timeout=120)
    assert sup.disk.enforced_by == "watcher"
    warn, = docker_runs.warnings("disk_quota")
    assert warn.startswith("workspace at 8") and "of its 0.05 GB disk quota" in warn
    assert any("disk quota" in n for n in agent.notices)  # told at its next turn
    reason = docker_runs.held()[0].reason
    assert reason is not None and reason.startswith("disk quota: the workspace holds ")
    await sup.control(kill())
    assert await asyncio.wait_for(run, 120) == "killed"


async def test_the_run_says_once_why_the_kernel_does_not_enforce_its_quota(local: Runs) -> None:
    ws = local.tmp / "runs" / "disk-1" / "workspace"
    ws.mkdir(parents=True)
    (ws / "left-over").write_text("from an earlier life")
    sup = local.supervisor(StandIn([bash("echo hi")]), task(0.05),
                           DiskPolicy(quota_mode="auto", every_s=0.05))
    assert await asyncio.wait_for(sup.run(), 120) == "failed"  # the plan ends unsubmitted
    why, = local.warnings("disk_quota_watch")
    assert why.startswith("the kernel cannot enforce the 0.05 GB workspace quota (")
    assert "a watcher measures it instead" in why
    assert sup.disk.enforced_by == "watcher" and not os.path.ismount(ws)


def test_the_console_timeline_shows_why_the_runner_held_a_run() -> None:
    from mlrb_tui.state import entry_for

    f = EventFactory("r1")
    held = entry_for(f.make("run.held", {"level": "hold", "reason": "disk quota: full"}))
    plain = entry_for(f.make("run.held", {"level": "hold"}))
    assert held is not None and held.text == "hold in effect: disk quota: full"
    assert plain is not None and plain.text == "hold in effect"
