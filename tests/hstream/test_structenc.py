"""The Struct encoders (compiled and pure Python) write protobuf's own bytes, and the router's fast
JSON path (`json_struct_bytes`) accepts and refuses exactly what `struct_bytes(json_object(...))`
does.

protobuf's reference here is upb's `SerializeToString(deterministic=True)`: its default
serialization orders map entries by a hash table upb seeds per process, so there is no fixed byte
sequence to compare with; the encoders' bytes also parse back to the same Struct as the default's.
"""

import json
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from google.protobuf.struct_pb2 import Struct
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.hstream import records, structenc
from bridge.hstream.records import MAX_JSON_DEPTH, json_object, json_struct_bytes, struct_bytes

Encoder = Callable[[dict[str, Any], int], bytes]

# The `encoder` fixture is the same for every generated input: nothing in it to reset.
CHECKS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]

ENCODERS: dict[str, Encoder | None] = {
    "python": structenc.py_encode_struct,
    "compiled": structenc.c_encode_struct,
}


@pytest.fixture(params=sorted(ENCODERS))
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Encoder:
    """Each encoder, also installed as the one `json_struct_bytes` uses."""
    chosen = ENCODERS[request.param]
    if chosen is None:
        pytest.skip("the compiled encoder is not built (no C compiler at install)")
    monkeypatch.setattr(records, "encode_struct", chosen)
    return chosen


def reference(value: dict[str, Any]) -> bytes:
    """What protobuf writes for the object (deterministic map order)."""
    message = Struct()
    message.update(value)
    data: bytes = message.SerializeToString(deterministic=True)
    return data


def parsed(data: bytes) -> Struct:
    message = Struct()
    message.ParseFromString(data)
    return message


def today(payload: bytes) -> bytes:
    """The router's JSON path before the fast one (`struct_bytes(json_object(...))`), in
    deterministic map order."""
    return reference(json_object(payload))


REFUSED = "refused"


def outcome(function: Callable[[], bytes]) -> bytes | str:
    """The bytes, or REFUSED: the router dead-letters ValueError and OverflowError alike (which
    one comes first when a payload has both an overflow and a lone surrogate follows the order
    the fields are encoded in)."""
    try:
        return function()
    except (ValueError, OverflowError):
        return REFUSED


keys = st.text(max_size=12) | st.sampled_from(["", "a", "ab", "abc", "b", "é", "\U0001f600", "A"])
numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**53 + 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, -(2**63) - 1, 10**300])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([-0.0, 0.0, 1e308, -1.7976931348623157e308, 5e-324, -5e-324, 2.5e-308])
)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=6),
    max_leaves=30,
)
objects = st.dictionaries(keys, json_values, max_size=8)

REALISTIC = (
    b'{"ts": 1764460800123, "device": "dev-0042", "temp": 21.5, "hum": 40.2, "bat": 3.71, '
    b'"status": "ok", "seq": 123456, "loc": {"lat": 52.52, "lon": 13.405}, "fw": "1.4.2"}'
)


def test_the_realistic_payload_is_protobufs_bytes(encoder: Encoder) -> None:
    assert json_struct_bytes(REALISTIC) == reference(json.loads(REALISTIC))
    assert encoder(json.loads(REALISTIC), MAX_JSON_DEPTH) == reference(json.loads(REALISTIC))
    assert parsed(json_struct_bytes(REALISTIC)) == parsed(struct_bytes(json.loads(REALISTIC)))


@settings(max_examples=300, deadline=None, suppress_health_check=CHECKS)
@given(value=objects)
@example(value={"": 1, "a": 2, "ab": 3, "abc": {"": None, "x": []}, "b": {}})
@example(value={"big": "x" * 300, "list": ["y" * 10] * 40, "nested": {"k": "z" * 200}})
def test_encoders_write_what_protobuf_writes(encoder: Encoder, value: dict[str, Any]) -> None:
    expected = outcome(lambda: reference(value))
    assert outcome(lambda: encoder(value, MAX_JSON_DEPTH)) == expected
    if isinstance(expected, bytes):
        assert parsed(encoder(value, MAX_JSON_DEPTH)) == parsed(struct_bytes(value))


@settings(max_examples=300, deadline=None, suppress_health_check=CHECKS)
@given(value=objects, ascii_only=st.booleans())
def test_json_text_is_stored_as_before(
    encoder: Encoder, value: dict[str, Any], ascii_only: bool
) -> None:
    payload = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert outcome(lambda: json_struct_bytes(payload)) == outcome(lambda: today(payload))


def member(key: str, text: str) -> str:
    return json.dumps(key) + ": " + text


