"""Privacy (docs/design.md §3): nothing derived from the private context reaches the public side.

The generalist's weights and every public sequence (the generalist's, and the specialist's
q_gen sequence, which a cloud copy may compute) are recorded; the private context's text
and token-id runs must never be among them, for every method.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser

from langchain_specsteer import METHODS
from langchain_specsteer.methods import METHOD_SPECS
from langchain_specsteer.models import TokenSequence
from tests.conftest import PROMPTS

SECRET = "Zorblax quantum marmalade, my PIN is 4417, I live at 12 Quibble Lane"


def runs(ids: list[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)}


@pytest.fixture
def recorded(generalist, monkeypatch):
    """Everything that reaches the generalist (the texts it is asked to encode, the prompts
    its sessions open on, the ids its model is fed), and every sequence started on either
    model."""
    seen = {"generalist_inputs": [], "generalist_texts": [], "session_prompts": [], "sequences": []}
    hook = generalist.model.register_forward_pre_hook(
        lambda _m, _a, kw: seen["generalist_inputs"].append(kw["input_ids"][0].tolist()),
        with_kwargs=True,
    )
    cls = type(generalist)
    original_encode, original_encode_messages = cls.encode, cls.encode_messages
    original_open_session = cls.open_session

    def encode(self, text, **kwargs):
        if self is generalist:
            seen["generalist_texts"].append(text)
        return original_encode(self, text, **kwargs)

    def encode_messages(self, messages, **kwargs):  # also what `aencode_messages` calls
        if self is generalist:
            seen["generalist_texts"].append(json.dumps(list(messages), ensure_ascii=False))
        return original_encode_messages(self, messages, **kwargs)

    def open_session(self, prompt, **kwargs):
        if self is generalist:
            seen["session_prompts"].append(list(prompt))
        return original_open_session(self, prompt, **kwargs)

    original_init = TokenSequence.__init__

    def init(self, lm, prompts, vocab_size=None):
        original_init(self, lm, prompts, vocab_size)
        seen["sequences"].append(self)

    monkeypatch.setattr(cls, "encode", encode)
    monkeypatch.setattr(cls, "encode_messages", encode_messages)
    monkeypatch.setattr(cls, "open_session", open_session)
    monkeypatch.setattr(TokenSequence, "__init__", init)
    yield seen
    hook.remove()


PRIVATE_WORDS = ("Zorblax", "marmalade", "4417", "Quibble", "mornings", "Crunchy")


def assert_generalist_saw_only_public(recorded, llm, prompt, secret_runs, n):
    """The generalist was asked for `prompt` (so the recording is live), and nothing it got
    (texts, session prompts, model inputs) holds a private word or a secret run of `n` ids."""
    texts = recorded["generalist_texts"]
    assert texts and all(prompt in text for text in texts), texts
    assert recorded["session_prompts"] and recorded["generalist_inputs"]
    fed = recorded["session_prompts"] + recorded["generalist_inputs"]
    for ids in fed:
        assert not runs(ids, n) & secret_runs
    decoded = [llm.generalist.tokenizer.decode(ids) for ids in fed]
    for word in PRIVATE_WORDS:
        assert all(word not in text for text in texts + decoded), word


@pytest.mark.parametrize("batch_specialist", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_private_context_never_reaches_the_public_side(
    make_llm, recorded, method, batch_specialist
):
    llm = make_llm(method=method, max_new_tokens=24, gamma=0.3, batch_specialist=batch_specialist)
    context_ids = llm.specialist.tokenizer.encode(SECRET, add_special_tokens=False)
    secret_runs = runs(context_ids, 3)
    context = [SECRET, "Also: I hate mornings."]
    prompts = llm.render_prompts(PROMPTS[0], context)
    recorded["generalist_texts"].clear()  # rendering asks the generalist to encode the prompt
    result = llm.generate([PROMPTS[0]], private_context=context)

    private_seqs = [
        s for s in recorded["sequences"] if s.tokens[: len(prompts.private)] == prompts.private
    ]
    public_seqs = [s for s in recorded["sequences"] if s not in private_seqs]
    if method != "generalist":  # the specialist did read the context
        assert len(private_seqs) == 1 and private_seqs[0].lm is llm.specialist
    for seq in public_seqs:
        assert not runs(seq.tokens, 3) & secret_runs
        assert "Zorblax" not in llm.specialist.tokenizer.decode(seq.tokens)
    everything = [t for fed in recorded["generalist_inputs"] for t in fed]
    assert not runs(everything, 3) & secret_runs
    if method == "specialist":  # the generalist is not even asked to encode
        assert recorded["generalist_texts"] == recorded["generalist_inputs"] == []
    else:
        assert_generalist_saw_only_public(recorded, llm, PROMPTS[0], secret_runs, 3)
        assert [s.lm for s in public_seqs].count(llm.generalist) >= 1
    info = result.generations[0][0].generation_info
    assert info["private_context"] is True and info["new_tokens"] > 0


def test_the_async_path_sends_the_generalist_public_text_only(make_llm, recorded):
    llm = make_llm(method="specsteer", max_new_tokens=6, gamma=0.3)
    secret_runs = runs(llm.specialist.tokenizer.encode(SECRET, add_special_tokens=False), 3)
    asyncio.run(llm.ainvoke(PROMPTS[0], private_context=[SECRET, "I hate mornings."]))
    assert_generalist_saw_only_public(recorded, llm, PROMPTS[0], secret_runs, 3)


def test_the_recorder_catches_a_text_leak(make_llm, recorded, monkeypatch):
    """Giving the generalist the specialist's private turns is caught by the text recording
    and the session prompts: the checks above can fail."""
    llm = make_llm(method="generalist", max_new_tokens=3)
    turns = type(llm)._turns

    def leaky(self, messages, context):
        _public, private = turns(self, messages, context)
        return private, private

    monkeypatch.setattr(type(llm), "_turns", leaky)
    llm.invoke(PROMPTS[0], private_context=SECRET)
    secret_runs = runs(llm.specialist.tokenizer.encode(SECRET, add_special_tokens=False), 3)
    assert any("Zorblax" in text for text in recorded["generalist_texts"])
    assert any(runs(ids, 3) & secret_runs for ids in recorded["session_prompts"])
    with pytest.raises(AssertionError):
        assert_generalist_saw_only_public(recorded, llm, PROMPTS[0], secret_runs, 3)


def test_the_recorder_catches_a_leak(make_llm, recorded, monkeypatch):
    """A deliberately leaky prompt renderer is caught: the checks above can fail."""
    llm = make_llm(method="generalist", max_new_tokens=3)
    encode = type(llm)._encode

    def leaky(self, prompt, context, *args):
        prompts = encode(self, prompt, context, *args)
        return type(prompts)(prompts.private, prompts.public_specialist, prompts.private)

    monkeypatch.setattr(type(llm), "_encode", leaky)
    llm.invoke(PROMPTS[0], private_context=SECRET)
    secret_runs = runs(llm.specialist.tokenizer.encode(SECRET, add_special_tokens=False), 3)
    everything = [t for fed in recorded["generalist_inputs"] for t in fed]
    assert runs(everything, 3) & secret_runs


class StartRecorder(BaseCallbackHandler):
    """Keeps everything LangChain tells callbacks (and so tracers) when a run starts."""

    def __init__(self):
        self.seen: list[str] = []

    def on_llm_start(self, serialized, prompts, **kwargs):
        self.seen.append(json.dumps([serialized, prompts, kwargs], default=repr))


def test_private_context_stays_out_of_callbacks_and_tracing(make_llm):
    llm = make_llm(max_new_tokens=4)
    recorder = StartRecorder()
    config = {"callbacks": [recorder]}
    llm.invoke(PROMPTS[0], config, private_context=SECRET)
    list(llm.stream(PROMPTS[0], config, private_context=[SECRET]))
    llm.batch([PROMPTS[0], PROMPTS[1]], config, private_context=SECRET)
    chain = llm.bind(private_context=SECRET) | StrOutputParser()
    chain.invoke(PROMPTS[0], config)
    list(chain.stream(PROMPTS[0], config))

    async def consume():
        return [piece async for piece in llm.astream(PROMPTS[0], config, private_context=SECRET)]

    asyncio.run(consume())
    assert len(recorder.seen) == 7
    for event in recorder.seen:
        assert "Zorblax" not in event and "4417" not in event
    # ...while the specialist did get it
    assert llm.invoke(PROMPTS[0], method="specialist", private_context=SECRET) != llm.invoke(
        PROMPTS[0], method="specialist"
    )


class RetrieverRecorder(StartRecorder):
    def on_retriever_start(self, serialized, query, **kwargs):
        self.seen.append(f"retriever_start {query}")

    def on_retriever_end(self, documents, **kwargs):
        self.seen.append(json.dumps([d.page_content for d in documents]))


@pytest.mark.parametrize("method", METHODS)
def test_retrieved_memory_never_reaches_the_public_side(make_llm, recorded, tmp_path, method):
    from retrievers import PersonalBM25Retriever, PrivateMemory

    with PrivateMemory(tmp_path / "secret.db") as memory:
        memory.add([SECRET, "I hate mornings.", "Crunchy is my favourite word."])
        bm25 = PersonalBM25Retriever.from_memory(memory, k=2)
        llm = make_llm(method=method, max_new_tokens=16, gamma=0.3, retriever=bm25)
        prompt = "Tell me something about quantum things."
        callbacks = RetrieverRecorder()
        result = llm.generate([prompt], callbacks=[callbacks])
        context, retrieved = llm.private_context_for(prompt)
    assert result.generations[0][0].generation_info["retrieved"] == retrieved == 2
    assert SECRET in context  # the secret was retrieved for the specialist...
    encode = llm.specialist.tokenizer.encode
    # the tiny tokenizer spells rare words letter by letter: runs the public prompt shares with
    # the secret (" quantum") are public, so only the others count
    secret_runs = runs(encode(SECRET), 5) - runs(encode(prompt), 5)
    everything = [t for fed in recorded["generalist_inputs"] for t in fed]
    assert not runs(everything, 5) & secret_runs  # ...and never reached the generalist
    if method == "specialist":
        assert recorded["generalist_texts"] == recorded["generalist_inputs"] == []
    else:
        assert_generalist_saw_only_public(recorded, llm, prompt, secret_runs, 5)
    assert len(callbacks.seen) == 1  # on_llm_start only: retrieval ran without callbacks
    assert "Zorblax" not in callbacks.seen[0]


OPEN_FIELDS = {
    "prompt_ids", "q_gen_prompt_ids", "temperature", "top_m", "vocab_size",  # specsteer/1
    "public_prompt", "vocab_signature",  # specsteer/2: public turns, the expected vocabulary
}  # fmt: skip
PUBLIC_PROMPT_FIELDS = {"messages", "chat_template_kwargs", "tools", "prompt", "then_ids"}
SESSION_FIELDS = OPEN_FIELDS | {
    "position", "append", "draft", "rule", "gamma", "uniforms",  # round
    "seq", "speculative", "open",  # specsteer/2: the round's number, sent ahead, the opening
}  # fmt: skip
STREAM_FIELDS = {"stream", "seed", "top_p"}  # method "generalist": one streamed completion
OPENAI_FIELDS = {
    "model", "prompt", "max_tokens", "temperature", "logprobs", "prompt_logprobs",
    "return_tokens_as_token_ids",
    "logprob_token_ids",  # exact_drafts' second request: the draft's own ids (output)
} | STREAM_FIELDS  # fmt: skip
TOKENIZE_FIELDS = {
    "model",
    "prompt",
    "messages",
    "add_generation_prompt",
    "chat_template_kwargs",
    "tools",
}


def id_lists(value) -> list[list[int]]:
    """Every list of ints in a JSON value."""
    if isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [value]
        return [ids for v in value for ids in id_lists(v)]
    if isinstance(value, dict):
        return [ids for v in value.values() for ids in id_lists(v)]
    return []


@pytest.mark.parametrize("client", ["session", "openai", "openai-top20"])
@pytest.mark.parametrize("method", METHODS)
def test_nothing_private_crosses_the_wire(make_remote_llm, verifier, tmp_path, method, client):
    """Every request the verifier service receives (URL and body) is recorded, for a call with
    a private context and one whose context is retrieved from private memory, with rounds in
    flight (sent ahead of verdicts, on drafts and guessed tokens)."""
    from retrievers import PersonalBM25Retriever, PrivateMemory

    decode = verifier.service.generalist.tokenizer.decode
    encode = verifier.service.generalist.tokenizer.encode
    prompt = "Tell me something about quantum things."
    with PrivateMemory(tmp_path / "secret.db") as memory:
        memory.add([SECRET, "I hate mornings.", "Crunchy is my favourite word."])
        bm25 = PersonalBM25Retriever.from_memory(memory, k=2)
        hint = 20 if client == "openai-top20" else None  # prefix scoring's second requests
        llm = make_remote_llm(
            client.removesuffix("-top20"),
            hint=hint,
            method=method,
            gamma=0.3,
            max_new_tokens=16,
            retriever=bm25,
            rounds_in_flight=4,
        )
        verifier.requests.clear()
        explicit = llm.generate([PROMPTS[0]], private_context=[SECRET, "I hate mornings."])
        retrieved = llm.generate([prompt])
        context, _ = llm.private_context_for(prompt)

        async def async_calls():  # the async path: its own retrieval, encoding and HTTP
            explicit = await llm.ainvoke(PROMPTS[0], private_context=[SECRET, "I hate mornings."])
            retrieved = "".join([piece async for piece in llm.astream(prompt)])
            await llm.generalist.aclose()
            return explicit, retrieved

        async_texts = asyncio.run(async_calls())
    assert async_texts == (explicit.generations[0][0].text, retrieved.generations[0][0].text)
    assert SECRET in context  # the specialist did get the secret
    assert explicit.generations[0][0].generation_info["private_context"] is True
    assert retrieved.generations[0][0].generation_info["retrieved"] == 2
    requests = list(verifier.requests)
    if method != "specialist":
        assert any(r["path"].endswith(("/rounds", "/completions")) for r in requests)
    # runs the public prompts share with the secret (" quantum") are public
    secret_runs = runs(encode(SECRET), 5) - runs(encode(prompt), 5) - runs(encode(PROMPTS[0]), 5)
    allowed = (SESSION_FIELDS if client == "session" else set()) | OPENAI_FIELDS | TOKENIZE_FIELDS
    if client == "openai-top20" and method == "specsteer":  # its second requests were made
        assert any(b"logprob_token_ids" in r["body"] for r in requests)
    if client == "session" and METHOD_SPECS[method].drafts:  # rounds were sent ahead
        assert any(b'"speculative":true' in r["body"] for r in requests)
    for request in requests:
        raw = request["path"] + request["query"] + request["body"].decode()
        for word in ("Zorblax", "4417", "Quibble", "mornings", "Crunchy", "marmalade"):
            assert word not in raw
        if not request["body"]:
            continue
        body = json.loads(request["body"])
        assert set(body) <= allowed, set(body) - allowed  # no field could carry q_ctx values
        opening = body.get("open") or {}
        assert set(opening) <= OPEN_FIELDS, set(opening) - OPEN_FIELDS
        public_prompt = opening.get("public_prompt") or {}
        assert set(public_prompt) <= PUBLIC_PROMPT_FIELDS
        for ids in id_lists(body):
            assert not runs(ids, 5) & secret_runs
            assert "Zorblax" not in decode(ids) and "4417" not in decode(ids)


def test_the_wire_recorder_catches_a_leak(make_remote_llm, verifier, monkeypatch):
    """A deliberately leaky prompt renderer is caught in the recorded request bodies."""
    llm = make_remote_llm(method="generalist", max_new_tokens=3)
    encode = type(llm)._encode

    def leaky(self, prompt, context, *args):
        prompts = encode(self, prompt, context, *args)
        return type(prompts)(prompts.private, prompts.public_specialist, prompts.private)

    monkeypatch.setattr(type(llm), "_encode", leaky)
    verifier.requests.clear()
    llm.invoke(PROMPTS[0], private_context=SECRET)
    secret_runs = runs(llm.specialist.tokenizer.encode(SECRET, add_special_tokens=False), 5)
    sent = [ids for r in verifier.requests if r["body"] for ids in id_lists(json.loads(r["body"]))]
    assert any(runs(ids, 5) & secret_runs for ids in sent)


# Private tool results (issue 18): a `recall_memory` result is read by the specialist only.
TOOL_SECRET = "Zorblax quantum marmalade: my PIN is 4417 and I live at 12 Quibble Lane"
TOOL_REQUEST = "Write my review of the blender in my style."
RECALL = {
    "type": "function",
    "function": {
        "name": "recall_memory",
        "description": "Search the user's private memory.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


def tool_history(secret: str = TOOL_SECRET):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    call = {"name": "recall_memory", "args": {"query": "blender"}, "id": "call_1"}
    return [
        HumanMessage(TOOL_REQUEST),
        AIMessage("", tool_calls=[call]),
        ToolMessage(secret, tool_call_id="call_1"),  # named by its call: recall_memory
    ]


def tool_secret_runs(tokenizer, n: int = 3) -> set[tuple[int, ...]]:
    """The result's id runs, less those the public side has anyway (request, placeholder,
    tool schema, call)."""
    from langchain_specsteer.tools import PRIVATE_RESULT

    public = TOOL_REQUEST + PRIVATE_RESULT + json.dumps(RECALL) + '{"query": "blender"}'
    return runs(tokenizer.encode(TOOL_SECRET, add_special_tokens=False), n) - runs(
        tokenizer.encode(public, add_special_tokens=False), n
    )


@pytest.mark.parametrize("method", METHODS)
def test_a_private_tool_result_never_reaches_the_generalist(
    specialist, generalist, recorded, method
):
    from langchain_specsteer import ChatSpecSteer
    from langchain_specsteer.tools import PRIVATE_RESULT

    chat = ChatSpecSteer(
        specialist=specialist, generalist=generalist, method=method, gamma=0.3, max_tokens=16
    )
    message = chat.bind_tools([RECALL]).invoke(tool_history())
    assert message.response_metadata["new_tokens"] > 0
    secret_runs = tool_secret_runs(specialist.tokenizer)
    assert len(secret_runs) > 20
    private = [s for s in recorded["sequences"] if s.lm is specialist and "Zorblax" in
               specialist.tokenizer.decode(s.prompts[0])]  # fmt: skip
    public_seqs = [s for s in recorded["sequences"] if s not in private]
    if method != "generalist":  # the specialist read the result...
        assert len(private) == 1
    for seq in public_seqs:  # ...and no public sequence (q_gen, the generalist's) holds it
        for row in seq.row_tokens():
            assert not runs(row, 3) & secret_runs
    if method == "specialist":
        assert recorded["generalist_texts"] == recorded["generalist_inputs"] == []
        return
    texts = recorded["generalist_texts"]
    assert texts and all(PRIVATE_RESULT in text and TOOL_REQUEST in text for text in texts)
    fed = recorded["session_prompts"] + recorded["generalist_inputs"]
    assert recorded["session_prompts"] and recorded["generalist_inputs"]
    for ids in fed:
        assert not runs(ids, 3) & secret_runs
    decoded = [generalist.tokenizer.decode(ids) for ids in fed]
    for word in ("Zorblax", "marmalade", "4417", "Quibble"):
        assert all(word not in text for text in texts + decoded), word


def test_a_tool_is_public_unless_named_private(specialist, generalist, recorded):
    """The same result from a tool not in `private_tools` is the generalist's to read (so the
    checks above are not vacuous), and a planted leak of a private one is caught."""
    from langchain_specsteer import ChatSpecSteer

    chat = ChatSpecSteer(
        specialist=specialist, generalist=generalist, max_tokens=3, private_tools=set()
    )
    chat.bind_tools([RECALL]).invoke(tool_history())
    assert any("Zorblax" in text for text in recorded["generalist_texts"])
    secret_runs = tool_secret_runs(specialist.tokenizer)
    assert any(runs(ids, 3) & secret_runs for ids in recorded["session_prompts"])


def test_the_recorder_catches_a_planted_tool_result_leak(
    specialist, generalist, recorded, monkeypatch
):
    from langchain_specsteer import ChatSpecSteer, chat_models

    monkeypatch.setattr(chat_models, "_public_turn", lambda turn: dict(turn))  # leaks
    chat = ChatSpecSteer(specialist=specialist, generalist=generalist, max_tokens=3)
    chat.bind_tools([RECALL]).invoke(tool_history())
    secret_runs = tool_secret_runs(specialist.tokenizer)
    everything = [t for fed in recorded["generalist_inputs"] for t in fed]
    assert runs(everything, 3) & secret_runs
    assert any("Zorblax" in text for text in recorded["generalist_texts"])


@pytest.mark.parametrize("client", ["session", "openai"])
@pytest.mark.parametrize("method", METHODS)
def test_a_private_tool_result_never_crosses_the_wire(
    make_remote_llm, verifier, recorded, method, client
):
    """Every request body the verifier service receives, and every input its generalist is
    fed, for a conversation holding a private tool result (blocking and async calls)."""
    from langchain_specsteer import ChatSpecSteer

    remote = make_remote_llm(client)
    chat = ChatSpecSteer(
        specialist=remote.specialist,
        generalist=remote.generalist,
        method=method,
        gamma=0.3,
        max_tokens=16,
    ).bind_tools([RECALL])
    verifier.requests.clear()
    message = chat.invoke(tool_history())

    async def awaited():
        reply = await chat.ainvoke(tool_history())
        await remote.generalist.aclose()
        return reply

    assert asyncio.run(awaited()).content == message.content
    requests = list(verifier.requests)
    if method == "specialist":  # the generalist is not even asked to encode
        assert requests == [] and recorded["generalist_inputs"] == []
    else:
        assert any(r["path"].endswith("/tokenize") for r in requests) or client == "session"
        assert any(r["path"].endswith(("/rounds", "/completions")) for r in requests)
        assert recorded["generalist_inputs"]
    decode = verifier.service.generalist.tokenizer.decode
    secret_runs = tool_secret_runs(verifier.service.generalist.tokenizer, 5)
    allowed = (SESSION_FIELDS if client == "session" else set()) | OPENAI_FIELDS | TOKENIZE_FIELDS
    for request in requests:
        raw = request["path"] + request["query"] + request["body"].decode()
        for word in ("Zorblax", "4417", "Quibble", "marmalade"):
            assert word not in raw
        if request["body"]:
            body = json.loads(request["body"])
            assert set(body) <= allowed, set(body) - allowed
            for ids in id_lists(body):
                assert not runs(ids, 5) & secret_runs
                assert "Zorblax" not in decode(ids)
    for ids in recorded["generalist_inputs"]:
        assert not runs(ids, 5) & secret_runs


# LangChain's LLM cache (issue 23 item 1): an entry is keyed by the prompt and the model's
# "llm string"; a stored key must tell nothing about the private context, and no entry may be
# served to a call with another context, other decoding settings or a retrieved context.
OTHER = "Quorvane velvet teapot, my PIN is 9023, I only drink rooibos"
PROMPT = PROMPTS[1]  # one the tiny specialist answers differently for SECRET and OTHER


@pytest.fixture
def llm_cache():
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import get_llm_cache, set_llm_cache

    before = get_llm_cache()
    cache = InMemoryCache()
    set_llm_cache(cache)
    yield cache
    set_llm_cache(before)


@pytest.fixture(params=["llm", "chat"])
def make_model(request, specialist, generalist):
    """`SpecSteerLLM` or `ChatSpecSteer` on the tiny pair, and a call giving its text."""
    from langchain_specsteer import ChatSpecSteer, SpecSteerLLM

    cls = SpecSteerLLM if request.param == "llm" else ChatSpecSteer

    def make(**fields):
        fields = {"max_new_tokens": 12, "method": "specialist", **fields}
        return cls(specialist=specialist, generalist=generalist, **fields)

    def text(model, *args, **kwargs):
        out = model.invoke(*args, **kwargs)
        return out if isinstance(out, str) else out.content

    return make, text


def test_the_cache_never_serves_one_context_or_setting_for_another(make_model, llm_cache):
    make, text = make_model
    model, uncached = make(), make(cache=False)
    assert text(model, PROMPT, private_context=SECRET) == text(
        uncached, PROMPT, private_context=SECRET
    )
    calls = [
        {"private_context": OTHER},
        {"method": "generalist"},
        {"private_context": SECRET, "temperature": 0.8, "seed": 1},
        {"private_context": SECRET, "temperature": 0.8, "seed": 2},
        {"private_context": SECRET, "max_new_tokens": 5},
    ]
    for kwargs in calls:
        assert text(model, PROMPT, **kwargs) == text(uncached, PROMPT, **kwargs)
    assert text(model, PROMPT, private_context=OTHER) != text(model, PROMPT, private_context=SECRET)
    templated = make(context_template="Known: {context}\nTask: {prompt}")
    assert text(templated, PROMPT, private_context=SECRET) == text(
        make(context_template="Known: {context}\nTask: {prompt}", cache=False),
        PROMPT,
        private_context=SECRET,
    )
    entries = len(llm_cache._cache)
    assert entries == 1 + len(calls) + 1


def test_the_cache_serves_the_same_call_again(make_model, llm_cache, monkeypatch):
    from langchain_specsteer.base import SpecSteerBase

    make, text = make_model
    model = make()
    first = text(model, PROMPT, private_context=[SECRET])
    monkeypatch.setattr(SpecSteerBase, "_decode", lambda *a, **k: pytest.fail("not cached"))
    assert text(model, PROMPT, private_context=SECRET) == first  # the same context
    assert text(make(), PROMPT, private_context=SECRET) == first  # another instance
    assert asyncio.run(model.ainvoke(PROMPT, private_context=SECRET)) is not None
    assert len(llm_cache._cache) == 1


def test_a_cache_key_tells_nothing_about_the_context(make_model, llm_cache, monkeypatch):
    """A stored key holds a keyed digest (HMAC) of the context: not its text, not a plain hash
    (which a short context can be found from by trying guesses); the key is stable where the
    secret is (one process, or SPECSTEER_CACHE_SECRET) and differs where it is not."""
    import hashlib

    from langchain_specsteer.base import context_digest

    make, text = make_model
    model = make()
    for context in (SECRET, OTHER, "4417"):
        text(model, PROMPT, private_context=context)
    keys = [llm_string for _, llm_string in llm_cache._cache]
    assert len(set(keys)) == 3
    for context in (SECRET, OTHER, "4417"):
        hashes = {hashlib.sha256(v.encode()).hexdigest() for v in (context, repr(context))}
        for key in keys:
            assert context not in key and "Zorblax" not in key and "Quorvane" not in key
            assert not any(h in key for h in hashes)
    assert sum(context_digest("4417") in key for key in keys) == 1
    monkeypatch.setenv("SPECSTEER_CACHE_SECRET", "install secret")
    shared = context_digest("4417")
    assert shared == context_digest("4417") != context_digest("4418")
    monkeypatch.setenv("SPECSTEER_CACHE_SECRET", "another install")
    assert context_digest("4417") != shared


def test_a_retrieved_context_is_never_cached(make_model, llm_cache):
    """Two users' models, each with a retriever over their own memory: neither is served the
    other's text, and nothing retrieved is cached (the documents are unknown before the
    retriever runs)."""
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    class Fixed(BaseRetriever):
        text: str

        def _get_relevant_documents(self, query, *, run_manager):
            return [Document(page_content=self.text)]

    make, text = make_model
    for context in (SECRET, OTHER):
        model = make(retriever=Fixed(text=context))
        expected = text(make(cache=False), PROMPT, private_context=context)
        assert text(model, PROMPT) == expected
        assert asyncio.run(model.ainvoke(PROMPT)) is not None
    assert len(llm_cache._cache) == 0
