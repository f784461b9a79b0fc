"""`specsteer/2` on the service (server/sessions.py): rounds in flight, served in order.

The device names its session and numbers its rounds; the first rounds carry the opening. These
tests send raw requests, concurrently and out of order, and check what the service promises:
rounds are served by number whatever order they arrive in, a retried number gets its first
answer again, a speculative round after a rejection is void (and changes nothing), the
opening is checked (vocabulary, one prompt form), and `specsteer/1` still answers.
"""

from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest

from langchain_specsteer.protocol import (
    OpenSessionV2,
    PublicPrompt,
    RoundRequestV2,
    RoundResultV2,
    ServiceLimits,
)
from langchain_specsteer.server import VerifierService, create_app
from langchain_specsteer.testing import BackgroundServer


@pytest.fixture(scope="module")
def served(specialist, generalist):
    """A service on the tiny pair (the specialist as its public copy), short waits."""
    limits = ServiceLimits(max_rounds_in_flight=4, round_wait_seconds=1.0)
    service = VerifierService(generalist, specialist, limits=limits)
    with BackgroundServer(create_app(service)) as server:
        yield server.url, service


def opening(service, **fields) -> OpenSessionV2:
    prompt = service.generalist.tokenizer.encode("Write a short review of a kitchen blender.")
    fields.setdefault("prompt_ids", prompt)
    fields.setdefault("q_gen_prompt_ids", prompt)
    return OpenSessionV2(vocab_signature=service.generalist.vocab_signature, **fields)


def post(url, sid, request: RoundRequestV2) -> httpx.Response:
    return httpx.post(f"{url}/specsteer/v2/sessions/{sid}/rounds", json=request.model_dump())


async def apost(client, sid, request):
    return await client.post(f"/specsteer/v2/sessions/{sid}/rounds", json=request.model_dump())


def test_rounds_arriving_out_of_order_are_served_by_number(served):
    """Round 1 (sent ahead, after round 0's draft and a guess) reaches the service first: it
    waits for round 0, and both answers equal those of the same rounds sent one at a time."""
    url, service = served
    open_ = opening(service)
    first = RoundRequestV2(seq=0, open=open_, position=0, draft=[5, 9], rule="ratio", gamma=0.0)
    ahead = RoundRequestV2(
        seq=1, open=open_, speculative=True, position=2, append=[7], draft=[3], gamma=0.0
    )
    sid = secrets.token_urlsafe(16)

    async def both():
        async with httpx.AsyncClient(base_url=url) as client:
            later = asyncio.ensure_future(apost(client, sid, ahead))
            await asyncio.sleep(0.2)  # round 1 is waiting for round 0 by now
            assert not later.done()
            earlier = await apost(client, sid, first)
            return earlier, await later

    earlier, later = asyncio.run(both())
    assert earlier.status_code == later.status_code == 200
    one_at_a_time = secrets.token_urlsafe(16)
    expected = [post(url, one_at_a_time, r).json() for r in (first, ahead)]
    answers = [earlier.json(), later.json()]
    for answer in [*answers, *expected]:  # the service's time on each round, then the rest
        assert answer.pop("verify_seconds") > 0
    assert answers == expected
    assert later.json()["length"] == 2 + 1 + 1 and not later.json()["voided"]


def test_a_retried_round_gets_its_first_answer(served):
    url, service = served
    sid = secrets.token_urlsafe(16)
    request = RoundRequestV2(seq=0, open=opening(service), position=0, draft=[5, 9], gamma=0.5)
    once, again = post(url, sid, request), post(url, sid, request)
    assert once.status_code == again.status_code == 200 and once.json() == again.json()
    late = RoundRequestV2(seq=1, position=2, append=[4], draft=[6], gamma=0.5)
    assert post(url, sid, late).status_code == 200
    assert post(url, sid, request).json() == once.json()  # still remembered


