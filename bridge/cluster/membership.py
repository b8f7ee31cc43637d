"""SWIM membership over UDP with a signed JSON codec.

Modelled on hashicorp/memberlist (SWIM with Lifeguard's refinements), small and typed:

- Failure detection: every `ping_interval` one member, round-robin over a shuffled list, gets a
  `ping`; no `ack` within `ping_timeout` sends a `ping-req` to `indirect_checks` others, who ping it
  for us; no ack by the end of the interval makes it `suspect`. A suspicion that is not refuted
  within its timeout makes it `dead`. The timeout starts at `suspect_timeout * suspect_max_factor`
  and shrinks towards `suspect_timeout` as other members independently confirm it (Lifeguard); with
  fewer than `indirect_checks + 2` members it is `suspect_timeout` from the start. Both scale with
  log10 of the cluster size, as memberlist's do.
- Dissemination: updates (alive / suspect / dead with an incarnation; alive carries the member's
  address and metadata) ride on every packet, each sent `retransmit_mult * ceil(log10(n + 1))`
  times, least-sent first, within a packet budget (`packet_budget`); a gossip tick also sends them
  to `gossip_nodes` random members every `gossip_interval`. Every packet carries its sender's own
  alive record, so hearing from a member is enough to know it and its metadata.
- Refutation: a member that hears it is suspect or dead raises its incarnation. A ping to a suspect
  member carries the suspicion (Lifeguard's buddy system) and an ack to a member we hold as
  suspect or dead tells it so, so a wrongly suspected member refutes at its next exchange.
- Join: the seeds in `peers` ("host:port", names allowed) are pinged until a member answers from
  that address, then every `join_retry` while none does (a seed may come up later). A member heard
  of for the first time directly gets a `sync` packet with everything we know (memberlist's push
  on join); every `sync_interval` one random member gets one too (anti-entropy).
- Leave: `aclose()` sends "dead, by myself" to every member, which mark it dead (`left`) at once.
- Incarnations start at the wall clock in milliseconds, so a restarted member (same id) outranks
  the dead record of its previous life without having to learn of it first. Two live members
  claiming one id: the higher incarnation wins and a warning is logged.

Wire: ``HMAC-SHA256(key, body) || body`` with the key derived from the cluster secret and `body`
one JSON object. A packet larger than `max_packet`, with a MAC that does not verify, that is not
JSON of the expected shape, or whose timestamp is more than `max_age` from our clock (a replay
bound that also allows that much skew) is dropped and counted in `stats`, with at most one warning
per source address every `warn_interval`. Nothing is ever deserialized into code: a member that
holds the secret can lie about membership, not run anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import orjson

__all__ = ["Member", "Membership", "MembershipConfig", "Status"]

logger = logging.getLogger(__name__)

Status = Literal["alive", "suspect", "dead"]

_VERSION = 1
_KEY_LABEL = b"hstream-bridge membership v1"
_MAC_SIZE = 32
_MAX_ID = 128
_MAX_UPDATES = 256
_MAX_WARNED = 1024  # source addresses remembered for rate-limited warnings
_MESSAGE_TYPES = frozenset({"ping", "ack", "ping-req", "gossip", "sync", "leave"})
_STATUSES: frozenset[str] = frozenset({"alive", "suspect", "dead"})
_STAT_NAMES = (
    "packets_sent",
    "packets_received",
    "packets_dropped_bad_mac",
    "packets_dropped_malformed",
    "packets_dropped_oversized",
    "packets_dropped_stale",
    "packets_dropped_paused",
    "send_errors",
    "probes",
    "probes_indirect",
    "probes_failed",
    "suspicions",
    "refutations",
    "deaths",
    "id_conflicts",
)


@dataclass(frozen=True)
class Member:
    """One member as this process sees it. `since` is `time.monotonic()` when `status` last
    changed; `left` says a dead member said goodbye rather than stopped answering."""

    id: str
    address: str
    status: Status
    incarnation: int
    metadata: Mapping[str, Any] = field(hash=False)
    since: float
    left: bool = False


@dataclass(frozen=True)
class MembershipConfig:
    """Settings of one member. Times in seconds, sizes in bytes.

    `listen` is "host:port" with an IP literal (port 0 binds any free port); `advertise` is the
    address others reach us at, by default the bound one (required when listening on a wildcard).
    `secret` keys the packet MAC: members with different secrets do not see each other.
    `previous_secrets` are also taken from others (while the secret changes), never sent."""

    local_id: str
    listen: str
    peers: Sequence[str]
    secret: bytes = field(repr=False)
    advertise: str | None = None
    previous_secrets: Sequence[bytes] = field(default=(), repr=False)
    ping_interval: float = 0.5
    ping_timeout: float = 0.2
    suspect_timeout: float = 1.5
    suspect_max_factor: float = 2.0
    indirect_checks: int = 3
    dead_forget: float = 60.0
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    sync_interval: float = 10.0
    join_retry: float = 2.0
    retransmit_mult: int = 4
    max_packet: int = 8192
    packet_budget: int = 1400
    max_metadata: int = 512
    max_age: float = 30.0
    warn_interval: float = 5.0

    def __post_init__(self) -> None:
        if len(self.secret) < 16 or any(len(p) < 16 for p in self.previous_secrets):
            raise ValueError("secret must be at least 16 bytes (it keys the packet MAC)")
        if not self.local_id or len(self.local_id) > _MAX_ID:
            raise ValueError(f"local_id must be 1 to {_MAX_ID} characters")
        _parse_address(self.listen, ip_only=True, allow_zero=True)
        if self.advertise is not None:
            _parse_address(self.advertise, ip_only=True)
        for peer in self.peers:
            _parse_address(peer)
        if not 0 < self.ping_timeout < self.ping_interval:
            raise ValueError("need 0 < ping_timeout < ping_interval")
        if self.suspect_timeout <= 0 or self.suspect_max_factor < 1:
            raise ValueError("need suspect_timeout > 0 and suspect_max_factor >= 1")
        if self.max_metadata + 400 > self.packet_budget or self.packet_budget > self.max_packet:
            raise ValueError("need max_metadata + 400 <= packet_budget <= max_packet")


# ---------------------------------------------------------------------------------------------
# Addresses


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_address(
    text: str, *, ip_only: bool = False, allow_zero: bool = False
) -> tuple[str, int]:
    """ "host:port" or "[v6]:port" -> (host, port); ValueError if it is not one."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {text!r} is not host:port")
    port = int(port_text)
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"address {text!r} has no valid port")
    if ip_only:
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"address {text!r} must have an IP literal host") from None
    return host, port


