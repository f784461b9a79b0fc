"""The generalist over HTTP: the same text as in-process, and faults survived.

Real HTTP on loopback: the `verifier` fixture serves the tiny generalist (with the specialist
as its public copy) from a uvicorn thread.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from pydantic import ValidationError

from langchain_specsteer import METHODS
from langchain_specsteer.params import MIN_TEMPERATURE
from langchain_specsteer.remote import RemoteGeneralist
from langchain_specsteer.server import ServiceLimits, VerifierService, create_app
from langchain_specsteer.testing import BackgroundServer, simulated_rtt
from langchain_specsteer.verification import GeneralistError
from tests.conftest import CONTEXT, PROMPTS, counts


def remote_counts(local_info, method):
    """The in-process run's counters as a remote run reports them: the generalist alone is one
    streamed completion over the network."""
    expected = counts(local_info)
    if method == "generalist":
        expected["generalist_calls"] = 1
    return expected


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
    assert counts(remote_info) == remote_counts(local_info, method)
    assert remote_info["degraded"] is False
    if method not in ("specialist", "generalist"):
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
        ids = [t for r in llm.rounds(prompt, private_context=CONTEXT) for t in r.tokens]
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
            rounds_in_flight=1,  # with rounds in flight: test_in_flight.py
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
        local.rounds(PROMPTS[0], private_context=CONTEXT, **llm.decoding_params().model_dump())
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
    assert text == local and counts(info) == counts(local_info)
    requests = llm.generalist.stats.requests
    assert requests > info["generalist_calls"] >= 1  # /tokenize, then one request a round
    assert waits == [(api, 0.25)] * requests


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_service_down_at_construction_degrades_until_it_answers(
    make_llm, specialist, verifier, api
):
    """An assistant that starts offline still answers: built without its service, a call
    gives the specialist's text (degraded), or the error when asked to raise; once the
    service answers, the next call uses it."""
    from langchain_specsteer import SpecSteerLLM

    port = _free_port()
    generalist = RemoteGeneralist(f"http://127.0.0.1:{port}", top_m=verifier.vocab, max_retries=0)
    llm = SpecSteerLLM(specialist=specialist, generalist=generalist, max_new_tokens=24)
    text, info = generate(llm, api=api)
    assert info["degraded"] is True and "ConnectError" in info["degraded_reason"]
    assert text == generate(make_llm(method="specialist"))[0]
    with pytest.raises(GeneralistError, match="ConnectError"):
        generate(llm, api=api, on_generalist_error="raise")
    with BackgroundServer(create_app(verifier.service), port=port):
        text, info = generate(llm, api=api)
        generalist.close()
    assert info["degraded"] is False and info["generalist_calls"] > 0
    assert text == generate(make_llm())[0]


def test_a_wrong_key_fails_at_construction(specialist, verifier):
    from langchain_specsteer import SpecSteerLLM

    with BackgroundServer(create_app(verifier.service, api_key="right")) as server:
        generalist = RemoteGeneralist(server.url, api_key="wrong", max_retries=0)
        with pytest.raises(GeneralistError, match="HTTP 401: wrong API key"):
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


def test_no_request_comes_before_the_first_round(make_remote_llm, verifier, generalist):
    """specsteer/2: the first rounds carry the opening (the public turns for the service to
    render, or the ids a local tokenizer encoded), so a generation's first request is a round;
    the texts agree either way."""
    plain = make_remote_llm(method="specsteer")
    local = make_remote_llm(method="specsteer", client_options={"tokenizer": generalist.tokenizer})
    assert plain.generalist.info == local.generalist.info  # once per client, cached
    openings = []
    for llm in (plain, local):
        verifier.requests.clear()
        texts = llm.invoke(PROMPTS[2], private_context=CONTEXT)
        llm.generalist.wait_released()
        paths = [r["path"] for r in verifier.requests if r["method"] != "DELETE"]
        assert paths[0].endswith("/rounds") and "/tokenize" not in paths, paths
        assert not any(p.endswith("/sessions") for p in paths)  # no opening request
        first = json.loads(next(r for r in verifier.requests if r["method"] == "POST")["body"])
        openings.append(first["open"])
        assert first["seq"] == 0 and first["open"]["vocab_signature"]
        assert texts == plain.invoke(PROMPTS[2], private_context=CONTEXT)
    assert openings[0]["public_prompt"]["prompt"]  # the tiny pair has no chat template
    assert openings[0]["prompt_ids"] is None
    assert openings[1]["prompt_ids"] and openings[1]["public_prompt"] is None
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
    assert counts(info) == counts(local_info)
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
    assert counts(generation.generation_info) == counts(local_info)
    assert threads and set(threads) <= set(loop_threads)
    assert len(threads) == llm.generalist.stats.requests
    if client == "session":  # both sessions released before each loop ended
        assert sum(r["method"] == "DELETE" for r in verifier.requests) == 2
        assert not verifier.service.sessions


def test_wait_released_waits_for_the_background_session_release(
    make_remote_llm, verifier, monkeypatch
):
    """A blocking call releases its session in the background; `wait_released` (and `close`)
    return only once the DELETE was answered, so counts read after it are whole."""
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
    assert llm.generalist.wait_released(timeout=0.05) is False  # still held
    threading.Timer(0.05, go.set).start()
    assert llm.generalist.wait_released() is True
    assert not verifier.service.sessions
    assert sum(r["method"] == "DELETE" for r in verifier.requests) == 1


def test_blocking_calls_release_their_sessions_on_one_thread(make_remote_llm):
    """The client's background releaser is one thread, not a thread per closed session."""
    threads = []
    record = simulated_rtt(0, sleep=lambda _: threads.append(threading.current_thread()))
    llm = make_remote_llm(max_new_tokens=8, client_options={"wrap_transport": record})
    for _ in range(3):
        llm.invoke(PROMPTS[0])
        llm.generalist.wait_released()
    releasing = [thread for thread in threads if thread.name == "specsteer-release"]
    assert len(releasing) == 3 and len(set(releasing)) == 1


