"""`/rules`: list, create, read, replace, delete, and dry-run a message against the rules.

Every change goes through the bridge, which persists it and applies it to the live MQTT
subscriptions before answering. What the bridge raises is mapped here: RuleConflict to 409,
RuleMissing to 404, a failure to save the rules file to 503 (the rules are unchanged then), and
an MQTT error while changing subscriptions to 502 (the change stands; the MQTT source keeps
sending the subscriptions until the broker confirms them, and again after every reconnect).
"""

import asyncio
import logging
from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, HTTPException, Path, Request, Response, status
from pydantic import ValidationError

from bridge.api.deps import BridgeDep
from bridge.api.models import (
    RULE_EXAMPLE,
    DryRunRequest,
    DryRunResult,
    ErrorMessage,
    rule_replacement_schema,
)
from bridge.api.protocol import RuleConflict, RuleMissing
from bridge.api.routes._shared import UNDECODABLE, body_invalid, field_invalid, id_mismatch
from bridge.api.versions import RESPONSES as VERSION_RESPONSES
from bridge.api.versions import IfMatch, config_error, parse_if_match, set_etag
from bridge.config import ConfigConflict, ConfigNotApplied, PreconditionFailed
from bridge.hstream.errors import HStreamError
from bridge.mqtt import MqttError
from rules import Rule

logger = logging.getLogger(__name__)

# Auth is added by `create_app` when a token is configured, so the OpenAPI
# document declares the bearer scheme exactly when the server requires it.
router = APIRouter(
    prefix="/rules",
    tags=["rules"],
    responses={
        status.HTTP_413_CONTENT_TOO_LARGE: {
            "model": ErrorMessage,
            "description": "The request body is too large",
        },
    },
)

_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_404_NOT_FOUND: {
        "model": ErrorMessage,
        "description": "No rule has that id",
        "content": {"application/json": {"example": {"detail": "no rule 'temps'"}}},
    }
}
_CONFLICT: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_409_CONFLICT: {
        "model": ErrorMessage,
        "description": "A rule with that id exists already",
        "content": {"application/json": {"example": {"detail": "rule 'temps' already exists"}}},
    }
}
_NOT_SUBSCRIBED: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_502_BAD_GATEWAY: {
        "model": ErrorMessage,
        "description": "The change was saved and routes messages, but the MQTT broker did not"
        " confirm the subscriptions it needs; they are sent again until it does",
    },
}
_EXAMPLES: Final = {
    "temps": {
        "summary": "Raw temperatures, one stream per site",
        "value": RULE_EXAMPLE,
    },
    "json": {
        "summary": "JSON payloads into one stream, keyed by device",
        "value": {
            "id": "telemetry",
            "topic": "devices/{device}/telemetry",
            "stream": "telemetry",
            "key": "${device}",
            "payload": "json",
            "qos": 1,
            "enabled": True,
        },
    },
}

RuleId = Annotated[str, Path(description="the rule's id", examples=["temps"])]


