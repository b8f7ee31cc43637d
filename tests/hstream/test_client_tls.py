"""`hstreams://` end to end: the embedded store serves TLS (optionally mutual) and the client,
and the `streams` CLI command, talk to it over real gRPC on 127.0.0.1.

Certificates come from `TlsFiles` (openssl): a throwaway CA, a server certificate whose SANs are
IP:127.0.0.1 and DNS:localhost, and a client certificate. A second `TlsFiles` is the "wrong" CA.
Every failure case is bounded by `asyncio.timeout`: a TLS mistake must fail, never hang.
"""

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.hstream import HStreamClient, Record, errors
from bridge.hstream.store import EmbeddedStore
from tests.support.mosquitto import TlsFiles
from tests.support.store import REPO_ROOT

# A TLS failure is a refused handshake on 127.0.0.1: it takes milliseconds. The bound is wide
# for a loaded 2-core machine, and far below the client's 10 s call timeout.
FAIL_FAST = 5.0


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("tls")).generate()


@pytest.fixture(scope="module")
def other_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Another CA, with its own server and client certificates: trusted by nobody here."""
    return TlsFiles(tmp_path_factory.mktemp("other-tls")).generate()


@contextlib.asynccontextmanager
async def tls_store(
    data_dir: Path, tls: TlsFiles, *, mutual: bool = False, advertised_host: str | None = None
) -> AsyncIterator[EmbeddedStore]:
    store = EmbeddedStore(
        data_dir,
        "127.0.0.1:0",
        advertised_host,
        tls_cert_file=tls.server_cert,
        tls_key_file=tls.server_key,
        tls_client_ca_file=tls.ca_file if mutual else None,
    )
    async with store:
        yield store


async def _fails_fast(
    url: str,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> errors.HStreamError:
    """Connect and list streams; return the error, and check it came well before a timeout."""

    async def attempt() -> None:
        async with HStreamClient(
            url, ca_file=ca_file, cert_file=cert_file, key_file=key_file
        ) as client:
            await client.list_streams()

    started = time.monotonic()
    with pytest.raises(errors.HStreamError) as caught:
        await asyncio.wait_for(attempt(), FAIL_FAST * 2)
    assert time.monotonic() - started < FAIL_FAST
    return caught.value


# -- server TLS --------------------------------------------------------------------------


async def test_hstreams_with_the_ca_creates_appends_and_reads_back(
    tmp_path: Path, tls: TlsFiles
) -> None:
    async with tls_store(tmp_path / "store", tls) as store:
        assert store.tls
        assert store.url == f"hstreams://127.0.0.1:{store.port}"
        async with HStreamClient(store.url, ca_file=tls.ca_file) as client:
            # Lookups answer the advertised host; it is in the certificate, so routed appends
            # to it verify as well.
            assert [(n.host, n.port) for n in client.nodes] == [("127.0.0.1", store.port)]
            await client.create_stream("temps", shard_count=3)
            records = [Record(b"reading-%d" % i, key=f"site-{i % 6}") for i in range(30)]
            ids = await client.append("temps", records)
            assert len({rid.shard_id for rid in ids}) > 1  # several shards, several lookups
            async with client.read_stream("temps") as reader:
                stored = [record async for record in reader]
            assert {r.id: r.payload for r in stored} == {
                rid: record.payload for rid, record in zip(ids, records, strict=True)
            }

            await client.create_subscription("temps_sub", "temps", offset="earliest")
            async with client.subscribe("temps_sub", "worker") as consumer:
                received = 0
                async with asyncio.timeout(20):
                    while received < len(records):
                        batch = await anext(consumer)
                        await consumer.ack([r.id for r in batch])
                        received += len(batch)
            assert received == len(records)


async def test_lookups_answer_the_advertised_host_and_the_client_verifies_it(
    tmp_path: Path, tls: TlsFiles
) -> None:
    async with tls_store(tmp_path / "store", tls, advertised_host="localhost") as store:
        assert store.url == f"hstreams://localhost:{store.port}"
        # Dial the IP; the store sends the client on to "localhost" (DNS:localhost in the cert).
        url = f"hstreams://127.0.0.1:{store.port}"
        async with HStreamClient(url, ca_file=tls.ca_file) as client:
            assert [n.target for n in client.nodes] == [f"localhost:{store.port}"]
            await client.create_stream("temps")
            (rid,) = await client.append("temps", [Record(b"x")])
            async with client.read_stream("temps") as reader:
                assert [r.id async for r in reader] == [rid]


async def test_a_ca_that_did_not_sign_the_server_fails_fast_as_unavailable(
    tmp_path: Path, tls: TlsFiles, other_tls: TlsFiles
) -> None:
    async with tls_store(tmp_path / "store", tls) as store:
        error = await _fails_fast(store.url, ca_file=other_tls.ca_file)
        assert isinstance(error, errors.HStreamUnavailable)
        assert "handshake failed" in error.message.lower()
        assert "CERTIFICATE_VERIFY_FAILED" in error.message
        # No CA at all means the system's roots, which do not know the throwaway CA either.
        error = await _fails_fast(store.url)
        assert "CERTIFICATE_VERIFY_FAILED" in error.message


async def test_plaintext_and_tls_do_not_mix_and_fail_fast(tmp_path: Path, tls: TlsFiles) -> None:
    async with tls_store(tmp_path / "tls-store", tls) as store:
        error = await _fails_fast(f"hstream://{store.address}")
        assert isinstance(error, errors.HStreamUnavailable)
    async with EmbeddedStore(tmp_path / "plain-store") as plain:
        error = await _fails_fast(f"hstreams://{plain.address}", ca_file=tls.ca_file)
        assert isinstance(error, errors.HStreamUnavailable)
        assert "handshake failed" in error.message.lower()


# -- mutual TLS --------------------------------------------------------------------------


async def test_mutual_tls_serves_a_client_with_a_certificate_from_the_ca(
    tmp_path: Path, tls: TlsFiles
) -> None:
    async with tls_store(tmp_path / "store", tls, mutual=True) as store:
        client = HStreamClient(
            store.url, ca_file=tls.ca_file, cert_file=tls.client_cert, key_file=tls.client_key
        )
        async with client:
            await client.create_stream("temps")
            (rid,) = await client.append("temps", [Record({"temp": 21.5})])
            async with client.read_stream("temps") as reader:
                (stored,) = [r async for r in reader]
            assert (stored.id, stored.payload) == (rid, {"temp": 21.5})


async def test_mutual_tls_refuses_a_client_without_a_certificate_fast_as_unavailable(
    tmp_path: Path, tls: TlsFiles, other_tls: TlsFiles
) -> None:
    async with tls_store(tmp_path / "store", tls, mutual=True) as store:
        error = await _fails_fast(store.url, ca_file=tls.ca_file)
        # The store drops the connection after the handshake: the client only sees it closed.
        assert isinstance(error, errors.HStreamUnavailable)
        assert error.code is None
        # A certificate from a CA the store does not trust is refused the same way.
        error = await _fails_fast(
            store.url,
            ca_file=tls.ca_file,
            cert_file=other_tls.client_cert,
            key_file=other_tls.client_key,
        )
        assert isinstance(error, errors.HStreamUnavailable)


# -- configuration mistakes ----------------------------------------------------------------


def test_client_refuses_a_certificate_without_its_key_instead_of_aborting(
    tls: TlsFiles, tmp_path: Path
) -> None:
    # gRPC's C core aborts the process on the first connect with only one of the two.
    url = "hstreams://127.0.0.1:6570"
    with pytest.raises(ValueError, match="go together"):
        HStreamClient(url, ca_file=tls.ca_file, cert_file=tls.client_cert)
    with pytest.raises(ValueError, match="go together"):
        HStreamClient(url, ca_file=tls.ca_file, key_file=tls.client_key)
    with pytest.raises(ValueError, match="cannot read TLS file"):
        HStreamClient(url, ca_file=tmp_path / "missing.crt")


async def test_store_refuses_incomplete_or_non_pem_tls_files(tmp_path: Path, tls: TlsFiles) -> None:
    with pytest.raises(ValueError, match="both a server certificate and its key"):
        EmbeddedStore(tmp_path / "d", tls_cert_file=tls.server_cert)
    with pytest.raises(ValueError, match="client CA"):
        EmbeddedStore(tmp_path / "d", tls_client_ca_file=tls.ca_file)
    swapped = EmbeddedStore(tmp_path / "d", tls_cert_file=tls.server_key, tls_key_file=tls.ca_file)
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        await swapped.start()
    assert not (tmp_path / "d").exists()  # refused before the data dir was touched


# -- the store and the CLI as processes ------------------------------------------------------


@contextlib.asynccontextmanager
async def store_process(data_dir: Path, *tls_args: str) -> AsyncIterator[str]:
    """`python -m bridge.hstream.store` on port 0 with TLS; yields the URL it prints once ready."""
    log_path = data_dir.parent / "store.log"
    log = await asyncio.to_thread(open, log_path, "wb")
    with log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.hstream.store", "--listen", "127.0.0.1:0",
            "--data-dir", str(data_dir), "--log-level", "WARNING", *tls_args,
            cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=log,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        prefix = "hstream store listening on "
        assert line.startswith(prefix), f"store did not start:\n{log_path.read_text()[-3000:]}"
        yield line.removeprefix(prefix).strip()
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            async with asyncio.timeout(20):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args,
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_streams_cli_works_against_a_tls_store_process(tmp_path: Path, tls: TlsFiles) -> None:
    tls_args = ("--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key))
    async with store_process(tmp_path / "store", *tls_args) as url:
        assert url.startswith("hstreams://127.0.0.1:")
        connect = ("--hstream-url", url, "--hstream-ca-file", str(tls.ca_file))
        assert await _cli("streams", "create", "temps", "--shards", "2", *connect) == (
            0,
            "created stream temps (2 shards)\n",
            "",
        )
        code, out, err = await _cli("streams", "list", *connect)
        assert (code, err) == (0, "")
        assert out.splitlines()[1].split() == ["temps", "2", "1", "0"]


async def test_streams_cli_against_a_mutual_tls_store_process_needs_the_client_certificate(
    tmp_path: Path, tls: TlsFiles
) -> None:
    tls_args = (
        "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key),
        "--tls-client-ca", str(tls.ca_file),
    )  # fmt: skip
    async with store_process(tmp_path / "store", *tls_args) as url:
        connect = ("--hstream-url", url, "--hstream-ca-file", str(tls.ca_file))
        identity = (
            "--hstream-cert-file", str(tls.client_cert), "--hstream-key-file", str(tls.client_key)
        )  # fmt: skip
        code, out, err = await _cli("streams", "list", *connect, *identity)
        assert (code, out.split(), err) == (0, ["STREAM", "SHARDS", "REPLICATION", "BACKLOG_S"], "")

        code, out, err = await _cli("streams", "list", *connect)
        assert (code, out) == (1, "")
        # gRPC's C core may log the failed handshake to stderr too; ours is the last line.
        last = err.splitlines()[-1]
        assert last.startswith("error: ")
        assert "HStreamUnavailable" in last
