"""Property-based requests from the served /openapi.json: no 5xx, answers match the schema.

Schemathesis generates requests for every operation from the live schema, both valid ones
(positive) and ones that break it (negative), and sends them to a real uvicorn. Checks: no
server error, status codes, content types and JSON bodies as documented, and every
schema-invalid request refused with a 4xx. Bounded: a fixed number of examples per operation
and mode, no Hypothesis database, so the run takes seconds and does not depend on earlier runs.
"""

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from bridge.api import serve_api
from rules import Rule
from tests.api.conftest import TEMPS, TOKEN
from tests.api.memory_bridge import ApiTestSettings, MemoryBridge

EXAMPLES_PER_OPERATION = 60
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def fuzz(base_url: str, token: str | None) -> tuple[list[str], Counter[str]]:
    """Run every operation in both modes; the failures, described, and the statuses seen."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=10)
    failures: list[str] = []
    statuses: Counter[str] = Counter()
    with requests.Session() as session:
        session.hooks["response"].append(
            lambda response, *args, **kwargs: statuses.update([str(response.status_code)])
        )
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                checks = CHECKS + ([negative_data_rejection] if mode.is_negative else [])
                test = _property(
                    operation.as_strategy(generation_mode=mode), session, headers, checks, base_url
                )
                try:
                    test()
                except hypothesis.errors.Unsatisfiable:
                    # Nothing to break: no parameters, or only strings that accept anything.
                    assert mode.is_negative, operation.label
                except (Exception, FailureGroup) as exc:  # collect every failure, then report
                    if not _by_design(str(exc)):
                        failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return failures, statuses


# What a negative case may break without being refused, on purpose: unknown query parameters
# are ignored (as by most HTTP APIs), and the harness adds the token to every request, so a
# case meant to lack the Authorization header still carries it.
_ACCEPTED_VIOLATIONS = (
    "query: violates `additionalProperties`",
    "header: violates `required` (was Authorization)",
)


def _by_design(failure: str) -> bool:
    """A lone ST201 whose invalid components are all ones the API accepts by design."""
    if "ST201" not in failure or len(re.findall(r"- ST\d+", failure)) > 1:
        return False
    components = [
        line.strip().removeprefix("- ")
        for line in failure.split("Invalid component:", 1)[-1].splitlines()
        if line.strip().startswith("- ")
    ]
    return bool(components) and all(c in _ACCEPTED_VIOLATIONS for c in components)


def _property(
    strategy: hypothesis.strategies.SearchStrategy[schemathesis.Case[Any]],
    session: requests.Session,
    headers: dict[str, str],
    checks: list[Callable[..., bool | None]],
    base_url: str,
) -> Callable[[], None]:
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=strategy)
    def test(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(
            base_url=base_url, session=session, headers=headers, checks=checks, timeout=10
        )

    return test


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
async def test_no_generated_request_gets_a_server_error(token: str | None) -> None:
    bridge = MemoryBridge(ApiTestSettings(api_token=token), rules=[Rule.model_validate(TEMPS)])
    async with serve_api(bridge) as url:
        failures, statuses = await asyncio.to_thread(fuzz, url, token)
    assert not failures, "\n\n".join(failures)
    # Not vacuous: many requests went out, and both accepted and refused ones came back.
    assert statuses.total() >= 5 * EXAMPLES_PER_OPERATION, statuses
    assert statuses["200"], statuses
    assert statuses["422"], statuses
    assert not any(status.startswith("5") for status in statuses), statuses
