"""Record encoding: batches round-trip, JSON payloads a Struct can hold, framing sizes."""

import pytest

from bridge.hstream.records import (
    Compression,
    Record,
    batched_record,
    decode_payload,
    decode_records,
    encode_record,
    frame_records,
    framed_size,
    json_object,
    struct_bytes,
)


@pytest.mark.parametrize("compression", list(Compression))
def test_raw_and_json_records_round_trip_in_every_compression(compression: Compression) -> None:
    records = [
        Record(b"\x00raw bytes\xff", key="k1", attributes={"mqtt.topic": "a/b"}),
        Record({"t": 21.5, "tags": ["x", "y"], "ok": True, "none": None}, key="k2"),
    ]
    batch = batched_record([encode_record(r) for r in records], compression)
    assert batch.batchSize == 2
    decoded = decode_records(batch)
    assert decoded[0].payload == b"\x00raw bytes\xff"
    assert dict(decoded[0].header.attributes) == {"mqtt.topic": "a/b"}
    assert decode_payload(decoded[1].header.flag, decoded[1].payload) == {
        "t": 21.5,
        "tags": ["x", "y"],
        "ok": True,
        "none": None,
    }
    assert [r.header.key for r in decoded] == ["k1", "k2"]


def test_framed_size_matches_the_serialized_batch() -> None:
    encoded = [encode_record(Record(b"x" * n)) for n in (0, 1, 126, 127, 200, 20_000)]
    assert len(frame_records(encoded)) == sum(framed_size(e) for e in encoded)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'"text"',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1e999}',
        b'{"a": ' + b"[" * 150 + b"]" * 150 + b"}",
        b"[" * 100_000,
        b"\xff\xfe",
    ],
)
def test_json_payloads_a_struct_cannot_hold_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by cause
        json_object(payload)


def test_integer_beyond_a_double_is_refused_when_encoding() -> None:
    with pytest.raises(OverflowError):
        struct_bytes(json_object(b'{"a": 1' + b"0" * 400 + b"}"))
