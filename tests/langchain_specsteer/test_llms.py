"""`SpecSteerLLM` as LangChain users meet it: invoke, stream, callbacks, stop, chains, errors."""

from __future__ import annotations

import copy
import math

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models.llms import LLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.retrievers import BaseRetriever
from pydantic import Field, ValidationError

from langchain_specsteer import METHODS, LocalSpecialist, SpecSteerLLM
from tests.conftest import CONTEXT, PROMPTS, ticks_while


class TokenRecorder(BaseCallbackHandler):
    def __init__(self):
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs) -> None:
        self.tokens.append(token)


def test_is_a_langchain_llm(make_llm):
    llm = make_llm()
    assert isinstance(llm, LLM)
    assert llm._llm_type == "specsteer"
    params = llm._identifying_params
    assert params["method"] == "specsteer" and params["gamma"] == 0.5 and params["alpha"] == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_stream_concatenates_to_invoke_and_calls_back(make_llm, method):
    llm = make_llm(method=method, max_new_tokens=30)
    text = llm.invoke(PROMPTS[2], private_context=CONTEXT)
    recorder = TokenRecorder()
    pieces = list(llm.stream(PROMPTS[2], private_context=CONTEXT, config={"callbacks": [recorder]}))
    assert "".join(pieces) == text
    assert recorder.tokens == [p for p in pieces if p]
    ids = llm._engine.run(llm.render_prompts(PROMPTS[2], CONTEXT), llm.decoding_params())
    all_ids = [t for r in ids for t in r.tokens]
    assert text == llm.specialist.tokenizer.decode(
        all_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


def test_generation_info_reports_the_run(make_llm):
    llm = make_llm(max_new_tokens=20)
    info = llm.generate([PROMPTS[0]], private_context=CONTEXT).generations[0][0].generation_info
    assert info["method"] == "specsteer"
    assert info["new_tokens"] == 20 and info["finish_reason"] == "length"
    assert 0 <= info["accepted"] <= info["drafted"]
    assert info["acceptance_rate"] == info["accepted"] / info["drafted"]
    assert info["new_tokens"] == info["accepted"] + info["rounds"]
    assert info["generalist_calls"] == info["rounds"]
    assert info["seconds"] > 0 and info["private_context"] is True
    assert math.isclose(info["tokens_per_second"], 20 / info["seconds"])


def test_per_call_overrides_and_batches(make_llm):
    llm = make_llm(max_new_tokens=12)
    result = llm.generate(PROMPTS, method="generalist", max_new_tokens=5)
    infos = [g[0].generation_info for g in result.generations]
    assert [i["method"] for i in infos] == ["generalist"] * 3
    assert all(i["new_tokens"] <= 5 for i in infos)
    assert llm.method == "specsteer"  # the override did not stick


def test_stop_string_spanning_rounds_is_cut(make_llm):
    llm = make_llm(method="generalist", max_new_tokens=40)  # one token per round
    full = llm.invoke(PROMPTS[0])
    ids = llm.specialist.tokenizer.encode(full, add_special_tokens=False)
    assert len(ids) > 10
    for start in (3, len(full) // 2):
        stop = full[start : start + 6]
        expected = full[: full.find(stop)]
        assert llm.invoke(PROMPTS[0], stop=[stop]) == expected
        pieces = list(llm.stream(PROMPTS[0], stop=[stop]))
        assert "".join(pieces) == expected
        info = llm.generate([PROMPTS[0]], stop=[stop]).generations[0][0].generation_info
        assert info["finish_reason"] == "stop"


def test_stop_field_and_call_stop_combine(make_llm):
    llm = make_llm(method="generalist", max_new_tokens=40)
    full = llm.invoke(PROMPTS[1])
    early, late = full[4:8], full[20:25]
    assert (
        make_llm(method="generalist", max_new_tokens=40, stop=[late]).invoke(
            PROMPTS[1], stop=[early]
        )
        == full[: full.find(early)]
    )


def test_private_context_as_list_equals_joined_string(make_llm):
    llm = make_llm(method="specialist")
    parts = ["I love crunchy things.", "  ", "Five stars, always."]
    assert llm.invoke(PROMPTS[0], private_context=parts) == llm.invoke(
        PROMPTS[0], private_context="I love crunchy things.\n\nFive stars, always."
    )


def test_without_private_context_the_specialist_sees_the_public_prompt(make_llm):
    llm = make_llm(method="specialist")
    prompts = llm.render_prompts(PROMPTS[0], None)
    assert prompts.private == prompts.public_specialist
    info = llm.generate([PROMPTS[0]], private_context="").generations[0][0].generation_info
    assert info["private_context"] is False
    assert llm.invoke(PROMPTS[0]) != llm.invoke(PROMPTS[0], private_context=CONTEXT)


def test_works_in_a_chain(make_llm):
    llm = make_llm(max_new_tokens=10)
    chain = (
        PromptTemplate.from_template("Review: {item}")
        | llm.bind(private_context=CONTEXT)
        | StrOutputParser()
    )
    direct = llm.invoke("Review: blender", private_context=CONTEXT)
    assert chain.invoke({"item": "blender"}) == direct


def test_chat_template_is_used_when_present(specialist, generalist):
    tokenizer = copy.deepcopy(specialist.tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|bos|>[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    templated = LocalSpecialist(specialist.model, tokenizer)
    llm = SpecSteerLLM(specialist=templated, generalist=generalist, max_new_tokens=5)
    decode = tokenizer.decode
    prompts = llm.render_prompts("hello", "ctx")
    assert (
        decode(prompts.private) == "<|bos|>[user] Here is what we know about the user:\nctx\n\n"
        "hello\n[assistant] "
    )
    assert decode(prompts.public_specialist) == "<|bos|>[user] hello\n[assistant] "
    assert decode(prompts.public_generalist) == "<|bos|>hello"  # its tokenizer has no template
    plain = SpecSteerLLM(
        specialist=templated, generalist=generalist, use_chat_template=False
    ).render_prompts("hello")
    assert decode(plain.public_specialist) == "<|bos|>hello"


@pytest.mark.parametrize(
    ("fields", "field_name", "message"),
    [
        ({"gamma": -0.1}, "gamma", "greater than or equal to 0"),
        ({"gamma": float("nan")}, "gamma", "greater than or equal to 0"),
        ({"alpha": -1}, "alpha", "greater than or equal to 0"),
        ({"draft_tokens": 0}, "draft_tokens", "greater than or equal to 1"),
        ({"max_new_tokens": 0}, "max_new_tokens", "greater than or equal to 1"),
        ({"temperature": -0.5}, "temperature", "greater than or equal to 0"),
        ({"top_p": 0.0}, "top_p", "greater than 0"),
        ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"costeer_steps": 0}, "costeer_steps", "greater than or equal to 1"),
        ({"method": "beam"}, "method", "'specsteer', 'generalist', 'specialist', 'speculative'"),
        ({"context_template": "{prompt} only"}, "context_template", "{context} and {prompt}"),
        ({"context_template": "{context} {prompt} {user}"}, "context_template", "'user'"),
        ({"temprature": 1.0}, "temprature", "Extra inputs are not permitted"),
    ],
)
def test_invalid_fields_fail_at_construction_naming_the_field(
    make_llm, fields, field_name, message
):
    with pytest.raises(ValidationError) as err:
        make_llm(**fields)
    assert field_name in str(err.value)
    assert message in str(err.value)


def test_invalid_per_call_override_names_the_field(make_llm):
    llm = make_llm()
    with pytest.raises(ValidationError, match="gamma"):
        llm.invoke(PROMPTS[0], gamma=-1)
    with pytest.raises(ValidationError, match="not_a_field"):
        llm.invoke(PROMPTS[0], not_a_field=1)


def test_infinite_gamma_is_allowed(make_llm):
    llm = make_llm(gamma=float("inf"), max_new_tokens=5)
    info = llm.generate([PROMPTS[0]]).generations[0][0].generation_info
    assert info["accepted"] == 0 and info["drafted"] > 0


def test_from_pretrained_loads_both_models_and_sets_fields(tiny_dir, make_llm):
    llm = SpecSteerLLM.from_pretrained(
        str(tiny_dir / "specialist"), str(tiny_dir / "generalist"), device="cpu", gamma=0.2
    )
    assert llm.gamma == 0.2 and llm.specialist.device.type == "cpu"
    assert llm.invoke(PROMPTS[0], max_new_tokens=8) == make_llm(gamma=0.2).invoke(
        PROMPTS[0], max_new_tokens=8
    )


def test_async_calls_run_off_the_event_loop(make_llm):
    """ainvoke and astream: a ticker keeps ticking while the models work."""
    llm = make_llm(method="generalist", max_new_tokens=40)

    async def collect():
        return [piece async for piece in llm.astream(PROMPTS[0])]

    text, invoke_ticks = ticks_while(lambda: llm.ainvoke(PROMPTS[0]))
    pieces, stream_ticks = ticks_while(collect)
    assert "".join(pieces) == text == llm.invoke(PROMPTS[0])
    assert invoke_ticks > 5 and stream_ticks > 5


class AsyncOnlyRetriever(BaseRetriever):
    """A retriever with a native async hook; its blocking hook must not be used."""

    documents: list[str]
    queries: list[str] = Field(default_factory=list)

    def _get_relevant_documents(self, query, *, run_manager):
        raise AssertionError("the blocking retriever hook was used in an async call")

    async def _aget_relevant_documents(self, query, *, run_manager):
        self.queries.append(query)
        return [Document(page_content=text) for text in self.documents]


def test_async_calls_retrieve_with_the_retrievers_async_hook(make_llm):
    import asyncio

    retriever = AsyncOnlyRetriever(documents=[CONTEXT])
    llm = make_llm(method="specialist", retriever=retriever)

    async def both():
        text = await llm.ainvoke(PROMPTS[0])
        streamed = "".join([piece async for piece in llm.astream(PROMPTS[0])])
        return text, streamed

    text, streamed = asyncio.run(both())
    expected = make_llm(method="specialist").invoke(PROMPTS[0], private_context=CONTEXT)
    assert text == streamed == expected
    assert retriever.queries == [PROMPTS[0], PROMPTS[0]]


def test_abatch_equals_batch(make_llm):
    import asyncio

    llm = make_llm(method="specsteer", max_new_tokens=16)
    contexts = [CONTEXT, None, "I only drink tea."]
    sync = [llm.invoke(p, private_context=c) for p, c in zip(PROMPTS, contexts, strict=False)]

    async def run_all():
        calls = [llm.ainvoke(p, private_context=c) for p, c in zip(PROMPTS, contexts, strict=False)]
        return await asyncio.gather(*calls)

    assert asyncio.run(run_all()) == sync
    assert asyncio.run(llm.abatch(list(PROMPTS))) == llm.batch(list(PROMPTS))
