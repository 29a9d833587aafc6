"""A small in-process MQTT v5 broker: the fallback when Mosquitto is not installed.

It serves what the project uses, per the MQTT 5 specification: CONNECT (clean start,
keepalive, will incl. retain), PUBLISH at QoS 0 and 1, SUBSCRIBE with `+`/`#` wildcards
and `$share/{group}/{filter}` shared subscriptions (round-robin within a group),
UNSUBSCRIBE, retained messages, PINGREQ and DISCONNECT. Sessions are not kept after a
connection ends (the CONNACK says so with a session expiry of 0); QoS 2 and topic aliases
are refused (the CONNACK advertises maximum QoS 1 and topic alias maximum 0).

Every connection is untrusted: a malformed or oversized packet ends that connection with
the matching DISCONNECT reason, never the broker. Each client's outgoing queue is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# packet types
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)

# reason codes
RC_SUCCESS = 0x00
RC_DISCONNECT_WITH_WILL = 0x04
RC_NO_SUBSCRIPTION = 0x11
RC_UNSPECIFIED = 0x80
RC_MALFORMED = 0x81
RC_PROTOCOL_ERROR = 0x82
RC_UNSUPPORTED_VERSION = 0x84
RC_SERVER_SHUTTING_DOWN = 0x8B
RC_KEEPALIVE_TIMEOUT = 0x8D
RC_SESSION_TAKEN_OVER = 0x8E
RC_TOPIC_FILTER_INVALID = 0x8F
RC_TOPIC_NAME_INVALID = 0x90
RC_TOPIC_ALIAS_INVALID = 0x94
RC_PACKET_TOO_LARGE = 0x95
RC_QOS_NOT_SUPPORTED = 0x9B

# property identifiers and their wire types
_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
_PROPERTY_TYPES: dict[int, int] = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT,
    0x11: _U32, 0x12: _STR, 0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE,
    0x18: _U32, 0x19: _BYTE, 0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _U16,
    0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
P_SESSION_EXPIRY, P_RECEIVE_MAX, P_TOPIC_ALIAS_MAX, P_TOPIC_ALIAS = 0x11, 0x21, 0x22, 0x23
P_MAX_PACKET, P_MAX_QOS, P_ASSIGNED_ID, P_SUB_ID = 0x27, 0x24, 0x12, 0x0B
P_RETAIN_AVAILABLE, P_WILDCARD_AVAILABLE, P_SUB_ID_AVAILABLE, P_SHARED_AVAILABLE = 0x25, 0x28, 0x29, 0x2A
# forwarding a PUBLISH drops what belongs to the sender's connection
_NOT_FORWARDED = frozenset({P_TOPIC_ALIAS, P_SUB_ID})

DEFAULT_MAX_PACKET = 8 * 1024 * 1024
DEFAULT_MAX_QUEUE = 10_000
CONNECT_TIMEOUT = 10.0


class Malformed(Exception):
    """A packet that breaks the wire format; `reason` is the DISCONNECT reason code."""

    def __init__(self, detail: str, reason: int = RC_MALFORMED) -> None:
        super().__init__(detail)
        self.reason = reason


# -- wire encoding ------------------------------------------------------------------------
def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def encode_props(props: list[tuple[int, bytes]]) -> bytes:
    """Properties given as (id, value already encoded by its type)."""
    body = b"".join(encode_varint(pid) + value for pid, value in props)
    return encode_varint(len(body)) + body


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + encode_varint(len(body)) + body


class Reader:
    """Cursor over one packet's body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise Malformed("packet ends early")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("!I", self.take(4))[0])

    def varint(self) -> int:
        value, mult = 0, 1
        for _ in range(4):
            b = self.byte()
            value += (b & 0x7F) * mult
            if not b & 0x80:
                return value
            mult *= 128
        raise Malformed("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.binary()
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("string is not UTF-8") from None
        if "\0" in s:
            raise Malformed("string contains U+0000")
        return s

    def props(self) -> tuple[dict[int, object], list[tuple[int, bytes]]]:
        """Properties: decoded values by id (user properties as a list), and raw slices."""
        length = self.varint()
        end = self.pos + length
        if end > len(self.data):
            raise Malformed("properties run past the packet")
        values: dict[int, object] = {}
        raw: list[tuple[int, bytes]] = []
        while self.pos < end:
            pid = self.varint()
            kind = _PROPERTY_TYPES.get(pid)
            if kind is None:
                raise Malformed(f"unknown property 0x{pid:02x}")
            start = self.pos
            value: object
            if kind == _BYTE:
                value = self.byte()
            elif kind == _U16:
                value = self.u16()
            elif kind == _U32:
                value = self.u32()
            elif kind == _VARINT:
                value = self.varint()
            elif kind == _STR:
                value = self.string()
            elif kind == _BIN:
                value = self.binary()
            else:
                value = (self.string(), self.string())
            if self.pos > end:
                raise Malformed("a property runs past the property block")
            raw.append((pid, self.data[start:self.pos]))
            if pid == 0x26:
                values.setdefault(pid, [])
                values[pid].append(value)  # type: ignore[attr-defined]
            elif pid in values and pid != P_SUB_ID:
                raise Malformed(f"property 0x{pid:02x} twice", RC_PROTOCOL_ERROR)
            else:
                values[pid] = value
        return values, raw


# -- topics -------------------------------------------------------------------------------
def valid_topic_name(topic: str) -> bool:
    return bool(topic) and "+" not in topic and "#" not in topic


def valid_filter(filt: str) -> bool:
    if not filt:
        return False
    levels = filt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(filt: str, topic: str) -> bool:
    """MQTT filter matching; wildcards at the first level never match `$` topics."""
    if topic.startswith("$") and filt[:1] in ("+", "#"):
        return False
    f_levels = filt.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def split_shared(filt: str) -> tuple[str | None, str]:
    """`$share/group/filter` -> (group, filter); anything else -> (None, filter)."""
    if not filt.startswith("$share/"):
        return None, filt
    parts = filt.split("/", 2)
    if len(parts) != 3 or not parts[1] or any(c in parts[1] for c in "+#") or not parts[2]:
        raise Malformed(f"bad shared subscription {filt!r}", RC_TOPIC_FILTER_INVALID)
    return parts[1], parts[2]


# -- state --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: tuple[tuple[int, bytes], ...] = ()


@dataclass
class Subscription:
    filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False


@dataclass
class _Outgoing:
    msg: Message
    qos: int
    retain: bool


@dataclass
class Session:
    client_id: str
    writer: asyncio.StreamWriter
    keepalive: int = 0
    receive_max: int = 65535
    max_packet: int = 0  # the client's limit; 0 means none
    will: Message | None = None
    subs: dict[str, Subscription] = field(default_factory=dict)
    queue: deque[_Outgoing] = field(default_factory=deque)
    inflight: dict[int, _Outgoing] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    next_pid: int = 1
    closed: bool = False
    dropped: int = 0
    task: asyncio.Task[None] | None = None

    def alloc_pid(self) -> int:
        for _ in range(65535):
            pid = self.next_pid
            self.next_pid = pid % 65535 + 1
            if pid not in self.inflight:
                return pid
        raise RuntimeError("no free packet id")  # bounded by receive_max, cannot happen


@dataclass
class _SharedGroup:
    members: list[tuple[str, int]] = field(default_factory=list)  # (client id, qos)
    turn: int = 0


class MqttBroker:
    """An asyncio MQTT v5 server on one TCP port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 max_packet_size: int = DEFAULT_MAX_PACKET,
                 max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.host = host
        self.port = port
        self.max_packet_size = max_packet_size
        self.max_queue = max_queue
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self.shared: dict[tuple[str, str], _SharedGroup] = {}
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self.stats: dict[str, int] = {"connections": 0, "rejected": 0, "published": 0,
                                      "delivered": 0, "dropped": 0}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port,
                                                  reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.closed = True
            with contextlib.suppress(Exception):
                session.writer.write(packet(DISCONNECT, 0, bytes([RC_SERVER_SHUTTING_DOWN, 0])))
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        self.sessions.clear()
        self.shared.clear()

    # -- one connection -------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self.stats["connections"] += 1
        session: Session | None = None
        normal = False
        try:
            session = await self._handshake(reader, writer)
            if session is None:
                return
            normal = await self._serve(session, reader)
        except asyncio.CancelledError:
            normal = True  # the broker is stopping: no wills
        except Malformed as exc:
            self.stats["rejected"] += 1
            log.info("mqtt broker: closing %s: %s",
                     session.client_id if session else "a new connection", exc)
            if session is not None:
                self._write(session, packet(DISCONNECT, 0, bytes([exc.reason, 0])))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        except Exception:  # a bug must cost one connection, not the broker
            log.exception("mqtt broker: connection failed")
        finally:
            self._conns.discard(task)
            if session is not None:
                self._end_session(session, publish_will=not normal)
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_packet(self, reader: asyncio.StreamReader,
                           timeout: float | None) -> tuple[int, int, bytes]:
        first = await asyncio.wait_for(reader.readexactly(1), timeout)
        length, mult = 0, 1
        for i in range(4):
            b = (await reader.readexactly(1))[0]
            length += (b & 0x7F) * mult
            if not b & 0x80:
                break
            mult *= 128
            if i == 3:
                raise Malformed("remaining length longer than 4 bytes")
        if length + 5 > self.max_packet_size:
            raise Malformed(f"packet of {length} bytes is over the limit", RC_PACKET_TOO_LARGE)
        body = await reader.readexactly(length)
        return first[0] >> 4, first[0] & 0x0F, body

    async def _handshake(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> Session | None:
        ptype, flags, body = await self._read_packet(reader, CONNECT_TIMEOUT)
        if ptype != CONNECT or flags != 0:
            raise Malformed("the first packet is not CONNECT", RC_PROTOCOL_ERROR)
        r = Reader(body)
        if r.string() != "MQTT":
            raise Malformed("protocol name is not MQTT", RC_PROTOCOL_ERROR)
        level = r.byte()
        if level != 5:
            # answered in the v3 form the client understands: 0x01 unacceptable version
            writer.write(packet(CONNACK, 0, bytes([0, 0x01])))
            await writer.drain()
            return None
        cflags = r.byte()
        if cflags & 0x01:
            raise Malformed("reserved connect flag set")
        keepalive = r.u16()
        props, _ = r.props()
        client_id = r.string()
        will: Message | None = None
        if cflags & 0x04:
            will_qos = (cflags >> 3) & 0x03
            if will_qos > 1:
                writer.write(packet(CONNACK, 0, bytes([0, RC_QOS_NOT_SUPPORTED, 0])))
                await writer.drain()
                return None
            _, will_raw = r.props()
            will_topic = r.string()
            will_payload = r.binary()
            if not valid_topic_name(will_topic):
                raise Malformed("bad will topic", RC_TOPIC_NAME_INVALID)
            will = Message(will_topic, will_payload, will_qos, bool(cflags & 0x20),
                           tuple(p for p in will_raw if p[0] not in _NOT_FORWARDED))
        elif cflags & 0x38:
            raise Malformed("will flags without a will")
        if cflags & 0x80:
            r.binary()  # user name: anonymous access, not checked
        if cflags & 0x40:
            r.binary()
        if r.left():
            raise Malformed("bytes after the CONNECT payload")
        ack_props: list[tuple[int, bytes]] = [
            (P_SESSION_EXPIRY, struct.pack("!I", 0)),
            (P_MAX_QOS, b"\x01"),
            (P_RETAIN_AVAILABLE, b"\x01"),
            (P_MAX_PACKET, struct.pack("!I", self.max_packet_size)),
            (P_TOPIC_ALIAS_MAX, struct.pack("!H", 0)),
            (P_WILDCARD_AVAILABLE, b"\x01"),
            (P_SUB_ID_AVAILABLE, b"\x00"),
            (P_SHARED_AVAILABLE, b"\x01"),
        ]
        if not client_id:
            client_id = f"mlrb-auto-{next(self._ids)}"
            ack_props.append((P_ASSIGNED_ID, encode_str(client_id)))
        session = Session(client_id, writer, keepalive=keepalive, will=will)
        receive_max = props.get(P_RECEIVE_MAX, 65535)
        max_packet = props.get(P_MAX_PACKET, 0)
        if receive_max == 0 or max_packet == 0 and P_MAX_PACKET in props:
            raise Malformed("receive maximum or maximum packet size of 0", RC_PROTOCOL_ERROR)
        session.receive_max = int(receive_max)  # type: ignore[call-overload]
        session.max_packet = int(max_packet)  # type: ignore[call-overload]
        old = self.sessions.get(client_id)
        if old is not None:
            self._write(old, packet(DISCONNECT, 0, bytes([RC_SESSION_TAKEN_OVER, 0])))
            self._end_session(old, publish_will=True)
            with contextlib.suppress(Exception):
                old.writer.close()
        self.sessions[client_id] = session
        writer.write(packet(CONNACK, 0, bytes([0, RC_SUCCESS]) + encode_props(ack_props)))
        await writer.drain()
        session.task = asyncio.create_task(self._send_loop(session))
        return session

    async def _serve(self, session: Session, reader: asyncio.StreamReader) -> bool:
        """Handle packets until the client leaves; True for a normal DISCONNECT."""
        # a client silent for 1.5 keepalive periods is gone (MQTT 5, 3.1.2.10)
        timeout = session.keepalive * 1.5 if session.keepalive else None
        while not session.closed:
            try:
                ptype, flags, body = await self._read_packet(reader, timeout)
            except TimeoutError:
                raise Malformed("keepalive expired", RC_KEEPALIVE_TIMEOUT) from None
            if ptype == PUBLISH:
                await self._on_publish(session, flags, body)
            elif ptype == PUBACK:
                pid = Reader(body).u16()
                if session.inflight.pop(pid, None) is not None:
                    session.wake.set()
            elif ptype == SUBSCRIBE:
                self._on_subscribe(session, flags, body)
            elif ptype == UNSUBSCRIBE:
                self._on_unsubscribe(session, flags, body)
            elif ptype == PINGREQ:
                self._write(session, packet(PINGRESP, 0, b""))
            elif ptype == DISCONNECT:
                reason = body[0] if body else RC_SUCCESS
                return reason != RC_DISCONNECT_WITH_WILL
            elif ptype in (PUBREC, PUBREL, PUBCOMP):
                raise Malformed("QoS 2 is not supported", RC_QOS_NOT_SUPPORTED)
            else:
                raise Malformed(f"unexpected packet type {ptype}", RC_PROTOCOL_ERROR)
            await session.writer.drain()
        return True

    def _write(self, session: Session, data: bytes) -> None:
        if not session.writer.is_closing():
            session.writer.write(data)

    def _end_session(self, session: Session, publish_will: bool) -> None:
        if session.closed and self.sessions.get(session.client_id) is not session:
            return
        session.closed = True
        session.wake.set()
        if session.task is not None:
            session.task.cancel()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        for (group, filt), shared in list(self.shared.items()):
            shared.members = [m for m in shared.members if m[0] != session.client_id]
            if not shared.members:
                del self.shared[(group, filt)]
        if publish_will and session.will is not None:
            will, session.will = session.will, None
            self._publish(will, origin=None)

    # -- packets --------------------------------------------------------------------
    async def _on_publish(self, session: Session, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 0x03
        retain = bool(flags & 0x01)
        if qos == 3:
            raise Malformed("QoS bits 11")
        if qos == 2:
            raise Malformed("QoS 2 is not supported", RC_QOS_NOT_SUPPORTED)
        r = Reader(body)
        topic = r.string()
        pid = r.u16() if qos else 0
        if qos and pid == 0:
            raise Malformed("packet id 0")
        props, raw = r.props()
        if P_TOPIC_ALIAS in props:
            raise Malformed("topic aliases are not accepted", RC_TOPIC_ALIAS_INVALID)
        if not valid_topic_name(topic):
            raise Malformed(f"bad topic name {topic[:80]!r}", RC_TOPIC_NAME_INVALID)
        payload = r.take(r.left())
        msg = Message(topic, payload, qos, retain,
                      tuple(p for p in raw if p[0] not in _NOT_FORWARDED))
        self._publish(msg, origin=session.client_id)
        if qos == 1:
            self._write(session, packet(PUBACK, 0, struct.pack("!H", pid)))

    def _on_subscribe(self, session: Session, flags: int, body: bytes) -> None:
        if flags != 0x02:
            raise Malformed("SUBSCRIBE flags must be 0010")
        r = Reader(body)
        pid = r.u16()
        props, _ = r.props()
        if P_SUB_ID in props:
            raise Malformed("subscription identifiers are not supported", RC_PROTOCOL_ERROR)
        codes = bytearray()
        retained_out: list[tuple[Message, int]] = []
        if not r.left():
            raise Malformed("SUBSCRIBE without a topic filter", RC_PROTOCOL_ERROR)
        while r.left():
            filt = r.string()
            opts = r.byte()
            if opts & 0xC0 or (opts & 0x03) == 3 or (opts >> 4) & 0x03 == 3:
                raise Malformed("bad subscription options")
            qos = min(opts & 0x03, 1)
            try:
                group, real = split_shared(filt)
            except Malformed:
                codes.append(RC_TOPIC_FILTER_INVALID)
                continue
            if not valid_filter(real):
                codes.append(RC_TOPIC_FILTER_INVALID)
                continue
            if group is not None:
                shared = self.shared.setdefault((group, real), _SharedGroup())
                shared.members = [m for m in shared.members if m[0] != session.client_id]
                shared.members.append((session.client_id, qos))
                session.subs[filt] = Subscription(filt, qos)
                codes.append(qos)
                continue  # retained messages are not sent on shared subscriptions
            existed = filt in session.subs
            session.subs[filt] = Subscription(filt, qos, bool(opts & 0x04), bool(opts & 0x08))
            codes.append(qos)
            handling = (opts >> 4) & 0x03
            if handling == 0 or (handling == 1 and not existed):
                for msg in self.retained.values():
                    if topic_matches(real, msg.topic):
                        retained_out.append((msg, min(msg.qos, qos)))
        self._write(session, packet(SUBACK, 0, struct.pack("!H", pid) + b"\x00" + bytes(codes)))
        for msg, qos in retained_out:
            self._enqueue(session, _Outgoing(msg, qos, retain=True))

    def _on_unsubscribe(self, session: Session, flags: int, body: bytes) -> None:
        if flags != 0x02:
            raise Malformed("UNSUBSCRIBE flags must be 0010")
        r = Reader(body)
        pid = r.u16()
        r.props()
        codes = bytearray()
        if not r.left():
            raise Malformed("UNSUBSCRIBE without a topic filter", RC_PROTOCOL_ERROR)
        while r.left():
            filt = r.string()
            sub = session.subs.pop(filt, None)
            codes.append(RC_SUCCESS if sub is not None else RC_NO_SUBSCRIPTION)
            if sub is not None and filt.startswith("$share/"):
                group, real = split_shared(filt)
                shared = self.shared.get((group or "", real))
                if shared is not None:
                    shared.members = [m for m in shared.members if m[0] != session.client_id]
                    if not shared.members:
                        del self.shared[(group or "", real)]
        self._write(session, packet(UNSUBACK, 0, struct.pack("!H", pid) + b"\x00" + bytes(codes)))

    # -- routing --------------------------------------------------------------------
    def _publish(self, msg: Message, origin: str | None) -> None:
        self.stats["published"] += 1
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)
        self._route(msg, origin)

    def _route(self, msg: Message, origin: str | None) -> None:
        for session in list(self.sessions.values()):
            best: Subscription | None = None
            for sub in session.subs.values():
                if sub.filter.startswith("$share/"):
                    continue
                if sub.no_local and session.client_id == origin:
                    continue
                if topic_matches(sub.filter, msg.topic) and (best is None or sub.qos > best.qos):
                    best = sub
            if best is not None:
                # one copy per client, at the highest QoS of its matching subscriptions
                retain = msg.retain and any(
                    s.retain_as_published for s in session.subs.values()
                    if not s.filter.startswith("$share/") and topic_matches(s.filter, msg.topic))
                self._enqueue(session, _Outgoing(msg, min(msg.qos, best.qos), retain))
        for (_, filt), shared in self.shared.items():
            if not shared.members or not topic_matches(filt, msg.topic):
                continue
            n = len(shared.members)
            for k in range(n):
                cid, qos = shared.members[(shared.turn + k) % n]
                target = self.sessions.get(cid)
                if target is not None and not target.closed:
                    shared.turn = (shared.turn + k + 1) % n
                    self._enqueue(target, _Outgoing(msg, min(msg.qos, qos), False))
                    break

    def _enqueue(self, session: Session, out: _Outgoing) -> None:
        if session.closed:
            return
        q = session.queue
        if len(q) >= self.max_queue:
            # a slow client loses its oldest QoS 0 message first; QoS 1 only when it must
            victim = next((i for i, o in enumerate(q) if o.qos == 0), None)
            if victim is not None:
                self._drop(session, q[victim])
                del q[victim]
            elif out.qos == 0:
                self._drop(session, out)
                return
            else:
                self._drop(session, q.popleft())
        q.append(out)
        session.wake.set()

    def _drop(self, session: Session, out: _Outgoing) -> None:
        session.dropped += 1
        self.stats["dropped"] += 1
        if out.qos:
            log.warning("mqtt broker: client %s is too slow; dropped a QoS 1 message on %s "
                        "(%d dropped so far)", session.client_id, out.msg.topic, session.dropped)

    def _encode_publish(self, out: _Outgoing, pid: int) -> bytes:
        msg = out.msg
        body = encode_str(msg.topic)
        if out.qos:
            body += struct.pack("!H", pid)
        body += encode_props(list(msg.props)) + msg.payload
        return packet(PUBLISH, (out.qos << 1) | (1 if out.retain else 0), body)

    async def _send_loop(self, session: Session) -> None:
        try:
            while not session.closed:
                if not session.queue or (session.queue[0].qos
                                         and len(session.inflight) >= session.receive_max):
                    session.wake.clear()
                    await session.wake.wait()
                    continue
                out = session.queue.popleft()
                pid = session.alloc_pid() if out.qos else 0
                data = self._encode_publish(out, pid)
                if session.max_packet and len(data) > session.max_packet:
                    self._drop(session, out)  # MQTT 5, 3.1.2.11.4: discard, do not send
                    continue
                if out.qos:
                    session.inflight[pid] = out
                session.writer.write(data)
                self.stats["delivered"] += 1
                await session.writer.drain()
        except (ConnectionError, OSError):
            # the reader sees the broken connection and publishes the will
            session.writer.transport.abort()
