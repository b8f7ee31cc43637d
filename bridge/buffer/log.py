"""The disk buffer's files: segments of checksummed records, and a ledger of how far forwarding got.

After Vector's disk buffer v2: data files of length-prefixed, checksummed records plus a small
ledger. This module is synchronous file I/O (the async side runs it in a thread).

A record on disk (little-endian):

    magic    4  b"HBR1"
    length   4  bytes of what follows the checksum (seq and body)
    crc32    4  of seq and body
    seq      8  sequence number, +1 per record, never reused
    time     8  when it was written, ms since the epoch (for the oldest record's age)
    lengths  8  of the stream name (u16), rule id (u16) and partition key (u32), in UTF-8
    body        stream name, rule id, partition key, then the encoded HStreamRecord to the end

Segments are `<first seq, 20 digits>.seg` under the buffer directory; a new one starts when the
current one passes `segment_bytes`. The ledger (`ledger`, 8-byte seq + crc32, replaced
atomically) holds the highest seq whose record, and every record before it, is stored in
HStreamDB or dead-lettered; segments wholly at or below it are deleted.

Recovery (`scan`): a record whose magic, length or checksum is wrong at the end of the newest
segment is a torn write (a crash mid-write: it was never acknowledged) and is cut off. Anywhere
else it is corruption: reported with file and offset, and skipped by searching for the next
valid record, so the good records still go out.
"""

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

logger = logging.getLogger(__name__)

MAGIC = b"HBR1"
_HEAD = struct.Struct("<4sII")  # magic, length, crc32
_FIELDS = struct.Struct("<QQHHI")  # seq, time (ms), stream, rule id and key lengths
HEAD_SIZE = _HEAD.size
MAX_RECORD = 64 << 20  # a length beyond this is corruption, not a record
SUFFIX = ".seg"
LEDGER = "ledger"
_LEDGER = struct.Struct("<QI")


class Bufferable(Protocol):
    """One record for the buffer: where it goes and the encoded record (the router's Output
    is one, and so is Entry)."""

    @property
    def stream(self) -> str: ...

    @property
    def rule_id(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def data(self) -> bytes: ...


class Entry(NamedTuple):
    stream: str
    rule_id: str
    key: str
    data: bytes


@dataclass(slots=True)
class Stored:
    """An entry as written (kept in memory) or read back from a segment."""

    seq: int
    written_ms: int
    stream: str
    rule_id: str
    key: str
    data: bytes
    size: int  # bytes on disk


def encode(seq: int, written_ms: int, entry: Bufferable) -> bytes:
    stream = entry.stream.encode()
    rule = entry.rule_id.encode()
    key = entry.key.encode()
    payload = b"".join(
        (
            _FIELDS.pack(seq, written_ms, len(stream), len(rule), len(key)),
            stream,
            rule,
            key,
            entry.data,
        )
    )
    return _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes, size: int) -> Stored:
    seq, written_ms, stream_n, rule_n, key_n = _FIELDS.unpack_from(payload, 0)
    pos = _FIELDS.size
    stream = payload[pos : pos + stream_n].decode()
    pos += stream_n
    rule = payload[pos : pos + rule_n].decode()
    pos += rule_n
    key = payload[pos : pos + key_n].decode()
    pos += key_n
    return Stored(seq, written_ms, stream, rule, key, payload[pos:], size)


def _record_at(data: bytes, offset: int) -> tuple[Stored | None, int]:
    """The valid record at `offset` and its size, or (None, 0) when there is none."""
    if offset + HEAD_SIZE > len(data):
        return None, 0
    magic, length, crc = _HEAD.unpack_from(data, offset)
    end = offset + HEAD_SIZE + length
    if magic != MAGIC or length < _FIELDS.size or length > MAX_RECORD or end > len(data):
        return None, 0
    payload = data[offset + HEAD_SIZE : end]
    if zlib.crc32(payload) != crc:
        return None, 0
    try:
        return _decode(payload, end - offset), end - offset
    except (struct.error, UnicodeDecodeError):
        return None, 0


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}{SUFFIX}"


def segments(directory: Path) -> list[Path]:
    """The segment files, oldest first."""
    return sorted(p for p in directory.glob(f"*{SUFFIX}") if p.stem.isdigit())


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    path: Path
    first_seq: int
    last_seq: int
    first_written_ms: int
    size: int


@dataclass
class ScanResult:
    last_seq: int  # 0 when empty
    corrupt: list[str]  # "file at offset: skipped N bytes"
    truncated: int  # bytes cut off the newest segment's torn tail
    segments: list[SegmentInfo]  # those holding at least one valid record


