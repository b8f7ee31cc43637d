"""Database changes through the whole bridge: HTTP API, reader, pipeline, embedded store, positions.

Each test runs against a throwaway PostgreSQL 15 and MariaDB 10.11 (tests/cdc/conftest.py) and
Mosquitto on free ports; the bridge runs in-process with its embedded store, so records are read
back over real gRPC.
"""

import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from bridge.cdc.config import Source
from bridge.config.secrets import Sealer
from bridge.settings import Settings
from tests.cdc.databases import Database
from tests.cdc.helpers import source_body, stream_of, wait_changes, wait_state
from tests.support.bridge import bridge_settings, read_stream, running_bridge, wait_until
from tests.support.mariadb import MariadbServer
from tests.support.mosquitto import Mosquitto

ORDERS = "CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(40), qty INT, price DECIMAL(8,2))"


def _orders(database: Database) -> tuple[str, str, str]:
    source_id, dsn, table = database.prepare(ORDERS, "orders")
    database.execute("INSERT INTO orders VALUES (1,'apple',1,1.50),(2,'pear',2,2.25)")
    return source_id, dsn, table


async def test_snapshot_then_changes_arrive_in_the_debezium_shape_and_resume_without_repeats(
    tmp_path: Path,
    database: Database,
    shared_mosquitto: Mosquitto,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    db, dsn, table = _orders(database)
    position = "lsn" if database.kind == "postgres" else "gtid"
    settings = bridge_settings(
        tmp_path, shared_mosquitto.url, client_id=f"cdc-{db}", cluster_secret="sixteen or more c"
    )
    body = source_body(db, database.kind, dsn, [table])
    stream = stream_of(db, "orders")
    async with running_bridge(settings) as bridge:
        assert bridge.api_url is not None
        store = bridge.store.url
        async with httpx.AsyncClient(base_url=bridge.api_url) as http:
            created = await http.post("/sources", json=body)
            assert created.status_code == 201, created.text
            assert "secret" not in created.text
        snapshot = await wait_changes(store, stream, 2)
        assert [(c["op"], c["after"]["id"]) for c in snapshot] == [("r", 1), ("r", 2)]
        # With --cluster-secret the password is sealed wherever the source is written: the
        # config stream (read by every replica, and by `hstream-bridge tail`) and the sources
        # file. The restart below opens it again (from the sources file and the stream).
        written = b"".join(
            r.payload if isinstance(r.payload, bytes) else json.dumps(r.payload).encode()
            for r in await read_stream(store, settings.config_stream)
        )
        written += (tmp_path / "sources.json").read_bytes()
        assert b"secret" not in written
        assert written.count(b'"dsn_password_sealed"') >= 2
        assert snapshot[0]["after"] == {"id": 1, "item": "apple", "qty": 1, "price": "1.50"}
        assert snapshot[0]["source"]["connector"] == {"postgres": "postgresql"}.get(
            database.kind, database.kind
        )
        assert snapshot[0]["source"]["snapshot"] is True
        await wait_state(bridge.api_url, db, "streaming")
        database.execute("UPDATE orders SET qty = 5 WHERE id = 1")
        database.execute("DELETE FROM orders WHERE id = 2")
        database.execute("INSERT INTO orders VALUES (3,'plum',3,0.99)")
        found = await wait_changes(store, stream, 5)
        assert [(c["op"]) for c in found[2:]] == ["u", "d", "c"]
        update, delete, insert = found[2:]
        if database.kind == "mysql":  # PostgreSQL sends no old row with REPLICA IDENTITY DEFAULT
            assert update["before"]["qty"] == 1
        assert update["after"]["qty"] == 5
        assert delete["before"]["id"] == 2
        assert delete["after"] is None
        assert insert["source"][position]
        assert insert["source"]["table"] == "orders"
        assert insert["source"]["db"] == db
        records = await read_stream(store, stream)
        assert records[-1].key == f"{table}/3"
        assert records[-1].attributes["cdc.op"] == "c"
        assert records[-1].attributes["cdc.table"] == table
        assert position in records[-1].attributes["cdc.position"]

        async def committed() -> bool:
            status = bridge.source_status(db)
            stored = status["committed_position"]
            return stored is not None and stored.get(position) == insert["source"][position]

        await wait_until(committed, 10.0, "the last position to be committed")
        async with httpx.AsyncClient(base_url=bridge.api_url) as http:
            metrics = (await http.get("/metrics")).text
        assert f'hstream_bridge_cdc_changes_total{{op="r",source="{db}"}} 2.0' in metrics
        assert f'hstream_bridge_cdc_changes_total{{op="c",source="{db}"}} 1.0' in metrics
        assert f'hstream_bridge_cdc_state{{source="{db}",state="streaming"}} 1.0' in metrics
    # Down for a while: changes made meanwhile come after a restart, committed ones do not repeat.
    database.execute("INSERT INTO orders VALUES (4,'fig',4,4.00)")
    async with running_bridge(settings) as bridge:
        assert [s.id for s in bridge.sources] == [db]
        store = bridge.store.url
        later = await wait_changes(store, stream, 6)
        database.execute("INSERT INTO orders VALUES (5,'kiwi',5,5.00)")
        later = await wait_changes(store, stream, 7)
        assert [(c["op"], (c["after"] or c["before"])["id"]) for c in later] == [
            ("r", 1),
            ("r", 2),
            ("u", 1),
            ("d", 2),
            ("c", 3),
            ("c", 4),
            ("c", 5),
        ]
    assert "secret" not in caplog.text  # the database password (tests/support: "secret")
    assert "source" in caplog.text


async def test_the_cluster_secret_changes_with_its_previous_one_and_the_source_runs_on(
    tmp_path: Path,
    database: Database,
    shared_mosquitto: Mosquitto,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The README's steps: restart with the new secret and the old one as previous (the
    password sealed under the old one opens, and the log asks for a change), make a change
    (everything is sealed again under the new one), restart with the new one alone."""
    db, dsn, table = _orders(database)
    old, new = "the old cluster secret", "the new cluster secret"
    stream = stream_of(db, "orders")

    def settings(**secrets: str) -> Settings:
        return bridge_settings(tmp_path, shared_mosquitto.url, client_id=f"cdc-{db}", **secrets)

    async with running_bridge(settings(cluster_secret=old)) as bridge:
        assert bridge.api_url is not None
        async with httpx.AsyncClient(base_url=bridge.api_url) as http:
            body = source_body(db, database.kind, dsn, [table])
            assert (await http.post("/sources", json=body)).status_code == 201
        await wait_state(bridge.api_url, db, "streaming")
        await wait_changes(bridge.store.url, stream, 2)
    async with running_bridge(settings(cluster_secret=new, cluster_secret_previous=old)) as bridge:
        assert bridge.api_url is not None
        await wait_state(bridge.api_url, db, "streaming")  # it logged in: the password opened
        assert "sealed under --cluster-secret-previous" in caplog.text
        async with httpx.AsyncClient(base_url=bridge.api_url) as http:
            current = (await http.get(f"/sources/{db}")).json()
            unchanged = {k: current[k] for k in ("id", "kind", "tables")} | {"dsn": dsn}
            assert (await http.put(f"/sources/{db}", json=unchanged)).status_code == 200
        records = await read_stream(bridge.store.url, bridge.settings.config_stream)
        latest = records[-1].payload
        document = latest if isinstance(latest, dict) else json.loads(latest)
        sealed = document["sources"][0]
        opened = Sealer.from_secret(new).open(sealed)  # under the new secret alone
        assert urlsplit(opened["dsn"]).password == urlsplit(dsn).password
    caplog.clear()
    async with running_bridge(settings(cluster_secret=new)) as bridge:
        assert bridge.api_url is not None
        await wait_state(bridge.api_url, db, "streaming")
        database.execute("INSERT INTO orders VALUES (3,'plum',3,0.99)")
        await wait_changes(bridge.store.url, stream, 3)
    assert "could not be opened" not in caplog.text
    assert "sealed under another" not in caplog.text


async def test_a_row_too_large_is_dead_lettered_and_the_source_goes_on(
    tmp_path: Path,
    database: Database,
    shared_mosquitto: Mosquitto,
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = "TEXT" if database.kind == "postgres" else "LONGTEXT"
    db, dsn, table = database.prepare(
        f"CREATE TABLE notes (id INT PRIMARY KEY, body {text})", "notes"
    )
    settings = bridge_settings(
        tmp_path,
        shared_mosquitto.url,
        client_id=f"cdc-{db}",
        max_record_bytes=64 * 1024,
        batch_max_bytes=64 * 1024,
        sources=[source_body(db, database.kind, dsn, [table])],
    )
    async with running_bridge(settings) as bridge:
        assert bridge.api_url is not None
        store = bridge.store.url
        await wait_state(bridge.api_url, db, "streaming")
        database.execute("INSERT INTO notes VALUES (1, REPEAT('x', 100000))")
        database.execute("INSERT INTO notes VALUES (2, 'small')")
        stored = await wait_changes(store, stream_of(db, "notes"), 1)
        assert stored[0]["after"] == {"id": 2, "body": "small"}
        letters = [
            r
            for r in await read_stream(store, settings.dead_letter_stream)
            if r.attributes.get("cdc.source") == db
        ]
        assert len(letters) == 1
        assert letters[0].attributes["reason"] == "record_too_large"
        assert letters[0].attributes["cdc.table"] == table
        assert letters[0].attributes["original_size"].isdigit()
    # No --cluster-secret: the password is stored as given, and the bridge says so.
    assert f"source {db}: its password is written as given" in caplog.text


async def test_binlog_off_is_a_status_naming_log_bin_and_the_bridge_stays_up(
    tmp_path: Path, shared_mosquitto: Mosquitto
) -> None:
    with MariadbServer(["--skip-log-bin"]) as server:
        db = server.new_database()
        server.make_cdc_user(db=db)
        server.execute(ORDERS, db)
        settings = bridge_settings(tmp_path, shared_mosquitto.url, client_id=f"cdc-{db}-off")
        async with running_bridge(settings) as bridge:
            assert bridge.api_url is not None
            await bridge.create_source(
                Source.model_validate(source_body(db, "mysql", server.dsn(db=db), [f"{db}.orders"]))
            )
            status = await wait_state(bridge.api_url, db, "error")
            assert status["setting"] == "log_bin"
            assert "log_bin" in status["last_error"]
            async with httpx.AsyncClient(base_url=bridge.api_url) as http:
                assert (await http.get("/health")).status_code == 200
