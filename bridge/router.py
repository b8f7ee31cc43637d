"""Turns one MQTT message into the encoded records its matching rules make.

The rules package decides which rules match and renders stream names and keys; this module adds
what is specific to HStreamDB: the record encoding (RAW bytes or a JSON object as a protobuf
Struct), the MQTT attributes every record carries, and the dead letters for payloads that can
never be stored (invalid JSON for a json rule, a stream name HStreamDB would refuse, a record over
the size limit).
"""

import logging
import sys
from collections.abc import Iterable
from typing import NamedTuple

from bridge import deadletter
from bridge.cache import ByteBudgetCache
from bridge.hstream.records import (
    FLAG_JSON,
    FLAG_RAW,
    encode_header,
    framed_size,
    json_struct_bytes,
    with_header,
)
from bridge.mqtt import Message
from rules import Matcher, Route

logger = logging.getLogger(__name__)

ATTR_TOPIC = "mqtt.topic"
ATTR_QOS = "mqtt.qos"
ATTR_RETAIN = "mqtt.retain"
ATTR_USER_PREFIX = "mqtt.user."


class Output(NamedTuple):
    """One record for one stream. `reason` is set for a dead letter (then `stream` is the DLQ)."""

    stream: str
    key: str
    data: bytes
    rule_id: str
    reason: str | None = None
    target: str | None = None  # the stream a dead letter was meant for, when it rendered


def _valid_text(text: str) -> str:
    """Text protobuf can serialize (lone surrogates replaced)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def message_attributes(message: Message) -> dict[str, str]:
    attributes = {
        ATTR_TOPIC: message.topic,
        ATTR_QOS: str(message.qos),
        ATTR_RETAIN: "true" if message.retain else "false",
    }
    for name, value in message.user_properties:
        attributes[ATTR_USER_PREFIX + name] = value
    return attributes


# Bytes of the record header cache (keys, topics and encoded headers, counted with their object
# overheads): up to about 20,000 topics of 30 characters (~420 B an entry), or 170 of 16 KiB
# with the topic as the key (~48 KiB an entry).
HEADER_CACHE_BYTES = 8 * 1024 * 1024

_HeaderKey = tuple[int, str, str, int, bool]


def _header_entry_size(cache_key: _HeaderKey, header: bytes) -> int:
    """The bytes a header cache entry keeps alive: the tuple, key, topic and encoded header."""
    _, key, topic, _, _ = cache_key
    size = sys.getsizeof(cache_key) + sys.getsizeof(key) + sys.getsizeof(header)
    if topic is not key:
        size += sys.getsizeof(topic)
    return size


class Router:
    def __init__(
        self,
        matcher: Matcher,
        *,
        dead_letter_stream: str,
        max_record_bytes: int,
        header_cache_bytes: int = HEADER_CACHE_BYTES,
    ) -> None:
        self.matcher = matcher
        self.dead_letter_stream = dead_letter_stream
        self.max_record_bytes = max_record_bytes
        # A device publishes to the same topic with the same key again and again: its record
        # header (flag, key, MQTT attributes) is encoded once and reused. Bounded in bytes (a
        # topic can be 64 KiB long); the oldest entries go first. Messages with MQTT 5 user
        # properties are encoded afresh.
        self.header_cache: ByteBudgetCache[_HeaderKey, bytes] = ByteBudgetCache(
            header_cache_bytes, _header_entry_size
        )
        self._headers = self.header_cache.data  # read directly: a hit is one dict lookup

    def _header(self, flag: int, key: str, message: Message) -> bytes:
        if message.user_properties:
            return encode_header(flag, key, message_attributes(message))
        cache_key = (flag, key, message.topic, message.qos, message.retain)
        header = self._headers.get(cache_key)
        if header is None:
            header = encode_header(flag, key, message_attributes(message))
            self.header_cache.put(cache_key, header)
        return header

    def routes(self, topic: str) -> list[Route]:
        return self.matcher.route(topic)

    def outputs(self, message: Message, routes: Iterable[Route]) -> list[Output]:
        out = []
        for route in routes:
            try:
                out.append(self._output(message, route))
            except Exception as exc:  # a message must never crash intake (it would come again)
                logger.exception("cannot encode a record of rule %s", route.rule.id)
                out.append(self._dead(message, route, deadletter.REASON_ENCODE_ERROR, repr(exc)))
        return out

    def _dead(
        self,
        message: Message,
        route: Route,
        reason: str,
        error: str,
    ) -> Output:
        attributes = {
            _valid_text(name): _valid_text(value)
            for name, value in message_attributes(message).items()
        }
        data = deadletter.letter(
            message.payload,
            reason=reason,
            rule_id=route.rule.id,
            attributes=attributes,
            stream=route.stream,
            error=_valid_text(error),
            max_bytes=self.max_record_bytes,
        )
        return Output(self.dead_letter_stream, "", data, route.rule.id, reason, route.stream)

    def _output(self, message: Message, route: Route) -> Output:
        if route.stream is None:
            return self._dead(
                message,
                route,
                deadletter.REASON_INVALID_STREAM_NAME,
                route.error or "invalid stream name",
            )
        if route.rule.payload == "json":
            try:
                struct = json_struct_bytes(message.payload)
            except (ValueError, OverflowError) as exc:  # UnicodeDecodeError is a ValueError
                return self._dead(message, route, deadletter.REASON_INVALID_JSON, str(exc))
            data = with_header(self._header(FLAG_JSON, route.key, message), struct)
        else:
            data = with_header(self._header(FLAG_RAW, route.key, message), message.payload)
        # Measured as the store measures it: framed in the batch payload of an append.
        size = framed_size(data)
        if size > self.max_record_bytes:
            return self._dead(
                message,
                route,
                deadletter.REASON_RECORD_TOO_LARGE,
                f"record is {size} bytes in an append, the limit is {self.max_record_bytes}",
            )
        return Output(route.stream, route.key, data, route.rule.id)
