"""One MQTT network connection on top of gmqtt, with the control the bridge needs.

gmqtt provides the wire protocol: CONNECT/SUBSCRIBE/UNSUBSCRIBE encoding, packet framing, MQTT 5
properties, topic aliases and the QoS 2 PUBREL/PUBCOMP exchange. Four things it decides on its
own are taken over here, through its (private, stable since 0.6) handler hooks:

- Acknowledgement. gmqtt acks before `on_message` unless that is a coroutine function under
  MQTT 5 with `optimistic_acknowledgement=False`, and then it runs every message in its own task.
  We replace its QoS 1/2 publish handlers, so each message is handed over synchronously, in
  socket order, with a ticket; PUBACK/PUBREC are written when `ack(ticket)` says so, in the
  order the PUBLISHes came (MQTT 3.1.1 and 5, section 4.6: a client MUST acknowledge QoS 1 and
  2 messages in the order received), coalesced into one socket write per event-loop iteration.
  A message stored early waits for the ones before it. The order is also what keeps an ack
  honest when a broker reuses a packet id still in flight: Mosquitto 2.0.11 sends past the
  Receive Maximum once messages queue (its issue #2301) and, past 65,535 in flight, gives a new
  message the id of one not yet acknowledged, with DUP clear; on a PUBACK it drops its oldest
  message with that id. Such a PUBLISH is a new message here (only one with DUP set is a
  re-send), and the in-order PUBACK for an id always belongs to its oldest message.
- Reconnecting. gmqtt reconnects after a fixed delay and does not resubscribe. A Link never
  reconnects (its reconnect hook does nothing); it reports the loss once and MqttSource builds a
  new Link with backoff, then resubscribes.
- Keepalive. gmqtt closes the connection when nothing was read for 2x keepalive, which is
  exactly what a paused reader looks like. Its timer is cancelled and ours keeps sending
  PINGREQs but does not count time spent paused (nor the first 2x keepalive after resuming).
- Pausing. `transport.pause_reading()`; the StreamReader inside gmqtt's protocol resumes the
  transport when its own buffer drains, so its paused flag is cleared to keep it from undoing ours.
"""

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError

from bridge.mqtt._errors import ConnectRefused
from bridge.mqtt._model import MqttSettings

log = logging.getLogger(__name__)

# CONNACK codes that retrying cannot fix (bad protocol, id, credentials, authorisation, ...).
_PERMANENT_V311 = frozenset({1, 2, 4, 5})
_PERMANENT_V5 = frozenset(
    {129, 130, 132, 133, 134, 135, 138, 140, 144, 149, 153, 154, 155, 156, 157}
)

# Bytes read from the socket per event-loop iteration (asyncio's default is 256 KiB, about a
# thousand 200-byte messages, i.e. tens of milliseconds of routing before anything else runs).
READ_CHUNK_BYTES = 16 * 1024

_PUBLISH = 0x30
# Messages that may wait for their acks before the socket is no longer read: the packet id
# space. A broker that honours the Receive Maximum never gets near it.
UNACKED_LIMIT = 65_535
# The properties of a PUBLISH that has none, as gmqtt gives them, by its DUP and RETAIN bits.
_FLAGS: dict[int, Mapping[str, Any]] = {
    flags: {"dup": (flags >> 3) & 1, "retain": flags & 1} for flags in (0, 1, 8, 9)
}

# PUBACK / PUBREC with a 2-byte remaining length: valid in 3.1.1 and in 5 (reason 0 may be omitted).
_PUBACK = b"\x40\x02"
_PUBREC = b"\x50\x02"

PublishCallback = Callable[["Link", int | None, int, str, bytes, Mapping[str, Any]], None]
"""(link, ticket or None for QoS 0, qos, topic, payload, MQTT 5 properties incl. retain, dup).
The ticket is what `Link.ack` takes: the message's place in the connection's receive order."""


# A QoS 1/2 PUBLISH handed over and not acknowledged yet is one int in `Link._unacked`: its packet
# id, `_QOS2` for QoS 2, and `_DONE` once its ack may go (when every one before it has gone). An
# int is not tracked by the cyclic collector; an object per message in flight was (tens of
# thousands of them, traversed by every collection).
_QOS2 = 1 << 16
_DONE = 1 << 17
_MID = 0xFFFF
# Seconds `Link.close` waits for the broker to close the connection after DISCONNECT.
DISCONNECT_WAIT = 2.0
# Acked entries at the front of `Link._unacked` are cut off once there are this many.
_COMPACT_AT = 4096