def _normal_address(text: str) -> str:
    return _format_address(*_parse_address(text, ip_only=True))


# ---------------------------------------------------------------------------------------------
# Codec


class _Malformed(Exception):
    """A packet that is not of the expected shape."""


@dataclass(frozen=True, slots=True)
class _Update:
    """One piece of gossip: `status` of member `id` at incarnation `inc`. Alive updates carry the
    member's address and metadata; suspect and dead ones the id of the member that said so."""

    status: Status
    id: str
    inc: int
    addr: str = ""
    meta: Mapping[str, Any] | None = None
    by: str = ""

    def to_wire(self) -> dict[str, Any]:
        if self.status == "alive":
            return {
                "status": "alive",
                "id": self.id,
                "inc": self.inc,
                "addr": self.addr,
                "meta": dict(self.meta or {}),
            }
        return {"status": self.status, "id": self.id, "inc": self.inc, "by": self.by}


@dataclass(frozen=True, slots=True)
class _Packet:
    type: str
    seq: int
    ts: float
    sender: _Update
    target: str | None
    target_addr: str | None
    updates: list[_Update]


def _derive_key(secret: bytes) -> bytes:
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def _seal(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest() + body


def _want_str(value: object, what: str, limit: int = _MAX_ID) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise _Malformed(f"{what} is not a short string")
    return value


def _want_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise _Malformed(f"{what} is not a non-negative integer")
    return value


def _want_addr(value: object, what: str) -> str:
    text = _want_str(value, what, 64)
    try:
        return _normal_address(text)
    except ValueError:
        raise _Malformed(f"{what} is not ip:port") from None


def _parse_update(raw: object) -> _Update:
    if not isinstance(raw, dict):
        raise _Malformed("update is not an object")
    status = raw.get("status")
    if status not in _STATUSES:
        raise _Malformed("update has no valid status")
    member_id = _want_str(raw.get("id"), "update id")
    inc = _want_int(raw.get("inc"), "update inc")
    if status == "alive":
        meta = raw.get("meta")
        if not isinstance(meta, dict):
            raise _Malformed("alive update has no metadata object")
        addr = _want_addr(raw.get("addr"), "update addr")
        return _Update("alive", member_id, inc, addr=addr, meta=meta)
    by = _want_str(raw.get("by"), "update by")
    return _Update("suspect" if status == "suspect" else "dead", member_id, inc, by=by)


def _parse_packet(keys: Sequence[bytes], data: bytes) -> _Packet:
    """Verify (under any of `keys`) and parse one datagram (the caller checked its size).
    Raises _BadMac or _Malformed."""
    mac, body = data[:_MAC_SIZE], data[_MAC_SIZE:]
    if len(mac) < _MAC_SIZE or not any(
        hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()) for key in keys
    ):
        raise _BadMac
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _Malformed("body is not JSON") from None
    if not isinstance(raw, dict) or raw.get("v") != _VERSION:
        raise _Malformed("body is not a version-1 object")
    kind = raw.get("type")
    if kind not in _MESSAGE_TYPES:
        raise _Malformed("unknown message type")
    ts = raw.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise _Malformed("ts is not a number")
    sender = _parse_update(raw.get("from"))
    if sender.status != "alive":
        raise _Malformed("sender record is not alive")
    target = raw.get("target")
    target_addr = raw.get("target_addr")
    if target is not None:
        target = _want_str(target, "target")
    if target_addr is not None:
        target_addr = _want_addr(target_addr, "target_addr")
    if kind == "ping-req" and (target is None or target_addr is None):
        raise _Malformed("ping-req without target")
    updates = raw.get("updates", [])
    if not isinstance(updates, list) or len(updates) > _MAX_UPDATES:
        raise _Malformed("updates is not a short list")
    return _Packet(
        type=str(kind),
        seq=_want_int(raw.get("seq"), "seq"),
        ts=float(ts),
        sender=sender,
        target=target,
        target_addr=target_addr,
        updates=[_parse_update(item) for item in updates],
    )


