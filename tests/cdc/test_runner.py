"""The runner on its own: positions committed in order over stored work, and reader failures.

The reader, the pipeline and the position store are small fakes here (a unit test of the
runner); tests/cdc/test_source_bridge.py runs the real ones together.
"""

import asyncio
from collections.abc import Mapping
from typing import Any

from bridge.cdc._model import ChangeSink, PositionLost, ReaderError, Standby, Transaction
from bridge.cdc.config import Source
from bridge.cdc.runner import SourceRunner
from bridge.hstream.errors import HStreamUnavailable
from bridge.router import Output
from tests.support.bridge import wait_until

SOURCE = Source.model_validate(
    {"id": "s", "kind": "postgres", "dsn": "postgresql://u@h/d", "tables": ["public.t"]}
)


def at(lsn: int) -> Transaction:
    return Transaction((), {"lsn": lsn, "snapshot": "done"}, lsn=lsn)


class Reader:
    def __init__(self, *runs: list[Transaction | BaseException]) -> None:
        self.runs = list(runs)
        self.starts: list[Mapping[str, Any] | None] = []
        self.committed_positions: list[Mapping[str, Any]] = []

    async def run(self, start: Mapping[str, Any] | None, sink: ChangeSink) -> None:
        self.starts.append(start)
        steps = self.runs.pop(0) if self.runs else []
        for step in steps:
            if isinstance(step, BaseException):
                raise step
            await sink.deliver(step)
        await asyncio.Event().wait()

    def committed(self, position: Mapping[str, Any]) -> None:
        self.committed_positions.append(position)

    async def drop(self) -> None:
        return None