def test_a_collected_client_still_releases_its_session_and_its_thread_ends(
    make_remote_llm, verifier
):
    llm = make_remote_llm(max_new_tokens=8)
    verifier.requests.clear()
    llm.invoke(PROMPTS[0])
    thread = llm.generalist.releaser._thread
    del llm
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()
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


# --- The OpenAI dialect: prefix-cached scoring and processed log-probs (issue 15) ----------


@pytest.fixture(scope="module")
def processed_server(verifier):
    """The verifier's models behind an app whose completions report processed log-probs
    (vLLM's `--logprobs-mode processed_logprobs`)."""
    with BackgroundServer(create_app(verifier.service, logprobs_mode="processed_logprobs")) as s:
        yield s


class _Recorded:
    """A blocking httpx transport that records each completion's request and response bytes."""

    def __init__(self, transport, log):
        self.transport, self.log = transport, log

    def handle_request(self, request):
        response = self.transport.handle_request(request)
        response.read()
        if request.url.path == "/v1/completions":
            self.log.append((len(request.content), len(response.content)))
        return response

    def close(self):
        self.transport.close()


def _openai(url, model, **options):
    from langchain_specsteer.remote import OpenAICompatibleGeneralist

    return OpenAICompatibleGeneralist(url, model, **options)


@pytest.mark.parametrize("scoring", ["prefixes", "prompt_logprobs"])
@pytest.mark.parametrize("method", ["generalist", "speculative", "specsteer"])
def test_both_scoring_modes_give_the_in_process_text(make_llm, make_remote_llm, method, scoring):
    """Greedy, hints as large as the vocabulary: the same text and counters (so the same
    verdicts, round by round) as in-process, whichever way the rows are asked for."""
    local_text, local_info = generate(make_llm(method=method, gamma=0.3))
    llm = make_remote_llm("openai", method=method, gamma=0.3, client_options={"scoring": scoring})
    text, info = generate(llm)
    assert text == local_text
    assert counts(info) == remote_counts(local_info, method)
    assert info["degraded"] is False and info["rounds"] > 0


def _prompt_ids(generalist, prompt=PROMPTS[0]):
    return generalist.tokenizer.encode(prompt)


def _draft_in_top(generalist, prompt, ranks):
    """A draft whose i-th token is the generalist's `ranks[i]`-th most likely (1 = argmax)."""
    draft = []
    for rank in ranks:
        row = generalist.sequence(prompt + draft).forward(1)[0, -1]
        draft.append(int(torch.topk(row, rank).indices[-1]))
    return draft


