"""The one place that imports the generated HStreamDB gRPC modules (PyPI `hstreamdb-api`).

The generated code ships without type information, so its messages are `Any` to mypy. Everything
outside `bridge.hstream` talks to the typed values of `bridge.hstream` instead.
"""

from typing import Any

from HStream.Server import HStreamApi_pb2 as _pb2
from HStream.Server import HStreamApi_pb2_grpc as _pb2_grpc

pb: Any = _pb2
"""Message classes and enums (`pb.AppendRequest`, `pb.CompressionType`, ...)."""

HStreamApiStub: Any = _pb2_grpc.HStreamApiStub
HStreamApiServicer: Any = _pb2_grpc.HStreamApiServicer
add_servicer_to_server: Any = _pb2_grpc.add_HStreamApiServicer_to_server

SERVICE_NAME = "hstream.server.HStreamApi"

FLAG_JSON = 0
FLAG_RAW = 1
COMPRESSION_NONE = 0
COMPRESSION_GZIP = 1
COMPRESSION_ZSTD = 2
SPECIAL_OFFSET_EARLIEST = 0
SPECIAL_OFFSET_LATEST = 1
RESOURCE_STREAM = 0
RESOURCE_SUBSCRIPTION = 1
RESOURCE_SHARD = 2
RESOURCE_SHARD_READER = 3
