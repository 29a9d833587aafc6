"""Adoption benchmark: a runner with many live runs stops, a new one adopts them.

N runs (default 50) of a scripted agent whose command ticks once a second are started on one
engine; once each command runs, the engine stops with `keep_runs` (what `mlrb down
--keep-runs` does). A second engine starts on the same home, and the figures are:

- from the new engine's start to every run adopted (`run.adopted` journaled) and to every
  run's command followed on again (its next output journaled);
- how long the new engine's start itself took.

    python bench/adoption.py --runs 50 [--backend local|docker]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.config import Config  # noqa: E402
from runner.engine import Engine, Job  # noqa: E402
from runner.journal import JournalReader  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tasks" / "tiny_train"
PLAN = '''
def plan(scale):
    return [{"name": "bash", "args": {"command": "for i in $(seq 100000); do echo tick $i; sleep 1; done",
                                      "timeout_s": 3600}}]
'''


def make_task(root: Path) -> None:
    task = root / "tick"
    shutil.copytree(FIXTURE, task)
    toml = (task / "task.toml").read_text().replace('name = "tiny_train"', 'name = "tick"')
    (task / "task.toml").write_text(toml.replace("time_s = 300", "time_s = 3600"))
    (task / "baseline.py").write_text(PLAN)


def count(db: Path, kind: str, runs: list[str], after: dict[str, int] | None = None) -> int:
    reader = JournalReader(db)
    try:
        n = 0
        for run in runs:
            evs = reader.events(run, (after or {}).get(run, 0), 100_000, kinds=[kind])
            n += bool(evs)
        return n
    finally:
        reader.close()


def last_seqs(db: Path, runs: list[str]) -> dict[str, int]:
    reader = JournalReader(db)
    try:
        return {r: reader.max_seq(r) for r in runs}
    finally:
        reader.close()


async def wait_for(pred, what: str, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def main(n: int, backend: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="mlrb-adopt-bench-"))
    make_task(root / "tasks")
    os.environ["MLRB_TASKS_PATH"] = str(root / "tasks")
    home = root / "home"
    db = home / "mlrb.db"
    cfg = Config(home=home, backend=backend, max_runs=n)
    first = Engine(cfg, use_bus=False)
    await first.start()
    runs = [await first.submit(Job(task="tick")) for _ in range(n)]
    took = await wait_for(lambda: count(db, "sandbox.output", runs) == n, "every command's output", 600)
    print(f"{n} runs started, each command running, in {took:.1f} s ({backend} sandboxes)")
    await first.stop(keep_runs=True)
    before = last_seqs(db, runs)

    second = Engine(Config(home=home, backend=backend, max_runs=n), use_bus=False)
    t0 = time.monotonic()
    await second.start()
    started = time.monotonic() - t0
    adopted = await wait_for(lambda: count(db, "run.adopted", runs, before) == n, "every run adopted", 600)
    followed = await wait_for(lambda: count(db, "sandbox.output", runs, before) == n,
                              "every command followed on", 600)
    print(f"new engine start:                     {started * 1000:.0f} ms")
    print(f"runner restart -> {n} runs adopted:     {started + adopted:.2f} s")
    print(f"runner restart -> {n} commands followed: {started + adopted + followed:.2f} s")
    await second.stop("benchmark over")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--backend", choices=["local", "docker"], default="local")
    args = ap.parse_args()
    asyncio.run(main(args.runs, args.backend))
