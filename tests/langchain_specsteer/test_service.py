"""The verifier service: its answers, its refusals (4xx with a reason) and its operations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from langchain_specsteer.protocol import MIN_TEMPERATURE, SESSION_BUSY
from langchain_specsteer.server import (
    Gate,
    OpenAICompatible,
    ServiceLimits,
    VerifierService,
    create_app,
    served_name,
)
from langchain_specsteer.testing import BackgroundServer
from tests.conftest import CONTEXT, PROMPTS

S = "/specsteer/v1"


@pytest.fixture
def http(verifier):
    with httpx.Client(base_url=verifier.url, timeout=30) as client:
        yield client


def open_session(http, prompt_ids=(1, 2, 3), **fields):
    response = http.post(f"{S}/sessions", json={"prompt_ids": list(prompt_ids), **fields})
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


def error(response, status, *words, param=None):
    """The response is `status` with OpenAI's error shape and a message holding `words`."""
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == status and body["type"]
    for word in words:
        assert word in body["message"], body["message"]
    if param is not None:
        assert body["param"] == param
    return body


def test_info_describes_the_models_and_limits(http, verifier, generalist, specialist):
    info = http.get(f"{S}/info").json()
    assert info["protocol"] == "specsteer/1"
    assert info["vocab_signature"] == generalist.vocab_signature
    assert info["public_specialist_vocab_signature"] == specialist.vocab_signature
    assert info["eos_token_ids"] == sorted(generalist.eos_token_ids)
    assert info["limits"]["max_top_m"] == verifier.vocab


def test_a_round_equals_the_models_log_probs(http, generalist, specialist):
    """The hint holds the top m by log p_G, with the public specialist's log q_gen."""
    prompt, draft = [5, 6, 7], [8, 9]
    sid = open_session(http, prompt, q_gen_prompt_ids=[5, 6], top_m=4)
    body = {"position": 0, "draft": draft, "rule": "device"}
    result = http.post(f"{S}/sessions/{sid}/rounds", json=body).json()
    with torch.inference_mode():
        p = torch.log_softmax(generalist.model(torch.tensor([prompt + draft])).logits[0], -1)
        q = torch.log_softmax(specialist.model(torch.tensor([[5, 6, *draft]])).logits[0], -1)
    assert result["accepted"] is None and len(result["hints"]) == 3
    for i, hint in enumerate(result["hints"]):
        row_p, row_q = p[len(prompt) - 1 + i], q[1 + i]
        assert hint["token_ids"] == torch.topk(row_p, 4).indices.tolist()
        torch.testing.assert_close(torch.tensor(hint["log_p_G"]), row_p[hint["token_ids"]])
        torch.testing.assert_close(torch.tensor(hint["log_q_gen"]), row_q[hint["token_ids"]])
    torch.testing.assert_close(
        torch.tensor(result["draft_log_p_G"]), p[[2, 3], draft], rtol=1e-5, atol=1e-5
    )
    # The ratio test decided in the cloud: one hint, at the first rejected position.
    body = {"position": 0, "draft": draft, "rule": "ratio", "gamma": 0.0}
    decided = http.post(f"{S}/sessions/{sid}/rounds", json=body).json()
    assert decided["accepted"] == 2 and [h["position"] for h in decided["hints"]] == [2]


def test_rounds_are_idempotent(http):
    """A retried round gets the same answer (up to float rounding: the retry's forward covers
    fewer positions, since the prompt is cached by then)."""
    sid = open_session(http, top_m=5)
    body = {"position": 0, "append": [4], "draft": [5, 6, 7], "rule": "device"}
    first = http.post(f"{S}/sessions/{sid}/rounds", json=body).json()
    again = http.post(f"{S}/sessions/{sid}/rounds", json=body).json()
    assert first["length"] == again["length"] == 4
    assert [h["token_ids"] for h in again["hints"]] == [h["token_ids"] for h in first["hints"]]
    for key in ("draft_log_p_G",):
        torch.testing.assert_close(torch.tensor(again[key]), torch.tensor(first[key]))
    for a, b in zip(again["hints"], first["hints"], strict=True):
        torch.testing.assert_close(torch.tensor(a["log_p_G"]), torch.tensor(b["log_p_G"]))


