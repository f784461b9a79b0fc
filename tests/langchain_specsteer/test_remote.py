"""The generalist over HTTP: the same text as in-process, and faults survived.

Real HTTP on loopback: the `verifier` fixture serves the tiny generalist (with the specialist
as its public copy) from a uvicorn thread.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from langchain_specsteer import METHODS
from langchain_specsteer.params import MIN_TEMPERATURE
from langchain_specsteer.remote import RemoteGeneralist
from langchain_specsteer.service import ServiceLimits, VerifierService, create_app
from langchain_specsteer.testing import BackgroundServer, simulated_rtt
from langchain_specsteer.verification import GeneralistError
from tests.conftest import CONTEXT, PROMPTS

COUNTS = ("new_tokens", "rounds", "drafted", "accepted", "generalist_calls", "finish_reason")


def generate(llm, prompt=PROMPTS[0], context=CONTEXT, api="sync", **kwargs):
    """(text, generation_info) from `generate`, or from `agenerate` with api="async"."""
    if api == "async":
        result = asyncio.run(llm.agenerate([prompt], private_context=context, **kwargs))
    else:
        result = llm.generate([prompt], private_context=context, **kwargs)
    generation = result.generations[0][0]
    return generation.text, generation.generation_info


def stream(llm, each, api="sync", prompt=PROMPTS[0], context=CONTEXT):
    """The streamed text (`stream` or `astream`); `each(i)` runs after the i-th piece."""
    if api == "sync":
        pieces = []
        for i, piece in enumerate(llm.stream(prompt, private_context=context)):
            pieces.append(piece)
            each(i)
        return "".join(pieces)

    async def collect():
        pieces = []
        async for piece in llm.astream(prompt, private_context=context):
            pieces.append(piece)
            each(len(pieces) - 1)
        return "".join(pieces)

    return asyncio.run(collect())


@pytest.mark.parametrize("client", ["session", "openai"])
@pytest.mark.parametrize("method", METHODS)
def test_remote_output_equals_in_process(make_llm, make_remote_llm, method, client):
    """Greedy, with hints as large as the vocabulary: token for token the in-process text."""
    local_text, local_info = generate(make_llm(method=method, gamma=0.3))
    remote_llm = make_remote_llm(client, method=method, gamma=0.3)
    remote_text, remote_info = generate(remote_llm)
    assert remote_text == local_text
    assert {k: remote_info[k] for k in COUNTS} == {k: local_info[k] for k in COUNTS}
    assert remote_info["degraded"] is False
    if method != "specialist":
        assert remote_llm.generalist.stats.requests >= local_info["generalist_calls"]


@pytest.mark.parametrize("client", ["session", "openai"])
@pytest.mark.parametrize("method", ["generalist", "speculative"])
def test_argmax_methods_need_only_the_top_token(make_llm, make_remote_llm, method, client):
    """Generalist recovery reads only p_G's argmax, so a hint of one token is exact."""
    local_text, _ = generate(make_llm(method=method, max_new_tokens=32))
    remote_text, _ = generate(make_remote_llm(client, hint=1, method=method, max_new_tokens=32))
    assert remote_text == local_text


def test_default_hint_keeps_the_choice_within_the_generalists_top_m(make_llm, make_remote_llm):
    """With m = 20 each recovered token is the best fused score among p_G's top 20 (it
    differs from in-process only where the in-process choice falls outside them)."""
    for prompt in PROMPTS:
        llm = make_remote_llm(hint=20, method="light_costeer", max_new_tokens=16)
        prompts = llm.render_prompts(prompt, CONTEXT)
        ids = [t for r in llm._engine.run(prompts, llm.decoding_params()) for t in r.tokens]
        replayed = _top_m_choices(make_llm()._engine, prompts, ids, m=20)
        assert replayed == ids


