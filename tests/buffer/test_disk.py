"""The disk buffer alone, on real files: durability, recovery, torn tails, corruption, limits."""

import asyncio
from pathlib import Path

import pytest

from bridge.buffer import DiskBuffer, Entry
from bridge.buffer import log as buffer_log


def entry(n: int, size: int = 50) -> Entry:
    return Entry(f"stream{n % 3}", "rule", f"key{n % 5}", b"%08d" % n + b"x" * size)


async def write(buffer: DiskBuffer, numbers: range, size: int = 50) -> None:
    await asyncio.gather(*(buffer.add([entry(n, size)]) for n in numbers))


def accepting(buffer: DiskBuffer) -> bool:
    return buffer.accepting


async def read_all(buffer: DiskBuffer, after: int = 0) -> list[int]:
    out: list[int] = []
    while True:
        records = await buffer.read(after, 2048)
        if not records:
            return out
        out.extend(int(r.data[:8]) for r in records)
        after = records[-1].seq


async def test_added_records_are_durable_and_read_back_in_order_after_reopening(
    tmp_path: Path,
) -> None:
    buffer = DiskBuffer(tmp_path, limit_bytes=1 << 20)
    await buffer.open()
    await write(buffer, range(500))
    assert buffer.durable_seq == 500
    assert buffer.fsyncs_total < 500, "appends that come together share one fsync"
    await buffer.aclose()
    again = DiskBuffer(tmp_path, limit_bytes=1 << 20)
    await again.open()
    assert again.backlog_records == 500
    assert await read_all(again) == list(range(500))
    records = await again.read(0, 1)
    assert (records[0].stream, records[0].key, records[0].rule_id) == ("stream0", "key0", "rule")
    await again.aclose()


async def test_the_ledger_moves_over_the_forwarded_prefix_and_segments_are_deleted(
    tmp_path: Path,
) -> None:
    buffer = DiskBuffer(tmp_path, limit_bytes=1 << 20, segment_bytes=4096, ledger_interval=0.01)
    await buffer.open()
    for start in range(0, 400, 50):  # eight writes: a segment rolls over between writes
        await write(buffer, range(start, start + 50))
    files_before = len(buffer_log.segments(tmp_path))
    assert files_before > 2
    for seq in range(1, 301):
        if seq != 150:
            buffer.forwarded(seq)
    await asyncio.sleep(0.1)
    assert buffer.committed_seq == 149, "the ledger may only cover a contiguous prefix"
    buffer.forwarded(150)
    await asyncio.sleep(0.1)
    assert buffer.committed_seq == 300
    assert len(buffer_log.segments(tmp_path)) < files_before
    assert buffer.bytes_on_disk == sum(p.stat().st_size for p in buffer_log.segments(tmp_path))
    await buffer.aclose()
    again = DiskBuffer(tmp_path, limit_bytes=1 << 20)
    await again.open()
    assert await read_all(again, again.committed_seq) == list(range(300, 400))
    await again.aclose()


async def test_a_torn_tail_is_cut_off_and_the_rest_kept(tmp_path: Path) -> None:
    buffer = DiskBuffer(tmp_path, limit_bytes=1 << 20)
    await buffer.open()
    await write(buffer, range(10))
    await buffer.aclose()
    (segment,) = buffer_log.segments(tmp_path)
    whole = segment.read_bytes()
    torn = buffer_log.encode(11, 0, entry(10))[:-7]  # a kill -9 in the middle of a write
    segment.write_bytes(whole + torn)
    again = DiskBuffer(tmp_path, limit_bytes=1 << 20)
    await again.open()
    assert again.truncated == len(torn)
    assert again.corrupt == []
    assert segment.read_bytes() == whole
    assert await read_all(again) == list(range(10))
    await write(again, range(10, 12))  # and it goes on from there
    assert await read_all(again) == list(range(12))
    await again.aclose()


async def test_corruption_is_reported_with_file_and_offset_and_the_good_records_still_go_out(
    tmp_path: Path,
) -> None:
    buffer = DiskBuffer(tmp_path, limit_bytes=1 << 20)
    await buffer.open()
    await write(buffer, range(10))
    await write(buffer, range(10, 20))
    await buffer.aclose()
    (segment,) = buffer_log.segments(tmp_path)
    data = bytearray(segment.read_bytes())
    record_size = len(buffer_log.encode(1, 0, entry(0)))
    bad_offset = 4 * record_size + 30
    data[bad_offset] ^= 0xFF  # a bad sector in record 5 (seq 5)
    segment.write_bytes(bytes(data))
    again = DiskBuffer(tmp_path, limit_bytes=1 << 20)
    await again.open()
    assert again.corrupt == [
        f"{segment.name} at offset {4 * record_size}: skipped {record_size} bytes"
    ]
    assert await read_all(again) == [n for n in range(20) if n != 4]
    await again.aclose()


