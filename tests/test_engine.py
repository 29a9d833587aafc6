"""The engine on its own: in-process runs without a bus."""

from __future__ import annotations

from pathlib import Path

from runner.config import Config
from runner.engine import Engine
from runner.journal import JournalReader

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"


async def test_a_long_lived_engine_forgets_ended_runs_but_the_journal_keeps_them(tmp_path, monkeypatch):
    import runner.engine as engine_mod
    from runner.engine import Job

    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    monkeypatch.setenv("TINY_STEPS", "2")
    monkeypatch.setattr(engine_mod, "KEEP_ENDED", 2)
    engine = Engine(Config(home=tmp_path / "h", backend="local", max_runs=2), use_bus=False)
    await engine.start()
    try:
        ids = [await engine.submit(Job(task="tiny_train")) for _ in range(4)]
        for run in ids:
            task = engine.tasks.get(run)
            if task is not None:
                await task
    finally:
        await engine.stop()
    assert len(engine.supervisors) <= 3
    rows = JournalReader(tmp_path / "h" / "mlrb.db").list_runs()
    assert sorted(r["run"] for r in rows) == sorted(ids)


async def test_runs_left_live_by_a_dead_runner_are_ended_at_start(tmp_path):
    from runner.events import EventFactory
    from runner.journal import Journal

    home = tmp_path / "h"
    j = Journal(home / "mlrb.db")
    f = EventFactory("orphan-1")
    j.write_sync([f.make("run.created", {"task": "tiny_train"}), f.make("run.started", {})])
    j.close()
    engine = Engine(Config(home=home, backend="local"), use_bus=False)
    await engine.start()
    await engine.stop()
    row = JournalReader(home / "mlrb.db").get_run("orphan-1")
    assert row["status"] == "failed" and "stopped before the run ended" in row["reason"]


async def test_a_bad_job_is_refused_with_why_and_leaves_no_run(tmp_path, monkeypatch):
    from runner.job_queue import Offer

    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    engine = Engine(Config(home=tmp_path / "h", backend="local"), use_bus=False)
    await engine.start()
    try:
        verdicts = [await engine._on_job(Offer(job, "ana")) for job in (
            {"id": "j1", "task": "no_such_task", "agent": "scripted"},
            {"id": "j2", "task": "tiny_train", "agent": "gpt-9"},
            {"id": "j3", "task": "tiny_train", "limits": {"steps": -1}})]
    finally:
        await engine.stop()
    # a refused job is not a run: it goes to the jobs table, with its reason (see test_jobs_queue)
    assert JournalReader(tmp_path / "h" / "mlrb.db").list_runs() == []
    reasons = sorted(v.reason for v in verdicts)
    assert all(v.status == "refused" for v in verdicts) and len(verdicts) == 3
    assert any("unknown task 'no_such_task'" in x for x in reasons)
    assert any("unknown agent 'gpt-9'" in x for x in reasons)
    assert any("limits must map names to positive numbers" in x for x in reasons)
