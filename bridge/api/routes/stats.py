"""`/stats`: per-rule counts and rates, and the memory budget, as JSON for the console.

What /metrics says in Prometheus text, reduced to what an operator watches, with the rates
computed here (bridge/api/stats.py) so a page never parses the exposition format. Needs the
token when one is set (`create_app` adds the check): it names the rules.
"""

from fastapi import APIRouter, Request

from bridge.api.deps import BridgeDep
from bridge.api.models import Stats
from bridge.api.stats import RateWindow, stats

router = APIRouter(tags=["console"])


@router.get("/stats", summary="Rule counts and rates, buffer use", response_model=Stats)
async def get_stats(bridge: BridgeDep, request: Request) -> Stats:
    """Every rule's messages matched, records stored and records dead-lettered since start,
    with rates per second over about the last ten seconds (null on the first call), and the
    memory budget. Readiness, and the disk buffer with `--buffer disk`, are on /ready."""
    window: RateWindow = request.app.state.rates
    totals = bridge.metrics.totals()
    return stats(list(bridge.rules), totals, window.observe(totals))
