"""A CDC source as configured: one database, the tables to capture and where their changes go.

    {"id": "shop", "kind": "postgres", "dsn": "postgresql://cdc:secret@db:5432/shop",
     "tables": ["public.orders", "public.customers"], "stream": "cdc_${table}",
     "format": "debezium", "snapshot": "initial", "enabled": true}

Validated like a rule (a pydantic model, strict, unknown fields refused) so the HTTP API answers
422 naming the field. The password may be left out of the DSN and taken from an environment
variable (`password_env`); it is never returned (`public()` masks it) and never logged.

Names the database keeps for a source derive from its id, never at random (HStream IO's random
slot per run skipped changes and kept WAL for ever): `slot_name`, `publication_name`,
`lock_name`, `server_id`, `positions_stream`.
"""

import functools
import hashlib
import os
import re
import zlib
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from rules.template import StreamTemplate, TemplateError

__all__ = [
    "PLACEHOLDERS",
    "Dsn",
    "Source",
    "SourceError",
    "parse_source",
]

_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TABLE: Final = re.compile(r"[^.\s]+\.[^.\s]+")
_ENV: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PLACEHOLDERS: Final = ("source", "db", "schema", "table")
SCHEMES: Final = {"postgres": ("postgresql", "postgres"), "mysql": ("mysql", "mariadb")}
DEFAULT_PORTS: Final = {"postgres": 5432, "mysql": 3306}
MASK: Final = "****"

Kind = Literal["postgres", "mysql"]


