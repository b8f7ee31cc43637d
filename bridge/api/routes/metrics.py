"""`/metrics`: the bridge's Prometheus registry in the text exposition format.

Open even when a token is configured, like /health: Prometheus scrapes without credentials by
default, and the families carry no payloads or topics (see bridge/metrics.py).
"""

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from bridge.api.deps import BridgeDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format"}},
)
async def metrics(bridge: BridgeDep) -> Response:
    body, content_type = bridge.metrics.render()
    return Response(content=body, media_type=content_type)
