"""Dead letters: records that can never be stored, parked as RAW records with the reason.

A dead letter keeps the original payload bytes and says in its attributes why it is here
(`reason`, and `error` for details), where it came from (`mqtt.topic` and the other attributes of
the record it replaces, `rule`) and when (`time`, ISO 8601 UTC), and which stream it was meant
for (`stream`, when one was rendered).

A dead letter always fits: the store refuses a batch payload over its record limit (HStreamDB's
max-record-size, 1 MiB by default), and a letter that is refused cannot be parked anywhere. So a
letter is cut to `max_bytes` measured as it is framed in an append: the payload keeps as many
leading bytes as fit, and the attributes say so (`truncated`), with the size (`original_size`) and
SHA-256 (`sha256`) of the whole original payload, so the original can be recognised.
"""

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from bridge.hstream.records import EncodedRecord, encode_raw, framed_size

REASON_INVALID_JSON = "invalid_json"
REASON_INVALID_STREAM_NAME = "invalid_stream_name"
REASON_RECORD_TOO_LARGE = "record_too_large"
REASON_STREAM_NOT_FOUND = "stream_not_found"
REASON_REJECTED = "rejected_by_hstreamdb"
REASON_ENCODE_ERROR = "encode_error"
REASON_STREAM_LIMIT = "stream_limit"
REASON_APPEND_FAILED = "append_failed"

ATTR_ORIGINAL_SIZE = "original_size"
ATTR_SHA256 = "sha256"
ATTR_TRUNCATED = "truncated"

ATTRIBUTE_VALUE_LIMIT = 1024
"""Characters an attribute value keeps when the attributes alone would not fit a letter."""

DEFAULT_MAX_BYTES = 1 << 20


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def letter(
    payload: bytes,
    *,
    reason: str,
    rule_id: str,
    attributes: Mapping[str, str],
    stream: str | None = None,
    error: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """An encoded dead-letter record for an original payload and its record attributes, at most
    `max_bytes` as framed in an append (see the module docstring)."""
    attrs = dict(attributes)
    attrs["reason"] = reason
    attrs["rule"] = rule_id
    attrs["time"] = _now()
    if stream is not None:
        attrs["stream"] = stream
    if error:
        attrs["error"] = error[:1000]
    attrs[ATTR_ORIGINAL_SIZE] = str(len(payload))
    attrs[ATTR_SHA256] = hashlib.sha256(payload).hexdigest()
    attrs[ATTR_TRUNCATED] = "false"
    data = encode_raw(payload, "", attrs)
    if framed_size(data) <= max_bytes:
        return data
    return _cut(payload, attrs, max_bytes)


def _cut(payload: bytes, attrs: dict[str, str], max_bytes: int) -> bytes:
    """The letter with the leading bytes of `payload` that fit in `max_bytes`."""
    attrs[ATTR_TRUNCATED] = "true"
    empty = framed_size(encode_raw(b"", "", attrs))
    if empty > max_bytes // 2:
        # Attributes alone (a huge topic or user properties) would crowd out the payload.
        attrs = {name: value[:ATTRIBUTE_VALUE_LIMIT] for name, value in attrs.items()}
        empty = framed_size(encode_raw(b"", "", attrs))
    # The payload's length prefix grows by at most 4 bytes (a varint of a length < 2**35).
    keep = max(0, min(len(payload), max_bytes - empty - 5))
    data = encode_raw(payload[:keep], "", attrs)
    while framed_size(data) > max_bytes and keep > 0:  # pragma: no cover - the margin holds
        keep = max(0, keep - 64)
        data = encode_raw(payload[:keep], "", attrs)
    return data


def shrink(encoded_letter: bytes) -> bytes | None:
    """The same letter with half its payload (for a store whose limit is below ours), or None
    when it has no payload left to cut."""
    record = EncodedRecord.parse(encoded_letter)
    if not record.payload:
        return None
    attrs = dict(record.attributes)
    attrs[ATTR_TRUNCATED] = "true"
    return encode_raw(record.payload[: len(record.payload) // 2], "", attrs)


def letter_from_record(
    encoded: bytes,
    *,
    reason: str,
    rule_id: str,
    stream: str,
    error: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """A dead letter for a record that was encoded for `stream` and refused there.

    RAW payloads keep their bytes; a JSON record's Struct is turned back into JSON text.
    """
    record = EncodedRecord.parse(encoded)
    payload = record.payload
    if record.is_json:
        struct = Struct()
        struct.ParseFromString(payload)
        payload = json.dumps(json_format.MessageToDict(struct), separators=(",", ":")).encode()
    return letter(
        payload,
        reason=reason,
        rule_id=rule_id,
        attributes=record.attributes,
        stream=stream,
        error=error,
        max_bytes=max_bytes,
    )
