"""The hand-written AppendRequest bytes are exactly what protobuf would serialize."""

import pytest

from bridge.hstream._api import pb
from bridge.hstream._wire import RecordIds, append_request, record_ids, stream_field
from bridge.hstream.records import Compression, RecordId, batched_record, encode_raw


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.ZSTD])
@pytest.mark.parametrize("count", [1, 7, 1000])
@pytest.mark.parametrize("shard_id", [0, 1, 2**40 + 3])
def test_append_request_is_byte_identical_to_protobuf(
    compression: Compression, count: int, shard_id: int
) -> None:
    encoded = [
        encode_raw(b"x" * (i % 300), key=f"k{i}", attributes={"a": "b"}) for i in range(count)
    ]
    ours = append_request(stream_field("stream_é"), shard_id, encoded, compression)
    theirs = pb.AppendRequest(
        streamName="stream_é", shardId=shard_id, records=batched_record(encoded, compression)
    ).SerializeToString()
    assert ours == theirs


def test_gzip_append_request_decodes_to_the_same_records() -> None:
    encoded = [encode_raw(b"payload %d" % i) for i in range(50)]
    request = pb.AppendRequest.FromString(
        append_request(stream_field("s"), 3, encoded, Compression.GZIP)
    )
    assert (request.streamName, request.shardId) == ("s", 3)
    assert request.records.compressionType == Compression.GZIP
    assert request.records.batchSize == 50


def test_record_ids_of_contiguous_and_irregular_answers() -> None:
    contiguous = pb.AppendResponse(
        recordIds=[pb.RecordId(shardId=4, batchId=9, batchIndex=i) for i in range(3)]
    )
    assert record_ids(contiguous.recordIds) == [
        RecordId(4, 9, 0),
        RecordId(4, 9, 1),
        RecordId(4, 9, 2),
    ]
    irregular = pb.AppendResponse(
        recordIds=[pb.RecordId(shardId=4, batchId=b, batchIndex=i) for b, i in [(9, 0), (10, 1)]]
    )
    assert record_ids(irregular.recordIds) == [RecordId(4, 9, 0), RecordId(4, 10, 1)]
    assert record_ids(pb.AppendResponse().recordIds) == []


def test_record_ids_sequence_reads_like_a_list_of_ids() -> None:
    response = pb.AppendResponse(
        recordIds=[pb.RecordId(shardId=4, batchId=9, batchIndex=i) for i in range(3)]
    )
    ids = RecordIds(response)
    expected = [RecordId(4, 9, 0), RecordId(4, 9, 1), RecordId(4, 9, 2)]
    assert len(ids) == 3
    assert ids == expected
    assert list(ids) == expected
    assert (ids[0], ids[-1], ids[1:]) == (expected[0], expected[2], expected[1:])
    assert RecordId(4, 9, 1) in ids
