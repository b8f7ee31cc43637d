"""`/health` (the process answers) and `/ready` (MQTT connected, HStreamDB reachable, dead
letters stored, no pipeline task failed).

Both are open even when a token is configured: orchestrators probe them without credentials,
and they reveal nothing but up/down.
"""

import logging
from typing import Literal

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from bridge.api.deps import BridgeDep
from bridge.api.models import HealthStatus, Readiness

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness", response_model=HealthStatus)
async def health() -> HealthStatus:
    """200 while the process serves HTTP at all; says nothing about MQTT or HStreamDB."""
    return HealthStatus()


@router.get(
    "/ready",
    summary="Readiness",
    response_model=Readiness,
    responses={
        status.HTTP_503_SERVICE_UNAVAILABLE: {
            "model": Readiness,
            "description": "Something the bridge needs is not ready; `not_ready` says what",
            "content": {
                "application/json": {
                    "example": {
                        "ready": False,
                        "mqtt": False,
                        "hstream": True,
                        "not_ready": ["mqtt"],
                    }
                }
            },
        }
    },
)
async def ready(bridge: BridgeDep) -> JSONResponse:
    """200 when the MQTT session is connected, no pipeline task failed, and HStreamDB answers and
    takes dead letters (with `--buffer disk`: the buffer accepts instead); 503 otherwise."""
    try:
        state = await bridge.readiness()
    except Exception as exc:  # a failing check means not ready; say so rather than 500
        logger.warning("readiness check failed: %s", exc)
        state = {}
    mqtt = state.get("mqtt") is True
    hstream = state.get("hstream") is True
    dead_letters = state.get("dead_letters", True) is True
    pipeline = "failed" not in state
    buffer = state.get("buffer")
    disk = isinstance(buffer, dict)
    # With a disk buffer, HStreamDB and the dead-letter stream can be down: records wait on disk.
    accepting = buffer.get("accepting") is True if isinstance(buffer, dict) else True
    needed = mqtt and pipeline and (accepting if disk else hstream and dead_letters)
    is_ready = state.get("ready") is True and needed
    not_ready: list[Literal["mqtt", "hstream", "dead_letters", "pipeline", "buffer"]] = []
    if not mqtt:
        not_ready.append("mqtt")
    if not hstream and not disk:
        not_ready.append("hstream")
    if not dead_letters and not disk:
        not_ready.append("dead_letters")
    if not pipeline:
        not_ready.append("pipeline")
    if not accepting:
        not_ready.append("buffer")
    error = state.get("failed") or state.get("dead_letters_error")
    body = Readiness(
        ready=is_ready,
        mqtt=mqtt,
        hstream=hstream,
        dead_letters=dead_letters,
        pipeline=pipeline,
        buffer=buffer if isinstance(buffer, dict) else None,
        not_ready=not_ready,
        error=str(error) if error else None,
    )
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=status.HTTP_200_OK if is_ready else status.HTTP_503_SERVICE_UNAVAILABLE,
    )
