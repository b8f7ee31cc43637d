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
from bridge.cdc._model import Change, Transaction
from bridge.cdc.config import Source
from bridge.hstream.records import (
    FLAG_JSON,
    encode_header,
    framed_size,
    json_struct_bytes,
    with_header,
)
from bridge.router import Output
from rules.template import RenderError

__all__ = ["CONNECTORS", "outputs"]

CONNECTORS: Final = {"postgres": "postgresql", "mysql": "mysql"}
_EXACT: Final = 2**53

ATTR_SOURCE = "cdc.source"
ATTR_OP = "cdc.op"
ATTR_TABLE = "cdc.table"
ATTR_POSITION = "cdc.position"


def _exact(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Row values a double holds exactly (large integers as strings)."""
    if values is None:
        return None
    row = dict(values)
    for name, value in row.items():
        if type(value) is int and not -_EXACT <= value <= _EXACT:
            row[name] = str(value)
    return row


def partition_key(change: Change) -> str:
    table = change.table
    if not table.key or change.op == "t":
        return table.qualified
    row = change.after if change.after is not None else change.before
    if row is None:
        return table.qualified
    return table.qualified + "/" + "/".join(_key_text(row.get(column)) for column in table.key)


def _key_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def envelope(source: Source, txn: Transaction, change: Change, now_ms: int) -> dict[str, Any]:
    if source.format == "flat":
        table = change.table
        row = change.after if change.after is not None else change.before
        key = (
            {column: row.get(column) for column in table.key}
            if row is not None and table.key
            else None
        )
        return {"key": _exact(key), "value": _exact(change.after)}
    block: dict[str, Any] = {
        "connector": CONNECTORS[source.kind],
        "name": source.id,
        "db": change.table.db,
        "schema": change.table.schema,
        "table": change.table.name,
        "ts_ms": txn.commit_ts_ms,
        "snapshot": txn.snapshot,
        "txId": txn.tx_id,
    }
    if txn.lsn is not None:
        block["lsn"] = txn.lsn
    if txn.gtid is not None:
        block["gtid"] = txn.gtid
    if change.unchanged:
        block["unchanged"] = list(change.unchanged)
    return {
        "before": _exact(change.before),
        "after": _exact(change.after),
        "op": change.op,
        "ts_ms": now_ms,
        "source": block,
    }


def outputs(
    source: Source,
    txn: Transaction,
    *,
    dead_letter_stream: str,
    max_record_bytes: int,
) -> list[Output]:
    """The records one transaction makes, in order; dead letters in place of unstorable ones."""
    now_ms = int(time.time() * 1000)
    position = orjson.dumps(dict(txn.position)).decode()
    made: list[Output] = []
    for change in txn.changes:
        table = change.table
        attributes = {
            ATTR_SOURCE: source.id,
            ATTR_OP: change.op,
            ATTR_TABLE: table.qualified,
            ATTR_POSITION: position,
        }
        payload = b""
        stream: str | None = None
        try:
            payload = orjson.dumps(envelope(source, txn, change, now_ms))
            captures = {
                "source": source.id,
                "db": table.db,
                "schema": table.schema,
                "table": table.name,
            }
            stream = source.stream_template.render_name(captures, "")
            key = partition_key(change)
            data = with_header(
                encode_header(FLAG_JSON, key, attributes), json_struct_bytes(payload)
            )
        except RenderError as exc:
            payload = payload or _fallback(change)
            made.append(
                _dead(
                    source,
                    payload,
                    attributes,
                    deadletter.REASON_INVALID_STREAM_NAME,
                    str(exc),
                    None,
                    dead_letter_stream,
                    max_record_bytes,
                )
            )
            continue
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            payload = payload or _fallback(change)
            made.append(
                _dead(
                    source,
                    payload,
                    attributes,
                    deadletter.REASON_ENCODE_ERROR,
                    repr(exc),
                    stream,
                    dead_letter_stream,
                    max_record_bytes,
                )
            )
            continue
        size = framed_size(data)
        if size > max_record_bytes:
            made.append(
                _dead(
                    source,
                    payload,
                    attributes,
                    deadletter.REASON_RECORD_TOO_LARGE,
                    f"record is {size} bytes in an append, the limit is {max_record_bytes}",
                    stream,
                    dead_letter_stream,
                    max_record_bytes,
                )
            )
            continue
        made.append(Output(stream, key, data, source.id))
    return made


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
