"""A fleet: two runners share one broker and one jobs queue; a recorder keeps one journal."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from runner.bus import BusConfig, EventSubscriber, Topics, submit_job
from runner.config import Config
from runner.engine import Engine
from runner.journal import JournalReader
from runner.recorder import Recorder
from tests.conftest import until

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"


async def test_two_runners_share_the_jobs_and_the_recorder_keeps_every_event(tmp_path, mosquitto, monkeypatch):
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    engines = []
    for name in ("gpu-host-a", "gpu-host-b"):
        cfg = Config(home=tmp_path / name, bus_url=mosquitto.url, backend="local", max_runs=2)
        engine = Engine(cfg, runner_id=name)
        await engine.start()
        engines.append(engine)
    rec = Recorder(BusConfig(mosquitto.url), tmp_path / "fleet.db")
    rec_task = asyncio.create_task(rec.run())
    ended: set[str] = set()

    def on_events(events):
        ended.update(e.run for e in events if e.kind == "run.ended")

    watcher = EventSubscriber(BusConfig(mosquitto.url), on_events)
    watch_task = asyncio.create_task(watcher.run())
    try:
        await asyncio.wait_for(asyncio.gather(rec.ready.wait(), watcher.ready.wait()), 10)
        jobs = Topics(BusConfig(mosquitto.url).prefix).shared_jobs
        await until(lambda: all(jobs in e.publisher.subscribed for e in engines),
                    "both runners' shared subscriptions to the jobs queue")
        for i in range(4):
            await submit_job(BusConfig(mosquitto.url), {"id": f"job{i}", "task": "tiny_train",
                                                         "agent": "scripted", "submitted_by": "test"})
        await until(lambda: len(ended) >= 4, "the four runs to end", timeout=240)
        await until(lambda: all(rec.journal.last_seq(run) == e.journal.last_seq(run)
                                for e in engines for run in e.supervisors),
                    "the recorder to journal every run's last event")
    finally:
        watch_task.cancel()
        for engine in engines:
            await engine.stop()
        rec_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rec_task
    owners = {e.runner_id: len(e.supervisors) for e in engines}
    assert sum(owners.values()) == 4 and all(n > 0 for n in owners.values()), owners
    reader = JournalReader(tmp_path / "fleet.db")
    rows = reader.list_runs()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"succeeded"}
    assert {r["runner"] for r in rows} == {"gpu-host-a", "gpu-host-b"}
    for r in rows:  # the central journal holds each run whole, as its runner journaled it
        local = JournalReader(tmp_path / r["runner"] / "mlrb.db")
        assert reader.max_seq(r["run"]) == local.max_seq(r["run"]) == r["last_seq"]
        assert [e.seq for e in reader.events(r["run"], 0, 100000)] == list(range(1, r["last_seq"] + 1))

