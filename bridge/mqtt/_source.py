"""MqttSource: one persistent MQTT session feeding the pipeline, acked only when it says so.

Delivery contract with the handler:
- It is called synchronously, once per message, in the order the messages came off the socket,
  and never while the source is paused (packets read before `pause()` wait in a small queue,
  bounded by one socket read, and are handed over first after `resume()`). So whatever the
  handler does before its first await happens in arrival order, which keeps per-topic order.
- Returning None acknowledges at once. Returning an awaitable holds the PUBACK (QoS 1) or
  PUBREC (QoS 2) until it completes; QoS 0 never waits. Acks leave in completion order, not
  arrival order (MQTT 5 4.6.0-2 asks for arrival order; brokers do not depend on it, and keeping
  it would let one slow stream hold every other message's ack).
- If the awaitable (or the handler itself) raises, the message is not acked and the connection
  is dropped: an unacked message is only redelivered on a new connection (MQTT forbids resending
  on the same one), so leaving it unacked would park it, and a slot of the receive window, until
  some unrelated reconnect. Every other unacked message of that connection comes again too
  (at-least-once allows that). If the awaitable is cancelled (shutdown) the message is just left
  unacked; the broker delivers it to the next session.

Subscriptions: the broker is asked for a non-overlapping cover of the wanted filters (see
_filters.py), because brokers send one copy per matching subscription.

Reconnecting: capped exponential backoff with jitter; after every (re)connect all wanted
subscriptions are sent again (cheap, and needed when the broker lost the session), and filters
the session may still hold but nobody wants any more are unsubscribed. On a live connection a
subscription counts only once its SUBACK confirmed it: one whose SUBACK never came (or that the
broker refused) is sent again, with backoff, until the broker confirms it.

Stopping: `stop_intake()` pauses for good. Pressure easing (`resume()`) cannot undo it, so a
shutdown that drains the pipeline never reads new messages it could not store.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from types import TracebackType
from typing import Any, cast

from bridge.backoff import backoff_delay
from bridge.logs import redact_url
from bridge.mqtt._errors import ConnectRefused, MqttError, SubscribeRefused
from bridge.mqtt._filters import non_overlapping
from bridge.mqtt._link import Link
from bridge.mqtt._model import Handler, Message, MqttSettings

log = logging.getLogger(__name__)


class MqttSource:
    """An async context manager that keeps one MQTT session up and hands messages to `handler`."""

    def __init__(self, settings: MqttSettings, handler: Handler) -> None:
        self.settings = settings
        self._handler = handler
        self._ssl = settings.ssl_context()
        self._prefix = f"$share/{settings.shared_group}/" if settings.shared_group else ""
        self._wanted: dict[str, int] = {}  # filter (without $share prefix) -> qos, as asked
        self._session: set[str] = set()  # filters the broker's session may hold (non-overlapping)
        self._confirmed: dict[str, int] = {}  # filters a SUBACK granted on the current link
        self._resubscriber: asyncio.Task[None] | None = None
        self._intake_stopped = False
        self._subscription_lock = asyncio.Lock()
        self._link: Link | None = None  # the connection that is up, subscribed and current
        self._up = asyncio.Event()  # set while _link is
        self._paused = False
        self._reading = asyncio.Event()  # set while not paused: SUBACKs can be read
        self._reading.set()
        self._held: deque[tuple[Link, int | None, Message]] = deque()
        self._drain_scheduled = False
        self._inflight = 0
        self._runner: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._closing = False
        self.reconnects = 0
        self.on_connection_change: Callable[[bool], None] | None = None
        # Called when the connection supervisor dies of an unexpected error (a bug): nothing
        # would read or reconnect any more, so the owner should stop the process.
        self.on_failure: Callable[[BaseException], None] | None = None

    # --- public surface -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.lost

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def inflight(self) -> int:
        """Messages handed to the handler whose awaitable has not completed yet."""
        return self._inflight

    @property
    def subscriptions(self) -> dict[str, int]:
        """The wanted filters (without the $share prefix) and their QoS."""
        return dict(self._wanted)

    async def __aenter__(self) -> "MqttSource":
        """Start connecting; returns after the first attempt. Raises ConnectRefused if the broker
        refuses for good (bad credentials, ...); a broker that is down is retried in the
        background (`connected` stays False until it is up)."""
        loop = asyncio.get_running_loop()
        self._first_attempt = loop.create_future()
        self._runner = asyncio.create_task(self._run(), name="mqtt-source")
        self._runner.add_done_callback(self._runner_done)
        try:
            await asyncio.shield(self._first_attempt)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def wait_connected(self, timeout: float) -> None:
        """Wait until a connection is up and subscribed; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            await self._up.wait()

    async def set_subscriptions(self, filters: Mapping[str, int]) -> None:
        """Make `filters` (filter -> QoS) the wanted subscriptions: subscribe new or changed ones,
        unsubscribe removed ones. Applied now when connected, else on the next connect, and
        again after every reconnect. Raises SubscribeRefused for filters the broker refused
        (they stay wanted and are sent again with backoff), MqttError when the broker did not
        confirm them in time (sent again until it does) or the connection dropped.
        """
        for topic, qos in filters.items():
            if qos not in (0, 1, 2) or not topic:
                raise ValueError(f"bad subscription {topic!r}: qos {qos}")
        async with self._subscription_lock:
            self._wanted = dict(filters)
            link = self._link
            if link is None or link.lost:
                return
            if self._paused:
                # The SUBACK would wait unread behind the paused socket: subscribe as soon as
                # intake resumes (nothing is read before that, so nothing is missed).
                log.info("intake is paused: the subscriptions change when it resumes")
                self._retry_subscriptions(link)
                return
            try:
                await self._sync(link)
            except (ConnectionError, TimeoutError) as exc:
                self._retry_subscriptions(link)
                problem = f"subscriptions not confirmed yet, sent again until they are: {exc!r}"
                raise MqttError(problem) from exc
            except SubscribeRefused:
                self._retry_subscriptions(link)
                raise

    @property
    def unconfirmed(self) -> dict[str, int]:
        """Wanted filters (as subscribed: non-overlapping) the broker has not confirmed yet."""
        wanted = non_overlapping(self._wanted)
        return {t: q for t, q in wanted.items() if self._confirmed.get(t) != q}

    async def _sync(self, link: Link, *, tolerate_refusals: bool = False) -> None:
        """Subscribe what is wanted and not confirmed, unsubscribe what is no longer wanted."""
        wanted = non_overlapping(self._wanted)
        added = {t: q for t, q in wanted.items() if self._confirmed.get(t) != q}
        removed = [t for t in self._session if t not in wanted]
        await self._apply(link, added, removed, tolerate_refusals=tolerate_refusals)

    def _retry_subscriptions(self, link: Link) -> None:
        """Send unconfirmed subscriptions again, with backoff, while `link` is current."""
        if self._resubscriber is not None and not self._resubscriber.done():
            return
        self._resubscriber = asyncio.create_task(self._resubscribe(link), name="mqtt-resubscribe")

    async def _resubscribe(self, link: Link) -> None:
        attempt = 0
        while not self._closing and link is self._link and not link.lost:
            await self._reading.wait()  # a SUBACK cannot be read while paused
            async with self._subscription_lock:
                if link is not self._link or link.lost or not self.unconfirmed:
                    return
                try:
                    await self._sync(link, tolerate_refusals=True)
                except (ConnectionError, TimeoutError) as exc:
                    log.warning("subscriptions still not confirmed: %r; sending again", exc)
            if not self.unconfirmed:
                log.info("subscriptions confirmed by the broker")
                return
            await asyncio.sleep(
                backoff_delay(attempt, self.settings.reconnect_min, self.settings.reconnect_max)
            )
            attempt += 1

    async def flush_acks(self, timeout: float = 5.0) -> None:
        """Send the acks of every handler awaitable that has completed and wait (at most
        `timeout` seconds) until they have left the process. For shutdown: after the pipeline
        has flushed, before leaving the context, so stored messages are not delivered again."""
        for _ in range(3):  # done callbacks of just-completed awaitables (and wrapping tasks)
            await asyncio.sleep(0)
        link = self._link
        if link is not None:
            await link.flush(timeout)

    def pause(self) -> None:
        """Stop handing messages over and stop reading the socket (TCP backpressure). The
        session stays up: pings continue and silence while paused is not taken for a dead
        broker."""
        self._paused = True
        self._reading.clear()
        if self._link is not None:
            self._link.pause()

    def stop_intake(self) -> None:
        """Pause for good: `resume()` no longer reads (shutdown)."""
        self._intake_stopped = True
        self.pause()

    def resume(self) -> None:
        """Hand over what was read before the pause, then read the socket again (not after
        `stop_intake()`)."""
        if not self._paused or self._intake_stopped:
            return
        self._paused = False
        self._reading.set()
        if self._held:
            self._schedule_drain()
        elif self._link is not None:
            self._link.resume()

    # --- connection supervision ---------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        first = True
        while not self._closing:
            link = Link(self.settings, self._ssl, self._on_publish, self._on_lost)
            link.settled = partial(self._settled, link)
            failure: BaseException | None = None
            try:
                await link.connect()
                await self._set_up(link)
            except ConnectRefused as exc:
                if exc.permanent and first:
                    self._settle_first(exc)
                    return
                failure = exc
            except (OSError, TimeoutError, MqttError) as exc:
                link.abort()
                failure = exc
            except BaseException:
                link.abort()
                raise
            else:
                if not first:
                    self.reconnects += 1
                first = False
                self._settle_first(None)
                log.info(
                    "MQTT connected to %s as %r (session present: %s)",
                    redact_url(self.settings.url),
                    self.settings.client_id,
                    link.session_present,
                )
                self._notify(True)
                await link.wait_lost()
                self._notify(False)
                log.warning(
                    "MQTT connection to %s lost; reconnecting", redact_url(self.settings.url)
                )
                if time.monotonic() - link.connected_at >= self.settings.reconnect_max:
                    attempt = 0  # it was stable: start the backoff again from the bottom
            if failure is not None:
                log.warning("MQTT connect to %s failed: %r", redact_url(self.settings.url), failure)
            self._settle_first(None)
            delay = backoff_delay(attempt, self.settings.reconnect_min, self.settings.reconnect_max)
            attempt += 1
            await asyncio.sleep(delay)

    async def _set_up(self, link: Link) -> None:
        """Resubscribe everything wanted, unsubscribe leftovers, then make `link` current."""
        async with self._subscription_lock:
            if not link.session_present:
                self._session.clear()
            self._confirmed = {}  # a new connection: everything wanted is sent again
            await self._sync(link, tolerate_refusals=True)
            if link.lost:
                raise ConnectionError("MQTT connection lost while subscribing")
            self._link = link
            self._up.set()
            if self._paused:
                link.pause()
            if self.unconfirmed:
                self._retry_subscriptions(link)

    async def _apply(
        self,
        link: Link,
        added: Mapping[str, int],
        removed: list[str],
        *,
        tolerate_refusals: bool = False,
    ) -> None:
        # Subscribe before unsubscribing: a filter replaced by a wider one has no gap (at most
        # a few messages come twice while both are held).
        refused: dict[str, int] = {}
        if added:
            self._session.update(added)
            refused = await link.subscribe({self._prefix + t: q for t, q in added.items()})
            refused = {t.removeprefix(self._prefix): c for t, c in refused.items()}
            for topic, qos in added.items():
                if topic in refused:
                    self._confirmed.pop(topic, None)
                else:
                    self._confirmed[topic] = qos
        if removed:
            await link.unsubscribe([self._prefix + t for t in removed])
            self._session.difference_update(removed)
            for topic in removed:
                self._confirmed.pop(topic, None)
        if refused:
            if not tolerate_refusals:
                raise SubscribeRefused(refused)
            log.error("%s", SubscribeRefused(refused))

    def _on_lost(self, link: Link) -> None:
        if link is self._link:
            self._link = None
            self._up.clear()
        if self._held:
            # Those messages will come again on the next connection; their acks could not leave.
            self._held = deque(item for item in self._held if not item[0].lost)

    def _runner_done(self, task: "asyncio.Task[None]") -> None:
        if task.cancelled() or self._closing:
            return
        exc = task.exception()
        if exc is None or isinstance(exc, ConnectRefused):
            return  # a refusal at the first attempt is raised from __aenter__
        log.error("the MQTT connection supervisor failed", exc_info=exc)
        self._settle_first(exc)
        if self.on_failure is not None:
            self.on_failure(exc)

    def _settle_first(self, exc: BaseException | None) -> None:
        future = self._first_attempt
        if future is not None and not future.done():
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)

    def _notify(self, connected: bool) -> None:
        callback = self.on_connection_change
        if callback is None:
            return
        try:
            callback(connected)
        except Exception:
            log.exception("on_connection_change callback failed")

    async def _stop(self) -> None:
        self._closing = True
        resubscriber, self._resubscriber = self._resubscriber, None
        if resubscriber is not None:
            resubscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resubscriber
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            try:
                await runner
            except asyncio.CancelledError:
                pass
            except ConnectRefused:
                pass  # already raised from __aenter__
        link, self._link = self._link, None
        if link is not None:
            await link.close()
            self._notify(False)
        self._held.clear()

    # --- delivery -----------------------------------------------------------------------------

    def _on_publish(
        self,
        link: Link,
        ticket: int | None,
        qos: int,
        topic: str | bytes,
        payload: bytes,
        properties: Mapping[str, Any],
    ) -> None:
        if isinstance(topic, bytes):  # gmqtt passes bytes when the topic is not valid UTF-8
            topic = topic.decode("utf-8", errors="replace")
        message = Message(
            topic=topic,
            payload=payload,
            qos=qos,
            retain=bool(properties.get("retain")),
            user_properties=tuple(properties.get("user_property", ())),
            received_at=time.monotonic(),
        )
        if self._paused or self._held:
            self._held.append((link, ticket, message))
        else:
            self._deliver(link, ticket, message)

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            asyncio.get_running_loop().call_soon(self._drain_held)

    def _drain_held(self) -> None:
        """After resume(): deliver what was read before the pause, in order, then read again."""
        self._drain_scheduled = False
        held = self._held
        while held and not self._paused:
            link, ticket, message = held.popleft()
            if not link.lost:
                self._deliver(link, ticket, message)
        if not self._paused and self._link is not None:
            self._link.resume()

    def _deliver(self, link: Link, ticket: int | None, message: Message) -> None:
        try:
            result = self._handler(message)
        except Exception:
            log.exception("MQTT message handler failed on %r; redelivery follows", message.topic)
            if ticket is not None:
                link.abort()
            return
        if result is None:
            if ticket is not None:
                link.ack(ticket)
            return
        then = getattr(result, "then", None)
        if then is not None:  # a Settling: no future, no scheduled callback, no closure
            self._inflight += 1
            then(link.settled, ticket)
            return
        if isinstance(result, asyncio.Future) and result.done():
            self._settle(link, ticket, message.topic, result)
            return
        future = asyncio.ensure_future(cast(Awaitable[None], result))
        self._inflight += 1
        # A partial, not a closure: two GC-tracked objects per message instead of six (the
        # function and a cell per captured name); the message itself is not kept.
        future.add_done_callback(partial(self._settle_later, link, ticket, message.topic))

    def _settled(self, link: Link, ticket: int | None) -> None:
        """A message of `link` is stored (through `link.settled`, one partial per connection)."""
        self._inflight -= 1
        if ticket is not None:
            link.ack(ticket)

    def _settle_later(
        self, link: Link, ticket: int | None, topic: str, future: "asyncio.Future[Any]"
    ) -> None:
        self._inflight -= 1
        self._settle(link, ticket, topic, future)

    def _settle(
        self, link: Link, ticket: int | None, topic: str, future: "asyncio.Future[Any]"
    ) -> None:
        if future.cancelled():
            return  # shutting down: leave it unacked, the next session gets it
        exc = future.exception()
        if exc is not None:
            if ticket is None:
                log.warning("QoS 0 message on %r failed: %s", topic, exc)
                return
            log.error(
                "MQTT message on %r failed (%s); dropping the connection so it is redelivered",
                topic,
                exc,
            )
            link.abort()
            return
        if ticket is not None:
            link.ack(ticket)