BAD_ROUNDS = [
    ({"position": "zero"}, 400, "position", ["position"]),
    ({"position": 0, "draft": [1, "x"]}, 400, "draft.1", ["draft"]),
    ({"position": 0, "draft": [-1]}, 400, "draft.0", ["greater than or equal to 0"]),
    ({"position": 0, "draft": [10**6]}, 400, "draft", ["outside the vocabulary"]),
    ({"position": 0, "append": [10**6]}, 400, "append", ["outside the vocabulary"]),
    ({"position": 0, "draft": [1] * 65}, 413, "draft", ["max_draft_tokens"]),
    ({"position": 9}, 409, "position", ["past the 0 tokens"]),
    ({"position": 0, "draft": [1, 2], "uniforms": [0.5]}, 400, "uniforms", ["2 tokens"]),
    ({"position": 0, "draft": [1], "uniforms": [1.5]}, 400, "uniforms.0", ["less than"]),
    ({"position": 0, "rule": "vote"}, 400, "rule", ["rule"]),
    ({"position": 0, "gamma": -1}, 400, "gamma", ["gamma"]),
    ({"position": 0, "private_context": "x"}, 400, "private_context", ["Extra inputs"]),
]


@pytest.mark.parametrize(("body", "status", "param", "words"), BAD_ROUNDS)
def test_bad_rounds_get_4xx_naming_the_field(http, body, status, param, words):
    sid = open_session(http)
    response = http.post(f"{S}/sessions/{sid}/rounds", json=body)
    error(response, status, *words, param=param)


def test_bad_requests_get_4xx_with_a_reason(http):
    headers = {"content-type": "application/json"}
    error(http.post(f"{S}/sessions", content=b"{not json", headers=headers), 400, "JSON")
    error(
        http.post(f"{S}/sessions", json={"prompt_ids": []}), 400, "at least 1", param="prompt_ids"
    )
    error(http.post(f"{S}/sessions", json={"prompt_ids": [1], "top_m": 10**6}), 400, "max_top_m")
    error(http.post(f"{S}/sessions", json={"prompt_ids": [1], "vocab_size": 10**6}), 400, "vocab")
    error(http.post(f"{S}/sessions", json={"prompt_ids": [1], "temperature": -1}), 400, "temp")
    tiny = {"prompt_ids": [1], "temperature": 1e-300}
    error(http.post(f"{S}/sessions", json=tiny), 400, "at least", param="temperature")
    error(http.post(f"{S}/sessions/nope/rounds", json={"position": 0}), 404, "no session")
    error(http.delete(f"{S}/sessions/nope"), 404, "no session")
    error(http.get("/no/such/path"), 404)
    error(http.put(f"{S}/sessions"), 405)
    long = {"prompt_ids": [1] * 9000}
    error(http.post(f"{S}/sessions", json=long), 413, "max_prompt_tokens", param="prompt_ids")
    huge = {"prompt_ids": [1] * 600_000}
    error(http.post(f"{S}/sessions", json=huge), 413, "max_body_bytes")


def test_a_chunked_body_over_the_limit_is_refused(http):
    def chunks():
        for _ in range(20):
            yield b" " * 100_000

    response = http.post(
        f"{S}/sessions", content=chunks(), headers={"content-type": "application/json"}
    )
    error(response, 413, "max_body_bytes")


def test_the_least_temperature_gives_finite_hints(http):
    """A session at `MIN_TEMPERATURE` tempers its rows without overflowing."""
    sid = open_session(http, temperature=MIN_TEMPERATURE, top_m=3)
    body = {"position": 0, "draft": [4, 5], "rule": "device"}
    result = http.post(f"{S}/sessions/{sid}/rounds", json=body).json()
    assert len(result["hints"]) == 3  # the two draft positions and the bonus one
    assert all(hint["log_p_G"][0] is not None for hint in result["hints"])
    greedy = http.post("/v1/completions", json={"prompt": [3, 4], "max_tokens": 1})
    at_least = {"prompt": [3, 4], "max_tokens": 1, "temperature": MIN_TEMPERATURE}
    assert http.post("/v1/completions", json=at_least).status_code == greedy.status_code == 200


