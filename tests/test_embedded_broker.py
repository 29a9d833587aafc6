"""The embedded broker: Mosquitto on a free loopback port; without it, an install hint."""

from __future__ import annotations

import socket
from pathlib import Path

import aiomqtt
import pytest

import runner.embedded_broker as broker_mod
from runner.embedded_broker import BrokerError, EmbeddedBroker, MosquittoMissing, find_mosquitto
from tests.conftest import require


async def roundtrip(url_port: int) -> bytes:
    async with aiomqtt.Client("127.0.0.1", url_port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe("ping/#", qos=1)
        await c.publish("ping/x", b"pong", qos=1)
        async for m in c.messages:
            return bytes(m.payload)  # type: ignore[arg-type]
    raise AssertionError("no message")


@pytest.mark.mosquitto
async def test_mosquitto_is_spawned_and_serves(tmp_path: Path) -> None:
    require(find_mosquitto() is not None, "mosquitto")
    async with EmbeddedBroker(tmp_path) as b:
        assert b.kind == "mosquitto" and b.running
        assert b.url == f"mqtt://127.0.0.1:{b.port}"
        assert "persistence false" in (tmp_path / "mosquitto.conf").read_text()
        assert await roundtrip(b.port) == b"pong"
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
            assert await roundtrip(b.port) == b"pong"
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
