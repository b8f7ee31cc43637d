"""Rules over HTTP against a real Bridge: real Mosquitto, embedded store, uvicorn in-process.

Proves what DESIGN.md promises for rule changes: they take effect at once without a restart,
messages already in flight are not lost across a change, a deleted rule stops routing, and
rules made over HTTP persist in the data dir.
"""

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.api import BridgeApi
from bridge.service import Bridge
from tests.support.bridge import bridge_settings, read_stream, running_bridge, wait_for_records
from tests.support.mosquitto import Mosquitto, Publisher, publish

PUBLISH_LIMIT = 5000  # messages the background publisher sends at most
PUBLISH_SECONDS = 20.0  # and for at most this long
PUBLISH_BATCH = 25  # messages in flight at once (published, not yet acknowledged)


def rule(rule_id: str, topic: str, stream: str, **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "topic": topic, "stream": stream, **extra}


async def http(bridge: Bridge) -> httpx.AsyncClient:
    assert bridge.api_url is not None
    return httpx.AsyncClient(base_url=bridge.api_url, timeout=10.0)


def seqs(records: list[Any]) -> list[int]:
    return [int(record.payload) for record in records]


class BackgroundPublisher:
    """Publishes to `topic` payloads 0, 1, 2, ... in order (QoS 1) until stopped.

    PUBLISH_BATCH messages go out at once, then it waits for their PUBACKs, so a rule change
    always meets messages in flight. Bounded: at most PUBLISH_LIMIT messages and
    PUBLISH_SECONDS. `sent` counts the messages acknowledged so far.
    """

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> int:
        deadline = time.monotonic() + PUBLISH_SECONDS
        with Publisher(self.broker.host, self.broker.port) as publisher:
            while not self.stop.is_set() and self.sent < PUBLISH_LIMIT:
                if time.monotonic() > deadline:
                    break
                batch = range(self.sent, self.sent + PUBLISH_BATCH)
                publisher.publish_many([(self.topic, str(n).encode()) for n in batch])
                self.sent += PUBLISH_BATCH
        return self.sent


@pytest.fixture
async def live(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[tuple[Bridge, str]]:
    settings = bridge_settings(tmp_path, mosquitto.url)
    async with running_bridge(settings) as running:
        assert running.store is not None
        yield running, running.store.url


def api_members() -> list[str]:
    """The names BridgeApi declares: its methods and properties."""
    return sorted(
        name
        for name, value in vars(BridgeApi).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    )


async def test_the_service_bridge_satisfies_the_api_protocol(live: tuple[Bridge, str]) -> None:
    running, _ = live
    api: BridgeApi = running  # mypy proves the structural match statically; this checks it live
    assert api_members() == [
        "cluster",
        "config_version",
        "create_rule",
        "create_source",
        "dead_letters",
        "delete_rule",
        "delete_source",
        "dry_run",
        "get_rule",
        "get_source",
        "metrics",
        "readiness",
        "replace_rule",
        "replace_source",
        "resnapshot_source",
        "rules",
        "settings",
        "source_status",
        "sources",
    ]
    for name in api_members():
        declared = vars(BridgeApi)[name]
        assert hasattr(api, name), f"Bridge has no {name}"
        if isinstance(declared, property):
            continue
        actual = getattr(api, name)
        assert inspect.iscoroutinefunction(actual) == inspect.iscoroutinefunction(declared), name
        wanted = list(inspect.signature(declared).parameters.values())[1:]  # without self
        got = list(inspect.signature(actual).parameters.values())
        assert [(p.name, p.kind, p.default) for p in got] == [
            (p.name, p.kind, p.default) for p in wanted
        ], name
    # What the routes read from the properties is there on a running bridge.
    assert isinstance(api.settings.api_listen, str)
    assert [rule.id for rule in api.rules] == []
    body, content_type = api.metrics.render()
    assert b"hstream_bridge_" in body
    assert content_type.startswith("text/plain")


async def test_a_new_rule_routes_within_a_second(
    live: tuple[Bridge, str], mosquitto: Mosquitto
) -> None:
    running, store_url = live
    async with await http(running) as client:
        created = await client.post("/rules", json=rule("fresh", "fresh/{dev}", "fresh"))
        assert created.status_code == 201
        started = time.monotonic()
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, [("fresh/d1", b"0")])
        records = await wait_for_records(store_url, "fresh", 1, timeout=10.0)
        elapsed = time.monotonic() - started
    assert seqs(records) == [0]
    assert records[0].attributes["mqtt.topic"] == "fresh/d1"
    assert elapsed < 1.0, f"stored {elapsed:.2f} s after the rule was created"