def _top_m_choices(engine, prompts, ids, m):
    """Greedy light_costeer restricted to p_G's top m, replayed along `ids`."""
    from langchain_specsteer import algorithms as alg

    V = engine.vocab_size
    ctx = engine.specialist.sequence(prompts.private, vocab_size=V)
    gen = engine.specialist.sequence(prompts.public_specialist, vocab_size=V)
    target = engine.generalist.sequence(prompts.public_generalist, vocab_size=V)
    choices = []
    for token in ids:
        p, q_ctx, q_gen = (s.forward()[0, 0] for s in (target, ctx, gen))
        hint = alg.make_hint(p, q_gen, m)
        scores = hint.log_p_G + 1.0 * (q_ctx[hint.token_ids] - hint.log_q_gen)
        choices.append(int(hint.token_ids[scores.argmax()]))
        if choices[-1] != token:
            break
        for s in (target, ctx, gen):
            s.append([token])
    return choices


def test_sampling_equals_in_process_with_full_hints(make_llm, make_remote_llm):
    """The device draws the ratio test's uniforms and the cloud applies them: same seed, same
    text."""
    fields = {"method": "specsteer", "temperature": 0.8, "seed": 7, "max_new_tokens": 32}
    local, _ = generate(make_llm(**fields))
    remote, info = generate(make_remote_llm(**fields))
    assert remote == local
    assert info["drafted"] > 0
    assert remote != generate(make_llm(**{**fields, "temperature": 0.0}))[0]  # really sampled


def test_eight_concurrent_clients_match_sequential_runs(make_llm, make_remote_llm):
    jobs = [(PROMPTS[i % len(PROMPTS)], method) for i, method in enumerate(METHODS + METHODS)][:8]
    sequential = [generate(make_llm(method=m, max_new_tokens=20), p)[0] for p, m in jobs]

    def run(job):
        prompt, method = job
        return generate(make_remote_llm(method=method, max_new_tokens=20), prompt)[0]

    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(run, jobs))
    assert concurrent == sequential


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_lost_session_is_reopened_and_resumed(make_llm, make_remote_llm, verifier, api):
    local, _ = generate(make_llm(method="specsteer", max_new_tokens=32))
    llm = make_remote_llm(method="specsteer", max_new_tokens=32)

    def forget(i):
        if i == 1:  # the service forgets every session (as after an expiry or a restart)
            with verifier.service._sessions_lock:
                verifier.service.sessions.clear()

    assert stream(llm, forget, api) == local
    assert llm.generalist.stats.reopened == 1


class Flaky:
    """ASGI wrapper failing chosen round requests: a 503, or a reply slower than the timeout."""

    def __init__(self, app, *, fail=(), slow=(), delay=0.0):
        self.app, self.fail, self.slow, self.delay = app, set(fail), set(slow), delay
        self.rounds = 0
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith("/rounds"):
            with self.lock:
                self.rounds += 1
                n = self.rounds
            if n in self.fail:
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            if n in self.slow:
                await asyncio.sleep(self.delay)
        await self.app(scope, receive, send)


@pytest.mark.parametrize("api", ["sync", "async"])
def test_retries_after_5xx_and_timeouts_give_the_same_text(
    make_llm, make_remote_llm, verifier, api
):
    """Rounds are idempotent: a retried or duplicated round changes nothing (the async client
    backs off with asyncio.sleep and times out on the loop)."""
    local, _ = generate(make_llm(method="specsteer", max_new_tokens=32))
    flaky = Flaky(create_app(verifier.service), fail={2, 3}, slow={5}, delay=1.5)
    with BackgroundServer(flaky) as server:
        llm = make_remote_llm(
            url=server.url,
            method="specsteer",
            max_new_tokens=32,
            client_options={"timeout": 0.5, "max_retries": 4, "backoff_s": 0.05},
        )
        text, info = generate(llm, api=api)
    assert text == local
    assert info["degraded"] is False
    assert llm.generalist.stats.retries >= 3


@pytest.mark.parametrize("api", ["sync", "async"])
def test_an_unreachable_cloud_degrades_to_the_specialist(make_llm, make_remote_llm, verifier, api):
    flaky = Flaky(create_app(verifier.service), fail=set(range(3, 1000)))
    with BackgroundServer(flaky) as server:
        llm = make_remote_llm(
            url=server.url,
            method="specsteer",
            max_new_tokens=32,
            client_options={"max_retries": 1, "backoff_s": 0.01},
        )
        text, info = generate(llm, api=api)
        with pytest.raises(GeneralistError, match="503"):
            generate(llm, api=api, on_generalist_error="raise")
    assert info["degraded"] is True
    assert "503" in info["degraded_reason"]
    assert info["new_tokens"] == 32 and info["finish_reason"] == "length"
    # Nothing verified is lost: the two verified rounds open the text, the specialist ends it.
    local = make_llm(method="specsteer", max_new_tokens=32)
    rounds = list(
        local._engine.run(local.render_prompts(PROMPTS[0], CONTEXT), llm.decoding_params())
    )
    verified = local.specialist.tokenizer.decode(rounds[0].tokens + rounds[1].tokens)
    assert text.startswith(verified)


