"""The MQTT bus against a real broker: Mosquitto, spawned as the embedded broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import runner.bus as bus
from runner.bus import (
    BusConfig,
    BusUnavailable,
    EventSubscriber,
    RunnerEndpoint,
    Topics,
    read_runner_states,
    send_control,
    submit_job,
)
from runner.control import ControlCommand
from runner.embedded_broker import EmbeddedBroker, find_mosquitto
from runner.events import Event, EventFactory, RejectCounter, encode_batch
from runner.job_queue import JobTaker, Offer, Verdict
from runner.journal import Journal, JournalReader
from tests.conftest import Mosquitto, free_port, raw_client, require, until

REPO = Path(__file__).resolve().parent.parent
RUNNERS = ("host-a", "host-0", "host-1", "doomed", "tidy")  # runner accounts of the broker


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    require(find_mosquitto() is not None, "mosquitto")
    b = EmbeddedBroker(tmp_path / "broker", users={n: "runner" for n in RUNNERS})
    await b.start()
    assert b.kind == "mosquitto"
    yield b
    await b.stop()


class Sink:
    """A subscriber's view: every event by (run, seq), and the order they came in."""

    def __init__(self) -> None:
        self.order: dict[str, list[int]] = {}
        self.keys: set[tuple[str, int]] = set()

    def __call__(self, events: list[Event]) -> None:
        for e in events:
            self.order.setdefault(e.run, []).append(e.seq)
            self.keys.add(e.key)


async def subscribe(config: BusConfig, sink: Sink, rejects: RejectCounter | None = None
                    ) -> tuple[EventSubscriber, asyncio.Task[None]]:
    sub = EventSubscriber(config, sink, rejects)
    task = asyncio.create_task(sub.run())
    await asyncio.wait_for(sub.ready.wait(), 10)
    return sub, task


def make_events(run: str, n: int, start: int = 1) -> list[Event]:
    f = EventFactory(run, next_seq=start)
    return [f.make("sandbox.output", {"stream": "stdout", "text": f"line {i}"}) for i in range(n)]


def test_config_and_topics() -> None:
    assert BusConfig("mqtt://10.0.0.2:1999").host_port() == ("10.0.0.2", 1999)
    assert BusConfig("mqtt://broker").host_port() == ("broker", 1883)
    assert BusConfig("mqtts://broker:8883").host_port() == ("broker", 8883)  # TLS is supported
    assert BusConfig("mqtts://broker").host_port() == ("broker", 8883)
    with pytest.raises(ValueError, match="TLS"):
        BusConfig("mqtt://broker", ca_file="ca.crt").host_port()
    with pytest.raises(ValueError):
        BusConfig("http://broker").host_port()
    t = Topics("lab/x")
    assert t.event("h1", "r1") == "lab/x/runner/h1/run/r1/event"
    assert t.control("r1", "ana") == "lab/x/run/r1/control/ana"
    assert t.shared_jobs == "$share/mlrb-runners/lab/x/jobs/+" and t.jobs == "lab/x/jobs"
    assert t.jobs_of("ana") == "lab/x/jobs/ana" and t.submitter_of("lab/x/jobs/ana") == "ana"
    assert t.shared_requeue == "$share/mlrb-runners/lab/x/runner/+/requeue"
    assert t.requeued_by(t.requeue("h1")) == "h1" and t.job_state_source(t.job_state("h1", "j1")) == ("h1", "j1")
    assert t.submitter_of("lab/x/jobs") is None and t.submitter_of("lab/x/jobs/a/b") is None
    assert t.all_events == "lab/x/runner/+/run/+/event" and t.runner_state("h1") == "lab/x/runner/h1/state"
    assert t.run_of("lab/x/runner/h1/run/r1/event") == "r1" and t.run_of("lab/x/run/r1/control/ana") == "r1"
    assert t.event_source("lab/x/runner/h1/run/r1/event") == ("h1", "r1")
    assert t.control_source("lab/x/run/r1/control/ana") == ("r1", "ana")
    assert t.run_of("lab/x/runner/h1/run/r1/other") is None
    assert t.run_of("lab/x/runner/h1/run/$bad/event") is None
    assert t.run_of("lab/y/runner/h1/run/r1/event") is None


