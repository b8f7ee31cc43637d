"""JSON payload -> serialized google.protobuf.Struct (a JSON record's payload), per message.

    .venv/bin/python -m bench.json_encode                 # ~15 s
    .venv/bin/python -m bench.json_encode --number 50000 --repeat 7

One 170-byte telemetry object (9 fields, one nested), the way each candidate would turn it into
a record payload:

- stdlib json + Struct.update: `struct_bytes(json_object(...))`, the router's path before
  issue 12 (json.loads with its NaN/Infinity/overflow hooks, protobuf's upb backend);
- orjson + Struct.update: the same with a faster parser;
- orjson + pure-Python encoder: `structenc.py_encode_struct`, the fallback without a compiler;
- orjson + compiled encoder: `structenc.c_encode_struct` (bridge/hstream/_structenc.c);
- json_struct_bytes: the router's path now (orjson + the encoder in use, plus its checks).

Figures are the best of `--repeat` runs of `--number` calls, in microseconds per message; the
ratio is to the first row. Every candidate's bytes are checked to parse to the same Struct.
"""

import argparse
import json
import timeit
from collections.abc import Callable

import orjson
from google.protobuf.struct_pb2 import Struct

from bridge.hstream import structenc
from bridge.hstream.records import MAX_JSON_DEPTH, json_object, json_struct_bytes, struct_bytes

PAYLOAD = (
    b'{"ts": 1764460800123, "device": "dev-0042", "temp": 21.5, "hum": 40.2, "bat": 3.71, '
    b'"status": "ok", "seq": 123456, "loc": {"lat": 52.52, "lon": 13.405}, "fw": "1.4.2"}'
)


def candidates() -> dict[str, Callable[[bytes], object]]:
    found: dict[str, Callable[[bytes], object]] = {
        "stdlib json + Struct.update (before)": lambda p: struct_bytes(json_object(p)),
        "orjson + Struct.update": lambda p: struct_bytes(orjson.loads(p)),
        "orjson + pure-Python encoder": lambda p: structenc.py_encode_struct(
            orjson.loads(p), MAX_JSON_DEPTH
        ),
    }
    compiled = structenc.c_encode_struct
    if compiled is not None:
        found["orjson + compiled encoder"] = lambda p: compiled(orjson.loads(p), MAX_JSON_DEPTH)
    found["json_struct_bytes (router now)"] = json_struct_bytes
    found["orjson.loads alone (parsing only, for scale)"] = orjson.loads
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best one counts")
    args = parser.parse_args()

    expected = Struct()
    expected.update(json.loads(PAYLOAD))
    rows: list[tuple[str, float]] = []
    for name, encode in candidates().items():
        data = encode(PAYLOAD)
        if isinstance(data, bytes):
            got = Struct()
            got.ParseFromString(data)
            assert got == expected, name
        runs = timeit.repeat(lambda: encode(PAYLOAD), number=args.number, repeat=args.repeat)  # noqa: B023
        best = min(runs)
        rows.append((name, best / args.number * 1e6))

    base = rows[0][1]
    print(f"payload: {len(PAYLOAD)} bytes; compiled encoder: {structenc.COMPILED}")
    print("| way | us per message | speed-up on before |\n|---|---:|---:|")
    for name, micros in rows:
        print(f"| {name} | {micros:.2f} | {base / micros:.1f}x |")
    print("reproduce: .venv/bin/python -m bench.json_encode")


if __name__ == "__main__":
    main()
