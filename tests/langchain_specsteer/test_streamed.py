"""`method="generalist"` over the network: one streamed completion (streamed.py,
remote/stream.py), and the service's `/v1/completions` with `stream` (server/openai.py).

The oracle: greedy, the streamed text is the in-process generalist's, from one completion
request; a stream that breaks leaves its tokens committed and the specialist finishes after
them; a seeded sampled stream repeats itself.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch

from langchain_specsteer.server import create_app
from langchain_specsteer.testing import BackgroundServer
from tests.conftest import CONTEXT, PROMPTS


def generate(llm, api="sync", **params):
    if api == "async":
        result = asyncio.run(llm.agenerate([PROMPTS[0]], private_context=CONTEXT, **params))
    else:
        result = llm.generate([PROMPTS[0]], private_context=CONTEXT, **params)
    return result.generations[0][0].text, result.generations[0][0].generation_info


@pytest.mark.parametrize("client", ["session", "openai"])
@pytest.mark.parametrize("api", ["sync", "async", "stream"])
def test_the_generalist_alone_is_one_streamed_completion(
    make_llm, make_remote_llm, verifier, client, api
):
    expected, local_info = generate(make_llm(method="generalist", max_new_tokens=30))
    llm = make_remote_llm(client, method="generalist", max_new_tokens=30)
    verifier.requests.clear()
    if api == "stream":
        pieces = list(llm.stream(PROMPTS[0], private_context=CONTEXT))
        text, info = "".join(pieces), None
        assert len(pieces) > 1  # it streams as it decodes
    else:
        text, info = generate(llm, api)
    assert text == expected
    completions = [r for r in verifier.requests if r["path"] == "/v1/completions"]
    assert len(completions) == 1 and json.loads(completions[0]["body"])["stream"] is True
    assert not any(r["path"].endswith("/rounds") for r in verifier.requests)
    if info is not None:
        assert info["generalist_calls"] == 1 and not info["degraded"]
        assert info["new_tokens"] == local_info["new_tokens"]
        assert info["finish_reason"] == local_info["finish_reason"]


def test_a_seeded_sampled_stream_repeats_itself(make_remote_llm):
    llm = make_remote_llm("openai", method="generalist", max_new_tokens=20, temperature=0.9)
    first, _ = generate(llm, seed=5)
    assert generate(llm, seed=5)[0] == first
    assert generate(llm, seed=6)[0] != first


class CutStream:
    """ASGI wrapper that ends a streamed completion's response after `events` events."""

    def __init__(self, app, events: int):
        self.app, self.events = app, events

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/completions":
            return await self.app(scope, receive, send)
        sent = 0

        async def cutting(message):
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += message.get("body", b"").count(b"data:")
                if sent > self.events:
                    raise ConnectionResetError("the generalist went away mid-stream")
            await send(message)

        return await self.app(scope, receive, cutting)


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_broken_stream_keeps_its_tokens_and_the_specialist_finishes(
    make_llm, make_remote_llm, verifier, api
):
    full = make_llm(method="generalist", max_new_tokens=30)
    expected = [t for r in full.rounds(PROMPTS[0], private_context=CONTEXT) for t in r.tokens]
    with BackgroundServer(CutStream(create_app(verifier.service), events=6)) as server:
        llm = make_remote_llm(
            "openai",
            url=server.url,
            method="generalist",
            max_new_tokens=30,
            client_options={"max_retries": 0},
        )
        run = llm.rounds(PROMPTS[0], private_context=CONTEXT)

        async def drive():
            return [r async for r in run]

        rounds = list(run) if api == "sync" else asyncio.run(drive())
    ids = [t for r in rounds for t in r.tokens]
    assert run.stats.degraded and "streaming a completion" in run.stats.degraded_reason
    assert len(ids) == 30 and run.stats.new_tokens == 30
    streamed = 6
    assert ids[:streamed] == expected[:streamed]  # what the stream committed stays
    private = full.render_prompts(PROMPTS[0], CONTEXT).private
    rest = llm.specialist.model.generate(
        torch.tensor([private + ids[:streamed]]), do_sample=False, max_new_tokens=30 - streamed
    )[0, len(private) + streamed :].tolist()
    assert ids[streamed:] == rest  # ... and the specialist goes on after it


def test_the_service_streams_server_sent_events(verifier):
    prompt = verifier.service.generalist.tokenizer.encode(PROMPTS[0])
    body = {
        "prompt": prompt,
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
    }
    with httpx.stream("POST", f"{verifier.url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    tokens = [int(e["choices"][0]["logprobs"]["tokens"][0].split(":")[1]) for e in events]
    whole = httpx.post(f"{verifier.url}/v1/completions", json={**body, "stream": False}).json()
    assert len(tokens) == 5 and events[-1]["choices"][0]["finish_reason"] == "length"
    assert [int(t.split(":")[1]) for t in whole["choices"][0]["logprobs"]["tokens"]] == tokens
    assert "".join(e["choices"][0]["text"] for e in events) == whole["choices"][0]["text"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"n": 2}, "n must be 1"),
        ({"prompt": [[1, 2], [3]]}, "one at a time"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_k": 5}, "top_k"),
    ],
)
def test_a_stream_the_service_cannot_give_is_refused_before_it_starts(verifier, change, words):
    body = {"prompt": [1, 2, 3], "max_tokens": 4, "stream": True, **change}
    response = httpx.post(f"{verifier.url}/v1/completions", json=body)
    assert response.status_code == 400 and words in response.json()["error"]["message"]


def test_an_event_of_several_tokens_counts_a_round_a_token(make_llm, make_remote_llm, monkeypatch):
    """A busy server may send several tokens in one event (vLLM does): `rounds` still counts
    one a token, as the in-process generalist does."""
    from langchain_specsteer.remote import base
    from langchain_specsteer.remote.stream import Streamed

    real = base.stream_completion

    def paired(http, body):
        events = list(real(http, body))
        for i in range(0, len(events), 2):
            pair = events[i : i + 2]
            yield Streamed([t for e in pair for t in e.tokens], pair[-1].finish_reason)

    monkeypatch.setattr(base, "stream_completion", paired)
    expected, local_info = generate(make_llm(method="generalist", max_new_tokens=30))
    text, info = generate(make_remote_llm("session", method="generalist", max_new_tokens=30))
    assert text == expected
    assert info["rounds"] == info["new_tokens"] == local_info["rounds"] > 1