def _missing(rule_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no rule {rule_id!r}")


def _conflict(rule_id: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, f"rule {rule_id!r} already exists")


def _not_subscribed(exc: MqttError) -> HTTPException:
    logger.warning("rules changed, subscriptions not confirmed: %s", exc)
    return HTTPException(
        status.HTTP_502_BAD_GATEWAY,
        f"the rule change was saved, but the MQTT broker did not confirm the subscriptions"
        f" ({exc}); they are sent again until it does",
    )


@router.get("", summary="List the rules", response_model=list[Rule])
async def list_rules(bridge: BridgeDep, response: Response) -> list[Rule]:
    """All rules, disabled ones included, in the order matches are reported in. The `ETag` is
    the configuration version (rules and sources), for `If-Match` on a change."""
    set_etag(response, bridge.config_version)
    return list(bridge.rules)


@router.post(
    "",
    summary="Create a rule",
    status_code=status.HTTP_201_CREATED,
    response_model=Rule,
    responses={
        status.HTTP_201_CREATED: {
            "description": "Created; the Location header is the rule's URL",
            "headers": {"Location": {"description": "/rules/{id}", "schema": {"type": "string"}}},
        },
        **_NOT_SUBSCRIBED,
        **VERSION_RESPONSES,
        **_CONFLICT,
        **UNDECODABLE,
    },
)
async def create_rule(
    rule: Annotated[Rule, Body(openapi_examples=_EXAMPLES)],
    bridge: BridgeDep,
    request: Request,
    response: Response,
    if_match: IfMatch = None,
) -> Rule:
    """Add a rule; it takes effect at once (the MQTT subscriptions change without a restart).

    An invalid rule is refused with 422, and `loc` names the field (`["body", "topic"]`).
    """
    try:
        await bridge.create_rule(rule, parse_if_match(if_match))
    except RuleConflict:
        raise _conflict(rule.id) from None
    except MqttError as exc:
        raise _not_subscribed(exc) from None
    except (ConfigConflict, PreconditionFailed, HStreamError, ConfigNotApplied) as exc:
        raise config_error(exc) from None
    response.headers["Location"] = str(request.app.url_path_for("get_rule", rule_id=rule.id))
    set_etag(response, bridge.config_version)
    return rule


@router.post(
    "/test",
    summary="Dry-run a message against the rules",
    response_model=DryRunResult,
    responses=UNDECODABLE,
)
async def test_rules(message: DryRunRequest, bridge: BridgeDep) -> DryRunResult:
    """Route a message as if it had arrived over MQTT and show the records it would make.

    For each matching rule: the stream, the key and the record (flag, attributes, payload), or
    the dead-letter reason and the dead-letter record. Nothing is written or acknowledged.
    """
    payload = message.payload_bytes()
    try:
        # Encoding a large JSON payload takes milliseconds: keep it off the event loop, which
        # also carries the MQTT session.
        outputs = await asyncio.to_thread(
            bridge.dry_run,
            message.topic,
            payload,
            message.qos,
            message.retain,
            tuple(message.user_properties.items()),
        )
    except (ValueError, ArithmeticError, RecursionError) as exc:
        # The router dead-letters what it knows is unstorable; anything else it trips over
        # (a JSON number too large for a double, nesting too deep) is the payload's fault.
        msg = f"the payload cannot be routed: {type(exc).__name__}: {exc}"
        raise field_invalid("payload_unroutable", "payload", msg, None, None) from None
    return DryRunResult.from_outputs(outputs)


@router.get(
    "/{rule_id}",
    summary="Read a rule",
    response_model=Rule,
    responses=_NOT_FOUND,
)
async def get_rule(rule_id: RuleId, bridge: BridgeDep, response: Response) -> Rule:
    rule = bridge.get_rule(rule_id)
    if rule is None:
        raise _missing(rule_id)
    set_etag(response, bridge.config_version)
    return rule


@router.put(
    "/{rule_id}",
    summary="Replace a rule",
    response_model=Rule,
    responses={**_NOT_FOUND, **_NOT_SUBSCRIBED, **VERSION_RESPONSES, **UNDECODABLE},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": rule_replacement_schema(),
                    "examples": {"temps": _EXAMPLES["temps"]},
                }
            },
        }
    },
)
async def replace_rule(
    rule_id: RuleId,
    body: Annotated[dict[str, Any], Body()],
    bridge: BridgeDep,
    response: Response,
    if_match: IfMatch = None,
) -> Rule:
    """Replace the rule with this id by the body; it takes effect at once.

    The body is a whole rule (fields left out take their defaults, they are not kept from the
    old rule). Its `id` may be omitted; if given it must equal the id in the path (422 naming
    `id` otherwise): a rule is renamed by creating the new one and deleting the old.
    """
    given = body.get("id", rule_id)
    if given != rule_id:
        raise id_mismatch(given, rule_id, body)
    if bridge.get_rule(rule_id) is None:
        raise _missing(rule_id)
    try:
        rule = Rule.model_validate({**body, "id": rule_id})
    except ValidationError as exc:
        raise body_invalid(exc, body) from None
    try:
        await bridge.replace_rule(rule_id, rule, parse_if_match(if_match))
    except RuleMissing:
        raise _missing(rule_id) from None
    except RuleConflict:
        raise _conflict(rule.id) from None
    except MqttError as exc:
        raise _not_subscribed(exc) from None
    except (ConfigConflict, PreconditionFailed, HStreamError, ConfigNotApplied) as exc:
        raise config_error(exc) from None
    set_etag(response, bridge.config_version)
    return rule


@router.delete(
    "/{rule_id}",
    summary="Delete a rule",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**_NOT_FOUND, **_NOT_SUBSCRIBED, **VERSION_RESPONSES},
)
async def delete_rule(rule_id: RuleId, bridge: BridgeDep, if_match: IfMatch = None) -> Response:
    """Remove the rule; messages it already routed are still stored."""
    try:
        await bridge.delete_rule(rule_id, parse_if_match(if_match))
    except RuleMissing:
        raise _missing(rule_id) from None
    except MqttError as exc:
        raise _not_subscribed(exc) from None
    except (ConfigConflict, PreconditionFailed, HStreamError, ConfigNotApplied) as exc:
        raise config_error(exc) from None
    done = Response(status_code=status.HTTP_204_NO_CONTENT)
    set_etag(done, bridge.config_version)
    return done
