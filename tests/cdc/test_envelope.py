"""Changes to records: the Debezium and flat shapes, keys, attributes, and dead letters."""

from decimal import Decimal
from typing import Any

import pytest

from bridge.cdc._model import Change, TableRef, Transaction
from bridge.cdc.config import Source
from bridge.cdc.envelope import outputs
from bridge.hstream.records import EncodedRecord, decode_payload

ORDERS = TableRef("shop", "public", "orders", ("id",))
KEYLESS = TableRef("shop", "public", "events", ())


def source(**extra: Any) -> Source:
    return Source.model_validate(
        {
            "id": "shop",
            "kind": "postgres",
            "dsn": "postgresql://cdc@db/shop",
            "tables": ["public.orders"],
            "stream": "cdc_${table}",
            **extra,
        }
    )


def txn(*changes: Change) -> Transaction:
    return Transaction(
        changes, {"lsn": 42, "snapshot": "done"}, commit_ts_ms=1700000000123, tx_id=7, lsn=42
    )


def decoded(data: bytes) -> tuple[EncodedRecord, Any]:
    record = EncodedRecord.parse(data)
    return record, decode_payload(record.flag, record.payload)


def make(src: Source, *changes: Change, limit: int = 1 << 20) -> list[Any]:
    return outputs(src, txn(*changes), dead_letter_stream="dlq", max_record_bytes=limit)


def test_an_insert_is_a_debezium_json_record_keyed_by_table_and_primary_key() -> None:
    (out,) = make(source(), Change("c", ORDERS, None, {"id": 3, "item": "plum"}))
    assert out.stream == "cdc_orders"
    assert out.key == "public.orders/3"
    record, payload = decoded(out.data)
    assert record.is_json
    assert payload["op"] == "c"
    assert payload["before"] is None
    assert payload["after"] == {"id": 3, "item": "plum"}
    assert payload["source"] == {
        "connector": "postgresql",
        "name": "shop",
        "db": "shop",
        "schema": "public",
        "table": "orders",
        "ts_ms": 1700000000123,
        "snapshot": False,
        "txId": 7,
        "lsn": 42,
    }
    assert record.attributes == {
        "cdc.source": "shop",
        "cdc.op": "c",
        "cdc.table": "public.orders",
        "cdc.position": '{"lsn":42,"snapshot":"done"}',
    }


def test_a_delete_is_keyed_by_its_old_row_and_a_keyless_table_by_the_table() -> None:
    deleted, keyless, truncated = make(
        source(),
        Change("d", ORDERS, {"id": 9}, None),
        Change("c", KEYLESS, None, {"what": "x"}),
        Change("t", ORDERS, None, None),
    )
    assert deleted.key == "public.orders/9"
    assert keyless.key == "public.events"
    assert truncated.key == "public.orders"


def test_integers_a_double_cannot_hold_are_strings_and_unchanged_toast_is_named() -> None:
    (out,) = make(
        source(),
        Change("u", ORDERS, None, {"id": 2**60, "small": 2**53}, unchanged=("body",)),
    )
    _, payload = decoded(out.data)
    assert payload["after"] == {"id": str(2**60), "small": float(2**53)}
    assert payload["source"]["unchanged"] == ["body"]
    assert out.key == f"public.orders/{2**60}"


def test_the_flat_shape_is_hstream_io_key_and_value() -> None:
    upsert, delete = make(
        source(format="flat"),
        Change("u", ORDERS, None, {"id": 1, "qty": 2}),
        Change("d", ORDERS, {"id": 1}, None),
    )
    assert decoded(upsert.data)[1] == {"key": {"id": 1}, "value": {"id": 1, "qty": 2}}
    assert decoded(delete.data)[1] == {"key": {"id": 1}, "value": None}


@pytest.mark.parametrize(
    ("src", "change", "reason"),
    [
        (source(), Change("c", ORDERS, None, {"id": 1, "x": "y" * 2000}), "record_too_large"),
        (source(), Change("c", ORDERS, None, {"id": Decimal("1.5")}), "encode_error"),
        (
            source(stream="${table}"),
            Change("c", TableRef("shop", "public", "1st", ("id",)), None, {"id": 1}),
            "invalid_stream_name",
        ),
    ],
)
def test_what_cannot_be_stored_becomes_a_dead_letter_with_the_cdc_attributes(
    src: Source, change: Change, reason: str
) -> None:
    (out,) = make(src, change, limit=1024)
    assert out.stream == "dlq"
    assert out.reason == reason
    record, _ = decoded(out.data)
    assert record.attributes["reason"] == reason
    assert record.attributes["cdc.table"] == change.table.qualified
    assert record.attributes["rule"] == "shop"
    assert record.payload  # the change, as JSON or as text


@pytest.mark.parametrize("key", ["", "public.orders/1", "ü/" + "k" * 20000])
def test_a_spliced_key_gives_the_header_protobuf_writes(key: str) -> None:
    from bridge.cdc.envelope import _key_field
    from bridge.hstream.records import FLAG_JSON, encode_header

    attributes = {"cdc.op": "c", "cdc.table": "public.orders"}
    assert encode_header(FLAG_JSON, "", attributes) + _key_field(key) == encode_header(
        FLAG_JSON, key, attributes
    )


def test_json_nested_past_what_protobuf_reads_back_is_a_dead_letter() -> None:
    deep: Any = "leaf"
    for _ in range(40):
        deep = {"d": deep}
    (out,) = make(source(), Change("c", ORDERS, None, {"id": 1, "doc": deep}))
    assert out.reason == "encode_error"
    record, _ = decoded(out.data)
    assert b'"doc"' in record.payload  # the change as JSON text
