"""A throwaway MariaDB 10.11 for tests, on a free 127.0.0.1 port, with a row binlog.

Each `MariadbServer` has its own data directory (a copy of one `mariadb-install-db` run per test
process, so a new server costs only its start, ~1 s), its own socket, pid file and error log. The
shared server on 3306 is never used. Extra flags override the defaults: `--skip-log-bin` or
`--binlog-format=STATEMENT` make the misconfigured servers the reader must refuse.

As root the server runs as the `mysql` user (the directories are chowned to it); as any other
user it runs as that user.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import pymysql
import pytest

from tests.support.net import free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

DEFAULT_FLAGS = (
    "--server-id=1",
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--skip-name-resolve",
    "--log-bin=binlog",
)

_template_lock = threading.Lock()
_template: Path | None = None
_names = itertools.count(1)


def _as_root() -> bool:
    return os.geteuid() == 0


def _chown_mysql(path: Path) -> None:
    if not _as_root():
        return
    entry = pwd.getpwnam("mysql")
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _find(binary: str) -> str:
    for candidate in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}", shutil.which(binary)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"{binary} not found (apt-get install mariadb-server)")


def _template_datadir() -> Path:
    """One freshly installed data directory per test process, copied for each server."""
    global _template
    with _template_lock:
        if _template is None:
            base = Path(tempfile.mkdtemp(prefix="mariadb-template-"))
            os.chmod(base, 0o755)
            data = base / "data"
            command = [
                _find("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ]
            if _as_root():
                command.insert(2, "--user=mysql")
                _chown_mysql(base)
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"mariadb-install-db failed: {result.stdout}{result.stderr}")
            _template = data
            atexit.register(shutil.rmtree, base, ignore_errors=True)
        return _template


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0].replace("_", "-")


class MariadbServer:
    """One mariadbd process: `start()`/`stop()`/`kill()`/`restart()`, or a context manager.

    `flags` are added to DEFAULT_FLAGS; a flag with the same name replaces the default one
    (`--binlog-format=STATEMENT`), and `--skip-log-bin` drops `--log-bin`.
    """

    host = "127.0.0.1"

    def __init__(self, flags: Sequence[str] = (), *, port: int | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mariadb-"))
        os.chmod(self.directory, 0o755)
        self.datadir = self.directory / "data"
        shutil.copytree(_template_datadir(), self.datadir, symlinks=True)
        _chown_mysql(self.directory)
        self.port = port or free_port()
        self.socket = self.directory / "my.sock"
        self.pid_file = self.directory / "my.pid"
        self.log_file = self.directory / "err.log"
        overridden = {_flag_name(f) for f in flags}
        if "--skip-log-bin" in overridden:
            overridden.add("--log-bin")
        defaults = [f for f in DEFAULT_FLAGS if _flag_name(f) not in overridden]
        self.flags = [*defaults, *flags]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        flags = [
            f.replace("--log-bin=binlog", f"--log-bin={self.datadir / 'binlog'}")
            for f in self.flags
        ]
        command = [
            _find("mariadbd"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.log_file}",
            *flags,
        ]
        if _as_root():
            command.insert(2, "--user=mysql")
        return command

    def _ping(self) -> bool:
        try:
            conn = pymysql.connect(
                host=self.host, port=self.port, user="root", password="", connect_timeout=1
            )
        except pymysql.MySQLError:
            return False
        conn.close()
        return True

    def start(self) -> None:
        """Start the server and return once root can connect (at most START_TIMEOUT s)."""
        if self.running:
            return
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ping():
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"mariadbd exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"mariadbd did not answer on {self.port}:\n{self.log_tail()}")
            time.sleep(0.05)

    def _end(self, sig: int) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Stop cleanly and start again on the same port with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> MariadbServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # --- using it -----------------------------------------------------------------------------

    def connect(self, db: str | None = None, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """A root connection with autocommit on."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user="root",
            password="",
            database=db,
            autocommit=True,
            **kwargs,
        )

    def execute(self, sql: str, db: str | None = None, args: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as root (autocommit) and return its rows."""
        conn = self.connect(db)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        finally:
            conn.close()

    def dsn(self, user: str = "cdc", password: str | None = "secret", db: str = "shop") -> str:
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"mysql://{auth}@{self.host}:{self.port}/{quote(db, safe='')}"

    def make_cdc_user(
        self,
        name: str = "cdc",
        password: str = "secret",
        db: str = "shop",
        grants: Sequence[str] = ("REPLICATION SLAVE", "BINLOG MONITOR"),
    ) -> None:
        """Create `db` and a user with SELECT on it and `grants` (what a CDC reader needs)."""
        self.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        secret = pymysql.converters.escape_string(password)
        self.execute(f"CREATE USER IF NOT EXISTS '{name}'@'%' IDENTIFIED BY '{secret}'")
        self.execute(f"GRANT SELECT ON `{db}`.* TO '{name}'@'%'")
        if grants:
            self.execute(f"GRANT {', '.join(grants)} ON *.* TO '{name}'@'%'")

    def new_database(self, prefix: str = "shop") -> str:
        """A fresh, empty database name (created) for one test."""
        name = f"{prefix}_{next(_names)}"
        self.execute(f"CREATE DATABASE `{name}`")
        return name


@pytest.fixture(scope="module")
def mariadb_server() -> Iterator[MariadbServer]:
    """One MariaDB with a row binlog for a test module; use `new_database()` per test."""
    with MariadbServer() as server:
        yield server
