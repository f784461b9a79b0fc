"""`SpecSteerLLM` as LangChain users meet it: invoke, stream, callbacks, stop, chains, errors."""

from __future__ import annotations

import asyncio
import copy
import math

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models.llms import LLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.retrievers import BaseRetriever
from pydantic import Field, ValidationError

from langchain_specsteer import METHODS, LocalSpecialist, SpecSteerLLM, base
from langchain_specsteer.byte_engine import ByteVocabularies
from langchain_specsteer.params import MIN_TEMPERATURE
from tests.conftest import CONTEXT, PROMPTS, off_the_loop


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
    ids = llm.rounds(PROMPTS[2], private_context=CONTEXT)
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


def test_a_single_stop_string_is_one_stop_not_its_characters(make_llm):
    """stop="xyz" stops at "xyz" (as LangChain's other models read it), at the field too."""
    llm = make_llm(method="generalist", max_new_tokens=40)
    full = llm.invoke(PROMPTS[0])
    never = full[0] + "\u2603\u2603"  # its first character starts the text; the whole never
    cut = full[10:13]
    expected = full[: full.find(cut)]

    async def astreamed(**kwargs):
        return "".join([piece async for piece in llm.astream(PROMPTS[0], **kwargs)])

    for stop, text in ((never, full), (cut, expected)):
        assert llm.invoke(PROMPTS[0], stop=stop) == text
        assert "".join(llm.stream(PROMPTS[0], stop=stop)) == text
        assert asyncio.run(llm.ainvoke(PROMPTS[0], stop=stop)) == text
        assert asyncio.run(astreamed(stop=stop)) == text
    field = make_llm(method="generalist", max_new_tokens=40, stop=never)
    assert field.stop == [never]
    assert field.invoke(PROMPTS[0]) == full


def test_private_context_as_list_equals_joined_string(make_llm):
    llm = make_llm(method="specialist")
    parts = ["I love crunchy things.", "  ", "Five stars, always."]
    steered = llm.invoke(PROMPTS[0], private_context=parts)
    assert steered == llm.invoke(
        PROMPTS[0], private_context="I love crunchy things.\n\nFive stars, always."
    )
    assert steered != llm.invoke(PROMPTS[0])  # the context is read, not dropped


@pytest.mark.parametrize(
    ("context", "found"),
    [
        (5, "got int"),
        ([1, 2], "got list holding int"),
        (b"my diary", "got bytes"),
        ([["x"]], "got list holding list"),
        ({"diary": "private"}, "got dict"),
        ((CONTEXT, 3.5), "got tuple holding float"),
    ],
)
def test_a_private_context_of_another_type_is_refused_naming_the_field(make_llm, context, found):
    """str, Document or a list of them; a dict is refused, not read as its keys. The message
    names the types, never the private text."""
    llm = make_llm(method="specialist", max_new_tokens=4)
    message = "private_context must be a str, a Document, or a list of them"
    for call in (
        lambda: llm.invoke(PROMPTS[0], private_context=context),
        lambda: list(llm.stream(PROMPTS[0], private_context=context)),
        lambda: asyncio.run(llm.ainvoke(PROMPTS[0], private_context=context)),
    ):
        with pytest.raises(TypeError, match=message) as err:
            call()
        assert found in str(err.value)
        assert "diary" not in str(err.value) and "Zorblax" not in str(err.value)


def test_a_tuple_of_strings_and_documents_is_a_private_context(make_llm):
    llm = make_llm(method="specialist", max_new_tokens=8)
    pieces = ("I love crunchy things.", Document(page_content="Five stars, always."))
    steered = llm.invoke(PROMPTS[0], private_context=pieces)
    assert steered == llm.invoke(PROMPTS[0], private_context=list(pieces))
    assert steered != llm.invoke(PROMPTS[0])  # the context is read, not dropped


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
        (
            {"temperature": 1e-40},
            "temperature",
            "use 0 (greedy decoding, raw rows) or at least 0.0001",
        ),
        ({"temperature": 5e-5}, "temperature", "at least 0.0001"),
        ({"seed": 2**70}, "seed", "less than 18446744073709551616"),
        ({"seed": -(2**63) - 1}, "seed", "greater than or equal to -9223372036854775808"),
        ({"costeer_b": -1e308}, "costeer_b", "greater than or equal to -1000000"),
        ({"costeer_a": 1e300}, "costeer_a", "less than or equal to 1000000"),
        ({"costeer_lambda": 1e40}, "costeer_lambda", "less than or equal to 1000000"),
        ({"costeer_eta": 1e-300}, "costeer_eta", "greater than or equal to 0.000001"),
        ({"costeer_a": 1e6}, "costeer_a", "lower costeer_a or costeer_b"),
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


def test_tiny_temperatures_are_refused_per_call_and_the_minimum_samples(make_llm):
    llm = make_llm(max_new_tokens=6)
    for call in (
        lambda: llm.invoke(PROMPTS[0], temperature=1e-40),
        lambda: asyncio.run(llm.ainvoke(PROMPTS[0], temperature=1e-40)),
    ):
        with pytest.raises(ValidationError, match="temperature"):
            call()
    info = llm.generate([PROMPTS[0]], temperature=MIN_TEMPERATURE, seed=1)
    assert info.generations[0][0].generation_info["new_tokens"] == 6


@pytest.mark.parametrize("top_p", [1e-300, 1e-46])
def test_a_tiny_top_p_samples_the_top_token(make_llm, top_p):
    """A nucleus below float32's smallest number keeps the most likely token: sampling the
    generalist then writes its greedy text; SpecSteer samples a whole text."""
    greedy = make_llm(method="generalist").invoke(PROMPTS[0])
    llm = make_llm(method="generalist", temperature=1.0, top_p=top_p, seed=3)
    assert llm.invoke(PROMPTS[0]) == greedy
    info = make_llm(temperature=1.0, top_p=top_p, seed=3).generate([PROMPTS[0]])
    assert info.generations[0][0].generation_info["new_tokens"] == 24