LONE = "caf\ud800e"  # JSON "\ud800": a lone surrogate, not Unicode text


@pytest.mark.parametrize(
    ("path", "body", "param", "where"),
    [
        ("/tokenize", {"prompt": LONE}, "prompt", "prompt"),
        ("/tokenize", {"messages": [{"role": "user", "content": LONE}]}, "messages", "[0]"),
        ("/v1/completions", {"prompt": LONE, "max_tokens": 1}, "prompt", "prompt"),
    ],
)
def test_a_lone_surrogate_gets_400_naming_where(http, path, body, param, where):
    content = json.dumps(body)  # ASCII: the surrogate travels as the escape \ud800
    response = http.post(path, content=content, headers={"content-type": "application/json"})
    error(response, 400, "lone surrogate", "character 3", where, param=param)


def test_a_lone_surrogate_in_chat_template_kwargs_gets_400(http, generalist, monkeypatch):
    monkeypatch.setattr(
        generalist.tokenizer, "chat_template", "{{ name }}: {{ messages[0].content }}"
    )
    body = {"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"name": LONE}}
    content, headers = json.dumps(body), {"content-type": "application/json"}
    response = http.post("/tokenize", content=content, headers=headers)
    error(response, 400, "['name']", param="chat_template_kwargs")


def refused_and_closed(url: str, head: bytes, body: bytes = b"") -> bytes:
    """Send `head` (and, from another thread, `body`) on a new connection; the whole answer,
    read until the server ends the connection (a socket timeout fails the test). Closing with
    the body unread, the server's end is a reset, which comes after the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)

        def send_body():
            with contextlib.suppress(OSError):  # the server stopped reading and closed
                sock.sendall(body)

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):
                received += data
        sender.join(timeout=30)
    return received


CHUNKED = (
    f"POST {S}/sessions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    "Transfer-Encoding: chunked\r\n"
).encode()


def test_no_key_gets_401_before_the_body_is_read(small_service):
    """The key is checked from the headers: the body (never finished here) is not awaited,
    and the connection is closed, so the server parses no more of it."""
    _, server, _ = small_service
    answer = refused_and_closed(server.url, CHUNKED + b"\r\n" + b"1\r\nx\r\n" * 3)
    assert answer.startswith(b"HTTP/1.1 401") and b"connection: close" in answer.lower()
    assert b"missing API key" in answer


def test_a_million_one_byte_chunks_are_refused_at_the_chunk_bound(small_service):
    """The issue's reproducer, with the key: 413 after `max_body_chunks` chunks, not a read
    (and seconds of parsing) of all of them; the server serves others after it."""
    service, server, http = small_service
    key = f"Authorization: {http.headers['Authorization']}\r\n\r\n".encode()
    answer = refused_and_closed(server.url, CHUNKED + key, b"1\r\nx\r\n" * 10**6 + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower()
    assert f"max_body_chunks ({service.limits.max_body_chunks} chunks)".encode() in answer
    assert http.get("/health").status_code == 200


def test_a_body_of_max_body_chunks_chunks_is_served(generalist, specialist):
    limits = ServiceLimits(max_body_chunks=8)
    service = VerifierService(generalist, specialist, limits=limits)
    body = json.dumps({"prompt_ids": [1, 2, 3]}).encode()

    def chunks(n):  # one byte each, then the rest
        yield from (body[i : i + 1] for i in range(n - 1))
        yield body[n - 1 :]

    json_ = {"content-type": "application/json"}
    with BackgroundServer(create_app(service)) as server, httpx.Client(base_url=server.url) as c:
        assert c.post(f"{S}/sessions", content=chunks(8), headers=json_).status_code == 201
        refused = c.post(f"{S}/sessions", content=chunks(9), headers=json_)
        error(refused, 413, "max_body_chunks (8 chunks)")
        assert refused.headers["connection"] == "close"
        assert c.get("/health").status_code == 200


def run_gate(gate_options, headers, messages, *, clock=None, seconds_per_read=0.0, path=None):
    """Call `Gate` in front of an app that takes the body: (status, response body, reads of
    the request body, the body the app got). Each read moves `clock` by `seconds_per_read`."""
    reads, got, sent = [0], [None], []

    async def receive():
        reads[0] += 1
        if clock is not None:
            clock.advance(seconds_per_read)
        if not messages:
            await asyncio.Event().wait()  # a client that sends nothing more
        return messages.pop(0)

    async def app(scope, receive, send):
        got[0] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message):
        sent.append(message)

    options = {"api_key": None, "public_paths": {"/health"}, "limits": ServiceLimits()}
    if clock is not None:
        options["clock"] = clock
    gate = Gate(app, **{**options, **gate_options})
    scope = {"type": "http", "method": "POST", "path": path or f"{S}/sessions", "headers": headers}
    asyncio.run(gate(scope, receive, send))
    start, body = sent[0], sent[1]["body"]
    if start["status"] != 200:
        assert (b"connection", b"close") in start["headers"]
    return start["status"], body, reads[0], got[0]


def chunk(data: bytes, more: bool = True) -> dict:
    return {"type": "http.request", "body": data, "more_body": more}


CHUNKED_HEADERS = [(b"transfer-encoding", b"chunked")]


def test_gate_checks_the_key_before_reading_the_body():
    key = {"api_key": "sesame"}
    status, body, reads, _ = run_gate(key, CHUNKED_HEADERS, [chunk(b"x")] * 5)
    assert (status, reads) == (401, 0) and b"missing API key" in body
    wrong = [*CHUNKED_HEADERS, (b"authorization", b"Bearer nope")]
    status, body, reads, _ = run_gate(key, wrong, [chunk(b"x")])
    assert (status, reads) == (401, 0) and b"wrong API key" in body
    health = run_gate(key, CHUNKED_HEADERS, [chunk(b"x", more=False)], path="/health")
    assert health[0] == 200
    right = [*CHUNKED_HEADERS, (b"authorization", b"Bearer sesame")]
    status, _, reads, got = run_gate(key, right, [chunk(b"a"), chunk(b"b", more=False)])
    assert (status, reads, got) == (200, 2, b"ab")


def test_gate_refuses_a_body_over_the_byte_limit_without_reading_it_all():
    limits = {"limits": ServiceLimits(max_body_bytes=10)}
    declared = [(b"content-length", b"11")]
    status, _, reads, _ = run_gate(limits, declared, [chunk(b"x" * 11, more=False)])
    assert (status, reads) == (413, 0)
    status, body, reads, _ = run_gate(limits, CHUNKED_HEADERS, [chunk(b"x" * 6)] * 5)
    assert (status, reads) == (413, 2) and b"max_body_bytes (10)" in body


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_gate_refuses_a_body_arriving_after_body_timeout_seconds_with_408():
    """A body trickling in (4 s a chunk on the test's clock) is refused at its deadline; so
    is one that stops arriving (the deadline's timer)."""
    limits = {"limits": ServiceLimits(body_timeout_seconds=10)}
    trickle = [chunk(b"x")] * 100
    status, body, reads, _ = run_gate(
        limits, CHUNKED_HEADERS, trickle, clock=Clock(), seconds_per_read=4
    )
    assert (status, reads) == (408, 3) and b"body_timeout_seconds (10" in body
    stalled = {"limits": ServiceLimits(body_timeout_seconds=0.01)}
    status, _, reads, _ = run_gate(stalled, CHUNKED_HEADERS, [chunk(b"x")])
    assert (status, reads) == (408, 2)


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.5])
def test_a_sampled_completion_draws_from_the_tempered_distribution(http, generalist, temperature):
    """The new token of /v1/completions at temperature T is a draw from softmax(logits / T)
    with torch's global generator: the same draws as that formula after the same seed."""
    prompt = [5, 6, 7]
    with torch.inference_mode():
        logits = generalist.model(torch.tensor([prompt])).logits[0, -1].float()
    body = {"prompt": prompt, "max_tokens": 1, "temperature": temperature, "logprobs": 0}
    body["return_tokens_as_token_ids"] = True
    drawn, expected = [], []
    for seed in range(8):
        torch.manual_seed(seed)
        token = http.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]
        drawn.append(int(token["tokens"][0].removeprefix("token_id:")))
        torch.manual_seed(seed)
        expected.append(int(torch.multinomial(torch.softmax(logits / temperature, -1), 1)))
    assert drawn == expected
    assert len(set(drawn)) > 1  # the draws are samples, not the argmax


