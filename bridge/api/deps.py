"""Dependencies shared by the routes: the bridge the app serves, and bearer-token auth."""

import hmac
from typing import Annotated, Any, Final, cast

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bridge.api.models import ErrorMessage
from bridge.api.protocol import BridgeApi

__all__ = [
    "UNAUTHORIZED",
    "UNAUTHORIZED_JSON",
    "AuthDep",
    "BridgeDep",
    "get_bridge",
    "require_token",
]


def get_bridge(request: Request) -> BridgeApi:
    """The bridge `create_app` stored on `app.state`."""
    return cast(BridgeApi, request.app.state.bridge)


BridgeDep = Annotated[BridgeApi, Depends(get_bridge)]

# Declares the scheme in OpenAPI; the check itself is ours (no token set means no check, and a
# wrong or missing token must be 401 with WWW-Authenticate, whatever FastAPI's default is).
_bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <token>`, required when the bridge runs with --api-token",
)


def require_token(
    bridge: BridgeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse the request unless it carries the configured token (when one is configured)."""
    token = bridge.settings.api_token
    if not token:
        return
    # compare_digest on bytes: constant time, and any header text is accepted (no ASCII rule).
    given = credentials.credentials.encode("utf-8") if credentials is not None else b""
    if not hmac.compare_digest(given, token.encode("utf-8")):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong bearer token" if credentials is not None else "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


AuthDep = Depends(require_token)

UNAUTHORIZED: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_401_UNAUTHORIZED: {
        "model": ErrorMessage,
        "description": "The request does not carry the configured bearer token",
    }
}

UNAUTHORIZED_JSON: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_401_UNAUTHORIZED: {
        "description": "The request does not carry the configured bearer token",
        "content": {"application/json": {"schema": ErrorMessage.model_json_schema()}},
    }
}
"""UNAUTHORIZED for routes whose own answers are not JSON (/metrics is text/plain): FastAPI
documents a `model` response under the route's media type, but the 401 body is JSON."""
