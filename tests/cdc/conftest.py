"""`database`: each test runs once against a throwaway PostgreSQL and once against MariaDB."""

from collections.abc import Iterator

import pytest

from tests.cdc.databases import Database, MariaDatabase, PostgresDatabase
from tests.support.mariadb import mariadb_server
from tests.support.postgres import postgres_server

__all__ = ["database", "mariadb_server", "postgres_server"]


@pytest.fixture(params=["postgres", "mysql"])
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    if request.param == "postgres":
        yield PostgresDatabase(request.getfixturevalue("postgres_server"))
    else:
        yield MariaDatabase(request.getfixturevalue("mariadb_server"))
