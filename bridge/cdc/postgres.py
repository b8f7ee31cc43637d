"""The PostgreSQL change-data-capture reader: logical replication with pgoutput (protocol 1).

One `PostgresReader` per source. `run()`:
1. connects (an ordinary session) and checks what the operator must set: the DSN, wal_level,
   the REPLICATION attribute, the tables and SELECT on them;
2. fences: `pg_try_advisory_lock(<bigint from the slot name>)` on that session, held while it
   runs; a slot active for another process also means Standby;
3. keeps the publication's table list equal to the source's tables;
4. initial snapshot (no gap, no duplicate): the slot is (re)created on the replication
   connection, which exports a snapshot; another session reads every table in it
   (REPEATABLE READ, SET TRANSACTION SNAPSHOT) while the replication connection stays idle;
5. streams from the stored commit LSN (passed as start_lsn: after a server restart the slot's
   own position may go back), one Transaction per Begin..Commit, awaiting `sink.deliver`
   before reading on (backpressure) while a side task keeps sending feedback so the server
   does not drop a paused reader (wal_sender_timeout).

The replication connection is psycopg2's LogicalReplicationConnection in asynchronous mode,
read with `loop.add_reader`; the ordinary sessions' blocking calls run in `asyncio.to_thread`.
Only LSNs given to `committed()` are sent as flush positions (psycopg2 itself may move the
flush position to a keepalive's WAL end once everything received was confirmed: that WAL
holds nothing for this slot).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar, cast

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from bridge.cdc import pgoutput
from bridge.cdc._model import (
    PART_CHANGES,
    Change,
    ChangeSink,
    PositionLost,
    ReaderError,
    Standby,
    TableRef,
    Transaction,
)
from bridge.cdc.config import Source

__all__ = ["PostgresReader", "format_lsn", "parse_lsn"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = psycopg2.extensions.connection

SESSION_OPTIONS: Final = (
    "-c datestyle=ISO -c timezone=UTC -c intervalstyle=postgres"
    " -c extra_float_digits=3 -c bytea_output=hex"
)
"""The settings `pgoutput.convert` expects the text forms in (the walsender formats values
with its session's settings, as an ordinary session does)."""

APPLICATION_NAME: Final = "hstream-bridge"
CONNECT_TIMEOUT: Final = 10
LAG_INTERVAL: Final = 5.0
DROP_WAIT: Final = 10.0

_DSN_ERRORS: Final = (
    "password authentication failed",
    "no password supplied",
    "does not exist",  # database "x" / role "x"
    "no pg_hba.conf entry",
    "pg_hba.conf rejects",
    "authentication failed",
    "password is required",
    "permission denied for database",
)


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> int."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lock_key(slot_name: str) -> int:
    """The advisory lock key (a signed bigint) of a slot name: stable across processes."""
    return int.from_bytes(hashlib.sha256(slot_name.encode()).digest()[:8], "big", signed=True)


def _quote_table(schema: str, name: str) -> sql.Composable:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


class _Table:
    """A captured table as found at start: its oid, key and TableRef."""

    __slots__ = ("oid", "ref")

    def __init__(self, oid: int, ref: TableRef) -> None:
        self.oid = oid
        self.ref = ref


class _Relation:
    """A Relation message made ready to turn its tuples into rows: the captured table (None when
    the table is not captured), and per column its name, its converter (by base type) and
    whether it is part of the replica identity."""

    __slots__ = ("converters", "keys", "names", "ref")

    def __init__(
        self,
        ref: TableRef | None,
        names: tuple[str, ...],
        converters: tuple[pgoutput.Converter, ...],
        keys: tuple[bool, ...],
    ) -> None:
        self.ref = ref
        self.names = names
        self.converters = converters
        self.keys = keys


class PostgresReader:
    """Reads one PostgreSQL source (implements bridge.cdc._model.Reader)."""

    def __init__(
        self,
        source: Source,
        *,
        environ: Mapping[str, str] | None = None,
        feedback_interval: float = 5.0,
        snapshot_chunk_rows: int = 1000,
        lag_interval: float = LAG_INTERVAL,
    ) -> None:
        if source.kind != "postgres":
            raise ValueError(f"source {source.id} is a {source.kind} source, not postgres")
        self.source = source
        self.environ = environ
        self.feedback_interval = feedback_interval
        self.snapshot_chunk_rows = max(1, snapshot_chunk_rows)
        self.lag_interval = lag_interval
        self.slot_name = source.slot_name
        self.publication_name = source.publication_name
        self._flush_lsn = 0
        self._sent_flush = 0
        self._received_lsn = 0
        self._in_flight: collections.deque[tuple[int, int | None]] = collections.deque()
        self._base_types: dict[int, int] = {}
        self._encoding = "utf-8"
        self._conn: Connection | None = None
        self._conn_lock = asyncio.Lock()

    # --- the Reader protocol ------------------------------------------------------------------

    def committed(self, position: Mapping[str, Any]) -> None:
        """Everything up to `position` is stored: its LSN becomes the flush position."""
        try:
            lsn = int(position["lsn"])
        except (KeyError, TypeError, ValueError):
            return
        if lsn > self._flush_lsn:
            self._flush_lsn = lsn
        while self._in_flight and self._in_flight[0][0] <= lsn:
            self._in_flight.popleft()

    async def run(self, start: Mapping[str, Any] | None, sink: ChangeSink) -> None:
        conn: Connection | None = None
        repl: Connection | None = None
        try:
            conn = await self._connect()
            self._conn = conn
            self._conn_lock = asyncio.Lock()
            await self._check_server(conn)
            if not await self._call(conn, self._try_lock):
                raise Standby(
                    f"another process reads source {self.source.id} (it holds the lock of"
                    f" slot {self.slot_name}); waiting"
                )
            slot = await self._call(conn, self._slot_info)
            if slot is not None and slot["active"]:
                raise Standby(
                    f"slot {self.slot_name} is active for PID {slot['active_pid']}: another"
                    " process reads this source; waiting"
                )
            if slot is not None and slot["database"] != self._dsn_database():
                raise ReaderError(
                    f"replication slot {self.slot_name} belongs to database {slot['database']},"
                    f" not {self._dsn_database()}: drop it (SELECT pg_drop_replication_slot("
                    f"'{self.slot_name}')) or give the source another id",
                    setting="slot",
                )
            tables = await self._call(conn, self._find_tables)
            for table in tables.values():
                if not table.ref.key:
                    sink.note(
                        f"table {table.ref.qualified} has no primary key: its changes are keyed"
                        " by the table"
                    )
            await self._call(conn, lambda c: self._ensure_publication(c, tables))

            needs_snapshot = start is None or start.get("snapshot") != "done"
            repl = await self._connect_replication()
            if needs_snapshot:
                start_lsn = await self._begin(conn, repl, slot, tables, sink)
            else:
                assert start is not None
                if slot is None:
                    raise PositionLost(
                        f"replication slot {self.slot_name} of source {self.source.id} is gone:"
                        " the changes since the stored position are lost; a re-snapshot is"
                        " needed (docs/cdc.md)"
                    )
                start_lsn = int(start["lsn"])
            await self._stream(repl, start_lsn, tables, sink)
        except psycopg2.Error as exc:
            raise self._error(exc) from exc
        except pgoutput.DecodeError as exc:
            raise ReaderError(f"slot {self.slot_name} sent what is not pgoutput: {exc}") from exc
        finally:
            self._conn = None
            for connection in (repl, conn):
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()

    async def drop(self) -> None:
        """Drop the slot (waiting up to DROP_WAIT s for a reader to let go of it) and the
        publication."""
        conn = await self._connect()
        try:
            deadline = time.monotonic() + DROP_WAIT
            while True:
                locked = await self._call(conn, self._try_lock)
                slot = await self._call(conn, self._slot_info)
                if locked and (slot is None or not slot["active"]):
                    break
                if time.monotonic() > deadline:
                    holder = f"PID {slot['active_pid']}" if slot and slot["active"] else "a reader"
                    raise ReaderError(
                        f"slot {self.slot_name} is in use by {holder}: stop the source's reader"
                        " before deleting it"
                    )
                await asyncio.sleep(0.1)

            def drop(c: Connection) -> None:
                with c.cursor() as cur:
                    cur.execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                        " WHERE slot_name = %s",
                        (self.slot_name,),
                    )
                    cur.execute(
                        sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                            sql.Identifier(self.publication_name)
                        )
                    )

            await self._call(conn, drop)
        except psycopg2.Error as exc:
            raise self._error(exc) from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    # --- connections --------------------------------------------------------------------------

    def _dsn_database(self) -> str:
        return self.source.connection(self.environ).database

    def _params(self) -> dict[str, Any]:
        try:
            dsn = self.source.connection(self.environ)
        except ValueError as exc:
            raise ReaderError(str(exc), setting="password_env") from None
        params: dict[str, Any] = {
            "host": dsn.host,
            "port": dsn.port,
            "user": dsn.user,
            "dbname": dsn.database,
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": APPLICATION_NAME,
            "options": SESSION_OPTIONS,
            "client_encoding": "UTF8",
        }
        if dsn.password is not None:
            params["password"] = dsn.password
        return params

    async def _connect(self) -> Connection:
        params = self._params()

        def connect() -> Connection:
            conn: Connection = psycopg2.connect(**params)
            conn.autocommit = True
            return conn

        try:
            return await asyncio.to_thread(connect)
        except psycopg2.Error as exc:
            raise self._error(exc) from exc

    async def _connect_replication(self) -> Connection:
        params = self._params()
        conn: Connection = psycopg2.connect(
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            async_=1,
            **params,
        )
        try:
            await _poll(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _call(self, conn: Connection, fn: Callable[[Connection], T]) -> T:
        """A blocking call on an ordinary session, in a thread, one at a time."""
        async with self._conn_lock:
            return await asyncio.to_thread(fn, conn)

    def _error(self, exc: psycopg2.Error) -> ReaderError:
        """The ReaderError a psycopg2 error means."""
        text = str(exc).strip() or type(exc).__name__
        code = getattr(exc, "pgcode", None)
        try:
            params = self._params()
        except ReaderError:
            params = {"host": "?", "port": "?", "user": "?", "dbname": "?"}
        where = f"{params['host']}:{params['port']}"
        if code == "55006" or "is active for PID" in text:
            return Standby(f"slot {self.slot_name} is in use by another process: {text}")
        if code == "53400" or "all replication slots are in use" in text:
            return ReaderError(
                f"PostgreSQL at {where} has no free replication slot ({text}): raise"
                " max_replication_slots in postgresql.conf (restart) or drop unused slots",
                setting="max_replication_slots",
            )
        if "max_wal_senders" in text:
            return ReaderError(
                f"PostgreSQL at {where} accepts no more replication connections ({text}):"
                " raise max_wal_senders in postgresql.conf (restart)",
                setting="max_wal_senders",
            )
        if isinstance(exc, psycopg2.OperationalError) and code is None:
            lowered = text.lower()
            if any(marker in lowered for marker in _DSN_ERRORS):
                return ReaderError(
                    f"PostgreSQL at {where} refused user {params['user']} on database"
                    f" {params['dbname']}: {text}; fix the source's dsn (user, password,"
                    " database) or the server's pg_hba.conf",
                    setting="dsn",
                )
            return ReaderError(f"PostgreSQL at {where} is unreachable: {text}")
        if code is not None and code.startswith("28"):
            return ReaderError(f"PostgreSQL refused the login: {text}", setting="dsn")
        return ReaderError(f"PostgreSQL at {where}: {text}")

    # --- checks, fence, publication -----------------------------------------------------------

    async def _check_server(self, conn: Connection) -> None:
        def check(c: Connection) -> tuple[str, bool, bool, str, str]:
            with c.cursor() as cur:
                cur.execute("SHOW wal_level")
                (wal_level,) = cur.fetchone() or ("",)
                cur.execute(
                    "SELECT rolreplication, rolsuper, current_user FROM pg_roles"
                    " WHERE rolname = current_user"
                )
                replication, superuser, user = cur.fetchone() or (False, False, "")
                cur.execute("SHOW server_encoding")
                (encoding,) = cur.fetchone() or ("UTF8",)
                return str(wal_level), bool(replication), bool(superuser), str(user), encoding

        wal_level, replication, superuser, user, encoding = await self._call(conn, check)
        self._encoding = psycopg2.extensions.encodings.get(encoding, "utf-8")
        if encoding == "SQL_ASCII":
            self._encoding = "utf-8"
        if wal_level != "logical":
            raise ReaderError(
                f"wal_level is {wal_level}, change data capture needs logical: set wal_level ="
                " logical in postgresql.conf and restart PostgreSQL",
                setting="wal_level",
            )
        if not (replication or superuser):
            raise ReaderError(
                f"role {user} may not use logical replication: ALTER ROLE"
                f' "{user}" REPLICATION (as a superuser)',
                setting="REPLICATION",
            )

    def _try_lock(self, c: Connection) -> bool:
        with c.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(self.slot_name),))
            row = cur.fetchone()
            return bool(row and row[0])

    def _slot_info(self, c: Connection) -> dict[str, Any] | None:
        with c.cursor() as cur:
            cur.execute(
                "SELECT active, active_pid, database, confirmed_flush_lsn::text, plugin"
                " FROM pg_replication_slots WHERE slot_name = %s",
                (self.slot_name,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return {
            "active": bool(row[0]),
            "active_pid": row[1],
            "database": row[2],
            "confirmed_flush_lsn": parse_lsn(row[3]) if row[3] else None,
            "plugin": row[4],
        }

    def _find_tables(self, c: Connection) -> dict[tuple[str, str], _Table]:
        database = self._dsn_database()
        found: dict[tuple[str, str], _Table] = {}
        with c.cursor() as cur:
            for qualified in self.source.tables:
                schema, _, name = qualified.partition(".")
                cur.execute(
                    "SELECT c.oid, has_table_privilege(c.oid, 'SELECT') FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                    (schema, name),
                )
                row = cur.fetchone()
                if row is None:
                    raise ReaderError(
                        f"table {qualified} does not exist in database {database}: create it"
                        " or remove it from the source's tables",
                        setting="tables",
                    )
                oid, can_select = row
                if not can_select:
                    raise ReaderError(
                        f"the source's role may not read table {qualified}: GRANT SELECT ON"
                        f' "{schema}"."{name}" TO <the dsn\'s user>',
                        setting=f"SELECT on {qualified}",
                    )
                cur.execute(
                    "SELECT a.attname FROM pg_index i"
                    " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
                    " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                    " WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
                    (oid,),
                )
                key = tuple(r[0] for r in cur.fetchall())
                found[(schema, name)] = _Table(oid, TableRef(database, schema, name, key))
        return found

    def _ensure_publication(self, c: Connection, tables: Mapping[tuple[str, str], _Table]) -> None:
        pub = sql.Identifier(self.publication_name)
        table_list = sql.SQL(", ").join(_quote_table(s, n) for s, n in tables)
        with c.cursor() as cur:
            cur.execute(
                "SELECT puballtables FROM pg_publication WHERE pubname = %s",
                (self.publication_name,),
            )
            row = cur.fetchone()
            if row is None:
                statement = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, table_list)
            else:
                cur.execute(
                    "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                    (self.publication_name,),
                )
                current = {(r[0], r[1]) for r in cur.fetchall()}
                if not row[0] and current == set(tables):
                    return
                if row[0]:
                    statement = sql.SQL(
                        "DROP PUBLICATION {}; CREATE PUBLICATION {} FOR TABLE {}"
                    ).format(pub, pub, table_list)
                else:
                    statement = sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(pub, table_list)
            try:
                cur.execute(statement)
            except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.ObjectInUse) as exc:
                text = statement.as_string(c)
                raise ReaderError(
                    f"cannot create or change publication {self.publication_name}"
                    f" ({str(exc).strip()}): the owner of the tables (or a superuser) must run:"
                    f" {text}",
                    setting="publication",
                ) from None

    # --- slot and snapshot --------------------------------------------------------------------

    async def _create_slot(self, repl: Connection, export: bool) -> tuple[int, str | None]:
        """(consistent point, exported snapshot name or None)."""
        cur = repl.cursor()
        kind = "EXPORT_SNAPSHOT" if export else "NOEXPORT_SNAPSHOT"
        cur.execute(
            sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {}").format(
                sql.Identifier(self.slot_name), sql.SQL(kind)
            )
        )
        await _poll(repl)
        row = cur.fetchone()
        if row is None:
            raise ReaderError(f"CREATE_REPLICATION_SLOT {self.slot_name} returned nothing")
        return parse_lsn(row[1]), row[2]

    async def _begin(
        self,
        conn: Connection,
        repl: Connection,
        slot: Mapping[str, Any] | None,
        tables: Mapping[tuple[str, str], _Table],
        sink: ChangeSink,
    ) -> int:
        """Create the slot (and load the snapshot when asked for); the LSN to stream from."""

        def drop_slot(c: Connection) -> None:
            with c.cursor() as cur:
                cur.execute("SELECT pg_drop_replication_slot(%s)", (self.slot_name,))

        if self.source.snapshot == "never":
            if slot is None or slot["confirmed_flush_lsn"] is None:
                if slot is not None:
                    await self._call(conn, drop_slot)
                lsn, _ = await self._create_slot(repl, export=False)
            else:
                lsn = int(slot["confirmed_flush_lsn"])
            await sink.deliver(
                Transaction(changes=[], position={"lsn": lsn, "snapshot": "done"}, lsn=lsn)
            )
            return lsn

        if slot is not None:  # a snapshot cut short cannot be exported again
            await self._call(conn, drop_slot)
        lsn, snapshot_name = await self._create_slot(repl, export=True)
        if snapshot_name is None:
            raise ReaderError("the replication slot was created without an exported snapshot")
        sink.set_state("snapshot")
        await self._load_snapshot(snapshot_name, lsn, tables, sink)
        await sink.deliver(
            Transaction(
                changes=[], position={"lsn": lsn, "snapshot": "done"}, lsn=lsn, snapshot=True
            )
        )
        return lsn

    async def _load_snapshot(
        self,
        snapshot_name: str,
        lsn: int,
        tables: Mapping[tuple[str, str], _Table],
        sink: ChangeSink,
    ) -> None:
        """Read every table in the exported snapshot; deliver chunks of op "r" rows."""
        snap = await self._connect()
        try:
            await asyncio.to_thread(_execute, snap, _BEGIN_SNAPSHOT, (snapshot_name,))
            position = {"lsn": lsn, "snapshot": "running"}
            for table in tables.values():
                columns = await asyncio.to_thread(self._columns, snap, table.oid)
                names = [name for name, _, _ in columns]
                types = [base for _, _, base in columns]
                _raw_text(snap, {o for _, declared, base in columns for o in (declared, base)})
                query = sql.SQL("DECLARE bridge_snapshot NO SCROLL CURSOR FOR SELECT {} FROM {}")
                await asyncio.to_thread(
                    _execute,
                    snap,
                    query.format(
                        sql.SQL(", ").join(sql.Identifier(n) for n in names),
                        _quote_table(table.ref.schema, table.ref.name),
                    ),
                )
                fetch = f"FETCH {self.snapshot_chunk_rows} FROM bridge_snapshot"
                while True:
                    rows = await asyncio.to_thread(_fetch, snap, fetch)
                    if not rows:
                        break
                    changes = [
                        Change(
                            "r",
                            table.ref,
                            None,
                            {
                                n: pgoutput.convert(t, v)
                                for n, t, v in zip(names, types, row, strict=True)
                            },
                        )
                        for row in rows
                    ]
                    await sink.deliver(
                        Transaction(changes=changes, position=position, lsn=lsn, snapshot=True)
                    )
                    if len(rows) < self.snapshot_chunk_rows:
                        break
                await asyncio.to_thread(_execute, snap, "CLOSE bridge_snapshot")
            await asyncio.to_thread(_execute, snap, "COMMIT")
        finally:
            with contextlib.suppress(Exception):
                snap.close()

    def _columns(self, c: Connection, oid: int) -> list[tuple[str, int, int]]:
        """(name, type OID, base type OID) of the columns pgoutput sends, in order."""
        with c.cursor() as cur:
            cur.execute(
                "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s AND attnum > 0"
                " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                (oid,),
            )
            rows = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
        self._resolve_types(c, [t for _, t in rows])
        return [(name, t, self._base_types.get(t, t)) for name, t in rows]

    def _resolve_oids(self, oids: Iterable[int], c: Connection) -> None:
        self._resolve_types(c, oids)

    def _resolve_types(self, c: Connection, oids: Iterable[int]) -> None:
        """Learn the base type of every domain among `oids` (cached; others map to
        themselves)."""
        todo = sorted(
            {o for o in oids if o not in self._base_types and o not in pgoutput.KNOWN_TYPES}
        )
        if not todo:
            return
        with c.cursor() as cur:
            cur.execute(
                "WITH RECURSIVE chain(start, oid, depth) AS ("
                " SELECT oid, oid, 0 FROM pg_type WHERE oid = ANY(%s::oid[])"
                " UNION ALL SELECT chain.start, t.typbasetype, chain.depth + 1"
                " FROM chain JOIN pg_type t ON t.oid = chain.oid"
                " WHERE t.typbasetype <> 0 AND chain.depth < 16)"
                " SELECT DISTINCT ON (start) start, oid FROM chain ORDER BY start, depth DESC",
                (todo,),
            )
            for start, base in cur.fetchall():
                self._base_types[int(start)] = int(base)
        for o in todo:
            self._base_types.setdefault(o, o)

    # --- streaming ----------------------------------------------------------------------------

    async def _stream(
        self,
        repl: Connection,
        start_lsn: int,
        tables: Mapping[tuple[str, str], _Table],
        sink: ChangeSink,
    ) -> None:
        cur: psycopg2.extras.ReplicationCursor = repl.cursor()  # type: ignore[assignment]
        cur.start_replication(
            slot_name=self.slot_name,
            decode=False,
            start_lsn=start_lsn,
            options={"proto_version": "1", "publication_names": self.publication_name},
        )
        await _poll(repl)
        sink.set_state("streaming")
        self._flush_lsn = max(self._flush_lsn, start_lsn)
        self._sent_flush = 0
        self._received_lsn = max(self._received_lsn, start_lsn)
        self._in_flight.clear()
        relations: dict[int, _Relation] = {}
        fd = repl.fileno()
        loop = asyncio.get_running_loop()
        side = [
            asyncio.create_task(self._feedback_loop(cur)),
            asyncio.create_task(self._lag_loop(sink)),
        ]
        try:
            self._send_feedback(cur)
            changes: list[Change] = []
            begin: pgoutput.Begin | None = None
            while True:
                for task in side:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                message = cur.read_message()
                if message is None:
                    if self._flush_lsn > self._sent_flush:
                        self._send_feedback(cur)
                    await _wait_fd(loop, fd, write=False, timeout=self.feedback_interval)
                    continue
                decoded = pgoutput.decode(message.payload, self._encoding)
                if isinstance(decoded, pgoutput.Begin):
                    begin = decoded
                    changes = []
                elif isinstance(decoded, pgoutput.Commit):
                    end = decoded.end_lsn
                    self._received_lsn = max(self._received_lsn, end)
                    if end <= start_lsn:  # already stored: the server should have skipped it
                        changes = []
                        begin = None
                        continue
                    commit_ms = pgoutput.pg_timestamp_to_ms(decoded.commit_ts_us)
                    txn = Transaction(
                        changes=changes,
                        position={"lsn": end, "snapshot": "done"},
                        commit_ts_ms=commit_ms,
                        tx_id=begin.xid if begin is not None else None,
                        lsn=end,
                    )
                    self._in_flight.append((end, commit_ms))
                    changes = []
                    begin = None
                    await sink.deliver(txn)
                    if self._flush_lsn > self._sent_flush:
                        self._send_feedback(cur)
                elif isinstance(decoded, pgoutput.Relation):
                    oids = [col.type_oid for col in decoded.columns]
                    if any(
                        o not in pgoutput.KNOWN_TYPES and o not in self._base_types for o in oids
                    ):
                        conn = self._conn
                        if conn is not None:
                            await self._call(conn, functools.partial(self._resolve_oids, oids))
                    relations[decoded.relation_id] = self._relation(decoded, tables)
                else:
                    changes.extend(self._changes(decoded, relations))
                    if (
                        len(changes) >= PART_CHANGES
                        and begin is not None
                        and begin.final_lsn >= start_lsn  # not stored before (see Commit)
                    ):
                        await sink.deliver(_part(begin, changes))
                        changes = []
        finally:
            for task in side:
                task.cancel()
            for task in side:
                with contextlib.suppress(BaseException):
                    await task

    def _relation(
        self, relation: pgoutput.Relation, tables: Mapping[tuple[str, str], _Table]
    ) -> _Relation:
        """What `_changes` needs of a Relation message (its columns' base types resolved)."""
        table = tables.get((relation.namespace, relation.name))
        columns = relation.columns
        return _Relation(
            table.ref if table is not None else None,
            tuple(column.name for column in columns),
            tuple(
                pgoutput.converter(self._base_types.get(column.type_oid, column.type_oid))
                for column in columns
            ),
            tuple(column.key for column in columns),
        )

    def _changes(
        self, message: pgoutput.Message, relations: Mapping[int, _Relation]
    ) -> list[Change]:
        if isinstance(message, pgoutput.Insert):
            ref, relation = _captured(relations, message.relation_id)
            if ref is None:
                return []
            after, unchanged = _row(relation, message.new, False, self._encoding)
            return [Change("c", ref, None, after, unchanged)]
        if isinstance(message, pgoutput.Update):
            ref, relation = _captured(relations, message.relation_id)
            if ref is None:
                return []
            before = None
            if message.old is not None:
                only_key = message.old_kind == "K"
                before, _ = _row(relation, message.old, only_key, self._encoding)
            after, unchanged = _row(relation, message.new, False, self._encoding)
            return [Change("u", ref, before, after, unchanged)]
        if isinstance(message, pgoutput.Delete):
            ref, relation = _captured(relations, message.relation_id)
            if ref is None:
                return []
            only_key = message.old_kind == "K"
            before, _ = _row(relation, message.old, only_key, self._encoding)
            return [Change("d", ref, before, None)]
        if isinstance(message, pgoutput.Truncate):
            out = []
            for relation_id in message.relation_ids:
                ref, _ = _captured(relations, relation_id)
                if ref is not None:
                    out.append(Change("t", ref, None, None))
            return out
        return []  # Origin, Type, logical messages

    def _send_feedback(self, cur: Any) -> None:
        flush = self._flush_lsn
        if flush <= 0:
            return
        cur.send_feedback(
            write_lsn=max(self._received_lsn, flush), flush_lsn=flush, apply_lsn=flush, force=True
        )
        self._sent_flush = flush

    async def _feedback_loop(self, cur: Any) -> None:
        """Feedback every feedback_interval seconds, also while `deliver` waits."""
        while True:
            await asyncio.sleep(self.feedback_interval)
            self._send_feedback(cur)

    async def _lag_loop(self, sink: ChangeSink) -> None:
        while True:
            conn = self._conn
            if conn is not None:
                try:
                    lag = await self._call(conn, self._lag_bytes)
                except psycopg2.Error:
                    lag = None
                oldest = self._in_flight[0][1] if self._in_flight else None
                seconds = 0.0
                if oldest is not None:
                    seconds = max(0.0, time.time() - oldest / 1000)
                sink.set_lag(lag, seconds)
            await asyncio.sleep(self.lag_interval)

    def _lag_bytes(self, c: Connection) -> int | None:
        with c.cursor() as cur:
            cur.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = %s",
                (self.slot_name,),
            )
            row = cur.fetchone()
        return None if row is None or row[0] is None else max(0, int(row[0]))


