"""A decoder of PostgreSQL's pgoutput logical replication messages, protocol version 1.

Pure: bytes in, frozen dataclasses out, no I/O. The formats are PostgreSQL's "Logical
Replication Message Formats" (Begin, Commit, Origin, Relation, Type, Insert, Update, Delete,
Truncate, Message). `convert()` turns a column's text form into the JSON-ready value described
in bridge/cdc/_model.py, by type OID; the snapshot uses the same function so that a row read
by the initial load and the same row streamed look the same.

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
from typing import Any, Final

__all__ = [
    "UNCHANGED",
    "Begin",
    "Column",
    "Commit",
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


@dataclasses.dataclass(frozen=True, slots=True)
class TupleData:
    values: tuple[TupleValue, ...]


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


@dataclasses.dataclass(frozen=True, slots=True)
class Insert:
    relation_id: int
    new: TupleData


@dataclasses.dataclass(frozen=True, slots=True)
class Update:
    relation_id: int
    old: TupleData | None
    """The old key ('K') or the whole old row ('O'), None when not sent."""
    old_kind: str | None
    """'K', 'O' or None."""
    new: TupleData


@dataclasses.dataclass(frozen=True, slots=True)
class Delete:
    relation_id: int
    old: TupleData
    old_kind: str
    """'K' (key columns, others NULL) or 'O' (the whole row)."""


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


class _Reader:
    __slots__ = ("data", "encoding", "pos")

    def __init__(self, data: bytes, encoding: str) -> None:
        self.data = data
        self.pos = 0
        self.encoding = encoding

    def _take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise DecodeError(f"message truncated at byte {self.pos} (needs {size} more)")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def int8(self) -> int:
        return self._take(1)[0]

    def int16(self) -> int:
        value: int = struct.unpack("!h", self._take(2))[0]
        return value

    def int32(self) -> int:
        value: int = struct.unpack("!i", self._take(4))[0]
        return value

    def uint32(self) -> int:
        value: int = struct.unpack("!I", self._take(4))[0]
        return value

    def int64(self) -> int:
        value: int = struct.unpack("!q", self._take(8))[0]
        return value

    def uint64(self) -> int:
        value: int = struct.unpack("!Q", self._take(8))[0]
        return value

    def byte(self) -> str:
        return chr(self.int8())

    def string(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise DecodeError(f"unterminated string at byte {self.pos}")
        text = self.data[self.pos : end].decode(self.encoding, errors="replace")
        self.pos = end + 1
        return text

    def tuple_data(self) -> TupleData:
        count = self.int16()
        values: list[TupleValue] = []
        for _ in range(count):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind == "t":
                size = self.int32()
                values.append(self._take(size).decode(self.encoding, errors="replace"))
            elif kind == "b":
                size = self.int32()
                values.append(self._take(size))
            else:
                raise DecodeError(f"unknown tuple column kind {kind!r}")
        return TupleData(tuple(values))

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk


def decode(data: bytes, encoding: str = "utf-8") -> Message:
    """One pgoutput message (protocol version 1). `encoding`: the database's, as a Python
    codec name. DecodeError for anything else."""
    if not data:
        raise DecodeError("empty message")
    reader = _Reader(bytes(data), encoding)
    kind = reader.byte()
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
    if kind == "I":
        relation_id = reader.uint32()
        marker = reader.byte()
        if marker != "N":
            raise DecodeError(f"insert: expected 'N', got {marker!r}")
        return Insert(relation_id, reader.tuple_data())
    if kind == "U":
        relation_id = reader.uint32()
        marker = reader.byte()
        old: TupleData | None = None
        old_kind: str | None = None
        if marker in ("K", "O"):
            old_kind = marker
            old = reader.tuple_data()
            marker = reader.byte()
        if marker != "N":
            raise DecodeError(f"update: expected 'N', got {marker!r}")
        return Update(relation_id, old, old_kind, reader.tuple_data())
    if kind == "D":
        relation_id = reader.uint32()
        marker = reader.byte()
        if marker not in ("K", "O"):
            raise DecodeError(f"delete: expected 'K' or 'O', got {marker!r}")
        return Delete(relation_id, reader.tuple_data(), marker)
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


def convert(type_oid: int, text: str | None) -> Any:
    """The JSON-ready value of a column's text form (bridge/cdc/_model.py), by type OID (the
    base type for domains). None for NULL."""
    if text is None:
        return None
    if type_oid in INTEGERS:
        return int(text)
    if type_oid == BOOL:
        return text in ("t", "true")
    if type_oid in FLOATS:
        name = _FLOAT_NAMES.get(text)
        return name if name is not None else float(text)
    if type_oid in (JSON, JSONB):
        return json.loads(text)
    if type_oid == BYTEA:
        if text.startswith("\\x"):
            try:
                return base64.b64encode(binascii.unhexlify(text[2:])).decode("ascii")
            except (binascii.Error, ValueError):
                return text
        return text
    if type_oid == TIMESTAMP:
        if len(text) > 10 and text[10] == " " and not text.endswith(" BC"):
            return f"{text[:10]}T{text[11:]}"
        return text
    if type_oid == TIMESTAMPTZ:
        return _timestamptz(text)
    return text  # numeric, money, date, time, interval, uuid, text, enums, arrays, ...
