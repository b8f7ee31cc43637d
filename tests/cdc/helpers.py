"""Shared by the CDC end-to-end tests: a source body, and reading back what a source stored."""

from typing import Any

import httpx

from bridge.hstream.records import ReceivedRecord
from tests.support.bridge import read_stream, wait_until


def source_body(
    source_id: str, kind: str, dsn: str, tables: list[str], **extra: Any
) -> dict[str, Any]:
    return {
        "id": source_id,
        "kind": kind,
        "dsn": dsn,
        "tables": tables,
        "stream": "cdc_${source}_${table}",
        **extra,
    }


def stream_of(source_id: str, table: str) -> str:
    return f"cdc_{source_id}_{table}"


def changes(records: list[ReceivedRecord]) -> list[dict[str, Any]]:
    out = []
    for record in records:
        assert isinstance(record.payload, dict), record
        out.append(record.payload)
    return out


async def wait_changes(
    store_url: str, stream: str, count: int, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """The stream's change records once it holds at least `count`."""
    found: list[ReceivedRecord] = []

    async def enough() -> bool:
        nonlocal found
        found = await read_stream(store_url, stream)
        return len(found) >= count

    await wait_until(enough, timeout, f"{count} records in {stream}")
    return changes(found)


async def wait_state(
    api_url: str, source_id: str, state: str, timeout: float = 30.0, **headers: str
) -> dict[str, Any]:
    """The source's status once its state is `state`."""
    status: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=api_url, timeout=5.0, headers=headers) as http:

        async def reached() -> bool:
            nonlocal status
            try:
                response = await http.get(f"/sources/{source_id}")
            except httpx.HTTPError:
                return False
            if response.status_code != 200:
                return False
            status = response.json()["status"]
            return bool(status["state"] == state)

        await wait_until(reached, timeout, f"source {source_id} to be {state} ({status})")
    return status


def first_seen(values: list[int]) -> list[int]:
    """`values` without repeats, each kept where it first appeared (replays removed)."""
    seen: set[int] = set()
    out = []
    for value in values:
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out