class _BadMac(Exception):
    """The MAC does not verify (another secret, or tampering)."""


def _check_metadata(metadata: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """A private deep copy of `metadata`, refused with ValueError unless it is a JSON object of
    at most `limit` bytes."""
    try:
        encoded = orjson.dumps(dict(metadata))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be a JSON object with string keys: {exc}") from None
    if len(encoded) > limit:
        raise ValueError(f"metadata is {len(encoded)} bytes serialized, more than {limit}")
    copy: dict[str, Any] = orjson.loads(encoded)
    return copy


# ---------------------------------------------------------------------------------------------
# State


@dataclass(slots=True)
class _State:
    id: str
    addr: str
    status: Status
    inc: int
    meta: Mapping[str, Any]
    since: float
    left: bool = False

    def snapshot(self) -> Member:
        return Member(self.id, self.addr, self.status, self.inc, self.meta, self.since, self.left)

    def update(self, by: str) -> _Update:
        """This state as gossip; `by` names who says so if it is not alive (a member that left
        says so itself)."""
        if self.status == "alive":
            return _Update("alive", self.id, self.inc, addr=self.addr, meta=self.meta)
        return _Update(self.status, self.id, self.inc, by=self.id if self.left else by)


@dataclass(slots=True)
class _Suspicion:
    """Lifeguard's suspicion: the timeout shrinks from `longest` to `shortest` with log(C+1) of
    the independent confirmations C, out of `expected`."""

    started: float
    shortest: float
    longest: float
    expected: int
    confirmed: set[str]
    handle: asyncio.TimerHandle | None = None

    def timeout(self) -> float:
        if self.expected < 1:
            return self.shortest
        frac = math.log(len(self.confirmed) + 1) / math.log(self.expected + 1)
        return max(self.shortest, self.longest - (self.longest - self.shortest) * frac)


@dataclass(slots=True)
class _Broadcast:
    update: _Update
    wire: bytes
    sent: int = 0


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: Membership) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._owner._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._owner.stats["send_errors"] += 1
        logger.debug("membership socket error: %s", exc)


