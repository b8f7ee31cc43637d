"""What the HTTP API needs from the bridge, as a `typing.Protocol`, and the errors it maps.

The API depends on this surface only, never on `bridge.service`: the service's `Bridge`
satisfies it structurally, and a unit test can serve the API over a small in-memory
implementation. `RuleConflict` and `RuleMissing` live here because they are part of the
contract: the bridge raises them, the API turns them into 409 and 404.

What a console needs is here too: `metrics.totals()` (per-rule counts and the buffer, for
GET /stats) and `dead_letters(limit)` (the latest records of the dead-letter stream).
CDC sources (`sources`, `get_source`, ...) are here too; a cluster view is not yet.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from bridge.cdc.config import Source
from bridge.hstream.records import ReceivedRecord
from bridge.metrics import Totals
from rules import Rule

__all__ = [
    "ApiSettings",
    "BridgeApi",
    "DryRunOutput",
    "Metrics",
    "RuleConflict",
    "RuleMissing",
    "SourceConflict",
    "SourceMissing",
]


class RuleConflict(Exception):
    """A rule with that id exists already (HTTP 409)."""

    def __init__(self, rule_id: str) -> None:
        super().__init__(rule_id)
        self.rule_id = rule_id


class RuleMissing(Exception):
    """No rule has that id (HTTP 404)."""

    def __init__(self, rule_id: str) -> None:
        super().__init__(rule_id)
        self.rule_id = rule_id


class SourceConflict(Exception):
    """A source with that id exists already (HTTP 409)."""

    def __init__(self, source_id: str) -> None:
        super().__init__(source_id)
        self.source_id = source_id


class SourceMissing(Exception):
    """No source has that id (HTTP 404)."""

    def __init__(self, source_id: str) -> None:
        super().__init__(source_id)
        self.source_id = source_id


class ApiSettings(Protocol):
    """The settings the API reads: where to listen, the bearer token if any, and the name of
    the dead-letter stream (shown with its records)."""

    @property
    def api_listen(self) -> str: ...

    @property
    def api_token(self) -> str | None: ...

    @property
    def dead_letter_stream(self) -> str: ...


class Metrics(Protocol):
    def render(self) -> tuple[bytes, str]:
        """The Prometheus exposition body and its content type."""
        ...

    def totals(self) -> Totals:
        """Per-rule counts since start and the buffer gauges, read now (GET /stats)."""
        ...


class DryRunOutput(Protocol):
    """One record a message would make (`bridge.router.Output` has this shape).

    `data` is the encoded HStreamRecord; `reason` is set for a dead letter, and then `stream`
    is the dead-letter stream and `target` the stream the record was meant for, if it rendered.
    """

    @property
    def stream(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def rule_id(self) -> str: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def target(self) -> str | None: ...


class BridgeApi(Protocol):
    """The bridge as the HTTP API sees it.

    Rule changes are serialised and persisted by the bridge (through the config stream, see
    bridge/config/log.py); `create_rule` raises RuleConflict, `replace_rule` RuleMissing (or
    RuleConflict when the new id is taken), `delete_rule` RuleMissing; every change may raise
    ConfigConflict (another replica changed the configuration first: 409), PreconditionFailed
    (`if_match` is not the current version: 412) or HStreamError (not stored: 503).
    `dry_run` is pure: it routes and encodes but stores nothing. `dead_letters` reads the
    dead-letter stream through the HStreamDB client (bounded work, see
    `HStreamClient.read_last`); an HStreamError from it means HStreamDB did not answer.
    """

    @property
    def settings(self) -> ApiSettings: ...

    @property
    def rules(self) -> Sequence[Rule]: ...

    @property
    def metrics(self) -> Metrics: ...

    def get_rule(self, rule_id: str) -> Rule | None: ...

    @property
    def config_version(self) -> int:
        """The configuration version applied (the `ETag` of rules and sources)."""
        ...

    async def create_rule(self, rule: Rule, if_match: int | None = None) -> object: ...

    async def replace_rule(
        self, rule_id: str, rule: Rule, if_match: int | None = None
    ) -> object: ...

    async def delete_rule(self, rule_id: str, if_match: int | None = None) -> None: ...

    async def readiness(self) -> Mapping[str, Any]:
        """At least `{"ready": bool, "mqtt": bool, "hstream": bool}`."""
        ...

    def dry_run(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        user_properties: tuple[tuple[str, str], ...] = (),
    ) -> Sequence[DryRunOutput]: ...

    async def dead_letters(self, limit: int) -> Sequence[ReceivedRecord]:
        """The latest `limit` records of the dead-letter stream, oldest first (none when the
        stream does not exist yet)."""
        ...

    # --- CDC sources (bridge/cdc/) ---

    @property
    def sources(self) -> Sequence[Source]: ...

    def get_source(self, source_id: str) -> Source | None: ...

    def source_status(self, source_id: str) -> Mapping[str, Any]:
        """`{"state": ..., "committed_position": ..., "lag_bytes": ..., "last_error": ...}`."""
        ...

    async def create_source(self, source: Source, if_match: int | None = None) -> None:
        """Persist and start it; SourceConflict when the id is taken."""
        ...

    async def replace_source(
        self, source_id: str, source: Source, if_match: int | None = None
    ) -> None:
        """SourceMissing when there is no such source."""
        ...

    async def delete_source(self, source_id: str, if_match: int | None = None) -> None:
        """Stop it, drop its slot/publication and positions; SourceMissing when unknown."""
        ...

    def resnapshot_source(self, source_id: str) -> None:
        """Forget its position and load its tables again; SourceMissing when not running."""
        ...

    def cluster(self) -> Mapping[str, Any]:
        """The replicas as this one sees them (GET /cluster)."""
        ...
