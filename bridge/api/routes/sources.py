"""`/sources`: CDC sources (PostgreSQL, MySQL/MariaDB): list, create, read, replace, delete,
re-snapshot.

A source is validated like a rule (422 naming the field), persisted in the data dir and applied
at once: creating one starts it (snapshot, then streaming), replacing one restarts it from its
committed position, deleting one stops it and DROPS what it keeps in the database (PostgreSQL:
its replication slot and publication) and its committed positions. Passwords are never returned:
the DSN comes back with `****`; a PUT that sends `****` back keeps the stored password.
"""

from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, HTTPException, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.api.deps import BridgeDep
from bridge.api.models import ErrorMessage
from bridge.api.protocol import SourceConflict, SourceMissing
from bridge.api.routes._shared import UNDECODABLE, body_invalid, id_mismatch
from bridge.api.versions import RESPONSES as VERSION_RESPONSES
from bridge.api.versions import IfMatch, config_error, parse_if_match, set_etag
from bridge.cdc.config import MASK, Source, mask_dsn
from bridge.config import ConfigConflict, ConfigNotApplied, PreconditionFailed
from bridge.hstream.errors import HStreamError

router = APIRouter(prefix="/sources", tags=["sources"])

SOURCE_EXAMPLE: Final[dict[str, Any]] = {
    "id": "shop",
    "kind": "postgres",
    "dsn": "postgresql://cdc@db:5432/shop",
    "password_env": "SHOP_DB_PASSWORD",
    "tables": ["public.orders", "public.customers"],
    "stream": "cdc_${table}",
    "format": "debezium",
    "snapshot": "initial",
    "enabled": True,
}

_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_404_NOT_FOUND: {"model": ErrorMessage, "description": "No source has that id"}
}
_CONFLICT: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_409_CONFLICT: {
        "model": ErrorMessage,
        "description": "A source with that id exists already",
    }
}

SourceId = Annotated[str, Path(description="the source's id", examples=["shop"])]


class SourceView(BaseModel):
    """A source as stored (password masked) with its live status."""

    model_config = ConfigDict(extra="allow")

    id: str
    kind: str
    dsn: str = Field(description="the DSN with its password masked as ****")
    tables: list[str]
    stream: str
    format: str
    snapshot: str
    enabled: bool
    password_env: str | None = None
    status: dict[str, Any] = Field(
        description="state (starting, snapshot, streaming, standby, error, disabled),"
        " committed_position, lag_bytes, lag_seconds, last_error, setting (what to change),"
        " notes, changes (by op), transactions"
    )


def _view(source: Source, state: dict[str, Any]) -> SourceView:
    return SourceView(**source.public(), status=state)


def _missing(source_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no source {source_id!r}")


@router.get("", summary="List the CDC sources", response_model=list[SourceView])
async def list_sources(bridge: BridgeDep, response: Response) -> list[SourceView]:
    """Every source with its status; the `ETag` is the configuration version."""
    set_etag(response, bridge.config_version)
    return [_view(s, dict(bridge.source_status(s.id))) for s in bridge.sources]


@router.post(
    "",
    summary="Create a CDC source",
    status_code=status.HTTP_201_CREATED,
    response_model=SourceView,
    responses={**VERSION_RESPONSES, **_CONFLICT, **UNDECODABLE},
)
async def create_source(
    source: Annotated[Source, Body(openapi_examples={"shop": {"value": SOURCE_EXAMPLE}})],
    bridge: BridgeDep,
    request: Request,
    response: Response,
    if_match: IfMatch = None,
) -> SourceView:
    """Add a source and start it: the initial snapshot (unless `snapshot` is `never`), then
    changes as they commit. Its status says what it does, and what to change when it cannot."""
    try:
        await bridge.create_source(source, parse_if_match(if_match))
    except SourceConflict:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"source {source.id!r} already exists"
        ) from None
    except (ConfigConflict, PreconditionFailed, HStreamError, ConfigNotApplied) as exc:
        raise config_error(exc) from None
    set_etag(response, bridge.config_version)
    response.headers["Location"] = str(request.app.url_path_for("get_source", source_id=source.id))
    return _view(source, dict(bridge.source_status(source.id)))


@router.get("/{source_id}", summary="Read a CDC source and its status", responses=_NOT_FOUND)
async def get_source(source_id: SourceId, bridge: BridgeDep, response: Response) -> SourceView:
    source = bridge.get_source(source_id)
    if source is None:
        raise _missing(source_id)
    set_etag(response, bridge.config_version)
    return _view(source, dict(bridge.source_status(source_id)))


@router.put(
    "/{source_id}",
    summary="Replace a CDC source",
    response_model=SourceView,
    responses={**_NOT_FOUND, **VERSION_RESPONSES, **UNDECODABLE},
)
async def replace_source(
    source_id: SourceId,
    body: Annotated[dict[str, Any], Body(examples=[SOURCE_EXAMPLE])],
    bridge: BridgeDep,
    response: Response,
    if_match: IfMatch = None,
) -> SourceView:
    """Replace the source; it restarts from its committed position (tables added later are
    streamed from now on, not snapshotted). A DSN whose password is `****` keeps the stored
    password, so what GET returned can be sent back."""
    given = body.get("id", source_id)
    if given != source_id:
        raise id_mismatch(given, source_id, body)
    old = bridge.get_source(source_id)
    if old is None:
        raise _missing(source_id)
    data = {**body, "id": source_id}
    dsn = data.get("dsn")
    if isinstance(dsn, str) and f":{MASK}@" in dsn and mask_dsn(old.dsn) == dsn:
        data["dsn"] = old.dsn
    try:
        source = Source.model_validate(data)
    except ValidationError as exc:
        raise body_invalid(exc, None) from None
    try:
        await bridge.replace_source(source_id, source, parse_if_match(if_match))
    except SourceMissing:
        raise _missing(source_id) from None
    except (ConfigConflict, PreconditionFailed, HStreamError, ConfigNotApplied) as exc:
        raise config_error(exc) from None
    set_etag(response, bridge.config_version)
    return _view(source, dict(bridge.source_status(source_id)))


@router.delete(
    "/{source_id}",
    summary="Delete a CDC source (drops its slot)",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**_NOT_FOUND, **VERSION_RESPONSES},
)
async def delete_source(
    source_id: SourceId, bridge: BridgeDep, if_match: IfMatch = None
) -> Response:
    """Stop the source and drop what it keeps: its PostgreSQL replication slot and publication
    (the database stops keeping WAL for it) and its committed positions. Records already
    stored stay. Created again, it starts with a new snapshot."""
    try:
        await bridge.delete_source(source_id, parse_if_match(if_match))
    except SourceMissing:
        raise _missing(source_id) from None
    except (ConfigConflict, PreconditionFailed, HStreamError, ConfigNotApplied) as exc:
        raise config_error(exc) from None
    done = Response(status_code=status.HTTP_204_NO_CONTENT)
    set_etag(done, bridge.config_version)
    return done


@router.post(
    "/{source_id}/resnapshot",
    summary="Load a source's tables again",
    status_code=status.HTTP_202_ACCEPTED,
    responses=_NOT_FOUND,
)
async def resnapshot_source(source_id: SourceId, bridge: BridgeDep) -> dict[str, str]:
    """Forget the committed position and start over with a snapshot: the way out of a lost
    slot or a purged binlog (rows already stored are stored again)."""
    try:
        bridge.resnapshot_source(source_id)
    except SourceMissing:
        raise _missing(source_id) from None
    return {"detail": f"source {source_id!r} is loading a new snapshot"}
