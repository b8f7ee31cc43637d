"""A subscription consumer over HStreamDB's bidirectional `StreamingFetch`.

    async with client.subscribe("temps_sub", "worker-1") as consumer:
        async for batch in consumer:          # one stored batch: list[ReceivedRecord]
            handle(batch)
            await consumer.ack([r.id for r in batch])

The first request registers the consumer (`{subscriptionId, consumerName, ackIds: []}`); acks
ride on later requests. Acks made while a write is in flight are gathered into the next request,
so many small `ack()` calls cost few messages. Unacked records come back after the
subscription's ack timeout.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from bridge.hstream._api import pb
from bridge.hstream._transport import Transport, rpc_errors
from bridge.hstream.records import ReceivedRecord, RecordId, decode_received

logger = logging.getLogger(__name__)


class Consumer:
    def __init__(
        self,
        transport: Transport,
        locate: Callable[[str], Awaitable[str]],
        sub_id: str,
        consumer_name: str,
    ) -> None:
        self._transport = transport
        self._locate = locate
        self.sub_id = sub_id
        self.name = consumer_name
        self._call: Any = None
        self._pending: list[Any] = []
        self._writing = False
        self._closed = False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Find the node serving the subscription and register this consumer there."""
        target = await self._locate(self.sub_id)
        stub = self._transport.connection(target).stub
        self._call = stub.StreamingFetch(metadata=self._transport.metadata)
        with rpc_errors():
            await self._call.write(self._request([]))

    def _request(self, ack_ids: list[Any]) -> Any:
        return pb.StreamingFetchRequest(
            subscriptionId=self.sub_id, consumerName=self.name, ackIds=ack_ids
        )

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> list[ReceivedRecord]:
        if self._call is None or self._closed:
            raise StopAsyncIteration
        call = self._call
        try:
            with rpc_errors():
                response = await call.read()
        except asyncio.CancelledError:
            # close() from another task cancels the call; that ends the iteration. A
            # cancellation of this task itself (cancelling() > 0) propagates.
            task = asyncio.current_task()
            if self._call is None and task is not None and task.cancelling() == 0:
                raise StopAsyncIteration from None
            raise
        if response is grpc.aio.EOF:
            raise StopAsyncIteration
        received = response.receivedRecords
        return decode_received(received.recordIds, received.record)

    async def ack(self, ids: Sequence[RecordId]) -> None:
        """Acknowledge records; ids acked while another write is running join the next one."""
        if self._call is None:
            raise RuntimeError("consumer is not open")
        self._pending.extend(
            pb.RecordId(shardId=i.shard_id, batchId=i.batch_id, batchIndex=i.batch_index)
            for i in ids
        )
        if self._writing:
            return
        self._writing = True
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                with rpc_errors():
                    await self._call.write(self._request(batch))
        finally:
            self._writing = False

    async def close(self) -> None:
        """Stop consuming: the server re-sends whatever was not acked to other consumers."""
        if self._call is None or self._closed:
            return
        self._closed = True
        call, self._call = self._call, None
        try:
            with rpc_errors():
                await call.done_writing()
        except Exception:  # the stream may already be broken; closing must not fail
            logger.debug("closing consumer %s of %s", self.name, self.sub_id, exc_info=True)
        call.cancel()