async def test_reaching_the_limit_pauses_and_forwarding_resumes(tmp_path: Path) -> None:
    calls: list[bool] = []
    buffer = DiskBuffer(
        tmp_path, limit_bytes=64 * 1024, on_pressure=calls.append, segment_bytes=4096
    )
    await buffer.open()
    await write(buffer, range(700), size=100)  # ~90 KiB: over the limit
    assert calls == [True]
    assert not accepting(buffer)
    buffer.ledger_interval = 0.01
    for seq in range(1, 701):
        buffer.forwarded(seq)
    await asyncio.sleep(0.2)
    assert calls == [True, False]
    assert accepting(buffer)
    assert buffer.bytes_on_disk < 64 * 1024 * 0.9
    await buffer.aclose()


async def test_a_damaged_ledger_forwards_again_from_the_oldest_record(tmp_path: Path) -> None:
    buffer = DiskBuffer(tmp_path, limit_bytes=1 << 20, ledger_interval=0.01)
    await buffer.open()
    await write(buffer, range(20))
    for seq in range(1, 11):
        buffer.forwarded(seq)
    await asyncio.sleep(0.1)
    await buffer.aclose()
    (tmp_path / "ledger").write_bytes(b"garbage!garbage!")
    again = DiskBuffer(tmp_path, limit_bytes=1 << 20)
    await again.open()
    assert again.committed_seq == 0
    assert await read_all(again) == list(range(20))  # repeats, loses nothing
    await again.aclose()


@pytest.mark.parametrize("where", ["write", "fsync"])
async def test_a_failed_write_is_cut_back_retried_and_never_resolved_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    import errno
    import os

    calls: list[bool] = []
    buffer = DiskBuffer(tmp_path, limit_bytes=1 << 20, on_pressure=calls.append)
    await buffer.open()
    await write(buffer, range(3))
    real = getattr(os, where)
    failures = 3

    def failing(*args: object) -> object:
        nonlocal failures
        if failures:
            failures -= 1
            if where == "write":
                real(*args)  # part of it reaches the file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(os, where, failing)
    future = buffer.add([entry(3)])
    await asyncio.sleep(0.05)
    assert not future.done(), "acknowledged before it was durable"
    assert calls == [True]
    assert buffer.disk_error is not None
    assert "ENOSPC" in buffer.disk_error
    await asyncio.wait_for(future, 10)
    assert calls == [True, False]
    monkeypatch.undo()
    await buffer.aclose()
    again = DiskBuffer(tmp_path, limit_bytes=1 << 20)
    await again.open()
    assert again.corrupt == []
    assert again.truncated == 0
    assert await read_all(again) == [0, 1, 2, 3]
    await again.aclose()


async def test_a_forwarder_that_fell_behind_the_memory_tail_reads_on_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.buffer import disk

    buffer = DiskBuffer(tmp_path, limit_bytes=1 << 24)
    await buffer.open()
    await write(buffer, range(300))
    assert len(await buffer.read(0, 1 << 20)) == 300  # served from memory, no file cursor
    monkeypatch.setattr(disk, "TAIL_BYTES", 10_000)  # the forwarder falls far behind
    for start in range(300, 1300, 100):
        await write(buffer, range(start, start + 100))
    # Far into the segment with no cursor: it must scan on, window by window, not stop.
    assert await read_all(buffer, after=300) == list(range(300, 1300))
    await buffer.aclose()


async def test_ledger_writes_in_threads_at_once_neither_fail_nor_move_it_back(
    tmp_path: Path,
) -> None:
    # A ledger write runs in a thread, and one whose task was cancelled (at close) still
    # finishes: close's own write used to race it on the same temp file (FileNotFoundError).
    buffer = DiskBuffer(tmp_path, limit_bytes=1 << 20)
    await buffer.open()
    seqs = list(range(1, 201))
    await asyncio.gather(*(asyncio.to_thread(buffer._write_ledger, seq) for seq in seqs))
    assert buffer_log.read_ledger(tmp_path) == 200
    buffer._write_ledger(5)  # an older write landing late changes nothing
    assert buffer_log.read_ledger(tmp_path) == 200
    await buffer.aclose()
