"""MysqlReader against a real MariaDB 10.11 with a row binlog (tests/support/mariadb.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal

import pytest

from bridge.cdc._model import (
    PART_CHANGES,
    Change,
    PositionLost,
    ReaderError,
    Standby,
    Transaction,
)
from bridge.cdc.config import Source
from bridge.cdc.mysql import MysqlReader
from tests.support.mariadb import MariadbServer
from tests.support.mariadb import mariadb_server as mariadb_server

pytestmark = pytest.mark.timeout(60)

HEARTBEAT = 0.3
_ids = itertools.count(1)


class Sink:
    """Collects what the reader hands over. While `gate` is set to a closed Event, deliver()
    waits on it (a full pipeline)."""

    def __init__(self) -> None:
        self.transactions: list[Transaction] = []
        self.states: list[str] = []
        self.notes: list[str] = []
        self.lags: list[tuple[int | None, float | None]] = []
        self.gate: asyncio.Event | None = None
        self.calls = 0
        self.after_call: Callable[[int], None] | None = None

    async def deliver(self, transaction: Transaction) -> None:
        self.calls += 1
        if self.after_call is not None:
            self.after_call(self.calls)
        if self.gate is not None:
            await self.gate.wait()
        self.transactions.append(transaction)

    def set_state(self, state: Literal["snapshot", "streaming"]) -> None:
        self.states.append(state)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def set_lag(self, lag_bytes: int | None, lag_seconds: float | None) -> None:
        self.lags.append((lag_bytes, lag_seconds))

    @property
    def changes(self) -> list[Change]:
        return [c for t in self.transactions for c in t.changes]

    def ops(self) -> list[tuple[str, Any]]:
        return [(c.op, (c.after or c.before or {}).get("id")) for c in self.changes if c.op != "r"]


async def wait_for(condition: Callable[[], bool], timeout: float = 8.0, what: str = "") -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.02)


def make_source(
    server: MariadbServer,
    db: str,
    tables: list[str],
    *,
    snapshot: str = "never",
    user: str = "cdc",
    password: str = "secret",
    source_id: str | None = None,
) -> Source:
    return Source.model_validate(
        {
            "id": source_id or f"src{next(_ids)}_{db}",
            "kind": "mysql",
            "dsn": server.dsn(user, password, db),
            "tables": [f"{db}.{t}" for t in tables],
            "snapshot": snapshot,
        }
    )


@contextlib.asynccontextmanager
async def running(
    reader: MysqlReader, sink: Sink, start: Mapping[str, Any] | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(reader.run(start, sink))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def streaming(sink: Sink, task: asyncio.Task[None]) -> None:
    """Wait until the reader streams (a failed task raises here)."""

    def ready() -> bool:
        if task.done():
            task.result()
        return "streaming" in sink.states and len(sink.transactions) >= 1

    await wait_for(ready, what="the reader to stream")


@pytest.fixture
def db(mariadb_server: MariadbServer) -> str:
    name = mariadb_server.new_database()
    mariadb_server.make_cdc_user(db=name)
    return name


def table_t(server: MariadbServer, db: str) -> Source:
    """A table `t (id INT PRIMARY KEY)` and a source on it (no snapshot)."""
    server.execute("CREATE TABLE t (id INT PRIMARY KEY)", db)
    return make_source(server, db, ["t"])


async def sql(server: MariadbServer, statement: str, db: str | None = None) -> None:
    await asyncio.to_thread(server.execute, statement, db)


async def test_snapshot_then_stream_without_gap_or_duplicate(
    mariadb_server: MariadbServer, db: str
) -> None:
    server = mariadb_server
    server.execute("CREATE TABLE orders (id INT PRIMARY KEY, qty INT)", db)
    server.execute(
        "INSERT INTO orders SELECT seq, seq FROM seq_1_to_2000",
        db,
    )
    sink = Sink()
    sink.gate = asyncio.Event()  # hold the first snapshot chunk while others write
    reader = MysqlReader(
        make_source(server, db, ["orders"], snapshot="initial"),
        heartbeat=HEARTBEAT,
        snapshot_chunk_rows=300,
    )
    async with running(reader, sink) as task:
        await wait_for(lambda: sink.calls >= 1 or task.done(), what="the first chunk")
        assert not task.done()
        await sql(server, "INSERT INTO orders SELECT seq, 0 FROM seq_2001_to_2050", db)
        await sql(server, "UPDATE orders SET qty = -1 WHERE id = 5", db)
        await sql(server, "DELETE FROM orders WHERE id = 6", db)
        await sql(server, "INSERT INTO orders VALUES (6, 66)", db)
        sink.gate.set()
        await wait_for(
            lambda: any(c.op == "c" and c.after == {"id": 6, "qty": 66} for c in sink.changes),
            what="the last insert",
        )
    snapshot = [t for t in sink.transactions if t.snapshot]
    stream = [t for t in sink.transactions if not t.snapshot]
    assert sink.states[:2] == ["snapshot", "streaming"]
    read = [c.after["id"] for t in snapshot for c in t.changes if c.after is not None]
    assert sorted(read) == list(range(1, 2001))
    assert len(read) == len(set(read))
    assert all(len(t.changes) <= 300 for t in snapshot)
    assert snapshot[-1].changes == ()
    assert snapshot[-1].position["snapshot"] == "done"
    assert all(t.position["snapshot"] == "running" for t in snapshot[:-1])
    gtid = snapshot[-1].position["gtid"]
    assert all(t.gtid == gtid for t in snapshot)
    created = [c.after["id"] for t in stream for c in t.changes if c.op == "c" and c.after]
    assert created == [*range(2001, 2051), 6]
    updates = [c for t in stream for c in t.changes if c.op == "u"]
    assert [(u.before, u.after) for u in updates] == [({"id": 5, "qty": 5}, {"id": 5, "qty": -1})]
    assert [c.before for t in stream for c in t.changes if c.op == "d"] == [{"id": 6, "qty": 6}]
    assert all(t.position["snapshot"] == "done" and t.gtid for t in stream)


async def test_insert_update_delete_truncate(mariadb_server: MariadbServer, db: str) -> None:
    server = mariadb_server
    server.execute("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20))", db)
    server.execute("CREATE TABLE nokey (v INT)", db)
    server.execute("CREATE TABLE other (id INT PRIMARY KEY)", db)
    sink = Sink()
    reader = MysqlReader(make_source(server, db, ["items", "nokey"]), heartbeat=HEARTBEAT)
    async with running(reader, sink) as task:
        await streaming(sink, task)
        await sql(server, "INSERT INTO items VALUES (1, 'a'), (2, 'b')", db)
        await sql(server, "INSERT INTO other VALUES (1)", db)
        await sql(server, "UPDATE items SET name = 'c' WHERE id = 1", db)
        await sql(server, "DELETE FROM items WHERE id = 2", db)
        await sql(server, "INSERT INTO nokey VALUES (7)", db)
        await sql(server, "TRUNCATE TABLE items", db)
        await wait_for(lambda: any(c.op == "t" for c in sink.changes), what="truncate")
        await wait_for(lambda: sink.lags[-1:] == [(0, 0.0)], what="lag reported, caught up")
    assert sink.notes == [
        f"table {db}.nokey has no primary key: its changes are keyed by the table"
    ]
    changes = sink.changes
    assert [(c.op, c.table.name, c.before, c.after) for c in changes] == [
        ("c", "items", None, {"id": 1, "name": "a"}),
        ("c", "items", None, {"id": 2, "name": "b"}),
        ("u", "items", {"id": 1, "name": "a"}, {"id": 1, "name": "c"}),
        ("d", "items", {"id": 2, "name": "b"}, None),
        ("c", "nokey", None, {"v": 7}),
        ("t", "items", None, None),
    ]
    assert changes[0].table.key == ("id",)
    assert changes[4].table.key == ()
    # one transaction per statement; each a commit time and a GTID position
    with_changes = [t for t in sink.transactions if t.changes]
    assert [len(t.changes) for t in with_changes] == [2, 1, 1, 1, 1]
    for txn in with_changes:
        assert txn.commit_ts_ms is not None
        assert abs(txn.commit_ts_ms / 1000 - time.time()) < 60
        assert txn.position == {"gtid": txn.gtid, "snapshot": "done"}


async def test_types(mariadb_server: MariadbServer, db: str) -> None:
    server = mariadb_server
    server.execute(
        "CREATE TABLE t (id INT PRIMARY KEY, d DECIMAL(10,2), j JSON, dt DATETIME(6),"
        " ts TIMESTAMP(3) NULL, day DATE, b BLOB, f DOUBLE, n VARCHAR(5), bits BIT(4))",
        db,
    )
    row = (
        '(1, 12.50, \'{"a": [1, 2.5, null], "b": "x"}\', \'2024-01-31 12:00:00.123456\','
        " '2024-01-31 12:00:00.5', '2024-01-31', x'00ff10', 1.5, NULL, b'0101')"
    )
    server.execute("SET GLOBAL time_zone = '+00:00'")
    try:
        server.execute(f"INSERT INTO t VALUES {row}", db)
        sink = Sink()
        reader = MysqlReader(
            make_source(server, db, ["t"], snapshot="initial"), heartbeat=HEARTBEAT
        )
        async with running(reader, sink) as task:
            await streaming(sink, task)
            await sql(server, f"INSERT INTO t VALUES {row.replace('(1,', '(2,', 1)}", db)
            await wait_for(lambda: len(sink.changes) == 2, what="the insert")
    finally:
        server.execute("SET GLOBAL time_zone = SYSTEM")
    expected = {
        "d": "12.50",
        "j": {"a": [1, 2.5, None], "b": "x"},
        "dt": "2024-01-31T12:00:00.123456",
        "ts": "2024-01-31T12:00:00.500000Z",
        "day": "2024-01-31",
        "b": "AP8Q",
        "f": 1.5,
        "n": None,
        "bits": 5,
    }
    snap, streamed = sink.changes
    assert snap.op == "r"
    assert streamed.op == "c"
    assert snap.after == {"id": 1, **expected}
    assert streamed.after == {"id": 2, **expected}


async def test_alter_table_between_changes(mariadb_server: MariadbServer, db: str) -> None:
    server = mariadb_server
    server.execute("CREATE TABLE t (id INT PRIMARY KEY)", db)
    sink = Sink()
    reader = MysqlReader(make_source(server, db, ["t"]), heartbeat=HEARTBEAT)
    async with running(reader, sink) as task:
        await streaming(sink, task)
        await sql(server, "INSERT INTO t VALUES (1)", db)
        await sql(server, "ALTER TABLE t ADD COLUMN note JSON", db)
        await sql(server, "INSERT INTO t VALUES (2, '[1]')", db)
        await sql(server, "UPDATE t SET note = '{\"k\": 1}' WHERE id = 1", db)
        await wait_for(lambda: len(sink.changes) == 3, what="three changes")
    assert [(c.op, c.before, c.after) for c in sink.changes] == [
        ("c", None, {"id": 1}),
        ("c", None, {"id": 2, "note": [1]}),
        ("u", {"id": 1, "note": None}, {"id": 1, "note": {"k": 1}}),
    ]


async def test_a_large_transaction_comes_in_parts_and_only_the_last_has_its_position(
    mariadb_server: MariadbServer, db: str
) -> None:
    server = mariadb_server
    source = table_t(server, db)
    sink = Sink()
    reader = MysqlReader(source, heartbeat=HEARTBEAT)
    rows = 5 * PART_CHANGES + 500
    values = ",".join(f"({i})" for i in range(1, rows + 1))
    async with running(reader, sink) as task:
        await streaming(sink, task)
        await sql(server, "INSERT INTO t VALUES (0)", db)
        await sql(server, f"INSERT INTO t VALUES {values}", db)
        await wait_for(lambda: len(sink.changes) == rows + 1, what="every row")
    first = next(t for t in sink.transactions if t.changes)
    parts = [t for t in sink.transactions if t.changes][1:]
    assert sum(len(t.changes) for t in parts) == rows
    assert [t.complete for t in parts] == [False] * (len(parts) - 1) + [True]
    # A part is PART_CHANGES changes and the rest of the rows event that reached them (a rows
    # event holds at most binlog_row_event_max_size, 8 KiB, of rows).
    assert all(len(t.changes) < 3 * PART_CHANGES for t in parts)
    assert len(parts) >= 3
    assert {t.gtid for t in parts} == {parts[-1].gtid}
    assert {str(t.position["gtid"]) for t in parts} == {str(parts[-1].position["gtid"])}
    assert [c.after["id"] for c in sink.changes if c.after] == list(range(rows + 1))
    # From the position before it, the whole transaction comes again; from its own, nothing.
    for marker, start, expected in ((-1, first.position, rows), (-2, parts[-1].position, 0)):
        again = Sink()
        reader = MysqlReader(source, heartbeat=HEARTBEAT)
        async with running(reader, again, start) as task:
            await sql(server, f"INSERT INTO t VALUES ({marker})", db)
            await wait_for(
                lambda: marker in [c.after["id"] for c in again.changes if c.after],  # noqa: B023
                what="the marker row",
            )
        assert len([c for c in again.changes if c.after and c.after["id"] > 0]) == expected


async def test_resume_after_stop_repeats_nothing(mariadb_server: MariadbServer, db: str) -> None:
    server = mariadb_server
    source = table_t(server, db)
    sink = Sink()
    reader = MysqlReader(source, heartbeat=HEARTBEAT)
    async with running(reader, sink) as task:
        await streaming(sink, task)
        for i in range(1, 4):
            await sql(server, f"INSERT INTO t VALUES ({i})", db)
        await wait_for(lambda: len(sink.changes) == 3, what="three inserts")
    last = next(t for t in reversed(sink.transactions) if t.changes)
    reader.committed(last.position)
    for i in range(4, 6):
        await sql(server, f"INSERT INTO t VALUES ({i})", db)
    again = Sink()
    reader = MysqlReader(source, heartbeat=HEARTBEAT)
    async with running(reader, again, last.position) as task:
        await wait_for(lambda: len(again.changes) >= 2 or task.done(), what="the new inserts")
        await sql(server, "INSERT INTO t VALUES (6)", db)
        await wait_for(lambda: len(again.changes) >= 3, what="one more insert")
    assert again.ops() == [("c", 4), ("c", 5), ("c", 6)]
    assert again.states == ["streaming"]


async def test_second_reader_is_standby_until_the_first_stops(
    mariadb_server: MariadbServer, db: str
) -> None:
    server = mariadb_server
    source = table_t(server, db)
    first, second = Sink(), Sink()
    async with running(MysqlReader(source, heartbeat=HEARTBEAT), first) as task:
        await streaming(first, task)
        with pytest.raises(Standby):
            await MysqlReader(source, heartbeat=HEARTBEAT).run(None, second)
        assert second.transactions == []
    async with running(MysqlReader(source, heartbeat=HEARTBEAT), second) as task:
        await streaming(second, task)
        await sql(server, "INSERT INTO t VALUES (1)", db)
        await wait_for(lambda: second.ops() == [("c", 1)], what="the insert")


@pytest.mark.parametrize(
    ("flag", "setting"),
    [("--skip-log-bin", "log_bin"), ("--binlog-format=STATEMENT", "binlog_format")],
)
async def test_misconfigured_server(flag: str, setting: str) -> None:
    with MariadbServer([flag]) as server:
        server.make_cdc_user()
        server.execute("CREATE TABLE shop.t (id INT PRIMARY KEY)")
        reader = MysqlReader(make_source(server, "shop", ["t"]), heartbeat=HEARTBEAT)
        with pytest.raises(ReaderError) as info:
            await reader.run(None, Sink())
        assert info.value.setting == setting
        assert setting in str(info.value)
        # the lock went with the connection
        assert server.execute("SELECT IS_FREE_LOCK(%s)", args=(reader.source.lock_name,)) == [(1,)]


async def test_wrong_password(mariadb_server: MariadbServer, db: str) -> None:
    mariadb_server.execute("CREATE TABLE t (id INT PRIMARY KEY)", db)
    source = make_source(mariadb_server, db, ["t"], password="wrong")
    with pytest.raises(ReaderError) as info:
        await MysqlReader(source).run(None, Sink())
    assert info.value.setting == "dsn"
    assert info.value.retriable


async def test_unreachable_server_is_an_outage() -> None:
    from tests.support.net import free_port

    source = Source.model_validate(
        {
            "id": "gone",
            "kind": "mysql",
            "dsn": f"mysql://cdc:secret@127.0.0.1:{free_port()}/shop",
            "tables": ["shop.t"],
        }
    )
    with pytest.raises(ReaderError) as info:
        await MysqlReader(source).run(None, Sink())
    assert info.value.setting is None


async def test_missing_grants(mariadb_server: MariadbServer, db: str) -> None:
    server = mariadb_server
    server.execute("CREATE TABLE t (id INT PRIMARY KEY)", db)
    server.make_cdc_user(name=f"norepl_{db}", db=db, grants=("BINLOG MONITOR",))
    source = make_source(server, db, ["t"], user=f"norepl_{db}")
    with pytest.raises(ReaderError) as info:
        await MysqlReader(source).run(None, Sink())
    assert info.value.setting == "REPLICATION SLAVE"
    source = make_source(server, db, ["t", "missing"])
    with pytest.raises(ReaderError) as info:
        await MysqlReader(source).run(None, Sink())
    assert info.value.setting == "tables"


async def test_purged_binlog_is_position_lost(mariadb_server: MariadbServer, db: str) -> None:
    server = mariadb_server
    source = table_t(server, db)
    sink = Sink()
    async with running(MysqlReader(source, heartbeat=HEARTBEAT), sink) as task:
        await streaming(sink, task)
        await sql(server, "INSERT INTO t VALUES (1)", db)
        await wait_for(lambda: len(sink.changes) == 1, what="the insert")
    stored = sink.transactions[-1].position
    server.execute("INSERT INTO t VALUES (2)", db)
    server.execute("FLUSH BINARY LOGS")
    server.execute("INSERT INTO t VALUES (3)", db)
    current = server.execute("SHOW MASTER STATUS")[0][0]
    server.execute(f"PURGE BINARY LOGS TO '{current}'")
    with pytest.raises(PositionLost) as info:
        await asyncio.wait_for(
            MysqlReader(source, heartbeat=HEARTBEAT).run(stored, Sink()), timeout=10
        )
    assert stored["gtid"] in str(info.value)
    assert "purged" in str(info.value)
    assert not info.value.retriable


async def test_cancel_stops_the_thread(mariadb_server: MariadbServer, db: str) -> None:
    server = mariadb_server
    server.execute("CREATE TABLE t (id INT PRIMARY KEY)", db)

    def own_threads() -> int:  # asyncio.to_thread's pool threads outlive every call
        return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))

    before = own_threads()
    sink = Sink()
    reader = MysqlReader(make_source(server, db, ["t"]), heartbeat=HEARTBEAT)
    task = asyncio.create_task(reader.run(None, sink))
    await streaming(sink, task)
    names = {t.name for t in threading.enumerate()}
    assert any(n.startswith("cdc-mysql-") for n in names)
    started = time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 2 * HEARTBEAT + 1
    await wait_for(
        lambda: not any(t.name.startswith("cdc-mysql-") for t in threading.enumerate()),
        timeout=3,
        what="the reader thread to end",
    )
    await wait_for(lambda: own_threads() <= before, timeout=3, what="threads")


class FreezingProxy:
    """A TCP proxy to the server that can go silent on binlog connections (those that sent
    COM_BINLOG_DUMP), as a stalled network or server would, while new connections pass."""

    def __init__(self, port: int) -> None:
        self.upstream_port = port
        self.binlog_connections = 0
        self.frozen_upto = 0  # binlog connections 1..frozen_upto are silent
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    def freeze(self) -> None:
        """Stop forwarding anything from the server on the binlog connections open now."""
        self.frozen_upto = self.binlog_connections

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [client_w, server_w]
        state = {"binlog": 0}

        async def up() -> None:
            while data := await client_r.read(65536):
                if len(data) > 4 and data[4] == 0x12 and not state["binlog"]:  # COM_BINLOG_DUMP
                    self.binlog_connections += 1
                    state["binlog"] = self.binlog_connections
                server_w.write(data)
                await server_w.drain()

        async def down() -> None:
            while data := await server_r.read(65536):
                if 0 < state["binlog"] <= self.frozen_upto:
                    continue  # silence: read and drop
                client_w.write(data)
                await client_w.drain()

        with contextlib.suppress(Exception):
            await asyncio.gather(up(), down())
        client_w.close()
        server_w.close()


async def test_silent_stream_reconnects(mariadb_server: MariadbServer, db: str) -> None:
    """The watchdog: a binlog connection that goes silent (not even a heartbeat) for
    10 heartbeats is replaced by a new one from the last delivered GTID."""
    server = mariadb_server
    server.execute("CREATE TABLE t (id INT PRIMARY KEY)", db)
    async with FreezingProxy(server.port) as proxy:
        source = make_source(server, db, ["t"])
        source = source.model_copy(
            update={"dsn": source.dsn.replace(str(server.port), str(proxy.port))}
        )
        sink = Sink()
        reader = MysqlReader(source, heartbeat=HEARTBEAT)
        async with running(reader, sink) as task:
            await streaming(sink, task)
            await sql(server, "INSERT INTO t VALUES (1)", db)
            await wait_for(lambda: sink.ops() == [("c", 1)], what="the first insert")
            assert proxy.binlog_connections == 1
            proxy.freeze()
            await sql(server, "INSERT INTO t VALUES (2)", db)
            await wait_for(
                lambda: proxy.binlog_connections == 2, timeout=10, what="a new binlog connection"
            )
            await wait_for(lambda: len(sink.ops()) >= 2, what="the second insert")
            await sql(server, "INSERT INTO t VALUES (3)", db)
            await wait_for(lambda: len(sink.ops()) >= 3, what="the third insert")
    assert sink.ops() == [("c", 1), ("c", 2), ("c", 3)]


async def test_blocked_sink_stops_reading(mariadb_server: MariadbServer, db: str) -> None:
    server = mariadb_server
    server.execute("CREATE TABLE t (id INT PRIMARY KEY, pad VARCHAR(200))", db)
    sink = Sink()
    reader = MysqlReader(make_source(server, db, ["t"]), heartbeat=HEARTBEAT)
    async with running(reader, sink) as task:
        await streaming(sink, task)
        sink.gate = asyncio.Event()
        calls = sink.calls
        for i in range(1, 31):
            await sql(server, f"INSERT INTO t VALUES ({i}, REPEAT('x', 200))", db)
        await wait_for(lambda: reader.delivering and sink.calls == calls + 1, what="blocked")
        # while the sink holds the first transaction the thread reads nothing more: it stays
        # blocked in deliver for several heartbeats (which it would otherwise read)
        deadline = time.monotonic() + 5 * HEARTBEAT
        while time.monotonic() < deadline:
            assert reader.delivering
            assert sink.calls == calls + 1
            await asyncio.sleep(0.05)
        sink.gate.set()
        await wait_for(lambda: len(sink.changes) == 30, what="all 30 after the gate opened")
    assert [c.after["id"] for c in sink.changes if c.after] == list(range(1, 31))
