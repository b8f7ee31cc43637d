"""Record encoding: HStreamRecord, BatchHStreamRecords and BatchedRecord, as HStreamDB stores them.

A RAW record keeps its payload bytes; a JSON record's payload is a serialized
`google.protobuf.Struct` (not JSON text), as every official client writes it. A batch payload is a
serialized `BatchHStreamRecords`, compressed as a whole with gzip or zstd when asked.

Records are encoded once (`encode_record`) and framed into a batch later (`frame_records`), so a
caller can count exact bytes before it decides where a batch ends.
"""

import enum
import gzip
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import zstandard
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from bridge.hstream._api import FLAG_JSON as FLAG_JSON  # re-exported: the record flags
from bridge.hstream._api import FLAG_RAW as FLAG_RAW
from bridge.hstream._api import pb
from bridge.hstream._varint import VARINTS as _VARINTS
from bridge.hstream._varint import varint as varint  # re-exported: bridge/hstream/_wire.py
from bridge.hstream.structenc import encode_struct


class Compression(enum.IntEnum):
    NONE = 0
    GZIP = 1
    ZSTD = 2

    @classmethod
    def parse(cls, name: str) -> "Compression":
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown compression {name!r}: use none, gzip or zstd") from None


@dataclass(frozen=True, slots=True)
class Record:
    """A record to append. `bytes` payloads are RAW records, mappings are JSON records."""

    payload: bytes | Mapping[str, Any]
    key: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordId:
    shard_id: int
    batch_id: int
    batch_index: int

    def __str__(self) -> str:
        return f"{self.shard_id}-{self.batch_id}-{self.batch_index}"

    @classmethod
    def parse(cls, text: str) -> "RecordId":
        try:
            shard, batch, index = (int(part) for part in text.split("-"))
        except ValueError:
            raise ValueError(f"record id {text!r} is not shardId-batchId-batchIndex") from None
        return cls(shard, batch, index)


@dataclass(frozen=True, slots=True)
class ReceivedRecord:
    """A stored record as read back: RAW payloads are bytes, JSON payloads are dicts."""

    id: RecordId
    payload: bytes | dict[str, Any]
    key: str
    attributes: dict[str, str]
    publish_time: float

    @property
    def is_json(self) -> bool:
        return isinstance(self.payload, dict)


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """The parts of one serialized HStreamRecord (payload as stored: a JSON one is a Struct)."""

    flag: int
    key: str
    attributes: dict[str, str]
    payload: bytes

    @property
    def is_json(self) -> bool:
        return self.flag == FLAG_JSON

    @classmethod
    def parse(cls, data: bytes) -> "EncodedRecord":
        record = pb.HStreamRecord()
        record.ParseFromString(data)
        header = record.header
        return cls(header.flag, header.key, dict(header.attributes), record.payload)


def struct_bytes(value: Mapping[str, Any]) -> bytes:
    """A JSON object as the serialized protobuf Struct HStreamDB keeps for JSON records."""
    message = Struct()
    message.update(value)
    data: bytes = message.SerializeToString()
    return data


def encode_raw(payload: bytes, key: str = "", attributes: Mapping[str, str] | None = None) -> bytes:
    """A serialized HStreamRecord with the RAW flag."""
    header = pb.HStreamRecordHeader(flag=FLAG_RAW, key=key, attributes=attributes)
    data: bytes = pb.HStreamRecord(header=header, payload=payload).SerializeToString()
    return data


def encode_json(
    struct_payload: bytes, key: str = "", attributes: Mapping[str, str] | None = None
) -> bytes:
    """A serialized HStreamRecord with the JSON flag; the payload is already a serialized Struct."""
    header = pb.HStreamRecordHeader(flag=FLAG_JSON, key=key, attributes=attributes)
    data: bytes = pb.HStreamRecord(header=header, payload=struct_payload).SerializeToString()
    return data


