"""What the /rules and /sources routes share: the 400 they document, and the 422s a PUT
raises (an id that does not match the path, a body the model refuses)."""

from typing import Any, Final

from fastapi import status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from bridge.api.models import ErrorMessage

UNDECODABLE: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_400_BAD_REQUEST: {
        "model": ErrorMessage,
        "description": "The body is not text in a JSON encoding (malformed JSON text is 422)",
    }
}


def invalid(errors: list[dict[str, Any]], body: object) -> RequestValidationError:
    return RequestValidationError(errors, body=body)


def field_invalid(
    kind: str, field: str, msg: str, given: object, body: object
) -> RequestValidationError:
    """One error (`kind`) located at the body's `field`: a 422 naming that field."""
    return invalid([{"type": kind, "loc": ("body", field), "msg": msg, "input": given}], body)


def id_mismatch(given: object, path_id: str, body: object) -> RequestValidationError:
    """A PUT whose body names another id than its path (422 naming `id`)."""
    msg = f"id {given!r} does not match the id in the path {path_id!r}"
    return field_invalid("id_mismatch", "id", msg, given, body)


def body_invalid(exc: ValidationError, body: object) -> RequestValidationError:
    """A model's validation errors, located in the request body."""
    errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
    return invalid(errors, body)