class Pipeline:
    dead_letter_stream = "dlq"
    max_record_bytes = 1 << 20

    def __init__(self) -> None:
        self.stored: list[asyncio.Future[None]] = []

    async def wait_for_room(self) -> None:
        return None

    def accept(self, outputs: list[Output], received_at: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stored.append(future)
        return future


class Positions:
    def __init__(self, failures: int = 0) -> None:
        self.saved: list[Mapping[str, Any] | None] = []
        self.failures = failures

    async def load(self) -> Mapping[str, Any] | None:
        return self.saved[-1] if self.saved else None

    async def save(self, position: Mapping[str, Any] | None) -> None:
        if self.failures:
            self.failures -= 1
            raise HStreamUnavailable("down")
        self.saved.append(position)


def runner(reader: Reader, pipeline: Pipeline, positions: Positions) -> SourceRunner:
    return SourceRunner(
        SOURCE, reader, pipeline, positions, backoff_min=0.01, backoff_max=0.02,
        standby_retry=0.01, commit_interval=0.0,
    )  # fmt: skip


async def test_a_position_is_committed_only_when_it_and_everything_before_is_stored() -> None:
    reader, pipeline, positions = Reader([at(1), at(2), at(3)]), Pipeline(), Positions()
    r = runner(reader, pipeline, positions)
    r.start()
    try:
        await wait_until(lambda: len(pipeline.stored) == 3, 5, "three deliveries")
        pipeline.stored[1].set_result(None)
        await asyncio.sleep(0.05)  # the committer had its chance: nothing may be committed
        assert positions.saved == []
        pipeline.stored[0].set_result(None)
        await wait_until(lambda: positions.saved[-1:] == [{"lsn": 2, "snapshot": "done"}], 5)
        assert reader.committed_positions[-1] == {"lsn": 2, "snapshot": "done"}
        pipeline.stored[2].set_result(None)
        await wait_until(lambda: reader.committed_positions[-1]["lsn"] == 3, 5)
        assert [p["lsn"] for p in positions.saved if p] == sorted(
            p["lsn"] for p in positions.saved if p
        )
    finally:
        await r.stop()


async def test_the_parts_of_a_large_transaction_commit_no_position_only_its_last_part() -> None:
    part = Transaction((), {"lsn": 2, "snapshot": "done"}, lsn=2, complete=False)
    reader, pipeline, positions = Reader([at(1), part, part, at(3)]), Pipeline(), Positions()
    r = runner(reader, pipeline, positions)
    r.start()
    try:
        await wait_until(lambda: len(pipeline.stored) == 4, 5, "four deliveries")
        for stored in pipeline.stored[:3]:
            stored.set_result(None)
        await wait_until(lambda: positions.saved == [{"lsn": 1, "snapshot": "done"}], 5)
        await asyncio.sleep(0.05)  # the committer had its chance: the parts commit nothing
        assert positions.saved == [{"lsn": 1, "snapshot": "done"}]
        assert r.status.transactions == 1  # the parted one, once (at(1) has no changes)
        pipeline.stored[3].set_result(None)
        await wait_until(lambda: positions.saved[-1:] == [{"lsn": 3, "snapshot": "done"}], 5)
        assert [p["lsn"] for p in reader.committed_positions] == [1, 3]
    finally:
        await r.stop()


async def test_the_reader_hears_of_a_position_only_after_it_is_saved() -> None:
    reader, pipeline, positions = Reader([at(1)]), Pipeline(), Positions(failures=3)
    r = runner(reader, pipeline, positions)
    r.start()
    try:
        await wait_until(lambda: len(pipeline.stored) == 1, 5)
        pipeline.stored[0].set_result(None)
        await wait_until(lambda: positions.saved == [{"lsn": 1, "snapshot": "done"}], 10)
        assert reader.committed_positions == [{"lsn": 1, "snapshot": "done"}]
        assert positions.failures == 0
    finally:
        await r.stop()


async def test_a_transaction_stays_pending_until_its_position_is_saved() -> None:
    reader, pipeline, positions = Reader([at(1)]), Pipeline(), Positions(failures=1_000)
    r = runner(reader, pipeline, positions)
    r.start()
    try:
        await wait_until(lambda: len(pipeline.stored) == 1, 5)
        pipeline.stored[0].set_result(None)
        await wait_until(lambda: positions.failures < 999, 5, "a save tried and failed")
        assert r.status.pending_transactions == 1  # stored, not committed: HStreamDB is down
        assert r.status.committed is None
        positions.failures = 0
        await wait_until(lambda: r.status.pending_transactions == 0, 10, "the commit")
        assert r.status.committed == {"lsn": 1, "snapshot": "done"}
    finally:
        await r.stop()


async def test_after_standby_and_an_error_the_reader_runs_from_the_committed_position() -> None:
    positions = Positions()
    positions.saved.append({"lsn": 7, "snapshot": "done"})
    reader = Reader(
        [Standby("slot busy")],
        [ReaderError("wal_level is replica", setting="wal_level")],
        [at(8)],
    )
    pipeline = Pipeline()
    r = runner(reader, pipeline, positions)
    r.start()
    try:
        await wait_until(lambda: len(pipeline.stored) == 1, 5, "the third run to deliver")
        assert reader.starts == [{"lsn": 7, "snapshot": "done"}] * 3
        assert r.status.error is None
        assert r.status.setting is None
    finally:
        await r.stop()


async def test_an_error_stays_visible_with_its_setting() -> None:
    failure: list[Transaction | BaseException] = [
        ReaderError("no REPLICATION", setting="REPLICATION")
    ]
    reader = Reader(*[failure] * 1000)
    r = runner(reader, Pipeline(), Positions())
    r.start()
    try:
        await wait_until(lambda: r.status.state == "error", 5)
        assert r.status.setting == "REPLICATION"
        assert r.status.error == "no REPLICATION"
    finally:
        await r.stop()


async def test_a_lost_position_waits_for_a_resnapshot_which_starts_over_from_nothing() -> None:
    positions = Positions()
    positions.saved.append({"lsn": 5, "snapshot": "done"})
    reader = Reader([PositionLost("slot gone", setting="slot")], [at(1)])
    pipeline = Pipeline()
    r = runner(reader, pipeline, positions)
    r.start()
    try:
        await wait_until(lambda: r.status.state == "error", 5)
        await asyncio.sleep(0.05)
        assert reader.starts == [{"lsn": 5, "snapshot": "done"}]  # not retried on its own
        r.resnapshot()
        await wait_until(lambda: len(reader.starts) == 2, 5, "a new run")
        assert reader.starts[1] is None
        assert positions.saved[-1] is None
    finally:
        await r.stop()


async def test_a_stop_while_the_committer_saves_commits_after_it_in_order() -> None:
    """stop() commits what is stored while the commit loop may be saving a position. They take
    turns: both once popped the same transactions off the queue (IndexError, and a source being
    deleted kept running), and the older save could land last (the position went back)."""

    class SlowPositions(Positions):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()
            self.entered = asyncio.Event()

        async def save(self, position: Mapping[str, Any] | None) -> None:
            if not self.entered.is_set():
                self.entered.set()
                await self.gate.wait()
            await super().save(position)

    reader, pipeline, positions = Reader([at(1), at(2)]), Pipeline(), SlowPositions()
    r = runner(reader, pipeline, positions)
    r.start()
    await wait_until(lambda: len(pipeline.stored) == 2, 5, "two deliveries")
    pipeline.stored[0].set_result(None)
    await asyncio.wait_for(positions.entered.wait(), 5)  # the committer saves at(1), slowly
    pipeline.stored[1].set_result(None)
    stopping = asyncio.create_task(r.stop())
    await asyncio.sleep(0.05)  # stop() is at its own commit now
    positions.gate.set()
    await asyncio.wait_for(stopping, 5)
    assert positions.saved == [{"lsn": 1, "snapshot": "done"}, {"lsn": 2, "snapshot": "done"}]
    assert r.status.pending_transactions == 0
    assert r.status.committed == {"lsn": 2, "snapshot": "done"}