_BEGIN_SNAPSHOT: Final = (
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT %s"
)


def _captured(
    relations: Mapping[int, _Relation], relation_id: int
) -> tuple[TableRef | None, _Relation]:
    """The relation a change names and its captured table (None: not captured, skip it);
    ReaderError when no Relation message announced it."""
    relation = relations.get(relation_id)
    if relation is None:
        raise _no_relation(relation_id)
    return relation.ref, relation


def _no_relation(relation_id: int) -> ReaderError:
    return ReaderError(
        f"pgoutput sent a change of relation {relation_id} before its Relation message"
    )


def _row(
    relation: _Relation, data: pgoutput.TupleData, only_key: bool, encoding: str
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A tuple's JSON-ready values by column name (only the replica identity's columns when
    `only_key`), and the names of the unchanged TOASTed columns it did not send."""
    if data.plain and not only_key:  # text and NULLs: the common case
        texts = cast("tuple[str | None, ...]", data.values)
        return {
            name: convert(text) if text is not None else None
            for name, convert, text in zip(relation.names, relation.converters, texts, strict=False)
        }, ()
    values: dict[str, Any] = {}
    unchanged: list[str] = []
    for name, convert, key, value in zip(
        relation.names, relation.converters, relation.keys, data.values, strict=False
    ):
        if only_key and not key:
            continue
        if isinstance(value, str):
            values[name] = convert(value)
        elif value is None:
            values[name] = None
        elif isinstance(value, bytes):
            values[name] = convert(value.decode(encoding, errors="replace"))
        else:  # UNCHANGED
            unchanged.append(name)
    return values, tuple(unchanged)


def _execute(conn: Connection, query: str | sql.Composable, params: Any = None) -> None:
    with conn.cursor() as cur:
        cur.execute(query, params)


def _fetch(conn: Connection, query: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query)
        return list(cur.fetchall())


# --- helpers ----------------------------------------------------------------------------------


def _raw_text(conn: Connection, oids: Iterable[int]) -> None:
    """Make `conn` return these types' values as the server's text form (the form pgoutput
    sends), not as psycopg2's Python objects."""
    oid_tuple = tuple(sorted(set(oids)))
    if not oid_tuple:
        return
    raw = psycopg2.extensions.new_type(oid_tuple, "BRIDGE_RAW", lambda value, _cur: value)
    psycopg2.extensions.register_type(raw, conn)


async def _wait_fd(
    loop: asyncio.AbstractEventLoop, fd: int, *, write: bool, timeout: float | None = None
) -> None:
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        if timeout is None:
            await future
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await future
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _poll(conn: Connection) -> None:
    """Drive an asynchronous psycopg2 connection until its current operation is done."""
    loop = asyncio.get_running_loop()
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_READ:
            await _wait_fd(loop, conn.fileno(), write=False)
        elif state == psycopg2.extensions.POLL_WRITE:
            await _wait_fd(loop, conn.fileno(), write=True)
        else:
            raise ReaderError(f"unexpected connection poll state {state}")


def _part(begin: pgoutput.Begin, changes: list[Change]) -> Transaction:
    """A part of a large transaction, handed over before its commit is read: it is known by its
    commit record's LSN (`final_lsn`); its end LSN, the position to store, comes with the commit."""
    return Transaction(
        changes=changes,
        position={"lsn": begin.final_lsn, "snapshot": "done"},
        commit_ts_ms=pgoutput.pg_timestamp_to_ms(begin.commit_ts_us),
        tx_id=begin.xid,
        lsn=begin.final_lsn,
        complete=False,
    )