@pytest.mark.parametrize("scoring", ["prefixes", "prompt_logprobs"])
def test_a_round_asks_for_the_rows_of_its_scoring_mode(generalist, verifier, scoring):
    """prefixes: K+1 prompts (committed + draft[:i]), one new token each, no prompt
    log-probs; prompt_logprobs: one prompt with them. Both give the in-process rows."""
    from langchain_specsteer.local import LocalSession

    prompt = _prompt_ids(generalist)
    draft = _draft_in_top(generalist, prompt, [1, 3, 2])
    options = {} if scoring == "prefixes" else {"scoring": scoring}  # prefixes: the default
    client = _openai(verifier.url, verifier.service.model_name, top_logprobs=20, **options)
    session = client.open_session(prompt, vocab_size=verifier.vocab)
    body = session.request_body(draft)
    if scoring == "prefixes":
        assert body["prompt"] == [prompt + draft[:i] for i in range(4)]
        assert "prompt_logprobs" not in body
    else:
        assert body["prompt"] == prompt + draft and body["prompt_logprobs"] == 20
    assert (body["max_tokens"], body["logprobs"], body["temperature"]) == (1, 20, 0)
    verdict = session.verify(draft, "device", 0.5)
    local = LocalSession(generalist, prompt, vocab_size=verifier.vocab).verify(draft, "device", 0.5)
    listed = torch.isfinite(verdict.log_p_G)
    assert listed.sum(-1).tolist()[-1] == 20  # the bonus row: the top 20
    for i in range(4):
        top = torch.topk(local.log_p_G[i], 20).indices
        assert listed[i, top].all()
    torch.testing.assert_close(verdict.log_p_G[listed], local.log_p_G[listed], atol=1e-4, rtol=0)
    usage = client.last_usage
    if scoring == "prefixes":  # the last prompt shares all but its last token with another
        assert usage["prompt_tokens_details"]["cached_tokens"] == len(prompt) + 2
        assert usage["prompt_tokens"] == sum(len(prompt) + i for i in range(4))


def test_prefix_scoring_answers_do_not_grow_with_the_text(make_remote_llm):
    """Bytes per round received: flat over prefixes as the context grows ~25x, growing with
    it over prompt log-probs. (What is sent grows with the text in both.)"""
    short, long = PROMPTS[1], " ".join([PROMPTS[1]] * 25)
    received = {}
    for scoring in ("prefixes", "prompt_logprobs"):
        for name, prompt in (("short", short), ("long", long)):
            log = []
            options = {"scoring": scoring, "wrap_transport": lambda t, log=log: _Recorded(t, log)}
            llm = make_remote_llm(
                "openai", hint=20, method="specsteer", max_new_tokens=16, client_options=options
            )
            generate(llm, prompt=prompt)
            assert len(log) >= 2  # rounds were recorded
            received[scoring, name] = [down for _, down in log]
    assert max(received["prefixes", "long"]) < 1.3 * max(received["prefixes", "short"])
    assert max(received["prefixes", "long"]) < 20_000
    assert min(received["prompt_logprobs", "long"]) > 10 * max(received["prompt_logprobs", "short"])