async def _no_reconnect(*args: object, **kwargs: object) -> None:
    """Replaces gmqtt's reconnect: a lost Link stays lost; MqttSource makes a new one."""


class Link:
    """One connection: connect, subscribe, deliver publishes, ack, pause, close. Never reused."""

    def __init__(
        self,
        settings: MqttSettings,
        ssl_context: ssl.SSLContext | None,
        on_publish: PublishCallback,
        on_lost: Callable[["Link"], None],
    ) -> None:
        self._settings = settings
        self._ssl = ssl_context
        self._on_publish = on_publish
        self._on_lost = on_lost
        # What a handed-over message's owner calls with its ticket once it is stored: one
        # callable per connection, so nothing is made per message (its owner may replace it).
        self.settled: Callable[[int | None], None] = self._ack_ticket
        properties: dict[str, int] = {}
        if settings.protocol == 5:
            properties = {
                "session_expiry_interval": int(settings.session_expiry),
                "receive_maximum": settings.receive_maximum,
            }
        client = gmqtt.Client(
            settings.client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            logger=logging.getLogger("gmqtt"),
            **properties,
        )
        if settings.username is not None:
            client.set_auth_credentials(settings.username, settings.password)
        handler = client._package_handler
        handler._reconnect_callback = _no_reconnect
        # PUBLISH packets without properties (nearly all) are parsed here; gmqtt's parser
        # (struct formats built per packet, a properties dict, a debug log) takes the rest.
        self._v5 = settings.protocol == 5
        self._gmqtt_packet = handler._handle_packet
        self._gmqtt_publish = handler._handle_publish_packet
        handler._handle_packet = self._on_packet
        handler._handle_qos_1_publish_packet = self._on_qos1
        handler._handle_qos_2_publish_packet = self._on_qos2
        self._gmqtt_pubrel = handler._handle_pubrel_packet
        handler._handle_pubrel_packet = self._on_pubrel
        client.on_message = self._on_qos0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_suback
        client.on_unsubscribe = self._on_unsuback
        self._client = client
        self._loop = asyncio.get_running_loop()
        self.session_present = False
        self.connected_at = 0.0
        self._lost = False
        self._lost_future: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._acks = bytearray()
        self._flush_handle: asyncio.Handle | None = None
        self._paused = False
        self._resumed_at = 0.0
        self._keepalive_task: asyncio.Task[None] | None = None
        # This connection's QoS 1/2 PUBLISHes handed over and not acknowledged yet, in the
        # order they came: `_unacked[_head:]`; the entry of ticket t is `_unacked[t - _base]`
        # (a list, not a deque: acks come in any order, and a deque's index walks its blocks).
        # Acked entries before `_head` are cut off in bulk. `_in_flight` counts them per
        # packet id; `_received` holds the ids of QoS 2 ones acknowledged with PUBREC and not
        # released yet. A PUBLISH that comes again with DUP set and one of these ids (a broker
        # re-sending on a live connection, as EMQX does with retry_interval) is the same
        # message: it is not handed over a second time.
        self._unacked: list[int] = []
        self._base = 0
        self._head = 0
        self._in_flight: dict[int, int] = {}
        self._received: set[int] = set()
        # Set while UNACKED_LIMIT messages wait for their acks: the socket is not read (the
        # keepalive counts it as paused) until half of them have gone.
        self._backlogged = False
        self.duplicates = 0  # re-sends not handed over again
        self.reused_ids = 0  # new messages with the id of one still in flight

    # --- lifecycle ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """TCP (+TLS) and CONNACK with clean start off; raises OSError, TimeoutError or
        ConnectRefused."""
        settings = self._settings
        address = settings.address
        version = MQTTv50 if settings.protocol == 5 else MQTTv311
        keepalive = max(1, math.ceil(settings.keepalive))
        try:
            async with asyncio.timeout(settings.connect_timeout):
                await self._client.connect(
                    address.host,
                    address.port,
                    ssl=self._ssl or False,
                    keepalive=keepalive,
                    version=version,
                    raise_exc=True,
                )
        except MQTTConnectError as exc:
            code: int = exc._code
            permanent = code in (_PERMANENT_V5 if settings.protocol == 5 else _PERMANENT_V311)
            self.abort()
            raise ConnectRefused(code, exc.message, permanent=permanent) from exc
        except BaseException:
            self.abort()
            raise
        if self._lost:
            raise ConnectionError("connection lost right after CONNACK")
        connection = self._client._connection
        connection._keep_connection_callback.cancel()  # ours runs instead, see module docstring
        if hasattr(connection._transport, "max_size"):
            # gmqtt parses everything buffered without yielding; capping each socket read caps
            # the work one loop iteration does, so appends and acks get their turns under load.
            connection._transport.max_size = READ_CHUNK_BYTES
        self.connected_at = self._resumed_at = time.monotonic()
        self._keepalive_task = asyncio.create_task(
            self._keepalive(connection, connection.keepalive), name="mqtt-keepalive"
        )

    @property
    def lost(self) -> bool:
        return self._lost

    async def wait_lost(self) -> None:
        await asyncio.shield(self._lost_future)

    async def close(self) -> None:
        """Flush pending acks, send DISCONNECT and wait for the broker to close the connection
        (the session stays for its expiry).

        The broker closes it once it has read the DISCONNECT, and so every ack written before
        it. Closing first raced a new connection with the same client id (a restart): Mosquitto
        took the session over with the old connection's last acks unread, and sent those
        messages again."""
        if self._lost:
            return
        self._flush()
        connection = self._client._connection
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                if connection is not None and not connection.is_closing():
                    connection.send_disconnect()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(DISCONNECT_WAIT):
                            await asyncio.shield(self._lost_future)
                await self._client.disconnect()
        except (OSError, TimeoutError) as exc:
            log.debug("closing the MQTT connection: %s", exc)
        finally:
            self._mark_lost()

    def abort(self) -> None:
        """Drop the connection at once, without DISCONNECT (the broker keeps what is unacked)."""
        connection = self._client._connection
        if connection is not None and not connection.is_closing():
            connection._transport.abort()
        self._mark_lost()

    def _mark_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._acks.clear()
        if self._keepalive_task is not None and self._keepalive_task is not asyncio.current_task():
            self._keepalive_task.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("MQTT connection lost"))
        self._pending.clear()
        self._lost_future.set_result(None)
        connection = self._client._connection
        if connection is not None and not connection.is_closing():
            connection._transport.abort()  # e.g. after a DISCONNECT sent by the broker
        self._on_lost(self)

    async def _keepalive(self, connection: Any, keepalive: int) -> None:
        """Ping when idle; declare the broker dead after 2x keepalive of silence while reading."""
        if not keepalive:
            return
        while not self._lost and not connection.is_closing():
            await asyncio.sleep(keepalive / 4)
            now = time.monotonic()
            idle_in = now - max(connection._last_data_in, self._resumed_at)
            reading = not (self._paused or self._backlogged)
            if reading and idle_in >= 2 * keepalive:
                log.warning("MQTT broker silent for %.1f s; dropping the connection", idle_in)
                self.abort()
                return
            idle_out = now - connection._last_data_out
            if idle_out >= keepalive / 2 or (reading and idle_in >= keepalive / 2):
                connection._send_ping_request()

    # --- subscriptions ------------------------------------------------------------------------

    async def subscribe(self, filters: Mapping[str, int]) -> dict[str, int]:
        """SUBSCRIBE in one packet; returns the refused filters with their reason codes."""
        topics = list(filters)
        # MQTT 5 retain handling 1: retained messages only for a subscription the session did
        # not hold already, so resubscribing after a reconnect does not replay them.
        retain_handling = 1 if self._settings.protocol == 5 else 0
        subscriptions = [
            gmqtt.Subscription(topic, qos=qos, retain_handling_options=retain_handling)
            for topic, qos in filters.items()
        ]
        codes = await self._request(self._client._connection.subscribe(subscriptions))
        return {topic: code for topic, code in zip(topics, codes, strict=False) if code >= 0x80}

    async def unsubscribe(self, topics: list[str]) -> None:
        await self._request(self._client._connection.unsubscribe(topics))

    async def _request(self, mid: int) -> tuple[int, ...]:
        if self._lost:
            raise ConnectionError("MQTT connection lost")
        future: asyncio.Future[tuple[int, ...]] = self._loop.create_future()
        self._pending[mid] = future
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                return await future
        finally:
            self._pending.pop(mid, None)

    def _on_suback(self, client: object, mid: int, codes: tuple[int, ...], props: object) -> None:
        future = self._pending.get(mid)
        if future is not None and not future.done():
            future.set_result(tuple(codes))

    def _on_unsuback(self, client: object, mid: int, codes: tuple[int, ...]) -> None:
        self._on_suback(client, mid, codes, None)

    # --- incoming messages and acks -----------------------------------------------------------

    def _on_packet(self, cmd: int, packet: bytes) -> None:
        if cmd & 0xF0 == _PUBLISH:
            self._on_publish_packet(cmd, packet)
        else:
            self._gmqtt_packet(cmd, packet)

    def _on_publish_packet(self, cmd: int, packet: bytes) -> None:
        """A PUBLISH with no MQTT 5 properties, parsed here; any other goes to gmqtt's parser
        (properties, topic aliases, a topic that is not UTF-8), which calls the same hooks."""
        qos = (cmd >> 1) & 3
        end = topic_end = 2 + (packet[0] << 8 | packet[1])
        mid = 0
        if qos:
            mid = packet[end] << 8 | packet[end + 1]
            end += 2
        if self._v5:
            if packet[end]:  # a properties length: not the common case
                self._gmqtt_publish(cmd, packet)
                return
            end += 1
        try:
            topic = packet[2:topic_end].decode()
        except UnicodeDecodeError:
            topic = ""
        if not topic:
            self._gmqtt_publish(cmd, packet)
            return
        props = _FLAGS[cmd & 0x09]
        if qos == 1:
            self._on_qos1(mid, packet[end:], topic, props)
        elif qos == 2:
            self._on_qos2(mid, packet[end:], topic, props)
        else:
            self._on_publish(self, None, 0, topic, packet[end:], props)

    def _on_qos0(
        self, client: object, topic: str, payload: bytes, qos: int, props: Mapping[str, Any]
    ) -> None:
        self._on_publish(self, None, 0, topic, payload, props)

    def _on_qos1(self, mid: int, payload: bytes, topic: str, props: Mapping[str, Any]) -> None:
        if mid in self._in_flight and self._is_resend(mid, topic, props):
            return
        self._on_publish(self, self._hand_over(mid, 1), 1, topic, payload, props)

    def _on_qos2(self, mid: int, payload: bytes, topic: str, props: Mapping[str, Any]) -> None:
        if mid in self._received:  # PUBREC was lost or is late: send it again, deliver nothing
            self.duplicates += 1
            self._write_ack(_PUBREC, mid)
            return
        # Until it is released, a QoS 2 id is one message, whatever the DUP flag says.
        if mid in self._in_flight and self._is_resend(mid, topic, None):
            return
        self._on_publish(self, self._hand_over(mid, 2), 2, topic, payload, props)

    def _is_resend(self, mid: int, topic: str, props: Mapping[str, Any] | None) -> bool:
        """A PUBLISH with the id of one in flight: the same message again (DUP set), or with
        DUP clear under QoS 1 a new one the broker gave a reused id (see the module doc)."""
        if props is not None and not props.get("dup"):
            self.reused_ids += 1
            if self.reused_ids == 1 or self.reused_ids % 1000 == 0:
                log.warning(
                    "the broker reused packet id %d while it was in flight (%d times on this "
                    "connection): it sends more than the Receive Maximum of %d; taken as new "
                    "messages, acknowledged in order",
                    mid,
                    self.reused_ids,
                    self._settings.receive_maximum,
                )
            return False
        self.duplicates += 1
        log.debug("PUBLISH %d on %r came again while in flight; handed over once", mid, topic)
        return True

    def _hand_over(self, mid: int, qos: int) -> int:
        """Queue a message for its in-order ack; its ticket."""
        unacked = self._unacked
        unacked.append(mid | _QOS2 if qos == 2 else mid)
        self._in_flight[mid] = self._in_flight.get(mid, 0) + 1
        if len(unacked) - self._head >= UNACKED_LIMIT and not self._backlogged:
            # A broker that ignores the Receive Maximum, behind a message that is not stored
            # yet: stored messages free the byte budget but not their place in the ack order.
            log.warning(
                "%d messages wait for their acks (the oldest is not stored yet, and the broker "
                "sends past the Receive Maximum): not reading until half of them are acked",
                len(unacked) - self._head,
            )
            self._backlogged = True
            self._stop_reading()
        return self._base + len(unacked) - 1

    @property
    def waiting_acks(self) -> int:
        """Messages handed over whose acks have not gone yet."""
        return len(self._unacked) - self._head

    @property
    def first_ticket(self) -> int:
        """The ticket of the oldest message whose ack has not gone (the next one's if none)."""
        return self._base + self._head

    def _on_pubrel(self, cmd: int, packet: bytes) -> None:
        if len(packet) >= 2:
            self._received.discard(int.from_bytes(packet[:2], "big"))
        self._gmqtt_pubrel(cmd, packet)

    def _ack_ticket(self, ticket: int | None) -> None:
        if ticket is not None:
            self.ack(ticket)

    def ack(self, ticket: int) -> None:
        """The message `ticket` may be acknowledged: its PUBACK (QoS 1) or PUBREC (QoS 2) is
        written, with the others of this loop iteration, once those of every message received
        before it are. Dropped when the connection is gone: the broker redelivers on the next."""
        unacked, head = self._unacked, self._head
        index = ticket - self._base
        if self._lost or not head <= index < len(unacked):
            return  # gone with its connection, or acknowledged already
        unacked[index] |= _DONE
        if index != head:
            return  # waits for the ones before it
        in_flight, end = self._in_flight, len(unacked)
        while head < end and unacked[head] & _DONE:
            entry = unacked[head]
            head += 1
            mid = entry & _MID
            left = in_flight[mid] - 1
            if left:
                in_flight[mid] = left
            else:
                del in_flight[mid]
            if entry & _QOS2:
                self._received.add(mid)
                self._write_ack(_PUBREC, mid)
            else:
                self._write_ack(_PUBACK, mid)
        if head == end:  # all acked (the usual case): start over
            unacked.clear()
            self._base += head
            head = 0
        elif head >= _COMPACT_AT:
            del unacked[:head]
            self._base += head
            head = 0
        self._head = head
        if self._backlogged and len(unacked) - head <= UNACKED_LIMIT // 2:
            self._backlogged = False
            if not self._paused:
                self._resumed_at = time.monotonic()
                self._start_reading()

    def _write_ack(self, kind: bytes, mid: int) -> None:
        self._acks += kind
        self._acks += mid.to_bytes(2, "big")
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    async def flush(self, timeout: float) -> None:
        """Write pending acks now and wait until the socket has taken them (or `timeout`)."""
        self._flush()
        transport = self._client._connection._transport
        deadline = time.monotonic() + timeout
        while not self._lost and transport.get_write_buffer_size():
            if time.monotonic() > deadline:
                log.warning("acks still unsent after %.1f s", timeout)
                return
            await asyncio.sleep(0.005)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._lost or not self._acks:
            return
        connection = self._client._connection
        if connection.is_closing():
            return
        connection._last_data_out = time.monotonic()
        connection._transport.write(bytes(self._acks))
        self._acks.clear()

    def _on_connect(self, client: object, session_present: int, rc: int, props: object) -> None:
        self.session_present = bool(session_present)

    def _on_disconnect(self, client: object, packet: object, exc: object = None) -> None:
        self._mark_lost()

    # --- flow control -------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop reading the socket; packets already read are still delivered."""
        self._paused = True
        self._stop_reading()

    def resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._resumed_at = time.monotonic()
        if not self._backlogged:
            self._start_reading()

    def _stop_reading(self) -> None:
        connection = self._client._connection
        if connection is None or connection.is_closing():
            return
        transport = connection._transport
        with contextlib.suppress(RuntimeError):
            if transport.is_reading():
                transport.pause_reading()
        # The StreamReader must not resume the transport when its buffer drains.
        connection._protocol._hard_reader._paused = False

    def _start_reading(self) -> None:
        connection = self._client._connection
        if connection is None or connection.is_closing():
            return
        transport = connection._transport
        if not transport.is_reading():
            transport.resume_reading()
