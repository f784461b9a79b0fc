"""Fuzzing the service's OpenAPI schema (schemathesis): no input may get a 5xx.

Valid and invalid bodies, paths and parameters are generated for every operation and sent
over loopback HTTP to the `verifier` fixture. The number of cases per operation is printed
at the end (`pytest -s`) and checked against a floor, so a silently empty run fails.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation import GenerationMode

EXAMPLES = 30
CASES: Counter = Counter()


@pytest.fixture(scope="module")
def api_schema(verifier):
    schema = schemathesis.openapi.from_url(f"{verifier.url}/openapi.json")
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES
    )
    return schema


@pytest.fixture(scope="module", autouse=True)
def report_cases():
    yield
    total = sum(CASES.values())
    print(f"\nschemathesis: {total} cases, none answered 5xx")
    for (method, path), n in sorted(CASES.items()):
        print(f"  {n:4d}  {method} {path}")
    assert len(CASES) >= 8 and total >= 8 * 10, CASES


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error(case):
    response = case.call(timeout=30)
    CASES[(case.method, case.path)] += 1
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
