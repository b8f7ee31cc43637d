"""PostgresReader against a real, throwaway PostgreSQL 15 (tests/support/postgres.py).

Each test gets its own database (so its own source id, slot and publication); servers with
other settings (wal_level=replica, a short wal_sender_timeout) are started by the tests that
need them. Every wait is a bounded poll for a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal

import pytest

from bridge.cdc._model import PART_CHANGES, Change, PositionLost, ReaderError, Standby, Transaction
from bridge.cdc.config import Source, parse_source
from bridge.cdc.postgres import PostgresReader, parse_lsn
from tests.support import postgres as pgsupport
from tests.support.net import free_port
from tests.support.postgres import PostgresServer

postgres_server = pgsupport.postgres_server

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


class ListSink:
    """Collects what a reader hands over; commits each delivered position unless told not to;
    `hook` runs inside deliver (it may block: backpressure)."""

    def __init__(self, reader: PostgresReader | None = None, *, auto_commit: bool = True) -> None:
        self.reader = reader
        self.auto_commit = auto_commit
        self.transactions: list[Transaction] = []
        self.states: list[str] = []
        self.notes: list[str] = []
        self.lags: list[tuple[int | None, float | None]] = []
        self.hook: Callable[[Transaction], Awaitable[None]] | None = None

    async def deliver(self, transaction: Transaction) -> None:
        self.transactions.append(transaction)
        if self.hook is not None:
            await self.hook(transaction)
        if self.auto_commit and self.reader is not None and transaction.complete:
            self.reader.committed(transaction.position)

    def set_state(self, state: Literal["snapshot", "streaming"]) -> None:
        self.states.append(state)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def set_lag(self, lag_bytes: int | None, lag_seconds: float | None) -> None:
        self.lags.append((lag_bytes, lag_seconds))

    def changes(self, *, snapshot: bool | None = None) -> list[Change]:
        return [
            change
            for txn in self.transactions
            if snapshot is None or txn.snapshot == snapshot
            for change in txn.changes
        ]

    def streamed(self) -> list[Transaction]:
        return [t for t in self.transactions if not t.snapshot and t.changes]


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(
    reader: PostgresReader, sink: ListSink, start: dict[str, Any] | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """reader.run() as a task, streaming once entered; cancelled on exit."""
    task = asyncio.create_task(reader.run(start, sink))
    try:
        await until(lambda: "streaming" in sink.states or task.done(), "streaming")
        if task.done():
            task.result()  # raises what run raised
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_source(
    server: PostgresServer,
    db: str,
    tables: list[str],
    *,
    snapshot: str = "initial",
    user: str = "cdc",
    password: str = "secret",
) -> Source:
    return parse_source(
        {
            "id": db,
            "kind": "postgres",
            "dsn": server.dsn(user, password, db),
            "tables": tables,
            "snapshot": snapshot,
        }
    )


@pytest.fixture
def db(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.new_database()
    yield name
    postgres_server.drop_slots(name)


def sql_as_cdc(server: PostgresServer, db: str, statement: str) -> None:
    server.run_as(statement, db=db)


def table_t(server: PostgresServer, db: str) -> Source:
    """A table `t (id int PRIMARY KEY)` and a source on it that streams (no snapshot)."""
    sql_as_cdc(server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    return make_source(server, db, ["public.t"], snapshot="never")


def slot_row(server: PostgresServer, db: str) -> tuple[Any, ...] | None:
    rows = server.execute(
        "SELECT active, active_pid, confirmed_flush_lsn::text FROM pg_replication_slots"
        " WHERE database = %s",
        (db,),
    )
    return rows[0] if rows else None


# --- snapshot and streaming -------------------------------------------------------------------


async def test_snapshot_then_streaming_every_row_exactly_once(
    postgres_server: PostgresServer, db: str
) -> None:
    server = postgres_server
    sql_as_cdc(server, db, "CREATE TABLE items (id bigserial PRIMARY KEY, v int NOT NULL)")
    sql_as_cdc(server, db, "INSERT INTO items (v) SELECT g FROM generate_series(1, 5000) g")
    source = make_source(server, db, ["public.items"])
    reader = PostgresReader(source, snapshot_chunk_rows=400, feedback_interval=0.5)
    sink = ListSink(reader)
    during: list[int] = []

    async def insert_during_snapshot(txn: Transaction) -> None:
        if txn.snapshot and txn.changes:  # another session inserts while the snapshot is read
            rows = await asyncio.to_thread(
                server.execute, "INSERT INTO items (v) VALUES (-1) RETURNING id", db=db
            )
            during.append(rows[0][0])

    sink.hook = insert_during_snapshot
    stop = threading.Event()

    def inserter() -> None:
        while not stop.is_set():
            server.execute("INSERT INTO items (v) SELECT -2 FROM generate_series(1, 5)", db=db)

    thread = threading.Thread(target=inserter)
    thread.start()
    try:
        async with running(reader, sink):
            stop.set()
            await asyncio.to_thread(thread.join, 10)
            server.execute("INSERT INTO items (v) VALUES (-3)", db=db)
            expected = {r[0] for r in server.execute("SELECT id FROM items", db=db)}

            def seen() -> set[int]:
                return {c.after["id"] for c in sink.changes() if c.after}

            await until(lambda: seen() >= expected, "every row")
    finally:
        stop.set()
        thread.join(10)

    snapshot_ids = [c.after["id"] for c in sink.changes(snapshot=True) if c.after]
    streamed = sink.changes(snapshot=False)
    streamed_ids = [c.after["id"] for c in streamed if c.after]
    assert sink.states[:2] == ["snapshot", "streaming"]
    assert all(c.op == "r" for c in sink.changes(snapshot=True))
    assert all(c.op == "c" for c in streamed)
    assert len(snapshot_ids) >= 5000
    assert len(set(during)) == len(during) > 5  # inserts really happened during the snapshot
    assert set(during) <= set(streamed_ids)
    everything = snapshot_ids + streamed_ids
    assert len(everything) == len(set(everything)) == len(expected)
    assert set(everything) == expected
    snap = [t for t in sink.transactions if t.snapshot]
    point = snap[0].position["lsn"]
    assert all(len(t.changes) <= 400 for t in snap)
    assert all(t.position == {"lsn": point, "snapshot": "running"} for t in snap[:-1])
    assert snap[-1].position == {"lsn": point, "snapshot": "done"}
    assert snap[-1].changes == []
    assert all(t.lsn is not None and t.lsn > point for t in sink.streamed())


async def test_operations_and_images(postgres_server: PostgresServer, db: str) -> None:
    server = postgres_server
    sql_as_cdc(
        server,
        db,
        "CREATE TABLE full_t (id int PRIMARY KEY, a text, b int);"
        " ALTER TABLE full_t REPLICA IDENTITY FULL;"
        " CREATE TABLE def_t (id int PRIMARY KEY, a text);"
        " CREATE TABLE nopk (a int, b text); ALTER TABLE nopk REPLICA IDENTITY FULL;"
        " CREATE TABLE other (id int PRIMARY KEY)",
    )
    source = make_source(
        server, db, ["public.full_t", "public.def_t", "public.nopk"], snapshot="never"
    )
    reader = PostgresReader(source, feedback_interval=0.5, lag_interval=0.1)
    sink = ListSink(reader)
    statements = [
        "BEGIN; INSERT INTO full_t VALUES (1, 'x', 1); INSERT INTO def_t VALUES (1, 'y');"
        " INSERT INTO nopk VALUES (5, 'z'); INSERT INTO other VALUES (1); COMMIT",
        "UPDATE full_t SET a = 'x2' WHERE id = 1",
        "UPDATE def_t SET a = 'y2' WHERE id = 1",
        "UPDATE def_t SET id = 2 WHERE id = 1",
        "DELETE FROM full_t WHERE id = 1",
        "DELETE FROM def_t WHERE id = 2",
        "UPDATE nopk SET b = 'w'",
        "TRUNCATE full_t, def_t",
    ]
    before = time.time()
    async with running(reader, sink):
        first = sink.transactions[0]
        assert first.changes == []
        assert first.position["snapshot"] == "done"
        for statement in statements:
            server.execute(statement, db=db)
        await until(lambda: len(sink.streamed()) == len(statements), "every transaction")
        sink.lags.clear()
        await until(lambda: len(sink.lags) >= 1, "a lag report")
    lag_bytes, lag_seconds = sink.lags[-1]
    assert isinstance(lag_bytes, int)
    assert lag_bytes >= 0
    assert lag_seconds == 0.0  # every delivered transaction was committed
    txns = sink.streamed()
    ops = [[(c.op, c.table.name) for c in t.changes] for t in txns]
    assert ops == [
        [("c", "full_t"), ("c", "def_t"), ("c", "nopk")],
        [("u", "full_t")],
        [("u", "def_t")],
        [("u", "def_t")],
        [("d", "full_t")],
        [("d", "def_t")],
        [("u", "nopk")],
        [("t", "full_t"), ("t", "def_t")],
    ]
    c = [t.changes for t in txns]
    assert c[0][0].after == {"id": 1, "a": "x", "b": 1}
    assert c[0][0].before is None
    assert c[0][0].table.key == ("id",)
    assert c[0][0].table.db == db
    assert c[0][0].table.schema == "public"
    assert c[0][2].table.key == ()
    assert c[1][0].before == {"id": 1, "a": "x", "b": 1}  # FULL: the whole old row
    assert c[1][0].after == {"id": 1, "a": "x2", "b": 1}
    assert c[2][0].before is None  # DEFAULT, key unchanged: no old row
    assert c[2][0].after == {"id": 1, "a": "y2"}
    assert c[3][0].before == {"id": 1}  # DEFAULT, key changed: the old key
    assert c[3][0].after == {"id": 2, "a": "y2"}
    assert c[4][0].before == {"id": 1, "a": "x2", "b": 1}
    assert c[4][0].after is None
    assert c[5][0].before == {"id": 2}
    assert c[6][0].before == {"a": 5, "b": "z"}
    assert c[6][0].after == {"a": 5, "b": "w"}
    assert all(ch.before is None and ch.after is None for ch in c[7])
    assert sink.notes == [
        "table public.nopk has no primary key: its changes are keyed by the table"
    ]
    lsns = [t.lsn or 0 for t in txns]
    assert all(isinstance(t.tx_id, int) for t in txns)
    assert lsns == sorted(lsns)
    assert len(set(lsns)) == len(lsns)
    for t in txns:
        assert t.position == {"lsn": t.lsn, "snapshot": "done"}
        assert t.commit_ts_ms is not None
        assert before - 5 <= t.commit_ts_ms / 1000 <= time.time() + 5

    await reader.drop()
    assert slot_row(server, db) is None
    assert not server.execute("SELECT 1 FROM pg_publication", db=db)


TYPED = """CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE typed (
  id int PRIMARY KEY, n numeric(10, 2), m money, j json, jb jsonb, ts timestamp,
  tstz timestamptz, d date, t time, b bytea, ok bool, f float8, fnan float8, r real,
  i8 bigint, i2 smallint, arr int[], u uuid, nul text, iv interval, dom posint, mo mood
)"""
ROW = """({id}, 12.5, 3.25, '{{"a": [1, "x"]}}', '{{"b": null}}', '2024-01-31 12:00:00.123456',
  '2024-01-31 14:00:00.5+02', '2024-01-31', '12:00:00.5', '\\x00ff10', true, 1.5, 'NaN',
  '-Infinity', 9007199254740993, -7, '{{1,2,3}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL,
  '1 day 2 hours', 7, 'happy')"""
EXPECTED = {
    "n": "12.50",
    "m": "$3.25",
    "j": {"a": [1, "x"]},
    "jb": {"b": None},
    "ts": "2024-01-31T12:00:00.123456",
    "tstz": "2024-01-31T12:00:00.5Z",
    "d": "2024-01-31",
    "t": "12:00:00.5",
    "b": "AP8Q",
    "ok": True,
    "f": 1.5,
    "fnan": "NaN",
    "r": "-Infinity",
    "i8": 9007199254740993,
    "i2": -7,
    "arr": "{1,2,3}",
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "nul": None,
    "iv": "1 day 02:00:00",
    "dom": 7,
    "mo": "happy",
}


async def test_types_snapshot_equals_stream_and_unchanged_toast(
    postgres_server: PostgresServer, db: str
) -> None:
    server = postgres_server
    sql_as_cdc(server, db, TYPED)
    sql_as_cdc(server, db, "CREATE TABLE big (id int PRIMARY KEY, body text, n int)")
    sql_as_cdc(server, db, "INSERT INTO typed VALUES " + ROW.format(id=1))
    source = make_source(server, db, ["public.typed", "public.big"])
    reader = PostgresReader(source, feedback_interval=0.5)
    sink = ListSink(reader)
    async with running(reader, sink):
        server.execute("INSERT INTO typed VALUES " + ROW.format(id=2), db=db)
        server.execute(
            "INSERT INTO big SELECT 1, string_agg(md5(g::text), ''), 0"
            " FROM generate_series(1, 4000) g",
            db=db,
        )
        server.execute("UPDATE big SET n = 1 WHERE id = 1", db=db)
        await until(lambda: len(sink.streamed()) == 3, "three transactions")
    (snapshot_row,) = sink.changes(snapshot=True)
    streamed = sink.changes(snapshot=False)
    assert snapshot_row.after == {"id": 1, **EXPECTED}
    assert streamed[0].after == {"id": 2, **EXPECTED}
    body = server.execute("SELECT body FROM big", db=db)[0][0]
    assert streamed[1].after == {"id": 1, "body": body, "n": 0}
    assert streamed[2].op == "u"
    assert streamed[2].after == {"id": 1, "n": 1}
    assert streamed[2].unchanged == ("body",)


async def test_ddl_between_changes(postgres_server: PostgresServer, db: str) -> None:
    server = postgres_server
    sql_as_cdc(server, db, "CREATE TABLE t (id int PRIMARY KEY, a text)")
    reader = PostgresReader(make_source(server, db, ["public.t"], snapshot="never"))
    sink = ListSink(reader)
    async with running(reader, sink):
        server.execute("INSERT INTO t VALUES (1, 'a')", db=db)
        server.execute("ALTER TABLE t ADD COLUMN extra text DEFAULT 'x'", db=db)
        server.execute("INSERT INTO t VALUES (2, 'b', 'y')", db=db)
        server.execute("ALTER TABLE t DROP COLUMN a", db=db)
        server.execute("UPDATE t SET extra = 'z' WHERE id = 1", db=db)
        await until(lambda: len(sink.changes(snapshot=False)) == 3, "three changes")
    first, second, third = sink.changes(snapshot=False)
    assert first.after == {"id": 1, "a": "a"}
    assert second.after == {"id": 2, "a": "b", "extra": "y"}
    assert third.after == {"id": 1, "extra": "z"}


# --- positions --------------------------------------------------------------------------------


def ids(sink: ListSink) -> list[int]:
    return [c.after["id"] for c in sink.changes(snapshot=False) if c.after]


async def test_resume_from_committed_position(postgres_server: PostgresServer, db: str) -> None:
    server = postgres_server
    source = table_t(server, db)
    reader = PostgresReader(source, feedback_interval=0.2)
    sink = ListSink(reader, auto_commit=False)
    async with running(reader, sink):
        for i in (1, 2, 3):
            server.execute(f"INSERT INTO t VALUES ({i})", db=db)
        await until(lambda: ids(sink) == [1, 2, 3], "three rows")
        reader.committed(sink.transactions[0].position)
        position = sink.streamed()[1].position  # 1 and 2 stored, 3 not
        reader.committed(position)
        await until(
            lambda: (
                (row := slot_row(server, db)) is not None and parse_lsn(row[2]) >= position["lsn"]
            ),
            "the flush position to reach the server",
        )
        row = slot_row(server, db)
        assert row is not None
        assert parse_lsn(row[2]) < (sink.streamed()[2].lsn or 0)  # 3 is not confirmed
    assert slot_row(server, db) is not None
    again = PostgresReader(source, feedback_interval=0.2)
    sink2 = ListSink(again)
    async with running(again, sink2, dict(position)):
        server.execute("INSERT INTO t VALUES (4)", db=db)
        await until(lambda: 4 in ids(sink2), "row 4")
    assert ids(sink2) == [3, 4]  # the uncommitted transaction repeats, committed ones do not


async def test_a_large_transaction_comes_in_parts_and_only_the_last_has_its_position(
    postgres_server: PostgresServer, db: str
) -> None:
    server = postgres_server
    source = table_t(server, db)
    reader = PostgresReader(source, feedback_interval=0.2)
    sink = ListSink(reader, auto_commit=False)
    rows = 2 * PART_CHANGES + 500
    async with running(reader, sink):
        server.execute("INSERT INTO t VALUES (0)", db=db)
        server.execute(f"INSERT INTO t SELECT generate_series(1, {rows})", db=db)
        await until(lambda: len(ids(sink)) == rows + 1, "every row")
    first, *parts = sink.streamed()
    assert [(len(t.changes), t.complete) for t in parts] == [
        (PART_CHANGES, False),
        (PART_CHANGES, False),
        (500, True),
    ]
    assert ids(sink) == list(range(rows + 1))
    assert len({t.tx_id for t in parts}) == 1
    last = parts[-1]
    assert last.position["lsn"] == last.lsn
    assert all(p.lsn == p.position["lsn"] < (last.lsn or 0) for p in parts[:-1])
    # From the position before it, the whole transaction comes again; from its own, nothing.
    for marker, start, expected in ((-1, first.position, rows), (-2, last.position, 0)):
        again = PostgresReader(source, feedback_interval=0.2)
        sink2 = ListSink(again, auto_commit=False)
        async with running(again, sink2, dict(start)):
            server.execute(f"INSERT INTO t VALUES ({marker})", db=db)
            await until(lambda: marker in ids(sink2), "the marker row")  # noqa: B023
        assert len([i for i in ids(sink2) if i > 0]) == expected


async def test_server_restart_does_not_replay(postgres_server: PostgresServer, db: str) -> None:
    server = postgres_server
    source = table_t(server, db)
    reader = PostgresReader(source, feedback_interval=0.2)
    sink = ListSink(reader)
    async with running(reader, sink):
        for i in (1, 2, 3):
            server.execute(f"INSERT INTO t VALUES ({i})", db=db)
        await until(lambda: ids(sink) == [1, 2, 3], "three rows")
        position = sink.transactions[-1].position
    await asyncio.to_thread(server.restart)
    server.execute("INSERT INTO t VALUES (4)", db=db)
    again = PostgresReader(source, feedback_interval=0.2)
    sink2 = ListSink(again)
    async with running(again, sink2, dict(position)):
        await until(lambda: 4 in ids(sink2), "row 4")
        server.execute("INSERT INTO t VALUES (5)", db=db)
        await until(lambda: 5 in ids(sink2), "row 5")
    assert ids(sink2) == [4, 5]


async def test_server_crash_is_an_outage_then_resumes(
    postgres_server: PostgresServer, db: str
) -> None:
    server = postgres_server
    source = table_t(server, db)
    reader = PostgresReader(source, feedback_interval=0.2)
    sink = ListSink(reader)
    task = asyncio.create_task(reader.run(None, sink))
    try:
        await until(lambda: "streaming" in sink.states, "streaming")
        server.execute("INSERT INTO t VALUES (1)", db=db)
        await until(lambda: ids(sink) == [1], "row 1")
        await asyncio.to_thread(server.kill)
        await until(task.done, "the reader to notice the crash")
        error = task.exception()
        assert isinstance(error, ReaderError)
        assert error.setting is None  # an outage: the runner retries
        assert error.retriable
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if not server.running():
            await asyncio.to_thread(server.start)
    position = dict(sink.transactions[-1].position)
    server.execute("INSERT INTO t VALUES (2)", db=db)
    sink2 = ListSink()
    again = PostgresReader(source)
    sink2.reader = again
    async with running(again, sink2, position):
        await until(lambda: 2 in ids(sink2), "row 2")
    assert ids(sink2) == [2]


async def test_slot_gone_is_position_lost(postgres_server: PostgresServer, db: str) -> None:
    server = postgres_server
    source = table_t(server, db)
    reader = PostgresReader(source)
    sink = ListSink(reader)
    async with running(reader, sink):
        position = dict(sink.transactions[0].position)
    server.drop_slots(db)
    with pytest.raises(PositionLost) as caught:
        await asyncio.wait_for(PostgresReader(source).run(position, ListSink()), WAIT)
    assert source.slot_name in str(caught.value)
    assert "re-snapshot" in str(caught.value)
    assert not caught.value.retriable


async def test_snapshot_running_position_reloads(postgres_server: PostgresServer, db: str) -> None:
    """A position stored mid-snapshot: the slot is recreated and the load starts again."""
    server = postgres_server
    sql_as_cdc(server, db, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
    source = make_source(server, db, ["public.t"])
    reader = PostgresReader(source, snapshot_chunk_rows=1)
    sink = ListSink(reader)
    async with running(reader, sink):
        running_position = dict(sink.transactions[0].position)
    assert running_position["snapshot"] == "running"
    again = PostgresReader(source)
    sink2 = ListSink(again)
    async with running(again, sink2, running_position):
        pass
    assert [c.after for c in sink2.changes(snapshot=True)] == [{"id": 1}, {"id": 2}]
    assert sink2.transactions[-1].position["snapshot"] == "done"


# --- fencing ----------------------------------------------------------------------------------


async def test_second_reader_is_standby_until_first_stops(
    postgres_server: PostgresServer, db: str
) -> None:
    server = postgres_server
    source = table_t(server, db)
    first = PostgresReader(source)
    second = PostgresReader(source)
    sink2 = ListSink(second)
    async with running(first, ListSink(first)):
        with pytest.raises(Standby):
            await asyncio.wait_for(second.run(None, sink2), WAIT)
    deadline = time.monotonic() + WAIT
    while True:  # what the runner does: try again until the lock is free
        task = asyncio.create_task(second.run(None, sink2))
        await until(
            lambda t=task: t.done() or "streaming" in sink2.states,  # type: ignore[misc]
            "standby or streaming",
        )
        if not task.done():
            break
        with pytest.raises(Standby):
            task.result()
        assert time.monotonic() < deadline, "the second reader never took over"
        await asyncio.sleep(0.05)
    try:
        server.execute("INSERT INTO t VALUES (1)", db=db)
        await until(lambda: ids(sink2) == [1], "row 1 via the second reader")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- misconfiguration -------------------------------------------------------------------------


async def run_error(source: Source) -> ReaderError:
    with pytest.raises(ReaderError) as caught:
        await asyncio.wait_for(PostgresReader(source).run(None, ListSink()), WAIT)
    return caught.value


async def test_wal_level_replica() -> None:
    with PostgresServer(wal_level="replica") as server:
        server.make_cdc_user(db="shop")
        server.run_as("CREATE TABLE t (id int PRIMARY KEY)", db="shop")
        error = await run_error(make_source(server, "shop", ["public.t"]))
    assert error.setting == "wal_level"
    assert "wal_level = logical" in str(error)


async def test_no_free_replication_slot() -> None:
    with PostgresServer(options=("max_replication_slots=1",)) as server:
        server.make_cdc_user(db="shop")
        server.run_as("CREATE TABLE t (id int PRIMARY KEY)", db="shop")
        server.execute("SELECT pg_create_logical_replication_slot('other', 'pgoutput')", db="shop")
        error = await run_error(make_source(server, "shop", ["public.t"]))
    assert error.setting == "max_replication_slots"


async def test_wrong_password(postgres_server: PostgresServer, db: str) -> None:
    error = await run_error(make_source(postgres_server, db, ["public.t"], password="wrong"))
    assert error.setting == "dsn"
    assert "wrong" not in str(error)


async def test_unknown_database(postgres_server: PostgresServer) -> None:
    error = await run_error(make_source(postgres_server, "no_such_db", ["public.t"]))
    assert error.setting == "dsn"


async def test_unreachable_server_is_an_outage() -> None:
    source = parse_source(
        {
            "id": "gone",
            "kind": "postgres",
            "dsn": f"postgresql://cdc:secret@127.0.0.1:{free_port()}/shop",
            "tables": ["public.t"],
        }
    )
    error = await run_error(source)
    assert error.setting is None
    assert error.retriable


async def test_role_without_replication(postgres_server: PostgresServer, db: str) -> None:
    postgres_server.make_cdc_user("norepl", "secret", db=None, replication=False)
    source = make_source(postgres_server, db, ["public.t"], user="norepl")
    error = await run_error(source)
    assert error.setting == "REPLICATION"
    assert "ALTER ROLE" in str(error)


async def test_missing_table(postgres_server: PostgresServer, db: str) -> None:
    error = await run_error(make_source(postgres_server, db, ["public.missing"]))
    assert error.setting == "tables"
    assert "public.missing" in str(error)


async def test_no_select_then_not_owner(postgres_server: PostgresServer, db: str) -> None:
    server = postgres_server
    server.execute("CREATE TABLE theirs (id int PRIMARY KEY)", db=db)  # owned by postgres
    error = await run_error(make_source(server, db, ["public.theirs"]))
    assert error.setting == "SELECT on public.theirs"
    assert "GRANT SELECT" in str(error)
    server.execute("GRANT SELECT ON theirs TO cdc", db=db)
    error = await run_error(make_source(server, db, ["public.theirs"]))
    assert error.setting == "publication"
    assert "CREATE PUBLICATION" in str(error)


async def test_publication_follows_the_table_list(postgres_server: PostgresServer, db: str) -> None:
    server = postgres_server
    sql_as_cdc(
        server, db, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)"
    )
    source = make_source(server, db, ["public.a"], snapshot="never")
    reader = PostgresReader(source)
    async with running(reader, ListSink(reader)):
        pass
    wider = make_source(server, db, ["public.a", "public.b"], snapshot="never")
    reader = PostgresReader(wider)
    sink = ListSink(reader)
    async with running(reader, sink, None):
        server.execute("INSERT INTO b VALUES (1)", db=db)
        await until(lambda: ids(sink) == [1], "a row of the added table")
    tables = server.execute("SELECT tablename FROM pg_publication_tables ORDER BY 1", db=db)
    assert tables == [("a",), ("b",)]


# --- backpressure -----------------------------------------------------------------------------


async def paused_reader(feedback_interval: float) -> tuple[bool, int, int]:
    """A sink that blocks 4 s in deliver on a server with wal_sender_timeout=2s: (still
    connected, rows received afterwards, expected rows)."""
    with PostgresServer(options=("wal_sender_timeout=2s",)) as server:
        server.make_cdc_user(db="shop")
        server.run_as("CREATE TABLE t (id int PRIMARY KEY, pad text)", db="shop")
        source = make_source(server, "shop", ["public.t"], snapshot="never")
        reader = PostgresReader(source, feedback_interval=feedback_interval)
        sink = ListSink(reader)
        gate = asyncio.Event()

        async def block_first(txn: Transaction) -> None:
            if txn.changes and txn.changes[0].after == {"id": 1, "pad": "x"}:
                await gate.wait()

        sink.hook = block_first
        task = asyncio.create_task(reader.run(None, sink))
        try:
            await until(lambda: "streaming" in sink.states, "streaming")
            server.execute("INSERT INTO t VALUES (1, 'x')", db="shop")
            await until(lambda: len(sink.streamed()) == 1, "the blocked transaction")
            pid = slot_row(server, "shop")
            assert pid is not None
            assert pid[0]

            def more() -> None:  # WAL the paused reader does not read yet
                for i in range(2, 200):
                    server.execute(f"INSERT INTO t VALUES ({i}, repeat('y', 2000))", db="shop")

            await asyncio.to_thread(more)  # not blocking the loop: the reader's feedback runs
            paused_until = time.monotonic() + 4.0  # twice wal_sender_timeout
            connected = True
            while time.monotonic() < paused_until:
                row = slot_row(server, "shop")
                if row is None or not row[0] or row[1] != pid[1]:
                    connected = False
                    break
                await asyncio.sleep(0.1)
            if not connected:  # wait out the pause anyway: it is what is tested
                await asyncio.sleep(max(0.0, paused_until - time.monotonic()))
            gate.set()
            with contextlib.suppress(AssertionError):
                await until(lambda: len(ids(sink)) == 199 or task.done(), "the rest", 5)
            received = len(ids(sink))
            if task.done() and not task.cancelled() and task.exception() is not None:
                assert isinstance(task.exception(), ReaderError)
                connected = False
            return connected, received, 199
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def test_paused_reader_keeps_its_connection() -> None:
    connected, received, expected = await paused_reader(feedback_interval=0.5)
    assert connected
    assert received == expected


async def test_paused_reader_without_feedback_is_dropped() -> None:
    """The control: without feedback while paused, the server drops the reader."""
    connected, _, _ = await paused_reader(feedback_interval=60)
    assert not connected


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not-committed"])
async def test_an_idle_source_lets_its_slot_move_on_only_past_what_is_committed(
    postgres_server: PostgresServer, db: str, committed: bool
) -> None:
    """Writes the source does not publish (another table, another database of the same
    server) still add WAL. A slot that stays at its last confirmed change keeps
    all of it on the server's disk, growing for as long as the source's tables are idle. Once
    everything received is committed, the keepalives' WAL end is confirmed too (psycopg2 does
    it); while a received transaction is not committed, the slot stays before it."""
    server = postgres_server
    source = table_t(server, db)
    sql_as_cdc(server, db, "CREATE TABLE other (id int PRIMARY KEY, body text)")
    reader = PostgresReader(source, feedback_interval=0.2)
    sink = ListSink(reader, auto_commit=committed)
    async with running(reader, sink):
        server.execute("INSERT INTO t VALUES (1)", db=db)
        await until(lambda: ids(sink) == [1], "row 1")
        row_1 = sink.streamed()[0].lsn or 0
        elsewhere = server.new_database()  # another database of the same server
        server.execute("CREATE TABLE busy (id int PRIMARY KEY, body text)", db=elsewhere)
        for n in range(50):
            server.execute(f"INSERT INTO other VALUES ({n}, repeat('x', 1000))", db=db)
            server.execute(f"INSERT INTO busy VALUES ({n}, repeat('x', 1000))", db=elsewhere)
        wal = parse_lsn(server.execute("SELECT pg_current_wal_lsn()::text", db=db)[0][0])

        def confirmed() -> int:
            row = slot_row(server, db)
            return parse_lsn(row[2]) if row is not None else 0

        if committed:
            await until(lambda: confirmed() >= wal, "the slot to move past WAL", timeout=20)
        else:
            await asyncio.sleep(2.0)  # ten feedback rounds, and keepalives
            assert confirmed() < row_1, "the slot moved past a transaction not committed"
            reader.committed(sink.streamed()[0].position)  # now it is: the slot moves on
            server.execute("INSERT INTO other VALUES (50, 'x')", db=db)
            await until(lambda: confirmed() >= wal, "the slot to move past WAL", timeout=20)
        assert ids(sink) == [1]  # nothing of `other` was handed over