def test_bad_client_options_fail_at_construction():
    with pytest.raises(ValueError, match="top_m"):
        RemoteGeneralist("http://127.0.0.1:9", top_m=0)
    with pytest.raises(ValueError, match="timeout"):
        RemoteGeneralist("http://127.0.0.1:9", timeout=0)
    with pytest.raises(ValueError, match="wrap_transport must be callable"):
        RemoteGeneralist("http://127.0.0.1:9", wrap_transport="slow")
    with pytest.raises(ValueError, match="non-negative seconds"):
        simulated_rtt(-0.1)


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_simulated_round_trip_waits_before_every_request(make_llm, make_remote_llm, api):
    """`simulated_rtt` (the benchmark's latency) is a transport around the client: the text is
    the in-process one, and every request waited once, with the sleep of its driver."""
    waits = []

    async def async_sleep(seconds):
        waits.append(("async", seconds))

    rtt = simulated_rtt(
        0.25, sleep=lambda seconds: waits.append(("sync", seconds)), async_sleep=async_sleep
    )
    # the stateless client: no session is released in the background after the text
    llm = make_remote_llm("openai", method="specsteer", client_options={"wrap_transport": rtt})
    local, local_info = generate(make_llm(method="specsteer", max_new_tokens=24))
    text, info = generate(llm, api=api)
    assert text == local and info["generalist_calls"] == local_info["generalist_calls"]
    requests = llm.generalist.stats.requests
    assert requests > info["generalist_calls"] >= 1  # /tokenize, then one request a round
    assert waits == [(api, 0.25)] * requests


def test_an_unreachable_service_at_construction_is_a_clear_error(specialist):
    from langchain_specsteer import SpecSteerLLM

    generalist = RemoteGeneralist("http://127.0.0.1:9", max_retries=0)
    with pytest.raises(GeneralistError, match=r"127\.0\.0\.1:9.*ConnectError"):
        SpecSteerLLM(specialist=specialist, generalist=generalist)


def test_a_service_with_another_vocabulary_is_refused(specialist, verifier, monkeypatch):
    from langchain_specsteer import SpecSteerLLM

    generalist = RemoteGeneralist(verifier.url)
    monkeypatch.setitem(specialist.__dict__, "vocab_signature", "0" * 32)
    with pytest.raises(ValueError, match="different vocabularies"):
        SpecSteerLLM(specialist=specialist, generalist=generalist, alignment="token")
    with pytest.raises(ValueError, match="byte-level path needs the generalist's tokenizer"):
        SpecSteerLLM(specialist=specialist, generalist=generalist)


def test_a_cloud_down_before_the_call_gives_the_specialists_text(
    make_llm, make_remote_llm, verifier
):
    """Even the prompt's tokenisation fails: the specialist writes the whole text."""
    with BackgroundServer(create_app(verifier.service)) as server:
        llm = make_remote_llm(
            url=server.url,
            method="specsteer",
            client_options={"max_retries": 1, "backoff_s": 0.01},
        )
        llm.generalist.info  # noqa: B018 - fetched while the service is up
    text, info = generate(llm)
    assert info["degraded"] is True and "ConnectError" in info["degraded_reason"]
    assert text == generate(make_llm(method="specialist"))[0]
    with pytest.raises(GeneralistError, match="ConnectError"):
        generate(llm, on_generalist_error="raise")


