"""A real Mosquitto for tests and benchmarks, on a free 127.0.0.1 port, with its own files.

Each `Mosquitto` writes a config, a persistence directory and a log file into its own directory,
so a `restart()` comes back on the same port with the same persistent sessions and their queued
QoS 1/2 messages (Mosquitto saves its database on a clean stop; `kill()` loses whatever changed
since the last autosave, which is once a second here). The system broker on 1883 is never used.

Debian bookworm ships Mosquitto 2.0.11, which stops honouring a client's Receive Maximum once
PUBACKs flow (fixed upstream in 2.0.13): tests must not count on the broker to limit the number
of unacknowledged messages in flight.

Also here: `publish()`, a publisher that sends QoS 1 messages with paho-mqtt and returns only
when every PUBACK has arrived (`mosquitto_pub -l` loses messages under load, so it is not used).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.net import free_port as free_port

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def find_mosquitto() -> str:
    """The broker binary: /usr/sbin/mosquitto (Debian puts it off PATH) or whatever PATH has."""
    for candidate in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("mosquitto not found (apt-get install mosquitto)")


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """One broker process; `start()`/`stop()`/`kill()`/`restart()`, or use it as a context manager.

    The methods block (at most START_TIMEOUT/STOP_TIMEOUT seconds); from async code call them
    through `asyncio.to_thread` when a blocked loop matters (a restart takes ~50 ms).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        directory: Path | None = None,
        *,
        port: int | None = None,
        tls: TlsFiles | None = None,
        extra_config: str = "",
    ) -> None:
        self._own_dir = directory is None
        self.directory = (
            Path(tempfile.mkdtemp(prefix="mosquitto-")) if directory is None else directory
        )
        self.port = port or free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.extra_config = extra_config
        self.config_file = self.directory / "mosquitto.conf"
        self.log_file = self.directory / "mosquitto.log"
        self.persistence_dir = self.directory / "data"
        self.persistence_dir.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this broker has no TLS listener")
        return f"mqtts://{self.host}:{self.tls_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            # As root, Mosquitto would switch to the `mosquitto` user and could not write here.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            "persistence_file mosquitto.db",
            # Save often so that even kill() keeps most of the state; stop() always saves.
            "autosave_interval 1",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
            # Tests hold PUBACKs and pause sockets: let the broker queue instead of dropping.
            "max_inflight_messages 0",
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "persistent_client_expiration 1d",
            "set_tcp_nodelay true",
        ]
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.tls.require_client_cert else 'false'}",
            ]
        self.config_file.write_text("\n".join(lines) + "\n" + self.extra_config + "\n")

    def start(self) -> None:
        """Start the broker and return once its port accepts connections."""
        if self.running:
            return
        self._write_config()
        self._process = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.directory,
        )
        deadline = time.monotonic() + START_TIMEOUT
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        while not all(port_accepts(self.host, port) for port in ports):
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                self._process = None
                raise RuntimeError(f"mosquitto exited at start: {stderr}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"mosquitto did not listen on {ports}:\n{self.log_tail()}")
            time.sleep(0.01)

    def _end(self, sig: int) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        if process.stderr:
            process.stderr.close()

    def stop(self) -> None:
        """SIGTERM: clients see the connection close, and the database is saved."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash; state since the last autosave (1 s) is lost."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Stop cleanly and start again on the same port with the same persistence."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def close(self) -> None:
        """Stop the broker and remove the directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TlsFiles:
    """A self-signed CA plus a server certificate for 127.0.0.1 and a client certificate.

    Made with the `openssl` command (the `cryptography` package is not installed here).
    """

    def __init__(self, directory: Path, *, require_client_cert: bool = False) -> None:
        self.directory = directory
        self.require_client_cert = require_client_cert
        self.ca_file = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.server_cert = directory / "server.crt"
        self.server_key = directory / "server.key"
        self.client_cert = directory / "client.crt"
        self.client_key = directory / "client.key"

    def generate(self) -> TlsFiles:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise FileNotFoundError("openssl not found")
        self.directory.mkdir(parents=True, exist_ok=True)

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], check=True, capture_output=True, cwd=self.directory)

        run(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(self.ca_key), "-out", str(self.ca_file), "-subj", "/CN=test-ca",
        )  # fmt: skip
        ext = self.directory / "server.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for cert, key, name, extfile in (
            (self.server_cert, self.server_key, "127.0.0.1", ext),
            (self.client_cert, self.client_key, "test-client", None),
        ):
            csr = self.directory / f"{name}.csr"
            run(
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                "-out", str(csr), "-subj", f"/CN={name}",
            )  # fmt: skip
            sign = [
                "x509", "-req", "-in", str(csr), "-CA", str(self.ca_file),
                "-CAkey", str(self.ca_key), "-CAcreateserial", "-days", "2", "-out", str(cert),
            ]  # fmt: skip
            if extfile is not None:
                sign += ["-extfile", str(extfile)]
            run(*sign)
        return self


# --- publisher --------------------------------------------------------------------------------


class PublishError(Exception):
    """The publisher could not connect, or not every PUBACK came back in time."""


class Publisher:
    """A paho-mqtt client in its own network thread that publishes and waits for every PUBACK.

    Usable from async tests through `asyncio.to_thread(publisher.publish_many, ...)`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str = "",
        protocol: int = 5,
        max_inflight: int = 1000,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        version = paho.MQTTv5 if protocol == 5 else paho.MQTTv311
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version
        )
        self._client.max_inflight_messages_set(max_inflight)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.max_queued_messages_set(0)
        self._host, self._port = host, port
        self._connected = threading.Event()
        self._client.on_connect = self._on_connect

    def _on_connect(
        self, client: object, userdata: object, flags: object, rc: object, *a: object
    ) -> None:
        if not getattr(rc, "is_failure", False):
            self._connected.set()

    def connect(self, timeout: float = 10.0) -> None:
        self._client.connect(self._host, self._port, keepalive=60)
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise PublishError(f"publisher did not connect to {self._host}:{self._port}")

    def publish_many(
        self, messages: Iterable[tuple[str, bytes]], qos: int = 1, timeout: float = 60.0
    ) -> int:
        """Publish in order; return the count once every PUBACK (QoS 1/2) has arrived."""
        deadline = time.monotonic() + timeout
        infos: list[paho.MQTTMessageInfo] = []
        for topic, payload in messages:
            info = self._client.publish(topic, payload, qos=qos)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise PublishError(f"publish to {topic!r} failed: rc={info.rc}")
            infos.append(info)
            if time.monotonic() > deadline:
                raise PublishError(f"published only {len(infos)} messages in {timeout} s")
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                missing = sum(not i.is_published() for i in infos)
                raise PublishError(f"{missing} of {len(infos)} PUBACKs missing after {timeout} s")
        return len(infos)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Publisher:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def publish(
    host: str,
    port: int,
    messages: Iterable[tuple[str, bytes]],
    *,
    qos: int = 1,
    protocol: int = 5,
    timeout: float = 60.0,
) -> int:
    """Connect, publish every (topic, payload) in order, wait for all PUBACKs, disconnect."""
    with Publisher(host, port, protocol=protocol) as publisher:
        return publisher.publish_many(messages, qos=qos, timeout=timeout)
