"""A gRPC fault injector between an HStreamDB client (the bridge) and a store.

    async with FaultProxy(store.url) as proxy:        # listens on 127.0.0.1:<free port>
        settings = bridge_settings(..., hstream_url=proxy.url)
        proxy.fail("Append", code=grpc.StatusCode.RESOURCE_EXHAUSTED, times=2)
        proxy.fail("CreateStream", code=grpc.StatusCode.INTERNAL, error=0)  # HStreamDB JSON body
        proxy.delay("Append", 0.5, stream="temps")
        hold = proxy.hold("Append")                   # forwarded; the answer is withheld
        await hold.wait()                             # one call held: the store has stored it
        hold.release()
        await proxy.cut()                             # "HStreamDB is down" ...
        proxy.restore()                               # ... and back
        proxy.calls["Append"], proxy.appended["temps"], proxy.refused[("Append", code)]

Every `hstream.server.HStreamApi` method is forwarded as raw bytes to the first host of the
upstream URL (plain `hstream://`), with the client's metadata (e.g. Basic auth) and deadline.
Answers naming a server node (DescribeCluster, Lookup*) are rewritten to name the proxy, so
clients never go around it (several upstream nodes all become the proxy -> the first node).

Rules match in order; the first match applies and, with `times`, expires after that many calls.
`fail` and `delay` act before forwarding. `stream` matches the request's `streamName` (methods
whose request has one; never client-streaming calls). Faults apply to every kind of call.

`cut()` keeps listening: it aborts every call in flight with UNAVAILABLE and refuses new calls
with UNAVAILABLE until `restore()`, which is what a dead node gives a client, while the port
stays ours and channels stay connected. An aborted call may have been carried out upstream.
"""

import asyncio
import collections
import dataclasses
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from bridge.hstream._api import SERVICE_NAME, pb
from bridge.hstream.url import parse_url

T = TypeVar("T")

_MESSAGE_LIMIT = 64 << 20
_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
    ("grpc.max_send_message_length", _MESSAGE_LIMIT),
]
_UPSTREAM_OPTIONS = [
    *_OPTIONS,
    # Reconnect quickly after the store restarts (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.use_local_subchannel_pool", 1),
]
_CUT = "FaultProxy: the store is cut off"
METHODS: dict[str, Any] = {m.name: m for m in pb.DESCRIPTOR.services_by_name["HStreamApi"].methods}
"""The API's method descriptors by name (`client_streaming`, `input_type`, ...)."""


def _names_node(descriptor: Any, seen: frozenset[str] = frozenset()) -> bool:
    if descriptor is pb.ServerNode.DESCRIPTOR:
        return True
    seen = seen | {descriptor.full_name}
    return any(
        f.message_type is not None
        and f.message_type.full_name not in seen
        and _names_node(f.message_type, seen)
        for f in descriptor.fields
    )


_NODE_METHODS = frozenset(name for name, m in METHODS.items() if _names_node(m.output_type))