# ---------------------------------------------------------------------------------------------
# Membership


class Membership:
    """One member of the cluster; an async context manager. `on_change` is called on the event
    loop with the new view of a member whose status, address or metadata changed."""

    def __init__(self, config: MembershipConfig, metadata: Mapping[str, Any] | None = None) -> None:
        self._config = config
        self._key = _derive_key(config.secret)
        self._keys = [self._key, *(_derive_key(p) for p in config.previous_secrets)]
        self._meta = MappingProxyType(_check_metadata(metadata or {}, config.max_metadata))
        self.on_change: Callable[[Member], None] | None = None
        self.stats: dict[str, int] = dict.fromkeys(_STAT_NAMES, 0)
        self.address = ""
        self._incarnation = time.time_ns() // 1_000_000
        self._members: dict[str, _State] = {}
        self._suspicions: dict[str, _Suspicion] = {}
        self._queue: dict[str, _Broadcast] = {}
        self._acks: dict[int, Callable[[], None]] = {}
        self._seq = random.randrange(2**32)
        self._probe_order: list[str] = []
        self._warned: dict[str, float] = {}
        self._corrected: dict[str, float] = {}
        self._started = time.monotonic()
        self._transport: asyncio.DatagramTransport | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        self._paused_until = 0.0
        self._largest_sent = 0
        host, _port = _parse_address(config.listen, ip_only=True, allow_zero=True)
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if config.advertise is None and ipaddress.ip_address(host).is_unspecified:
            raise ValueError("listening on a wildcard address needs an `advertise` address")

    # -- public API ---------------------------------------------------------------------------

    @property
    def local_id(self) -> str:
        return self._config.local_id

    def members(self) -> list[Member]:
        """Every member known, the local one (always alive) included, sorted by id."""
        states = [self._local_state(), *self._members.values()]
        return sorted((state.snapshot() for state in states), key=lambda m: m.id)

    def alive(self) -> list[Member]:
        return [member for member in self.members() if member.status == "alive"]

    def update_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Replace the local metadata and gossip it (the incarnation goes up)."""
        self._meta = MappingProxyType(_check_metadata(metadata, self._config.max_metadata))
        self._incarnation += 1
        self._enqueue(self._local_state().update(self.local_id))

    async def __aenter__(self) -> Membership:
        loop = asyncio.get_running_loop()
        host, port = _parse_address(self._config.listen, ip_only=True, allow_zero=True)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(host, port), family=self._family
        )
        self._transport = transport
        bound = transport.get_extra_info("sockname")
        self.address = (
            _normal_address(self._config.advertise)
            if self._config.advertise is not None
            else _format_address(host, int(bound[1]))
        )
        self._enqueue(self._local_state().update(self.local_id))
        self._runner = asyncio.create_task(self._run(), name=f"membership-{self.local_id}")
        self._runner.add_done_callback(self._runner_done)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Tell every member we leave, then stop. Idempotent."""
        if self._closed:
            return
        goodbye = _Update("dead", self.local_id, self._incarnation, by=self.local_id)
        for state in list(self._members.values()):
            if state.status != "dead":
                for _ in range(2):  # UDP: a second copy for a lost first
                    self._send("leave", state.addr, first=[goodbye], piggyback=False)
        await self._stop()

    async def _crash(self) -> None:
        """Test hook: stop without a goodbye, as SIGKILL would."""
        await self._stop()

    def _pause(self, duration: float) -> None:
        """Test hook: ignore every incoming packet for `duration` seconds."""
        self._paused_until = time.monotonic() + duration

    async def _stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        for suspicion in self._suspicions.values():
            if suspicion.handle is not None:
                suspicion.handle.cancel()
        self._suspicions.clear()
        self._acks.clear()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._transport is not None:
            self._transport.close()

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("membership loops stopped", exc_info=task.exception())

    # -- loops --------------------------------------------------------------------------------

    async def _run(self) -> None:
        config = self._config
        loops: dict[str, tuple[Callable[[], Any], float]] = {
            "probe": (self._probe_once, config.ping_interval),
            "gossip": (self._gossip_once, config.gossip_interval),
            "join": (self._join_once, config.join_retry),
            "sync": (self._sync_once, config.sync_interval),
            "reap": (self._reap_once, 1.0),
        }
        async with asyncio.TaskGroup() as tasks:
            for name, (step, interval) in loops.items():
                tasks.create_task(self._loop(name, step, interval), name=f"{name}-{self.local_id}")

    async def _loop(self, name: str, step: Callable[[], Any], interval: float) -> None:
        """Run `step` (sync or async) every `interval`, logging its failures and going on."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("membership %s step failed", name)
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    async def _probe_once(self) -> None:
        target = self._next_probe_target()
        if target is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.ping_interval * 0.9
        acked = loop.create_future()
        self.stats["probes"] += 1

        def on_ack() -> None:
            if not acked.done():
                acked.set_result(None)

        seq = self._next_seq()
        self._acks[seq] = on_ack
        try:
            buddy = [target.update(self.local_id)] if target.status == "suspect" else []
            self._send("ping", target.addr, seq=seq, target=target, first=buddy)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.ping_timeout):
                    await asyncio.shield(acked)
            if acked.done():
                return
            self.stats["probes_indirect"] += 1
            helpers = [
                state
                for state in self._members.values()
                if state.status == "alive" and state.id != target.id
            ]
            for helper in random.sample(helpers, min(self._config.indirect_checks, len(helpers))):
                self._send("ping-req", helper.addr, seq=seq, target=target)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await asyncio.shield(acked)
            if acked.done():
                return
        finally:
            self._acks.pop(seq, None)
            if not acked.done():
                acked.cancel()
        current = self._members.get(target.id)
        if current is not None and current.inc == target.inc and current.status != "dead":
            self.stats["probes_failed"] += 1
            self._apply(_Update("suspect", target.id, target.inc, by=self.local_id))

    def _next_probe_target(self) -> _State | None:
        while self._probe_order:
            state = self._members.get(self._probe_order.pop())
            if state is not None and state.status != "dead":
                return _State(state.id, state.addr, state.status, state.inc, state.meta, 0.0)
        candidates = [s.id for s in self._members.values() if s.status != "dead"]
        if not candidates:
            return None
        random.shuffle(candidates)
        self._probe_order = candidates
        return self._next_probe_target()

    def _gossip_once(self) -> None:
        if not self._queue:
            return
        live = [state for state in self._members.values() if state.status != "dead"]
        for state in random.sample(live, min(self._config.gossip_nodes, len(live))):
            self._send("gossip", state.addr)

    async def _join_once(self) -> None:
        known = {state.addr for state in self._members.values() if state.status == "alive"}
        loop = asyncio.get_running_loop()
        for peer in self._config.peers:
            host, port = _parse_address(peer)
            try:
                infos = await loop.getaddrinfo(
                    host, port, family=self._family, type=socket.SOCK_DGRAM
                )
            except OSError as exc:
                logger.debug("cannot resolve seed %s: %s", peer, exc)
                continue
            addresses = {_format_address(str(info[4][0]), port) for info in infos}
            if addresses & known or self.address in addresses:
                continue
            for address in addresses:
                with contextlib.suppress(ValueError):
                    self._send("ping", address, seq=self._next_seq())

    def _sync_once(self) -> None:
        # Dead members that did not leave are candidates too: one wrongly declared dead (a healed
        # partition) learns it from our view and refutes.
        reachable = [state for state in self._members.values() if not state.left]
        if reachable:
            self._send_sync(random.choice(reachable).addr)

    def _reap_once(self) -> None:
        now = time.monotonic()
        forget = [
            state.id
            for state in self._members.values()
            if state.status == "dead" and now - state.since > self._config.dead_forget
        ]
        for member_id in forget:
            del self._members[member_id]
            self._queue.pop(member_id, None)
            self._corrected.pop(member_id, None)
        stale = [a for a, t in self._warned.items() if now - t > self._config.warn_interval]
        for address in stale:
            del self._warned[address]

    # -- receive ------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, source: tuple[Any, ...]) -> None:
        """The receive path: drops and counts what it cannot use, never raises."""
        source_text = str(source)
        try:
            source_text = _format_address(str(source[0]), int(source[1]))
            self.stats["packets_received"] += 1
            if self._closed:
                return
            if time.monotonic() < self._paused_until:
                self.stats["packets_dropped_paused"] += 1
                return
            if len(data) > self._config.max_packet:
                self._drop("packets_dropped_oversized", source_text, f"{len(data)} bytes")
                return
            try:
                packet = _parse_packet(self._keys, data)
            except _BadMac:
                self._drop("packets_dropped_bad_mac", source_text, "MAC does not verify")
                return
            except _Malformed as exc:
                self._drop("packets_dropped_malformed", source_text, str(exc))
                return
            if abs(time.time() - packet.ts) > self._config.max_age:
                self._drop("packets_dropped_stale", source_text, "timestamp out of range")
                return
            self._handle(packet, source_text)
        except Exception:
            self.stats["packets_dropped_malformed"] += 1
            logger.exception("membership failed on a packet from %s", source_text)

    def _drop(self, stat: str, source: str, reason: str) -> None:
        self.stats[stat] += 1
        self._warn(source, "membership dropped a packet from %s: %s (%s)", source, reason, stat)

    def _handle(self, packet: _Packet, source: str) -> None:
        sender = packet.sender
        if sender.id == self.local_id:
            if packet.type != "leave":
                self._conflict(sender)
            return
        newly_known = self._is_news(sender)
        self._apply(sender)
        for update in packet.updates:
            self._apply(update)
        if newly_known and self._members[sender.id].status == "alive":
            self._send_sync(sender.addr)
        # The sender is suspect or dead here: tell it, so that it refutes.
        known = self._members[sender.id]
        correction = [] if known.status == "alive" else [known.update(self.local_id)]
        if packet.type == "ping":
            if packet.target is not None and packet.target != self.local_id:
                return  # meant for an earlier owner of this address
            self._send("ack", source, seq=packet.seq, first=correction)
            return
        if correction and packet.type != "leave":
            last = self._corrected.get(sender.id, -math.inf)
            if time.monotonic() - last >= self._config.ping_interval:
                self._corrected[sender.id] = time.monotonic()
                self._send("gossip", sender.addr, first=correction)
        if packet.type == "ack":
            callback = self._acks.pop(packet.seq, None)
            if callback is not None:
                callback()
        elif packet.type == "ping-req":
            self._relay_probe(packet, source)

    def _relay_probe(self, packet: _Packet, requester: str) -> None:
        assert packet.target is not None
        assert packet.target_addr is not None
        seq = self._next_seq()
        loop = asyncio.get_running_loop()

        def on_ack() -> None:
            handle.cancel()
            self._send("ack", requester, seq=packet.seq)

        handle = loop.call_later(self._config.ping_interval, self._acks.pop, seq, None)
        self._acks[seq] = on_ack
        target = self._members.get(packet.target)
        address = packet.target_addr if target is None else target.addr
        self._send("ping", address, seq=seq, target_id=packet.target)

    def _is_news(self, sender: _Update) -> bool:
        known = self._members.get(sender.id)
        return known is None or (known.status == "dead" and sender.inc > known.inc)

    def _conflict(self, claim: _Update) -> None:
        if claim.addr != self.address:
            self.stats["id_conflicts"] += 1
            self._warn(
                claim.addr,
                "member at %s claims our id %r (incarnation %d, ours %d)",
                claim.addr,
                claim.id,
                claim.inc,
                self._incarnation,
            )

    def _warn(self, key: str, message: str, *args: object) -> None:
        """A warning at most once every `warn_interval` per `key` (a source address, an id)."""
        now = time.monotonic()
        last = self._warned.get(key)
        if last is not None and now - last < self._config.warn_interval:
            return
        if len(self._warned) >= _MAX_WARNED:
            return  # a flood from many addresses: the counters still count it
        self._warned[key] = now
        logger.warning(message, *args)

    # -- state changes ------------------------------------------------------------------------

    def _apply(self, update: _Update) -> None:
        if update.id == self.local_id:
            self._about_me(update)
        elif update.status == "alive":
            self._apply_alive(update)
        elif update.status == "suspect":
            self._apply_suspect(update)
        else:
            self._apply_dead(update)

    def _about_me(self, update: _Update) -> None:
        if update.status == "alive":
            if update.inc > self._incarnation or update.addr != self.address:
                self._conflict(update)
            return
        if update.inc < self._incarnation or self._closed:
            return
        self.stats["refutations"] += 1
        self._incarnation = update.inc + 1
        logger.info("membership: %s says we are %s; refuting", update.by, update.status)
        self._enqueue(self._local_state().update(self.local_id))

    def _apply_alive(self, update: _Update) -> None:
        assert update.meta is not None
        known = self._members.get(update.id)
        now = time.monotonic()
        if known is None:
            state = _State(update.id, update.addr, "alive", update.inc, _frozen(update.meta), now)
            self._members[update.id] = state
            self._probe_order.insert(random.randint(0, len(self._probe_order)), update.id)
            self._enqueue(update)
            self._notify(state)
            return
        if update.inc <= known.inc:
            if update.addr != known.addr and known.status != "dead":
                self.stats["id_conflicts"] += 1
                self._warn(
                    f"id:{update.id}",
                    "members at %s and %s both claim id %r; keeping %s (higher incarnation)",
                    known.addr,
                    update.addr,
                    update.id,
                    known.addr,
                )
            return
        if update.addr != known.addr and known.status != "dead":
            self.stats["id_conflicts"] += 1
            self._warn(
                f"id:{update.id}",
                "member %r moved from %s to %s (a restart, or two members claiming one id: "
                "the higher incarnation wins)",
                update.id,
                known.addr,
                update.addr,
            )
        self._end_suspicion(update.id)
        changed = (
            known.status != "alive"
            or known.addr != update.addr
            or dict(known.meta) != dict(update.meta)
        )
        if known.status != "alive":
            known.since = now
        known.status, known.addr, known.inc, known.left = "alive", update.addr, update.inc, False
        known.meta = _frozen(update.meta)
        self._enqueue(update)
        if changed:
            self._notify(known)

    def _apply_suspect(self, update: _Update) -> None:
        known = self._members.get(update.id)
        if known is None or known.status == "dead" or update.inc < known.inc:
            return
        suspicion = self._suspicions.get(update.id)
        if known.status == "suspect" and update.inc == known.inc and suspicion is not None:
            if update.by not in suspicion.confirmed:
                suspicion.confirmed.add(update.by)
                self._reschedule(update.id, suspicion)
                self._enqueue(update)
            return
        self.stats["suspicions"] += 1
        self._end_suspicion(update.id)
        known.status, known.inc, known.since = "suspect", update.inc, time.monotonic()
        live = 1 + sum(1 for s in self._members.values() if s.status != "dead")
        shortest = self._config.suspect_timeout * max(1.0, math.log10(live))
        expected = self._config.indirect_checks if live - 2 >= self._config.indirect_checks else 0
        suspicion = _Suspicion(
            started=time.monotonic(),
            shortest=shortest,
            longest=shortest * self._config.suspect_max_factor,
            expected=expected,
            confirmed=set(),
        )
        self._suspicions[update.id] = suspicion
        self._reschedule(update.id, suspicion)
        self._enqueue(update)
        self._notify(known)

    def _reschedule(self, member_id: str, suspicion: _Suspicion) -> None:
        if suspicion.handle is not None:
            suspicion.handle.cancel()
        remaining = suspicion.started + suspicion.timeout() - time.monotonic()
        loop = asyncio.get_running_loop()
        suspicion.handle = loop.call_later(max(0.0, remaining), self._suspicion_expired, member_id)

    def _suspicion_expired(self, member_id: str) -> None:
        self._suspicions.pop(member_id, None)
        known = self._members.get(member_id)
        if known is not None and known.status == "suspect":
            logger.info("membership: %s (%s) is dead", member_id, known.addr)
            self._apply_dead(_Update("dead", member_id, known.inc, by=self.local_id))

    def _end_suspicion(self, member_id: str) -> None:
        suspicion = self._suspicions.pop(member_id, None)
        if suspicion is not None and suspicion.handle is not None:
            suspicion.handle.cancel()

    def _apply_dead(self, update: _Update) -> None:
        known = self._members.get(update.id)
        if known is None or known.status == "dead" or update.inc < known.inc:
            return
        self.stats["deaths"] += 1
        self._end_suspicion(update.id)
        known.status, known.inc, known.since = "dead", update.inc, time.monotonic()
        known.left = update.by == update.id
        self._enqueue(update)
        self._notify(known)

    def _notify(self, state: _State) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(state.snapshot())
        except Exception:
            logger.exception("membership on_change callback failed")

    # -- send ---------------------------------------------------------------------------------

    def _local_state(self) -> _State:
        return _State(
            self.local_id, self.address, "alive", self._incarnation, self._meta, self._started
        )

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 2**63
        return self._seq

    def _enqueue(self, update: _Update) -> None:
        """Queue `update` for piggybacking, replacing older news of the same member."""
        self._queue[update.id] = _Broadcast(update, orjson.dumps(update.to_wire()))

    def _retransmit_limit(self) -> int:
        live = 1 + sum(1 for s in self._members.values() if s.status != "dead")
        return self._config.retransmit_mult * math.ceil(math.log10(live + 1))

    def _send(
        self,
        kind: str,
        address: str,
        *,
        seq: int = 0,
        target: _State | None = None,
        target_id: str | None = None,
        first: Sequence[_Update] = (),
        piggyback: bool = True,
    ) -> int:
        """Send one packet of `kind` with the updates in `first` that fit the packet budget (the
        first one even if it alone does not), then queued ones if `piggyback`. Returns how many
        of `first` it carried."""
        if self._transport is None or self._transport.is_closing():
            return len(first)
        body: dict[str, Any] = {
            "v": _VERSION,
            "type": kind,
            "seq": seq,
            "ts": time.time(),
            "from": self._local_state().update(self.local_id).to_wire(),
        }
        if target is not None:
            body["target"], body["target_addr"] = target.id, target.addr
        elif target_id is not None:
            body["target"] = target_id
        room = self._config.packet_budget - len(orjson.dumps(body)) - _MAC_SIZE - 20
        chosen: list[orjson.Fragment] = []
        carried = 0
        for update in first:
            wire = orjson.dumps(update.to_wire())
            if chosen and len(wire) + 1 > room:
                break
            chosen.append(orjson.Fragment(wire))
            room -= len(wire) + 1
            carried += 1
        if piggyback:
            limit = self._retransmit_limit()
            for member_id, item in sorted(self._queue.items(), key=lambda kv: kv[1].sent):
                if len(item.wire) + 1 > room:
                    continue
                chosen.append(orjson.Fragment(item.wire))
                room -= len(item.wire) + 1
                item.sent += 1
                if item.sent >= limit:
                    del self._queue[member_id]
        body["updates"] = chosen
        self._transmit(_seal(self._key, orjson.dumps(body)), address)
        return carried

    def _send_sync(self, address: str) -> None:
        """Send everything we know to `address`, in as many packets as it takes."""
        states = [self._local_state(), *self._members.values()]
        remaining = [state.update(self.local_id) for state in states]
        while remaining:
            carried = self._send("sync", address, first=remaining, piggyback=False)
            remaining = remaining[max(1, carried) :]

    def _transmit(self, packet: bytes, address: str) -> None:
        assert self._transport is not None
        host, port = _parse_address(address)
        try:
            self._transport.sendto(packet, (host, port))
        except OSError as exc:
            self.stats["send_errors"] += 1
            logger.debug("membership send to %s failed: %s", address, exc)
            return
        self.stats["packets_sent"] += 1
        self._largest_sent = max(self._largest_sent, len(packet))


def _frozen(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    return meta if isinstance(meta, MappingProxyType) else MappingProxyType(dict(meta))
