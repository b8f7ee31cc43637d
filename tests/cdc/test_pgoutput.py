"""The pgoutput decoder (hand-built protocol v1 messages) and the text-to-JSON value conversion."""

import json
import struct

import pytest

from bridge.cdc import pgoutput, postgres
from bridge.cdc._model import TableRef
from bridge.cdc.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    DecodeError,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    Truncate,
    TupleData,
    TypeMessage,
    Update,
    convert,
    decode,
)


def s(text: str) -> bytes:
    return text.encode() + b"\x00"


def tup(*values: object) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        else:
            assert isinstance(value, str)
            data = value.encode()
            out += b"t" + struct.pack("!i", len(data)) + data
    return out


def test_begin() -> None:
    data = b"B" + struct.pack("!QqI", 0x1_0000_0010, 757_000_000_123_456, 4242)
    assert decode(data) == Begin(0x1_0000_0010, 757_000_000_123_456, 4242)


def test_commit() -> None:
    data = b"C" + struct.pack("!BQQq", 0, 100, 180, 5)
    assert decode(data) == Commit(0, 100, 180, 5)


def test_origin() -> None:
    assert decode(b"O" + struct.pack("!Q", 77) + s("node1")) == Origin(77, "node1")


def test_relation() -> None:
    data = (
        b"R"
        + struct.pack("!I", 16390)
        + s("public")
        + s("orders")
        + b"d"
        + struct.pack("!h", 2)
        + b"\x01"
        + s("id")
        + struct.pack("!Ii", 23, -1)
        + b"\x00"
        + s("note")
        + struct.pack("!Ii", 1043, 36)
    )
    assert decode(data) == Relation(
        16390,
        "public",
        "orders",
        "d",
        (Column("id", 23, -1, True), Column("note", 1043, 36, False)),
    )


def test_relation_in_pg_catalog_has_empty_namespace() -> None:
    data = b"R" + struct.pack("!I", 1) + s("") + s("t") + b"f" + struct.pack("!h", 0)
    message = decode(data)
    assert isinstance(message, Relation)
    assert message.namespace == "pg_catalog"


def test_type() -> None:
    data = b"Y" + struct.pack("!I", 16400) + s("public") + s("mood")
    assert decode(data) == TypeMessage(16400, "public", "mood")


def test_insert_with_null_and_text() -> None:
    data = b"I" + struct.pack("!I", 5) + b"N" + tup("1", None, "héllo")
    assert decode(data) == Insert(5, TupleData(("1", None, "héllo")))


def test_update_without_old() -> None:
    data = b"U" + struct.pack("!I", 5) + b"N" + tup("1", UNCHANGED)
    assert decode(data) == Update(5, None, None, TupleData(("1", UNCHANGED)))


@pytest.mark.parametrize("kind", ["K", "O"])
def test_update_with_old(kind: str) -> None:
    data = b"U" + struct.pack("!I", 5) + kind.encode() + tup("1", None) + b"N" + tup("2", "x")
    assert decode(data) == Update(5, TupleData(("1", None)), kind, TupleData(("2", "x")))


@pytest.mark.parametrize("kind", ["K", "O"])
def test_delete(kind: str) -> None:
    data = b"D" + struct.pack("!I", 9) + kind.encode() + tup("7", None)
    assert decode(data) == Delete(9, TupleData(("7", None)), kind)


def test_truncate() -> None:
    data = b"T" + struct.pack("!IB", 2, 3) + struct.pack("!II", 10, 11)
    assert decode(data) == Truncate((10, 11), cascade=True, restart_identity=True)


def test_logical_message() -> None:
    data = b"M" + struct.pack("!BQ", 1, 99) + s("bridge") + struct.pack("!I", 3) + b"abc"
    assert decode(data) == LogicalMessage(True, 99, "bridge", b"abc")


def test_binary_column_is_bytes() -> None:
    data = b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"b\x00\x00\x00\x02\x01\x02"
    assert decode(data) == Insert(5, TupleData((b"\x01\x02",)))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Z",
        b"B\x00\x00",
        b"I" + struct.pack("!I", 5) + b"X",
        b"D" + struct.pack("!I", 5) + b"N" + tup("1"),
        b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"q",
        b"R" + struct.pack("!I", 1) + b"unterminated",
        b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"t\x00\x00\x00\x09ab",
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def test_latin1_encoding() -> None:
    data = b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"t\x00\x00\x00\x01\xe9"
    assert decode(data, "latin-1") == Insert(5, TupleData(("é",)))


