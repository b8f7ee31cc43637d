"""Rule changes through the config stream on a real bridge: refused whole while HStreamDB is
down, versioned with ETag and If-Match, and the local cache used to start without HStreamDB."""

from pathlib import Path

import httpx

from tests.support.bridge import bridge_settings, running_bridge
from tests.support.mosquitto import Mosquitto
from tests.support.store import subprocess_store

RULE = {"id": "temps", "topic": "t/{site}", "stream": "temps_${site}"}


async def test_a_change_while_hstreamdb_is_down_is_503_and_changes_nothing(
    tmp_path: Path, shared_mosquitto: Mosquitto
) -> None:
    async with subprocess_store(tmp_path / "store") as store:
        settings = bridge_settings(
            tmp_path / "bridge",
            shared_mosquitto.url,
            hstream_url=store.url,
            append_timeout=1.0,
            client_id=f"cfg-{tmp_path.name}",
        )
        async with (
            running_bridge(settings) as bridge,
            httpx.AsyncClient(base_url=bridge.api_url or "", timeout=30) as http,
        ):
            created = await http.post("/rules", json=RULE)
            assert created.status_code == 201, created.text
            assert created.headers["etag"] == '"1"'
            stale = await http.put(
                "/rules/temps", json={**RULE, "stream": "x"}, headers={"If-Match": '"0"'}
            )
            assert stale.status_code == 412, stale.text
            store.kill()
            refused = await http.post("/rules", json={**RULE, "id": "other"})
            assert refused.status_code == 503, refused.text
            assert [r["id"] for r in (await http.get("/rules")).json()] == ["temps"]
            await store.start()
            changed = await http.put(
                "/rules/temps", json={**RULE, "stream": "y"}, headers={"If-Match": '"1"'}
            )
            assert changed.status_code == 200, changed.text
            assert changed.headers["etag"] == '"2"'
        # HStreamDB down at start: the replica starts from its cache and serves the rules.
        store.kill()
        async with running_bridge(settings) as bridge:
            assert [(r.id, r.stream) for r in bridge.rules] == [("temps", "y")]