escapes = st.sampled_from(
    [
        "\\n", "\\t", "\\r", "\\b", "\\f", "\\/", "\\\\", '\\"', "\\u0000", "\\u001f", "\\u00e9",
        "\\u20ac", "\\uffff", "\\ud83d\\ude00", "\\uD83D\\uDE00", "\\ud800", "\\udc00",
        "\\ud800\\u0041", "\\ude00\\ud83d", "\\x", "\\u12", "a", "é", "\U0001f600", "\x01", " ",
    ]
)  # fmt: skip
raw_strings = st.lists(escapes, max_size=6).map(lambda parts: '"' + "".join(parts) + '"')
raw_numbers = st.sampled_from(
    [
        "0", "-0", "-0.0", "1e308", "1.7976931348623157e308", "1.8e308", "1e999", "-1e999",
        "5e-324", "2e-324", "1e-400", "9007199254740993", "18446744073709551615",
        "18446744073709551616", "-9223372036854775809", "1" + "0" * 400, "1.0", "1E5", "1e+5",
        "01", "1.", ".5", "-", "+1", "NaN", "Infinity", "-Infinity", "1e", "0x10", "true",
        "false", "null", "nul", "True",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=CHECKS)
@given(
    members=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "ab", "", "é"]) | raw_strings, raw_strings | raw_numbers
        ),
        max_size=6,
    ),
    spacing=st.sampled_from(["", " ", "\n\t ", "\x0b", "\xa0"]),
)
def test_raw_json_text_is_refused_and_stored_as_before(
    encoder: Encoder, members: list[tuple[str, str]], spacing: str
) -> None:
    """Duplicate keys (the last wins), escapes, lone surrogates, odd numbers and whitespace."""
    parts = [(json.dumps(k) if not k.startswith('"') else k) + ":" + v for k, v in members]
    payload = (spacing + "{" + spacing + ("," + spacing).join(parts) + "}" + spacing).encode()
    assert outcome(lambda: json_struct_bytes(payload)) == outcome(lambda: today(payload))


@settings(max_examples=300, deadline=None, suppress_health_check=CHECKS)
@given(
    payload=st.binary(max_size=40)
    | st.text('{}[]":,0123456789.eE+-tfnulr \\ud', max_size=30).map(str.encode)
)
def test_arbitrary_bytes_are_refused_or_stored_as_before(encoder: Encoder, payload: bytes) -> None:
    assert outcome(lambda: json_struct_bytes(payload)) == outcome(lambda: today(payload))


def nested(depth: int, leaf: str = "1") -> bytes:
    """An object whose deepest node is `depth` levels below it (as MAX_JSON_DEPTH counts)."""
    return ('{"a": ' + "[" * (depth - 1) + leaf + "]" * (depth - 1) + "}").encode()


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 1000])
@pytest.mark.parametrize("leaf", ["1", "[]", "{}", '{"b": null}'])
def test_nesting_is_refused_where_it_was(encoder: Encoder, depth: int, leaf: str) -> None:
    payload = nested(depth, leaf)
    assert outcome(lambda: json_struct_bytes(payload)) == outcome(lambda: today(payload))


def nested_objects(depth: int) -> bytes:
    return ('{"a": ' * depth + "1" + "}" * depth).encode()


@pytest.mark.parametrize(
    ("make", "deepest"), [(nested_objects, 33), (nested, 50)], ids=["obj", "list"]
)
def test_what_is_stored_is_what_protobuf_reads_back(
    make: Callable[[int], bytes], deepest: int
) -> None:
    # protobuf's parser (the official Python client's) stops at 100 message levels: a Struct of
    # 33 nested objects or of 50 nested lists reads back, one more does not, so it is refused
    # (and dead-lettered) rather than stored unreadable.
    for path in (json_struct_bytes, lambda p: struct_bytes(json_object(p))):
        readable = Struct()
        readable.ParseFromString(path(make(deepest)))
        with pytest.raises(ValueError, match="too deeply for a protobuf Struct"):
            path(make(deepest + 1))
    with pytest.raises(DecodeError):  # what storing it would have meant
        Struct().ParseFromString(struct_bytes(json.loads(make(deepest + 1))))


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"",
        b"[1, 2]",
        b'"text"',
        b"1",
        b"null",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e999}',
        b'{"a": "\\ud800"}',
        b'{"\\udc00": 1}',
        b'{"a": 1} x',
        b'{"a": 1,}',
        b"[" * 100_000,
        b"\xff\xfe",
        b'{"a": "\xff"}',
        b'{"a": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8
    ],
)
def test_payloads_a_struct_cannot_hold_are_refused(encoder: Encoder, payload: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by cause
        json_struct_bytes(payload)


def test_an_integer_beyond_a_double_is_refused(encoder: Encoder) -> None:
    with pytest.raises((ValueError, OverflowError)):
        json_struct_bytes(b'{"a": 1' + b"0" * 400 + b"}")
    with pytest.raises(OverflowError):
        encoder({"a": 10**400}, MAX_JSON_DEPTH)


@pytest.mark.parametrize(
    "payload",
    [
        "\ufeff" + '{"a": 1}',  # a UTF-8 byte order mark
        '{"a": "é"}',
    ],
)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le", "utf-32"])
def test_what_the_standard_library_decodes_is_still_stored(
    encoder: Encoder, payload: str, encoding: str
) -> None:
    data = payload.encode(encoding)
    assert outcome(lambda: json_struct_bytes(data)) == outcome(lambda: today(data))


def test_other_types_are_a_type_error(encoder: Encoder) -> None:
    with pytest.raises(TypeError):
        encoder({"a": object()}, MAX_JSON_DEPTH)
    with pytest.raises(TypeError):
        encoder({1: "a"}, MAX_JSON_DEPTH)  # type: ignore[dict-item]
    with pytest.raises(ValueError):  # noqa: PT011
        encoder([], MAX_JSON_DEPTH)  # type: ignore[arg-type]


def test_the_compiled_encoder_is_built_where_a_compiler_is() -> None:
    """scripts/bootstrap.sh and deploy/Dockerfile build it; only a machine without gcc may not."""
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the pure-Python encoder is used")
    assert structenc.COMPILED
    assert structenc.encode_struct is structenc.c_encode_struct