def test_processed_logprobs_give_the_in_process_tempered_rows(
    generalist, verifier, processed_server
):
    """At temperature 0.7 with m = 20: over a processed-log-prob server the client's rows are
    the in-process dense tempered rows on the top 20 (nothing renormalised on the device);
    over raw log-probs the device tempers 20 entries and renormalises over them, which
    inflates them."""
    from langchain_specsteer.local import LocalSession

    prompt = _prompt_ids(generalist)
    draft = _draft_in_top(generalist, prompt, [2, 1, 5, 3])
    local = LocalSession(generalist, prompt, vocab_size=verifier.vocab, temperature=0.7)
    expected = local.verify(draft, "device", 0.5).log_p_G
    name = verifier.service.model_name
    processed = _openai(processed_server.url, name, logprobs_mode="processed_logprobs")
    session = processed.open_session(prompt, vocab_size=verifier.vocab, temperature=0.7)
    body = session.request_body(draft)
    assert body["temperature"] == 0.7
    # no processor but temperature, whatever the server's defaults (vLLM's generation config)
    neutral = {"top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}
    assert body | neutral | {"presence_penalty": 0.0, "frequency_penalty": 0.0} == body
    rows = session.verify(draft, "device", 0.5).log_p_G
    raw = _openai(verifier.url, name).open_session(
        prompt, vocab_size=verifier.vocab, temperature=0.7
    )
    raw_rows = raw.verify(draft, "device", 0.5).log_p_G
    listed = torch.isfinite(rows)
    assert listed.sum(-1).tolist() == [20] * 5
    assert torch.equal(listed, torch.isfinite(raw_rows))
    torch.testing.assert_close(rows[listed], expected[listed], atol=1e-4, rtol=0)
    assert (raw_rows[listed] - expected[listed]).min() > 0.1  # renormalised over 20: inflated


@pytest.mark.parametrize("scoring", ["prefixes", "prompt_logprobs"])
def test_sampled_ratio_decisions_over_processed_logprobs_equal_in_process(
    generalist, specialist, verifier, processed_server, scoring
):
    """With the same uniforms, the ratio test takes the same decisions on the client's rows
    (m = 20, T = 0.7) as on the in-process dense rows, with processed log-probs and prefix
    scoring (a draft token ranked 30th comes from the second request, processed too); over
    prompt log-probs (raw in vLLM even then) the draft rows are tempered on the device and the
    decisions differ."""
    from langchain_specsteer import algorithms as alg
    from langchain_specsteer.local import LocalSession

    prompt = _prompt_ids(generalist)
    draft = _draft_in_top(generalist, prompt, [4, 1, 30, 2, 12, 3])
    local = LocalSession(
        generalist,
        prompt,
        vocab_size=verifier.vocab,
        temperature=0.7,
        public_specialist=specialist,
        q_gen_prompt=prompt,
    )
    log_p_G, log_q_gen = local.rows(draft)
    client = _openai(
        processed_server.url,
        verifier.service.model_name,
        scoring=scoring,
        logprobs_mode="processed_logprobs",
    )
    rows = client.open_session(prompt, vocab_size=verifier.vocab, temperature=0.7)
    rows = rows.verify(draft, "device", 0.5).log_p_G
    at = torch.arange(len(draft)), torch.tensor(draft)
    ratios = (log_p_G[at] - log_q_gen[at]).exp()
    gamma = 2 * float(ratios[2])  # the 30th-ranked draft passes half the time
    generator = torch.Generator().manual_seed(0)
    decisions, remote_decisions = [], []
    for _ in range(200):
        uniforms = torch.rand(len(draft), generator=generator).tolist()
        decisions.append(alg.accept("ratio", draft, log_p_G, log_q_gen, gamma, uniforms))
        remote_decisions.append(alg.accept("ratio", draft, rows, log_q_gen, gamma, uniforms))
    assert 2 in decisions and max(decisions) > 2  # the 30th-ranked draft rejected, accepted
    if scoring == "prefixes":
        assert remote_decisions == decisions
    else:
        assert remote_decisions != decisions  # the approximation this mode keeps


@pytest.mark.parametrize("scoring", ["prefixes", "prompt_logprobs"])
@pytest.mark.parametrize("mode", ["raw_logprobs", "processed_logprobs"])
def test_sampling_over_the_dialect_with_full_hints_equals_in_process(
    make_llm, make_remote_llm, verifier, processed_server, scoring, mode
):
    """Hints as large as the vocabulary: tempering on the device (raw) or on the server
    (processed) gives the same sampled text as in-process."""
    fields = {"method": "specsteer", "temperature": 0.7, "seed": 3, "max_new_tokens": 24}
    local, _ = generate(make_llm(**fields))
    url = processed_server.url if mode == "processed_logprobs" else verifier.url
    options = {"scoring": scoring, "logprobs_mode": mode}
    text, info = generate(make_remote_llm("openai", url=url, client_options=options, **fields))
    assert text == local
    assert info["drafted"] > 0 and info["degraded"] is False
    assert text != generate(make_llm(**{**fields, "temperature": 0.0}))[0]  # really sampled


def test_bad_scoring_or_logprobs_mode_fail_at_construction(verifier):
    from langchain_specsteer.server.openai import OpenAICompatible

    with pytest.raises(ValueError, match=r"scoring must be one of \('prefixes', 'prompt_logp"):
        _openai("http://127.0.0.1:9", "m", scoring="prefix")
    with pytest.raises(ValueError, match=r"logprobs_mode must be one of .*--logprobs-mode"):
        _openai("http://127.0.0.1:9", "m", logprobs_mode="processed")
    with pytest.raises(ValueError, match="logprobs_mode must be one of"):
        OpenAICompatible(verifier.service, logprobs_mode="raw_logits")
    with pytest.raises(ValueError, match="logprobs_mode"):
        create_app(verifier.service, logprobs_mode="processed")


def _choice(index, row):
    return {
        "index": index,
        "logprobs": {"top_logprobs": [row]},
        "text": "",
        "finish_reason": "length",
    }


GOOD_ROWS = [{"token_id:5": -0.5, "token_id:7": -1.5}, {"token_id:9": -0.25, "token_id:5": -2.0}]


def _fill_in_answer(body):
    """A well-formed answer to the draft-values request: nothing listed at any prefix."""
    return {"choices": [_choice(i, {}) for i in range(len(body["prompt"]))]}


@pytest.mark.parametrize(
    ("status", "answer", "match"),
    [
        (200, {"choices": [_choice(0, GOOD_ROWS[0])]}, "expected 2 choices"),
        (200, {"choices": [_choice(0, GOOD_ROWS[0]), _choice(0, GOOD_ROWS[1])]}, "indices"),
        (200, {"choices": [_choice(0, GOOD_ROWS[0]), _choice(1, {"5": -1.0})]}, "token_id:N"),
        (200, {"choices": [_choice(0, GOOD_ROWS[0]), {"index": 1}]}, "logprobs"),
        (200, {"choices": [_choice(0, GOOD_ROWS[0]), _choice(1, None)]}, "no top_logprobs"),
        (200, {"object": "error"}, "choices"),
        (200, "not json", "unexpected"),
        (
            400,
            {"error": {"message": "max_logprobs is 5", "code": 400}},
            "HTTP 400: max_logprobs is 5",
        ),
    ],
)
def test_malformed_or_refused_answers_are_generalist_errors(status, answer, match):
    """A scoring answer that is not vLLM's shape, or an error, raises GeneralistError with
    what was wrong (the server's reason for a refusal); choices in any order are fine."""
    import httpx

    def reply(request):
        body = json.loads(request.content)
        if "logprob_token_ids" in body:  # the draft's own values, asked alongside: well formed
            return httpx.Response(200, json=_fill_in_answer(body))
        if answer == "not json":
            return httpx.Response(status, content=b"<html>")
        return httpx.Response(status, json=answer)

    client = _openai(
        "http://scorer",
        "m",
        max_retries=0,
        top_logprobs=2,  # the rows below list two
        wrap_transport=lambda t: httpx.MockTransport(reply),
    )
    session = client.open_session([1, 2], vocab_size=16)
    with pytest.raises(GeneralistError, match=match):
        session.verify([5], "device", 0.5)
    answer_reversed = {"choices": [_choice(1, GOOD_ROWS[1]), _choice(0, GOOD_ROWS[0])]}

    def reversed_reply(request):
        body = json.loads(request.content)
        if "logprob_token_ids" in body:
            return httpx.Response(200, json=_fill_in_answer(body))
        return httpx.Response(200, json=answer_reversed)

    client = _openai(
        "http://scorer",
        "m",
        top_logprobs=2,
        wrap_transport=lambda t: httpx.MockTransport(reversed_reply),
    )
    rows = client.open_session([1, 2], vocab_size=16).verify([5], "device", 0.5).log_p_G
    assert rows[0, 5] == -0.5 and rows[0, 7] == -1.5 and rows[1, 9] == -0.25
    assert torch.isfinite(rows).sum() == 4
    client.top_logprobs = 1  # a sampled token listed beyond the top m is dropped
    rows = client.open_session([1, 2], vocab_size=16).verify([5], "device", 0.5).log_p_G
    assert torch.isfinite(rows).nonzero().tolist() == [[0, 5], [1, 9]]


@pytest.mark.parametrize(
    ("status", "answer", "match"),
    [
        (200, "not json", "unexpected /v1/completions answer"),
        (200, {"choices": []}, "expected 1 choices"),
        (400, {"error": {"message": "unknown field", "code": 400}}, "own log-probs.*400"),
    ],
)
def test_a_malformed_or_refused_fill_in_answer_is_a_generalist_error(status, answer, match):
    """The second request of `exact_drafts` (the draft tokens' own values, sent with the
    first) is read as carefully as the first."""
    import httpx

    def reply(request):
        if "logprob_token_ids" not in json.loads(request.content):
            return httpx.Response(
                200, json={"choices": [_choice(0, GOOD_ROWS[0]), _choice(1, GOOD_ROWS[1])]}
            )
        if answer == "not json":
            return httpx.Response(status, content=b"<html>")
        return httpx.Response(status, json=answer)

    client = _openai(
        "http://scorer",
        "m",
        max_retries=0,
        top_logprobs=2,
        wrap_transport=lambda t: httpx.MockTransport(reply),
    )
    with pytest.raises(GeneralistError, match=match):
        client.open_session([1, 2], vocab_size=16).verify([3], "ratio", 0.5)  # 3 is not listed


@pytest.mark.parametrize(
    ("mode", "scoring", "raw"),
    [
        ("raw_logprobs", "prefixes", 4),
        ("raw_logprobs", "prompt_logprobs", 4),
        ("processed_logprobs", "prefixes", 0),
        ("processed_logprobs", "prompt_logprobs", 3),
    ],
)
def test_the_rows_tempered_on_the_device(mode, scoring, raw):
    """Of a 3-token draft's 4 rows, those the server sends untempered: all with raw
    log-probs; with processed ones, only prompt log-probs' (the draft rows)."""
    client = _openai("http://127.0.0.1:9", "m", logprobs_mode=mode, scoring=scoring)
    assert client.open_session([1], vocab_size=16, temperature=0.7).raw_rows(3) == raw


def _complete(url, body):
    import httpx

    return httpx.post(f"{url}/v1/completions", json=body, timeout=30)


def test_a_batch_of_prompts_is_answered_as_vllm_answers_it(generalist, verifier):
    """Our /v1/completions answers a list of token-id prompts as vLLM does: one choice per
    prompt, in order, with its index, each what that prompt alone gets; usage sums the
    prompts and counts the last prompt's tokens shared with an earlier one as cached."""
    prompt = _prompt_ids(generalist)
    prompts = [[3, 4, 5], prompt, [*prompt, 7], [*prompt, 7, 9]]
    body = {"max_tokens": 1, "temperature": 0, "logprobs": 5, "return_tokens_as_token_ids": True}
    answer = _complete(verifier.url, {**body, "prompt": prompts}).json()
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2, 3]
    for choice, alone in zip(answer["choices"], prompts, strict=True):
        single = _complete(verifier.url, {**body, "prompt": alone}).json()["choices"][0]
        assert choice["logprobs"]["tokens"] == single["logprobs"]["tokens"]
        for got, want in zip(
            choice["logprobs"]["top_logprobs"][0].items(),
            single["logprobs"]["top_logprobs"][0].items(),
            strict=True,
        ):
            assert got[0] == want[0] and got[1] == pytest.approx(want[1], abs=1e-5)
    usage = answer["usage"]
    assert usage["prompt_tokens"] == sum(map(len, prompts))
    assert usage["completion_tokens"] == 4
    assert usage["prompt_tokens_details"] == {"cached_tokens": len(prompt) + 1}


