"""A fleet: two runners share one broker and one jobs queue; a recorder keeps one journal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.bus import BusConfig, EventSubscriber, RunnerEndpoint, Topics, submit_job
from runner.config import BusTable, Config
from runner.embedded_broker import EmbeddedBroker, find_mosquitto
from runner.engine import Engine, Job
from runner.events import Event, EventFactory
from runner.journal import Journal, JournalReader
from runner.recorder import Recorder
from tests.conftest import require, until

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"


async def test_two_runners_share_the_jobs_and_the_recorder_keeps_every_event(tmp_path, mosquitto, monkeypatch):
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    engines = []
    for name in ("gpu-host-a", "gpu-host-b"):
        cred = mosquitto.accounts[name]
        cfg = Config(home=tmp_path / name, bus_url=mosquitto.url, backend="local", max_runs=2,
                     bus=BusTable(username=cred.username, password=cred.password))
        engine = Engine(cfg, runner_id=name)
        await engine.start()
        engines.append(engine)
    rec = Recorder(mosquitto.config("viewer"), tmp_path / "fleet.db")
    rec_task = asyncio.create_task(rec.run())
    ended: set[str] = set()

    def on_events(events):
        ended.update(e.run for e in events if e.kind == "run.ended")

    watcher = EventSubscriber(mosquitto.config("viewer"), on_events)
    watch_task = asyncio.create_task(watcher.run())
    try:
        await asyncio.wait_for(asyncio.gather(rec.ready.wait(), watcher.ready.wait()), 10)
        jobs = Topics(BusConfig(mosquitto.url).prefix).shared_jobs
        await until(lambda: all(jobs in e.job_taker.subscribed for e in engines),
                    "both runners' shared subscriptions to the jobs queue")
        for i in range(4):
            await submit_job(mosquitto.config(), {"id": f"job{i}", "task": "tiny_train",
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



@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    require(find_mosquitto() is not None, "mosquitto")
    b = EmbeddedBroker(tmp_path / "broker", runner="host-a")
    await b.start()
    yield b
    await b.stop()


def outputs(factory: EventFactory, n: int) -> list[Event]:
    return [factory.make("sandbox.output", {"stream": "stdout", "text": f"line {i}"}) for i in range(n)]


def rows(reader: JournalReader, run: str) -> list[bytes]:
    return [e.wire for e in reader.events(run, 0, 100000)]


class Recorded:
    """One runner's journal and endpoint, and a recorder of the bus, torn down together."""

    def __init__(self, broker: EmbeddedBroker, tmp_path: Path) -> None:
        self.journal = Journal(tmp_path / "host.db")
        self.local = JournalReader(tmp_path / "host.db")
        self.pub = RunnerEndpoint(broker.bus_config("runner"), "host-a", self.local.events)
        self.rec = Recorder(broker.bus_config("viewer"), tmp_path / "fleet.db",
                            client_id="mlrb-recorder-test")
        self.central = JournalReader(tmp_path / "fleet.db")
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorded:
        await self.pub.start()
        self._task = asyncio.create_task(self.rec.run())
        try:
            await asyncio.wait_for(self.rec.ready.wait(), 10)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pub.stop()
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.journal.close()