async def test_round_trip_of_batches_in_order(broker: EmbeddedBroker, tmp_path: Path) -> None:
    config = broker.bus_config()
    journal = Journal(tmp_path / "j.db")
    reader = JournalReader(tmp_path / "j.db")
    sink = Sink()
    sub, task = await subscribe(config, sink)
    pub = RunnerEndpoint(broker.bus_config("host-a"), "host-a", reader.events)
    await pub.start()
    try:
        runs = {f"run-{i}": make_events(f"run-{i}", 1200) for i in range(3)}
        for k in range(0, 1200, 100):  # interleaved, as several supervisors would write
            for evs in runs.values():
                chunk = evs[k:k + 100]
                await journal.write(chunk)
                pub.publish(chunk)
        assert await pub.flush(15)
        await until(lambda: len(sink.keys) == 3600)
        for run in runs:  # per run, in seq order: a subscriber can dedupe and spot gaps
            assert sink.order[run] == list(range(1, 1201))
        assert pub.published == 3600 and pub.resent == 0
        assert sub.rejects.total == 0
    finally:
        await pub.stop()
        task.cancel()
        journal.close()


async def test_outage_events_are_resent_from_the_journal(
        broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus, "MAX_PENDING_EVENTS", 100)  # the outage overflows memory
    config = broker.bus_config()
    journal = Journal(tmp_path / "j.db")
    reader = JournalReader(tmp_path / "j.db")
    sink = Sink()
    sub, task = await subscribe(config, sink)
    pub = RunnerEndpoint(broker.bus_config("host-a"), "host-a", reader.events)
    pub.link.backoff_min = pub.link.backoff_max = 30.0  # reconnects only when told, after the subscriber
    await pub.start()
    try:
        await until(lambda: pub.connected)
        first = make_events("run-a", 200)
        await journal.write(first)
        pub.publish(first)
        assert await pub.flush(10)
        burst = make_events("run-a", 2000, start=201)  # in flight when the broker goes
        await journal.write(burst)
        pub.publish(burst)
        await broker.stop()
        await until(lambda: not pub.connected and not sub.connected)
        during = make_events("run-a", 500, start=2201) + make_events("run-b", 50)
        await journal.write(during)
        pub.publish(during)
        assert not await pub.flush(0.2)
        # the same workdir: the accounts and passwords the clients hold are kept
        again = EmbeddedBroker(tmp_path / "broker", port=broker.port,
                               users={n: "runner" for n in RUNNERS})
        assert await again.start() == broker.url
        try:
            await asyncio.wait_for(sub.ready.wait(), 15)
            pub.retry_now()
            assert await pub.flush(15)
            await until(lambda: len(sink.keys) == 2750)
            assert sink.keys == {("run-a", s) for s in range(1, 2701)} | {
                ("run-b", s) for s in range(1, 51)}
            assert pub.resent >= 500 - 100
        finally:
            await pub.stop()
            await again.stop()
    finally:
        task.cancel()
        journal.close()


async def test_bad_payloads_are_counted_never_fatal(broker: EmbeddedBroker) -> None:
    config = broker.bus_config()
    rejects = RejectCounter()
    sink = Sink()
    sub, task = await subscribe(config, sink, rejects)
    t = Topics(config.prefix)
    good = make_events("run-a", 1)[0]
    other = make_events("run-b", 1)[0]
    unknown = {**good.to_dict(), "kind": "agent.teleport"}
    try:
        async with raw_client(broker.bus_config("host-a")) as c:
            await c.publish(t.event("host-a", "run-a"), b"{not json", qos=1)
            await c.publish(t.event("host-a", "run-a"), b"[" + b" " * (4 * 1024 * 1024) + b"]", qos=1)
            await c.publish(t.event("host-a", "run-a"), json.dumps([unknown]).encode(), qos=1)
            await c.publish(t.event("host-a", "run-a"), json.dumps([other.to_dict()]).encode(), qos=1)
            await c.publish(t.event("host-a", "run-a"), b"\xff\xfe", qos=1)
            await c.publish(t.event("host-a", "run-a"), json.dumps([good.to_dict()]).encode(), qos=1)
        await until(lambda: sub.received == 1)
        await until(lambda: rejects.total == 5)
        assert dict(rejects.counts) == {"bad_json": 2, "oversized": 1, "unknown_kind": 1,
                                        "run_mismatch": 1}
        assert sink.keys == {("run-a", 1)} and sub.connected
    finally:
        task.cancel()


