"""An MQTT-aware TCP proxy between a client (the bridge) and a broker, for fault-injection tests.

The client connects to the proxy; the proxy opens one upstream connection to the broker per client
connection and forwards whole MQTT control packets both ways, byte for byte. On the way it parses
them (MQTT 3.1.1 and 5, the version read from the client's CONNECT) and records what a delivery
test wants to know: every PUBLISH the broker delivered, which of them the client acknowledged
(PUBACK for QoS 1, PUBREC for QoS 2) and how often, and the SUBSCRIBE/SUBACK exchange. It can also
misbehave on purpose, the way brokers and networks do:

- `duplicate_publishes(n)`: resend the next n QoS 1/2 PUBLISHes with the DUP flag while they are
  still unacknowledged, as EMQX does with `mqtt.retry_interval` on a live connection;
- `reuse_packet_ids(n)`: give the QoS 1/2 PUBLISHes packet ids 1..n in turn, whether or not the
  last one with that id was acknowledged (DUP clear), and map each ack back to the broker's id
  of the OLDEST unacknowledged PUBLISH with it: what Mosquitto 2.0.11 does past 65,535 messages
  in flight (it sends past the Receive Maximum once messages queue, and deletes the first
  in-flight message with an acked id);
- `drop_subacks(n)`: swallow the next n SUBACKs (a SUBACK that never comes);
- `cut()`: abort every connection at once, both sides;
- `hold_acks()`/`release_acks()`: keep the client's PUBACK/PUBREC from the broker for a while.

An acknowledgement for a packet id with no unacknowledged PUBLISH on its connection (a double
ack) is recorded as stray and not forwarded, so the broker never sees it. Runs in the test's event
loop: `async with MqttProxy(broker.host, broker.port) as proxy:` then connect to `proxy.url`.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType

CONNECT, PUBLISH, PUBACK, PUBREC, SUBSCRIBE, SUBACK = 1, 3, 4, 5, 8, 9
ACK_NAMES = {PUBACK: "PUBACK", PUBREC: "PUBREC"}


class MalformedPacket(Exception):
    """The bytes are not MQTT (or the proxy misreads them)."""


def _varint(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """The variable byte integer at `pos` and the position after it; None if the data ends in it."""
    value = 0
    for shift in range(0, 28, 7):
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def _complete_varint(packet: bytes, pos: int) -> tuple[int, int]:
    decoded = _varint(packet, pos)
    if decoded is None:
        raise MalformedPacket(f"packet type {packet[0] >> 4} ends inside a length")
    return decoded


def _u16(packet: bytes, pos: int) -> int:
    if pos + 2 > len(packet):
        raise MalformedPacket(f"packet type {packet[0] >> 4} too short")
    return int.from_bytes(packet[pos : pos + 2], "big")


def _string(packet: bytes, pos: int) -> tuple[str, int]:
    end = pos + 2 + _u16(packet, pos)
    return packet[pos + 2 : end].decode("utf-8", "replace"), end


def _body(packet: bytes) -> int:
    """The position of the variable header, after the fixed header."""
    return _complete_varint(packet, 1)[1]


def _skip_properties(packet: bytes, pos: int, level: int) -> int:
    if level < 5:
        return pos
    length, pos = _complete_varint(packet, pos)
    return pos + length


class PacketSplitter:
    """Cuts a byte stream into whole MQTT control packets, however the reads split it."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        packets: list[bytes] = []
        while len(self._buffer) >= 2:
            header = _varint(self._buffer, 1)
            if header is None:
                break
            length, start = header
            if len(self._buffer) < start + length:
                break
            packets.append(bytes(self._buffer[: start + length]))
            del self._buffer[: start + length]
        return packets


@dataclass(frozen=True)
class Delivered:
    """A PUBLISH from the broker to the client (`resent` holds the proxy's own DUP copies)."""

    connection: int
    qos: int
    packet_id: int | None
    topic: str
    payload: bytes
    dup: bool
    raw: bytes = field(repr=False, compare=False)


@dataclass(frozen=True)
class Ack:
    """A PUBACK/PUBREC from the client. `payload` is that of the PUBLISH it acknowledges; for a
    stray ack, that of the last PUBLISH with this packet id on the connection (None if none)."""

    connection: int
    packet_id: int
    kind: str
    payload: bytes | None
    stray: bool


@dataclass(frozen=True)
class Subscribe:
    connection: int
    packet_id: int
    filters: tuple[tuple[str, int], ...]  # (topic filter, options byte: QoS in the low 2 bits)


