"""The asyncio HStreamDB client: resources, appends routed to shard owners, consumers, readers.

    async with HStreamClient("hstream://127.0.0.1:6570") as client:
        await client.create_stream("temps", shard_count=4)
        ids = await client.append("temps", [Record(b"21.5", key="site-1")])

Routing follows the official clients: a key hashes (md5) to a shard (`ShardMap`), `LookupShard`
names the node that owns the shard, and the append goes there. Both answers are cached. They
go stale when a stream is deleted and recreated or a node leaves, so an append that fails with
NotFound, WrongServer or UNAVAILABLE drops them (the next call rediscovers) and re-raises; the
caller (the sender) decides to retry by the error's `retriable`.

Calls that any node can serve go to the current node; when it is unreachable the client fails
over to another node it knows (from `DescribeCluster`, then the URL's hosts) and refreshes the
node list there.
"""

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from google.protobuf.empty_pb2 import Empty

from bridge.hstream import errors
from bridge.hstream._api import pb
from bridge.hstream._transport import (
    Transport,
    basic_auth,
    node_unreachable,
    tls_credentials,
)
from bridge.hstream._wire import RecordIds, append_request, stream_field
from bridge.hstream.consumer import Consumer
from bridge.hstream.info import (
    ServerNode,
    ShardInfo,
    SpecialOffset,
    StreamInfo,
    SubscriptionInfo,
    server_node,
    shard_info,
    special_offset_value,
    stream_info,
    subscription_info,
)
from bridge.hstream.reader import Offset, ShardReader, StreamReader, last_records
from bridge.hstream.records import (
    Compression,
    ReceivedRecord,
    Record,
    RecordId,
    encode_record,
)
from bridge.hstream.shards import ShardMap, ShardRange
from bridge.hstream.url import parse_url

logger = logging.getLogger(__name__)