def encode_header(flag: int, key: str = "", attributes: Mapping[str, str] | None = None) -> bytes:
    """A serialized HStreamRecordHeader, to reuse for many records with `with_header`."""
    data: bytes = pb.HStreamRecordHeader(
        flag=flag, key=key, attributes=attributes
    ).SerializeToString()
    return data


def with_header(header: bytes, payload: bytes) -> bytes:
    """A serialized HStreamRecord from an encoded header and a payload (as protobuf writes it)."""
    h, p = len(header), len(payload)
    varints = _VARINTS
    if not p:
        return b"\x0a" + (varints[h] if h < 16384 else varint(h)) + header
    return b"".join(
        (
            b"\x0a",
            varints[h] if h < 16384 else varint(h),
            header,
            b"\x12",
            varints[p] if p < 16384 else varint(p),
            payload,
        )
    )


def encode_record(record: Record) -> bytes:
    if isinstance(record.payload, bytes | bytearray | memoryview):
        return encode_raw(bytes(record.payload), record.key, record.attributes)
    return encode_json(struct_bytes(record.payload), record.key, record.attributes)


def _length_prefix(length: int) -> bytes:
    """Field 1 (`records`) of a BatchHStreamRecords, up to its payload."""
    return b"\x0a" + varint(length)


_PREFIXES = [b"\x0a" + v for v in _VARINTS]


def framed_size(encoded_record: bytes) -> int:
    """Bytes one encoded record takes inside a BatchHStreamRecords."""
    n = len(encoded_record)
    return n + (len(_PREFIXES[n]) if n < len(_PREFIXES) else len(_length_prefix(n)))


def frame_records(encoded: Sequence[bytes]) -> bytes:
    """Serialize a BatchHStreamRecords from records encoded by `encode_*` (no re-encoding)."""
    prefixes = _PREFIXES
    limit = len(prefixes)
    parts: list[bytes] = []
    append = parts.append
    for data in encoded:
        n = len(data)
        append(prefixes[n] if n < limit else _length_prefix(n))
        append(data)
    return b"".join(parts)


_ZSTD_COMPRESSOR = zstandard.ZstdCompressor(level=3)
_ZSTD_DECOMPRESSOR = zstandard.ZstdDecompressor()


def compress(data: bytes, compression: Compression) -> bytes:
    if compression is Compression.NONE:
        return data
    if compression is Compression.GZIP:
        return gzip.compress(data, compresslevel=1)
    compressed: bytes = _ZSTD_COMPRESSOR.compress(data)
    return compressed


def decompress(data: bytes, compression: int) -> bytes:
    if compression == Compression.NONE:
        return data
    if compression == Compression.GZIP:
        return gzip.decompress(data)
    if compression == Compression.ZSTD:
        # Frames written by streaming compressors may omit the content size.
        return _ZSTD_DECOMPRESSOR.decompressobj().decompress(data)
    raise ValueError(f"unknown compression type {compression}")


def batched_record(encoded: Sequence[bytes], compression: Compression = Compression.NONE) -> Any:
    """A `BatchedRecord` message holding already encoded records."""
    payload = compress(frame_records(encoded), compression)
    return pb.BatchedRecord(
        compressionType=int(compression), batchSize=len(encoded), payload=payload
    )


def decode_payload(flag: int, payload: bytes) -> bytes | dict[str, Any]:
    if flag == FLAG_JSON:
        message = Struct()
        message.ParseFromString(payload)
        value: dict[str, Any] = json_format.MessageToDict(message)
        return value
    return payload


def decode_records(batch: Any) -> list[Any]:
    """The `HStreamRecord` messages inside a `BatchedRecord`."""
    records = pb.BatchHStreamRecords()
    records.ParseFromString(decompress(batch.payload, batch.compressionType))
    return list(records.records)