@dataclass(frozen=True)
class SubAck:
    connection: int
    packet_id: int
    reason_codes: bytes
    dropped: bool  # swallowed by drop_subacks(): the client never saw it


class _Connection:
    def __init__(
        self, index: int, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter
    ) -> None:
        self.index, self.client, self.upstream = index, client, upstream
        self.level = 4  # MQTT protocol level from CONNECT: 4 = 3.1.1, 5 = 5
        # The unacknowledged PUBLISHes per packet id (as the client sees it), oldest first, and
        # with reused ids, the broker's ids behind them.
        self.unacked: dict[int, deque[Delivered]] = {}
        self.broker_ids: dict[int, deque[int]] = {}
        self.publishes = 0
        self.id_space = 0
        self.last: dict[int, Delivered] = {}
        self.closed = False
        self.done = asyncio.Event()

    def abort(self) -> None:
        self.client.transport.abort()
        self.upstream.transport.abort()


class MqttProxy:
    host = "127.0.0.1"

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.port = 0
        self.delivered: list[Delivered] = []
        self.resent: list[Delivered] = []
        self.acks: list[Ack] = []  # every PUBACK/PUBREC the client sent, stray ones included
        self.acked: list[bytes] = []  # payloads of the PUBLISHes acked (strays excluded)
        self.acks_forwarded = 0  # PUBACK/PUBRECs that went on to the broker
        self.subscribes: list[Subscribe] = []
        self.subacks: list[SubAck] = []
        self.errors: list[BaseException] = []  # anything but a connection error (a proxy bug)
        self._duplicates, self._duplicate_delay, self._subacks_to_drop = 0, 0.05, 0
        self._id_space = 0  # reuse_packet_ids(): ids 1.._id_space (0: the broker's own)
        self._holding = False
        self._held: list[tuple[_Connection, bytes]] = []
        self._accepted = 0
        self._live: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._closing = False

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Client connections accepted so far."""
        return self._accepted

    @property
    def open_connections(self) -> int:
        return len(self._live)

    @property
    def stray_acks(self) -> int:
        """Acks for a packet id with no unacknowledged PUBLISH on their connection."""
        return sum(ack.stray for ack in self.acks)

    @property
    def acks_per_publish(self) -> Counter[bytes]:
        """How many PUBACK/PUBRECs each payload got, stray ones included."""
        return Counter(ack.payload for ack in self.acks if ack.payload is not None)

    # --- faults -------------------------------------------------------------------------------

    def duplicate_publishes(self, count: int, delay: float = 0.05) -> None:
        """Resend each of the next `count` QoS 1/2 PUBLISHes `delay` s after forwarding it, with
        the same packet id and DUP set, unless the client has acked it by then."""
        self._duplicates, self._duplicate_delay = count, delay

    def reuse_packet_ids(self, space: int) -> None:
        """From now on, new connections' QoS 1/2 PUBLISHes get the ids 1..`space` in turn."""
        self._id_space = space

    def drop_subacks(self, count: int) -> None:
        self._subacks_to_drop = count

    def hold_acks(self) -> None:
        """Keep the client's PUBACK/PUBRECs (still recorded in `acked`) until release_acks()."""
        self._holding = True

    def release_acks(self) -> int:
        """Forward the held acks; those of connections closed meanwhile are lost. The count sent."""
        self._holding = False
        held, self._held = self._held, []
        sent = 0
        for connection, packet in held:
            if not connection.closed:
                connection.upstream.write(packet)
                sent += 1
        self.acks_forwarded += sent
        return sent

    async def cut(self) -> None:
        """Abort every current connection, client and broker side, and wait until they are gone."""
        cut = list(self._live)
        for connection in cut:
            connection.abort()
        for connection in cut:
            await connection.done.wait()

    # --- plumbing -----------------------------------------------------------------------------

    async def __aenter__(self) -> MqttProxy:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._live):
            connection.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        index, self._accepted = self._accepted, self._accepted + 1
        try:
            try:
                upstream = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except OSError:  # the broker is down: so is the proxy, as far as clients can tell
                writer.transport.abort()
                return
            if self._closing:  # __aexit__ came while this connection was being opened
                writer.transport.abort()
                upstream[1].transport.abort()
                return
            connection = _Connection(index, writer, upstream[1])
            connection.id_space = self._id_space
            self._live.add(connection)
            pumps = [
                asyncio.create_task(self._pump(connection, reader, upstream[1], self._from_client)),
                asyncio.create_task(self._pump(connection, upstream[0], writer, self._from_broker)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._live.discard(connection)
                connection.closed = True
                for pump in pumps:
                    pump.cancel()
                await asyncio.wait(pumps)
                writer.close()
                upstream[1].close()
                connection.done.set()
        finally:
            self._tasks.discard(task)

    async def _pump(
        self,
        connection: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handle: Callable[[_Connection, bytes], bytes],
    ) -> None:
        splitter = PacketSplitter()
        try:
            while data := await reader.read(65536):
                out = b"".join([handle(connection, packet) for packet in splitter.feed(data)])
                if out:
                    writer.write(out)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        except Exception as error:
            self.errors.append(error)

    def _from_client(self, connection: _Connection, packet: bytes) -> bytes:
        """What to forward to the broker for this packet from the client."""
        kind, pos = packet[0] >> 4, _body(packet)
        if kind == CONNECT:
            connection.level = packet[_string(packet, pos)[1]]
        elif kind == SUBSCRIBE:
            packet_id = _u16(packet, pos)
            pos = _skip_properties(packet, pos + 2, connection.level)
            filters = []
            while pos < len(packet):
                topic, pos = _string(packet, pos)
                filters.append((topic, packet[pos]))
                pos += 1
            self.subscribes.append(Subscribe(connection.index, packet_id, tuple(filters)))
        elif kind in ACK_NAMES:
            packet_id = _u16(packet, pos)
            waiting = connection.unacked.get(packet_id)
            delivered = waiting.popleft() if waiting else None
            if delivered is None:  # a double ack: recorded, never forwarded
                last = connection.last.get(packet_id)
                payload = None if last is None else last.payload
                self.acks.append(Ack(connection.index, packet_id, ACK_NAMES[kind], payload, True))
                return b""
            self.acks.append(
                Ack(connection.index, packet_id, ACK_NAMES[kind], delivered.payload, False)
            )
            self.acked.append(delivered.payload)
            behind = connection.broker_ids.get(packet_id)
            if behind:  # a reused id: ack the broker's oldest message with it
                packet = packet[:pos] + behind.popleft().to_bytes(2, "big") + packet[pos + 2 :]
            if self._holding:
                self._held.append((connection, packet))
                return b""
            self.acks_forwarded += 1
        return packet

    def _from_broker(self, connection: _Connection, packet: bytes) -> bytes:
        """What to forward to the client for this packet from the broker."""
        kind, pos = packet[0] >> 4, _body(packet)
        if kind == PUBLISH:
            qos, dup = (packet[0] >> 1) & 3, bool(packet[0] & 0x08)
            topic, pos = _string(packet, pos)
            packet_id = None
            if qos:
                packet_id = _u16(packet, pos)
                if connection.id_space:
                    broker_id = packet_id
                    packet_id = connection.publishes % connection.id_space + 1
                    connection.broker_ids.setdefault(packet_id, deque()).append(broker_id)
                    packet = packet[:pos] + packet_id.to_bytes(2, "big") + packet[pos + 2 :]
                connection.publishes += 1
                pos += 2
            pos = _skip_properties(packet, pos, connection.level)
            delivered = Delivered(
                connection.index, qos, packet_id, topic, packet[pos:], dup, packet
            )
            self.delivered.append(delivered)
            if packet_id is not None:
                connection.unacked.setdefault(packet_id, deque()).append(delivered)
                connection.last[packet_id] = delivered
                if self._duplicates > 0:
                    self._duplicates -= 1
                    loop = asyncio.get_running_loop()
                    loop.call_later(self._duplicate_delay, self._resend, connection, delivered)
        elif kind == SUBACK:
            packet_id = _u16(packet, pos)
            pos = _skip_properties(packet, pos + 2, connection.level)
            dropped = self._subacks_to_drop > 0
            if dropped:
                self._subacks_to_drop -= 1
            self.subacks.append(SubAck(connection.index, packet_id, packet[pos:], dropped))
            if dropped:
                return b""
        return packet

    def _resend(self, connection: _Connection, delivered: Delivered) -> None:
        if connection.closed or delivered.packet_id is None:
            return
        if not any(d is delivered for d in connection.unacked.get(delivered.packet_id, ())):
            return  # acked meanwhile
        raw = bytes([delivered.raw[0] | 0x08]) + delivered.raw[1:]
        connection.client.write(raw)
        self.resent.append(replace(delivered, dup=True, raw=raw))
