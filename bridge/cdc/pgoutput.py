"""A decoder of PostgreSQL's pgoutput logical replication messages, protocol version 1.

Pure: bytes in, read-only message objects out, no I/O. The formats are PostgreSQL's "Logical
Replication Message Formats" (Begin, Commit, Origin, Relation, Type, Insert, Update, Delete,
Truncate, Message). `convert()` turns a column's text form into the JSON-ready value described
in bridge/cdc/_model.py, by type OID; the snapshot uses the same function so that a row read
by the initial load and the same row streamed look the same. A stream looks each column's
`converter()` up once per Relation message and applies it to every value of that column.

Insert, Update, Delete and their TupleData are the bulk of a stream: they are __slots__ classes
(cheaper to make than the frozen dataclasses the other messages are) and their tuples are read
in one pass with precompiled structs.

Text forms assume the session settings the reader sets on its connections: DateStyle=ISO,
TimeZone=UTC, bytea_output=hex, extra_float_digits=3.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import re
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Final

import orjson

__all__ = [
    "UNCHANGED",
    "Begin",
    "Column",
    "Commit",
    "Converter",
    "DecodeError",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "Relation",
    "Truncate",
    "TupleData",
    "TypeMessage",
    "Update",
    "convert",
    "converter",
    "decode",
    "pg_timestamp_to_ms",
]

PG_EPOCH_MS: Final = 946_684_800_000
"""2000-01-01T00:00:00Z in ms since the Unix epoch: PostgreSQL timestamps count from there."""


class DecodeError(ValueError):
    """A message that is not valid pgoutput (protocol version 1)."""


class _Unchanged:
    """The value of an unchanged TOASTed column ('u'): not sent."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()

# A column of a tuple: None (NULL), UNCHANGED, the text form (str) or the binary form (bytes).
TupleValue = str | bytes | _Unchanged | None


class _Slots:
    """The base of the messages a stream is mostly made of (TupleData, Insert, Update, Delete):
    plain __slots__ classes, cheaper to make than frozen dataclasses (treat them as read-only).
    Equal when of the same class with equal fields."""

    __slots__ = ()
    _FIELDS: ClassVar[tuple[str, ...]] = ()
    """The fields in constructor order."""

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _Slots)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.__class__, self._fields()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"{self.__class__.__name__}({fields})"


class TupleData(_Slots):
    __slots__ = ("plain", "values")
    _FIELDS = ("values", "plain")

    values: tuple[TupleValue, ...]
    plain: bool
    """Every value is text or NULL (no UNCHANGED, no binary): derived from `values` when not
    given."""

    def __init__(self, values: tuple[TupleValue, ...], plain: bool | None = None) -> None:
        self.values = values
        if plain is None:
            plain = all(value is None or isinstance(value, str) for value in values)
        self.plain = plain


@dataclasses.dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts_us: int
    """Microseconds since 2000-01-01 UTC."""
    xid: int


@dataclasses.dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    key: bool
    """Part of the replica identity (every column with REPLICA IDENTITY FULL): not the
    primary key."""


