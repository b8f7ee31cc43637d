"""The HStreamDB side: an asyncio client, record encoding, errors and the embedded store.

Everything outside `bridge.hstream` imports from here (or from `bridge.hstream.errors` /
`bridge.hstream.records`), never from the generated protobuf modules.
"""

from bridge.hstream._wire import RecordIds
from bridge.hstream.client import HStreamClient
from bridge.hstream.consumer import Consumer
from bridge.hstream.errors import HStreamError, HStreamUnavailable
from bridge.hstream.info import ServerNode, ShardInfo, SpecialOffset, StreamInfo, SubscriptionInfo
from bridge.hstream.reader import Offset, ShardReader, StreamReader
from bridge.hstream.records import (
    Compression,
    ReceivedRecord,
    Record,
    RecordId,
    encode_json,
    encode_raw,
    encode_record,
    framed_size,
    struct_bytes,
)
from bridge.hstream.shards import ShardMap
from bridge.hstream.url import HStreamUrl, parse_url

__all__ = [
    "Compression",
    "Consumer",
    "HStreamClient",
    "HStreamError",
    "HStreamUnavailable",
    "HStreamUrl",
    "Offset",
    "ReceivedRecord",
    "Record",
    "RecordId",
    "RecordIds",
    "ServerNode",
    "ShardInfo",
    "ShardMap",
    "ShardReader",
    "SpecialOffset",
    "StreamInfo",
    "StreamReader",
    "SubscriptionInfo",
    "encode_json",
    "encode_raw",
    "encode_record",
    "framed_size",
    "parse_url",
    "struct_bytes",
]