def read_segment(path: Path, after_seq: int = 0) -> Iterator[Stored]:
    """The valid records of one segment with seq > after_seq, skipping corrupt stretches."""
    data = path.read_bytes()
    for stored, _ in walk(path, data, report=None):
        if stored.seq > after_seq:
            yield stored


def walk(
    path: Path, data: bytes, report: list[tuple[int, int]] | None
) -> Iterator[tuple[Stored, int]]:
    """(record, offset) for every valid record; stretches that are not records are skipped and,
    with `report`, listed as (offset, length)."""
    offset = 0
    while offset < len(data):
        stored, size = _record_at(data, offset)
        if stored is not None:
            yield stored, offset
            offset += size
            continue
        # Not a record here: find the next valid one.
        bad = offset
        search = offset + 1
        while True:
            found = data.find(MAGIC, search)
            if found < 0:
                offset = len(data)
                break
            if _record_at(data, found)[0] is not None:
                offset = found
                break
            search = found + 1
        if report is not None:
            report.append((bad, offset - bad))


def scan(directory: Path) -> ScanResult:
    """Check every segment at start: cut a torn tail, report corruption, find the last seq."""
    result = ScanResult(0, [], 0, [])
    files = segments(directory)
    for index, path in enumerate(files):
        data = path.read_bytes()
        bad: list[tuple[int, int]] = []
        last_end = 0
        first: Stored | None = None
        last: Stored | None = None
        for stored, offset in walk(path, data, bad):
            result.last_seq = max(result.last_seq, stored.seq)
            last_end = offset + stored.size
            first = first or stored
            last = stored
        newest = index == len(files) - 1
        for offset, length in bad:
            if newest and offset >= last_end:
                # A torn tail: written but never made durable, so never acknowledged.
                with path.open("r+b") as handle:
                    handle.truncate(offset)
                    handle.flush()
                    os.fsync(handle.fileno())
                result.truncated += length
                logger.warning(
                    "disk buffer: cut a torn tail of %d bytes off %s at offset %d",
                    length,
                    path.name,
                    offset,
                )
            else:
                note = f"{path.name} at offset {offset}: skipped {length} bytes"
                result.corrupt.append(note)
                logger.error("disk buffer: corrupt records in %s", note)
        if first is not None and last is not None:
            size = min(len(data), last_end) if newest else len(data)
            info = SegmentInfo(path, first.seq, last.seq, first.written_ms, size)
            result.segments.append(info)
    return result


def read_from(
    path: Path, start: int, size: int, after_seq: int, durable_seq: int, max_bytes: int
) -> tuple[list[Stored], int, list[str]]:
    """Valid records of a segment from byte `start` (below `size`, its durable length) with
    after_seq < seq <= durable_seq, about `max_bytes` of them; returns them, the offset after
    the last one read, and notes on corrupt stretches skipped."""
    with path.open("rb") as handle:
        handle.seek(start)
        head = handle.read(HEAD_SIZE)
        want = max_bytes
        if len(head) == HEAD_SIZE:
            magic, length, _ = _HEAD.unpack(head)
            if magic == MAGIC and length <= MAX_RECORD:
                want = max(want, HEAD_SIZE + length)  # at least one whole record
        handle.seek(start)
        data = handle.read(min(size - start, want))
    out: list[Stored] = []
    bad: list[tuple[int, int]] = []
    end = 0
    for stored, offset in walk(path, data, bad):
        end = offset + stored.size
        if stored.seq <= after_seq:
            continue
        if stored.seq > durable_seq:
            end = offset
            break
        out.append(stored)
    notes = []
    for offset, length in bad:
        if offset >= end and offset + length >= len(data) and start + len(data) < size:
            break  # a record cut by the read window, not corruption: read on from `end`
        notes.append(f"{path.name} at offset {start + offset}: skipped {length} bytes")
        end = max(end, offset + length)
    return out, start + end, notes


def read_ledger(directory: Path) -> int:
    """The last forwarded seq (0 when none, or when the ledger is unreadable)."""
    path = directory / LEDGER
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    if len(data) == _LEDGER.size:
        seq, crc = _LEDGER.unpack(data)
        if zlib.crc32(data[:8]) == crc:
            return int(seq)
    # Forwarding again from the start repeats records but loses none.
    logger.error("disk buffer: the ledger %s is damaged; forwarding from the oldest record", path)
    return 0


def write_ledger(directory: Path, seq: int) -> None:
    """Replace the ledger atomically and durably."""
    packed = struct.pack("<Q", seq)
    data = packed + struct.pack("<I", zlib.crc32(packed))
    temp = directory / (LEDGER + ".tmp")
    with temp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, directory / LEDGER)
    sync_directory(directory)


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
