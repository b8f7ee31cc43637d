"""What a change-data-capture reader hands over, and what it reports.

A reader (bridge/cdc/postgres.py, bridge/cdc/mysql.py) turns one database's change log into
`Transaction`s in commit order. Everything after that (records, streams, dead letters, the
position store, acknowledgement in order) is shared and lives in bridge/cdc/runner.py; a reader
imports nothing from bridge/ outside bridge/cdc/.

Values in `Change.before` / `Change.after` are JSON-ready, the same for every database:
- integers -> int; float/double -> float (NaN and infinities -> their names as strings:
  "NaN", "Infinity", "-Infinity"); boolean -> bool; NULL -> None
- numeric/decimal -> str (exact, e.g. "12.50"); money -> str
- json/jsonb -> the decoded value (dict, list, str, number, bool, None)
- date -> "2024-01-31"; time -> "12:00:00.5"; timestamp -> "2024-01-31T12:00:00.123456";
  timestamptz -> ISO 8601 in UTC with "Z" ("2024-01-31T12:00:00.123456Z"); interval -> str
- bytea/blob/binary -> base64 (str); uuid, text, enum, anything else -> str
- arrays -> the text form as PostgreSQL sends it (str)
"""

import dataclasses
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Final, Literal, Protocol

__all__ = [
    "PART_CHANGES",
    "Change",
    "ChangeSink",
    "Op",
    "PositionLost",
    "Reader",
    "ReaderError",
    "Standby",
    "TableRef",
    "Transaction",
]

Op = Literal["c", "u", "d", "r", "t"]
"""Debezium's operation codes: create, update, delete, read (initial snapshot), truncate."""


@dataclasses.dataclass(frozen=True, slots=True)
class TableRef:
    """A captured table. `schema` is the PostgreSQL schema, or for MySQL/MariaDB the database
    (as `db` is); `key` names the primary key columns in key order, () when it has none."""

    db: str
    schema: str
    name: str
    key: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        """`schema.table`: how sources name tables in their `tables` list."""
        return f"{self.schema}.{self.name}"


@dataclasses.dataclass(slots=True)  # not frozen: made once per row, a frozen __init__ is 2x slower
class Change:
    """One row change (treat it as immutable). `before` is None for c/r/t and when the database
    does not send the old row (PostgreSQL updates with REPLICA IDENTITY DEFAULT); for d with
    DEFAULT identity it holds only the key columns. `after` is None for d and t. `unchanged`
    names columns whose value was not sent (PostgreSQL's unchanged TOASTed values): they are
    absent from `after`."""

    op: Op
    table: TableRef
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    unchanged: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Transaction:
    """The changes of one committed transaction (or one chunk of the initial snapshot), in
    order, with the position to resume AFTER it.

    `position` is JSON-ready and opaque to everything but the reader that made it: the runner
    stores it in HStreamDB once every record of this transaction and of all earlier ones is
    stored, and gives the last stored one back to `Reader.run` at the next start.
    PostgreSQL: {"lsn": <commit end LSN as int>, "snapshot": "done" | "running"};
    MariaDB: {"gtid": "0-1-11", ...}. `lsn`/`gtid` and `tx_id` also go into each record's
    `source` block; `commit_ts_ms` is the commit time (ms since the epoch), None when unknown.
    A transaction may have no changes (only a position to store: an idle source's heartbeat).

    A transaction of more than PART_CHANGES changes is handed over in parts as it is read, so
    memory holds one part, not the transaction: every part but the last has `complete` False,
    and its position is never stored (the last part's is, once every part is stored). The parts'
    `position` and `lsn` say which transaction they belong to; for PostgreSQL, whose end LSN
    comes only with the commit, they hold the commit record's LSN (`final_lsn`) instead.
    """

    changes: Sequence[Change]
    position: Mapping[str, Any]
    commit_ts_ms: int | None = None
    tx_id: int | None = None
    lsn: int | None = None
    gtid: str | None = None
    snapshot: bool = False
    complete: bool = True


PART_CHANGES: Final = 1000
"""Changes per part of a large transaction (see `Transaction`)."""


class ReaderError(Exception):
    """The source cannot read now. `setting` names what the operator must change (a server
    setting such as `wal_level`, a grant such as `REPLICATION`, `dsn` for bad credentials),
    None for an outage. Retriable errors are retried with backoff by the runner and shown in the
    source's status; the message says what is wrong and how to fix it."""

    retriable = True

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class PositionLost(ReaderError):
    """The stored position cannot be resumed (PostgreSQL: the slot is gone; MariaDB: the binlog
    holding it was purged). Not retried: a hard, visible error until the operator asks for a
    re-snapshot (docs/cdc.md)."""

    retriable = False


class Standby(ReaderError):
    """Another process holds the source's lock (the slot is active / GET_LOCK returned 0): this
    one waits and tries again."""


class ChangeSink(Protocol):
    """Where a reader hands transactions over (the runner)."""

    def deliver(self, transaction: Transaction) -> Awaitable[None]:
        """Hand over one transaction, in commit order. Resolves once its records are in the
        pipeline (NOT once stored); it waits while the byte budget is spent (backpressure), so
        a reader awaits it before reading on."""
        ...

    def set_state(self, state: Literal["snapshot", "streaming"]) -> None:
        """The reader holds the lock and is loading the snapshot or streaming."""
        ...

    def note(self, text: str) -> None:
        """A fact for the status that is not an error (e.g. a table without a primary key)."""
        ...

    def set_lag(self, lag_bytes: int | None, lag_seconds: float | None) -> None:
        """How far the source is behind the database (None when not known)."""
        ...


class Reader(Protocol):
    """One source's change log. Built from the source's settings; `run` is called again after
    it raised a retriable ReaderError (a new connection, from the last stored position)."""

    async def run(self, start: Mapping[str, Any] | None, sink: ChangeSink) -> None:
        """Take the source's lock, then read from `start` (None: nothing stored yet, so the
        initial snapshot when the source asks for one) and deliver transactions in commit
        order until cancelled. Raises Standby while another process holds the lock,
        ReaderError when it cannot read. Releases the lock and closes its connections when it
        returns, raises or is cancelled."""
        ...

    def committed(self, position: Mapping[str, Any]) -> None:
        """Everything up to `position` (a position of a delivered transaction) is stored, and
        the position too: the reader may let the database forget it (PostgreSQL: flush LSN
        feedback). Called in delivery order; never blocks."""
        ...

    async def drop(self) -> None:
        """The source is deleted: drop what it keeps in the database (slot, publication)."""
        ...
