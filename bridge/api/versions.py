"""Configuration versions over HTTP: `ETag` on rules and sources, `If-Match` on writes, and the
config stream's errors as status codes (409 lost a race, 412 precondition, 503 not stored, 500
stored and not applied on this replica)."""

from typing import Annotated, Any, Final

from fastapi import Header, HTTPException, Response, status

from bridge.api.models import ErrorMessage
from bridge.config import ConfigConflict, ConfigNotApplied, PreconditionFailed
from bridge.hstream.errors import HStreamError

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description="a configuration version (an ETag of GET /rules or /sources): the change"
        " is made only if it is still the current one, else 412",
    ),
]

RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_409_CONFLICT: {
        "model": ErrorMessage,
        "description": "The id is taken, or another replica changed the configuration first",
    },
    status.HTTP_412_PRECONDITION_FAILED: {
        "model": ErrorMessage,
        "description": "If-Match names a version that is not the current one",
    },
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "model": ErrorMessage,
        "description": "The configuration stream in HStreamDB did not take the change; nothing"
        " changed",
    },
    status.HTTP_500_INTERNAL_SERVER_ERROR: {
        "model": ErrorMessage,
        "description": "The change is stored (the other replicas apply it), but this replica"
        " could not apply it; the detail says why",
    },
}


def parse_if_match(value: str | None) -> int | None:
    """`7`, `"7"` or `W/"7"` -> 7; None when absent; 412 when it is not a version."""
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise HTTPException(
            status.HTTP_412_PRECONDITION_FAILED,
            f"If-Match {value!r} is not a configuration version (an ETag such as '\"7\"')",
        )
    return int(text)


def set_etag(response: Response, version: int) -> None:
    response.headers["ETag"] = f'"{version}"'


def config_error(
    exc: ConfigConflict | PreconditionFailed | HStreamError | ConfigNotApplied,
) -> HTTPException:
    """The HTTP error for a change the config stream did not take, or this replica did not
    apply."""
    if isinstance(exc, ConfigNotApplied):
        return HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc))
    if isinstance(exc, ConfigConflict):
        return HTTPException(status.HTTP_409_CONFLICT, f"not changed: {exc}")
    if isinstance(exc, PreconditionFailed):
        return HTTPException(status.HTTP_412_PRECONDITION_FAILED, f"not changed: {exc}")
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        f"not changed: the configuration stream did not take it ({exc})",
    )