class SourceError(ValueError):
    """An invalid source, naming the field and what is wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class Dsn:
    """A parsed connection string: host, port, user, password (never in `repr`), database."""

    __slots__ = ("database", "host", "password", "port", "user")

    def __init__(
        self, host: str, port: int, user: str, password: str | None, database: str
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database

    def __repr__(self) -> str:
        return f"Dsn({self.user}@{self.host}:{self.port}/{self.database})"


@functools.lru_cache(maxsize=256)
def _stream_template(value: str) -> StreamTemplate:
    return StreamTemplate(value)


def _split_dsn(kind: str, dsn: str) -> tuple[str, int, str, str | None, str]:
    """(host, port, user, password, database); ValueError saying what is wrong."""
    parts = urlsplit(dsn)
    schemes = SCHEMES.get(kind, ())
    if parts.scheme not in schemes:
        want = " or ".join(f"{s}://" for s in schemes) or "a URL"
        raise ValueError(f"a {kind} source's dsn starts with {want}")
    try:
        port = parts.port or DEFAULT_PORTS[kind]
    except ValueError:
        raise ValueError("the port in dsn is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError("dsn has no host")
    if not parts.username:
        raise ValueError("dsn has no user (postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE)")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValueError("dsn names no database (…@HOST:PORT/DATABASE)")
    if parts.query or parts.fragment:
        raise ValueError("dsn takes no ?query or #fragment")
    password = unquote(parts.password) if parts.password is not None else None
    return parts.hostname, port, unquote(parts.username), password, database


def _check_placeholders(template: StreamTemplate) -> None:
    for name in template.names:
        if name not in PLACEHOLDERS:
            known = ", ".join(f"${{{n}}}" for n in PLACEHOLDERS)
            raise TemplateError(f"unknown placeholder ${{{name}}}: a source has {known}")


class Source(BaseModel):
    """A validated CDC source (immutable)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    id: str = Field(
        description="1-64 characters of letters, digits, '_', '.', '-'; a letter or digit first."
        " The slot, publication, lock, server id and position stream derive from it",
        examples=["shop"],
    )
    kind: Kind = Field(
        description="postgres (logical replication, pgoutput) or mysql (MySQL and MariaDB"
        " binlog). sqlserver is not supported yet",
        examples=["postgres"],
    )
    dsn: str = Field(
        description="postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE or mysql://... ;"
        " the password is never returned (masked as ****)",
        examples=["postgresql://cdc:secret@db:5432/shop"],
    )
    password_env: str | None = Field(
        default=None,
        description="an environment variable holding the password, when the dsn has none",
        examples=["SHOP_DB_PASSWORD"],
    )
    tables: list[str] = Field(
        min_length=1,
        description="tables to capture: schema.table (PostgreSQL) or database.table (MySQL)",
        examples=[["public.orders", "public.customers"]],
    )
    stream: str = Field(
        default="cdc_${source}_${table}",
        description="stream name template over ${source}, ${db}, ${schema} and ${table}",
        examples=["cdc_${table}"],
    )
    format: Literal["debezium", "flat"] = Field(
        default="debezium",
        description="debezium: {before, after, op, ts_ms, source}; flat: HStream IO's {key, value}",
    )
    snapshot: Literal["initial", "never"] = Field(
        default="initial",
        description="initial: existing rows first (op r), then changes; never: changes only",
    )
    enabled: bool = Field(default=True, description="disabled sources are kept but not run")

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if _ID.fullmatch(value) is None:
            raise PydanticCustomError(
                "source_id",
                f"id {value!r} must be 1-64 characters of letters, digits, '_', '.' or '-',"
                " starting with a letter or a digit",
            )
        return value

    @field_validator("kind", mode="before")
    @classmethod
    def _check_kind(cls, value: object) -> object:
        if value == "sqlserver":
            raise PydanticCustomError(
                "source_kind",
                "kind sqlserver is not supported yet: it cannot be tested against a real SQL"
                " Server here (docs/cdc.md has the design); use postgres or mysql",
            )
        if value not in ("postgres", "mysql"):
            raise PydanticCustomError(
                "source_kind", f"kind must be postgres or mysql (MySQL and MariaDB), not {value!r}"
            )
        return value

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, value: str, info: Any) -> str:
        kind = info.data.get("kind")
        if kind is None:
            return value  # kind itself is wrong and says so
        try:
            _split_dsn(kind, value)
        except ValueError as exc:
            raise PydanticCustomError("dsn", str(exc)) from None
        return value

    @field_validator("password_env")
    @classmethod
    def _check_env(cls, value: str | None) -> str | None:
        if value is not None and _ENV.fullmatch(value) is None:
            raise PydanticCustomError(
                "password_env", f"password_env {value!r} is not an environment variable name"
            )
        return value

    @field_validator("tables")
    @classmethod
    def _check_tables(cls, value: list[str]) -> list[str]:
        for table in value:
            if _TABLE.fullmatch(table) is None:
                raise PydanticCustomError(
                    "table_name",
                    f"table {table!r} must be schema.table (PostgreSQL) or database.table"
                    " (MySQL), e.g. public.orders",
                )
        if len(set(value)) != len(value):
            raise PydanticCustomError("table_name", "a table is listed twice")
        return value

    @field_validator("stream")
    @classmethod
    def _check_stream(cls, value: str) -> str:
        try:
            _check_placeholders(_stream_template(value))
        except TemplateError as exc:
            raise PydanticCustomError("stream_template", str(exc)) from None
        return value

    # --- derived ------------------------------------------------------------------------------

    @property
    def stream_template(self) -> StreamTemplate:
        return _stream_template(self.stream)

    def connection(self, environ: Mapping[str, str] | None = None) -> Dsn:
        """The DSN's parts, the password taken from `password_env` when the DSN has none.
        ValueError when the variable is named but not set."""
        host, port, user, password, database = _split_dsn(self.kind, self.dsn)
        if password is None and self.password_env is not None:
            env = os.environ if environ is None else environ
            password = env.get(self.password_env)
            if password is None:
                raise ValueError(
                    f"the environment variable {self.password_env} (password_env) is not set"
                )
        return Dsn(host, port, user, password, database)

    def public(self) -> dict[str, Any]:
        """The source as the API shows it: the password in the DSN masked."""
        data = self.model_dump(mode="json")
        data["dsn"] = mask_dsn(self.dsn)
        return data

    @property
    def _slug(self) -> str:
        """A name part PostgreSQL and MariaDB accept: lower case, [a-z0-9_], plus a hash of
        the id so that ids differing only in case or punctuation never share a slot."""
        clean = re.sub(r"[^a-z0-9_]", "_", self.id.lower())[:40]
        digest = hashlib.sha256(self.id.encode()).hexdigest()[:8]
        return f"{clean}_{digest}"

    @property
    def slot_name(self) -> str:
        """PostgreSQL replication slot (at most 63 characters of [a-z0-9_])."""
        return f"hstream_bridge_{self._slug}"

    @property
    def publication_name(self) -> str:
        return f"hstream_bridge_{self._slug}"

    @property
    def lock_name(self) -> str:
        """MySQL/MariaDB GET_LOCK name (at most 64 characters)."""
        return f"hstream_bridge:{self.id}"

    @property
    def server_id(self) -> int:
        """The binlog reader's server_id: stable per source, away from small hand-set ids."""
        return 1_000_000 + zlib.crc32(self.id.encode()) % 3_000_000_000

    @property
    def positions_stream(self) -> str:
        """The internal one-shard stream holding this source's committed positions."""
        return f"hstream_bridge_positions_{self._slug}"


def mask_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ****."""
    if urlsplit(dsn).password is None:
        return dsn
    return _set_password(dsn, MASK)


def with_password(dsn: str, password: str) -> str:
    """The DSN with `password` in it (in place of any it has)."""
    return _set_password(dsn, quote(password, safe=""))


def _set_password(dsn: str, encoded: str) -> str:
    parts = urlsplit(dsn)
    user = quote(unquote(parts.username or ""), safe="")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{encoded}@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def parse_source(data: object) -> Source:
    """A Source from decoded JSON or TOML; SourceError naming the first bad field."""
    try:
        return Source.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        if not errors:
            raise SourceError("source", str(exc)) from None
        loc = ".".join(str(p) for p in errors[0]["loc"]) or "source"
        raise SourceError(loc, str(errors[0]["msg"])) from None
