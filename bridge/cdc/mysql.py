"""MySQL / MariaDB change data capture from the row binlog (mysql-replication on PyMySQL).

mysql-replication is blocking, so one thread per source reads the binlog and hands each committed
transaction to asyncio with `run_coroutine_threadsafe(sink.deliver(txn), loop).result()`: while
the sink waits (its byte budget is spent) the thread waits too and stops reading the socket, which
is the backpressure. `run()`:

1. opens a side connection and takes `GET_LOCK(source.lock_name, 0)` on it (0: another replica
   runs the source -> Standby); the lock lives as long as that connection, so the side
   connection is pinged every few seconds (a lost lock ends `run()` with an outage);
2. checks the server (log_bin, binlog_format=ROW, binlog_row_image=FULL,
   binlog_row_metadata=FULL, grants, the tables) and reads the primary keys;
3. loads the initial snapshot when nothing is stored yet. MariaDB: `START TRANSACTION WITH
   CONSISTENT SNAPSHOT` plus `binlog_snapshot_file/position` and `BINLOG_GTID_POS` give the
   exact GTID the snapshot corresponds to, without a lock (no gap, no duplicate). MySQL (not
   testable here): a brief `FLUSH TABLES WITH READ LOCK` around reading `gtid_executed` and
   opening the snapshot; without the RELOAD grant it reads `gtid_executed` first and then opens
   the snapshot, so a transaction committed in between can appear twice (never lost);
4. streams from the GTID position: MariaDB `auto_position="<domain>-<server>-<seq>[,...]"`
   (one GTID per replication domain), MySQL the executed GTID set.

Positions: {"gtid": <state to resume after>, "snapshot": "running" | "done"}. With a single
MariaDB replication domain `gtid` is the transaction's own GTID ("0-1-11"); with several it is
the comma-separated list of the last GTID of each domain, as MariaDB's gtid_slave_pos is.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import datetime
import decimal
import json
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

import pymysql
import pymysql.cursors
from pymysql.constants import FIELD_TYPE as PYMYSQL_FIELD_TYPE
from pymysqlreplication import BinLogStreamReader  # type: ignore[import-untyped]
from pymysqlreplication.constants import FIELD_TYPE  # type: ignore[import-untyped]
from pymysqlreplication.event import (  # type: ignore[import-untyped]
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.gtid import Gtid, GtidSet  # type: ignore[import-untyped]
from pymysqlreplication.row_event import (  # type: ignore[import-untyped]
    DeleteRowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from bridge.cdc._model import (
    PART_CHANGES,
    Change,
    ChangeSink,
    Op,
    PositionLost,
    ReaderError,
    Standby,
    TableRef,
    Transaction,
)
from bridge.cdc.config import Source

__all__ = ["MysqlReader"]

# MySQL / MariaDB error codes this reader tells apart.
ER_ACCESS_DENIED: Final = 1045
ER_DBACCESS_DENIED: Final = 1044
ER_SPECIFIC_ACCESS_DENIED: Final = 1227
ER_TABLEACCESS_DENIED: Final = 1142
ER_NO_SUCH_TABLE: Final = 1146
ER_BAD_DB: Final = 1049
ER_MASTER_FATAL_READING_BINLOG: Final = 1236
ER_CONNECTION_KILLED: Final = 4052  # MariaDB: another reader connected with our server_id
CR_CONNECTION_ERROR: Final = 2003
CR_SERVER_GONE: Final = 2006
CR_SERVER_LOST: Final = 2013

FL_STANDALONE: Final = 1  # MariaDB GTID flag: a single-statement transaction (DDL), no COMMIT
LAG_INTERVAL: Final = 3.0  # seconds between lag reports (and lock-connection pings)
WATCHDOG_HEARTBEATS: Final = 10  # silence for this many heartbeats -> reconnect
EMPTY_EVERY: Final = 1.0  # seconds between position-only deliveries of uncaptured transactions
STOP_GRACE: Final = 10.0  # seconds run() waits for the thread beyond 2 heartbeats

_TRUNCATE: Final = re.compile(
    r"^\s*TRUNCATE\s+(?:TABLE\s+)?(?:(`(?:[^`]|``)+`|[^\s.`;]+)\s*\.\s*)?(`(?:[^`]|``)+`|[^\s.`;]+)",
    re.IGNORECASE,
)
_DDL: Final = re.compile(r"^\s*(ALTER|CREATE|DROP|RENAME)\b", re.IGNORECASE)


class _Stopped(Exception):
    """The worker thread was asked to stop."""


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == "`":
        return name[1:-1].replace("``", "`")
    return name


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def _text(exc: BaseException) -> str:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if len(args) >= 2:
        return str(args[1])
    return str(exc)


def _interval(value: datetime.timedelta) -> str:
    micros = value.days * 86_400_000_000 + value.seconds * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    seconds, fraction = divmod(micros, 1_000_000)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"
    if fraction:
        text += f".{fraction:06d}".rstrip("0")
    return text


def _json_ready(value: Any) -> Any:
    """A decoded JSON value with bytes (MySQL's binary JSON) turned into str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {_json_ready(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _convert(value: Any, kind: str) -> Any:
    """One column value, JSON-ready (bridge/cdc/_model.py). `kind` is "json", "timestamp",
    "bit" or "" (anything else)."""
    if value is None:
        return None
    if kind == "json":
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("utf-8", errors="replace")
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return _json_ready(value)
    if kind == "bit":
        if isinstance(value, bytes | bytearray):
            return int.from_bytes(value, "big")
        if isinstance(value, str):
            return int(value, 2) if value else 0
        return value
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, decimal.Decimal):
        if value.is_nan():
            return "NaN"
        if value.is_infinite():
            return "Infinity" if value > 0 else "-Infinity"
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        if kind == "timestamp":
            if value.tzinfo is not None:
                value = value.astimezone(datetime.UTC).replace(tzinfo=None)
            return value.isoformat() + "Z"
        return value.isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return _interval(value)
    if isinstance(value, datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset):
        return ",".join(sorted(str(v) for v in value))
    return str(value)