def test_a_local_tokenizer_saves_the_tokenize_request(make_remote_llm, verifier, generalist):
    plain = make_remote_llm(method="specsteer")
    local = make_remote_llm(method="specsteer", client_options={"tokenizer": generalist.tokenizer})
    verifier.requests.clear()
    assert local.invoke(PROMPTS[2], private_context=CONTEXT) == plain.invoke(
        PROMPTS[2], private_context=CONTEXT
    )
    tokenize_calls = [r for r in verifier.requests if r["path"] == "/tokenize"]
    assert len(tokenize_calls) == 1  # the plain client's only
    other = make_remote_llm(client_options={"tokenizer": _OtherVocab()})
    with pytest.raises(ValueError, match="not the service's generalist's"):
        other.invoke(PROMPTS[0])


class _OtherVocab:
    def get_vocab(self):
        return {"a": 0}


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_draft_longer_than_the_services_limit_is_clamped(
    make_llm, make_remote_llm, specialist, generalist, verifier, monkeypatch, api
):
    """draft_tokens above the service's max_draft_tokens: rounds draft the service's limit
    (no 413 turning the text into the specialist's), and generation_info says so. The async
    call reads the limit without a blocking request."""
    limits = ServiceLimits(max_draft_tokens=2, max_top_m=verifier.vocab, max_logprobs=20)
    service = VerifierService(generalist, specialist, limits=limits)
    local_text, local_info = generate(make_llm(method="specsteer", gamma=0.3, draft_tokens=2))
    with BackgroundServer(create_app(service)) as server:
        llm = make_remote_llm(url=server.url, method="specsteer", gamma=0.3, draft_tokens=5)
        if api == "async":
            _async_only(llm, monkeypatch)
        text, info = generate(llm, api=api)
        within, within_info = generate(llm, api=api, draft_tokens=2)
    assert info["degraded"] is False and info["draft_tokens_clamped_to"] == 2
    assert text == local_text
    assert {k: info[k] for k in COUNTS} == {k: local_info[k] for k in COUNTS}
    assert within == local_text and "draft_tokens_clamped_to" not in within_info
    assert llm.draft_tokens == 5  # the field keeps what was asked


def test_tiny_temperatures_are_refused_before_any_request(make_remote_llm, verifier):
    llm = make_remote_llm(method="specsteer", max_new_tokens=6)
    verifier.requests.clear()
    for call in (
        lambda: llm.invoke(PROMPTS[0], private_context=CONTEXT, temperature=1e-40),
        lambda: asyncio.run(llm.ainvoke(PROMPTS[0], temperature=1e-40)),
    ):
        with pytest.raises(ValidationError, match="temperature"):
            call()
    assert verifier.requests == []


@pytest.mark.parametrize("client", ["session", "openai"])
def test_remote_sampling_at_the_smallest_temperature_and_top_p(make_llm, make_remote_llm, client):
    """MIN_TEMPERATURE and a top_p below float32 work over the network: sampling the
    generalist with a nucleus of one token writes its greedy text."""
    greedy, _ = generate(make_llm(method="generalist", max_new_tokens=16))
    tiny = {"temperature": 1.0, "top_p": 1e-300, "seed": 5, "max_new_tokens": 16}
    text, info = generate(make_remote_llm(client, method="generalist", **tiny))
    assert text == greedy and info["degraded"] is False
    coldest = {"temperature": MIN_TEMPERATURE, "seed": 5, "max_new_tokens": 16}
    _, info = generate(make_remote_llm(client, method="specsteer", **coldest))
    assert info["degraded"] is False and info["new_tokens"] == 16


def test_the_specialist_method_makes_no_request(make_remote_llm, verifier):
    llm = make_remote_llm(method="specialist")
    verifier.requests.clear()
    llm.invoke(PROMPTS[0], private_context=CONTEXT)
    assert verifier.requests == []


# --- Async: ainvoke / astream speak HTTP on the event loop --------------------------------


class _BlockingClientForbidden:
    """Stands in for the blocking httpx client: any use fails the test."""

    is_closed = False

    def request(self, *args, **kwargs):
        raise AssertionError("the blocking HTTP client was used inside an async call")

    def close(self):
        pass


