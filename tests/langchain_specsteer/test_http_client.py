"""The clients' HTTP driver: its retry policy, run by the blocking and the async driver, and
the transport hook (here a mock server in place of the network)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from langchain_specsteer.protocol import SESSION_BUSY, ServiceError
from langchain_specsteer.remote.http import HTTPClient, refused
from langchain_specsteer.verification import GeneralistError, GeneralistUnreachable


def mocked(answers: list[tuple[int, dict]], **options) -> tuple[HTTPClient, list[str]]:
    """A client whose requests get `answers` in turn (status, JSON body); and the paths sent."""
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        status, body = answers[min(len(sent), len(answers)) - 1]
        return httpx.Response(status, json=body)

    settings = {"timeout": 5.0, "max_retries": 3, "backoff_s": 0.0, **options}
    client = HTTPClient(
        "http://service.test",
        None,
        wrap_transport=lambda _: httpx.MockTransport(handle),
        **settings,
    )
    return client, sent


BUSY = (409, ServiceError(409, "one at a time", type=SESSION_BUSY).body())
CONFLICT = (409, ServiceError(409, "position 9 is past the 0 tokens", param="position").body())
OK = (200, {"done": True})


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_busy_session_is_retried_and_another_conflict_is_not(api):
    def perform(client, steps):
        return client.run(steps) if api == "sync" else asyncio.run(client.arun(steps))

    client, sent = mocked([BUSY, BUSY, OK])
    response = perform(client, client.exchange("POST", "/rounds", {"draft": [1]}))
    assert response.status_code == 200 and response.json() == {"done": True}
    assert (len(sent), client.stats.requests, client.stats.retries) == (3, 3, 2)

    client, sent = mocked([CONFLICT, OK])
    response = perform(client, client.exchange("POST", "/rounds", {"draft": [1]}))
    assert response.status_code == 409 and len(sent) == 1 and client.stats.retries == 0


def test_retries_run_out_with_the_services_reason():
    """Retries run out: the server never answered (unreachable, it may later); a refusal it
    answered is another GeneralistError."""
    client, sent = mocked([BUSY], max_retries=2)
    with pytest.raises(GeneralistUnreachable, match=r"after 3 attempt\(s\): HTTP 409: one at"):
        client.run(client.exchange("GET", "/info"))
    assert len(sent) == 3
    client, _ = mocked([(401, ServiceError(401, "wrong API key").body())])
    error = refused(client.run(client.exchange("GET", "/info")), "info")
    assert isinstance(error, GeneralistError) and not isinstance(error, GeneralistUnreachable)


def test_the_transport_hook_must_be_callable():
    with pytest.raises(ValueError, match="wrap_transport must be callable"):
        HTTPClient(
            "http://service.test", None, timeout=1, max_retries=0, backoff_s=0, wrap_transport=3
        )


def test_busy_seconds_count_overlapping_requests_once():
    """`seconds` sums each request's time; `busy_seconds` is the wall time with one or more
    open, what a bench compares with the generation's time when rounds are in flight."""
    from langchain_specsteer.remote.http import TransportStats

    stats = TransportStats()
    stats.opened(0.0)
    stats.opened(1.0)
    stats.closed(0.0, 3.0)
    stats.closed(1.0, 4.0)
    stats.opened(6.0)
    stats.closed(6.0, 7.0)
    assert (stats.seconds, stats.busy_seconds) == (7.0, 5.0)
    stats.reset()
    assert (stats.seconds, stats.busy_seconds) == (0.0, 0.0)
