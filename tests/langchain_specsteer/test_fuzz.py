"""Fuzzing the service's OpenAPI schema (schemathesis): no input may get a 5xx.

Valid and invalid bodies, paths and parameters are generated from the schema for every
operation and sent over loopback HTTP to the `verifier` fixture; rounds go to a real session
half of the time, so generated drafts reach the models. Hypothesis runs derandomised, so CI
sees the same cases every time. The counts are printed (`pytest -s`) and checked, and so is
that some generated sessions and rounds were answered 2xx (the cases reached the models).
"""

from __future__ import annotations

from collections import Counter

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

EXAMPLES = 30


def fuzz(
    strategy, base_url: str, key: tuple, cases: Counter, ok: Counter, failures: list[str]
) -> None:
    """Send EXAMPLES generated cases; count them and their 2xx answers, and keep every 5xx."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def call(case):
        response = case.call(base_url=base_url, timeout=30)
        cases[key] += 1
        ok[key[:2]] += response.status_code < 300
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} {case.body!r:.200} -> "
                f"{response.status_code}: {response.text[:200]}"
            )

    try:
        call()
    except Unsatisfiable:  # nothing to generate, e.g. an invalid GET /health
        cases[key] += 0


def test_no_input_gets_a_server_error(verifier):
    schema = schemathesis.openapi.from_url(f"{verifier.url}/openapi.json")
    opened = httpx.post(f"{verifier.url}/specsteer/v1/sessions", json={"prompt_ids": [1, 2, 3]})
    session = opened.json()["session_id"]
    cases: Counter = Counter()
    ok: Counter = Counter()  # 2xx answers per (method, path)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        for mode in GenerationMode:
            targets = [None]
            if operation.path.endswith("/rounds"):
                targets.append({"session_id": session})  # a live session, not only 404s
            for path_parameters in targets:
                strategy = operation.as_strategy(mode, path_parameters=path_parameters)
                key = (operation.method.upper(), operation.path, mode.value)
                fuzz(strategy, verifier.url, key, cases, ok, failures)
    total = sum(cases.values())
    print(f"\nschemathesis: {total} cases, {len(failures)} answered 5xx")
    for (method, path, mode), n in sorted(cases.items()):
        print(f"  {n:4d}  {mode:8s} {method} {path}")
    assert not failures, failures[:5]
    assert total >= 8 * EXAMPLES
    # not only refusals: generated sessions opened, and generated drafts verified
    assert ok["POST", "/specsteer/v1/sessions"] > 0, ok
    assert ok["POST", "/specsteer/v1/sessions/{session_id}/rounds"] > 0, ok