def test_completions_subset_matches_vllm_shapes(http, verifier, generalist):
    prompt = [3, 4, 5, 6]
    body = {
        "prompt": prompt,
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": 3,
        "prompt_logprobs": 3,
        "return_tokens_as_token_ids": True,
    }
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    with torch.inference_mode():
        rows = torch.log_softmax(generalist.model(torch.tensor([prompt])).logits[0], -1)
    assert choice["prompt_logprobs"][0] is None and len(choice["prompt_logprobs"]) == 4
    for i in range(1, 4):
        entry = choice["prompt_logprobs"][i]
        assert str(prompt[i]) in entry  # the actual token is always listed
        top = torch.topk(rows[i - 1], 3).indices.tolist()
        assert {str(t) for t in top} <= set(entry)
        assert [entry[str(t)]["rank"] for t in top] == [1, 2, 3]
    generated = int(torch.argmax(rows[-1]))
    assert choice["logprobs"]["tokens"] == [f"token_id:{generated}"]
    assert next(iter(choice["logprobs"]["top_logprobs"][0])) == f"token_id:{generated}"
    echo = {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1}
    choice = http.post("/v1/completions", json=echo).json()["choices"][0]
    assert choice["logprobs"]["token_logprobs"][0] is None
    assert len(choice["logprobs"]["tokens"]) == 4
    name = verifier.service.model_name
    assert http.get("/v1/models").json()["data"][0]["id"] == name
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": [1], "max_tokens": 5, "echo": True}, 400, "max_tokens"),
        ({"prompt": [1], "max_tokens": 5, "prompt_logprobs": 1}, 400, "max_tokens"),
        ({"prompt": [1], "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": [1], "max_tokens": 1, "logprobs": 10**6}, 400, "logprobs"),
        ({"prompt": [1], "max_tokens": 1, "prompt_logprobs": -2}, 400, "prompt_logprobs"),
        ({"prompt": [[1], [2]], "max_tokens": 4, "stream": True}, 400, "prompt"),
        ({"prompt": [1], "max_tokens": 1, "n": 2}, 400, "n"),
        ({"prompt": [1], "max_tokens": 1, "model": "gpt-9"}, 404, "model"),
        ({"prompt": [], "max_tokens": 1}, 400, "prompt"),
        ({"prompt": [10**6], "max_tokens": 1}, 400, "prompt"),
        ({"prompt": [1], "max_tokens": 1, "temperature": 3}, 400, "temperature"),
        ({"prompt": [1], "max_tokens": 1, "temperature": 1e-39}, 400, "temperature"),
        ({"prompt": [1], "max_tokens": 1, "temperature": MIN_TEMPERATURE / 2}, 400, "temperature"),
    ],
)
def test_bad_completions_get_4xx(http, body, status, param):
    error(http.post("/v1/completions", json=body), status, param=param)