class _GtidState:
    """Where to resume: MariaDB one GTID per domain, MySQL an executed GTID set."""

    def __init__(self, text: str, *, mariadb: bool) -> None:
        self.mariadb = mariadb
        self.domains: dict[str, str] = {}
        self.mysql_set: Any = None
        if mariadb:
            for part in text.split(","):
                part = part.strip()
                if part:
                    self.domains[part.split("-", 1)[0]] = part
        else:
            self.mysql_set = GtidSet(text.strip() or None)

    def __str__(self) -> str:
        if self.mariadb:
            return ",".join(self.domains[d] for d in sorted(self.domains, key=int))
        return str(self.mysql_set)

    def contains(self, gtid: str) -> bool:
        """`gtid` is the stored position itself (or, MySQL, in the stored set)."""
        if self.mariadb:
            return gtid in self.domains.values()
        return bool(Gtid(gtid) in self.mysql_set)

    def add(self, gtid: str) -> None:
        if self.mariadb:
            self.domains[gtid.split("-", 1)[0]] = gtid
        else:
            self.mysql_set = self.mysql_set + Gtid(gtid)


class _Table:
    """A captured table: its TableRef and which columns need special conversion."""

    def __init__(self, ref: TableRef, json_columns: frozenset[str]) -> None:
        self.ref = ref
        self.json_columns = json_columns


