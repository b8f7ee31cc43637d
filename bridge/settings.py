"""Service settings: one pydantic model, filled from flags, then environment, then a TOML file.

Every field `foo_bar` is the flag `--foo-bar`, the environment variable `HSTREAM_BRIDGE_FOO_BAR`
and the key `foo_bar` in the TOML file given by `--config` (flags win over env, env over file).
Times are float seconds and sizes are bytes everywhere.
"""

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "HSTREAM_BRIDGE_"


class ConfigFileError(Exception):
    """The TOML file given by --config cannot be read or parsed."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # MQTT
    mqtt_url: str = Field("mqtt://127.0.0.1:1883", description="Broker URL, mqtt:// or mqtts://")
    client_id: str = Field("hstream-bridge", description="MQTT client id; the same id resumes")
    mqtt_username: str | None = Field(None, description="MQTT user name")
    mqtt_password: str | None = Field(None, description="MQTT password")
    mqtt_protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version")
    mqtt_keepalive: float = Field(30.0, gt=0, le=65535, description="MQTT keepalive, seconds")
    mqtt_session_expiry: float = Field(
        7200.0,
        ge=0,
        le=0xFFFFFFFF,
        description="Seconds the broker keeps the session while the bridge is away",
    )
    mqtt_receive_maximum: int = Field(
        1000, ge=1, le=65535, description="MQTT 5 Receive Maximum: unacked messages in flight"
    )
    mqtt_shared_group: str | None = Field(
        None, description="Subscribe as $share/<group>/<filter> so replicas split the load"
    )
    mqtt_ca_file: Path | None = Field(None, description="CA bundle for mqtts://")
    mqtt_cert_file: Path | None = Field(None, description="Client certificate for mqtts://")
    mqtt_key_file: Path | None = Field(None, description="Client key for mqtts://")
    # HStreamDB
    hstream_url: str | None = Field(
        None, description="hstream://host:port[,host:port] or hstreams://; omit for embedded store"
    )
    hstream_ca_file: Path | None = Field(None, description="CA bundle for hstreams://")
    hstream_cert_file: Path | None = Field(None, description="Client certificate for hstreams://")
    hstream_key_file: Path | None = Field(None, description="Client key for hstreams://")
    store_listen: str | None = Field(
        None,
        description="Also serve the embedded store's gRPC API here (embedded mode only; "
        "loopback only: it has no authentication)",
    )
    # Service
    api_listen: str = Field("127.0.0.1:8080", description="HTTP API address host:port")
    api_token: str | None = Field(None, description="Bearer token required by the HTTP API")
    data_dir: Path = Field(Path("./data"), description="Rules file and embedded store data")
    dead_letter_stream: str = Field(
        "bridge_dead_letter", description="Stream that keeps payloads that cannot be stored"
    )
    # Pipeline
    batch_max_records: int = Field(1000, ge=1, description="Records per append at most")
    batch_max_bytes: int = Field(
        512 * 1024, ge=1024, le=1 << 20, description="Encoded bytes per append at most"
    )
    linger: float = Field(0.005, ge=0, description="Seconds a batch waits to fill before sending")
    buffer_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Memory budget over buffered or in-flight records and the messages they "
        "hold back; intake pauses when it is spent",
    )
    buffer: Literal["memory", "disk"] = Field(
        "memory",
        description="Where accepted records wait for HStreamDB: memory (a message is "
        "acknowledged once stored in HStreamDB) or disk (acknowledged once fsync'd to a local "
        "buffer under DATA_DIR/buffer, then forwarded; rides out long outages)",
    )
    buffer_disk_bytes: int = Field(
        8 << 30,
        ge=1 << 20,
        description="Disk buffer size limit; intake pauses when it is reached (or the disk is "
        "full)",
    )
    max_record_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="HStreamDB's record limit (max-record-size; also the embedded store's): "
        "records larger than this, as framed in an append, go to the dead-letter stream, and "
        "dead letters are cut to fit it",
    )
    compression: Literal["none", "gzip", "zstd"] = Field("none", description="Append compression")
    append_timeout: float = Field(30.0, gt=0, description="Seconds one append may take")
    retry_backoff_min: float = Field(0.1, gt=0, description="First retry delay, seconds")
    retry_backoff_max: float = Field(5.0, gt=0, description="Longest retry delay, seconds")
    append_error_retries: int = Field(
        5,
        ge=0,
        description="Retries of an append that fails with an error other than an outage "
        "(INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED) before the batch is split and a record that "
        "still fails goes to the dead-letter stream; outages are retried for ever",
    )
    auto_create_streams: bool = Field(True, description="Create missing streams on first use")
    max_streams: int = Field(
        10000,
        ge=1,
        description="Streams the bridge may create while it runs; records for further missing "
        "streams go to the dead-letter stream (reason stream_limit)",
    )
    stream_shards: int = Field(1, ge=1, description="Shard count of streams the bridge creates")
    stream_replication: int = Field(
        1, ge=1, description="Replication factor of streams the bridge creates"
    )
    stream_idle_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds without records after which a stream's state is forgotten "
        "(looked up again on its next record)",
    )
    qos0_overflow: Literal["drop", "block"] = Field(
        "drop", description="QoS 0 messages when the buffer is full: drop (counted) or block"
    )
    shutdown_timeout: float = Field(
        10.0, ge=0, description="Seconds to flush buffered records on SIGTERM"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    log_json: bool = Field(False, description="Log JSON lines instead of plain text")
    config_stream: str = Field(
        "hstream_bridge_config",
        description="HStreamDB stream holding the rules and sources every replica follows",
    )
    replica_id: str | None = Field(
        None, description="This replica's name in the cluster (default: the MQTT client id)"
    )
    cluster_listen: str | None = Field(
        None,
        description="UDP HOST:PORT for cluster membership (SWIM gossip) with other replicas",
    )
    cluster_advertise: str | None = Field(
        None,
        description="IP:PORT other replicas reach this one at (needed when --cluster-listen "
        "is a wildcard such as 0.0.0.0:7946)",
    )
    cluster_peers: str | None = Field(
        None, description="Comma-separated HOST:PORT of other replicas' --cluster-listen"
    )
    cluster_secret: str | None = Field(
        None,
        description="Shared secret (at least 16 characters) that signs cluster packets and "
        "seals source passwords in the configuration stream; required with --cluster-listen or "
        "--cluster-peers",
    )
    cluster_secret_previous: str | None = Field(
        None,
        description="The cluster secret before --cluster-secret, while it changes: packets "
        "signed and passwords sealed with it are still taken; nothing new is (README: "
        "changing the cluster secret)",
    )
    rules: list[dict[str, Any]] = Field(
        default_factory=list, description="Rules from the config file (TOML [[rules]] tables)"
    )
    sources: list[dict[str, Any]] = Field(
        default_factory=list,
        description="CDC sources from the config file (TOML [[sources]] tables)",
    )

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        from bridge.mqtt import parse_broker_url

        parse_broker_url(value)  # ValueError naming what is wrong
        return value

    @field_validator("mqtt_shared_group")
    @classmethod
    def _shared_group(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/+#")):
            raise ValueError(
                "a shared subscription group must be non-empty without '/', '+' or '#'"
            )
        return value

    @field_validator("hstream_url")
    @classmethod
    def _hstream_url(cls, value: str | None) -> str | None:
        from bridge.hstream.url import parse_url

        if value is not None:
            parse_url(value)
        return value

    @field_validator("api_listen")
    @classmethod
    def _api_listen(cls, value: str) -> str:
        from bridge.api.hosts import parse_listen

        parse_listen(value)
        return value

    @field_validator("store_listen")
    @classmethod
    def _store_listen(cls, value: str | None) -> str | None:
        from bridge.hstream.store.server import split_listen

        if value is not None:
            split_listen(value)
        return value

    @field_validator("dead_letter_stream")
    @classmethod
    def _dead_letter_name(cls, value: str) -> str:
        from bridge.hstream.names import name_problem

        problem = name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        for side in ("mqtt", "hstream"):
            cert, key = f"{side}_cert_file", f"{side}_key_file"
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"{cert} and {key} go together (a client certificate and its key)")
        if self.retry_backoff_max < self.retry_backoff_min:
            raise ValueError("retry_backoff_max must not be below retry_backoff_min")
        if (self.cluster_listen or self.cluster_peers) and not self.cluster_listen:
            raise ValueError("cluster_peers needs cluster_listen (this replica's own address)")
        if self.cluster_listen and (self.cluster_secret is None or len(self.cluster_secret) < 16):
            raise ValueError(
                "cluster_listen needs cluster_secret of at least 16 characters: it signs the "
                "cluster's packets (members with another secret are ignored)"
            )
        if self.cluster_secret is not None and len(self.cluster_secret) < 16:
            raise ValueError(
                "cluster_secret must have at least 16 characters: it signs the cluster's packets "
                "and keys the sealing of source passwords"
            )
        if self.cluster_secret_previous is not None:
            if self.cluster_secret is None:
                raise ValueError("cluster_secret_previous needs cluster_secret (the new one)")
            if len(self.cluster_secret_previous) < 16:
                raise ValueError("cluster_secret_previous must have at least 16 characters")
        if self.buffer_bytes < self.batch_max_bytes:
            raise ValueError("buffer_bytes must hold at least one batch (batch_max_bytes)")
        if self.batch_max_bytes > self.max_record_bytes:
            raise ValueError(
                f"batch_max_bytes ({self.batch_max_bytes}) is over max_record_bytes "
                f"({self.max_record_bytes}): HStreamDB refuses an append whose batch is larger "
                "than its record limit"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags come in as init kwargs; the file is passed the same way, below env.
        file_values = getattr(init_settings, "init_kwargs", {}).pop("_file_values", {})
        return (init_settings, env_settings, InitSettingsSource(settings_cls, file_values))


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path}: {exc}") from exc


def load_settings(flags: dict[str, Any], config_file: Path | None = None) -> Settings:
    """Settings from explicit flags, the environment and an optional TOML file, in that order."""
    file_values = read_config_file(config_file) if config_file else {}
    file_values = {key.replace("-", "_"): value for key, value in file_values.items()}
    return Settings(**flags, _file_values=file_values)  # type: ignore[call-arg]