def _rewrite_nodes(message: Message, host: str, port: int) -> None:
    """Point every `ServerNode` inside `message` at host:port."""
    if message.DESCRIPTOR is pb.ServerNode.DESCRIPTOR:
        message.host = host  # type: ignore[attr-defined]
        message.port = port  # type: ignore[attr-defined]
        return
    for field, value in message.ListFields():
        if field.message_type is not None:
            for item in [value] if isinstance(value, Message) else value:
                if isinstance(item, Message):
                    _rewrite_nodes(item, host, port)


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class Hold:
    """Calls caught by `FaultProxy.hold`; they wait until `release()`."""

    def __init__(self, before: bool) -> None:
        self.before = before
        self.held = 0
        """Calls waiting now."""
        self.caught = 0
        """Calls caught so far (with `before=False`: their upstream answer has arrived)."""
        self._released = asyncio.Event()
        self._changed = asyncio.Condition()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def release(self) -> None:
        """Let every held call go on; the rule matches no more calls."""
        self._released.set()

    async def wait(self, count: int = 1, timeout: float = 10.0) -> None:
        """Return once `count` calls have been caught; TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.caught >= count)

    async def _catch(self) -> None:
        self.held += 1
        self.caught += 1
        async with self._changed:
            self._changed.notify_all()
        try:
            await self._released.wait()
        finally:
            self.held -= 1


@dataclasses.dataclass(eq=False)
class _Rule:
    method: str
    stream: str | None
    times: int | None
    code: grpc.StatusCode | None = None
    details: str = ""
    seconds: float = 0.0
    hold: Hold | None = None

    def __post_init__(self) -> None:
        if self.method != "*" and self.method not in METHODS:
            raise ValueError(f"HStreamApi has no method {self.method!r}")
        spec = METHODS.get(self.method)
        if (
            self.stream is not None
            and spec is not None
            and (spec.client_streaming or "streamName" not in spec.input_type.fields_by_name)
        ):
            raise ValueError(f"{self.method} requests name no stream: `stream` never matches")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1")


class _Call:
    """One call as the rules see it; the request is parsed only when a rule asks."""

    def __init__(self, method: str, raw: bytes | None) -> None:
        self.method, self.raw = method, raw

    @functools.cached_property
    def request(self) -> Any:
        cls = message_factory.GetMessageClass(METHODS[self.method].input_type)
        return cls.FromString(self.raw or b"")

    @property
    def stream(self) -> str | None:
        if self.raw is None or "streamName" not in METHODS[self.method].input_type.fields_by_name:
            return None
        name: str = self.request.streamName
        return name


class FaultProxy:
    """A gRPC proxy for `hstream.server.HStreamApi` that injects faults. Use `async with`."""

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        parsed = parse_url(upstream)
        if parsed.tls:
            raise ValueError("FaultProxy forwards plain hstream:// only")
        self.upstream = parsed.targets[0]
        self.host = host
        self.port = 0
        self.calls: collections.Counter[str] = collections.Counter()
        """Calls received, by method (also those refused)."""
        self.appended: collections.Counter[str] = collections.Counter()
        """Records of Append requests the upstream answered OK, by stream."""
        self.refused: collections.Counter[tuple[str, grpc.StatusCode]] = collections.Counter()
        """Calls that ended with an error status (injected, cut, or from upstream)."""
        self._rules: list[_Rule] = []
        self._down = asyncio.Event()
        self._inflight: set[asyncio.Future[Any]] = set()
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"hstream://{self.address}"

    # -- faults --------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        *,
        code: grpc.StatusCode,
        error: int | None = None,
        message: str = "injected",
        stream: str | None = None,
        times: int | None = None,
    ) -> None:
        """Answer `method` ("*": any) with `code`; with `error`, HStreamDB's JSON details."""
        body = {"error": error, "message": message, "extra": None}
        details = message if error is None else json.dumps(body)
        self._rules.append(_Rule(method, stream, times, code=code, details=details))

    def delay(
        self, method: str, seconds: float, *, stream: str | None = None, times: int | None = None
    ) -> None:
        """Forward matching calls after `seconds`."""
        self._rules.append(_Rule(method, stream, times, seconds=seconds))

    def hold(
        self,
        method: str,
        *,
        stream: str | None = None,
        before: bool = False,
        times: int | None = None,
    ) -> Hold:
        """Hold matching calls until `release()`: forwarded at once and their answer withheld,
        or (`before=True`) held before they are forwarded."""
        hold = Hold(before)
        self._rules.append(_Rule(method, stream, times, hold=hold))
        return hold

    def clear(self) -> None:
        """Remove every rule and release every hold."""
        for rule in self._rules:
            if rule.hold is not None:
                rule.hold.release()
        self._rules.clear()

    async def cut(self, timeout: float = 5.0) -> None:
        """Abort the calls in flight with UNAVAILABLE and refuse new ones until `restore()`."""
        inflight = list(self._inflight)
        self._down.set()
        if inflight:
            await asyncio.wait(inflight, timeout=timeout)

    def restore(self) -> None:
        self._down.clear()

    @property
    def is_cut(self) -> bool:
        return self._down.is_set()

    def _match(self, call: _Call) -> _Rule | None:
        for rule in list(self._rules):
            if rule.hold is not None and rule.hold.released:
                self._rules.remove(rule)
                continue
            if rule.method not in ("*", call.method):
                continue
            if rule.stream is not None and call.stream != rule.stream:
                continue
            if rule.times is not None:
                rule.times -= 1
                if rule.times == 0:
                    self._rules.remove(rule)
            return rule
        return None

    # -- forwarding ----------------------------------------------------------------------

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.upstream, options=_UPSTREAM_OPTIONS)
        handlers = {name: self._handler(name, spec) for name, spec in METHODS.items()}
        server = grpc.aio.server(options=[*_OPTIONS, ("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        self.port = server.add_insecure_port(f"{self.host}:0")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        self.clear()
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _handler(self, name: str, spec: Any) -> "grpc.RpcMethodHandler[Any, Any]":
        assert self._channel is not None
        path = f"/{SERVICE_NAME}/{name}"
        if spec.client_streaming or spec.server_streaming:  # bidi or server streaming only
            bidi = spec.client_streaming
            upstream: Any = (self._channel.stream_stream if bidi else self._channel.unary_stream)(
                path
            )

            async def streaming(request: Any, context: Any) -> None:
                async def body() -> None:
                    call = upstream(request, **_outgoing(context))
                    try:
                        async for response in call:
                            await context.write(response)
                    finally:
                        call.cancel()

                await self._serve(_Call(name, None if bidi else request), context, body)

            if bidi:
                return grpc.stream_stream_rpc_method_handler(streaming)
            return grpc.unary_stream_rpc_method_handler(streaming)
        unary: Any = self._channel.unary_unary(path)

        async def unary_unary(request: bytes, context: Any) -> bytes:
            async def body() -> bytes:
                response: bytes = await unary(request, **_outgoing(context))
                if name in _NODE_METHODS:
                    cls = message_factory.GetMessageClass(spec.output_type)
                    message = cls.FromString(response)
                    _rewrite_nodes(message, self.host, self.port)
                    response = message.SerializeToString()
                return response

            return await self._serve(_Call(name, request), context, body)

        return grpc.unary_unary_rpc_method_handler(unary_unary)

    async def _serve(self, call: _Call, context: Any, body: Callable[[], Awaitable[T]]) -> T:
        self.calls[call.method] += 1
        try:
            return await self._guarded(lambda: self._apply(call, body))
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        except _Refused as exc:
            code, details = exc.code, exc.details
        self.refused[(call.method, code)] += 1
        await context.abort(code, details)
        raise AssertionError("abort returned")  # pragma: no cover

    async def _apply(self, call: _Call, body: Callable[[], Awaitable[T]]) -> T:
        rule = self._match(call)
        hold = rule.hold if rule is not None else None
        if rule is not None:
            if rule.code is not None:
                raise _Refused(rule.code, rule.details)
            if rule.seconds:
                await asyncio.sleep(rule.seconds)
        if hold is not None and hold.before:
            await hold._catch()
        result = await body()
        if call.method == "Append":
            self.appended[call.request.streamName] += call.request.records.batchSize
        if hold is not None and not hold.before:
            await hold._catch()
        return result

    async def _guarded(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` unless or until the proxy is cut (then: UNAVAILABLE)."""
        if self._down.is_set():
            raise _Refused(grpc.StatusCode.UNAVAILABLE, _CUT)
        task = asyncio.ensure_future(work())
        down = asyncio.ensure_future(self._down.wait())
        self._inflight.add(task)
        try:
            await asyncio.wait((task, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            down.cancel()
            self._inflight.discard(task)
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        raise _Refused(grpc.StatusCode.UNAVAILABLE, _CUT)


def _outgoing(context: Any) -> dict[str, Any]:
    """The client's metadata (e.g. authorization) and deadline, for the upstream call."""
    metadata = tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if not key.startswith((":", "grpc-")) and key != "user-agent"
    )
    remaining = context.time_remaining()
    timeout = remaining if remaining is not None and remaining < 1e6 else None
    return {"metadata": metadata, "timeout": timeout}