def decode_received(record_ids: Sequence[Any], batch: Any) -> list[ReceivedRecord]:
    """Typed records from a `ReceivedRecord` message's ids and batch."""
    publish_time = batch.publishTime.seconds + batch.publishTime.nanos / 1e9
    out: list[ReceivedRecord] = []
    for rid, record in zip(record_ids, decode_records(batch), strict=True):
        header = record.header
        out.append(
            ReceivedRecord(
                id=RecordId(rid.shardId, rid.batchId, rid.batchIndex),
                payload=decode_payload(header.flag, record.payload),
                key=header.key,
                attributes=dict(header.attributes),
                publish_time=publish_time,
            )
        )
    return out


MAX_JSON_DEPTH = 100
"""protobuf refuses to parse a Struct nested deeper than this (its recursion limit)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON and cannot be stored in a JSON record")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is beyond a double and cannot be stored")
    return value


def _depth(value: Any) -> int:
    depth = 0
    level = [value]
    while level:
        depth += 1
        next_level: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                next_level.extend(item.values())
            elif isinstance(item, list):
                next_level.extend(item)
        level = next_level
    return depth - 1


PROTOBUF_DEPTH_LIMIT = 101
"""Message levels protobuf's Python parser (the official client's) reads back: measured, a Struct
of 33 nested objects (3 levels each: Struct, map entry, Value) or of 50 nested lists in one field
(2 each: ListValue, Value) parses, one more does not."""


def _message_depth(value: Any) -> int:
    """How deep the messages of the Struct that holds JSON object `value` nest."""
    deepest = 1
    stack: list[tuple[Any, int]] = [(value, 1)]  # a Struct or list and its message's level
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):  # Struct -> map entry -> Value -> (Struct or ListValue)
            children, value_level = item.values(), depth + 2
        else:  # ListValue -> Value -> (Struct or ListValue)
            children, value_level = item, depth + 1
        for child in children:
            if isinstance(child, dict | list):
                deepest = max(deepest, value_level + 1)
                stack.append((child, value_level + 1))
            else:
                deepest = max(deepest, value_level)
    return deepest


def _check_message_depth(payload: bytes, value: Any) -> None:
    """ValueError when protobuf could not read back the Struct of `value` (cheap when shallow)."""
    if payload.count(b"{") + payload.count(b"[") * 2 // 3 > 32 and (
        _message_depth(value) > PROTOBUF_DEPTH_LIMIT
    ):
        raise ValueError(
            "JSON payload is nested too deeply for a protobuf Struct that readers can parse "
            f"(more than {PROTOBUF_DEPTH_LIMIT} message levels, e.g. 33 nested objects)"
        )


def json_object(payload: bytes) -> dict[str, Any]:
    """Parse a JSON object payload that a protobuf Struct can hold; ValueError for anything else.

    Refused: invalid JSON, anything but an object, NaN and Infinity, numbers beyond a double,
    and nesting deeper than protobuf will parse back.
    """
    try:
        value = json.loads(payload, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON payload is nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError(f"JSON payload is a {type(value).__name__}, not an object")  # noqa: TRY004
    if payload.count(b"{") + payload.count(b"[") > MAX_JSON_DEPTH and (
        _depth(value) > MAX_JSON_DEPTH
    ):
        raise ValueError(f"JSON payload is nested deeper than {MAX_JSON_DEPTH} levels")
    _check_message_depth(payload, value)
    return value


def json_struct_bytes(payload: bytes) -> bytes:
    """A JSON object payload as the serialized Struct of a JSON record, at close to RAW's cost.

    What `struct_bytes(json_object(payload))` stores, ~10x cheaper: orjson parses and
    `structenc.encode_struct` writes the Struct (protobuf's deterministic bytes: map entries in a
    fixed order). Refused alike, with ValueError (OverflowError for an integer beyond a double):
    whatever orjson refuses goes through `json_object`, so exactly what the standard library
    accepts is accepted (a UTF-8 BOM, UTF-16 and UTF-32 text included).
    """
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        value = json_object(payload)
    if type(value) is not dict:
        raise ValueError(f"JSON payload is a {type(value).__name__}, not an object")
    _check_message_depth(payload, value)
    return encode_struct(value, MAX_JSON_DEPTH)
