"""Stored batches as the API returns them: `ReceivedRecord` messages, whole or a subset.

A stored batch goes out exactly as it came in. Only when some of its records must be left out
(a redelivery of the still unacked ones, a reader that starts in the middle of a batch) is the
payload decoded, filtered and compressed again with the batch's own compression, because
clients require as many records in the payload as there are record ids.
"""

from collections.abc import Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from bridge.hstream._api import pb
from bridge.hstream.records import Compression, compress, decompress
from bridge.hstream.store.engine import StoredBatch


def timestamp(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def received_record(shard_id: int, batch: StoredBatch, indexes: Sequence[int] | None = None) -> Any:
    """A `ReceivedRecord` for a stored batch; `indexes` selects records (None: all of them)."""
    if indexes is None or len(indexes) == batch.batch_size:
        payload = batch.payload
        indexes = range(batch.batch_size)
    else:
        payload = subset_payload(batch, indexes)
    ids = [pb.RecordId(shardId=shard_id, batchId=batch.batch_id, batchIndex=i) for i in indexes]
    record = pb.BatchedRecord(
        compressionType=batch.compression,
        publishTime=timestamp(batch.publish_ms),
        batchSize=len(ids),
        payload=payload,
    )
    return pb.ReceivedRecord(recordIds=ids, record=record)


def subset_payload(batch: StoredBatch, indexes: Sequence[int]) -> bytes:
    """The batch payload holding only the records at `indexes`, compressed like the original."""
    records = pb.BatchHStreamRecords()
    records.ParseFromString(decompress(batch.payload, batch.compression))
    chosen = pb.BatchHStreamRecords(records=[records.records[i] for i in indexes])
    data: bytes = chosen.SerializeToString()
    return compress(data, Compression(batch.compression))
