"""Request and response bodies of the HTTP API (the rule itself is `rules.Rule`).

Request models are strict and refuse unknown fields, like `Rule`: a typo is a 422 naming the
field, not a silently ignored setting. Every string that ends up in a record (topic, user
properties, text payload) must be encodable as UTF-8, because that is what MQTT and protobuf
carry; a lone surrogate is refused here rather than failing deep inside the encoder.
"""

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

from google.protobuf.message import DecodeError
from google.protobuf.struct_pb2 import ListValue, Struct
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from bridge.api.protocol import DryRunOutput
from bridge.hstream.records import EncodedRecord, ReceivedRecord
from rules import Rule, topic_name_problem

MAX_DRY_RUN_PAYLOAD: Final = 1 << 20
"""Bytes a dry-run payload may have (text as UTF-8, or decoded base64)."""
MAX_USER_PROPERTIES: Final = 64
MAX_USER_PROPERTY_LENGTH: Final = 65535  # an MQTT UTF-8 string

RULE_EXAMPLE: Final[dict[str, Any]] = {
    "id": "temps",
    "topic": "sensors/{site}/+/temp",
    "stream": "temps_${site}",
    "key": "${site}",
    "payload": "raw",
    "qos": 1,
    "enabled": True,
}
DRY_RUN_EXAMPLE: Final[dict[str, Any]] = {
    "topic": "sensors/lab1/dev7/temp",
    "payload": "21.5",
    "qos": 1,
    "retain": False,
    "user_properties": {"unit": "C"},
}


class ErrorMessage(BaseModel):
    """The body of 401, 404, 409, 413 and 503 answers."""

    detail: str = Field(examples=["rule 'temps' already exists"])