@pytest.mark.parametrize("seed", [0, 2**64 - 1, -(2**63)])
def test_seeds_across_torchs_range_reproduce_the_text(make_llm, seed):
    llm = make_llm(temperature=1.0, seed=seed, max_new_tokens=8)
    sampled = llm.invoke(PROMPTS[0])
    assert sampled == llm.invoke(PROMPTS[0])
    assert sampled != llm.invoke(PROMPTS[0], temperature=0.0)  # the seed drives real sampling


@pytest.mark.parametrize(
    "knobs",
    [
        {"costeer_b": -1e6},
        {"costeer_a": 1e6, "costeer_b": 1e6, "costeer_lambda": 1e6},
        {"costeer_lambda": 1e6, "costeer_eta": 1e-6},
        {"costeer_a": 30.0},  # c_T ≈ 4.5e7, near the limit
    ],
)
def test_costeer_at_the_edge_of_its_knobs_writes_text(make_llm, knobs):
    """Every accepted CoSteer setting keeps the fused scores finite, so text comes out."""
    llm = make_llm(method="costeer", max_new_tokens=8, **knobs)
    info = llm.generate([PROMPTS[0]], private_context=CONTEXT).generations[0][0]
    assert info.generation_info["new_tokens"] == 8
    assert info.text


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


def counted(function, calls: list):
    """`function`, recording the arguments of each call in `calls`."""

    def wrapper(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    return wrapper


def test_assigning_a_field_keeps_the_engine_until_its_models_change(
    specialist, generalist, cross_generalist, monkeypatch
):
    engines, tables = [], []  # engines built, byte-level tables built
    monkeypatch.setattr(base, "SpecSteerEngine", counted(base.SpecSteerEngine, engines))
    monkeypatch.setattr(ByteVocabularies, "of", counted(ByteVocabularies.of, tables))
    llm = SpecSteerLLM(specialist=specialist, generalist=cross_generalist, max_new_tokens=4)
    engine = llm._engine
    assert engine.alignment == "byte" and (len(engines), len(tables)) == (1, 1)
    llm.gamma, llm.alpha, llm.draft_tokens, llm.temperature = 0.1, 2.0, 3, 0.5
    llm.stop, llm.context_template, llm.retrieval_k = ["."], "{context}|{prompt}", 2
    llm.invoke(PROMPTS[0], private_context=CONTEXT)
    assert llm._engine is engine and (len(engines), len(tables)) == (1, 1)

    llm.generalist = generalist  # one vocabulary with the specialist: the token path
    assert llm._engine.generalist is generalist and llm._engine.alignment == "token"
    assert (len(engines), len(tables)) == (2, 1)
    llm.generalist = cross_generalist
    assert llm._engine.alignment == "byte" and (len(engines), len(tables)) == (3, 2)
    llm.batch_specialist = True
    assert llm._engine.batch_specialist and len(engines) == 4
    llm.alignment = "byte"
    assert llm._engine.alignment == "byte" and len(engines) == 5
    with pytest.raises(ValidationError, match="different vocabularies"):
        llm.alignment = "token"  # refused when assigned, as at construction


def test_a_pair_the_engine_refuses_fails_at_construction(specialist, cross_generalist):
    with pytest.raises(ValidationError, match=r"different vocabularies.*alignment='byte'"):
        SpecSteerLLM(specialist=specialist, generalist=cross_generalist, alignment="token")


def test_from_pretrained_loads_both_models_and_sets_fields(tiny_dir, make_llm):
    llm = SpecSteerLLM.from_pretrained(
        str(tiny_dir / "specialist"), str(tiny_dir / "generalist"), device="cpu", gamma=0.2
    )
    assert llm.gamma == 0.2 and llm.specialist.device.type == "cpu"
    assert llm.invoke(PROMPTS[0], max_new_tokens=8) == make_llm(gamma=0.2).invoke(
        PROMPTS[0], max_new_tokens=8
    )


def test_async_calls_run_off_the_event_loop(make_llm, monkeypatch):
    """ainvoke and astream: every model forward runs off the loop while the loop stays free."""
    llm = make_llm(method="generalist", max_new_tokens=40)

    async def collect():
        return [piece async for piece in llm.astream(PROMPTS[0])]

    text, invoke_forwards = off_the_loop(lambda: llm.ainvoke(PROMPTS[0]), monkeypatch)
    pieces, stream_forwards = off_the_loop(collect, monkeypatch)
    assert "".join(pieces) == text == llm.invoke(PROMPTS[0])
    assert invoke_forwards == stream_forwards == 40  # one generalist forward per token


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


def test_the_demo_pairs_markers_never_reach_the_text(demo_pair):
    """Off its world the demo generalist opens with its call marker; the marker is a special
    token, so the LLM's text never shows it (issue 23 item 11)."""
    from retrievers import task_templates

    specialist, generalist = demo_pair
    llm = SpecSteerLLM(
        specialist=specialist,
        generalist=generalist,
        max_new_tokens=16,
        **task_templates("product_review"),
    )
    ids = llm.render_prompts("What is the capital of France?").public_generalist
    logits = generalist.model(torch.tensor([ids])).logits[0, -1]
    assert specialist.tokenizer.convert_ids_to_tokens(int(logits.argmax())) == "<|call|>"
    text = llm.invoke("What is the capital of France?", method="generalist")
    assert text and "<|" not in text
