"""The throwaway databases behind one small interface, so end-to-end tests run on each kind."""

import json
from collections.abc import Iterable
from typing import Any, Protocol

from tests.support.mariadb import MariadbServer
from tests.support.postgres import PostgresServer


class Database(Protocol):
    kind: str

    def prepare(self, table_sql: str, table: str) -> tuple[str, str, str]:
        """A fresh database with a CDC user and `table` made by `table_sql`:
        (source id to use, DSN, the table's qualified name)."""
        ...

    def execute(self, sql: str) -> None:
        """Run one statement (autocommit) in the database `prepare` made."""
        ...

    def execute_each(self, statements: Iterable[str]) -> None:
        """Run statements one by one, each its own transaction, over one connection."""
        ...

    def restart(self) -> None:
        """Stop the server (cleanly) and start it again on the same port and data."""
        ...

    def slots(self) -> list[str]:
        """Replication slots the server keeps (PostgreSQL; [] for MariaDB)."""
        ...


def _each(conn: Any, statements: Iterable[str]) -> None:
    """Run statements one by one on an autocommit connection (PyMySQL or psycopg2), then close."""
    try:
        with conn.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)
    finally:
        conn.close()


class MariaDatabase:
    kind = "mysql"

    def __init__(self, server: MariadbServer) -> None:
        self.server = server
        self.db = ""

    def prepare(self, table_sql: str, table: str) -> tuple[str, str, str]:
        self.db = self.server.new_database()
        self.server.make_cdc_user(db=self.db)
        self.server.execute(table_sql, self.db)
        return self.db, self.server.dsn(db=self.db), f"{self.db}.{table}"

    def execute(self, sql: str) -> None:
        self.server.execute(sql, self.db)

    def execute_each(self, statements: Iterable[str]) -> None:
        _each(self.server.connect(self.db), statements)

    def restart(self) -> None:
        self.server.restart()

    def slots(self) -> list[str]:
        return []


class PostgresDatabase:
    kind = "postgres"

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.db = ""

    def prepare(self, table_sql: str, table: str) -> tuple[str, str, str]:
        self.db = self.server.new_database()
        self.server.run_as(table_sql, db=self.db)  # owned by the CDC user: it may publish it
        return self.db, self.server.dsn(db=self.db), f"public.{table}"

    def execute(self, sql: str) -> None:
        self.server.execute(sql, db=self.db)

    def execute_each(self, statements: Iterable[str]) -> None:
        _each(self.server.connect(self.db), statements)

    def restart(self) -> None:
        self.server.restart()

    def slots(self) -> list[str]:
        rows = self.server.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (self.db,)
        )
        return [str(row[0]) for row in rows]


def toml_sources(sources: list[dict[str, object]]) -> str:
    """[[sources]] tables for a bridge's config file (values as TOML basic strings/arrays)."""
    lines = []
    for source in sources:
        lines.append("[[sources]]")
        for name, value in source.items():
            lines.append(f"{name} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"