class HealthStatus(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Whether the bridge can do its job, and which dependency is not ready when it cannot."""

    ready: bool
    mqtt: bool = Field(description="the MQTT session is connected")
    hstream: bool = Field(description="HStreamDB answered recently")
    dead_letters: bool = Field(
        True,
        description="the dead-letter stream takes dead letters (false: one was refused for a "
        "reason other than an outage; its message stays unacknowledged while it is retried)",
    )
    pipeline: bool = Field(
        True, description="no pipeline task has failed (false: the process is stopping)"
    )
    buffer: dict[str, Any] | None = Field(
        None,
        description="with --buffer disk: whether it accepts, its backlog (records, bytes, "
        "oldest record's age) and disk use; HStreamDB being down does not make the bridge "
        "unready then, a full buffer does",
    )
    not_ready: list[Literal["mqtt", "hstream", "dead_letters", "pipeline", "buffer"]] = Field(
        description="what is not ready", examples=[["mqtt"]]
    )
    error: str | None = Field(None, description="why dead letters or the pipeline are not ready")


def _utf8_problem(value: str) -> str | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (it contains a lone surrogate)"
    return None


def _check_utf8(value: str, what: str) -> str:
    problem = _utf8_problem(value)
    if problem is not None:
        raise PydanticCustomError("utf8", f"{what} {problem}")
    return value


PropertyText = Annotated[str, StringConstraints(max_length=MAX_USER_PROPERTY_LENGTH)]


class DryRunRequest(BaseModel):
    """A message to route as if it had arrived over MQTT. Nothing is written anywhere."""

    model_config = ConfigDict(
        strict=True, extra="forbid", json_schema_extra={"examples": [DRY_RUN_EXAMPLE]}
    )

    topic: str = Field(
        description="the MQTT topic name the message was published to (no wildcards)",
        examples=["sensors/lab1/dev7/temp"],
    )
    payload: str | None = Field(
        None,
        description=(
            f"the payload as text (sent as its UTF-8 bytes), at most {MAX_DRY_RUN_PAYLOAD} bytes;"
            " omit both payload and payload_base64 for an empty payload"
        ),
        examples=["21.5"],
    )
    payload_base64: str | None = Field(
        None,
        description="the payload as base64, for binary payloads; instead of payload, not with it",
        examples=["MjEuNQ=="],
    )
    qos: int = Field(1, ge=0, le=2, description="the QoS the message was published with")
    retain: bool = Field(False, description="the message's retain flag")
    user_properties: dict[PropertyText, PropertyText] = Field(
        default_factory=dict,
        max_length=MAX_USER_PROPERTIES,
        description="MQTT 5 user properties (name -> value)",
        examples=[{"unit": "C"}],
    )

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        problem = topic_name_problem(value)
        if problem is not None:
            raise PydanticCustomError("topic_name", problem)
        return value

    @field_validator("payload")
    @classmethod
    def _check_payload(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _check_utf8(value, "payload")
        size = len(value.encode("utf-8"))
        if size > MAX_DRY_RUN_PAYLOAD:
            raise PydanticCustomError(
                "payload_size",
                f"payload is {size} bytes of UTF-8, more than the limit of {MAX_DRY_RUN_PAYLOAD}",
            )
        return value

    @field_validator("payload_base64")
    @classmethod
    def _check_payload_base64(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("payload") is not None:
            raise PydanticCustomError(
                "payload_conflict", "give payload or payload_base64, not both"
            )
        data = _b64decode(value)
        if len(data) > MAX_DRY_RUN_PAYLOAD:
            raise PydanticCustomError(
                "payload_size",
                f"payload is {len(data)} bytes, more than the limit of {MAX_DRY_RUN_PAYLOAD}",
            )
        return value

    @field_validator("user_properties")
    @classmethod
    def _check_properties(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _check_utf8(name, "user property name")
            _check_utf8(text, f"user property {name!r}")
        return value

    def payload_bytes(self) -> bytes:
        if self.payload_base64 is not None:
            return _b64decode(self.payload_base64)
        return (self.payload or "").encode("utf-8")


def _struct_object(payload: bytes) -> dict[str, Any] | None:
    """A JSON record's Struct payload as plain Python values.

    None when protobuf cannot parse it back (nesting deeper than its parse limit of 100); the
    bytes are shown then. Not `json_format.MessageToDict`: it refuses NaN and Infinity, which
    a Struct holds when the payload had them (Python's JSON parser accepts them).
    """
    struct = Struct()
    try:
        struct.ParseFromString(payload)
    except (DecodeError, RecursionError):
        return None
    plain: dict[str, Any] = _plain(struct)
    return plain


def _plain(value: Any) -> Any:
    if isinstance(value, Struct):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, ListValue):
        return [_plain(item) for item in value]
    return value  # None, bool, float or str


def _strict_json(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise PydanticCustomError(
            "base64", "payload_base64 is not valid base64: {error}", {"error": str(exc)}
        ) from None


class DryRunRecord(BaseModel):
    """The HStreamDB record as it would be appended."""

    flag: Literal["RAW", "JSON"]
    key: str = Field(description="the partition key ('' for none)")
    attributes: dict[str, str] = Field(
        description="mqtt.topic, mqtt.qos, mqtt.retain, mqtt.user.<name>; for a dead letter also"
        " reason, rule, time, stream and error"
    )
    payload: str | dict[str, Any] = Field(
        description="RAW: the bytes as UTF-8 text, or base64 when they are not UTF-8;"
        " JSON: the object (as text when it holds NaN or Infinity, which JSON cannot carry)"
    )
    payload_encoding: Literal["utf-8", "base64", "json"]

    @classmethod
    def decode(cls, data: bytes) -> "DryRunRecord":
        """Read back an encoded HStreamRecord (what `bridge.router` produced)."""
        record = EncodedRecord.parse(data)
        raw = record.payload
        if record.is_json:
            value = _struct_object(raw)
            if value is not None and _strict_json(value):
                return cls(
                    flag="JSON",
                    key=record.key,
                    attributes=record.attributes,
                    payload=value,
                    payload_encoding="json",
                )
            if value is not None:
                # NaN or Infinity (Python's JSON parser accepts them): JSON output cannot carry
                # them as numbers, so the object is shown as Python's JSON text.
                raw = json.dumps(value, ensure_ascii=False).encode("utf-8")
        encoding: Literal["utf-8", "base64"] = "utf-8"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        return cls(
            flag="JSON" if record.is_json else "RAW",
            key=record.key,
            attributes=record.attributes,
            payload=text,
            payload_encoding=encoding,
        )


class DryRunRoute(BaseModel):
    """What one matching rule would do with the message."""

    rule_id: str
    stream: str = Field(
        description="where the record would be appended: the rule's rendered stream, or the"
        " dead-letter stream when `reason` is set"
    )
    key: str
    dead_letter: bool
    reason: str | None = Field(
        description="why the record would go to the dead-letter stream (invalid_json,"
        " invalid_stream_name, record_too_large), or null",
        examples=[None, "invalid_json"],
    )
    target: str | None = Field(
        description="for a dead letter, the stream the record was meant for, when it rendered"
    )
    record: DryRunRecord


class DryRunResult(BaseModel):
    matched: list[str] = Field(description="ids of the rules that match the topic, in rule order")
    routes: list[DryRunRoute]

    @classmethod
    def from_outputs(cls, outputs: Sequence[DryRunOutput]) -> "DryRunResult":
        return cls(
            matched=[out.rule_id for out in outputs],
            routes=[
                DryRunRoute(
                    rule_id=out.rule_id,
                    stream=out.stream,
                    key=out.key,
                    dead_letter=out.reason is not None,
                    reason=out.reason,
                    target=out.target,
                    record=DryRunRecord.decode(out.data),
                )
                for out in outputs
            ],
        )


def rule_replacement_schema() -> dict[str, Any]:
    """The PUT body: a Rule whose id may be left out (it is the id in the path)."""
    schema = Rule.model_json_schema()
    schema["title"] = "RuleReplacement"
    schema["description"] = "A rule; `id` may be omitted, and must equal the path's id if given"
    schema["required"] = [name for name in schema.get("required", []) if name != "id"]
    return schema


# --- the console's reads: /stats and /dead-letters ----------------------------------------------

PREVIEW_BYTES: Final = 256
"""Bytes of a dead letter's payload shown in its preview."""


class RuleStats(BaseModel):
    """One rule's counts since the bridge started, and their rates over `interval_seconds`."""

    id: str
    enabled: bool
    matched_total: int = Field(description="messages the rule matched (each makes one record)")
    stored_total: int = Field(
        description="records HStreamDB confirmed stored; the counts of streams forgotten after"
        " --stream-idle-timeout are dropped, so this can go down"
    )
    dead_lettered_total: int = Field(description="records sent to the dead-letter stream")
    matched_per_second: float | None = Field(description="null until there is an interval")
    stored_per_second: float | None
    dead_lettered_per_second: float | None


class BufferStats(BaseModel):
    """The memory budget (--buffer-bytes) and what holds it now."""

    queuing_records: int = Field(description="records buffered or in flight, not yet stored")
    queuing_bytes: int = Field(description="memory they hold, as the budget counts it")
    budget_bytes: int
    intake_paused: bool = Field(description="the budget is spent and MQTT intake is paused")


class Stats(BaseModel):
    """Counts since start and rates computed by the bridge.

    Rates are the change of the totals since an earlier call of this endpoint, about
    `RATE_WINDOW` seconds ago (or the last call, when calls come further apart), divided by
    `interval_seconds`; null on the first call. Polling every few seconds gives rates over the
    last ten seconds or so.
    """

    interval_seconds: float | None = Field(description="what the rates are measured over")
    received_total: int = Field(description="MQTT messages received")
    received_per_second: float | None
    unmatched_total: int = Field(description="messages no enabled rule matched")
    dropped_total: int = Field(description="QoS 0 records dropped on purpose")
    rules: list[RuleStats] = Field(description="every rule, in rule order")
    buffer: BufferStats


class DeadLetter(BaseModel):
    """One record of the dead-letter stream, with a preview of its payload."""

    id: str = Field(description="the record id, shardId-batchId-batchIndex")
    time: str | None = Field(description="when it was dead-lettered (ISO 8601, UTC)")
    publish_time: float = Field(description="when HStreamDB stored it, seconds since the epoch")
    rule: str | None
    topic: str | None = Field(description="the MQTT topic of the original message")
    reason: str | None = Field(examples=["invalid_json"])
    error: str | None = Field(description="details of the reason, when there are any")
    stream: str | None = Field(description="the stream the record was meant for, if it rendered")
    payload_preview: str = Field(
        description=f"the first {PREVIEW_BYTES} bytes of the payload, as text or base64"
    )
    preview_encoding: Literal["utf-8", "base64"]
    preview_truncated: bool = Field(description="the payload is longer than the preview")
    payload_bytes: int = Field(description="bytes of payload the dead letter holds")
    original_bytes: int | None = Field(description="bytes of the original payload")
    truncated: bool = Field(description="the dead letter holds only the start of the original")
    sha256: str | None = Field(description="SHA-256 of the whole original payload")

    @classmethod
    def from_record(cls, record: ReceivedRecord) -> "DeadLetter":
        attributes = record.attributes
        payload = record.payload
        data = (
            payload
            if isinstance(payload, bytes)
            else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        )
        text, encoding = _preview(data[:PREVIEW_BYTES], cut=len(data) > PREVIEW_BYTES)
        original = attributes.get("original_size", "")
        return cls(
            id=str(record.id),
            time=attributes.get("time"),
            publish_time=record.publish_time,
            rule=attributes.get("rule"),
            topic=attributes.get("mqtt.topic"),
            reason=attributes.get("reason"),
            error=attributes.get("error"),
            stream=attributes.get("stream"),
            payload_preview=text,
            preview_encoding=encoding,
            preview_truncated=len(data) > PREVIEW_BYTES,
            payload_bytes=len(data),
            original_bytes=int(original) if original.isascii() and original.isdigit() else None,
            truncated=attributes.get("truncated") == "true",
            sha256=attributes.get("sha256"),
        )


def _preview(data: bytes, *, cut: bool) -> tuple[str, Literal["utf-8", "base64"]]:
    """UTF-8 text when the bytes are, else base64. When the preview was cut from a longer
    payload, a character it split at the end (up to 3 of its bytes) is left out."""
    for drop in range(4 if cut else 1):
        try:
            return data[: len(data) - drop].decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            continue
    return base64.b64encode(data).decode("ascii"), "base64"


class DeadLetters(BaseModel):
    stream: str = Field(description="the dead-letter stream (--dead-letter-stream)")
    limit: int
    records: list[DeadLetter] = Field(description="the latest records, newest first")