def test_processed_logprobs_temper_the_generated_token_only(generalist, processed_server):
    """As vLLM's processed_logprobs: the generated token's log-probs are log_softmax(logits/T);
    prompt log-probs stay raw; at temperature 0 both are raw."""
    prompt = [5, 6, 7, 8]
    with torch.inference_mode():
        logits = generalist.model(torch.tensor([prompt])).logits[0].float()
    body = {"prompt": prompt, "max_tokens": 1, "logprobs": 4, "prompt_logprobs": 4}
    body["return_tokens_as_token_ids"] = True
    for temperature in (0.7, 0.0):
        choice = _complete(processed_server.url, {**body, "temperature": temperature}).json()
        choice = choice["choices"][0]
        tempered = torch.log_softmax(logits[-1] / (temperature or 1.0), -1)
        top = torch.topk(tempered, 4)
        listed = {
            int(k.removeprefix("token_id:")): v
            for k, v in choice["logprobs"]["top_logprobs"][0].items()
        }
        for t, v in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            assert listed[t] == pytest.approx(v, abs=1e-4)
        raw = torch.log_softmax(logits[0], -1)
        assert choice["prompt_logprobs"][1][str(prompt[1])]["logprob"] == pytest.approx(
            float(raw[prompt[1]]), abs=1e-4
        )


