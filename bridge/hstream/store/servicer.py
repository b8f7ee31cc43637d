"""The HStreamDB gRPC API served by the embedded store.

Errors are raised as the exceptions of `bridge.hstream.errors` and turned into a gRPC status in
one place (`_abort`): the class's status code and, when HStreamDB has an error code for the case,
its JSON body. Ordinary errors are never UNAVAILABLE: the official client treats UNAVAILABLE as
"this node is gone" and drops the node. The store is a single node, so every lookup answers its
own advertised address and echoes the id it was asked about.
"""

import asyncio
import base64
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from bridge.hstream import errors
from bridge.hstream._api import (
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    SPECIAL_OFFSET_LATEST,
    HStreamApiServicer,
    pb,
)
from bridge.hstream.names import name_problem
from bridge.hstream.records import varint
from bridge.hstream.shards import split_key_space
from bridge.hstream.store.batches import received_record, timestamp
from bridge.hstream.store.engine import (
    Engine,
    ShardMeta,
    StoreClosed,
    StreamMeta,
    SubscriptionMeta,
)
from bridge.hstream.store.fetch import ConsumerSession, SubscriptionRuntime

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = "0.1.0"
SERVER_VERSION = "0.1.0-embedded"
NODE_ID = 1
READ_MAX_BATCHES = 64
READ_MAX_BYTES = 16 << 20
STREAM_READ_BATCHES = 16
READER_MAX_WAIT = 30.0

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
else:  # not subscriptable at run time
    MethodHandler = grpc.RpcMethodHandler
S = TypeVar("S", bound="StoreServicer")
Handler = Callable[[S, Any, Context], Awaitable[Any]]


_INDEX_FIELDS = [b"\x18" + varint(i) for i in range(1 << 14)]


def record_ids_response(stream: str, shard_id: int, batch_id: int, count: int) -> Any:
    """An `AppendResponse` with `count` record ids, encoded in bulk and parsed once.

    Building a thousand RecordId messages one by one costs more than the rest of an append.
    Every id is `tag, length, shardId+batchId fields, batchIndex field`; the first three parts
    are the same for all indexes of one varint width, so `bytes.join` lays the ids out in C.
    """
    head = b"\x08" + varint(shard_id) + b"\x10" + varint(batch_id)
    parts = [b"\x0a", varint(len(name := stream.encode())), name, b"\x10", varint(shard_id)]
    width_start = 0
    for width_end in (0x80, 1 << 14):  # batchIndex fields of 2, then 3 bytes
        end = min(count, width_end)
        if end > width_start:
            fields = _INDEX_FIELDS[width_start:end]
            sep = b"\x1a" + varint(len(head) + len(fields[0])) + head
            parts += (sep, sep.join(fields))
        width_start = width_end
    for i in range(1 << 14, count):
        body = b"\x18" + varint(i)
        parts.append(b"\x1a" + varint(len(head) + len(body)) + head + body)
    return pb.AppendResponse.FromString(b"".join(parts))


async def _abort(context: Context, exc: errors.HStreamError) -> None:
    details = exc.details() if exc.code is not None else exc.message
    await context.abort(exc.status, details)