def test_tokenize_follows_the_chat_template(http, generalist, monkeypatch):
    from langchain_specsteer.models import encode_prompt

    messages = [{"role": "user", "content": PROMPTS[2]}]
    assert not generalist.tokenizer.chat_template
    error(http.post("/tokenize", json={"messages": messages}), 400, "no chat template")
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    monkeypatch.setattr(generalist.tokenizer, "chat_template", template)
    tokens = http.post("/tokenize", json={"messages": messages}).json()["tokens"]
    assert tokens == encode_prompt(generalist.tokenizer, PROMPTS[2], chat=True)
    plain = http.post("/tokenize", json={"prompt": PROMPTS[2]}).json()["tokens"]
    assert plain == encode_prompt(generalist.tokenizer, PROMPTS[2], chat=False)
    error(http.post("/tokenize", json={}), 400, "exactly one")
    # A call's arguments arrive as JSON text (OpenAI's form) and reach the template as an
    # object, as vLLM does; malformed text becomes {} rather than failing the conversation.
    call = "{% for c in m.tool_calls or [] %}[{{ c.function.arguments.city }}]{% endfor %}"
    monkeypatch.setattr(
        generalist.tokenizer, "chat_template", template.replace("}}{%", "}}" + call + "{%", 1)
    )
    turns = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": args}}],
        }
        for args in ('{"city": "Oslo"}', "{oops")
    ]
    shown = [
        generalist.tokenizer.decode(
            http.post("/tokenize", json={"messages": [turn]}).json()["tokens"]
        )
        for turn in turns
    ]
    assert "[Oslo]" in shown[0] and "[]" in shown[1]