@pytest.mark.parametrize(
    ("body", "status", "param", "match"),
    [
        ({"prompt": [[1]] * 66}, 413, "prompt", r"66 prompts; this server scores at most 65"),
        ({"prompt": [[1], []]}, 400, "prompt", r"prompt\[1\] is empty"),
        ({"prompt": [[1], [1, 10**6]]}, 400, "prompt", r"prompt\[1\] holds token id 1000000"),
        ({"prompt": [1], "top_p": 0.5}, 400, "top_p", "below 1 only when generating"),
        ({"prompt": [1], "top_k": 5}, 400, "top_k", "no sampling processor but temperature"),
        ({"prompt": [1], "repetition_penalty": 1.1}, 400, "repetition_penalty", "penalty"),
    ],
)
def test_bad_batches_and_sampling_processors_get_4xx(verifier, body, status, param, match):
    response = _complete(verifier.url, {"max_tokens": 1, **body})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param
    assert re.search(match, error["message"]), error["message"]


@pytest.mark.parametrize("method", ["specsteer", "speculative"])
def test_prefix_scoring_at_m_20_equals_prompt_logprobs(make_remote_llm, verifier, method):
    """At m = 20 the draft tokens' own values are asked for in a second request sent with the
    first (vLLM's logprob_token_ids), so prefix scoring decides every round as prompt
    log-probs do (exactly) and writes the same text; greedy speculative never needs it."""
    fields = {"method": method, "gamma": 0.3, "max_new_tokens": 24}

    def run(api="sync", **options):
        verifier.requests.clear()
        llm = make_remote_llm("openai", hint=20, client_options=options, **fields)
        text, info = generate(llm, api=api)
        bodies = [
            json.loads(r["body"]) for r in verifier.requests if r["path"] == "/v1/completions"
        ]
        scoring = [b["prompt"] for b in bodies if "logprob_token_ids" not in b]
        # each fill-in goes with its round's request: (that round's prompts, the fill-in)
        fill_ins = [
            (next(p for p in scoring if all(q in p for q in body["prompt"])), body)
            for body in bodies
            if "logprob_token_ids" in body
        ]
        return text, counts(info), fill_ins

    reference = run(scoring="prompt_logprobs")
    text, run_counts, fill_ins = run()
    assert (text, run_counts) == reference[:2]
    assert run(api="async")[:2] == reference[:2]  # the async driver performs both requests
    if method == "speculative":
        assert fill_ins == []
        return
    assert fill_ins  # every ratio-tested round asks
    for prompts, body in fill_ins:  # again some of the round's prefixes; drafted ids asked
        assert body["logprobs"] == 0 and body["max_tokens"] == 1
        assert body["prompt"] and all(prompt in prompts for prompt in body["prompt"])
        assert set(body["logprob_token_ids"]) <= set(prompts[-1][len(prompts[0]) :])
    without, without_counts, none = run(exact_drafts=False)
    assert none == []
    assert (without, without_counts) != reference[:2]  # unlisted drafts rejected instead


