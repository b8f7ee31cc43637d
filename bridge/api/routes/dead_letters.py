"""`/dead-letters`: the latest records of the dead-letter stream, for the console.

Read through the bridge's HStreamDB client with bounded work however long the stream is
(`HStreamClient.read_last`). Needs the token when one is set: payloads and topics are data.
"""

import asyncio
import logging
from typing import Annotated, Final

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from bridge.api.deps import BridgeDep
from bridge.api.models import DeadLetter, DeadLetters, ErrorMessage
from bridge.hstream.errors import HStreamError

logger = logging.getLogger(__name__)

MAX_LIMIT: Final = 200
READ_TIMEOUT: Final = 10.0
"""Seconds the read may take before the answer is 503."""

router = APIRouter(tags=["console"])


class DeadLettersQuery(BaseModel):
    """The query: unknown parameters are refused (422 naming them), like unknown body fields."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(20, ge=1, le=MAX_LIMIT, description="how many of the latest records")


@router.get(
    "/dead-letters",
    summary="The latest dead letters",
    response_model=DeadLetters,
    responses={
        status.HTTP_503_SERVICE_UNAVAILABLE: {
            "model": ErrorMessage,
            "description": "HStreamDB did not answer: the dead-letter stream could not be read",
        }
    },
)
async def get_dead_letters(
    bridge: BridgeDep,
    query: Annotated[DeadLettersQuery, Query()],
) -> DeadLetters:
    """The latest `limit` records of the dead-letter stream (`--dead-letter-stream`), newest
    first: when, which rule, the MQTT topic, the reason (and error), the stream the record was
    meant for, sizes, and the first bytes of the payload (the whole payload stays in the
    stream: `hstream-bridge tail`)."""
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            records = await bridge.dead_letters(query.limit)
    except (HStreamError, TimeoutError) as exc:
        logger.warning("reading the dead-letter stream failed: %s", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the dead-letter stream could not be read: {str(exc) or 'timed out'}",
        ) from None
    return DeadLetters(
        stream=bridge.settings.dead_letter_stream,
        limit=query.limit,
        records=[DeadLetter.from_record(record) for record in reversed(records)],
    )