def test_commit_timestamp() -> None:
    assert pgoutput.pg_timestamp_to_ms(0) == 946_684_800_000
    assert pgoutput.pg_timestamp_to_ms(1_500_999) == 946_684_801_500


# --- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "text", "value"),
    [
        (16, "t", True),
        (16, "f", False),
        (16, "true", True),
        (21, "-3", -3),
        (23, "2147483647", 2147483647),
        (20, "9223372036854775807", 9223372036854775807),
        (26, "16384", 16384),
        (700, "1.5", 1.5),
        (701, "-2.25e-10", -2.25e-10),
        (701, "NaN", "NaN"),
        (701, "Infinity", "Infinity"),
        (700, "-Infinity", "-Infinity"),
        (1700, "12.50", "12.50"),
        (1700, "NaN", "NaN"),
        (790, "$1,234.50", "$1,234.50"),
        (114, '{"a": [1, 2.5, null]}', {"a": [1, 2.5, None]}),
        (3802, '"text"', "text"),
        (3802, "[true, 3]", [True, 3]),
        (17, "\\x00ff10", "AP8Q"),
        (17, "\\x", ""),
        (1114, "2024-01-31 12:00:00.123456", "2024-01-31T12:00:00.123456"),
        (1114, "2024-01-31 12:00:00", "2024-01-31T12:00:00"),
        (1114, "infinity", "infinity"),
        (1184, "2024-01-31 12:00:00.5+00", "2024-01-31T12:00:00.5Z"),
        (1184, "2024-01-31 01:30:00+05:30", "2024-01-30T20:00:00Z"),
        (1184, "2024-12-31 23:00:00.25-02", "2025-01-01T01:00:00.25Z"),
        (1184, "1900-01-01 00:00:00+00:53:28", "1899-12-31T23:06:32Z"),
        (1184, "-infinity", "-infinity"),
        (1082, "2024-01-31", "2024-01-31"),
        (1083, "12:00:00.5", "12:00:00.5"),
        (1186, "1 day 02:00:00", "1 day 02:00:00"),
        (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (25, "plain", "plain"),
        (1007, "{1,2,3}", "{1,2,3}"),
        (16500, "happy", "happy"),
        (23, None, None),
        (3802, None, None),
    ],
)
def test_convert(oid: int, text: str | None, value: object) -> None:
    assert convert(oid, text) == value
    assert type(convert(oid, text)) is type(value)


@pytest.mark.parametrize(
    ("oid", "text"),
    [
        (16, "t"),
        (20, "-42"),
        (701, "NaN"),
        (701, "-Infinity"),
        (700, "0.25"),
        (3802, '{"a": 1}'),
        (17, "\\x00ff10"),
        (17, "\\xzz"),
        (1114, "2024-01-31 12:00:00 BC"),
        (1184, "2024-01-31 01:30:00+05:30"),
        (1043, "text"),
        (16500, "happy"),
    ],
)
def test_converter_is_what_convert_applies(oid: int, text: str) -> None:
    assert pgoutput.converter(oid)(text) == convert(oid, text)


@pytest.mark.parametrize(
    "text",
    [
        '{"big": 123456789012345678901234567890}',
        "-9223372036854775809",
        "18446744073709551616",
        "[9223372036854775807, -9223372036854775808, 18446744073709551615]",
        '{"id": "1234567890123456789012"}',
        "NaN",
        '{"x": Infinity, "y": -Infinity}',
        "1e400",
        '"\\ud800"',
        '"\\ud83d\\ude00"',
        '{"a": 1, "a": 2}',
        '{"f": 1.5, "g": 0.1, "n": null, "s": "é"}',
    ],
)
@pytest.mark.parametrize("oid", [114, 3802])
def test_json_is_what_the_standard_library_gives(oid: int, text: str) -> None:
    value = convert(oid, text)
    expected = json.loads(text)
    assert repr(value) == repr(expected)  # repr: NaN != NaN, and 1 == 1.0
    assert type(value) is type(expected)


def test_invalid_json_raises_as_the_standard_library_does() -> None:
    with pytest.raises(json.JSONDecodeError):
        convert(3802, "{not json")