@pytest.fixture
def small_service(generalist, specialist):
    """A service with two session slots, a 0.5 s idle expiry on a `Clock` the test moves
    (`service.clock`), and an API key."""
    limits = ServiceLimits(max_sessions=2, session_idle_seconds=0.5)
    service = VerifierService(generalist, specialist, limits=limits, clock=Clock())
    key = {"Authorization": "Bearer sesame"}
    app = create_app(service, api_key="sesame")
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, headers=key) as c:
        yield service, server, c


def test_api_key_is_required_except_for_health(small_service):
    _, server, _ = small_service
    with httpx.Client(base_url=server.url) as anonymous:
        error(anonymous.get(f"{S}/info"), 401, "missing API key")
        error(anonymous.post("/v1/completions", json={"prompt": [1]}), 401)
        wrong = {"Authorization": "Bearer nope"}
        error(
            anonymous.post(f"{S}/sessions", json={"prompt_ids": [1]}, headers=wrong), 401, "wrong"
        )
        assert anonymous.get("/health").status_code == 200


def test_sessions_stay_bounded_under_churn(small_service):
    service, _, http = small_service
    first = open_session(http)
    for _ in range(20):
        open_session(http)
    assert len(service.sessions) == 2
    error(http.post(f"{S}/sessions/{first}/rounds", json={"position": 0}), 404, "evicted")
    recent = open_session(http)
    service.clock.advance(0.4)  # used within session_idle_seconds: kept, and its idle time resets
    assert http.post(f"{S}/sessions/{recent}/rounds", json={"position": 0}).status_code == 200
    service.clock.advance(0.4)
    assert http.post(f"{S}/sessions/{recent}/rounds", json={"position": 0}).status_code == 200
    service.clock.advance(0.6)
    error(http.post(f"{S}/sessions/{recent}/rounds", json={"position": 0}), 404, "expired")
    assert not service.sessions


def test_a_concurrent_second_request_on_one_session_gets_409(small_service):
    service, _, http = small_service
    sid = open_session(http)
    session = service.sessions[sid]
    with session.busy:  # the first request is still being served
        busy = http.post(f"{S}/sessions/{sid}/rounds", json={"position": 0})
        assert error(busy, 409, "one at a time")["type"] == SESSION_BUSY  # clients retry it
        open_session(http)  # another session is unaffected (and evicts none that is busy)
        open_session(http)
        assert sid in service.sessions
    assert http.post(f"{S}/sessions/{sid}/rounds", json={"position": 0}).status_code == 200


