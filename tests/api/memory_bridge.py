"""An in-memory `BridgeApi` for testing the HTTP API on its own.

Only the storage is fake (a list instead of the rules file, flags instead of live MQTT and
HStreamDB connections). Validation, matching and encoding are the real ones: rules are
`rules.Rule`, dry runs go through a real `bridge.router.Router` over a real `Matcher`, and
metrics are a real `BridgeMetrics`. Dead letters are a list the test fills
(`dead_letter_records`, oldest first), or an error to raise (`dead_letters_error`).
"""

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge.api import RuleConflict, RuleMissing, SourceConflict, SourceMissing
from bridge.cdc.config import Source
from bridge.config import ConfigNotApplied
from bridge.hstream.records import ReceivedRecord
from bridge.metrics import BridgeMetrics
from bridge.mqtt import Message, MqttError
from bridge.router import Output, Router
from rules import Matcher, Rule

DEAD_LETTER_STREAM = "bridge_dead_letter"


@dataclass(frozen=True)
class ApiTestSettings:
    api_listen: str = "127.0.0.1:0"
    api_token: str | None = None
    dead_letter_stream: str = DEAD_LETTER_STREAM


class MemoryBridge:
    def __init__(
        self,
        settings: ApiTestSettings | None = None,
        rules: Sequence[Rule] = (),
        *,
        max_record_bytes: int = 1 << 20,
    ) -> None:
        self.settings = settings or ApiTestSettings()
        self.metrics = BridgeMetrics(process=False)
        self.rules: list[Rule] = list(rules)
        self.router = Router(
            Matcher(self.rules),
            dead_letter_stream=DEAD_LETTER_STREAM,
            max_record_bytes=max_record_bytes,
        )
        self.mqtt_ready = True
        self.hstream_ready = True
        self.readiness_error: Exception | None = None
        self.readiness_gate: asyncio.Event | None = None  # readiness() waits for it when set
        self.readiness_entered = asyncio.Event()
        self.extra_readiness: dict[str, Any] = {}  # merged into readiness(), as the bridge says
        # Raised after the version is taken, as by a replica that could not apply it.
        self.apply_error: Exception | None = None
        self.subscribe_error: MqttError | None = None  # raised after the change, like MqttSource
        self.dead_letter_records: list[ReceivedRecord] = []
        self.dead_letters_error: Exception | None = None
        self._lock = asyncio.Lock()
        self.sources: list[Source] = []
        self.version = 0  # bumped by every change, as the config stream would
        self.resnapshots: list[str] = []

    @property
    def config_version(self) -> int:
        return self.version

    def get_rule(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)

    async def create_rule(self, rule: Rule, if_match: int | None = None) -> Rule:
        async with self._lock:
            if self.get_rule(rule.id) is not None:
                raise RuleConflict(rule.id)
            self._apply([*self.rules, rule])
        return rule

    async def replace_rule(self, rule_id: str, rule: Rule, if_match: int | None = None) -> Rule:
        async with self._lock:
            if self.get_rule(rule_id) is None:
                raise RuleMissing(rule_id)
            if rule.id != rule_id and self.get_rule(rule.id) is not None:
                raise RuleConflict(rule.id)
            self._apply([rule if r.id == rule_id else r for r in self.rules])
        return rule

    async def delete_rule(self, rule_id: str, if_match: int | None = None) -> None:
        async with self._lock:
            if self.get_rule(rule_id) is None:
                raise RuleMissing(rule_id)
            self._apply([r for r in self.rules if r.id != rule_id])

    def _apply(self, rules: list[Rule]) -> None:
        self.version += 1
        if self.apply_error is not None:
            raise ConfigNotApplied(self.version, self.apply_error)
        self.router.matcher = Matcher(rules)
        self.rules = rules
        if self.subscribe_error is not None:
            raise self.subscribe_error

    async def readiness(self) -> dict[str, Any]:
        self.readiness_entered.set()
        if self.readiness_gate is not None:
            await self.readiness_gate.wait()
        if self.readiness_error is not None:
            raise self.readiness_error
        return {
            "ready": self.mqtt_ready and self.hstream_ready and not self.extra_readiness,
            "mqtt": self.mqtt_ready,
            "hstream": self.hstream_ready,
            **self.extra_readiness,
        }

    def dry_run(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        user_properties: tuple[tuple[str, str], ...] = (),
    ) -> list[Output]:
        message = Message(
            topic=topic,
            payload=payload,
            qos=qos,
            retain=retain,
            user_properties=user_properties,
            received_at=time.monotonic(),
        )
        return self.router.outputs(message, self.router.routes(topic))

    async def dead_letters(self, limit: int) -> list[ReceivedRecord]:
        if self.dead_letters_error is not None:
            raise self.dead_letters_error
        return self.dead_letter_records[-limit:]

    # --- sources: a list; status says only whether a source is enabled ---

    def get_source(self, source_id: str) -> Source | None:
        return next((s for s in self.sources if s.id == source_id), None)

    def source_status(self, source_id: str) -> dict[str, Any]:
        source = self.get_source(source_id)
        return {"state": "streaming" if source is not None and source.enabled else "disabled"}

    async def create_source(self, source: Source, if_match: int | None = None) -> None:
        if self.get_source(source.id) is not None:
            raise SourceConflict(source.id)
        if self.apply_error is not None:
            raise ConfigNotApplied(self.version + 1, self.apply_error)
        self.sources.append(source)

    async def replace_source(
        self, source_id: str, source: Source, if_match: int | None = None
    ) -> None:
        if self.get_source(source_id) is None:
            raise SourceMissing(source_id)
        self.sources = [source if s.id == source_id else s for s in self.sources]

    async def delete_source(self, source_id: str, if_match: int | None = None) -> None:
        if self.get_source(source_id) is None:
            raise SourceMissing(source_id)
        self.sources = [s for s in self.sources if s.id != source_id]

    def resnapshot_source(self, source_id: str) -> None:
        if self.get_source(source_id) is None:
            raise SourceMissing(source_id)
        self.resnapshots.append(source_id)

    def cluster(self) -> dict[str, Any]:
        return {"replica": "memory", "clustered": False, "members": [{"id": "memory"}]}