async def test_events_never_published_are_repaired_from_the_runners_journal(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    async with Recorded(broker, tmp_path) as r:
        journal, local, pub, rec, central = r.journal, r.local, r.pub, r.rec, r.central
        await until(lambda: pub.topics.all_repairs in pub.subscribed, "the runner's repair subscription")
        factory = EventFactory("run-a")
        events = outputs(factory, 300)
        await journal.write(events)
        # seq 101..160 are journaled but never reach the bus
        pub.publish([e for e in events if not 101 <= e.seq <= 160])
        assert await pub.flush(15)
        await until(lambda: rows(central, "run-a") == rows(local, "run-a"),
                    "the recorder's copy to equal the journal", timeout=30)
        assert rec.subscriber.repairs_requested >= 1 and pub.repaired >= 60
        assert rec.subscriber.gaps == [] and pub.repair_rejects.total == 0


async def test_after_a_broker_outage_the_recorder_equals_the_journal(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    factory = EventFactory("run-a")
    async with Recorded(broker, tmp_path) as r:
        journal, local, pub, rec, central = r.journal, r.local, r.pub, r.rec, r.central
        before = outputs(factory, 100)
        await journal.write(before)
        pub.publish(before)
        await until(lambda: len(rows(central, "run-a")) == 100, "the first events recorded")
        db = broker.workdir / "mosquitto.db"
        # the autosave holds the recorder's session: the restarted broker queues for it
        await until(lambda: db.exists() and b"mlrb-recorder-test" in db.read_bytes(),
                    "the recorder's session in the persistence file", timeout=10)
        assert broker._proc is not None
        os.kill(broker._proc.pid, signal.SIGKILL)
        await until(lambda: not pub.connected and not rec.subscriber.connected, "both to see it gone")
        during = outputs(factory, 150)  # journaled while the broker is down
        await journal.write(during)
        pub.publish(during)
        await until(lambda: broker.restarts == 1 and broker.running, "the broker restarted", timeout=15)
        pub.retry_now()
        after = outputs(factory, 50)
        await journal.write(after)
        pub.publish(after)
        await until(lambda: rows(central, "run-a") == rows(local, "run-a"),
                    "the recorder's copy to equal the journal", timeout=60)
        assert len(rows(central, "run-a")) == 300 and rec.subscriber.gaps == []


OUTAGE_S = 60.0


async def test_a_run_through_a_minute_long_broker_outage_is_recorded_row_for_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_mosquitto()
    require(real is not None, "mosquitto")
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    monkeypatch.setenv("TINY_STEPS", "200")  # about 100 s of training, a metric and a line a step
    monkeypatch.setenv("TINY_DELAY", "0.5")
    # the embedded broker's mosquitto, which fails to start while `held` exists: killed, it
    # stays down however often the daemon's supervisor restarts it
    held = tmp_path / "broker-held"
    wrapper = tmp_path / "mosquitto"
    wrapper.write_text(f'#!/bin/sh\n[ -e "{held}" ] && exit 1\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("MLRB_MOSQUITTO", str(wrapper))
    engine = Engine(Config(home=tmp_path / "host", backend="local"), runner_id="host-a")
    await engine.start()
    assert engine.broker is not None and engine.bus_url is not None and engine.journal is not None
    broker, journal = engine.broker, engine.journal
    rec = Recorder(broker.bus_config("viewer"), tmp_path / "fleet.db",
                   client_id="mlrb-recorder-outage")
    rec_task = asyncio.create_task(rec.run())
    local, central = JournalReader(tmp_path / "host" / "mlrb.db"), JournalReader(tmp_path / "fleet.db")
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(rec.ready.wait(), 10)
        run = await engine.submit(Job(task="tiny_train"))
        await until(lambda: any(e.kind == "metric" for e in central.events(run, 0, 100000)),
                    "the training's first metrics recorded", timeout=120)
        db = broker.workdir / "mosquitto.db"
        await until(lambda: db.exists() and b"mlrb-recorder-outage" in db.read_bytes(),
                    "the recorder's session in the persistence file", timeout=10)
        held.touch()
        assert broker._proc is not None
        os.kill(broker._proc.pid, signal.SIGKILL)
        down_at = loop.time()
        await until(lambda: not engine.publisher.connected and not rec.subscriber.connected,
                    "the runner and the recorder to see the broker gone")
        at_kill = journal.last_seq(run)
        await until(lambda: journal.last_seq(run) > at_kill + 50, "the run to go on journaling",
                    timeout=OUTAGE_S)
        # the outage itself is the fault under test: it lasts its minute whatever happens
        await asyncio.sleep(max(0.0, OUTAGE_S - (loop.time() - down_at)))
        assert not broker.running and broker.restarts == 1
        assert not engine.supervisors[run].ended  # the run outlasts the outage
        during = journal.last_seq(run) - at_kill
        held.unlink()
        await until(lambda: broker.running, "the supervisor to bring the broker back", timeout=15)
        assert (await engine.wait([run]))[run] == "succeeded"
        try:
            await until(lambda: rows(central, run) == rows(local, run),
                        "the recorder's copy to equal the journal, row for row", timeout=120)
        except AssertionError as exc:
            have = {e.seq for e in central.events(run, 0, 100000)}
            missing = sorted(set(range(1, local.max_seq(run) + 1)) - have)
            raise AssertionError(f"{exc}: missing {missing[:20]} ({len(missing)}), tracker "
                                 f"{rec.subscriber.tracker.get(run)}, asked {rec.subscriber.repairs_requested}, "
                                 f"repaired {engine.publisher.repaired}, "
                                 f"refused {dict(engine.publisher.repair_rejects.counts)}") from None
        assert during > 50 and len(rows(central, run)) == local.max_seq(run)
        await until(lambda: rec.subscriber.gaps == [], "the recorder's gaps closed")
        assert rec.subscriber.reconnects >= 1 and engine.publisher.counts().reconnects >= 1
    finally:
        rec_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rec_task
        await engine.stop()
        local.close()
        central.close()
