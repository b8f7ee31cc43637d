"""Dead letters: records that can never be stored, parked as RAW records with the reason.

A dead letter keeps the original payload bytes and says in its attributes why it is here
(`reason`, and `error` for details), where it came from (`mqtt.topic` and the other attributes of
the record it replaces, `rule`) and when (`time`, ISO 8601 UTC), and which stream it was meant
for (`stream`, when one was rendered).
"""

import json
from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from bridge.hstream.records import EncodedRecord, encode_raw

REASON_INVALID_JSON = "invalid_json"
REASON_INVALID_STREAM_NAME = "invalid_stream_name"
REASON_RECORD_TOO_LARGE = "record_too_large"
REASON_STREAM_NOT_FOUND = "stream_not_found"
REASON_REJECTED = "rejected_by_hstreamdb"
REASON_ENCODE_ERROR = "encode_error"


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
) -> bytes:
    """An encoded dead-letter record for an original payload and its record attributes."""
    attrs = dict(attributes)
    attrs["reason"] = reason
    attrs["rule"] = rule_id
    attrs["time"] = _now()
    if stream is not None:
        attrs["stream"] = stream
    if error:
        attrs["error"] = error[:1000]
    return encode_raw(payload, "", attrs)


def letter_from_record(
    encoded: bytes, *, reason: str, rule_id: str, stream: str, error: str | None = None
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
    )