class HStreamClient:
    """A connection to an HStreamDB cluster (or the embedded store). Use `async with`."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: Path | str | None = None,
        cert_file: Path | str | None = None,
        key_file: Path | str | None = None,
        timeout: float = 10.0,
    ) -> None:
        parsed = parse_url(url)
        credentials = tls_credentials(ca_file, cert_file, key_file) if parsed.tls else None
        self._transport = Transport(
            credentials=credentials,
            metadata=basic_auth(parsed.username, parsed.password),
            timeout=timeout,
        )
        self._seeds = parsed.targets
        self._current = self._seeds[0]
        self._nodes: list[ServerNode] = []
        self._shard_maps: dict[str, ShardMap] = {}
        # Per stream, so that forgetting an idle stream costs its own entries, not a scan of all:
        # the bridge prunes thousands of rendered stream names at a time.
        self._shard_targets: dict[str, dict[int, str]] = {}
        self._stream_fields: dict[str, bytes] = {}

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Learn the cluster's nodes from the first URL host that answers `DescribeCluster`."""
        await self._fail_over(tried=set(), cause=None)

    async def close(self) -> None:
        await self._transport.close()

    @property
    def nodes(self) -> list[ServerNode]:
        """The cluster's nodes as the last `DescribeCluster` named them."""
        return list(self._nodes)

    @property
    def current_target(self) -> str:
        """The `host:port` that serves calls any node can answer."""
        return self._current

    async def echo(self, message: str = "ping") -> str:
        response = await self._call_any("Echo", pb.EchoRequest(msg=message))
        text: str = response.msg
        return text

    async def ping(self) -> bool:
        """True when the cluster answers; for readiness checks (never raises HStreamError)."""
        try:
            await self.echo()
        except errors.HStreamError:
            return False
        return True

    async def describe_cluster(self) -> list[ServerNode]:
        response = await self._call_any("DescribeCluster", Empty())
        self._nodes = [server_node(node) for node in response.serverNodes]
        return self.nodes

    # -- streams -------------------------------------------------------------------------

    async def create_stream(
        self,
        name: str,
        *,
        shard_count: int = 1,
        replication_factor: int = 1,
        backlog_seconds: int = 0,
    ) -> StreamInfo:
        request = pb.Stream(
            streamName=name,
            shardCount=shard_count,
            replicationFactor=replication_factor,
            backlogDuration=backlog_seconds,
        )
        self.invalidate(name)
        return stream_info(await self._call_any("CreateStream", request))

    async def get_stream(self, name: str) -> StreamInfo:
        response = await self._call_any("GetStream", pb.GetStreamRequest(name=name))
        return stream_info(response.stream)

    async def list_streams(self) -> list[StreamInfo]:
        response = await self._call_any("ListStreams", pb.ListStreamsRequest())
        return sorted((stream_info(s) for s in response.streams), key=lambda s: s.name)

    async def delete_stream(
        self, name: str, *, force: bool = False, ignore_missing: bool = False
    ) -> None:
        request = pb.DeleteStreamRequest(
            streamName=name, force=force, ignoreNonExist=ignore_missing
        )
        self.invalidate(name)
        await self._call_any("DeleteStream", request)

    async def list_shards(self, stream: str) -> list[ShardInfo]:
        response = await self._call_any("ListShards", pb.ListShardsRequest(streamName=stream))
        return sorted((shard_info(s) for s in response.shards), key=lambda s: s.start_key)

    # -- subscriptions -------------------------------------------------------------------

    async def create_subscription(
        self,
        sub_id: str,
        stream: str,
        *,
        ack_timeout: float = 60.0,
        max_unacked: int = 10_000,
        offset: SpecialOffset = "earliest",
    ) -> SubscriptionInfo:
        request = pb.Subscription(
            subscriptionId=sub_id,
            streamName=stream,
            ackTimeoutSeconds=max(1, round(ack_timeout)),
            maxUnackedRecords=max_unacked,
            offset=special_offset_value(offset),
        )
        return subscription_info(await self._call_any("CreateSubscription", request))

    async def get_subscription(self, sub_id: str) -> SubscriptionInfo:
        response = await self._call_any("GetSubscription", pb.GetSubscriptionRequest(id=sub_id))
        return subscription_info(response.subscription)

    async def list_subscriptions(self) -> list[SubscriptionInfo]:
        response = await self._call_any("ListSubscriptions", pb.ListSubscriptionsRequest())
        return sorted((subscription_info(s) for s in response.subscription), key=lambda s: s.id)

    async def delete_subscription(self, sub_id: str, *, force: bool = False) -> None:
        request = pb.DeleteSubscriptionRequest(subscriptionId=sub_id, force=force)
        target = await self._subscription_target(sub_id)
        await self._transport.call(target, "DeleteSubscription", request)

    def subscribe(self, sub_id: str, consumer_name: str) -> Consumer:
        """A consumer of a subscription; `async with` it, then `async for batch in consumer`."""
        return Consumer(self._transport, self._subscription_target, sub_id, consumer_name)

    # -- appends -------------------------------------------------------------------------

    async def shard_map(self, stream: str) -> ShardMap:
        """The stream's active shards by key range (cached until invalidated)."""
        shard_map = self._shard_maps.get(stream)
        if shard_map is None:
            shards = await self.list_shards(stream)
            shard_map = ShardMap(
                ShardRange(s.shard_id, s.start_key, s.end_key) for s in shards if s.is_active
            )
            self._shard_maps[stream] = shard_map
        return shard_map

    def invalidate(self, stream: str) -> None:
        """Forget what is cached about a stream's shards and their nodes."""
        self._shard_maps.pop(stream, None)
        self._stream_fields.pop(stream, None)
        self._shard_targets.pop(stream, None)

    async def append(
        self,
        stream: str,
        records: Sequence[Record],
        *,
        compression: Compression = Compression.NONE,
    ) -> list[RecordId]:
        """Append records, each to the shard its key hashes to; ids come back in input order.

        One append per shard, all in flight together. Appends that failed because the cached
        shards were stale (the stream was recreated) are retried once after rediscovery; that
        is safe because the server stored nothing.
        """
        if not records:
            return []
        try:
            return await self._append_records(stream, records, compression)
        except (errors.NotFound, errors.WrongServer):
            return await self._append_records(stream, records, compression)

    async def _append_records(
        self, stream: str, records: Sequence[Record], compression: Compression
    ) -> list[RecordId]:
        shard_map = await self.shard_map(stream)
        by_shard: dict[int, list[int]] = {}
        shard_of: dict[str, int] = {}  # keys repeat: hash each once per call
        for index, record in enumerate(records):
            key = record.key
            shard = shard_of.get(key)
            if shard is None:
                shard = shard_of[key] = shard_map.shard_for(key)
            by_shard.setdefault(shard, []).append(index)
        encoded = [encode_record(r) for r in records]
        if len(by_shard) == 1:
            (shard_id,) = by_shard
            return list(await self.append_batch(stream, shard_id, encoded, compression))
        groups = list(by_shard.items())
        results = await asyncio.gather(
            *(
                self.append_batch(stream, shard, [encoded[i] for i in indexes], compression)
                for shard, indexes in groups
            )
        )
        ids: list[RecordId | None] = [None] * len(records)
        for (_, indexes), shard_ids in zip(groups, results, strict=True):
            for index, rid in zip(indexes, shard_ids, strict=True):
                ids[index] = rid
        return [rid for rid in ids if rid is not None]

    async def append_encoded(
        self,
        stream: str,
        shard_id: int,
        encoded: Sequence[bytes],
        compression: Compression = Compression.NONE,
    ) -> list[RecordId]:
        """Append records encoded by `records.encode_raw/encode_json` to one shard.

        On NotFound (stream or shard gone), WrongServer or an unreachable node, the cached
        shards of the stream and the shard's node are dropped before the error is re-raised.
        """
        return list(await self.append_batch(stream, shard_id, encoded, compression))

    async def append_batch(
        self,
        stream: str,
        shard_id: int,
        encoded: Sequence[bytes],
        compression: Compression = Compression.NONE,
    ) -> RecordIds:
        """`append_encoded` for the hot path: the ids become `RecordId`s only when read, which
        halves the client's CPU per record when the caller does not look at them."""
        field = self._stream_fields.get(stream)
        if field is None:
            field = self._stream_fields[stream] = stream_field(stream)
        targets = self._shard_targets.get(stream)
        target = None if targets is None else targets.get(shard_id)
        if target is None:
            target = await self._lookup_shard(stream, shard_id)
        request = append_request(field, shard_id, encoded, compression)
        try:
            response = await self._transport.append(target, request)
        except (errors.NotFound, errors.HStreamUnavailable):
            self.invalidate(stream)
            raise
        return RecordIds(response)

    async def _lookup_shard(self, stream: str, shard_id: int) -> str:
        response = await self._call_any("LookupShard", pb.LookupShardRequest(shardId=shard_id))
        target = server_node(response.serverNode).target
        self._shard_targets.setdefault(stream, {})[shard_id] = target
        return target

    # -- readers -------------------------------------------------------------------------

    def read_shard(
        self,
        stream: str,
        shard_id: int,
        *,
        offset: Offset = "earliest",
        follow: bool = False,
        limit: int | None = None,
        max_records: int = 1000,
        poll_interval: float = 0.2,
    ) -> ShardReader:
        """Read one shard from `offset`: up to its tail as it was at the start, or, with
        `follow`, on and on. `async with` it, then `async for record in reader`."""
        return ShardReader(
            self._transport,
            self._call_any,
            stream,
            shard_id,
            offset=offset,
            follow=follow,
            limit=limit,
            max_records=max_records,
            poll_interval=poll_interval,
        )

    def read_stream(
        self,
        stream: str,
        *,
        offset: SpecialOffset = "earliest",
        follow: bool = False,
        limit: int | None = None,
        max_records: int = 1000,
        poll_interval: float = 0.2,
    ) -> StreamReader:
        """Read every shard of a stream (order is kept within a shard, not across shards)."""

        def open_shard(shard_id: int, shard_limit: int | None) -> ShardReader:
            return self.read_shard(
                stream,
                shard_id,
                offset=offset,
                follow=follow,
                limit=shard_limit,
                max_records=max_records,
                poll_interval=poll_interval,
            )

        return StreamReader(self.list_shards, stream, open_shard, limit=limit)

    async def tail_record_id(self, stream: str, shard_id: int) -> RecordId:
        """The id of the shard's last batch (batch id 0 when nothing was ever written)."""
        request = pb.GetTailRecordIdRequest(streamName=stream, shardId=shard_id)
        tail = (await self._call_any("GetTailRecordId", request)).tailRecordId
        return RecordId(tail.shardId, tail.batchId, tail.batchIndex)

    async def read_last(self, stream: str, count: int) -> list[ReceivedRecord]:
        """The last `count` records of a stream, oldest first (across shards by publish time).

        Bounded work, however long the stream: per shard, a few reads of at most `2 * count`
        records from offsets computed back from the shard's tail (`reader.last_records`).
        """
        if count <= 0:
            return []
        shards = await self.list_shards(stream)
        found = await asyncio.gather(
            *(self._last_of_shard(stream, shard.shard_id, count) for shard in shards)
        )
        records = [record for shard_records in found for record in shard_records]
        records.sort(key=lambda r: (r.publish_time, r.id.shard_id, r.id.batch_id, r.id.batch_index))
        return records[-count:]

    async def _last_of_shard(self, stream: str, shard_id: int, count: int) -> list[ReceivedRecord]:
        tail = (await self.tail_record_id(stream, shard_id)).batch_id

        async def read(start: int, limit: int | None) -> tuple[list[ReceivedRecord], bool]:
            records: list[ReceivedRecord] = []
            reader = self.read_shard(
                stream,
                shard_id,
                offset=RecordId(shard_id, start, 0),
                limit=None if limit is None else limit + 1,  # one more tells "that was all"
                max_records=1000 if limit is None else min(1000, limit + 1),
            )
            async with reader:
                async for record in reader:
                    if record.id.batch_id > tail:
                        return records, True  # appended since: not part of this answer
                    if limit is not None and len(records) == limit:
                        return records, False
                    records.append(record)
            return records, True

        return await last_records(tail, read, count)

    # -- routing and failover ------------------------------------------------------------

    async def _subscription_target(self, sub_id: str) -> str:
        request = pb.LookupSubscriptionRequest(subscriptionId=sub_id)
        response = await self._call_any("LookupSubscription", request)
        return server_node(response.serverNode).target

    async def _call_any(self, method: str, request: Any) -> Any:
        """A call any node can serve: the current node, else the next reachable one."""
        tried: set[str] = set()
        while True:
            target = self._current
            try:
                return await self._transport.call(target, method, request)
            except errors.HStreamUnavailable as exc:
                if not node_unreachable(exc):
                    raise
                tried.add(target)
                logger.warning("HStreamDB node %s unreachable, failing over", target)
                await self._fail_over(tried, exc)

    def _candidates(self) -> list[str]:
        known = [node.target for node in self._nodes]
        return [self._current, *known, *(s for s in self._seeds if s not in known)]

    async def _fail_over(self, tried: set[str], cause: errors.HStreamError | None) -> None:
        """Make the first reachable untried node current and take its view of the cluster."""
        last = cause
        for target in dict.fromkeys(self._candidates()):
            if target in tried:
                continue
            tried.add(target)
            try:
                response = await self._transport.call(target, "DescribeCluster", Empty())
            except errors.HStreamUnavailable as exc:
                if not node_unreachable(exc):
                    raise
                last = exc
                continue
            self._current = target
            self._nodes = [server_node(node) for node in response.serverNodes]
            return
        if last is None:
            raise errors.HStreamUnavailable("no HStreamDB node to connect to")
        raise last


__all__ = ["HStreamClient"]
