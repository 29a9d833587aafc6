"""The embedded broker: Mosquitto on a free loopback port; without it, an install hint."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import pytest

import runner.embedded_broker as broker_mod
from runner.bus import EventSubscriber, RunnerEndpoint
from runner.embedded_broker import BrokerError, EmbeddedBroker, MosquittoMissing, find_mosquitto
from runner.events import Event, EventFactory
from runner.journal import Journal, JournalReader
from tests.conftest import raw_client, require, until


async def roundtrip(b: EmbeddedBroker) -> bytes:
    # the runner's account may use the topics under its own name, and nothing else
    ping = f"{b.prefix}/runner/{b.local['runner']}/ping"
    async with raw_client(b.bus_config("runner")) as c:
        await c.subscribe(ping, qos=1)
        await c.publish(ping, b"pong", qos=1)
        async for m in c.messages:
            return bytes(m.payload)  # type: ignore[arg-type]
    raise AssertionError("no message")


@pytest.mark.mosquitto
async def test_mosquitto_is_spawned_and_serves(tmp_path: Path) -> None:
    require(find_mosquitto() is not None, "mosquitto")
    async with EmbeddedBroker(tmp_path) as b:
        assert b.kind == "mosquitto" and b.running
        assert b.url == f"mqtt://127.0.0.1:{b.port}"
        conf = (tmp_path / "mosquitto.conf").read_text()
        assert "persistence true" in conf and f"persistence_location {tmp_path.resolve()}/" in conf
        assert "autosave_interval" in conf
        assert await roundtrip(b) == b"pong"
    assert not b.running


async def test_a_taken_port_moves_to_a_free_one(tmp_path: Path) -> None:
    require(find_mosquitto() is not None, "mosquitto")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        b = EmbeddedBroker(tmp_path, port=taken)
        url = await b.start()
        try:
            assert b.port != taken and url.endswith(f":{b.port}")
            assert await roundtrip(b) == b"pong"
        finally:
            await b.stop()


async def test_without_mosquitto_the_error_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    b = EmbeddedBroker(tmp_path)
    with pytest.raises(MosquittoMissing, match="not installed") as caught:
        await b.start()
    hint = str(caught.value)
    assert "\n" not in hint
    assert all(way in hint for way in ("apt-get install mosquitto", "brew install mosquitto",
                                       "eclipse-mosquitto"))
    assert not b.running and not (tmp_path / "mosquitto.conf").exists()


def test_mlrb_mosquitto_names_the_one_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRB_MOSQUITTO", str(tmp_path / "nowhere" / "mosquitto"))
    assert find_mosquitto() is None
    exe = tmp_path / "mosquitto"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("MLRB_MOSQUITTO", str(exe))
    assert find_mosquitto() == str(exe)


async def test_a_broker_that_dies_at_start_is_reported_with_its_stderr(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "mosquitto"
    fake.write_text("#!/bin/sh\necho 'Error: Unable to open config file.' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: str(fake))
    with pytest.raises(BrokerError, match="exited with 3.*Unable to open config file"):
        await EmbeddedBroker(tmp_path / "w").start()


def _pid(b: EmbeddedBroker) -> int:
    assert b._proc is not None
    return b._proc.pid


async def _retained(b: EmbeddedBroker, topic: str) -> bytes:
    async with raw_client(b.bus_config("viewer")) as c:
        await c.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for m in c.messages:
                return bytes(m.payload)  # type: ignore[arg-type]
    raise AssertionError("no retained message")


async def test_a_killed_broker_is_back_on_its_port_with_its_retained_messages(tmp_path: Path) -> None:
    require(find_mosquitto() is not None, "mosquitto")
    b = EmbeddedBroker(tmp_path)
    await b.start()
    try:
        state = f"{b.prefix}/runner/{b.local['runner']}/state"
        async with raw_client(b.bus_config("runner")) as c:
            await c.publish(state, b"online", qos=1, retain=True)
        db = tmp_path / "mosquitto.db"
        # the autosave has written it: a kill -9 loses nothing published before
        await until(lambda: db.exists() and state.encode() in db.read_bytes(),
                    "the retained message in the persistence file", timeout=10)
        first, port, url = _pid(b), b.port, b.url
        os.kill(first, signal.SIGKILL)
        await until(lambda: b.restarts == 1 and b.running, "the broker restarted", timeout=10)
        assert _pid(b) != first and b.port == port and b.url == url
        assert await _retained(b, state) == b"online"
        assert await roundtrip(b) == b"pong"
    finally:
        await b.stop()


async def test_a_stopped_broker_is_not_restarted(tmp_path: Path) -> None:
    require(find_mosquitto() is not None, "mosquitto")
    b = EmbeddedBroker(tmp_path)
    await b.start()
    pid, port = _pid(b), b.port
    await b.stop()
    assert not b.running and b.restarts == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # the watch is gone: nothing comes back on the port
    await until(lambda: broker_mod.port_is_free(port), "the port released", timeout=5)
    assert not await broker_mod._accepts(port) and b.restarts == 0


async def test_events_flow_again_after_the_broker_restarts(tmp_path: Path) -> None:
    require(find_mosquitto() is not None, "mosquitto")
    b = EmbeddedBroker(tmp_path / "broker", runner="host-a")
    await b.start()
    journal = Journal(tmp_path / "j.db")
    reader = JournalReader(tmp_path / "j.db")
    got: set[int] = set()

    def sink(events: list[Event]) -> None:
        got.update(e.seq for e in events)

    config = b.bus_config()
    sub = EventSubscriber(config, sink)
    sub_task = asyncio.create_task(sub.run())
    pub = RunnerEndpoint(b.bus_config("runner"), "host-a", reader.events)
    await pub.start()
    try:
        await asyncio.wait_for(sub.ready.wait(), 10)
        factory = EventFactory("run-a", next_seq=1)
        before = [factory.make("sandbox.output", {"stream": "stdout", "text": f"{i}"}) for i in range(10)]
        await journal.write(before)
        pub.publish(before)
        await until(lambda: len(got) == 10, "the first events")
        os.kill(_pid(b), signal.SIGKILL)
        await until(lambda: not pub.connected and not sub.connected, "both to see the broker gone")
        await until(lambda: b.restarts == 1 and b.running, "the broker restarted", timeout=10)
        # the subscriber's session is a clean one: it must be back before the events are sent
        await until(lambda: sub.connected, "the subscriber reconnected", timeout=15)
        after = [factory.make("sandbox.output", {"stream": "stdout", "text": f"{i}"}) for i in range(10)]
        await journal.write(after)
        pub.publish(after)
        await until(lambda: pub.connected, "the runner reconnected", timeout=15)
        assert await pub.flush(15)
        await until(lambda: got == set(range(1, 21)), "every event after the restart", timeout=15)
    finally:
        await pub.stop()
        sub_task.cancel()
        await b.stop()
        journal.close()
        reader.close()