class MysqlReader:
    """Reads one MySQL/MariaDB source's row binlog (implements bridge.cdc._model.Reader)."""

    def __init__(
        self,
        source: Source,
        *,
        environ: Mapping[str, str] | None = None,
        heartbeat: float = 1.0,
        snapshot_chunk_rows: int = 1000,
    ) -> None:
        if source.kind != "mysql":
            raise ValueError(f"MysqlReader reads mysql sources, not {source.kind}")
        self.source = source
        self.environ = environ
        self.heartbeat = heartbeat
        self.snapshot_chunk_rows = max(1, snapshot_chunk_rows)
        self.last_committed: Mapping[str, Any] | None = None
        self._stop = threading.Event()
        self._pending: concurrent.futures.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._mariadb = True
        self._tables: dict[tuple[str, str], _Table] = {}
        # Written by the worker thread, read by the lag task.
        self._last_event_ts: float | None = None
        self._state_text = ""
        self._stream: Any = None
        self.delivering = False  # the worker thread is waiting for sink.deliver (backpressure)

    # --- Reader -------------------------------------------------------------------------------

    def committed(self, position: Mapping[str, Any]) -> None:
        """Nothing to tell the server (the binlog is kept by its own retention)."""
        self.last_committed = position

    async def drop(self) -> None:
        """A binlog reader keeps nothing in the database."""
        return

    async def run(self, start: Mapping[str, Any] | None, sink: ChangeSink) -> None:
        loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self._pending = None
        side: pymysql.connections.Connection[Any] | None = None
        lag_task: asyncio.Task[None] | None = None
        try:
            side = await asyncio.to_thread(self._connect, "side")
            await asyncio.to_thread(self._take_lock, side)
            await asyncio.to_thread(self._check, side)
            for table in self._tables.values():
                if not table.ref.key:
                    sink.note(
                        f"table {table.ref.qualified} has no primary key:"
                        " its changes are keyed by the table"
                    )
            snapshot = start is None or start.get("snapshot") != "done"
            gtid: str | None = None
            if not snapshot and start is not None:
                gtid = str(start.get("gtid") or "")
            elif self.source.snapshot == "never":
                gtid = await asyncio.to_thread(self._current_gtid, side)
                snapshot = False
                await sink.deliver(
                    Transaction(changes=(), position={"gtid": gtid, "snapshot": "done"}, gtid=gtid)
                )
            if snapshot:
                sink.set_state("snapshot")
            else:
                sink.set_state("streaming")
            self._state_text = gtid or ""

            done: asyncio.Future[None] = loop.create_future()

            def finish(exc: BaseException | None) -> None:
                if done.done():
                    return
                if exc is None:
                    done.set_result(None)
                else:
                    done.set_exception(exc)

            def work() -> None:
                try:
                    self._work(loop, sink, gtid, snapshot)
                except _Stopped:
                    loop.call_soon_threadsafe(finish, None)
                except BaseException as exc:  # handed to run()
                    loop.call_soon_threadsafe(finish, self._map_error(exc))
                else:
                    loop.call_soon_threadsafe(finish, None)

            self._thread = threading.Thread(
                target=work, name=f"cdc-mysql-{self.source.id}", daemon=True
            )
            self._thread.start()
            lag_task = asyncio.create_task(self._watch(side, sink))
            finished, _ = await asyncio.wait({done, lag_task}, return_when=asyncio.FIRST_COMPLETED)
            if lag_task in finished:
                lag_task.result()  # raises the lost lock / outage
            done.result()
        except ReaderError:
            raise
        except Exception as exc:  # pymysql, sockets, the library: all a ReaderError
            raise self._map_error(exc) from exc
        finally:
            self._stop.set()
            self._cancel_pending()
            if lag_task is not None:
                lag_task.cancel()
                with contextlib.suppress(BaseException):
                    await lag_task
            await self._join_thread()
            if side is not None:
                with contextlib.suppress(Exception):
                    side.close()

    def _cancel_pending(self) -> None:
        pending = self._pending
        if pending is not None:
            pending.cancel()

    async def _join_thread(self) -> None:
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + 2 * self.heartbeat + STOP_GRACE
        while thread.is_alive() and time.monotonic() < deadline:
            await asyncio.shield(asyncio.to_thread(thread.join, 0.05))
        if thread.is_alive():  # stuck in a read: close the stream under it
            stream = self._stream
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
        self._thread = None

    # --- connections and checks ---------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        try:
            dsn = self.source.connection(self.environ)
        except ValueError as exc:
            raise ReaderError(str(exc), setting="password_env") from None
        return {
            "host": dsn.host,
            "port": dsn.port,
            "user": dsn.user,
            "password": dsn.password or "",
            "connect_timeout": 10,
            "charset": "utf8mb4",
        }

    def _connect(self, purpose: str, **extra: Any) -> pymysql.connections.Connection[Any]:
        settings = self._settings()
        settings.update(extra)
        try:
            return pymysql.connect(autocommit=True, **settings)
        except pymysql.MySQLError as exc:
            raise self._map_error(exc) from None
        except OSError as exc:
            raise ReaderError(
                f"cannot reach {settings['host']}:{settings['port']} ({purpose}): {exc}"
            ) from None

    def _map_error(self, exc: BaseException) -> ReaderError:
        if isinstance(exc, ReaderError):
            return exc
        where = f"{self.source.id}"
        code = _code(exc)
        if code == ER_ACCESS_DENIED:
            return ReaderError(
                f"source {where}: the server refused the user and password in dsn: {_text(exc)}",
                setting="dsn",
            )
        if code in (ER_DBACCESS_DENIED, ER_BAD_DB):
            return ReaderError(f"source {where}: {_text(exc)}", setting="dsn")
        if code == ER_MASTER_FATAL_READING_BINLOG:
            return PositionLost(
                f"source {where}: the binlog holding GTID {self._state_text or '(start)'} was"
                f" purged or cannot be read ({_text(exc)}); changes after it are lost to this"
                " source: ask for a re-snapshot"
            )
        if code == ER_SPECIFIC_ACCESS_DENIED and "REPLICATION SLAVE" in _text(exc).upper():
            return ReaderError(
                f"source {where}: the user needs REPLICATION SLAVE: GRANT REPLICATION SLAVE ON *.*"
                f" TO the user ({_text(exc)})",
                setting="REPLICATION SLAVE",
            )
        if code == ER_CONNECTION_KILLED:
            return ReaderError(
                f"source {where}: another binlog reader connected with server_id"
                f" {self.source.server_id}: {_text(exc)}"
            )
        if isinstance(exc, (pymysql.MySQLError, OSError)):
            return ReaderError(f"source {where}: database error: {exc}")
        return ReaderError(f"source {where}: reader failed: {type(exc).__name__}: {exc}")

    def _take_lock(self, side: pymysql.connections.Connection[Any]) -> None:
        with side.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 0)", (self.source.lock_name,))
            row = cursor.fetchone()
        if not row or row[0] != 1:
            raise Standby(
                f"source {self.source.id}: another process holds the lock"
                f" {self.source.lock_name!r} (GET_LOCK returned {row[0] if row else None})"
            )

    def _variable(self, cursor: pymysql.cursors.Cursor, name: str) -> str | None:
        cursor.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
        row = cursor.fetchone()
        return None if row is None else str(row[1])

    def _check(self, side: pymysql.connections.Connection[Any]) -> None:
        with side.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            row = cursor.fetchone()
            version = str(row[0]) if row else ""
            self._mariadb = "mariadb" in version.lower()
            if (self._variable(cursor, "log_bin") or "OFF").upper() not in ("ON", "1"):
                raise ReaderError(
                    "the binary log is off: start the server with --log-bin (and a server-id);"
                    " log_bin needs a restart",
                    setting="log_bin",
                )
            fmt = (self._variable(cursor, "binlog_format") or "").upper()
            if fmt != "ROW":
                raise ReaderError(
                    f"binlog_format is {fmt or 'unknown'}: set binlog_format=ROW",
                    setting="binlog_format",
                )
            image = (self._variable(cursor, "binlog_row_image") or "").upper()
            if image != "FULL":
                raise ReaderError(
                    f"binlog_row_image is {image or 'unknown'}: set binlog_row_image=FULL",
                    setting="binlog_row_image",
                )
            metadata = self._variable(cursor, "binlog_row_metadata")
            if metadata is None:
                raise ReaderError(
                    f"the server ({version}) has no binlog_row_metadata: column names need"
                    " MariaDB >= 10.5 or MySQL >= 8.0.14 with binlog_row_metadata=FULL",
                    setting="binlog_row_metadata",
                )
            if metadata.upper() != "FULL":
                raise ReaderError(
                    f"binlog_row_metadata is {metadata}: set binlog_row_metadata=FULL",
                    setting="binlog_row_metadata",
                )
            if not self._mariadb:
                mode = (self._variable(cursor, "gtid_mode") or "OFF").upper()
                if mode != "ON":
                    raise ReaderError(
                        f"gtid_mode is {mode}: set gtid_mode=ON and enforce_gtid_consistency=ON",
                        setting="gtid_mode",
                    )
            self._check_grants(cursor)
            self._tables = {}
            for qualified in self.source.tables:
                db, name = qualified.split(".", 1)
                try:
                    cursor.execute(f"SELECT 1 FROM {_quote(db)}.{_quote(name)} LIMIT 0")
                    cursor.fetchall()
                except pymysql.MySQLError as exc:
                    code = _code(exc)
                    if code in (ER_NO_SUCH_TABLE, ER_BAD_DB):
                        raise ReaderError(
                            f"table {qualified} does not exist: create it or remove it from tables",
                            setting="tables",
                        ) from None
                    if code in (ER_TABLEACCESS_DENIED, ER_DBACCESS_DENIED):
                        raise ReaderError(
                            f"the user cannot read {qualified}: GRANT SELECT ON"
                            f" {_quote(db)}.{_quote(name)} TO the user",
                            setting="SELECT",
                        ) from None
                    raise
                cursor.execute(
                    "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE"
                    " WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s AND CONSTRAINT_NAME='PRIMARY'"
                    " ORDER BY ORDINAL_POSITION",
                    (db, name),
                )
                key = tuple(str(r[0]) for r in cursor.fetchall())
                ref = TableRef(db=db, schema=db, name=name, key=key)
                self._tables[(db, name)] = _Table(ref, self._json_columns(cursor, db, name))

    def _check_grants(self, cursor: pymysql.cursors.Cursor) -> None:
        cursor.execute("SHOW GRANTS")
        grants = [str(r[0]).upper() for r in cursor.fetchall()]
        global_privs: set[str] = set()
        for grant in grants:
            match = re.match(r"GRANT (.+?) ON \*\.\* TO ", grant)
            if match:
                global_privs.update(p.strip() for p in match.group(1).split(","))
        if "ALL PRIVILEGES" in global_privs or "ALL" in global_privs:
            return
        if not global_privs & {"REPLICATION SLAVE", "REPLICATION REPLICA"}:
            raise ReaderError(
                "the user lacks REPLICATION SLAVE: GRANT REPLICATION SLAVE ON *.* TO the user",
                setting="REPLICATION SLAVE",
            )
        if self._mariadb:
            if not global_privs & {"BINLOG MONITOR", "REPLICATION CLIENT", "SUPER"}:
                raise ReaderError(
                    "the user lacks BINLOG MONITOR: GRANT BINLOG MONITOR ON *.* TO the user",
                    setting="BINLOG MONITOR",
                )
        elif not global_privs & {"REPLICATION CLIENT", "SUPER"}:
            raise ReaderError(
                "the user lacks REPLICATION CLIENT: GRANT REPLICATION CLIENT ON *.* TO the user",
                setting="REPLICATION CLIENT",
            )

    def _json_columns(self, cursor: pymysql.cursors.Cursor, db: str, name: str) -> frozenset[str]:
        """Columns holding JSON: MySQL's JSON type, MariaDB's LONGTEXT CHECK (json_valid(c))."""
        cursor.execute(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s AND DATA_TYPE='json'",
            (db, name),
        )
        columns = {str(r[0]) for r in cursor.fetchall()}
        if self._mariadb:
            cursor.execute(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
                " WHERE CONSTRAINT_SCHEMA=%s AND TABLE_NAME=%s",
                (db, name),
            )
            for (clause,) in cursor.fetchall():
                match = re.fullmatch(r"\s*json_valid\(`((?:[^`]|``)+)`\)\s*", str(clause))
                if match:
                    columns.add(match.group(1).replace("``", "`"))
        return frozenset(columns)

    def _current_gtid(self, side: pymysql.connections.Connection[Any]) -> str:
        with side.cursor() as cursor:
            if self._mariadb:
                cursor.execute("SELECT @@GLOBAL.gtid_binlog_pos")
            else:
                cursor.execute("SELECT @@GLOBAL.gtid_executed")
            row = cursor.fetchone()
        return str(row[0] or "") if row else ""

    # --- lag and the lock ---------------------------------------------------------------------

    async def _watch(self, side: pymysql.connections.Connection[Any], sink: ChangeSink) -> None:
        """Every few seconds: ping the lock's connection (a lost connection lost the lock) and
        report the lag."""
        while True:
            await asyncio.sleep(min(LAG_INTERVAL, max(self.heartbeat, 0.1) * 3))
            try:
                current = await asyncio.to_thread(self._current_gtid, side)
            except (pymysql.MySQLError, OSError) as exc:
                raise ReaderError(
                    f"source {self.source.id}: lost the connection holding the lock: {exc}"
                ) from None
            if not self._current_state_caught_up(current):
                last = self._last_event_ts
                sink.set_lag(None, None if last is None else max(0.0, time.time() - last))
            else:
                sink.set_lag(0, 0.0)

    def _current_state_caught_up(self, current: str) -> bool:
        if self._mariadb:
            have = set(filter(None, (p.strip() for p in self._state_text.split(","))))
            want = set(filter(None, (p.strip() for p in current.split(","))))
            return want <= have
        return current.replace("\n", "") == self._state_text.replace("\n", "")

    # --- the worker thread --------------------------------------------------------------------

    def _deliver(self, loop: asyncio.AbstractEventLoop, sink: ChangeSink, txn: Transaction) -> None:
        """Hand one transaction to the sink and wait until it took it (backpressure)."""
        if self._stop.is_set():
            raise _Stopped

        async def deliver() -> None:
            await sink.deliver(txn)

        future = asyncio.run_coroutine_threadsafe(deliver(), loop)
        self._pending = future
        self.delivering = True
        try:
            if self._stop.is_set():
                future.cancel()
            future.result()
        except concurrent.futures.CancelledError:
            raise _Stopped from None
        finally:
            self.delivering = False
            self._pending = None
        if self._stop.is_set():
            raise _Stopped

    def _work(
        self,
        loop: asyncio.AbstractEventLoop,
        sink: ChangeSink,
        gtid: str | None,
        snapshot: bool,
    ) -> None:
        if snapshot:
            gtid = self._snapshot(loop, sink)
            loop.call_soon_threadsafe(sink.set_state, "streaming")
        self._stream_from(loop, sink, gtid or "")

    def _snapshot(self, loop: asyncio.AbstractEventLoop, sink: ChangeSink) -> str:
        conn = self._connect("snapshot", cursorclass=pymysql.cursors.SSCursor)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SET SESSION time_zone = '+00:00'")
                cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                gtid = self._open_snapshot(cursor, loop, sink)
            self._state_text = gtid
            position = {"gtid": gtid, "snapshot": "running"}
            for table in self._tables.values():
                self._snapshot_table(conn, table, gtid, position, loop, sink)
            with conn.cursor() as cursor:
                cursor.execute("COMMIT")
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        self._deliver(
            loop,
            sink,
            Transaction(
                changes=(), position={"gtid": gtid, "snapshot": "done"}, gtid=gtid, snapshot=True
            ),
        )
        return gtid

    def _open_snapshot(
        self, cursor: pymysql.cursors.Cursor, loop: asyncio.AbstractEventLoop, sink: ChangeSink
    ) -> str:
        if self._mariadb:
            cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            cursor.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
            status = {str(k).lower(): str(v) for k, v in cursor.fetchall()}
            file = status.get("binlog_snapshot_file", "")
            pos = int(status.get("binlog_snapshot_position", "0") or 0)
            cursor.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
            row = cursor.fetchone()
            if row is None or row[0] is None:
                raise ReaderError(
                    f"source {self.source.id}: BINLOG_GTID_POS({file!r}, {pos}) gave no GTID"
                )
            return str(row[0])
        # MySQL: no binlog_snapshot_*; fence the snapshot with a brief global read lock.
        try:
            cursor.execute("FLUSH TABLES WITH READ LOCK")
        except pymysql.MySQLError as exc:
            if _code(exc) != ER_SPECIFIC_ACCESS_DENIED:
                raise
            cursor.execute("SELECT @@GLOBAL.gtid_executed")
            row = cursor.fetchone()
            cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            loop.call_soon_threadsafe(
                sink.note,
                "no RELOAD grant for FLUSH TABLES WITH READ LOCK: rows changed while the"
                " snapshot opened may appear twice (op r and then c/u/d)",
            )
            return str(row[0] if row else "").replace("\n", "")
        try:
            cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            cursor.execute("SELECT @@GLOBAL.gtid_executed")
            row = cursor.fetchone()
        finally:
            cursor.execute("UNLOCK TABLES")
        return str(row[0] if row else "").replace("\n", "")

    def _snapshot_table(
        self,
        conn: pymysql.connections.Connection[Any],
        table: _Table,
        gtid: str,
        position: Mapping[str, Any],
        loop: asyncio.AbstractEventLoop,
        sink: ChangeSink,
    ) -> None:
        ref = table.ref
        with conn.cursor() as cursor:
            order = ", ".join(_quote(k) for k in ref.key)
            sql = f"SELECT * FROM {_quote(ref.db)}.{_quote(ref.name)}"
            if order:
                sql += f" ORDER BY {order}"
            cursor.execute(sql)
            names = [d[0] for d in cursor.description or ()]
            kinds = []
            for d in cursor.description or ():
                if d[0] in table.json_columns:
                    kinds.append("json")
                elif d[1] == PYMYSQL_FIELD_TYPE.TIMESTAMP:
                    kinds.append("timestamp")
                elif d[1] == PYMYSQL_FIELD_TYPE.BIT:
                    kinds.append("bit")
                else:
                    kinds.append("")
            while True:
                if self._stop.is_set():
                    raise _Stopped
                rows = cursor.fetchmany(self.snapshot_chunk_rows)
                if not rows:
                    break
                changes = [
                    Change(
                        op="r",
                        table=ref,
                        before=None,
                        after={
                            n: _convert(v, k) for n, v, k in zip(names, row, kinds, strict=True)
                        },
                    )
                    for row in rows
                ]
                self._deliver(
                    loop,
                    sink,
                    Transaction(changes=changes, position=position, gtid=gtid, snapshot=True),
                )

    # --- streaming ----------------------------------------------------------------------------

    def _stream_from(self, loop: asyncio.AbstractEventLoop, sink: ChangeSink, gtid: str) -> None:
        state = _GtidState(gtid, mariadb=self._mariadb)
        start = _GtidState(gtid, mariadb=self._mariadb)
        self._state_text = str(state)
        settings = self._settings()
        # The watchdog: a read that sees nothing, not even a heartbeat, for this long fails
        # with error 2013 and mysql-replication reconnects from `auto_position`, which is kept
        # at the last transaction read.
        settings["read_timeout"] = max(1, round(WATCHDOG_HEARTBEATS * self.heartbeat))
        schemas = sorted({db for db, _ in self._tables})
        names = sorted({name for _, name in self._tables})
        stream = BinLogStreamReader(
            connection_settings=settings,
            server_id=self.source.server_id,
            blocking=True,
            resume_stream=True,
            is_mariadb=self._mariadb,
            auto_position=str(state) if (self._mariadb or str(state)) else None,
            only_events=[
                GtidEvent,
                MariadbGtidEvent,
                WriteRowsEvent,
                UpdateRowsEvent,
                DeleteRowsEvent,
                XidEvent,
                QueryEvent,
                HeartbeatLogEvent,
                RotateEvent,
            ],
            only_schemas=schemas,
            only_tables=names,
            slave_heartbeat=self.heartbeat,
            enable_logging=False,
        )
        self._stream = stream
        changes: list[Change] = []
        current: str | None = None  # the GTID of the open transaction
        standalone = False
        last_empty = 0.0
        skipped: Transaction | None = None  # an undelivered position-only transaction
        try:
            for event in stream:
                if self._stop.is_set():
                    raise _Stopped
                if isinstance(event, HeartbeatLogEvent | RotateEvent):
                    if skipped is not None and isinstance(event, HeartbeatLogEvent):
                        self._deliver(loop, sink, skipped)
                        skipped = None
                        last_empty = time.monotonic()
                    continue
                if event.timestamp:
                    self._last_event_ts = float(event.timestamp)
                if isinstance(event, GtidEvent | MariadbGtidEvent):
                    current = str(event.gtid)
                    standalone = bool(getattr(event, "flags", 0) & FL_STANDALONE) and isinstance(
                        event, MariadbGtidEvent
                    )
                    changes = []
                    if not self._mariadb:
                        standalone = False
                    continue
                if current is None:
                    continue  # the tail of a transaction that began before our position
                end = False
                if isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                    changes.extend(self._row_changes(event))
                    if len(changes) >= PART_CHANGES and not start.contains(current):
                        self._deliver(loop, sink, self._part(state, current, changes, event))
                        changes = []
                elif isinstance(event, XidEvent):
                    end = True
                elif isinstance(event, QueryEvent):
                    query = str(event.query).strip()
                    upper = query.upper()
                    if upper == "COMMIT":
                        end = True
                    elif upper in ("BEGIN", "ROLLBACK"):
                        pass
                    else:
                        changes.extend(self._statement(event, query))
                        if standalone or not self._mariadb:
                            end = True
                if not end:
                    continue
                gtid_now, current = current, None
                state.add(gtid_now)
                stream.auto_position = str(state)
                if start.contains(gtid_now):
                    continue  # belt and braces: never deliver the stored position again
                txn = Transaction(
                    changes=tuple(changes),
                    position={"gtid": str(state), "snapshot": "done"},
                    commit_ts_ms=int(event.timestamp) * 1000 if event.timestamp else None,
                    gtid=gtid_now,
                )
                changes = []
                if txn.changes:
                    self._deliver(loop, sink, txn)
                    skipped = None
                elif time.monotonic() - last_empty >= EMPTY_EVERY:
                    self._deliver(loop, sink, txn)
                    skipped = None
                    last_empty = time.monotonic()
                else:
                    skipped = txn
                self._state_text = str(state)
        finally:
            self._stream = None
            with contextlib.suppress(Exception):
                stream.close()
        if not self._stop.is_set():
            raise ReaderError(f"source {self.source.id}: the server ended the binlog stream")
        raise _Stopped

    def _part(self, state: _GtidState, gtid: str, changes: list[Change], event: Any) -> Transaction:
        """A part of a large transaction, handed over before its commit is read (its position,
        the state with its GTID added, is stored only with the last part)."""
        after = _GtidState(str(state), mariadb=self._mariadb)
        after.add(gtid)
        return Transaction(
            changes=tuple(changes),
            position={"gtid": str(after), "snapshot": "done"},
            commit_ts_ms=int(event.timestamp) * 1000 if event.timestamp else None,
            gtid=gtid,
            complete=False,
        )

    def _row_changes(self, event: Any) -> Iterable[Change]:
        table = self._tables.get((str(event.schema), str(event.table)))
        if table is None:
            return ()
        kinds = {}
        for column in event.columns:
            if column.name in table.json_columns or column.type == FIELD_TYPE.JSON:
                kinds[column.name] = "json"
            elif column.type in (FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIMESTAMP2):
                kinds[column.name] = "timestamp"
            elif column.type == FIELD_TYPE.BIT:
                kinds[column.name] = "bit"

        def row(values: Mapping[str, Any]) -> dict[str, Any]:
            return {str(n): _convert(v, kinds.get(n, "")) for n, v in values.items()}

        out: list[Change] = []
        op: Op
        for item in event.rows:
            if isinstance(event, WriteRowsEvent):
                op = "c"
                out.append(Change(op=op, table=table.ref, before=None, after=row(item["values"])))
            elif isinstance(event, DeleteRowsEvent):
                op = "d"
                out.append(Change(op=op, table=table.ref, before=row(item["values"]), after=None))
            else:
                op = "u"
                out.append(
                    Change(
                        op=op,
                        table=table.ref,
                        before=row(item["before_values"]),
                        after=row(item["after_values"]),
                    )
                )
        return out

    def _statement(self, event: Any, query: str) -> list[Change]:
        """A statement in the binlog: TRUNCATE of a captured table -> op t; DDL on a captured
        database refreshes which columns hold JSON."""
        schema = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema)
        match = _TRUNCATE.match(query)
        if match:
            db = _unquote(match.group(1)) if match.group(1) else schema
            table = self._tables.get((db, _unquote(match.group(2))))
            if table is None:
                return []
            return [Change(op="t", table=table.ref, before=None, after=None)]
        if _DDL.match(query):
            self._refresh_json_columns()
        return []

    def _refresh_json_columns(self) -> None:
        """DDL is rare: a short-lived connection reads the columns again."""
        try:
            conn = self._connect("metadata")
        except ReaderError:
            return  # keep the old idea of the columns; the next DDL tries again
        try:
            with conn.cursor() as cursor:
                for key, table in list(self._tables.items()):
                    self._tables[key] = _Table(table.ref, self._json_columns(cursor, *key))
        except pymysql.MySQLError:
            return
        finally:
            with contextlib.suppress(Exception):
                conn.close()
