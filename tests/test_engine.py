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