def test_unlisted_draft_tokens_get_their_exact_log_probs(generalist, verifier):
    """A draft token ranked 30th and 45th: its own log p_G comes back exact (the in-process
    value) from the second request; with exact_drafts=False it is not listed (−inf)."""
    from langchain_specsteer.local import LocalSession

    prompt = _prompt_ids(generalist)
    draft = _draft_in_top(generalist, prompt, [1, 30, 2, 45])
    local = LocalSession(generalist, prompt, vocab_size=verifier.vocab).verify(draft, "device", 1)
    at = torch.arange(4), torch.tensor(draft)
    name = verifier.service.model_name
    for exact in (True, False):
        client = _openai(verifier.url, name, exact_drafts=exact)
        session = client.open_session(prompt, vocab_size=verifier.vocab)
        assert session.fill_in_body(draft, [1, 3])["prompt"] == [
            prompt + draft[:1],
            prompt + draft[:3],
        ]
        rows = session.verify(draft, "ratio", 0.5).log_p_G
        if exact:
            torch.testing.assert_close(rows[at], local.log_p_G[at], atol=1e-4, rtol=0)
        else:
            assert rows[at][[1, 3]].isinf().all() and rows[at][[0, 2]].isfinite().all()
        requests = client.stats.requests
        session.verify(draft, "match", 0.5)  # greedy speculative reads only the argmax
        assert client.stats.requests == requests + 1
        assert client.stats.requests == (3 if exact else 2)


def test_logprob_token_ids_list_the_draw_and_the_asked_tokens(generalist, verifier):
    """As vLLM: the generated token's top_logprobs hold the drawn token, then the asked ids,
    instead of the top n; refused without logprobs, past 128 ids or outside the vocabulary."""
    prompt = [5, 6, 7, 8]
    with torch.inference_mode():
        raw = torch.log_softmax(generalist.model(torch.tensor([prompt])).logits[0, -1].float(), -1)
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 0}
    body |= {"logprob_token_ids": [400, 3], "return_tokens_as_token_ids": True}
    top = _complete(verifier.url, body).json()["choices"][0]["logprobs"]["top_logprobs"][0]
    argmax = int(raw.argmax())
    assert list(top) == [f"token_id:{t}" for t in (argmax, 400, 3)]
    for t in (argmax, 400, 3):
        assert top[f"token_id:{t}"] == pytest.approx(float(raw[t]), abs=1e-4)
    for bad, match in (
        ({"logprobs": None}, "`logprobs` must be set"),
        ({"logprob_token_ids": list(range(129))}, "at most 128"),
        ({"logprob_token_ids": [10**6]}, "outside the vocabulary"),
    ):
        response = _complete(verifier.url, body | bad)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "logprob_token_ids" and match in error["message"]


def test_serve_takes_the_logprobs_mode_flag(tiny_dir, generalist, monkeypatch):
    """`specsteer serve --logprobs-mode processed_logprobs` answers as vLLM with that flag
    (the generated token's log-probs after temperature); the default stays raw."""
    import uvicorn
    from starlette.testclient import TestClient

    from langchain_specsteer.cli import main

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: apps.append(app))
    serve = ["serve", "--generalist", str(tiny_dir / "generalist"), "--device", "cpu"]
    assert main(serve) == 0
    assert main([*serve, "--logprobs-mode", "processed_logprobs"]) == 0
    prompt = [5, 6, 7]
    with torch.inference_mode():
        logits = generalist.model(torch.tensor([prompt])).logits[0, -1].float()
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0.5, "logprobs": 1}
    body["return_tokens_as_token_ids"] = True
    for app, temperature in zip(apps, (1.0, 0.5), strict=True):
        top = TestClient(app).post("/v1/completions", json=body).json()["choices"][0]
        best, value = max(top["logprobs"]["top_logprobs"][0].items(), key=lambda kv: kv[1])
        expected = torch.log_softmax(logits / temperature, -1)
        assert best == f"token_id:{int(expected.argmax())}"
        assert value == pytest.approx(float(expected.max()), abs=1e-4)


