"""`/metrics`: the bridge's Prometheus registry in the text exposition format.

Needs the bearer token when one is configured (`create_app` adds the check): the families carry
no payloads or topics, but their labels name rules and streams, and stream names are often
rendered from device ids. Prometheus sends the token with `authorization: credentials_file`
(deploy/prometheus.yml).
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
