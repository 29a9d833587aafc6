"""The in-process MQTT v5 broker, driven by the real aiomqtt client and by raw sockets."""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from runner.mqtt_broker import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PUBLISH,
    MqttBroker,
    encode_props,
    encode_str,
    packet,
    topic_matches,
    valid_filter,
)
from tests.conftest import until


@pytest.fixture
async def broker() -> AsyncIterator[MqttBroker]:
    b = MqttBroker("127.0.0.1", 0)
    await b.start()
    yield b
    await b.stop()


def client(broker: MqttBroker, **kw: object) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5,
                          identifier=f"t-{uuid.uuid4().hex[:8]}", timeout=5, **kw)  # type: ignore[arg-type]


async def next_message(c: aiomqtt.Client, timeout: float = 5.0) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(aiter(c.messages)), timeout)


async def no_message(c: aiomqtt.Client, probe: aiomqtt.Client, topic: str) -> None:
    """Assert nothing is queued for `c`: a probe message published after must arrive first."""
    await probe.publish(topic, b"probe", qos=1)
    m = await next_message(c)
    assert m.payload == b"probe", f"unexpected message on {m.topic}"


def connect_packet(client_id: str, will: tuple[str, bytes, int, bool] | None = None,
                   keepalive: int = 30, level: int = 5) -> bytes:
    flags = 0x02
    payload = encode_str(client_id)
    if will is not None:
        topic, body, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += encode_props([]) + encode_str(topic) + struct.pack("!H", len(body)) + body
    head = encode_str("MQTT") + bytes([level, flags]) + struct.pack("!H", keepalive)
    if level == 5:
        head += encode_props([])
    return packet(CONNECT, 0, head + payload)