async def test_an_updated_rule_routes_to_its_new_stream_and_loses_nothing_in_flight(
    live: tuple[Bridge, str], mosquitto: Mosquitto
) -> None:
    running, store_url = live
    async with await http(running) as client:
        assert (
            await client.post("/rules", json=rule("r", "live/{dev}/t", "old"))
        ).status_code == 201
        publisher = BackgroundPublisher(mosquitto, "live/dev/t")
        publishing = asyncio.create_task(asyncio.to_thread(publisher.run))
        await wait_for_records(store_url, "old", 4 * PUBLISH_BATCH, timeout=20.0)

        replaced = await client.put("/rules/r", json={"topic": "live/{dev}/t", "stream": "new"})
        assert replaced.status_code == 200
        changed_at = publisher.sent  # everything from here on was published after the change
        await wait_for_records(store_url, "new", 4 * PUBLISH_BATCH, timeout=20.0)
        publisher.stop.set()
        total = await publishing

    old = seqs(await read_stream(store_url, "old"))
    new = seqs(await wait_for_records(store_url, "new", total - len(old), timeout=20.0))
    # Nothing lost, nothing doubled: every published message is in exactly one of the streams.
    assert sorted(old + new) == list(range(total))
    # The switch is clean: an old-stream prefix, then the new stream, in publish order.
    assert old == list(range(len(old)))
    assert new == list(range(len(old), total))
    assert len(old) <= changed_at + PUBLISH_BATCH


async def test_a_deleted_rule_stops_routing_and_keeps_what_it_stored(
    live: tuple[Bridge, str], mosquitto: Mosquitto
) -> None:
    running, store_url = live
    async with await http(running) as client:
        for body in (rule("gone", "gone/{dev}", "gone"), rule("marker", "marker", "marker")):
            assert (await client.post("/rules", json=body)).status_code == 201
        await asyncio.to_thread(
            publish,
            mosquitto.host,
            mosquitto.port,
            [("gone/d", str(n).encode()) for n in range(20)],
        )
        assert seqs(await wait_for_records(store_url, "gone", 20)) == list(range(20))

        assert (await client.delete("/rules/gone")).status_code == 204
        assert (await client.get("/rules/gone")).status_code == 404
        # Published after the delete, then a marker on a rule that still exists: once the
        # marker is stored, the bridge has seen (or never been sent) everything before it.
        after = [("gone/d", b"99")] * 10 + [("marker", b"0")]
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, after)
        await wait_for_records(store_url, "marker", 1)
    assert seqs(await read_stream(store_url, "gone")) == list(range(20))
    assert await read_stream(store_url, running.settings.dead_letter_stream) == []


async def test_conflicts_and_unknown_ids_are_409_and_404_from_the_real_bridge(
    live: tuple[Bridge, str],
) -> None:
    running, _ = live
    original = rule("dup", "d/#", "d")
    async with await http(running) as client:
        assert (await client.post("/rules", json=original)).status_code == 201

        duplicate = await client.post("/rules", json=rule("dup", "other/#", "other"))
        assert duplicate.status_code == 409, duplicate.text
        assert duplicate.json() == {"detail": "rule 'dup' already exists"}
        for response in (
            await client.put("/rules/none", json=rule("none", "d/#", "d")),
            await client.delete("/rules/none"),
            await client.get("/rules/none"),
        ):
            assert response.status_code == 404, (response.request.method, response.text)
            assert response.json() == {"detail": "no rule 'none'"}

        # The refused changes changed nothing: the first rule stands, served and on disk.
        served = (await client.get("/rules")).json()
    assert [(r["id"], r["topic"], r["stream"]) for r in served] == [("dup", "d/#", "d")]
    assert [r.id for r in running.rules] == ["dup"]
    assert running.source is not None
    assert set(running.source.subscriptions) == {"d/#"}