def test_a_speculative_round_after_a_rejection_is_void_and_changes_nothing(served):
    """γ = ∞ rejects round 0's draft: round 1, sent on its acceptance, is void at no cost;
    round 2 (sent after the device's recovery, not speculative) is served on round 0's
    state."""
    url, service = served
    sid = secrets.token_urlsafe(16)
    strict = RoundRequestV2(seq=0, open=opening(service), position=0, draft=[5, 9], gamma=None)
    assert post(url, sid, strict).json()["accepted"] == 0
    ahead = RoundRequestV2(seq=1, speculative=True, position=2, append=[7], draft=[3], gamma=0.5)
    void = RoundResultV2.model_validate(post(url, sid, ahead).json())
    assert void.voided and void.hints == [] and void.accepted is None
    assert void.verify_seconds is None  # no work
    chained = RoundRequestV2(seq=2, speculative=True, position=4, append=[8], draft=[2])
    assert post(url, sid, chained).json()["voided"]  # after a void round: void too
    recovered = RoundRequestV2(seq=3, position=0, append=[11], draft=[4, 4], gamma=0.5)
    answer = post(url, sid, recovered).json()
    assert not answer["voided"] and answer["length"] == 3
    fresh = secrets.token_urlsafe(16)
    same = RoundRequestV2(seq=0, open=opening(service), position=0, append=[11], draft=[4, 4])
    alone = post(url, fresh, same).json()  # the same tokens, in a session of their own
    assert alone["accepted"] == answer["accepted"]
    for mine, theirs in zip(answer["hints"], alone["hints"], strict=True):
        assert mine["token_ids"][:5] == theirs["token_ids"][:5]
        assert mine["log_p_G"] == pytest.approx(theirs["log_p_G"], abs=1e-4)


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"vocab_signature": "0" * 32}, 409, "another generalist vocabulary"),
        ({"prompt_ids": None}, 400, "exactly one of prompt_ids and public_prompt"),
        ({"public_prompt": PublicPrompt(prompt="hi")}, 400, "exactly one of"),
        ({"prompt_ids": [10**6]}, 400, "outside the vocabulary"),
    ],
)
def test_a_bad_opening_is_refused_with_its_reason(served, change, status, words):
    url, service = served
    open_ = opening(service).model_copy(update=change)
    response = post(url, secrets.token_urlsafe(16), RoundRequestV2(seq=0, open=open_, position=0))
    assert response.status_code == status and words in response.json()["error"]["message"]


def test_a_prompt_in_the_opening_is_rendered_as_tokenize_renders_it(served):
    url, service = served
    text = "Write a short review of a kitchen blender."  # (the tiny pair has no chat template)
    tokenized = httpx.post(f"{url}/tokenize", json={"prompt": text}).json()["tokens"]
    prompt = PublicPrompt(prompt=text, then_ids=[7])
    open_ = opening(service, prompt_ids=None, public_prompt=prompt)
    sid = secrets.token_urlsafe(16)
    answer = post(url, sid, RoundRequestV2(seq=0, open=open_, position=0, draft=[5])).json()
    assert answer["prompt_tokens"] == len(tokenized) + 1
    by_ids = opening(service, prompt_ids=[*tokenized, 7])
    again = post(
        url, secrets.token_urlsafe(16), RoundRequestV2(seq=0, open=by_ids, position=0, draft=[5])
    )
    assert again.json()["hints"] == answer["hints"]


def test_a_round_whose_predecessor_never_comes_is_refused_in_time(served):
    url, service = served
    sid = secrets.token_urlsafe(16)
    response = post(url, sid, RoundRequestV2(seq=3, open=opening(service), position=0, draft=[5]))
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "out_of_order"
    assert "round 0" in response.json()["error"]["message"]


def test_unknown_sessions_and_bad_names(served):
    url, service = served
    lost = post(url, secrets.token_urlsafe(16), RoundRequestV2(seq=4, position=2, draft=[5]))
    assert lost.status_code == 404 and "opening" in lost.json()["error"]["message"]
    bad = post(url, "short", RoundRequestV2(seq=0, open=opening(service), position=0))
    assert bad.status_code == 400
    info = httpx.get(f"{url}/specsteer/v2/info").json()
    assert info["protocol"] == "specsteer/2" and info["max_rounds_in_flight"] == 4
    assert httpx.get(f"{url}/specsteer/v1/info").json()["protocol"] == "specsteer/1"


def test_closing_a_session_ends_the_rounds_waiting_in_it(served):
    url, service = served
    sid = secrets.token_urlsafe(16)
    assert post(url, sid, RoundRequestV2(seq=0, open=opening(service), position=0)).is_success

    async def close_while_waiting():
        async with httpx.AsyncClient(base_url=url) as client:
            waiting = asyncio.ensure_future(
                apost(client, sid, RoundRequestV2(seq=2, position=0, draft=[5]))
            )
            await asyncio.sleep(0.2)
            closed = await client.delete(f"/specsteer/v2/sessions/{sid}")
            return closed, await waiting

    closed, waiting = asyncio.run(close_while_waiting())
    assert closed.status_code == 204
    assert waiting.status_code == 404 and "closed" in waiting.json()["error"]["message"]
