"""JSON objects as serialized `google.protobuf.Struct`, without building protobuf messages.

`encode_struct(value, max_depth)` writes what protobuf's upb backend writes for
`Struct.update(value)` then `SerializeToString(deterministic=True)`, byte for byte: numbers as
doubles, nested objects and lists, and map entries in upb's deterministic order (keys compared as
UTF-8 bytes; when one key is a prefix of another, the longer one first). protobuf's default,
non-deterministic serialization orders map entries by upb's hash table, which upb seeds per
process on purpose, so no fixed byte sequence exists to match there; readers parse both the same.

The compiled module `_structenc` (built from `_structenc.c` when the package is installed, if a C
compiler is there) does the work; without it this module's pure-Python twin produces the same
bytes, slower (`COMPILED` says which one runs). tests/hstream/test_structenc.py checks both
against protobuf.

Errors: ValueError for nesting deeper than `max_depth` and for strings that are not valid Unicode
(lone surrogates), OverflowError for an int beyond a double, TypeError for any other type.
"""

import struct
from collections.abc import Callable
from typing import Any

from bridge.hstream._varint import VARINTS, varint

_DOUBLE = struct.Struct("<d").pack


def _length(n: int) -> bytes:
    return VARINTS[n] if n < 16384 else varint(n)


class _Key:
    """A map key's bytes as the encoder needs them, cached: telemetry repeats its keys."""

    __slots__ = ("float_entry", "prefix", "size", "sort")

    def __init__(self, key: str) -> None:
        data = key.encode()
        # b"\xff" never occurs in UTF-8: a key sorts after every longer key it is a prefix of.
        self.sort = data + b"\xff"
        self.prefix = b"\x0a" + _length(len(data)) + data + b"\x12"  # key field, value tag
        self.size = len(self.prefix)
        # A whole entry holding a number, up to the double: the commonest value in telemetry.
        self.float_entry = b"\x0a" + _length(self.size + 10) + self.prefix + b"\x09\x11"


_KEYS: dict[str, _Key] = {}
_KEYS_MAX = 4096


def _key(key: object) -> _Key:
    if not isinstance(key, str):
        raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
    found = _Key(key)
    if len(_KEYS) < _KEYS_MAX:
        _KEYS[key] = found
    return found


def _sort_key(item: tuple[_Key, Any]) -> bytes:
    return item[0].sort


_NULL = b"\x08\x00"
_TRUE = b"\x20\x01"
_FALSE = b"\x20\x00"


def _too_deep(max_depth: int) -> ValueError:
    return ValueError(f"JSON payload is nested deeper than {max_depth} levels")


def _value(v: Any, level: int, max_depth: int) -> bytes:
    """One google.protobuf.Value's fields (without its own tag and length), at `level`."""
    if v is None:
        return _NULL
    if v is True:
        return _TRUE
    if v is False:
        return _FALSE
    if isinstance(v, str):
        data = v.encode()
        return b"\x1a" + _length(len(data)) + data
    if isinstance(v, float):
        return b"\x11" + _DOUBLE(v)
    if isinstance(v, int):
        return b"\x11" + _DOUBLE(float(v))
    if isinstance(v, dict):
        body = _struct(v, level, max_depth)
        return b"\x2a" + _length(len(body)) + body
    if isinstance(v, list | tuple):
        if v and level >= max_depth:
            raise _too_deep(max_depth)
        parts: list[bytes] = []
        for item in v:
            data = _value(item, level + 1, max_depth)
            parts.append(b"\x0a" + _length(len(data)) + data)
        body = b"".join(parts)
        return b"\x32" + _length(len(body)) + body
    raise TypeError(f"{type(v).__name__} cannot be stored in a JSON record")


def _struct(obj: dict[str, Any], level: int, max_depth: int) -> bytes:
    """A Struct's fields; `obj` is at `level`, its values one below."""
    if not obj:
        return b""
    if level >= max_depth:
        raise _too_deep(max_depth)
    keys = _KEYS
    items = [(keys.get(key) or _key(key), v) for key, v in obj.items()]
    if len(items) > 1:
        items.sort(key=_sort_key)
    parts: list[bytes] = []
    append = parts.append
    double = _DOUBLE
    below = level + 1
    for key, v in items:
        kind = type(v)
        if kind is float:
            append(key.float_entry + double(v))
            continue
        if kind is int:
            append(key.float_entry + double(float(v)))
            continue
        data = _value(v, below, max_depth)
        entry = key.prefix + _length(len(data)) + data
        append(b"\x0a" + _length(len(entry)) + entry)
    return b"".join(parts)


def py_encode_struct(value: dict[str, Any], max_depth: int) -> bytes:
    """The pure-Python encoder (what `encode_struct` is without the compiled module)."""
    if not isinstance(value, dict):
        raise ValueError(f"JSON payload is a {type(value).__name__}, not an object")  # noqa: TRY004
    return _struct(value, 0, max_depth)


c_encode_struct: Callable[[dict[str, Any], int], bytes] | None
try:
    from bridge.hstream._structenc import encode as c_encode_struct
except ImportError:  # built without a C compiler: the pure-Python twin writes the same bytes
    c_encode_struct = None

COMPILED = c_encode_struct is not None
"""Whether the compiled encoder is installed (the pure-Python one is used otherwise)."""

encode_struct: Callable[[dict[str, Any], int], bytes] = c_encode_struct or py_encode_struct
"""A JSON object (dict) as a serialized Struct: the compiled encoder when installed."""