async def test_a_rules_cache_that_cannot_be_written_does_not_stop_a_change(
    live: tuple[Bridge, str], mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The config stream holds the rules; the local file is a cache. A cache that cannot be
    written is logged, and the rule applies (it was left out, silently, after a 201)."""
    running, store_url = live
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    running.rules_file.path = blocker / "rules.toml"  # NotADirectoryError on every save
    async with await http(running) as client:
        created = await client.post("/rules", json=rule("cached", "cached/{dev}", "cached"))
        assert created.status_code == 201, created.text
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, [("cached/d", b"0")])
        records = await wait_for_records(store_url, "cached", 1, timeout=10.0)
    assert seqs(records) == [0]
    assert "the rules cache file" in caplog.text


async def test_a_change_this_replica_fails_to_apply_is_500_not_204(
    live: tuple[Bridge, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version stands in the config stream, but this replica's answer must not say the
    change is in effect here when applying it failed (a DELETE of a source answered 204 while
    the source ran on)."""
    running, _ = live
    assert running.cdc is not None

    async def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the runner would not stop")

    monkeypatch.setattr(running.cdc, "apply", fail)
    body = {
        "id": "shop",
        "kind": "postgres",
        "dsn": "postgresql://cdc@127.0.0.1:1/shop",
        "tables": ["public.orders"],
        "enabled": False,
    }
    async with await http(running) as client:
        before = running.config_version
        response = await client.post("/sources", json=body)
    assert response.status_code == 500, response.text
    detail = response.json()["detail"]
    assert f"configuration version {before + 1} is stored" in detail
    assert "RuntimeError: the runner would not stop" in detail
    assert running.config_version == before + 1


async def test_rules_made_over_http_survive_a_restart(mosquitto: Mosquitto, tmp_path: Path) -> None:
    settings = bridge_settings(tmp_path, mosquitto.url)
    async with running_bridge(settings) as first, await http(first) as client:
        for body in (
            rule("keep", "keep/{dev}", "kept_${dev}", key="${dev}", payload="json"),
            rule("change", "change/#", "before"),
            rule("drop", "drop/#", "dropped"),
        ):
            assert (await client.post("/rules", json=body)).status_code == 201
        assert (
            await client.put(
                "/rules/change", json={"topic": "change/#", "stream": "after", "qos": 0}
            )
        ).status_code == 200
        assert (await client.delete("/rules/drop")).status_code == 204
        before = (await client.get("/rules")).json()
    assert [r["id"] for r in before] == ["keep", "change"]

    async with running_bridge(settings) as second, await http(second) as client:
        assert second.store is not None
        assert (await client.get("/rules")).json() == before
        ready = await client.get("/ready")
        assert (ready.status_code, ready.json()["not_ready"]) == (200, [])
        await asyncio.to_thread(
            publish, mosquitto.host, mosquitto.port, [("keep/d7", b'{"t": 1}'), ("change/x", b"x")]
        )
        kept = await wait_for_records(second.store.url, "kept_d7", 1)
        assert kept[0].payload == {"t": 1.0}
        assert kept[0].key == "d7"
        assert (await wait_for_records(second.store.url, "after", 1))[0].payload == b"x"


async def test_concurrent_rule_changes_leave_a_whole_rules_file(live: tuple[Bridge, str]) -> None:
    from rules import RulesFile

    running, _ = live
    async with await http(running) as client:
        created = await asyncio.gather(
            *(
                client.post("/rules", json=rule(f"c{n}", f"conc/{n}/#", f"conc_{n}"))
                for n in range(30)
            )
        )
        assert [r.status_code for r in created] == [201] * 30
        changed = await asyncio.gather(
            *(client.delete(f"/rules/c{n}") for n in range(0, 30, 3)),
            *(
                client.put(f"/rules/c{n}", json=rule(f"c{n}", f"conc/{n}/#", f"moved_{n}"))
                for n in range(1, 30, 3)
            ),
        )
        assert {r.status_code for r in changed} == {200, 204}
        served = (await client.get("/rules")).json()
    on_disk = RulesFile(running.data_dir / "rules.json").load()
    assert [r.model_dump() for r in on_disk] == served
    assert sorted(r["id"] for r in served) == sorted(f"c{n}" for n in range(30) if n % 3)
    assert all(r["stream"] == f"moved_{r['id'][1:]}" for r in served if int(r["id"][1:]) % 3 == 1)
    assert running.source is not None
    assert set(running.source.subscriptions) == {f"conc/{n}/#" for n in range(30) if n % 3}