async def test_data_that_breaks_its_model_is_counted(broker: EmbeddedBroker) -> None:
    config = broker.bus_config()
    rejects = RejectCounter()
    sink = Sink()
    sub, task = await subscribe(config, sink, rejects)
    t = Topics(config.prefix)
    good = make_events("run-a", 2)
    forged = {**good[0].to_dict(), "data": {"stream": "stdout", "text": 7}}
    extra = {**good[0].to_dict(), "data": {"stream": "stdout", "text": "x", "sudo": True}}
    try:
        async with raw_client(broker.bus_config("host-a")) as c:
            await c.publish(t.event("host-a", "run-a"), json.dumps([forged]).encode(), qos=1)
            await c.publish(t.event("host-a", "run-a"), json.dumps([extra]).encode(), qos=1)
            await c.publish(t.event("host-a", "run-a"), encode_batch(good), qos=1)
        await until(lambda: sub.received == 2)
        await until(lambda: rejects.total == 2)
        assert dict(rejects.counts) == {"bad_data": 2}
        assert sink.keys == {("run-a", 1), ("run-a", 2)} and sub.connected
    finally:
        task.cancel()


async def test_controls_and_shared_jobs(broker: EmbeddedBroker, tmp_path: Path) -> None:
    config = broker.bus_config()
    reader = JournalReader(tmp_path / "j.db")
    runners = [RunnerEndpoint(broker.bus_config(f"host-{i}"), f"host-{i}", reader.events)
               for i in range(2)]
    jobs: dict[str, list[dict[str, object]]] = {"host-0": [], "host-1": []}
    commands: list[ControlCommand] = []
    rejects = RejectCounter()
    takers = []
    for r in runners:
        await r.start()
        async def take(offer: Offer, rid: str = r.runner_id) -> Verdict:
            jobs[rid].append(offer.job)
            return Verdict("started", run=f"run-{len(jobs[rid])}")
        takers.append(JobTaker(broker.bus_config(r.runner_id), r.runner_id, take, rejects))
    for taker in takers:
        await taker.start()
    try:
        await until(lambda: all(r.connected for r in runners)
                    and all(t.connected for t in takers))

        async def on_command(cmd: ControlCommand) -> None:
            commands.append(cmd)
        await runners[0].listen_controls(on_command, rejects)
        for i in range(10):
            await submit_job(config, {"task": "llm_merging", "n": i})
        await until(lambda: len(jobs["host-0"]) + len(jobs["host-1"]) == 10)
        got = sorted(int(j["n"]) for js in jobs.values() for j in js)  # type: ignore[call-overload]
        assert got == list(range(10))  # each job to exactly one runner
        assert jobs["host-0"] and jobs["host-1"]  # and the queue is shared

        await submit_job(config, {"no_task": True})
        t = Topics(config.prefix)
        me = config.username
        assert me is not None
        async with raw_client(config) as c:
            await c.publish(t.jobs_of(me), b"[1, 2]", qos=1)
            await c.publish(t.control("run-a", me), b'{"run": "run-a", "action": "explode"}', qos=1)
            spoof = ControlCommand(run="run-b", action="kill", operator="eve")
            await c.publish(t.control("run-a", me), spoof.to_json(), qos=1)
        cmd = ControlCommand(run="run-a", action="hold", operator="ana@lab", reason="look")
        await send_control(config, cmd)
        await until(lambda: len(commands) == 1 and rejects.total == 4)
        # the operator recorded is the account the broker authenticated, not the claim
        assert commands[0] == cmd.model_copy(update={"operator": me})
        assert dict(rejects.counts) == {"bad_job": 2, "bad_control": 1, "run_mismatch": 1}
    finally:
        for taker in takers:
            await taker.stop()
        for r in runners:
            await r.stop()


