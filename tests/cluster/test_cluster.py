"""Three bridge processes on loopback, one store: rules replicated through the config stream,
one winner for conflicting writes, membership over SWIM, and CDC sources failing over.

Every replica is a real `hstream-bridge run` process with --cluster-listen on its own UDP port;
they share one store process, one Mosquitto and (for the source) one throwaway PostgreSQL.
"""

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.cdc.databases import PostgresDatabase
from tests.cdc.helpers import changes, source_body, stream_of
from tests.support.bridge import BridgeProcess, read_stream, wait_until
from tests.support.mosquitto import Mosquitto
from tests.support.postgres import PostgresServer, postgres_server
from tests.support.store import StoreProcess, free_port, subprocess_store

__all__ = ["postgres_server"]

SECRET = "cluster-secret-for-tests-0123456789"
NAMES = ("a", "b", "c")


class Cluster:
    def __init__(self, tmp: Path, store: StoreProcess, broker: Mosquitto) -> None:
        self.tmp = tmp
        self.store = store
        self.broker = broker
        self.ports = {name: free_port() for name in NAMES}
        self.bridges: dict[str, BridgeProcess] = {}

    def args(self, name: str, secret: str = SECRET) -> list[str]:
        peers = ",".join(f"127.0.0.1:{p}" for n, p in self.ports.items() if n != name)
        return [
            "--hstream-url", self.store.url, "--mqtt-url", self.broker.url,
            "--client-id", f"replica-{name}", "--replica-id", name,
            "--cluster-listen", f"127.0.0.1:{self.ports[name]}", "--cluster-peers", peers,
            "--cluster-secret", secret,
            "--retry-backoff-min", "0.05", "--retry-backoff-max", "0.5",
        ]  # fmt: skip

    async def start(self, name: str, secret: str = SECRET) -> BridgeProcess:
        process = BridgeProcess(self.tmp / name, self.args(name, secret))
        await process.start()
        self.bridges[name] = process
        return process

    def stop_all(self) -> None:
        for process in self.bridges.values():
            if process.process is not None and process.process.poll() is None:
                process.kill()

    async def get(self, name: str, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.bridges[name].api_url, timeout=5) as http:
            return await http.get(path)

    async def members(self, name: str) -> dict[str, str]:
        body = (await self.get(name, "/cluster")).json()
        return {m["id"]: m["status"] for m in body["members"]}


@contextlib.asynccontextmanager
async def cluster(tmp: Path, broker: Mosquitto) -> AsyncIterator[Cluster]:
    async with subprocess_store(tmp / "store") as store:
        group = Cluster(tmp, store, broker)
        try:
            await asyncio.gather(*(group.start(name) for name in NAMES))
            for name in NAMES:

                async def sees_all(name: str = name) -> bool:
                    return set((await group.members(name)).values()) == {"alive"} and len(
                        await group.members(name)
                    ) == len(NAMES)

                await wait_until(sees_all, 15, f"{name} to see three alive members")
            yield group
        finally:
            group.stop_all()


RULE = {"id": "temps", "topic": "t/{site}", "stream": "temps_${site}"}


async def test_rules_replicate_conflicts_have_one_winner_and_survive_a_full_restart(
    tmp_path: Path, shared_mosquitto: Mosquitto
) -> None:
    async with cluster(tmp_path, shared_mosquitto) as group:
        a, b, c = (group.bridges[n] for n in NAMES)
        async with httpx.AsyncClient(timeout=10) as http:
            started = time.monotonic()
            created = await http.post(f"{a.api_url}/rules", json=RULE)
            assert created.status_code == 201, created.text
            version = int(created.headers["etag"].strip('"'))

            async def everywhere() -> bool:
                for replica in (b, c):
                    if (await http.get(f"{replica.api_url}/rules/temps")).status_code != 200:
                        return False
                return True

            await wait_until(everywhere, 2.0, "the rule on b and c")
            print(f"\nrule applied on b and c {time.monotonic() - started:.3f} s after the 201")
            # Two replicas change the same version at once: one 200, one 409 (or 412).
            changed = [{**RULE, "stream": "from_a"}, {**RULE, "stream": "from_b"}]
            headers = {"If-Match": f'"{version}"'}
            answers = await asyncio.gather(
                http.put(f"{a.api_url}/rules/temps", json=changed[0], headers=headers),
                http.put(f"{b.api_url}/rules/temps", json=changed[1], headers=headers),
            )
            codes = sorted(r.status_code for r in answers)
            assert codes[0] == 200, [r.text for r in answers]
            assert codes[1] in (409, 412), [r.text for r in answers]
            winner = next(r.json()["stream"] for r in answers if r.status_code == 200)

            async def agreed() -> bool:
                streams = [
                    (await http.get(f"{r.api_url}/rules/temps")).json()["stream"] for r in (a, b, c)
                ]
                return streams == [winner] * 3

            await wait_until(agreed, 5.0, "every replica on the winner")
        # All replicas restarted: the rules are kept.
        group.stop_all()
        await asyncio.gather(*(group.start(name) for name in NAMES))
        for name in NAMES:
            rule = (await group.get(name, "/rules/temps")).json()
            assert rule["stream"] == winner


