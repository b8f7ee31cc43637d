"""gRPC channels to HStreamDB nodes, and the one place where gRPC errors become ours.

Every call the client makes goes through `rpc_errors()`, which turns `grpc.aio.AioRpcError` into
the `bridge.hstream.errors` tree (`raise errors.from_rpc_error(exc) from exc`), so callers see one
exception family whatever failed. A node's channel and stub are made once and cached: building an
`HStreamApiStub` creates ~60 callables, far too slow to do per append.
"""

import base64
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bridge.hstream import errors
from bridge.hstream._api import SERVICE_NAME, HStreamApiStub, pb

Metadata = tuple[tuple[str, str], ...]

# Appends of 1,000 records approach a megabyte; reads can return more. The server enforces limits.
_CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # gRPC's default reconnect backoff grows to 120 s: after a store outage the channel would
    # refuse calls long after the store is back. Retry the connection at least every 2 s.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # Channels of different clients must not share a subchannel stuck in backoff.
    ("grpc.use_local_subchannel_pool", 1),
)


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """The boundary: a failed gRPC call leaves as an `errors.HStreamError`."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise errors.from_rpc_error(exc) from exc


def node_unreachable(exc: BaseException) -> bool:
    """True when a call failed because the node could not be reached (status UNAVAILABLE).

    Only then is it safe to send the same request to another node: a deadline or an answer
    from the node may mean the request was carried out.
    """
    cause = exc.__cause__
    return isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.UNAVAILABLE


def basic_auth(username: str | None, password: str | None) -> Metadata | None:
    if username is None:
        return None
    token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
    return (("authorization", f"Basic {token}"),)


def tls_credentials(
    ca_file: Path | str | None, cert_file: Path | str | None, key_file: Path | str | None
) -> grpc.ChannelCredentials:
    """TLS credentials from PEM files (no `ca_file`: the system's roots).

    Raises ValueError for a client certificate without its key or the other way round (gRPC's
    C core would abort the whole process on the first connect) and for an unreadable file.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("a TLS client certificate and its key go together (cert_file, key_file)")

    def read(path: Path | str | None) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read TLS file {path}: {exc.strerror}") from exc

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file),
        private_key=read(key_file),
        certificate_chain=read(cert_file),
    )


@dataclass(slots=True)
class Connection:
    """One node: its channel, the generated stub and a raw-bytes Append callable."""

    target: str
    channel: grpc.aio.Channel
    stub: Any
    append: Any
    """Unary Append taking an already serialized `AppendRequest` (bytes)."""


class Transport:
    """Channels per node `host:port`, made on first use and closed together."""

    def __init__(
        self,
        *,
        credentials: grpc.ChannelCredentials | None,
        metadata: Metadata | None,
        timeout: float,
    ) -> None:
        self._credentials = credentials
        self.metadata = metadata
        self.timeout = timeout
        self._connections: dict[str, Connection] = {}

    def connection(self, target: str) -> Connection:
        conn = self._connections.get(target)
        if conn is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(target, self._credentials, _CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(target, _CHANNEL_OPTIONS)
            append: Any = channel.unary_unary(
                f"/{SERVICE_NAME}/Append",
                request_serializer=None,
                response_deserializer=pb.AppendResponse.FromString,
            )
            conn = Connection(target, channel, HStreamApiStub(channel), append)
            self._connections[target] = conn
        return conn

    async def call(self, target: str, method: str, request: Any) -> Any:
        """A unary call of `method` (e.g. "CreateStream") on one node."""
        callable_ = getattr(self.connection(target).stub, method)
        with rpc_errors():
            return await callable_(request, timeout=self.timeout, metadata=self.metadata)

    async def append(self, target: str, request: bytes) -> Any:
        """Append a serialized `AppendRequest`; returns the `AppendResponse`."""
        with rpc_errors():
            return await self.connection(target).append(
                request, timeout=self.timeout, metadata=self.metadata
            )

    async def close(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            await conn.channel.close(grace=None)