def rpc(method: Handler[S]) -> Handler[S]:
    """Turn the store's exceptions into gRPC statuses for a unary method."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Any, context: Context) -> Any:
        try:
            return await method(self, request, context)
        except errors.HStreamError as exc:
            await _abort(context, exc)
        except StoreClosed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            logger.exception("%s failed", method.__name__)
            await _abort(context, errors.InternalError(f"{type(exc).__name__}: {exc}"))
        return None  # unreachable: abort raises

    return wrapper


def _unimplemented(name: str) -> Callable[..., Awaitable[None]]:
    async def handler(self: Any, request: Any, context: Context) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by the embedded store"
        )

    handler.__name__ = name
    return handler


@dataclass(slots=True)
class ShardReader:
    reader_id: str
    stream: str
    shard_id: int
    after: int
    skip_below: int
    timeout_ms: int
    request: Any


class StoreServicer(HStreamApiServicer):  # type: ignore[misc]
    def __init__(
        self,
        engine: Engine,
        *,
        host: str,
        port: int = 0,
        max_record_bytes: int = 1 << 20,
    ) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self.max_record_bytes = max_record_bytes
        self._started = time.monotonic()
        self._meta_lock = asyncio.Lock()
        self._runtimes: dict[str, SubscriptionRuntime] = {}
        self._readers: dict[str, ShardReader] = {}

    # ------------------------------------------------------------------ cluster

    def server_node(self) -> Any:
        version = pb.HStreamVersion(version=SERVER_VERSION, commit="embedded")
        return pb.ServerNode(id=NODE_ID, host=self.host, port=self.port, version=version)

    def close_consumers(self) -> None:
        for runtime in self._runtimes.values():
            runtime.close_all("store shutting down")

    @rpc
    async def Echo(self, request: Any, context: Context) -> Any:
        return pb.EchoResponse(msg=request.msg)

    @rpc
    async def DescribeCluster(self, request: Any, context: Context) -> Any:
        node = self.server_node()
        return pb.DescribeClusterResponse(
            protocolVersion=PROTOCOL_VERSION,
            serverNodes=[node],
            serverNodesStatus=[pb.ServerNodeStatus(node=node, state=pb.NodeState.Value("Running"))],
            clusterUpTime=int(time.monotonic() - self._started),
        )

    @rpc
    async def LookupShard(self, request: Any, context: Context) -> Any:
        return pb.LookupShardResponse(shardId=request.shardId, serverNode=self.server_node())

    @rpc
    async def LookupSubscription(self, request: Any, context: Context) -> Any:
        return pb.LookupSubscriptionResponse(
            subscriptionId=request.subscriptionId, serverNode=self.server_node()
        )

    @rpc
    async def LookupShardReader(self, request: Any, context: Context) -> Any:
        return pb.LookupShardReaderResponse(
            readerId=request.readerId, serverNode=self.server_node()
        )

    @rpc
    async def LookupResource(self, request: Any, context: Context) -> Any:
        return self.server_node()

    @rpc
    async def LookupKey(self, request: Any, context: Context) -> Any:
        return self.server_node()

    # ------------------------------------------------------------------ streams

    def _stream(self, name: str) -> StreamMeta:
        stream = self.engine.streams.get(name)
        if stream is None:
            raise errors.StreamNotFound(f"stream {name!r} not found", extra=name)
        return stream

    def _shard(self, stream: str, shard_id: int) -> ShardMeta:
        self._stream(stream)
        shard = self.engine.shards.get(shard_id)
        if shard is None or shard.stream != stream:
            raise errors.NotFound(f"shard {shard_id} not found in stream {stream!r}")
        return shard

    @staticmethod
    def _stream_message(stream: StreamMeta) -> Any:
        return pb.Stream(
            streamName=stream.name,
            replicationFactor=stream.replication,
            backlogDuration=stream.backlog,
            shardCount=stream.shard_count,
            creationTime=timestamp(stream.created_ms),
        )

    @rpc
    async def CreateStream(self, request: Any, context: Context) -> Any:
        name = request.streamName
        problem = name_problem(name)
        if problem is not None:
            raise errors.InvalidName(f"invalid stream name: {problem}", code=204, extra=name)
        if request.replicationFactor == 0:
            raise errors.InvalidReplicationFactor("stream replicationFactor cannot be zero")
        if request.shardCount <= 0:
            raise errors.InvalidShardCount("shardCount should be a positive number")
        async with self._meta_lock:
            if name in self.engine.streams:
                raise errors.StreamExists(f"stream {name!r} already exists", extra=name)
            meta = StreamMeta(
                name,
                request.replicationFactor,
                request.backlogDuration,
                request.shardCount,
                time.time_ns() // 1_000_000,
            )
            await self.engine.create_stream(meta, split_key_space(request.shardCount))
        return self._stream_message(meta)

    @rpc
    async def GetStream(self, request: Any, context: Context) -> Any:
        return pb.GetStreamResponse(stream=self._stream_message(self._stream(request.name)))

    @rpc
    async def ListStreams(self, request: Any, context: Context) -> Any:
        return self._list_streams("")

    @rpc
    async def ListStreamsWithPrefix(self, request: Any, context: Context) -> Any:
        return self._list_streams(request.prefix)

    def _list_streams(self, prefix: str) -> Any:
        streams = sorted(
            (s for s in self.engine.streams.values() if s.name.startswith(prefix)),
            key=lambda s: s.name,
        )
        return pb.ListStreamsResponse(streams=[self._stream_message(s) for s in streams])

    @rpc
    async def DeleteStream(self, request: Any, context: Context) -> Any:
        name = request.streamName
        async with self._meta_lock:
            if name not in self.engine.streams:
                if request.ignoreNonExist:
                    return empty_pb2.Empty()
                raise errors.StreamNotFound(f"stream {name!r} not found", extra=name)
            subs = [s.sub_id for s in self.engine.subscriptions.values() if s.stream == name]
            if subs and not request.force:
                raise errors.StreamHasSubscriptions(
                    f"stream {name!r} has subscriptions: {', '.join(sorted(subs))}", extra=name
                )
            await self.engine.delete_stream(name)
            for sub in subs:
                runtime = self._runtimes.pop(sub, None)
                if runtime is not None:
                    runtime.close_all("stream deleted")
        return empty_pb2.Empty()

    @rpc
    async def ListShards(self, request: Any, context: Context) -> Any:
        self._stream(request.streamName)
        shards = [
            pb.Shard(
                streamName=s.stream,
                shardId=s.shard_id,
                startHashRangeKey=str(s.start),
                endHashRangeKey=str(s.end),
                epoch=s.epoch,
                isActive=s.active,
            )
            for s in self.engine.stream_shards(request.streamName)
        ]
        return pb.ListShardsResponse(shards=shards)

    @rpc
    async def Append(self, request: Any, context: Context) -> Any:
        stream = request.streamName
        shard_id = request.shardId
        shard = self.engine.shards.get(shard_id)
        if shard is None or shard.stream != stream:
            self._shard(stream, shard_id)  # raises the right error
        batch = request.records
        size = batch.batchSize
        payload = batch.payload
        if size == 0 or not payload:
            raise errors.EmptyBatch("empty batched record")
        if len(payload) > self.max_record_bytes:
            raise errors.RecordTooLarge(
                f"batch payload of {len(payload)} bytes is over the limit of"
                f" {self.max_record_bytes} bytes"
            )
        compression = batch.compressionType
        if not COMPRESSION_NONE <= compression <= COMPRESSION_ZSTD:
            raise errors.InvalidArgument(f"unknown compression type {compression}")
        batch_id, _ = await self.engine.append(shard_id, compression, size, payload)
        return record_ids_response(stream, shard_id, batch_id, size)

    @rpc
    async def GetTailRecordId(self, request: Any, context: Context) -> Any:
        shard = self._shard(request.streamName, request.shardId)
        tail = self.engine.tail(shard.shard_id)
        return pb.GetTailRecordIdResponse(
            tailRecordId=pb.RecordId(shardId=shard.shard_id, batchId=tail, batchIndex=0)
        )

    @rpc
    async def TrimShard(self, request: Any, context: Context) -> Any:
        shard = self._shard(request.streamName, request.shardId)
        after, _ = await self._resolve(shard.shard_id, request.trimPoint)
        # A record offset trims up to and including its batch, as LogDevice trims an LSN.
        which = request.trimPoint.WhichOneof("offset")
        upto = after + 1 if which == "recordOffset" else after
        await self.engine.trim(shard.shard_id, upto)
        return empty_pb2.Empty()

    @rpc
    async def TrimStream(self, request: Any, context: Context) -> Any:
        self._stream(request.streamName)
        point = request.trimPoint
        which = point.WhichOneof("offset")
        for shard in self.engine.stream_shards(request.streamName):
            sid = shard.shard_id
            if which == "timestampOffset":
                upto = await self.engine.first_batch_at(sid, point.timestampOffset.timestampInMs)
                await self.engine.trim(sid, upto - 1)
            elif which == "specialOffset" and point.specialOffset == SPECIAL_OFFSET_LATEST:
                await self.engine.trim(sid, self.engine.tail(sid))
        return empty_pb2.Empty()

    async def _resolve(self, shard_id: int, offset: Any) -> tuple[int, int]:
        """A `ShardOffset` as (read after this batch id, skip records below this index)."""
        which = offset.WhichOneof("offset")
        if which == "recordOffset":
            rid = offset.recordOffset
            return max(rid.batchId - 1, 0), rid.batchIndex
        if which == "timestampOffset":
            first = await self.engine.first_batch_at(shard_id, offset.timestampOffset.timestampInMs)
            return first - 1, 0
        if which == "specialOffset" and offset.specialOffset == SPECIAL_OFFSET_LATEST:
            return self.engine.tail(shard_id), 0
        return 0, 0

    # ------------------------------------------------------------------ subscriptions

    def _subscription(self, sub_id: str) -> SubscriptionMeta:
        meta = self.engine.subscriptions.get(sub_id)
        if meta is None:
            raise errors.SubscriptionNotFound(f"subscription {sub_id!r} not found", extra=sub_id)
        return meta

    @staticmethod
    def _subscription_message(meta: SubscriptionMeta) -> Any:
        return pb.Subscription(
            subscriptionId=meta.sub_id,
            streamName=meta.stream,
            ackTimeoutSeconds=meta.ack_timeout,
            maxUnackedRecords=meta.max_unacked,
            offset=meta.offset,
            creationTime=timestamp(meta.created_ms),
        )

    @rpc
    async def CreateSubscription(self, request: Any, context: Context) -> Any:
        sub_id = request.subscriptionId
        problem = name_problem(sub_id)
        if problem is not None:
            raise errors.InvalidName(f"invalid subscription id: {problem}", code=304, extra=sub_id)
        if request.ackTimeoutSeconds <= 0:
            raise errors.InvalidArgument("ackTimeoutSeconds must be positive")
        if request.maxUnackedRecords <= 0:
            raise errors.InvalidArgument("maxUnackedRecords must be positive")
        async with self._meta_lock:
            stream = request.streamName
            if stream not in self.engine.streams:
                raise errors.SubscriptionOnMissingStream(
                    f"stream {stream!r} of subscription {sub_id!r} not found", extra=stream
                )
            if sub_id in self.engine.subscriptions:
                raise errors.SubscriptionExists(
                    f"subscription {sub_id!r} already exists", extra=sub_id
                )
            meta = SubscriptionMeta(
                sub_id,
                stream,
                request.ackTimeoutSeconds,
                request.maxUnackedRecords,
                request.offset,
                time.time_ns() // 1_000_000,
            )
            latest = request.offset == SPECIAL_OFFSET_LATEST
            start = {
                s.shard_id: self.engine.tail(s.shard_id) if latest else 0
                for s in self.engine.stream_shards(stream)
            }
            await self.engine.create_subscription(meta, start)
        return self._subscription_message(meta)

    @rpc
    async def GetSubscription(self, request: Any, context: Context) -> Any:
        meta = self._subscription(request.id)
        runtime = self._runtimes.get(meta.sub_id)
        if runtime is not None:
            acked = {sid: c.progress.acked_upto for sid, c in runtime.cursors.items()}
        else:
            saved = self.engine.progress.get(meta.sub_id, {})
            acked = {sid: p.acked_upto for sid, p in saved.items()}
        offsets = [
            pb.SubscriptionOffset(shardId=sid, batchId=b) for sid, b in sorted(acked.items())
        ]
        return pb.GetSubscriptionResponse(
            subscription=self._subscription_message(meta), offsets=offsets
        )

    @rpc
    async def ListSubscriptions(self, request: Any, context: Context) -> Any:
        return self._list_subscriptions("")

    @rpc
    async def ListSubscriptionsWithPrefix(self, request: Any, context: Context) -> Any:
        return self._list_subscriptions(request.prefix)

    def _list_subscriptions(self, prefix: str) -> Any:
        subs = sorted(
            (s for s in self.engine.subscriptions.values() if s.sub_id.startswith(prefix)),
            key=lambda s: s.sub_id,
        )
        return pb.ListSubscriptionsResponse(
            subscription=[self._subscription_message(s) for s in subs]
        )

    @rpc
    async def CheckSubscriptionExist(self, request: Any, context: Context) -> Any:
        return pb.CheckSubscriptionExistResponse(
            exists=request.subscriptionId in self.engine.subscriptions
        )

    @rpc
    async def DeleteSubscription(self, request: Any, context: Context) -> Any:
        sub_id = request.subscriptionId
        async with self._meta_lock:
            self._subscription(sub_id)
            runtime = self._runtimes.get(sub_id)
            if runtime is not None and runtime.consumers and not request.force:
                raise errors.SubscriptionHasConsumers(
                    f"subscription {sub_id!r} has active consumers", extra=sub_id
                )
            await self.engine.delete_subscription(sub_id)
            runtime = self._runtimes.pop(sub_id, None)
            if runtime is not None:
                runtime.close_all("subscription deleted")
        return empty_pb2.Empty()

    @rpc
    async def ListConsumers(self, request: Any, context: Context) -> Any:
        self._subscription(request.subscriptionId)
        runtime = self._runtimes.get(request.subscriptionId)
        sessions = runtime.consumers if runtime is not None else []
        return pb.ListConsumersResponse(
            consumers=[
                pb.Consumer(name=s.name, uri=s.uri, userAgent=s.user_agent) for s in sessions
            ]
        )

    def _runtime(self, meta: SubscriptionMeta) -> SubscriptionRuntime:
        runtime = self._runtimes.get(meta.sub_id)
        if runtime is None:
            shard_ids = [s.shard_id for s in self.engine.stream_shards(meta.stream)]
            runtime = SubscriptionRuntime(meta, self.engine, shard_ids)
            self._runtimes[meta.sub_id] = runtime
        return runtime

    async def StreamingFetch(self, request_iterator: Any, context: Context) -> None:
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        try:
            meta = self._subscription(first.subscriptionId)
        except errors.HStreamError as exc:
            await _abort(context, exc)
            return
        runtime = self._runtime(meta)
        metadata = dict(context.invocation_metadata() or ())
        session = ConsumerSession(
            name=first.consumerName,
            uri=context.peer(),
            user_agent=str(metadata.get("user-agent", "")),
        )
        runtime.join(session)
        if len(first.ackIds):
            runtime.ack(first.ackIds)
        acks = asyncio.create_task(self._read_acks(requests, runtime, session))
        try:

            async def send(record: Any) -> None:
                await context.write(pb.StreamingFetchResponse(receivedRecords=record))

            await runtime.deliver(session, send)
        finally:
            acks.cancel()
            runtime.leave(session)
        if session.close_reason in ("subscription deleted", "stream deleted"):
            await _abort(
                context, errors.SubscriptionNotFound(session.close_reason, extra=meta.sub_id)
            )

    @staticmethod
    async def _read_acks(
        requests: Any, runtime: SubscriptionRuntime, session: ConsumerSession
    ) -> None:
        try:
            async for request in requests:
                if len(request.ackIds):
                    runtime.ack(request.ackIds)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call broke: the consumer is gone
            logger.debug("consumer %s: request stream ended: %s", session.name, exc)
        session.close("consumer finished")

    # ------------------------------------------------------------------ shard readers

    @rpc
    async def CreateShardReader(self, request: Any, context: Context) -> Any:
        shard = self._shard(request.streamName, request.shardId)
        reader_id = request.readerId
        if not reader_id:
            raise errors.InvalidArgument("readerId is empty")
        if reader_id in self._readers:
            raise errors.AlreadyExists(f"shard reader {reader_id!r} already exists")
        after, skip = await self._resolve(shard.shard_id, request.shardOffset)
        self._readers[reader_id] = ShardReader(
            reader_id, shard.stream, shard.shard_id, after, skip, request.timeout, request
        )
        return pb.CreateShardReaderResponse(
            streamName=request.streamName,
            shardId=request.shardId,
            shardOffset=request.shardOffset,
            readerId=reader_id,
            timeout=request.timeout,
        )

    def _reader(self, reader_id: str) -> ShardReader:
        reader = self._readers.get(reader_id)
        if reader is None:
            raise errors.NotFound(f"shard reader {reader_id!r} not found")
        return reader

    @rpc
    async def ListShardReaders(self, request: Any, context: Context) -> Any:
        return pb.ListShardReadersResponse(readerId=sorted(self._readers))

    @rpc
    async def DeleteShardReader(self, request: Any, context: Context) -> Any:
        self._reader(request.readerId)
        del self._readers[request.readerId]
        return empty_pb2.Empty()

    @rpc
    async def ReadShard(self, request: Any, context: Context) -> Any:
        reader = self._reader(request.readerId)
        max_records = max(request.maxRecords, 1)
        batches = await self._read_or_wait(reader, min(max_records, READ_MAX_BATCHES))
        out: list[Any] = []
        count = size = 0
        for batch in batches:
            if count >= max_records or (out and size + len(batch.payload) > READ_MAX_BYTES):
                break
            indexes: Sequence[int] | None = None
            if batch.batch_id == reader.after + 1 and reader.skip_below > 0:
                indexes = range(min(reader.skip_below, batch.batch_size), batch.batch_size)
            reader.after = batch.batch_id
            reader.skip_below = 0
            if indexes is not None and not indexes:
                continue
            record = received_record(reader.shard_id, batch, indexes)
            out.append(record)
            count += len(record.recordIds)
            size += len(batch.payload)
        return pb.ReadShardResponse(receivedRecords=out)

    async def _read_or_wait(self, reader: ShardReader, limit: int) -> list[Any]:
        """The next batches of a reader; waits up to its timeout for one when none is there."""
        sid = reader.shard_id
        batches = await self.engine.read(sid, reader.after, limit)
        if batches or reader.timeout_ms <= 0:
            return batches
        event = asyncio.Event()
        self.engine.watch(sid, event)
        try:
            deadline = time.monotonic() + min(reader.timeout_ms / 1000, READER_MAX_WAIT)
            while not batches and self.engine.tail(sid) <= reader.after:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or sid not in self.engine.shards:
                    break
                event.clear()
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    break
            return await self.engine.read(sid, reader.after, limit)
        finally:
            self.engine.unwatch(sid, event)

    async def ReadShardStream(self, request: Any, context: Context) -> None:
        try:
            await self._read_shard_stream(request, context)
        except errors.HStreamError as exc:
            await _abort(context, exc)

    async def _read_shard_stream(self, request: Any, context: Context) -> None:
        sid = request.shardId
        if sid not in self.engine.shards:
            raise errors.NotFound(f"shard {sid} not found")
        after, skip = await self._resolve(sid, getattr(request, "from"))
        until: int | None = None
        if request.HasField("until"):
            until_after, _ = await self._resolve(sid, request.until)
            which = request.until.WhichOneof("offset")
            until = until_after + 1 if which == "recordOffset" else until_after
        limit = request.maxReadBatches
        sent = 0
        event = asyncio.Event()
        self.engine.watch(sid, event)
        try:
            while sid in self.engine.shards:
                event.clear()
                batches = await self.engine.read(sid, after, STREAM_READ_BATCHES, until=until)
                for batch in batches:
                    indexes: Sequence[int] | None = None
                    if batch.batch_id == after + 1 and skip > 0:
                        indexes = range(min(skip, batch.batch_size), batch.batch_size)
                    after, skip = batch.batch_id, 0
                    if indexes is not None and not indexes:
                        continue
                    record = received_record(sid, batch, indexes)
                    await context.write(pb.ReadShardStreamResponse(receivedRecords=[record]))
                    sent += 1
                    if limit and sent >= limit:
                        return
                if until is not None and self.engine.tail(sid) >= until and not batches:
                    return
                if not batches:
                    await event.wait()
        finally:
            self.engine.unwatch(sid, event)


_IMPLEMENTED = {name for name, value in vars(StoreServicer).items() if callable(value)}
for _name in dir(HStreamApiServicer):
    if _name[0].isupper() and _name not in _IMPLEMENTED:
        setattr(StoreServicer, _name, _unimplemented(_name))


class BasicAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without `authorization: Basic base64(user:pass)` (UNAUTHENTICATED)."""

    def __init__(self, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._expected = f"Basic {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata or ()
        given = next((v for k, v in metadata if k == "authorization"), "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if handler is None or hmac.compare_digest(given_bytes, self._expected):
            return handler
        return _denying(handler)


def _denying(handler: MethodHandler) -> MethodHandler:
    async def deny(request: Any, context: Context) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong credentials")

    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