@dataclasses.dataclass(frozen=True, slots=True)
class Relation:
    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    """'d' default, 'n' nothing, 'f' full, 'i' index."""
    columns: tuple[Column, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class TypeMessage:
    type_oid: int
    namespace: str
    name: str


class Insert(_Slots):
    __slots__ = ("new", "relation_id")
    _FIELDS = ("relation_id", "new")

    relation_id: int
    new: TupleData

    def __init__(self, relation_id: int, new: TupleData) -> None:
        self.relation_id = relation_id
        self.new = new


class Update(_Slots):
    __slots__ = ("new", "old", "old_kind", "relation_id")
    _FIELDS = ("relation_id", "old", "old_kind", "new")

    relation_id: int
    old: TupleData | None
    """The old key ('K') or the whole old row ('O'), None when not sent."""
    old_kind: str | None
    """'K', 'O' or None."""
    new: TupleData

    def __init__(
        self, relation_id: int, old: TupleData | None, old_kind: str | None, new: TupleData
    ) -> None:
        self.relation_id = relation_id
        self.old = old
        self.old_kind = old_kind
        self.new = new


class Delete(_Slots):
    __slots__ = ("old", "old_kind", "relation_id")
    _FIELDS = ("relation_id", "old", "old_kind")

    relation_id: int
    old: TupleData
    old_kind: str
    """'K' (key columns, others NULL) or 'O' (the whole row)."""

    def __init__(self, relation_id: int, old: TupleData, old_kind: str) -> None:
        self.relation_id = relation_id
        self.old = old
        self.old_kind = old_kind


@dataclasses.dataclass(frozen=True, slots=True)
class Truncate:
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclasses.dataclass(frozen=True, slots=True)
class LogicalMessage:
    """`pg_logical_emit_message()` (sent only with the `messages` option)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeMessage
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
)


_INT16: Final = struct.Struct("!h")
_INT32: Final = struct.Struct("!i")
_UINT32: Final = struct.Struct("!I")
_INT64: Final = struct.Struct("!q")
_UINT64: Final = struct.Struct("!Q")
_CHANGE_HEAD: Final = struct.Struct("!Ic")
"""Insert, Update, Delete: the relation id and the first tuple's marker ('N', 'K', 'O')."""
_CHANGES: Final = frozenset(b"IUD")


class _Reader:
    __slots__ = ("data", "encoding", "pos")

    def __init__(self, data: bytes, encoding: str, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.encoding = encoding

    def _unpack(self, fmt: struct.Struct) -> int:
        try:
            (value,) = fmt.unpack_from(self.data, self.pos)
        except struct.error:
            raise DecodeError(
                f"message truncated at byte {self.pos} (needs {fmt.size} more)"
            ) from None
        self.pos += fmt.size
        result: int = value
        return result

    def _take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise DecodeError(f"message truncated at byte {self.pos} (needs {size} more)")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def int8(self) -> int:
        if self.pos >= len(self.data):
            raise DecodeError(f"message truncated at byte {self.pos} (needs 1 more)")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def int16(self) -> int:
        return self._unpack(_INT16)

    def int32(self) -> int:
        return self._unpack(_INT32)

    def uint32(self) -> int:
        return self._unpack(_UINT32)

    def int64(self) -> int:
        return self._unpack(_INT64)

    def uint64(self) -> int:
        return self._unpack(_UINT64)

    def byte(self) -> str:
        return chr(self.int8())

    def string(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise DecodeError(f"unterminated string at byte {self.pos}")
        text = self.data[self.pos : end].decode(self.encoding, errors="replace")
        self.pos = end + 1
        return text


_ASCII: Final = bytes(range(128))
_ASCII_SUPERSET: dict[str, bool] = {}
"""By codec name: decodes ASCII as ASCII (every PostgreSQL server encoding does)."""


def _ascii_superset(encoding: str) -> bool:
    try:
        superset = _ASCII.decode(encoding) == _ASCII.decode("ascii")
    except (LookupError, UnicodeDecodeError):
        superset = False
    _ASCII_SUPERSET[encoding] = superset
    return superset


def _tuple_data(data: bytes, pos: int, encoding: str) -> tuple[TupleData, int]:
    """The TupleData at `pos` and the position after it. The hot path of a stream: one pass,
    no per-column method calls; an all-ASCII message is decoded once and its values sliced."""
    size_at = _INT32.unpack_from
    text: str | None = None
    if data.isascii() and (_ASCII_SUPERSET.get(encoding) or _ascii_superset(encoding)):
        text = data.decode("ascii")
    end = len(data)
    try:
        (count,) = _INT16.unpack_from(data, pos)
        pos += 2
        values: list[TupleValue] = []
        append = values.append
        plain = True
        for _ in range(count):
            kind = data[pos]
            if kind == 0x74:  # 't': text
                (size,) = size_at(data, pos + 1)
                start = pos + 5
                pos = start + size
                if size < 0 or pos > end:
                    raise DecodeError(f"message truncated at byte {start} (needs {size} more)")
                append(
                    text[start:pos]
                    if text is not None
                    else data[start:pos].decode(encoding, "replace")
                )
            elif kind == 0x6E:  # 'n': NULL
                append(None)
                pos += 1
            elif kind == 0x75:  # 'u': unchanged TOASTed value
                append(UNCHANGED)
                plain = False
                pos += 1
            elif kind == 0x62:  # 'b': binary
                (size,) = size_at(data, pos + 1)
                start = pos + 5
                pos = start + size
                if size < 0 or pos > end:
                    raise DecodeError(f"message truncated at byte {start} (needs {size} more)")
                append(data[start:pos])
                plain = False
            else:
                raise DecodeError(f"unknown tuple column kind {chr(kind)!r}")
    except (IndexError, struct.error):
        raise DecodeError(f"tuple data truncated at byte {pos}") from None
    return TupleData(tuple(values), plain), pos


def _change(data: bytes, encoding: str) -> Insert | Update | Delete:
    """An Insert ('I'), Update ('U') or Delete ('D') message."""
    kind = data[0]
    try:
        relation_id, marker = _CHANGE_HEAD.unpack_from(data, 1)
    except struct.error:
        raise DecodeError("change message truncated") from None
    if kind == 0x49:  # 'I'
        if marker != b"N":
            raise DecodeError(f"insert: expected 'N', got {marker.decode('latin-1')!r}")
        new, _ = _tuple_data(data, 6, encoding)
        return Insert(relation_id, new)
    if kind == 0x55:  # 'U'
        pos = 6
        old: TupleData | None = None
        old_kind: str | None = None
        if marker in (b"K", b"O"):
            old_kind = marker.decode("ascii")
            old, pos = _tuple_data(data, pos, encoding)
            if pos >= len(data):
                raise DecodeError(f"message truncated at byte {pos} (needs 1 more)")
            marker = data[pos : pos + 1]
            pos += 1
        if marker != b"N":
            raise DecodeError(f"update: expected 'N', got {marker.decode('latin-1')!r}")
        new, _ = _tuple_data(data, pos, encoding)
        return Update(relation_id, old, old_kind, new)
    if marker not in (b"K", b"O"):
        raise DecodeError(f"delete: expected 'K' or 'O', got {marker.decode('latin-1')!r}")
    old_data, _ = _tuple_data(data, 6, encoding)
    return Delete(relation_id, old_data, marker.decode("ascii"))


def decode(data: bytes | bytearray | memoryview, encoding: str = "utf-8") -> Message:
    """One pgoutput message (protocol version 1). `encoding`: the database's, as a Python
    codec name. DecodeError for anything else."""
    if not data:
        raise DecodeError("empty message")
    data = bytes(data)  # no copy when it is bytes already
    if data[0] in _CHANGES:
        return _change(data, encoding)
    reader = _Reader(data, encoding, 1)
    kind = chr(data[0])
    if kind == "B":
        return Begin(reader.uint64(), reader.int64(), reader.uint32())
    if kind == "C":
        return Commit(reader.int8(), reader.uint64(), reader.uint64(), reader.int64())
    if kind == "O":
        return Origin(reader.uint64(), reader.string())
    if kind == "R":
        relation_id = reader.uint32()
        namespace = reader.string() or "pg_catalog"  # empty means pg_catalog
        name = reader.string()
        identity = reader.byte()
        columns = []
        for _ in range(reader.int16()):
            flags = reader.int8()
            col_name = reader.string()
            columns.append(Column(col_name, reader.uint32(), reader.int32(), bool(flags & 1)))
        return Relation(relation_id, namespace, name, identity, tuple(columns))
    if kind == "Y":
        oid = reader.uint32()
        namespace = reader.string() or "pg_catalog"
        return TypeMessage(oid, namespace, reader.string())
    if kind == "T":
        count = reader.uint32()
        options = reader.int8()
        ids = tuple(reader.uint32() for _ in range(count))
        return Truncate(ids, bool(options & 1), bool(options & 2))
    if kind == "M":
        flags = reader.int8()
        lsn = reader.uint64()
        prefix = reader.string()
        size = reader.uint32()
        content = reader._take(size)
        return LogicalMessage(bool(flags & 1), lsn, prefix, content)
    raise DecodeError(f"unknown pgoutput message type {kind!r}")


def pg_timestamp_to_ms(us: int) -> int:
    """A PostgreSQL timestamp (µs since 2000-01-01 UTC) in ms since the Unix epoch."""
    return PG_EPOCH_MS + us // 1000


# --- values -----------------------------------------------------------------------------------

BOOL: Final = 16
BYTEA: Final = 17
INT8: Final = 20
INT2: Final = 21
INT4: Final = 23
OID: Final = 26
JSON: Final = 114
FLOAT4: Final = 700
FLOAT8: Final = 701
MONEY: Final = 790
DATE: Final = 1082
TIME: Final = 1083
TIMESTAMP: Final = 1114
TIMESTAMPTZ: Final = 1184
NUMERIC: Final = 1700
JSONB: Final = 3802

INTEGERS: Final = frozenset({INT2, INT4, INT8, OID})
FLOATS: Final = frozenset({FLOAT4, FLOAT8})
KNOWN_TYPES: Final = frozenset(
    {BOOL, BYTEA, JSON, MONEY, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, NUMERIC, JSONB}
    | INTEGERS
    | FLOATS
)
"""OIDs `convert` treats specially (every other type is text)."""

_FLOAT_NAMES: Final = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}
_TIMESTAMPTZ: Final = re.compile(
    r"(\d{4,}-\d\d-\d\d) (\d\d):(\d\d):(\d\d)(\.\d+)?([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?"
)


def _timestamptz(text: str) -> str:
    match = _TIMESTAMPTZ.fullmatch(text)
    if match is None:  # infinity, -infinity, BC dates: the text as PostgreSQL sends it
        return text
    day, hh, mm, ss, fraction, sign, oh, om, osec = match.groups()
    fraction = fraction or ""
    offset = datetime.timedelta(hours=int(oh), minutes=int(om or 0), seconds=int(osec or 0))
    if not offset:
        return f"{day}T{hh}:{mm}:{ss}{fraction}Z"
    try:
        local = datetime.datetime.fromisoformat(f"{day}T{hh}:{mm}:{ss}")
        utc = local - offset if sign == "+" else local + offset
    except (ValueError, OverflowError):
        return text
    return f"{utc.isoformat()}{fraction}Z"


Converter = Callable[[str], Any]
"""Turns one column's text form (never NULL) into its JSON-ready value."""

_DIGIT_RUNS: Final = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_RUN: Final = b"0" * 19


def _bool(text: str) -> bool:
    return text in ("t", "true")


def _float(text: str) -> float | str:
    value = float(text)
    if value - value == 0.0:  # finite
        return value
    name = _FLOAT_NAMES.get(text)
    return name if name is not None else value


def _json(text: str) -> Any:
    """orjson where it gives what json.loads gives: not for integers of 19 digits or more
    (orjson makes those beyond 64 bits floats), nor for what it refuses and json.loads takes
    (NaN, Infinity, lone surrogates, numbers beyond a double's range)."""
    try:
        if text.encode().translate(_DIGIT_RUNS).find(_LONG_RUN) < 0:
            return orjson.loads(text)
    except (orjson.JSONDecodeError, UnicodeEncodeError):
        pass
    return json.loads(text)


def _bytea(text: str) -> str:
    if text.startswith("\\x"):
        try:
            return base64.b64encode(binascii.unhexlify(text[2:])).decode("ascii")
        except (binascii.Error, ValueError):
            return text
    return text


def _timestamp(text: str) -> str:
    if len(text) > 10 and text[10] == " " and not text.endswith(" BC"):
        return f"{text[:10]}T{text[11:]}"
    return text


_CONVERTERS: Final[dict[int, Converter]] = {
    INT2: int,
    INT4: int,
    INT8: int,
    OID: int,
    BOOL: _bool,
    FLOAT4: _float,
    FLOAT8: _float,
    JSON: _json,
    JSONB: _json,
    BYTEA: _bytea,
    TIMESTAMP: _timestamp,
    TIMESTAMPTZ: _timestamptz,
}


def converter(type_oid: int) -> Converter:
    """The function `convert` applies to a non-NULL text form of this type (the base type for
    domains): look it up once per column, then call it per value."""
    return _CONVERTERS.get(type_oid, str)  # str(text) is text: numeric, money, date, ...


def convert(type_oid: int, text: str | None) -> Any:
    """The JSON-ready value of a column's text form (bridge/cdc/_model.py), by type OID (the
    base type for domains). None for NULL."""
    if text is None:
        return None
    return _CONVERTERS.get(type_oid, str)(text)