async def raw_connect(broker: MqttBroker, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(data)
    await writer.drain()
    first = await asyncio.wait_for(reader.readexactly(2), 5)
    rest = await reader.readexactly(first[1])
    return reader, writer, first + rest


def test_topic_rules() -> None:
    assert topic_matches("a/+/c", "a/b/c")
    assert not topic_matches("a/+/c", "a/b/d/c")
    assert topic_matches("a/#", "a") and topic_matches("a/#", "a/b/c")
    assert topic_matches("#", "x/y") and not topic_matches("#", "$SYS/x")
    assert not topic_matches("+/x", "$SYS/x") and topic_matches("$SYS/#", "$SYS/x")
    assert topic_matches("a//b", "a//b") and not topic_matches("a/b", "a/b/c")
    assert valid_filter("a/+/#") and not valid_filter("a/#/b") and not valid_filter("a+/b")
    assert not valid_filter("")


async def test_pubsub_wildcards_and_qos(broker: MqttBroker) -> None:
    async with client(broker) as sub, client(broker) as pub:
        await sub.subscribe("mlrb/v1/run/+/event", qos=1)
        await sub.subscribe("other/#", qos=0)
        await pub.publish("mlrb/v1/run/r1/event", b"one", qos=1)
        m = await next_message(sub)
        assert (m.topic.value, m.payload, m.qos) == ("mlrb/v1/run/r1/event", b"one", 1)
        await pub.publish("other/deep/topic", b"two", qos=1)
        m = await next_message(sub)
        assert (m.payload, m.qos) == (b"two", 0)  # min(publish QoS, subscription QoS)
        await pub.publish("other", b"three", qos=0)  # '#' also matches the parent level
        assert (await next_message(sub)).payload == b"three"
        await pub.publish("mlrb/v1/run/r1/control", b"not for sub", qos=1)
        await sub.unsubscribe("other/#")
        await pub.publish("other/x", b"gone", qos=1)
        await no_message(sub, pub, "mlrb/v1/run/probe/event")


async def test_many_qos1_messages_arrive_in_order(broker: MqttBroker) -> None:
    async with client(broker, max_inflight_messages=50) as sub, client(broker) as pub:
        await sub.subscribe("t/#", qos=1)
        await asyncio.gather(*(pub.publish("t/x", str(i).encode(), qos=1) for i in range(500)))
        got = [int((await next_message(sub)).payload) for _ in range(500)]  # type: ignore[arg-type]
        assert sorted(got) == list(range(500))


async def test_shared_subscription_spreads_each_message_to_one_member(broker: MqttBroker) -> None:
    async with client(broker) as a, client(broker) as b, client(broker) as pub:
        await a.subscribe("$share/g/jobs", qos=1)
        await b.subscribe("$share/g/jobs", qos=1)
        for i in range(20):
            await pub.publish("jobs", str(i).encode(), qos=1)
        got_a: list[int] = []
        got_b: list[int] = []

        async def drain(c: aiomqtt.Client, out: list[int]) -> None:
            async for m in c.messages:
                out.append(int(m.payload))  # type: ignore[arg-type]

        tasks = [asyncio.create_task(drain(a, got_a)), asyncio.create_task(drain(b, got_b))]
        await until(lambda: len(got_a) + len(got_b) >= 20)
        for t in tasks:
            t.cancel()
        assert sorted(got_a + got_b) == list(range(20))
        assert len(got_a) == len(got_b) == 10  # round-robin


async def test_retained_messages(broker: MqttBroker) -> None:
    async with client(broker) as pub:
        await pub.publish("state/r1", b'{"online":true}', qos=1, retain=True)
        await pub.publish("state/r2", b"offline", qos=1, retain=True)
        await pub.publish("state/r2", b"", qos=1, retain=True)  # an empty payload clears it
        async with client(broker) as sub:
            await sub.subscribe("state/+", qos=1)
            m = await next_message(sub)
            assert (m.topic.value, m.payload, m.retain) == ("state/r1", b'{"online":true}', True)
            await pub.publish("state/r3", b"live", qos=1, retain=True)
            m = await next_message(sub)
            assert (m.topic.value, m.retain) == ("state/r3", False)  # live, not from the store
            await no_message(sub, pub, "state/probe")


async def test_will_on_drop_and_not_on_normal_disconnect(broker: MqttBroker) -> None:
    async with client(broker) as sub:
        await sub.subscribe("runner/+/state", qos=1)
        _, writer, ack = await raw_connect(
            broker, connect_packet("dropper", will=("runner/a/state", b"offline", 1, True)))
        assert ack[0] >> 4 == CONNACK and ack[3] == 0
        writer.transport.abort()  # the connection drops without DISCONNECT
        m = await next_message(sub)
        assert (m.topic.value, m.payload) == ("runner/a/state", b"offline")
        assert broker.retained["runner/a/state"].payload == b"offline"

        _, writer, ack = await raw_connect(
            broker, connect_packet("leaver", will=("runner/b/state", b"offline", 1, False)))
        writer.write(packet(DISCONNECT, 0, b"\x00\x00"))
        await writer.drain()
        writer.close()
        async with client(broker) as probe:
            await no_message(sub, probe, "runner/probe/state")


async def test_malformed_and_oversized_input_never_kills_the_broker(broker: MqttBroker) -> None:
    small = MqttBroker("127.0.0.1", 0, max_packet_size=64 * 1024)
    await small.start()
    try:
        garbage = [
            b"\xff\xff\xff\xff\xff\xff",  # reserved type, remaining length over 4 bytes
            b"\x10\x05\x00\x04MQ",  # truncated CONNECT, then EOF
            packet(CONNECT, 0, b"\x00\x04XQTT\x05\x02\x00\x1e\x00\x00\x00"),  # wrong protocol name
            packet(PUBLISH, 0, encode_str("a/b") + b"\x00x"),  # PUBLISH before CONNECT
            b"\x10" + b"\xff\xff\xff\x7f",  # a 256 MiB CONNECT announced
        ]
        for data in garbage:
            reader, writer = await asyncio.open_connection("127.0.0.1", small.port)
            writer.write(data)
            writer.write_eof()
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing granted
            writer.close()
        # a connected client that sends an oversized PUBLISH is disconnected with 0x95
        reader, writer, _ = await raw_connect(small, connect_packet("big"))
        writer.write(packet(PUBLISH, 0, encode_str("a/b") + b"\x00" + b"x" * 70_000))
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 5)
        assert reply[:1] == bytes([DISCONNECT << 4]) and reply[2] == 0x95
        # a topic alias is refused with 0x94
        reader, writer, _ = await raw_connect(small, connect_packet("alias"))
        writer.write(packet(PUBLISH, 0, encode_str("a/b") + encode_props([(0x23, b"\x00\x01")])))
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 5)
        assert reply[2] == 0x94
        # MQTT 3.1.1 is answered with "unacceptable protocol version"
        _, writer, ack = await raw_connect(small, connect_packet("old", level=4))
        assert ack == bytes([CONNACK << 4, 2, 0, 1])
        writer.close()
        assert small.stats["rejected"] >= 6
        async with client(small) as c:  # still serving
            await c.subscribe("ok", qos=1)
            await c.publish("ok", b"alive", qos=1)
            assert (await next_message(c)).payload == b"alive"
    finally:
        await small.stop()


async def test_slow_client_queue_is_bounded(broker: MqttBroker) -> None:
    slow = MqttBroker("127.0.0.1", 0, max_queue=20)
    await slow.start()
    try:
        # a subscriber that never reads: the socket buffers fill, then the queue bound holds
        reader, writer, _ = await raw_connect(slow, connect_packet("slow"))
        sub = packet(8, 2, struct.pack("!H", 1) + b"\x00" + encode_str("flood") + b"\x00")
        writer.write(sub)
        await writer.drain()
        async with client(slow) as pub:
            for _ in range(200):
                await pub.publish("flood", b"x" * 100_000, qos=0)
            await until(lambda: slow.stats["dropped"] > 0)
            session = slow.sessions["slow"]
            assert len(session.queue) <= 20
            await pub.publish("fine", b"y", qos=1)  # the broker keeps serving others
        writer.transport.abort()
    finally:
        await slow.stop()
