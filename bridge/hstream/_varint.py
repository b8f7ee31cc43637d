"""Protobuf base-128 varints, for the hand-written wire formats of this package (records.py and
structenc.py): `varint(n)` and a table of the encodings of 0 .. 16383 (the lengths that matter)."""


def varint(n: int) -> bytes:
    """A protobuf base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


VARINTS = [varint(n) for n in range(1 << 14)]
"""`VARINTS[n] == varint(n)` for n < 16384."""
