"""`create_app(bridge)`: the FastAPI application, with the bridge on `app.state`.

No module globals: every app serves the bridge it was made for, so tests and several bridges
in one process do not share state.
"""

import json
import math
from typing import Any, Final

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from bridge import __version__
from bridge.api.deps import UNAUTHORIZED, UNAUTHORIZED_JSON, AuthDep
from bridge.api.hosts import LoopbackHostOnly, is_loopback, parse_listen
from bridge.api.limits import MAX_BODY_BYTES, BodySizeLimit
from bridge.api.protocol import BridgeApi
from bridge.api.routes import (
    cluster,
    dead_letters,
    docs,
    health,
    metrics,
    rules,
    sources,
    stats,
    ui,
)
from bridge.api.security import SecurityHeaders
from bridge.api.stats import RateWindow

DESCRIPTION: Final = """\
Manage the routing rules of an MQTT to HStreamDB bridge, try messages against them, and watch
its health.

A rule routes every MQTT message whose topic matches its filter to an HStreamDB stream:

```json
{"id": "temps", "topic": "sensors/{site}/+/temp", "stream": "temps_${site}",
 "key": "${site}", "payload": "raw", "qos": 1, "enabled": true}
```

`{site}` in the filter captures one topic level; `${site}` and `${topic}` in `stream` and `key`
are replaced per message. Changes take effect at once, without a restart, and persist.

**Console.** `/ui` is a web console for operators: rules with live rates, a rule editor, a
dry-run panel, the latest dead letters and health at a glance. It reads `/stats` and
`/dead-letters` (below) besides the rules API.

**Authentication.** When the bridge runs with `--api-token`, every `/rules` endpoint,
`/stats`, `/dead-letters` and `/metrics` (whose labels name rules and streams) need
`Authorization: Bearer <token>` (401 otherwise), and this document declares the bearer scheme
on them; without a token it declares none. `/health` and `/ready` stay open for probes, and so
do `/docs`, `/openapi.json` and the console's static files (`/ui`): they hold no rules or data.

**Host check.** An API listening on a loopback address answers only requests whose `Host` is
`localhost`, a 127.x.x.x address or `[::1]` (any port), and refuses others with 421: a web page
cannot reach it through DNS rebinding. Beyond loopback the token guards it, and any `Host` is
served.

**Errors.** Invalid input is 422 with FastAPI's `detail` list, whose `loc` names the field;
a duplicate id is 409, an unknown id 404, a body over the size limit 413.
"""

TAGS: Final = [
    {"name": "rules", "description": "Routing rules: CRUD and dry runs"},
    {
        "name": "sources",
        "description": "CDC sources: PostgreSQL and MySQL/MariaDB change streams. Deleting a"
        " source drops its replication slot",
    },
    {"name": "cluster", "description": "Replicas: membership, versions, who runs what"},
    {"name": "health", "description": "Liveness and readiness probes (no token needed)"},
    {"name": "metrics", "description": "Prometheus metrics (the token, when one is set)"},
    {"name": "console", "description": "What the /ui console reads: rates and dead letters"},
]