def _async_only(llm, monkeypatch):
    """Forbid the blocking client; return the threads the async client's requests ran on."""
    import httpx

    monkeypatch.setattr(llm.generalist.http, "client", _BlockingClientForbidden())
    threads = []
    send = httpx.AsyncClient.send

    async def recording_send(self, *args, **kwargs):
        threads.append(threading.get_ident())
        return await send(self, *args, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", recording_send)
    return threads


@pytest.mark.parametrize("client", ["session", "openai"])
@pytest.mark.parametrize("method", ["specsteer", "light_costeer", "speculative"])
def test_async_calls_use_async_http_on_the_event_loop(
    make_llm, make_remote_llm, verifier, monkeypatch, method, client
):
    """ainvoke and astream give the in-process text; every request goes through
    `httpx.AsyncClient` on the loop's own thread (none blocks a worker thread), from one
    event loop and then another; `aclose` releases the session on the service."""
    local, local_info = generate(make_llm(method=method, max_new_tokens=24))
    llm = make_remote_llm(client, method=method, max_new_tokens=24)
    threads = _async_only(llm, monkeypatch)
    loop_threads = []

    async def invoke():
        loop_threads.append(threading.get_ident())
        result = await llm.agenerate([PROMPTS[0]], private_context=CONTEXT)
        await llm.generalist.aclose()
        return result.generations[0][0]

    async def stream():
        loop_threads.append(threading.get_ident())
        pieces = [p async for p in llm.astream(PROMPTS[0], private_context=CONTEXT)]
        await llm.generalist.aclose()
        return "".join(pieces)

    llm.generalist.stats.reset()
    verifier.requests.clear()
    generation = asyncio.run(invoke())
    assert asyncio.run(stream()) == generation.text == local
    for name in COUNTS:
        assert generation.generation_info[name] == local_info[name]
    assert threads and set(threads) <= set(loop_threads)
    assert len(threads) == llm.generalist.stats.requests
    if client == "session":  # both sessions released before each loop ended
        assert sum(r["method"] == "DELETE" for r in verifier.requests) == 2
        assert not verifier.service.sessions


def test_wait_released_waits_for_the_background_session_release(
    make_remote_llm, verifier, monkeypatch
):
    """A blocking call releases its session in a background thread; `wait_released` (and
    `close`) return only once the DELETE was answered, so counts read after it are whole."""
    llm = make_remote_llm(method="specsteer", max_new_tokens=8)
    started, go = threading.Event(), threading.Event()
    close = verifier.service.close

    def held_close(session_id):  # the service answers the DELETE only once the test says so
        started.set()
        go.wait(5)
        return close(session_id)

    monkeypatch.setattr(verifier.service, "close", held_close)
    verifier.requests.clear()
    llm.invoke(PROMPTS[0])
    assert started.wait(5)  # the release is under way, held
    releasing = set(llm.generalist._releasing_threads)
    assert releasing and all(t.is_alive() for t in releasing)
    threading.Timer(0.05, go.set).start()
    llm.generalist.wait_released()
    assert not any(t.is_alive() for t in releasing)
    assert not verifier.service.sessions
    assert sum(r["method"] == "DELETE" for r in verifier.requests) == 1


def test_a_closed_client_reopens_its_connections_on_demand(make_remote_llm, verifier):
    """`close` and `aclose` release connections; sync and async calls still work after."""
    llm = make_remote_llm(method="specsteer", max_new_tokens=8)
    expected = llm.invoke(PROMPTS[0])

    async def closed_then_async():
        await llm.generalist.aclose()
        text = await llm.ainvoke(PROMPTS[0])
        await llm.generalist.aclose()
        return text

    llm.generalist.close()
    assert asyncio.run(closed_then_async()) == expected
    assert llm.invoke(PROMPTS[0]) == expected
    llm.generalist.close()
    assert llm.invoke(PROMPTS[0]) == expected


def test_concurrent_async_calls_match_sequential_runs(make_llm, make_remote_llm):
    """Six generations at once on one client (one AsyncClient, one specialist)."""
    jobs = [(PROMPTS[i % len(PROMPTS)], method) for i, method in enumerate(METHODS)]
    sequential = [generate(make_llm(method=m, max_new_tokens=20), p)[0] for p, m in jobs]
    llm = make_remote_llm(max_new_tokens=20)

    async def run_all():
        calls = [llm.ainvoke(p, private_context=CONTEXT, method=m) for p, m in jobs]
        return await asyncio.gather(*calls)

    assert asyncio.run(run_all()) == sequential
