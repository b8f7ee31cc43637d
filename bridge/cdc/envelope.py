"""Database changes to records: the Debezium envelope (or HStream IO's flat shape), the partition
key, the attributes, and dead letters for changes that cannot be stored.

    {"before": {...} | null, "after": {...} | null, "op": "c|u|d|r|t", "ts_ms": 1700000000123,
     "source": {"connector": "postgresql|mysql", "name": "<source id>", "db": "shop",
                "schema": "public", "table": "orders", "ts_ms": <commit ms>,
                "snapshot": false, "txId": 123, "lsn": 123456 | "gtid": "0-1-11"}}

Records are HStreamDB JSON records (a protobuf Struct, numbers as doubles): integers beyond
2**53, which a double cannot hold exactly, are stored as strings. The partition key is
`<schema>.<table>/<primary key values joined by "/">` so one row's changes stay in order on one
shard; a table without a primary key is keyed by `<schema>.<table>`. Every record carries
`cdc.source`, `cdc.op`, `cdc.table` and `cdc.position` attributes.
"""

import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

from bridge import deadletter
from bridge.cdc._model import Change, TableRef, Transaction
from bridge.cdc.config import Source
from bridge.hstream._varint import VARINTS, varint
from bridge.hstream.records import FLAG_JSON, encode_header, framed_size, with_header
from bridge.hstream.structenc import encode_struct
from bridge.router import Output
from rules.template import RenderError

__all__ = ["CONNECTORS", "outputs"]

CONNECTORS: Final = {"postgres": "postgresql", "mysql": "mysql"}
_EXACT: Final = 2**53
MAX_DEPTH: Final = 30
"""Nesting (of json/jsonb values inside the envelope) beyond which a change is a dead letter:
well inside what protobuf parses back (33 nested objects, 50 lists)."""

ATTR_SOURCE = "cdc.source"
ATTR_OP = "cdc.op"
ATTR_TABLE = "cdc.table"
ATTR_POSITION = "cdc.position"


