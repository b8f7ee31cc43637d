"""A throwaway PostgreSQL server for tests, on a free 127.0.0.1 port, with its own files.

Made from the Debian binaries (`pg_config --bindir` or /usr/lib/postgresql/*/bin). As root the
server runs as the `postgres` user (`su postgres -c ...`) in a temporary directory chowned to
it. The shared servers on 5432 are never touched.

Local (Unix socket) connections are trusted: `execute()` connects as the superuser `postgres`
through the socket in the server's directory. TCP connections need a password (scram), so a
wrong password fails as it would in production.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv
import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from tests.support.net import free_port

START_TIMEOUT = 30
_counter = itertools.count(1)


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0:
            candidates.append(result.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise FileNotFoundError("PostgreSQL server binaries not found (apt-get install postgresql)")


class PostgresServer:
    """One PostgreSQL server: `start()`, `stop()`, `restart()`, `kill()`; a context manager.

    `wal_level` is "logical" unless told (the misconfiguration test uses "replica");
    `options` are extra `-c name=value` settings, e.g. ("wal_sender_timeout=2s",).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        wal_level: str = "logical",
        options: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        self.bindir = find_bindir()
        self.wal_level = wal_level
        self.options = tuple(options)
        self.port = port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.data = self.directory / "data"
        self.log = self.directory / "pg.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self._initialised = False

    # --- process control ----------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        command = " ".join(shlex.quote(a) for a in args)
        argv = ["su", "postgres", "-c", command] if self._as_root else ["sh", "-c", command]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{command} failed ({result.returncode}): {result.stdout}{result.stderr}\n{log}"
            )

    def _initdb(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        self._initialised = True

    def start(self) -> None:
        """Start (initialising the data directory the first time); returns once it accepts
        connections (pg_ctl -w)."""
        if not self._initialised:
            self._initdb()
        settings = [
            f"listen_addresses={self.host}",
            f"wal_level={self.wal_level}",
            "max_replication_slots=20",
            "max_wal_senders=20",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            *self.options,
        ]
        opts = f"-p {self.port} -k {self.directory} " + " ".join(f"-c {s}" for s in settings)
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(START_TIMEOUT),
            "-o",
            opts,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop (smart, fast or immediate); returns once stopped (pg_ctl -w)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL the postmaster and its children (a crash); `start()` recovers."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            parent = psutil.Process(pid)
            children = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for process in [parent, *children]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs([parent, *children], timeout=10)

    def running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and psutil.pid_exists(pid)

    def close(self) -> None:
        """Stop the server (if running) and remove its files."""
        if self.running():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- SQL ----------------------------------------------------------------------------------

    def connect(self, db: str = "postgres") -> psycopg2.extensions.connection:
        """A superuser connection through the Unix socket, in autocommit mode."""
        conn = psycopg2.connect(
            host=str(self.directory), port=self.port, user="postgres", dbname=db
        )
        conn.autocommit = True
        return conn

    def execute(
        self,
        query: str | sql.Composable,
        params: Sequence[Any] | None = None,
        *,
        db: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit); the rows it returned, if any."""
        conn = self.connect(db)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall()) if cur.description is not None else []
        finally:
            conn.close()

    def dsn(self, user: str = "cdc", password: str = "secret", db: str = "shop") -> str:
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{db}"

    def make_cdc_user(
        self,
        name: str = "cdc",
        password: str = "secret",
        db: str | None = "shop",
        *,
        replication: bool = True,
    ) -> None:
        """A LOGIN role (WITH REPLICATION unless told) and, when `db` is given, a database it
        owns (so it may create tables and publications there). Idempotent."""
        exists = self.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        verb = "ALTER" if exists else "CREATE"
        flag = "REPLICATION" if replication else "NOREPLICATION"
        self.execute(
            sql.SQL("{} ROLE {} WITH LOGIN {} PASSWORD {}").format(
                sql.SQL(verb), sql.Identifier(name), sql.SQL(flag), sql.Literal(password)
            )
        )
        if db is not None and not self.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (db,)
        ):
            self.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(db), sql.Identifier(name)
                )
            )

    def new_database(self, owner: str = "cdc", password: str = "secret") -> str:
        """A fresh database owned by `owner` (created with REPLICATION LOGIN when missing)."""
        name = f"db_{os.getpid()}_{next(_counter)}"
        self.make_cdc_user(owner, password, db=None)
        self.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )
        return name

    def run_as(
        self, query: str, params: Sequence[Any] | None = None, *, db: str, user: str = "cdc"
    ) -> list[tuple[Any, ...]]:
        """Run one statement as another role (SET ROLE through the superuser's socket)."""
        conn = self.connect(db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(user)))
                cur.execute(query, params)
                return list(cur.fetchall()) if cur.description is not None else []
        finally:
            conn.close()

    def drop_slots(self, db: str | None = None, timeout: float = 10.0) -> None:
        """Drop the replication slots (of `db`, or all), waiting for them to become inactive."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.execute(
                "SELECT slot_name, active FROM pg_replication_slots"
                " WHERE %s::text IS NULL OR database = %s",
                (db, db),
            )
            if not rows:
                return
            for slot, active in rows:
                if not active:
                    self.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            if time.monotonic() > deadline:
                raise TimeoutError(f"replication slots still active: {rows}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """A started PostgreSQL with wal_level=logical for a test module; removed afterwards. Get
    a fresh database per test with `postgres_server.new_database()`."""
    with PostgresServer() as server:
        yield server
