"""One exception tree for everything HStreamDB answers, decoded in one place.

    HStreamError                      root; `code` is HStreamDB's error code when it sent one
    +-- HStreamUnavailable            node down, transient store fault, time-out   (retriable)
    |   +-- WrongServer (800)         the resource lives on another node          (retriable)
    +-- InternalError (0)             server bug or unknown failure               (retriable)
    +-- ResourceExhausted             overload, or a message over a gRPC size limit (retriable)
    +-- AccessDenied                  UNAUTHENTICATED or PERMISSION_DENIED (credentials)
    +-- NotFound
    |   +-- StreamNotFound (200)
    |   +-- SubscriptionNotFound (300)
    +-- AlreadyExists
    |   +-- StreamExists (201)
    |   +-- SubscriptionExists (301)
    +-- InvalidArgument
    |   +-- InvalidName (204, 304)
    |   +-- InvalidReplicationFactor (203)
    |   +-- InvalidShardCount (205)
    |   +-- EmptyBatch (206)
    |   +-- RecordTooLarge (207)
    |   +-- InvalidOffset (208, 303)
    +-- FailedPrecondition
        +-- StreamHasSubscriptions (202)
        +-- SubscriptionOnMissingStream (302)
        +-- SubscriptionHasConsumers (305)

The server puts a JSON body `{"error": code, "message": ..., "extra": ...}` in the gRPC status
message. `from_rpc_error` turns a `grpc.aio.AioRpcError` into the right class; the sender decides
whether to retry by `retriable`, never by parsing messages.
"""

import json
from typing import Any, ClassVar

import grpc


class HStreamError(Exception):
    retriable: ClassVar[bool] = False
    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    default_code: ClassVar[int | None] = None

    def __init__(self, message: str, *, code: int | None = None, extra: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.extra = extra

    def details(self) -> str:
        """The gRPC status message a server sends for this error."""
        return json.dumps({"error": self.code or 0, "message": self.message, "extra": self.extra})


class HStreamUnavailable(HStreamError):
    retriable = True
    status = grpc.StatusCode.UNAVAILABLE


class WrongServer(HStreamUnavailable):
    status = grpc.StatusCode.FAILED_PRECONDITION
    default_code = 800


class InternalError(HStreamError):
    retriable = True
    status = grpc.StatusCode.INTERNAL
    default_code = 0


class ResourceExhausted(HStreamError):
    retriable = True
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class AccessDenied(HStreamError):
    status = grpc.StatusCode.UNAUTHENTICATED


class NotFound(HStreamError):
    status = grpc.StatusCode.NOT_FOUND


class StreamNotFound(NotFound):
    default_code = 200


class SubscriptionNotFound(NotFound):
    default_code = 300


class AlreadyExists(HStreamError):
    status = grpc.StatusCode.ALREADY_EXISTS


class StreamExists(AlreadyExists):
    default_code = 201


class SubscriptionExists(AlreadyExists):
    default_code = 301


class InvalidArgument(HStreamError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class InvalidName(InvalidArgument):
    default_code = 204


class InvalidReplicationFactor(InvalidArgument):
    default_code = 203


class InvalidShardCount(InvalidArgument):
    default_code = 205


class EmptyBatch(InvalidArgument):
    default_code = 206


class RecordTooLarge(InvalidArgument):
    default_code = 207


class InvalidOffset(InvalidArgument):
    default_code = 208


class FailedPrecondition(HStreamError):
    status = grpc.StatusCode.FAILED_PRECONDITION


class StreamHasSubscriptions(FailedPrecondition):
    default_code = 202


class SubscriptionOnMissingStream(FailedPrecondition):
    default_code = 302


class SubscriptionHasConsumers(FailedPrecondition):
    default_code = 305


_BY_CODE: dict[int, type[HStreamError]] = {
    0: InternalError,
    200: StreamNotFound,
    201: StreamExists,
    202: StreamHasSubscriptions,
    203: InvalidReplicationFactor,
    204: InvalidName,
    205: InvalidShardCount,
    206: EmptyBatch,
    207: RecordTooLarge,
    208: InvalidOffset,
    300: SubscriptionNotFound,
    301: SubscriptionExists,
    302: SubscriptionOnMissingStream,
    303: InvalidOffset,
    304: InvalidName,
    305: SubscriptionHasConsumers,
    800: WrongServer,
}

_BY_STATUS: dict[grpc.StatusCode, type[HStreamError]] = {
    grpc.StatusCode.UNAVAILABLE: HStreamUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: HStreamUnavailable,
    grpc.StatusCode.ABORTED: HStreamUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: AccessDenied,
    grpc.StatusCode.PERMISSION_DENIED: AccessDenied,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
}


def error_class(code: int | None, status: grpc.StatusCode | None) -> type[HStreamError]:
    """The exception class for an HStreamDB error code, else for the gRPC status."""
    if status == grpc.StatusCode.UNAVAILABLE:
        return HStreamUnavailable
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    if status is not None:
        return _BY_STATUS.get(status, HStreamError)
    return HStreamError


def from_status(status: grpc.StatusCode | None, details: str | None) -> HStreamError:
    """Decode a gRPC status and its message (JSON from HStreamDB, plain text from gRPC itself)."""
    text = details or ""
    code: int | None = None
    message = text
    extra: Any = None
    if text.startswith("{"):
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), int):
            code = body["error"]
            message = str(body.get("message", ""))
            extra = body.get("extra")
    cls = error_class(code, status)
    name = status.name if status is not None else "UNKNOWN"
    return cls(message or name, code=code, extra=extra)


def from_rpc_error(exc: grpc.aio.AioRpcError) -> HStreamError:
    """Translate a failed call; callers `raise from_rpc_error(exc) from exc`."""
    return from_status(exc.code(), exc.details())
