"""`GET /cluster`: the replicas this one knows (SWIM membership), each with its status, HTTP
address, the configuration version it applied, readiness, whether intake is paused, and the CDC
sources it runs."""

from typing import Any

from fastapi import APIRouter

from bridge.api.deps import BridgeDep

router = APIRouter(tags=["cluster"])


@router.get("/cluster", summary="The replicas and what each runs")
async def get_cluster(bridge: BridgeDep) -> dict[str, Any]:
    """`{"replica": "<this one>", "clustered": bool, "members": [{"id", "status" (alive,
    suspect, dead), "address" (gossip), "api", "version", "ready", "paused", "sources"}]}`.
    Without `--cluster-listen` only this replica is listed."""
    return dict(bridge.cluster())