def test_logs_carry_no_prompt_unless_asked(make_remote_llm, verifier, caplog, specialist):
    secretive = "Zorblax"
    with caplog.at_level(logging.INFO, logger="langchain_specsteer.server"):
        llm = make_remote_llm(method="specsteer", max_new_tokens=8)
        llm.invoke(f"{secretive} {PROMPTS[0]}", private_context=CONTEXT)
    events = [json.loads(r.getMessage()) for r in caplog.records]
    assert {"open", "round"} <= {e["event"] for e in events}
    prompt_ids = specialist.tokenizer.encode(secretive, add_special_tokens=False)
    for event in events:
        assert not {"prompt_ids", "draft", "append"} & set(event)
        assert secretive not in json.dumps(event)
    rounds = [e for e in events if e["event"] == "round"]
    assert rounds and all(isinstance(e["ms"], float | int) and e["ms"] >= 0 for e in rounds)
    verifier.service.log_prompts = True
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="langchain_specsteer.server"):
            llm.invoke(f"{secretive} {PROMPTS[0]}", private_context=CONTEXT)
        logged = [json.loads(r.getMessage()) for r in caplog.records]
        assert any("prompt_ids" in e for e in logged)
        assert prompt_ids
    finally:
        verifier.service.log_prompts = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tiny_dir, port: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "langchain_specsteer", "serve",
        "--generalist", str(tiny_dir / "generalist"),
        "--public-specialist", str(tiny_dir / "specialist"),
        "--port", str(port), "--device", "cpu", "--max-top-m", "4096", "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"specsteer serve exited: {process.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    pytest.fail("specsteer serve did not start in 90 s")


def test_service_killed_mid_generation_then_restarted(tiny_dir, make_llm, make_remote_llm):
    """`specsteer serve` killed after the first streamed piece: the text is completed by the
    specialist and marked degraded; after a restart the same client works again."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(tiny_dir, port)
    try:
        llm = make_remote_llm(
            url=url,
            method="specsteer",
            max_new_tokens=40,
            client_options={"max_retries": 1, "backoff_s": 0.05, "timeout": 5},
        )
        pieces, info = [], None
        for chunk in llm._stream(PROMPTS[0], None, private_context=CONTEXT):
            if chunk.generation_info:
                info = chunk.generation_info
            pieces.append(chunk.text)
            if len(pieces) == 1:
                process.send_signal(signal.SIGKILL)
                process.wait()
        assert info["degraded"] is True and "ConnectError" in info["degraded_reason"]
        assert info["new_tokens"] == 40 and info["finish_reason"] == "length"
        assert pieces[0] and "".join(pieces).startswith(pieces[0])

        process = start_server(tiny_dir, port)
        text = llm.invoke(PROMPTS[1], private_context=CONTEXT)
        assert text == make_llm(method="specsteer", max_new_tokens=40).invoke(
            PROMPTS[1], private_context=CONTEXT
        )
    finally:
        process.kill()
        process.wait()


def test_serve_refuses_bad_limits(tiny_dir):
    command = [sys.executable, "-m", "langchain_specsteer", "serve",
               "--generalist", str(tiny_dir / "generalist"), "--max-sessions", "0"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "max_sessions must be positive" in result.stderr


class WatchedLock:
    """The service's model lock, announcing a thread that has to wait for it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.contended = threading.Event()

    def __enter__(self):
        if self.lock.locked():
            self.contended.set()
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()


def test_model_work_is_serialised_across_sessions(small_service, monkeypatch):
    """Session A's round holds the model; session B's round, sent meanwhile, waits for the
    lock and runs the model only after A's forward returns."""
    service, _, http = small_service
    lock, inside_a, finish_a = WatchedLock(), threading.Event(), threading.Event()
    active, overlaps, calls = [0], [0], [0]
    forward = service.generalist.model.forward

    def tracking(*args, **kwargs):
        calls[0] += 1
        active[0] += 1
        overlaps[0] = max(overlaps[0], active[0])
        try:
            if calls[0] == 1:  # A's first forward: hold the model until B is waiting
                inside_a.set()
                assert finish_a.wait(timeout=30)
            return forward(*args, **kwargs)
        finally:
            active[0] -= 1

    monkeypatch.setattr(service, "model_lock", lock)
    monkeypatch.setattr(service.generalist.model, "forward", tracking)
    sessions = {"A": open_session(http), "B": open_session(http)}
    codes = {}

    def round_of(name):
        with httpx.Client(base_url=str(http.base_url), headers=http.headers) as client:
            body = {"position": 0, "draft": [7, 8], "rule": "device"}
            codes[name] = client.post(f"{S}/sessions/{sessions[name]}/rounds", json=body)

    threads = {name: threading.Thread(target=round_of, args=(name,)) for name in "AB"}
    threads["A"].start()
    assert inside_a.wait(timeout=30)
    threads["B"].start()
    assert lock.contended.wait(timeout=30), "B's round did not wait for the model lock"
    assert calls[0] == 1  # B waits while A is inside the model
    finish_a.set()
    for thread in threads.values():
        thread.join(timeout=30)
    assert overlaps[0] == 1 and calls[0] >= 2
    assert codes["A"].status_code == codes["B"].status_code == 200


def test_an_internal_error_closes_its_connection_and_the_next_request_works(
    http, verifier, monkeypatch
):
    """The server drops a connection after a 500; the answer says so (`Connection: close`),
    so a keep-alive client reconnects instead of reading an empty reply."""

    def broken(self):
        raise RuntimeError("boom")

    assert http.get("/v1/models").status_code == 200  # the connection is open
    monkeypatch.setattr(OpenAICompatible, "models", broken)
    failed = http.get("/v1/models")
    error(failed, 500, "internal error: RuntimeError")
    assert failed.headers["connection"] == "close"
    monkeypatch.undo()
    assert http.get("/v1/models").status_code == 200


def test_lengths_are_capped_at_what_the_model_takes(generalist, specialist, monkeypatch):
    """A model of 64 positions: prompts and sessions over 64 tokens get 413, also when a
    session grows past it in a round; a lower configured limit stays."""
    monkeypatch.setattr(generalist.model.config, "max_position_embeddings", 64)
    service = VerifierService(generalist, specialist)
    assert (service.limits.max_prompt_tokens, service.limits.max_session_tokens) == (64, 64)
    lower = VerifierService(generalist, specialist, limits=ServiceLimits(max_prompt_tokens=32))
    assert (lower.limits.max_prompt_tokens, lower.limits.max_session_tokens) == (32, 64)
    with BackgroundServer(create_app(service)) as server, httpx.Client(base_url=server.url) as c:
        assert c.get(f"{S}/info").json()["limits"]["max_session_tokens"] == 64
        assert c.get("/v1/models").json()["data"][0]["max_model_len"] == 64
        long = {"prompt_ids": [1] * 65}
        error(c.post(f"{S}/sessions", json=long), 413, "max_prompt_tokens (64)")
        error(c.post("/v1/completions", json={"prompt": [1] * 65, "max_tokens": 1}), 413)
        sid = open_session(c, [1] * 60)
        fits = {"position": 0, "append": [2, 3], "draft": [4, 5], "rule": "device"}
        assert c.post(f"{S}/sessions/{sid}/rounds", json=fits).status_code == 200
        grows = {"position": 4, "draft": [6]}
        response = c.post(f"{S}/sessions/{sid}/rounds", json=grows)
        error(response, 413, "65 tokens", "max_session_tokens (64)")


@pytest.mark.parametrize("public_docs", [False, True])
def test_the_docs_need_the_key_unless_public(generalist, public_docs):
    service = VerifierService(generalist)
    app = create_app(service, api_key="sesame", public_docs=public_docs)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as anonymous:
        for path in ("/openapi.json", "/docs", "/redoc"):
            response = anonymous.get(path)
            if public_docs:
                assert response.status_code == 200, path
            else:
                error(response, 401, "missing API key")
                keyed = {"Authorization": "Bearer sesame"}
                assert anonymous.get(path, headers=keyed).status_code == 200
        error(anonymous.get(f"{S}/info"), 401)  # the API itself stays closed
        assert anonymous.head("/health").status_code == 200


def test_the_served_name_is_the_folders_not_its_path(http, verifier, tiny_dir, tmp_path):
    """A model loaded from a folder is served as the folder's name (vLLM's served model name),
    in /v1/models, /info and completions; the full path is not sent."""
    assert verifier.service.generalist.name == str(tiny_dir / "generalist")
    assert verifier.service.model_name == "generalist"
    assert http.get("/v1/models").json()["data"][0]["id"] == "generalist"
    assert http.get(f"{S}/info").json()["model"] == "generalist"
    completion = http.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 1}).json()
    assert completion["model"] == "generalist"
    assert served_name(str(tmp_path / "models" / "my-model")) == "my-model"
    assert served_name("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"  # a hub id (no such folder here)
