"""The bridge's HTTP API: rules CRUD and dry runs, health, readiness, metrics, OpenAPI docs.

`create_app(bridge)` builds the FastAPI app for anything that satisfies `BridgeApi`;
`serve_api(bridge)` runs it with uvicorn in the current event loop, without signal handlers
(the service owns SIGTERM and drains before exiting), and yields the base URL. On a loopback
address the app answers only requests with a loopback Host header (bridge/api/hosts.py: no DNS
rebinding from a browser); beyond loopback it needs a token.
"""

from bridge.api.app import create_app
from bridge.api.protocol import (
    ApiSettings,
    BridgeApi,
    DryRunOutput,
    Metrics,
    RuleConflict,
    RuleMissing,
    SourceConflict,
    SourceMissing,
)
from bridge.api.server import is_loopback, parse_listen, serve_api

__all__ = [
    "ApiSettings",
    "BridgeApi",
    "DryRunOutput",
    "Metrics",
    "RuleConflict",
    "RuleMissing",
    "SourceConflict",
    "SourceMissing",
    "create_app",
    "is_loopback",
    "parse_listen",
    "serve_api",
]