def test_tuple_data_is_plain_only_with_text_and_nulls() -> None:
    plain = decode(b"I" + struct.pack("!I", 5) + b"N" + tup("1", None))
    assert isinstance(plain, Insert)
    assert plain.new.plain
    unchanged = decode(b"U" + struct.pack("!I", 5) + b"N" + tup("1", UNCHANGED))
    assert isinstance(unchanged, Update)
    assert not unchanged.new.plain
    binary = decode(
        b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"b\x00\x00\x00\x00"
    )
    assert isinstance(binary, Insert)
    assert not binary.new.plain
    assert TupleData(("1", None)).plain
    assert not TupleData(("1", UNCHANGED)).plain
    assert not TupleData((b"\x01",)).plain


def test_change_messages_compare_hash_and_print_by_fields() -> None:
    insert = Insert(5, TupleData(("1",)))
    assert insert == Insert(5, TupleData(("1",)))
    assert insert != Insert(6, TupleData(("1",)))
    assert insert != Delete(5, TupleData(("1",)), "K")
    assert hash(insert) == hash(Insert(5, TupleData(("1",))))
    assert repr(insert) == "Insert(relation_id=5, new=TupleData(values=('1',), plain=True))"
    assert repr(Delete(9, TupleData((None,)), "K")) == (
        "Delete(relation_id=9, old=TupleData(values=(None,), plain=True), old_kind='K')"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"I\x00\x00",
        b"I" + struct.pack("!I", 5) + b"N",
        b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 2) + b"n",
        b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"t\x00\x00",
        b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"t\xff\xff\xff\xff",
        b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"b\x00\x00\x00\x05ab",
        b"U" + struct.pack("!I", 5) + b"K" + tup("1"),
        b"U" + struct.pack("!I", 5) + b"K" + tup("1") + b"X" + tup("2"),
        b"U" + struct.pack("!I", 5) + b"X" + tup("1"),
        b"C" + struct.pack("!BQ", 0, 1),
        b"M" + struct.pack("!BQ", 1, 99) + s("p") + struct.pack("!I", 9) + b"abc",
    ],
)
def test_truncated_or_malformed_changes(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def test_decode_takes_any_bytes_like() -> None:
    data = b"I" + struct.pack("!I", 5) + b"N" + tup("1", None)
    assert decode(memoryview(data)) == decode(bytearray(data)) == Insert(5, TupleData(("1", None)))


# --- rows (bridge/cdc/postgres.py): one converter per column, applied in one pass ---------------


def _relation() -> postgres._Relation:
    return postgres._Relation(
        TableRef("db", "public", "t", ("id",)),
        ("id", "temp", "ts", "doc", "note"),
        tuple(pgoutput.converter(oid) for oid in (20, 701, 1114, 3802, 25)),
        (True, False, False, False, False),
    )


def test_row_converts_each_column_by_its_type() -> None:
    data = TupleData(("7", "NaN", "2024-01-31 12:00:00", '{"a": [1]}', None))
    assert postgres._row(_relation(), data, False, "utf-8") == (
        {"id": 7, "temp": "NaN", "ts": "2024-01-31T12:00:00", "doc": {"a": [1]}, "note": None},
        (),
    )


def test_row_with_unchanged_binary_and_key_only() -> None:
    data = TupleData(("7", b"1.5", UNCHANGED, None, "x"))
    assert postgres._row(_relation(), data, False, "utf-8") == (
        {"id": 7, "temp": 1.5, "doc": None, "note": "x"},
        ("ts",),
    )
    key = TupleData(("7", None, None, None, None))
    assert postgres._row(_relation(), key, True, "utf-8") == ({"id": 7}, ())


def test_an_ascii_message_in_an_encoding_that_is_not_an_ascii_superset() -> None:
    data = b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"t\x00\x00\x00\x02\x81\x82"
    assert decode(data, "cp037") == Insert(5, TupleData(("ab",)))  # EBCDIC
    assert decode(data, "utf-8") == Insert(5, TupleData(("\ufffd\ufffd",)))
    ascii_only = b"I" + struct.pack("!I", 5) + b"N" + tup("abc", None, "1")
    assert decode(ascii_only, "cp037") != decode(ascii_only, "utf-8")
    assert decode(ascii_only, "latin-1") == Insert(5, TupleData(("abc", None, "1")))