RUNNER_SCRIPT = """
import asyncio, sys
from runner.bus import BusConfig, RunnerEndpoint
async def main():
    config = BusConfig(sys.argv[1], username="doomed", password=sys.argv[2])
    pub = RunnerEndpoint(config, "doomed", lambda run, after, limit: [])
    await pub.start()
    while not pub.connected:
        await asyncio.sleep(0.01)
    await pub.set_state({"online": True, "runs": ["run-a"]})
    print("ready", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_runner_state_is_retained_and_the_will_says_offline(broker: EmbeddedBroker) -> None:
    config = broker.bus_config()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUNNER_SCRIPT, broker.url, broker.credential("doomed").password,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"ready"
        states = await read_runner_states(config)
        assert states["doomed"] == {"online": True, "runs": ["run-a"]}
    finally:
        proc.kill()  # the connection drops without DISCONNECT: the broker sends the will
        await proc.wait()

    async def offline() -> bool:
        return (await read_runner_states(config, timeout=0.3)).get("doomed") == "offline"
    await until(offline, "the broker to publish the will 'offline'", timeout=20)
    assert await offline()


async def test_a_clean_stop_publishes_offline(broker: EmbeddedBroker) -> None:
    config = broker.bus_config()
    pub = RunnerEndpoint(broker.bus_config("tidy"), "tidy", lambda run, after, limit: [])
    await pub.start()
    await until(lambda: pub.connected)
    await pub.set_state({"online": True})
    assert (await read_runner_states(config))["tidy"] == {"online": True}
    await pub.stop()
    assert (await read_runner_states(config))["tidy"] == "offline"


async def test_missing_broker(tmp_path: Path) -> None:
    config = BusConfig(f"mqtt://127.0.0.1:{free_port()}")
    cmd = ControlCommand(run="run-a", action="kill", operator="ana")
    with pytest.raises(BusUnavailable, match=config.url.replace(".", r"\.")):
        await send_control(config, cmd, timeout=2)
    with pytest.raises(BusUnavailable):
        await submit_job(config, {"task": "x"}, timeout=2)
    with pytest.raises(BusUnavailable):
        await read_runner_states(config, timeout=0.5)
    pub = RunnerEndpoint(config, "lonely", lambda run, after, limit: [])
    await pub.start()  # does not fail: it keeps retrying in the background
    pub.publish(make_events("run-a", 3))
    assert not pub.connected and not await pub.flush(0.3)
    await pub.stop()


async def test_with_the_conftest_mosquitto(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = mosquitto.config(prefix="lab/v9")
    journal = Journal(tmp_path / "j.db")
    sink = Sink()
    sub = EventSubscriber(config, sink, runs=["run-b"])
    task = asyncio.create_task(sub.run())
    await asyncio.wait_for(sub.ready.wait(), 10)
    pub = RunnerEndpoint(mosquitto.config("h", prefix="lab/v9"), "h",
                         JournalReader(tmp_path / "j.db").events)
    await pub.start()
    try:
        evs = make_events("run-a", 5) + make_events("run-b", 5)
        await journal.write(evs)
        pub.publish(evs)
        assert await pub.flush(10)
        await until(lambda: len(sink.keys) == 5)
        assert sink.keys == {("run-b", s) for s in range(1, 6)}  # only the runs asked for
    finally:
        await pub.stop()
        task.cancel()
        journal.close()


async def test_bad_repair_requests_are_counted_and_a_good_one_is_served(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    config = broker.bus_config()
    journal = Journal(tmp_path / "j.db")
    reader = JournalReader(tmp_path / "j.db")
    sink = Sink()
    sub, task = await subscribe(config, sink)
    pub = RunnerEndpoint(broker.bus_config("host-a"), "host-a", reader.events)
    await pub.start()
    topics = Topics(config.prefix)
    try:
        await until(lambda: topics.all_repairs in pub.subscribed, "the repair subscription")
        events = make_events("run-a", 20)
        await journal.write(events)
        pub.publish(events)
        assert await pub.flush(10)
        await until(lambda: len(sink.keys) == 20)
        async with raw_client(config) as c:
            for bad in (b"{", b'{"from_seq": 5}', b'{"from_seq": 9, "to_seq": 3}',
                        b'{"from_seq": "1", "to_seq": 2}', b"x" * 5000):
                await c.publish(topics.repair("run-a"), bad, qos=1)
            await c.publish(topics.repair("run-zz"), b'{"from_seq": 1, "to_seq": 2}', qos=1)
            await c.publish(topics.repair("run-a"), b'{"from_seq": 3, "to_seq": 7}', qos=1)
        await until(lambda: pub.repaired == 5, "the good request served")
        await until(lambda: sink.order["run-a"].count(3) == 2, "the range re-published")
        assert pub.repair_rejects.counts == {"bad_repair": 4, "oversized": 1}
        assert sink.order["run-a"][20:] == [3, 4, 5, 6, 7]
    finally:
        await pub.stop()
        task.cancel()
        journal.close()


async def test_a_tail_lost_while_away_is_repaired_from_the_runners_state(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    config = broker.bus_config()
    journal = Journal(tmp_path / "j.db")
    reader = JournalReader(tmp_path / "j.db")
    sink = Sink()
    gaps_heard: list[list[str]] = []
    sub = EventSubscriber(config, sink, on_gaps=gaps_heard.append)  # a console: no session kept
    task = asyncio.create_task(sub.run())
    pub = RunnerEndpoint(broker.bus_config("host-a"), "host-a", reader.events)
    await pub.start()
    topics = Topics(config.prefix)
    try:
        await asyncio.wait_for(sub.ready.wait(), 10)
        await until(lambda: topics.all_repairs in pub.subscribed, "the repair subscription")
        events = make_events("run-a", 60)
        await journal.write(events)
        pub.publish(events[:40])
        await until(lambda: len(sink.keys) == 40, "seq 1-40 seen")
        task.cancel()  # the console drops off the bus; the broker keeps nothing for it
        await until(lambda: not sub.connected, "the subscriber gone")
        pub.publish(events[40:])
        assert await pub.flush(10)
        await pub.set_state({"runner": "host-a", "seqs": {"run-a": 60}, "bus": pub.counts().model_dump()})
        task = asyncio.create_task(sub.run())  # back, with nothing after seq 40 on its way
        await until(lambda: len(sink.keys) == 60, "the lost tail repaired", timeout=20)
        assert sink.order["run-a"] == list(range(1, 61))
        assert sub.repairs_requested >= 1 and pub.repaired >= 20 and sub.reconnects == 1
        await until(lambda: gaps_heard and gaps_heard[-1] == [], "the gap heard closed")
        assert ["run-a"] in gaps_heard and sub.gaps == []
        counts = pub.counts()
        assert counts.published == 60 and counts.repaired == pub.repaired and counts.reconnects == 0
        assert sub.runners["host-a"].published == 60
    finally:
        await pub.stop()
        task.cancel()
        journal.close()


async def test_bad_runner_states_are_counted_and_the_will_is_not(broker: EmbeddedBroker) -> None:
    config = broker.bus_config()
    rejects = RejectCounter()
    sub, task = await subscribe(config, Sink(), rejects)
    t = Topics(config.prefix)
    try:
        # each runner account may publish only its own state: a broken runner, a gone one, a fine one
        async with raw_client(broker.bus_config("host-0")) as c:
            for bad in (b"{", b"[1, 2]", b'{"seqs": {"run-a": "7"}}', b'{"seqs": {"../x": 7}}',
                        b'{"seqs": {"run-a": 0}}', b'{"bus": {"resent": -1}}', b"\xff\xfe"):
                await c.publish(t.runner_state("host-0"), bad, qos=1)
            await c.publish(t.runner_state("host-0"), b"{" + b" " * (64 * 1024) + b"}", qos=1)
        async with raw_client(broker.bus_config("doomed")) as c:
            await c.publish(t.runner_state("doomed"), b"offline", qos=1)
        async with raw_client(broker.bus_config("tidy")) as c:
            await c.publish(t.runner_state("tidy"), b'{"runner": "tidy", "seqs": {}, "bus": '
                            b'{"resent": 3, "repaired": 4, "reconnects": 1, "rejects": {"bad_json": 2}}}',
                            qos=1)
        await until(lambda: "tidy" in sub.runners, "the good state read")
        await until(lambda: rejects.total == 8)
        assert dict(rejects.counts) == {"bad_state": 7, "oversized": 1}
        total = sub.fleet_counts()
        assert (total.resent, total.repaired, total.reconnects, total.rejects) == (3, 4, 1, {"bad_json": 2})
        assert sub.connected and sub.gaps == []
    finally:
        task.cancel()
