"""An operator's interactive shell in a run's sandbox, found from the journal.

The console and `mlrb shell` run on the host, apart from the runner that owns the sandbox,
so the sandbox is found through its `sandbox.started` event.
"""

from __future__ import annotations

from pathlib import Path

from runner.events import LIVE_STATUSES
from runner.journal import JournalReader


class ShellError(RuntimeError):
    pass


def shell_command(reader: JournalReader, run: str, runs_dir: Path) -> tuple[list[str], Path | None]:
    """(argv, cwd) for a shell in `run`'s sandbox as the sandbox user."""
    row = reader.get_run(run)
    if row is None:
        raise ShellError(f"no run {run!r}")
    if row["status"] not in LIVE_STATUSES:
        raise ShellError(f"run {run} is {row['status']}: its sandbox is gone")
    if row["status"] == "frozen":
        raise ShellError(f"run {run} is frozen: resume it (or hold it instead) to open a shell")
    started = reader.events(run, 0, 1, kinds=["sandbox.started"])
    if not started:
        raise ShellError(f"run {run} has no sandbox yet")
    data = started[0].data
    if data.get("backend") == "docker":
        name = str(data.get("id", ""))
        if not name:
            raise ShellError(f"run {run}: its sandbox has no container id")
        return ["docker", "exec", "-it", "-u", "1000:1000", "-w", "/workspace", name, "bash"], None
    return ["bash", "--norc", "-i"], runs_dir / run / "workspace"
