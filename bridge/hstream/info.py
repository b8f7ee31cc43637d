"""Typed descriptions of HStreamDB resources, built from the server's protobuf answers.

Callers of the client get these frozen values, never protobuf messages, so nothing outside
`bridge.hstream` depends on the generated modules.
"""

from dataclasses import dataclass
from typing import Any, Literal

from bridge.hstream._api import SPECIAL_OFFSET_EARLIEST, SPECIAL_OFFSET_LATEST

SpecialOffset = Literal["earliest", "latest"]


@dataclass(frozen=True, slots=True)
class ServerNode:
    id: int
    host: str
    port: int

    @property
    def target(self) -> str:
        """The `host:port` gRPC target of this node."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class StreamInfo:
    name: str
    shard_count: int
    replication_factor: int
    backlog_seconds: int
    creation_time: float | None = None
    """Seconds since the epoch, when the server says."""


@dataclass(frozen=True, slots=True)
class ShardInfo:
    stream: str
    shard_id: int
    start_key: int
    """First hash key the shard owns (inclusive)."""
    end_key: int
    """Last hash key the shard owns (inclusive)."""
    epoch: int
    is_active: bool


@dataclass(frozen=True, slots=True)
class SubscriptionInfo:
    id: str
    stream: str
    ack_timeout: float
    max_unacked: int
    offset: SpecialOffset
    creation_time: float | None = None


def _timestamp(message: Any, field: str) -> float | None:
    if not message.HasField(field):
        return None
    stamp: Any = getattr(message, field)
    seconds: float = stamp.seconds + stamp.nanos / 1e9
    return seconds


def server_node(message: Any) -> ServerNode:
    return ServerNode(id=message.id, host=message.host, port=message.port)


def stream_info(message: Any) -> StreamInfo:
    return StreamInfo(
        name=message.streamName,
        shard_count=message.shardCount,
        replication_factor=message.replicationFactor,
        backlog_seconds=message.backlogDuration,
        creation_time=_timestamp(message, "creationTime"),
    )


def shard_info(message: Any) -> ShardInfo:
    return ShardInfo(
        stream=message.streamName,
        shard_id=message.shardId,
        start_key=int(message.startHashRangeKey),
        end_key=int(message.endHashRangeKey),
        epoch=message.epoch,
        is_active=message.isActive,
    )


def special_offset_name(value: int) -> SpecialOffset:
    return "latest" if value == SPECIAL_OFFSET_LATEST else "earliest"


def special_offset_value(offset: str) -> int:
    if offset == "earliest":
        return SPECIAL_OFFSET_EARLIEST
    if offset == "latest":
        return SPECIAL_OFFSET_LATEST
    raise ValueError(f"offset {offset!r} must be 'earliest' or 'latest'")


def subscription_info(message: Any) -> SubscriptionInfo:
    return SubscriptionInfo(
        id=message.subscriptionId,
        stream=message.streamName,
        ack_timeout=float(message.ackTimeoutSeconds),
        max_unacked=message.maxUnackedRecords,
        offset=special_offset_name(message.offset),
        creation_time=_timestamp(message, "creationTime"),
    )