def _exact(values: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Row values a double holds exactly (large integers as strings); copied only if needed."""
    if values is None:
        return None
    for value in values.values():
        if type(value) is int and not -_EXACT <= value <= _EXACT:
            return {
                name: str(v) if type(v) is int and not -_EXACT <= v <= _EXACT else v
                for name, v in values.items()
            }
    return values


def partition_key(change: Change) -> str:
    table = change.table
    key = table.key
    if not key or change.op == "t":
        return table.qualified
    row = change.after if change.after is not None else change.before
    if row is None:
        return table.qualified
    if len(key) == 1:
        return table.qualified + "/" + _key_text(row.get(key[0]))
    return table.qualified + "/" + "/".join(_key_text(row.get(column)) for column in key)


def _key_text(value: object) -> str:
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _key_field(key: str) -> bytes:
    """Field 3 (`key`) of an HStreamRecordHeader: appended to a header encoded without a key,
    it gives the bytes protobuf writes for the whole header (fields in number order)."""
    if not key:
        return b""
    data = key.encode("utf-8")
    n = len(data)
    return b"\x1a" + (VARINTS[n] if n < 16384 else varint(n)) + data


def source_block(source: Source, txn: Transaction, table: TableRef) -> dict[str, Any]:
    """The Debezium `source` block, the same for every change of one table in a transaction."""
    block: dict[str, Any] = {
        "connector": CONNECTORS[source.kind],
        "name": source.id,
        "db": table.db,
        "schema": table.schema,
        "table": table.name,
        "ts_ms": txn.commit_ts_ms,
        "snapshot": txn.snapshot,
        "txId": txn.tx_id,
    }
    if txn.lsn is not None:
        block["lsn"] = txn.lsn
    if txn.gtid is not None:
        block["gtid"] = txn.gtid
    return block


def envelope(
    source: Source, change: Change, now_ms: int, block: Mapping[str, Any]
) -> dict[str, Any]:
    if source.format == "flat":
        table = change.table
        row = change.after if change.after is not None else change.before
        key = (
            {column: row.get(column) for column in table.key}
            if row is not None and table.key
            else None
        )
        return {"key": _exact(key), "value": _exact(change.after)}
    if change.unchanged:
        block = {**block, "unchanged": list(change.unchanged)}
    return {
        "before": _exact(change.before),
        "after": _exact(change.after),
        "op": change.op,
        "ts_ms": now_ms,
        "source": block,
    }


class _Table:
    """What every change of one table in one transaction shares."""

    __slots__ = ("block", "error", "headers", "stream")

    def __init__(self, source: Source, txn: Transaction, table: TableRef) -> None:
        self.block = source_block(source, txn, table)
        # By op: the record attributes and the header encoded from them, without its key.
        self.headers: dict[str, tuple[dict[str, str], bytes]] = {}
        self.stream: str | None = None
        self.error: str | None = None
        captures = {
            "source": source.id,
            "db": table.db,
            "schema": table.schema,
            "table": table.name,
        }
        try:
            self.stream = source.stream_template.render_name(captures, "")
        except RenderError as exc:
            self.error = str(exc)


def outputs(
    source: Source,
    txn: Transaction,
    *,
    dead_letter_stream: str,
    max_record_bytes: int,
) -> list[Output]:
    """The records one transaction makes, in order; dead letters in place of unstorable ones.

    The Struct is written straight from the envelope (no JSON text in between), and the record
    header is encoded once per table and operation, its key appended per record.
    """
    now_ms = int(time.time() * 1000)
    position = orjson.dumps(dict(txn.position)).decode()
    tables: dict[TableRef, _Table] = {}
    made: list[Output] = []
    for change in txn.changes:
        table = change.table
        shared = tables.get(table)
        if shared is None:
            shared = tables[table] = _Table(source, txn, table)
        header = shared.headers.get(change.op)
        if header is None:
            attributes = {
                ATTR_SOURCE: source.id,
                ATTR_OP: change.op,
                ATTR_TABLE: table.qualified,
                ATTR_POSITION: position,
            }
            header = shared.headers[change.op] = (
                attributes,
                encode_header(FLAG_JSON, "", attributes),
            )
        attributes, prefix = header
        value = envelope(source, change, now_ms, shared.block)
        if shared.stream is None:
            made.append(
                _dead(
                    source,
                    _text(value, change),
                    attributes,
                    deadletter.REASON_INVALID_STREAM_NAME,
                    shared.error or "invalid stream name",
                    None,
                    dead_letter_stream,
                    max_record_bytes,
                )
            )
            continue
        try:
            struct = encode_struct(value, MAX_DEPTH)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            made.append(
                _dead(
                    source,
                    _text(value, change),
                    attributes,
                    deadletter.REASON_ENCODE_ERROR,
                    repr(exc),
                    shared.stream,
                    dead_letter_stream,
                    max_record_bytes,
                )
            )
            continue
        key = partition_key(change)
        data = with_header(prefix + _key_field(key), struct)
        size = framed_size(data)
        if size > max_record_bytes:
            made.append(
                _dead(
                    source,
                    _text(value, change),
                    attributes,
                    deadletter.REASON_RECORD_TOO_LARGE,
                    f"record is {size} bytes in an append, the limit is {max_record_bytes}",
                    shared.stream,
                    dead_letter_stream,
                    max_record_bytes,
                )
            )
            continue
        made.append(Output(shared.stream, key, data, source.id))
    return made


def _text(value: Mapping[str, Any], change: Change) -> bytes:
    """The change as JSON text for a dead letter (repr where JSON cannot say it)."""
    try:
        return orjson.dumps(value, default=str)
    except (TypeError, ValueError):
        return _fallback(change)


def _fallback(change: Change) -> bytes:
    """What a dead letter keeps of a change that could not be encoded as JSON."""
    return repr(change).encode("utf-8", "replace")


def _dead(
    source: Source,
    payload: bytes,
    attributes: Mapping[str, str],
    reason: str,
    error: str,
    stream: str | None,
    dead_letter_stream: str,
    max_record_bytes: int,
) -> Output:
    data = deadletter.letter(
        payload,
        reason=reason,
        rule_id=source.id,
        attributes=attributes,
        stream=stream,
        error=error,
        max_bytes=max_record_bytes,
    )
    return Output(dead_letter_stream, "", data, source.id, reason, stream)
