"""The bridge service: wires the MQTT source, rules, accumulator, sender, store and HTTP API.

Lifecycle (`async with Bridge(settings) as bridge: await bridge.run(stop)`):
start the HTTP API (so /health answers at once), the embedded store when no HStreamDB URL is
given, the HStreamDB client, then the MQTT session with the subscriptions the rules need. On stop:
intake stops for good (the socket is no longer read, and a buffer draining below low water
cannot resume it), everything buffered is flushed within `shutdown_timeout`, the
acknowledgements of stored messages go out, and the MQTT session is closed without a will, so
the broker keeps it and redelivers whatever was not acknowledged.

Supervision: the pipeline's background tasks (the sender's appends and lookups, the MQTT
connection supervisor, the idle-stream pruner) must not die quietly: a dead task holds records
nobody sends and messages nobody acknowledges. Its death is fatal: /ready turns 503, the bridge
drains what it can and `run` raises `PipelineFailed`, so the process exits non-zero and the
orchestrator restarts it (the broker redelivers what was not acknowledged).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from bridge.accumulator import MESSAGE_OVERHEAD, Accumulator, Delivery, Item
from bridge.api import (
    RuleConflict,
    RuleMissing,
    SourceConflict,
    SourceMissing,
    is_loopback,
    parse_listen,
    serve_api,
)
from bridge.backoff import Backoff
from bridge.buffer import DiskBuffer, Forwarder
from bridge.cdc.config import Source
from bridge.cdc.manager import CdcSources
from bridge.cdc.metrics import CdcCollector
from bridge.cdc.store import SourcesFile, parse_sources
from bridge.cluster.placement import owner
from bridge.config import ConfigConflict, ConfigLog, ConfigNotApplied, Document
from bridge.config.secrets import SEALED, Sealer, SealError
from bridge.hstream import structenc
from bridge.hstream.client import HStreamClient
from bridge.hstream.errors import HStreamError, StreamNotFound
from bridge.hstream.errors import StreamExists as StreamExistsError
from bridge.hstream.records import Compression, ReceivedRecord
from bridge.logs import redact_url
from bridge.metrics import BridgeMetrics
from bridge.mqtt import Message, MqttError, MqttSettings, MqttSource, Settling
from bridge.router import Output, Router
from bridge.sender import Sender, SenderConfig
from bridge.settings import Settings
from bridge.store_address import remove_address, write_address
from rules import Matcher, Rule, RulesFile, RulesFileError, parse_rules

logger = logging.getLogger(__name__)

RULES_FILE = "rules.json"
SOURCES_FILE = "sources.json"
STORE_DIR = "store"
BUFFER_DIR = "buffer"


class PipelineFailed(Exception):
    """A pipeline task died of an unexpected error; the process should exit non-zero."""


class DeadLetterStreamMissing(ValueError):
    """The dead-letter stream does not exist and may not be created (a configuration error)."""


async def _cancel(task: "asyncio.Task[None]") -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _Events:
    """Sender events to metrics."""

    def __init__(self, metrics: BridgeMetrics, dead_letter_stream: str) -> None:
        self._m = metrics
        self._dead_letter_stream = dead_letter_stream

    def stored(self, stream: str, items: Sequence[Item], append_seconds: float) -> None:
        self._m.observe_stored(
            stream,
            items,
            append_seconds,
            time.monotonic(),
            success=stream != self._dead_letter_stream,
        )

    def retried(self, stream: str, error: BaseException) -> None:
        self._m.observe_retry(stream, error)

    def dead_lettered(self, items: Sequence[Item], reason: str) -> None:
        self._m.observe_dead_letters(items, reason)


class _CdcPipeline:
    """The pipeline as CDC sources see it (bridge.cdc.runner.Pipeline)."""

    def __init__(self, bridge: "Bridge") -> None:
        self._bridge = bridge
        self.dead_letter_stream = bridge.settings.dead_letter_stream
        self.max_record_bytes = bridge.settings.max_record_bytes

    async def wait_for_room(self) -> None:
        await self._bridge.room.wait()

    def accept(self, outputs: list[Output], received_at: float) -> Awaitable[None]:
        stored = self._bridge.accept(outputs, received_at, held=0)
        assert stored is not None  # tracked
        return stored


class Bridge:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = BridgeMetrics()
        self.data_dir = Path(settings.data_dir)
        self.rules_file = RulesFile(self.data_dir / RULES_FILE)
        self.rules: list[Rule] = []
        self.sources_file = SourcesFile(
            self.data_dir / SOURCES_FILE, seal=self._seal_source, open=self._open_source
        )
        self._sealer: Sealer | None = None
        self._clear_password_warned: set[object] = set()
        self._previous_key_warned: set[object] = set()
        self.cdc: CdcSources | None = None
        self.room = asyncio.Event()  # set while intake may go on (the budget has room)
        self.room.set()
        self.router: Router | None = None
        self.accumulator: Accumulator | None = None
        self.sender: Sender | None = None
        self.source: MqttSource | None = None
        self.client: HStreamClient | None = None
        self.store: Any = None
        self.api_url: str | None = None
        self._stack = contextlib.AsyncExitStack()
        self._rules_lock = asyncio.Lock()
        self.config: ConfigLog | None = None
        self.membership: Any = None  # bridge.cluster.Membership with --cluster-listen
        self.replica_id = settings.replica_id or settings.client_id
        # Why this replica could not fully apply a version it proposed (the API says so).
        self._apply_errors: dict[int, MqttError | ConfigNotApplied] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hstream_ok = False
        self._hstream_checked = 0.0
        self._stopping = False
        self.disk: DiskBuffer | None = None
        self.forwarder: Forwarder | None = None
        self.failure: BaseException | None = None
        self._failed = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> "Bridge":
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        settings = self.settings
        self._loop = asyncio.get_running_loop()
        # Everything that can be checked is checked before anything starts: a bad setting is
        # one line at once, not an error after the API and the store came up.
        mqtt_settings = self._mqtt_settings()  # ValueError for what MqttSettings refuses
        if not settings.api_token and not is_loopback(parse_listen(settings.api_listen)[0]):
            raise ValueError(
                f"refusing to serve the HTTP API on {settings.api_listen} without --api-token"
            )
        if settings.store_listen is not None and settings.hstream_url is None:
            from bridge.hstream.store import check_store_listen

            # The embedded store serves plain, unauthenticated gRPC with delete rights.
            check_store_listen(
                settings.store_listen,
                authenticated=False,
                remedy="a separate `hstream-bridge store` with --username/--password or "
                "--tls-cert/--tls-key, given to the bridge as --hstream-url",
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.rules = await asyncio.to_thread(self._initial_rules)
        initial_sources = await asyncio.to_thread(self._initial_sources)
        self.router = Router(
            Matcher(self.rules),
            dead_letter_stream=settings.dead_letter_stream,
            max_record_bytes=settings.max_record_bytes,
        )
        self.metrics.rules_loaded.set(len(self.rules))
        self.metrics.budget_bytes.set(settings.buffer_bytes)

        self.api_url = await self._stack.enter_async_context(serve_api(self))

        hstream_url = settings.hstream_url
        if hstream_url is None:
            from bridge.hstream.store import EmbeddedStore

            self.store = await self._stack.enter_async_context(
                EmbeddedStore(
                    self.data_dir / STORE_DIR,
                    listen=settings.store_listen or "127.0.0.1:0",
                    max_record_bytes=settings.max_record_bytes,
                )
            )
            hstream_url = self.store.url
            logger.info("embedded store listening on %s", self.store.address)
            # For `hstream-bridge tail` and the other resource commands (bridge/store_address.py).
            write_address(self.data_dir, hstream_url)
            self._stack.callback(remove_address, self.data_dir, hstream_url)
        client = HStreamClient(
            hstream_url,
            ca_file=settings.hstream_ca_file,
            cert_file=settings.hstream_cert_file,
            key_file=settings.hstream_key_file,
            timeout=settings.append_timeout,
        )
        self._stack.push_async_callback(client.close)
        hstream_up = True
        try:
            await client.connect()
            await self._check_dead_letter_stream(client)
        except HStreamError as exc:
            if not exc.retriable:
                raise
            hstream_up = False
            # An outage at start is waited out like any other: records wait in the buffer and
            # appends are retried until HStreamDB answers (/ready says it is not reachable).
            logger.warning("HStreamDB at %s is not reachable yet: %s", redact_url(hstream_url), exc)
        self.client = client
        self.sender = Sender(
            self.client,
            SenderConfig(
                compression=Compression.parse(settings.compression),
                append_timeout=settings.append_timeout,
                backoff_min=settings.retry_backoff_min,
                backoff_max=settings.retry_backoff_max,
                auto_create=settings.auto_create_streams,
                shard_count=settings.stream_shards,
                replication_factor=settings.stream_replication,
                dead_letter_stream=settings.dead_letter_stream,
                max_record_bytes=settings.max_record_bytes,
                error_retries=settings.append_error_retries,
                max_streams=settings.max_streams,
            ),
            _Events(self.metrics, settings.dead_letter_stream),
            on_fatal=self._fatal,
        )
        self._stack.push_async_callback(self.sender.aclose)
        self.accumulator = Accumulator(
            batch_max_records=settings.batch_max_records,
            batch_max_bytes=settings.batch_max_bytes,
            linger=settings.linger,
            budget_bytes=settings.buffer_bytes,
            on_ready=self.sender.on_ready,
            on_new_stream=self.sender.on_new_stream,
            on_pressure=self._on_accumulator_pressure,
        )
        self.sender.bind(self.accumulator)
        if settings.buffer == "disk":
            await self._start_disk_buffer(self.accumulator)
        pruner = asyncio.create_task(self._prune_idle_streams(), name="prune-idle-streams")
        pruner.add_done_callback(self._task_done)
        self._stack.push_async_callback(_cancel, pruner)
        self.metrics.bind_gauges(self.accumulator, self.sender)
        source = MqttSource(mqtt_settings, self._on_message)
        source.on_connection_change = self._on_connection_change  # before the first connect
        source.on_failure = self._fatal
        self.source = await self._stack.enter_async_context(source)
        self.metrics.mqtt_connected.set(1 if source.connected else 0)
        try:
            await self.source.set_subscriptions(self.router.matcher.subscriptions())
        except MqttError as exc:  # e.g. an ACL refuses a filter: kept wanted, retried later
            logger.warning("broker refused subscriptions at start: %s", exc)
        self.cdc = CdcSources(
            _CdcPipeline(self),
            client,
            self.sources_file,
            replica=self.replica_id,
            replication_factor=settings.stream_replication,
            may_run=self.may_run_source,
        )
        self._stack.push_async_callback(self.cdc.aclose, settings.shutdown_timeout)
        cdc = self.cdc
        self.metrics.registry.register(CdcCollector(lambda: cdc.runners))
        await self.cdc.start(initial_sources)
        await self._start_config(client, hstream_up)
        if settings.cluster_listen:
            await self._start_cluster()
        if not structenc.COMPILED:
            logger.warning(
                "JSON records are encoded by the pure-Python Struct encoder, ~7x slower than the "
                "compiled one, which was not built: reinstall where a C compiler is installed"
            )
        logger.info(
            "bridge running: %d rules, MQTT %s, HStreamDB %s, API %s",
            len(self.rules),
            redact_url(settings.mqtt_url),
            redact_url(hstream_url),
            self.api_url,
        )

    async def _start_config(self, client: HStreamClient, hstream_up: bool) -> None:
        """Follow the config stream; seed it from the local files when it is empty.

        With HStreamDB reachable, start-up waits (up to 10 s) until the stream is read, so a
        started replica runs the cluster's configuration; without, it runs the cached one.
        """
        config = ConfigLog(
            client,
            self.settings.config_stream,
            replica=self.replica_id,
            on_apply=self._apply_document,
            replication_factor=self.settings.stream_replication,
        )
        self.config = config
        follower = config.start()
        follower.add_done_callback(self._task_done)
        self._stack.push_async_callback(config.aclose)
        seeder = asyncio.create_task(self._seed_config(config), name="config-seed")
        seeder.add_done_callback(self._task_done)
        self._stack.push_async_callback(_cancel, seeder)
        if hstream_up:
            await config.wait_caught_up(10.0)
            await asyncio.wait({seeder}, timeout=10.0)

    async def _start_cluster(self) -> None:
        """SWIM membership with the other replicas; it shows who is alive and proposes who
        runs which source (bridge/cluster/placement.py). Correctness never depends on it."""
        from bridge.cluster import Membership, MembershipConfig

        settings = self.settings
        assert settings.cluster_listen is not None
        assert settings.cluster_secret is not None
        peers = [p.strip() for p in (settings.cluster_peers or "").split(",") if p.strip()]
        membership = Membership(
            MembershipConfig(
                local_id=self.replica_id,
                listen=settings.cluster_listen,
                advertise=settings.cluster_advertise,
                peers=peers,
                secret=settings.cluster_secret.encode(),
                previous_secrets=[
                    p.encode() for p in (settings.cluster_secret_previous,) if p is not None
                ],
            ),
            self._member_metadata(),
        )
        self.membership = await self._stack.enter_async_context(membership)
        task = asyncio.create_task(self._publish_metadata(), name="cluster-metadata")
        task.add_done_callback(self._task_done)
        self._stack.push_async_callback(_cancel, task)
        logger.info("cluster member %s on %s, peers %s", self.replica_id, membership.address, peers)

    def _member_metadata(self) -> dict[str, Any]:
        """What the other replicas see of this one (GET /cluster)."""
        running = []
        if self.cdc is not None:
            running = sorted(
                source_id
                for source_id, runner in self.cdc.runners.items()
                if runner.status.state in ("snapshot", "streaming")
            )
        return {
            "api": self.api_url,
            "version": self.config_version,
            "ready": self._ready_now(),
            "paused": bool(self.source is not None and self.source.paused),
            "sources": running,
        }

    def _ready_now(self) -> bool:
        """Readiness without asking HStreamDB (the last answer is used)."""
        if self.failure is not None or self.source is None or not self.source.connected:
            return False
        if self.disk is not None:
            return self.disk.accepting
        return self._hstream_ok and (
            self.sender is None or self.sender.dead_letters_blocked is None
        )

    async def _publish_metadata(self) -> None:
        assert self.membership is not None
        published = self._member_metadata()
        while True:
            await asyncio.sleep(0.5)
            metadata = self._member_metadata()
            if metadata != published:
                self.membership.update_metadata(metadata)
                published = metadata

    def may_run_source(self, source_id: str) -> bool:
        """Whether this replica should try to take a source's lock now: it is the proposed
        owner among the alive members, or no alive member runs the source (its owner cannot).
        Without a cluster, always."""
        membership = self.membership
        if membership is None:
            return True
        alive = membership.alive()
        if owner(source_id, [m.id for m in alive]) == self.replica_id:
            return True
        return not any(
            source_id in (m.metadata.get("sources") or ()) for m in alive if m.id != self.replica_id
        )

    def cluster(self) -> dict[str, Any]:
        """Every member with its status, API address, applied version and sources."""
        local = {"id": self.replica_id, "status": "alive", **self._member_metadata()}
        if self.membership is None:
            return {"replica": self.replica_id, "clustered": False, "members": [local]}
        members = []
        for member in self.membership.members():
            if member.id == self.replica_id:
                members.append({**local, "address": member.address})
                continue
            meta = dict(member.metadata)
            members.append(
                {
                    "id": member.id,
                    "status": member.status,
                    "address": member.address,
                    "api": meta.get("api"),
                    "version": meta.get("version"),
                    "ready": meta.get("ready"),
                    "paused": meta.get("paused"),
                    "sources": meta.get("sources", []),
                }
            )
        return {"replica": self.replica_id, "clustered": True, "members": members}

    async def _seed_config(self, config: ConfigLog) -> None:
        """An empty config stream takes this replica's cached rules and sources as version 1
        (when several replicas start at once, one wins and all apply it)."""
        await config.wait_caught_up(None)
        if config.version or not (self.rules or self.sources):
            return
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                await self._propose(self.rules, self.sources, None)
            except ConfigConflict:
                return  # another replica seeded it
            except MqttError:
                return  # stored; the subscriptions are retried by the MQTT source
            except HStreamError as exc:
                logger.warning("cannot seed the config stream yet: %s", exc)
                await asyncio.sleep(backoff.next())
            else:
                logger.info(
                    "seeded the config stream %s with the local configuration", config.stream
                )
                return

    async def _start_disk_buffer(self, accumulator: Accumulator) -> None:
        """Records go to disk first (acknowledged after fsync); a forwarder feeds the pipeline."""
        disk = DiskBuffer(
            self.data_dir / BUFFER_DIR,
            limit_bytes=self.settings.buffer_disk_bytes,
            on_pressure=self._on_pressure,
        )
        await disk.open()
        self._stack.push_async_callback(disk.aclose)
        self.disk = disk
        self.forwarder = Forwarder(disk, accumulator)
        self.metrics.bind_disk_buffer(disk)
        forwarder = asyncio.create_task(self.forwarder.run(), name="disk-buffer-forwarder")
        forwarder.add_done_callback(self._task_done)
        self._stack.push_async_callback(_cancel, forwarder)

    def _on_accumulator_pressure(self, full: bool) -> None:
        """The memory budget: it holds back MQTT intake, or with a disk buffer, forwarding."""
        if self.forwarder is not None:
            self.forwarder.on_pressure(full)
        else:
            self._on_pressure(full)

    def _intake_pressure(self) -> bool:
        if self.disk is not None:
            return self.disk.full
        return self.accumulator is not None and self.accumulator.under_pressure

    async def _check_dead_letter_stream(self, client: HStreamClient) -> None:
        """Make sure the dead-letter stream exists, or can be made, before taking messages:
        without it, a record that cannot be stored could never be acknowledged."""
        name = self.settings.dead_letter_stream
        try:
            await client.shard_map(name)
        except StreamNotFound:
            if not self.settings.auto_create_streams:
                raise DeadLetterStreamMissing(
                    f"the dead-letter stream {name} does not exist and --auto-create-streams "
                    f"is off: create it (hstream-bridge streams create {name}) or name another "
                    "with --dead-letter-stream"
                ) from None
            with contextlib.suppress(StreamExistsError):
                await client.create_stream(
                    name,
                    shard_count=1,
                    replication_factor=self.settings.stream_replication,
                )
                logger.info("created the dead-letter stream %s", name, extra={"stream": name})

    def _task_done(self, task: "asyncio.Task[None]") -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("pipeline task %s failed", task.get_name(), exc_info=exc)
            self._fatal(exc)

    def _fatal(self, exc: BaseException) -> None:
        """A pipeline task died: not ready any more, and `run` ends with PipelineFailed."""
        if self.failure is None:
            self.failure = exc
            logger.critical("the pipeline failed (%r); stopping so that a restart recovers", exc)
        self._failed.set()

    async def _prune_idle_streams(self) -> None:
        """Forget the state of streams that went quiet (rendered names are unbounded)."""
        idle_for = self.settings.stream_idle_timeout
        while True:
            await asyncio.sleep(min(60.0, idle_for / 2))
            assert self.accumulator is not None
            assert self.client is not None
            pruned = self.accumulator.prune_idle(idle_for)
            for stream in pruned:  # every per-stream thing goes together
                self.client.invalidate(stream)
                self.metrics.forget_stream(stream)
            if pruned:
                logger.debug("forgot %d idle streams", len(pruned))

    def _mqtt_settings(self) -> MqttSettings:
        s = self.settings
        return MqttSettings(
            url=s.mqtt_url,
            client_id=s.client_id,
            username=s.mqtt_username,
            password=s.mqtt_password,
            protocol=5 if s.mqtt_protocol == "5" else 4,
            keepalive=s.mqtt_keepalive,
            session_expiry=s.mqtt_session_expiry,
            receive_maximum=s.mqtt_receive_maximum,
            shared_group=s.mqtt_shared_group,
            ca_file=s.mqtt_ca_file,
            cert_file=s.mqtt_cert_file,
            key_file=s.mqtt_key_file,
        )

    def _initial_rules(self) -> list[Rule]:
        """The rules file wins once it exists; before that, the config's rules seed it.

        Config rules that differ from the rules file's are ignored, with a warning naming the
        rules file: an edit of the config's [[rules]] after the first start does nothing.
        """
        if self.rules_file.path.exists():
            stored = self.rules_file.load()
            if self.settings.rules:
                self._warn_ignored_config_rules(stored)
            return stored
        rules = parse_rules(self.settings.rules, "config file [[rules]]")
        if rules:
            self.rules_file.save(rules)
        return rules

    def _initial_sources(self) -> list[Source]:
        """As for rules: the sources file wins once it exists; before, the config seeds it."""
        if self.sources_file.path.exists():
            stored = self.sources_file.load()
            if self.settings.sources:
                logger.warning(
                    "ignoring the config file's [[sources]]: the sources file %s wins once it "
                    "exists (the HTTP API edits it)",
                    self.sources_file.path,
                )
            return stored
        sources = parse_sources(self.settings.sources, "config file [[sources]]")
        if sources:
            self.sources_file.save(sources)
        return sources

    def _warn_ignored_config_rules(self, stored: list[Rule]) -> None:
        try:
            configured = parse_rules(self.settings.rules, "config file [[rules]]")
        except RulesFileError as exc:
            why = f"invalid: {exc}"
        else:
            if [rule.model_dump() for rule in configured] == [r.model_dump() for r in stored]:
                return
            why = f"{len(configured)} rules that differ from the rules file's {len(stored)}"
        logger.warning(
            "ignoring the config file's [[rules]] (%s): the rules file %s wins once it exists "
            "(the HTTP API edits it); delete it to seed it from the config file again",
            why,
            self.rules_file.path,
        )

    async def run(self, stop: asyncio.Event) -> bool:
        """Serve until `stop` is set, then drain; True when everything buffered was stored.

        Raises PipelineFailed (after draining what it can) when a pipeline task died.
        """
        stopped = asyncio.ensure_future(stop.wait())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            failed.cancel()
        flushed = await self.drain()
        if self.failure is not None:
            raise PipelineFailed(f"a pipeline task failed: {self.failure!r}") from self.failure
        return flushed

    async def drain(self) -> bool:
        assert self.source is not None
        assert self.sender is not None
        logger.info("stopping: intake stopped, flushing buffered records")
        self._stopping = True
        self.source.stop_intake()
        if self.cdc is not None:
            await self.cdc.stop_intake()
        if self.disk is not None:
            # Accepted records only need to be durable (forwarding resumes at the next start).
            flushed = await self.disk.flush(self.settings.shutdown_timeout)
        else:
            flushed = await self.sender.flush(self.settings.shutdown_timeout)
        await self.source.flush_acks()
        if self.cdc is not None:  # positions of what was stored
            await self.cdc.aclose(commit_timeout=min(5.0, self.settings.shutdown_timeout))
        if not flushed:
            assert self.accumulator is not None
            logger.warning(
                "shutdown flush timed out with %d records unsent; their messages were not "
                "acknowledged and the broker will deliver them again",
                self.accumulator.buffered_records,
            )
        return flushed

    # --- intake -------------------------------------------------------------------------------

    def _on_message(self, message: Message) -> Awaitable[None] | Settling | None:
        router = self.router
        assert router is not None
        routes = router.routes(message.topic)
        self.metrics.observe_received(message.qos, routes)
        if not routes:
            return None
        if message.qos == 0 and self.settings.qos0_overflow == "drop" and self._intake_pressure():
            self.metrics.observe_dropped("qos0_overflow", records=len(routes))
            return None
        outputs = router.outputs(message, routes)
        if not message.qos:
            self._accept(outputs, message.received_at, 0, tracked=False)
            return None
        # A QoS 1/2 message stays in memory until acknowledged; a QoS 0 one is gone now.
        held = len(message.payload) + len(message.topic) + MESSAGE_OVERHEAD
        return self._accept(outputs, message.received_at, held)

    def accept(
        self, outputs: list[Output], received_at: float, *, held: int, tracked: bool = True
    ) -> "asyncio.Future[None] | None":
        """Records into the pipeline, in order (to disk first with a disk buffer), dead letters
        counted; the future resolves once every one is stored or dead-lettered (with a disk
        buffer: durable). `held` is what the source keeps in memory until then, charged to the
        first record. Untracked records (QoS 0) get no future in memory mode."""
        pending = self._accept(outputs, received_at, held, tracked=tracked)
        return pending.wait() if isinstance(pending, Delivery) else pending

    def _accept(
        self, outputs: list[Output], received_at: float, held: int, *, tracked: bool = True
    ) -> "Delivery | asyncio.Future[None] | None":
        """`accept`, answering with the records' Delivery itself in memory mode (the MQTT
        source settles through its `then`, with no future)."""
        assert self._loop is not None
        for out in outputs:
            if out.reason is not None:
                self.metrics.observe_dead_letter(out.rule_id, out.reason)
        if self.disk is not None:
            return self.disk.add(outputs)
        accumulator = self.accumulator
        assert accumulator is not None
        delivery = Delivery(len(outputs), self._loop) if tracked else None
        for out in outputs:
            accumulator.add(
                out.stream, Item(out.data, out.key, delivery, received_at, out.rule_id, held)
            )
            held = 0  # charged once, with the first record
        return delivery

    def _qos0_only(self) -> bool:
        """True when every subscription is QoS 0, so every message can be dropped."""
        assert self.router is not None
        return max(self.router.matcher.subscriptions().values(), default=0) == 0

    def _on_pressure(self, full: bool) -> None:
        assert self.source is not None
        if full:
            self.room.clear()
        else:
            self.room.set()
        if self._stopping:
            return  # intake stays stopped, whatever the buffer does
        if full and self.settings.qos0_overflow == "drop" and self._qos0_only():
            # Nothing here needs an acknowledgement: keep reading and drop (and count) QoS 0
            # messages until the buffer drains, instead of leaving them to the broker's queue.
            logger.warning("byte budget spent: dropping QoS 0 messages until the buffer drains")
            return
        self.metrics.intake_paused.set(1 if full else 0)
        if full:
            logger.info("byte budget spent: pausing MQTT intake")
            self.source.pause()
        else:
            logger.info("buffer drained below low water: resuming MQTT intake")
            self.source.resume()

    def _on_connection_change(self, connected: bool) -> None:
        self.metrics.mqtt_connected.set(1 if connected else 0)
        if connected and self.source is not None and self.source.reconnects:
            self.metrics.mqtt_reconnects.inc()

    # --- health -------------------------------------------------------------------------------

    async def readiness(self) -> dict[str, Any]:
        """Which dependency is not ready: MQTT connected and HStreamDB answering."""
        mqtt = self.source is not None and self.source.connected
        hstream = await self._hstream_reachable()
        blocked = self.sender.dead_letters_blocked if self.sender is not None else None
        disk = self.disk
        # With a disk buffer, records wait on disk while HStreamDB (or the dead-letter stream)
        # is unavailable: ready as long as the buffer accepts them.
        accepting = disk.accepting if disk is not None else hstream and blocked is None
        ready = mqtt and accepting
        body: dict[str, Any] = {
            "ready": ready and self.failure is None,
            "mqtt": mqtt,
            "hstream": hstream,
            "dead_letters": blocked is None,
        }
        if disk is not None:
            age = disk.oldest_age()
            body["buffer"] = {
                "mode": "disk",
                "accepting": disk.accepting,
                "backlog_records": disk.backlog_records,
                "backlog_bytes": disk.backlog_bytes,
                "bytes_on_disk": disk.bytes_on_disk,
                "limit_bytes": disk.limit_bytes,
                "oldest_age_seconds": round(age, 3) if age is not None else None,
                "error": disk.disk_error,
            }
        if blocked is not None:
            body["dead_letters_error"] = blocked
        if self.failure is not None:
            body["failed"] = repr(self.failure)
        return body

    async def _hstream_reachable(self) -> bool:
        if self.client is None:
            return False
        now = time.monotonic()
        if now - self._hstream_checked < 1.0:
            return self._hstream_ok
        try:
            async with asyncio.timeout(2.0):
                await self.client.echo()
        except Exception:  # any failure means not reachable; the reason is logged by the client
            ok = False
        else:
            ok = True
        self._hstream_ok, self._hstream_checked = ok, now
        self.metrics.hstream_reachable.set(1 if ok else 0)
        return ok

    # --- rules --------------------------------------------------------------------------------

    def get_rule(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)

    @property
    def config_version(self) -> int:
        """The configuration version applied here (0 before the first)."""
        return self.config.version if self.config is not None else 0

    async def create_rule(self, rule: Rule, if_match: int | None = None) -> Rule:
        async with self._rules_lock:
            if self.get_rule(rule.id) is not None:
                raise RuleConflict(rule.id)
            await self._propose([*self.rules, rule], self.sources, if_match)
        return rule

    async def replace_rule(self, rule_id: str, rule: Rule, if_match: int | None = None) -> Rule:
        async with self._rules_lock:
            if self.get_rule(rule_id) is None:
                raise RuleMissing(rule_id)
            if rule.id != rule_id and self.get_rule(rule.id) is not None:
                raise RuleConflict(rule.id)
            rules = [rule if r.id == rule_id else r for r in self.rules]
            await self._propose(rules, self.sources, if_match)
        return rule

    async def delete_rule(self, rule_id: str, if_match: int | None = None) -> None:
        async with self._rules_lock:
            if self.get_rule(rule_id) is None:
                raise RuleMissing(rule_id)
            await self._propose([r for r in self.rules if r.id != rule_id], self.sources, if_match)

    async def _propose(
        self, rules: Sequence[Rule], sources: Sequence[Source], if_match: int | None
    ) -> int:
        """A new configuration through the config stream; applied here (and on every replica)
        when this returns. ConfigConflict, PreconditionFailed, HStreamError (not stored),
        MqttError (stored and routing, the broker did not confirm the subscriptions), or
        ConfigNotApplied (stored, and this replica failed to apply it)."""
        assert self.config is not None
        version = await self.config.propose(
            [rule.model_dump(mode="json") for rule in rules],
            [self._seal_source(source.model_dump(mode="json")) for source in sources],
            if_match=if_match,
        )
        failed = self._apply_errors.pop(version, None)
        if failed is not None:
            raise failed
        return version

    @property
    def sealer(self) -> Sealer | None:
        """Seals source passwords (bridge/config/secrets.py), keyed by --cluster-secret."""
        secret = self.settings.cluster_secret
        if self._sealer is None and secret:
            self._sealer = Sealer.from_secret(secret, self.settings.cluster_secret_previous)
        return self._sealer

    def _seal_source(self, source: Mapping[str, Any]) -> dict[str, Any]:
        sealer = self.sealer
        if sealer is not None:
            return sealer.seal(source)
        dsn, source_id = source.get("dsn"), source.get("id")
        if (
            isinstance(dsn, str)
            and urlsplit(dsn).password is not None
            and source_id not in self._clear_password_warned
        ):
            self._clear_password_warned.add(source_id)
            logger.warning(
                "source %s: its password is written as given to the configuration stream and "
                "the sources file: set --cluster-secret (the same on every replica) to seal "
                "it, or use password_env",
                source_id,
            )
        return dict(source)

    def _open_source(self, source: Mapping[str, Any]) -> dict[str, Any]:
        if SEALED not in source:
            return dict(source)
        sealer = self.sealer
        if sealer is None:
            problem = (
                f"source {source.get('id')!r}: its password is sealed and this replica has no "
                "--cluster-secret to open it: set the one of the replica that sealed it"
            )
        else:
            try:
                opened, with_previous = sealer.open_checked(source)
            except SealError as exc:
                problem = str(exc)
            else:
                source_id = source.get("id")
                if with_previous and source_id not in self._previous_key_warned:
                    self._previous_key_warned.add(source_id)
                    logger.warning(
                        "source %s: its password is sealed under --cluster-secret-previous: "
                        "once every replica has the new --cluster-secret, make any "
                        "configuration change to seal it again under it",
                        source_id,
                    )
                return opened
        logger.error("%s", problem)
        return {key: value for key, value in source.items() if key != SEALED}

    async def _apply_document(self, document: Document) -> None:
        """A configuration version from the config stream: rules and sources, live. What fails
        here is logged and kept for the proposer's API answer; the version stands."""
        try:
            rules = parse_rules(document.rules, f"configuration version {document.version}")
            items = [
                self._open_source(i) if isinstance(i, Mapping) else i for i in document.sources
            ]
            sources = parse_sources(items, f"configuration version {document.version}")
        except ValueError as exc:
            self._not_applied(document.version, exc)
            return
        if [r.model_dump() for r in rules] != [r.model_dump() for r in self.rules]:
            try:
                await self._apply_rules(rules)
            except MqttError as exc:
                self._keep_apply_error(document.version, exc)
            except Exception as exc:
                self._not_applied(document.version, exc)
        if self.cdc is not None:
            # Also when the sources are the same: the cache file takes the version's seals (a
            # change after a new --cluster-secret seals every password again).
            kept = {s.id for s in sources}
            # The replica that deleted a source drops its slot; the others only stop it.
            gone = [s for s in self.cdc.sources if s.id not in kept]
            mine = document.replica == self.replica_id
            try:
                await self.cdc.apply(sources, deleted=gone if mine else ())
            except Exception as exc:
                self._not_applied(document.version, exc)
        self.metrics.config_version.set(document.version)

    def _not_applied(self, version: int, exc: Exception) -> None:
        logger.error("configuration version %d could not be applied here", version, exc_info=exc)
        self._keep_apply_error(version, ConfigNotApplied(version, exc))

    def _keep_apply_error(self, version: int, error: MqttError | ConfigNotApplied) -> None:
        if not isinstance(self._apply_errors.get(version), ConfigNotApplied):
            self._apply_errors[version] = error  # the worse of the two, when both happen
        while len(self._apply_errors) > 16:
            self._apply_errors.pop(next(iter(self._apply_errors)))

    async def _apply_rules(self, rules: list[Rule]) -> None:
        """Cache (a cache file that cannot be written is logged: the rules apply anyway), then
        route by the new rules, then change the subscriptions.

        Messages already routed keep the records they made; a message read after the swap is
        routed by the new rules. New filters are subscribed before old ones are dropped.
        """
        matcher = Matcher(rules)
        try:
            await asyncio.to_thread(self.rules_file.save, rules)
        except OSError as exc:  # a cache: the rules apply; a start without HStreamDB reads it
            logger.error("the rules cache file %s was not written: %s", self.rules_file.path, exc)  # noqa: TRY400
        assert self.router is not None
        self.router.matcher = matcher
        self.rules = rules
        self.metrics.rules_loaded.set(len(rules))
        logger.info("rules changed: %d rules", len(rules))
        if (
            self.source is not None
            and self._intake_pressure()
            and not self.source.paused
            and not self._qos0_only()
        ):
            self._on_pressure(True)  # a QoS 1/2 rule now: dropping is no longer allowed
        if self.source is not None:
            # Saved and routing already. An MqttError (a refused or unconfirmed subscription)
            # reaches the API, which answers 502 saying the change stands: the source keeps
            # sending the subscriptions until the broker confirms them.
            await self.source.set_subscriptions(matcher.subscriptions())

    def dry_run(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        user_properties: tuple[tuple[str, str], ...] = (),
    ) -> list[Output]:
        """The records a message would make, without writing anything."""
        assert self.router is not None
        message = Message(
            topic=topic,
            payload=payload,
            qos=qos,
            retain=retain,
            user_properties=user_properties,
            received_at=time.monotonic(),
        )
        return self.router.outputs(message, self.router.routes(topic))

    # --- CDC sources ----------------------------------------------------------------------------

    @property
    def sources(self) -> list[Source]:
        return self.cdc.sources if self.cdc is not None else []

    def get_source(self, source_id: str) -> Source | None:
        return self.cdc.get(source_id) if self.cdc is not None else None

    def source_status(self, source_id: str) -> dict[str, Any]:
        assert self.cdc is not None
        return self.cdc.status(source_id)

    async def create_source(self, source: Source, if_match: int | None = None) -> None:
        async with self._rules_lock:
            if self.get_source(source.id) is not None:
                raise SourceConflict(source.id)
            await self._propose(self.rules, [*self.sources, source], if_match)

    async def replace_source(
        self, source_id: str, source: Source, if_match: int | None = None
    ) -> None:
        async with self._rules_lock:
            if self.get_source(source_id) is None:
                raise SourceMissing(source_id)
            sources = [source if s.id == source_id else s for s in self.sources]
            await self._propose(self.rules, sources, if_match)

    async def delete_source(self, source_id: str, if_match: int | None = None) -> None:
        async with self._rules_lock:
            if self.get_source(source_id) is None:
                raise SourceMissing(source_id)
            sources = [s for s in self.sources if s.id != source_id]
            await self._propose(self.rules, sources, if_match)

    def resnapshot_source(self, source_id: str) -> None:
        assert self.cdc is not None
        if not self.cdc.resnapshot(source_id):
            raise SourceMissing(source_id)

    # --- dead letters -------------------------------------------------------------------------

    async def dead_letters(self, limit: int) -> list[ReceivedRecord]:
        """The latest `limit` records of the dead-letter stream, oldest first; none before the
        stream exists. Bounded work however long it is (`HStreamClient.read_last`); raises
        HStreamError when HStreamDB does not answer."""
        if self.client is None:
            return []
        try:
            return await self.client.read_last(self.settings.dead_letter_stream, limit)
        except StreamNotFound:
            return []