def create_app(bridge: BridgeApi, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The HTTP API for `bridge`; serve it with `serve_api` (or any ASGI server).

    When `bridge.settings.api_listen` is a loopback address, requests must carry a loopback
    Host header (see bridge/api/hosts.py); ValueError for a malformed listen address.
    """
    host, _ = parse_listen(bridge.settings.api_listen)
    app = FastAPI(
        title="hstream-bridge",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        docs_url=None,  # served from the package instead of a CDN: routes/docs.py
        redoc_url=None,
    )
    app.state.bridge = bridge
    app.state.rates = RateWindow()
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if is_loopback(host):
        # Before anything that reads the request: a refused request reaches nothing else.
        app.add_middleware(LoopbackHostOnly)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so every answer has them
    # The token check is declared only when required, so the OpenAPI document tells clients
    # the truth. /health and /ready stay open for probes; /docs and /ui hold no data.
    if bridge.settings.api_token:
        app.include_router(rules.router, dependencies=[AuthDep], responses=UNAUTHORIZED)
        app.include_router(sources.router, dependencies=[AuthDep], responses=UNAUTHORIZED)
        app.include_router(cluster.router, dependencies=[AuthDep], responses=UNAUTHORIZED)
        app.include_router(health.router)
        app.include_router(metrics.router, dependencies=[AuthDep], responses=UNAUTHORIZED_JSON)
        app.include_router(stats.router, dependencies=[AuthDep], responses=UNAUTHORIZED)
        app.include_router(dead_letters.router, dependencies=[AuthDep], responses=UNAUTHORIZED)
    else:
        app.include_router(rules.router)
        app.include_router(sources.router)
        app.include_router(cluster.router)
        app.include_router(health.router)
        app.include_router(metrics.router)
        app.include_router(stats.router)
        app.include_router(dead_letters.router)
    app.include_router(ui.router)
    app.include_router(docs.router)
    return app


class _EscapedJSONResponse(JSONResponse):
    """Strict JSON with non-ASCII escaped, so any decoded input can be echoed back.

    A 422 echoes the offending input, and Python's JSON parser lets a body carry what strict
    JSON output cannot: a lone surrogate (`"\\ud800"`, not encodable as UTF-8) or `NaN` and
    `Infinity`. FastAPI's default handler fails on both with a 500. Here surrogates travel as
    `\\u` escapes and non-finite numbers as the strings "NaN", "Infinity", "-Infinity".
    """

    def render(self, content: Any) -> bytes:
        return json.dumps(
            _finite(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode("ascii")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's standard 422 body (`{"detail": [...]}`), safe for any input, and bounded.

    The echo of the input is capped, so a 422 is never as large as the body that caused it
    (a 2 MB dry-run payload used to come back whole): see `_bounded_errors`.
    """
    assert isinstance(exc, RequestValidationError)
    return _EscapedJSONResponse(
        {"detail": _bounded_errors(exc.errors())},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


MAX_ECHOED_INPUT: Final = 256
"""Characters of an error's `input` a 422 echoes; the rest is cut, and a marker says how much."""
MAX_ERROR_TEXT: Final = 1024
"""Characters of any other text in an error (a `msg` may quote the input, a `loc` a key)."""
MAX_ERRORS: Final = 100
"""Errors a 422 lists; one more entry says how many were left out."""


def _bounded_errors(errors: Any) -> list[Any]:
    """`errors` as JSON-ready values, at most MAX_ERRORS of them, with long texts cut.

    A string `input` over MAX_ECHOED_INPUT characters is cut to that many, followed by
    `...[N more characters]`; a list or object `input` whose JSON text is longer is replaced
    by that text, cut the same way. Other strings (`msg`, `loc` parts, `ctx` values) are cut at
    MAX_ERROR_TEXT. A body with many errors (thousands of unknown fields) lists the first
    MAX_ERRORS and a `too_many_errors` entry with the count of the rest.
    """
    errors = list(errors)
    bounded = [_bounded_error(error) for error in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        bounded.append(
            {
                "type": "too_many_errors",
                "loc": ["body"],
                "msg": f"{len(errors) - MAX_ERRORS} more errors not shown",
                "input": None,
            }
        )
    return bounded


def _bounded_error(error: Any) -> Any:
    encoded = jsonable_encoder(error)
    if not isinstance(encoded, dict):
        return _cut_texts(encoded)
    return {
        key: _cut_input(value) if key == "input" else _cut_texts(value)
        for key, value in encoded.items()
    }


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters]"


def _cut_input(value: Any) -> Any:
    if isinstance(value, str):
        return _cut(value, MAX_ECHOED_INPUT)
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
        if len(text) > MAX_ECHOED_INPUT:
            return _cut(text, MAX_ECHOED_INPUT)
    return value


def _cut_texts(value: Any) -> Any:
    if isinstance(value, str):
        return _cut(value, MAX_ERROR_TEXT)
    if isinstance(value, dict):
        return {_cut(str(key), MAX_ERROR_TEXT): _cut_texts(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cut_texts(item) for item in value]
    return value