async def test_a_killed_replica_is_dead_everywhere_within_5_s_and_garbage_is_ignored(
    tmp_path: Path, shared_mosquitto: Mosquitto
) -> None:
    async with cluster(tmp_path, shared_mosquitto) as group:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for payload in (b"\x00" * 10, b"{}", b'{"type":"ping"}', b"x" * 9000):
                udp.sendto(payload, ("127.0.0.1", group.ports["a"]))
        group.bridges["c"].kill()
        killed = time.monotonic()

        async def dead_on_a_and_b() -> bool:
            for name in ("a", "b"):
                if (await group.members(name)).get("c") != "dead":
                    return False
            return True

        await wait_until(dead_on_a_and_b, 8.0, "c to be dead on a and b")
        took = time.monotonic() - killed
        print(f"\nc dead on a and b {took:.2f} s after kill -9")
        assert took < 5.0
        assert (await group.get("a", "/health")).status_code == 200
        assert "membership dropped a packet" in group.bridges["a"].log_tail(400)


async def test_a_source_fails_over_with_no_lost_change_and_never_runs_twice(
    tmp_path: Path, shared_mosquitto: Mosquitto, postgres_server: PostgresServer
) -> None:
    database = PostgresDatabase(postgres_server)
    source_id, dsn, table = database.prepare(
        "CREATE TABLE items (id INT PRIMARY KEY, n INT NOT NULL)", "items"
    )
    async with cluster(tmp_path, shared_mosquitto) as group:
        # A fourth replica with another secret: a partition that sees none of the others.
        group.ports["d"] = free_port()
        stranger = await group.start("d", secret="another-secret-0123456789abcdef")
        async with httpx.AsyncClient(timeout=10) as http:
            body = source_body(source_id, "postgres", dsn, [table])
            created = await http.post(f"{group.bridges['a'].api_url}/sources", json=body)
            assert created.status_code == 201, created.text
            # d follows the same config stream, so it has the source too, and as the only
            # member it knows it proposes itself: the database lock keeps it on standby.

            async def runners() -> list[str]:
                found = []
                for name, bridge in group.bridges.items():
                    if bridge.process is None or bridge.process.poll() is not None:
                        continue
                    with contextlib.suppress(httpx.HTTPError):
                        status = (await http.get(f"{bridge.api_url}/sources/{source_id}")).json()
                        if status.get("status", {}).get("state") in ("snapshot", "streaming"):
                            found.append(name)
                return found

            async def one_runs() -> bool:
                return len(await runners()) == 1

            await wait_until(one_runs, 20.0, "one replica to run the source")
            seen: list[list[str]] = []
            database.execute_each(f"INSERT INTO items VALUES ({n}, {n})" for n in range(200))
            (holder,) = await runners()
            group.bridges[holder].kill()
            killed = time.monotonic()
            writer = asyncio.create_task(
                asyncio.to_thread(
                    database.execute_each,
                    (f"INSERT INTO items VALUES ({n}, {n})" for n in range(200, 400)),
                )
            )

            async def taken_over() -> bool:
                running = await runners()
                seen.append(running)
                return len(running) == 1

            await wait_until(taken_over, 20.0, "another replica to take the source")
            print(f"\nsource taken over {time.monotonic() - killed:.2f} s after kill -9")
            await writer

            async def all_rows() -> bool:
                found = changes(await read_stream(group.store.url, stream_of(source_id, "items")))
                return {c["after"]["id"] for c in found} == set(range(400))

            await wait_until(all_rows, 30.0, "every row stored")
            assert all(len(r) <= 1 for r in seen), seen
            assert stranger.process is not None