def test_rows_cut_short_beside_a_draft_values_request_are_scored_again(recwarn):
    """vLLM 0.32 lists only a couple of tokens in the top log-probs of a request batched with
    a `logprob_token_ids` one. The client sees the short rows, scores the round again alone,
    and stops asking for draft values (warning once)."""
    import httpx

    full = [{f"token_id:{t}": -0.1 * (t + 1) for t in range(4)} for _ in range(2)]
    short = [dict(list(row.items())[:1]) for row in full]
    asked = {"scoring": 0, "values": 0}

    def reply(request):
        body = json.loads(request.content)
        if "logprob_token_ids" in body:
            asked["values"] += 1
            return httpx.Response(200, json=_fill_in_answer(body))
        asked["scoring"] += 1
        rows = short if asked["scoring"] == 1 else full
        return httpx.Response(200, json={"choices": [_choice(i, r) for i, r in enumerate(rows)]})

    client = _openai(
        "http://scorer", "m", top_logprobs=4, wrap_transport=lambda t: httpx.MockTransport(reply)
    )
    rows = client.open_session([1, 2], vocab_size=16).verify([5], "ratio", 0.5).log_p_G
    assert torch.isfinite(rows).sum() == 8  # the second, whole answer
    assert asked == {"scoring": 2, "values": 1} and client.exact_drafts is False
    assert any("scored again" in str(w.message) for w in recwarn.list)
    client.open_session([1, 2], vocab_size=16).verify([5], "ratio", 0.5)
    assert asked == {"scoring": 3, "values": 1}  # draft values no longer asked


@pytest.mark.parametrize("short_answers", [3, 4])
def test_rescoring_tries_again_while_requests_in_flight_cut_rows_short(short_answers):
    """Rounds in flight may still have draft-value requests running beside the rescoring:
    the client scores again up to RESCORES times after the first short answer, then says
    the server keeps cutting rows short."""
    import httpx

    from langchain_specsteer.remote.openai import RESCORES

    full = [{f"token_id:{t}": -0.1 * (t + 1) for t in range(4)} for _ in range(2)]
    short = [dict(list(row.items())[:1]) for row in full]
    asked = {"scoring": 0}

    def reply(request):
        body = json.loads(request.content)
        if "logprob_token_ids" in body:
            return httpx.Response(200, json=_fill_in_answer(body))
        asked["scoring"] += 1
        rows = short if asked["scoring"] <= short_answers else full
        return httpx.Response(200, json={"choices": [_choice(i, r) for i, r in enumerate(rows)]})

    client = _openai(
        "http://scorer", "m", top_logprobs=4, wrap_transport=lambda t: httpx.MockTransport(reply)
    )
    session = client.open_session([1, 2], vocab_size=16)
    with pytest.warns(RuntimeWarning, match="scored again"):
        if short_answers <= RESCORES:
            assert torch.isfinite(session.verify([5], "ratio", 0.5).log_p_G).sum() == 8
        else:
            with pytest.raises(GeneralistError, match="keeps returning fewer top log-probs"):
                session.verify([5], "ratio", 0.5)
    assert asked["scoring"] == min(short_answers, RESCORES) + 1


def test_after_asks_for_unlisted_draft_values_only_after_the_answer():
    """exact_drafts="after": one request when every draft token is listed; a second, after
    the first answer, when one is not, whose value then stands in its row."""
    import httpx

    listed = [{f"token_id:{t}": -0.1 * (t + 1) for t in range(4)} for _ in range(2)]
    order = []

    def reply(request):
        body = json.loads(request.content)
        if "logprob_token_ids" in body:
            order.append("values")
            choice = _choice(0, {"token_id:9": -0.25})
            return httpx.Response(200, json={"choices": [choice]})
        order.append("scoring")
        return httpx.Response(200, json={"choices": [_choice(i, r) for i, r in enumerate(listed)]})

    client = _openai(
        "http://scorer",
        "m",
        top_logprobs=4,
        exact_drafts="after",
        wrap_transport=lambda t: httpx.MockTransport(reply),
    )
    client.open_session([1, 2], vocab_size=16).verify([2], "ratio", 0.5)
    assert order == ["scoring"]
    rows = client.open_session([1, 2], vocab_size=16).verify([9], "ratio", 0.5).log_p_G
    assert order == ["scoring", "scoring", "values"]
    assert rows[0, 9] == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="exact_drafts"):
        _openai("http://scorer", "m", exact_drafts="sometimes")
