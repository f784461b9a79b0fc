"""Rounds in flight (run.py): the device drafts and sends the next round before a verdict.

The oracle: with one draft length, rounds in flight change when rounds are verified, never
what is committed. So a run with rounds in flight writes exactly the text of the same run
one round at a time, greedy or seeded sampling, and greedy `speculative` is still the
generalist's text. These tests drive the engine through a stateless in-process session
(`LaggedGeneralist`: each call recomputes the generalist's rows after its whole prefix, after
a delay, as a remote server would) so nothing here depends on HTTP; the transports have their
own tests in test_remote.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Sequence

import pytest
import torch

from langchain_specsteer import SpecSteerLLM
from langchain_specsteer import algorithms as alg
from langchain_specsteer.server import create_app
from langchain_specsteer.testing import BackgroundServer
from langchain_specsteer.verification import (
    Generalist,
    GeneralistError,
    GeneralistSession,
    Rule,
    Verdict,
    VerifyCall,
)
from tests.conftest import CONTEXT, PROMPTS


class LaggedSession(GeneralistSession):
    """Verifies after a delay, from its prefix alone, with any number of rounds in flight."""

    awaits_io = True
    max_in_flight = 8

    def __init__(self, owner: LaggedGeneralist, prompt: Sequence[int], vocab_size: int, temp):
        self.owner = owner
        self.prompt = list(prompt)
        self.vocab_size = vocab_size
        self.temperature = temp
        self.committed: list[int] = []
        self.outstanding: deque[list[int]] = deque()

    def _rows(self, prefix: list[int], draft: list[int]) -> torch.Tensor:
        ids = torch.tensor([self.prompt + prefix + draft])
        with torch.inference_mode():
            logits = self.owner.local.model(ids).logits[0, -(len(draft) + 1) :]
        rows = torch.log_softmax(logits[:, : self.vocab_size].float(), dim=-1)
        return alg.temper(rows, self.temperature)

    def start(self, draft, rule, gamma, uniforms=None, *, after=()) -> VerifyCall:
        prefix, draft = [*self.committed, *after], list(draft)
        self.outstanding.append(draft)
        self.owner.sent.append((prefix, draft))
        if self.owner.commits:  # from the first verdict on: the device has measured a wait
            self.owner.most_in_flight = max(self.owner.most_in_flight, len(self.outstanding))

        def verdict() -> Verdict:
            if self.owner.fail_after is not None and len(self.owner.sent) > self.owner.fail_after:
                raise GeneralistError("the lagged generalist went away")
            rows = self._rows(prefix, draft)
            accepted = alg.accept(rule, draft, rows, None, gamma, uniforms)
            return Verdict(rows, None, accepted, self.owner.verify_seconds)

        def perform() -> Verdict:
            time.sleep(self.owner.delay)
            return verdict()

        async def aperform() -> Verdict:
            await asyncio.sleep(self.owner.delay)
            return await asyncio.to_thread(verdict)

        return VerifyCall(perform, aperform, awaits_io=True)

    def verify(self, draft: list[int], rule: Rule, gamma: float, uniforms=None) -> Verdict:
        return self.start(draft, rule, gamma, uniforms).perform()

    def commit(self, accepted: int, token: int) -> None:
        self.owner.commits += 1
        draft = self.outstanding.popleft()
        self.committed += [*draft[:accepted], token]

    def drop(self) -> None:
        self.outstanding.clear()


class LaggedGeneralist(Generalist):
    """A local generalist behind `LaggedSession`s; records every (prefix, draft) sent."""

    def __init__(self, local, delay: float = 0.01, fail_after: int | None = None):
        self.local = local
        self.tokenizer = local.tokenizer
        self.delay = delay
        self.fail_after = fail_after
        self.sent: list[tuple[list[int], list[int]]] = []
        self.most_in_flight = 0  # after the first verdict
        self.commits = 0
        self.verify_seconds: float | None = None  # what verdicts say the service worked
        self.lock = threading.Lock()

    name = property(lambda self: self.local.name)
    vocab_size = property(lambda self: self.local.vocab_size)
    vocab_signature = property(lambda self: self.local.vocab_signature)
    eos_token_ids = property(lambda self: self.local.eos_token_ids)

    def encode_messages(self, messages, *, chat, chat_template_kwargs=None):
        return self.local.encode_messages(
            messages, chat=chat, chat_template_kwargs=chat_template_kwargs
        )

    def open_session(self, prompt, *, vocab_size, temperature=0.0, q_gen_prompt=None):
        return LaggedSession(self, prompt, vocab_size, temperature)


@pytest.fixture
def lagged(specialist, generalist):
    """`make(**fields)`: (a SpecSteerLLM over a lagged copy of the tiny generalist, it)."""

    def make(delay=0.01, fail_after=None, **fields):
        fields.setdefault("max_new_tokens", 24)
        remote = LaggedGeneralist(generalist, delay, fail_after)
        return SpecSteerLLM(specialist=specialist, generalist=remote, **fields), remote

    return make


def generate(llm, prompt, **params):
    result = llm.generate([prompt], private_context=CONTEXT, **params)
    return result.generations[0][0].text, result.generations[0][0].generation_info


# Draft-happy settings: the tiny random pair is unsure of every token, so γ is low enough to
# accept drafts and the guesses of the last token sometimes hold.
LOOSE = {"gamma": 0.05, "draft_tokens": 3}
# Draft lengths chosen by confidence (`draft_tokens="auto"`): a round sent ahead is sized on
# the calibration its rounds in flight would leave if they stand (`Calibration.standing`).
BY_CONFIDENCE = {"gamma": 0.2, "draft_tokens": "auto", "max_draft_tokens": 4, "draft_stop": 0.05}


@pytest.mark.parametrize("method", ["specsteer", "speculative"])
@pytest.mark.parametrize("drafts", [LOOSE, BY_CONFIDENCE], ids=["K", "auto"])
def test_rounds_in_flight_write_the_text_of_one_round_at_a_time(lagged, make_llm, method, drafts):
    llm, remote = lagged(rounds_in_flight=4, **drafts)
    sequential, _ = lagged(rounds_in_flight=1, **drafts)
    in_process = make_llm(**drafts)
    voided, lengths = 0, set()
    for prompt in PROMPTS:
        text, info = generate(llm, prompt, method=method)
        assert text == generate(sequential, prompt, method=method)[0]
        assert text == generate(in_process, prompt, method=method)[0]
        voided += info["voided_rounds"]
        assert info["generalist_calls"] == info["rounds"] + info["voided_rounds"]
        lengths.update(len(draft) for _, draft in remote.sent)
    assert voided > 0  # rounds were sent ahead, and some were voided
    if drafts is BY_CONFIDENCE:
        assert len(lengths) > 1  # the device chose the draft lengths


def test_speculative_in_flight_is_the_generalists_greedy_text(lagged, make_llm):
    llm, _ = lagged(rounds_in_flight=4, gamma=0.5, draft_tokens=2, max_new_tokens=30)
    reference = make_llm(max_new_tokens=30)
    for prompt in PROMPTS:
        text, _ = generate(llm, prompt, method="speculative")
        assert text == generate(reference, prompt, method="generalist")[0]


def test_a_round_sent_ahead_builds_on_the_drafts_and_a_guess(lagged):
    """Each round sent while another is in flight starts where that one's drafts end plus
    one guessed token; a voided round's drafts never reach the text."""
    llm, remote = lagged(rounds_in_flight=4, **LOOSE)
    run = llm.rounds(PROMPTS[0], private_context=CONTEXT)
    committed = [t for round_ in run for t in round_.tokens]
    assert run.stats.voided_rounds > 0
    ahead = 0
    for (prefix, draft), (next_prefix, _) in zip(remote.sent, remote.sent[1:], strict=False):
        if len(next_prefix) > len(prefix):  # sent ahead of this one's verdict
            assert next_prefix[: len(prefix) + len(draft)] == prefix + draft
            assert len(next_prefix) == len(prefix) + len(draft) + 1
            ahead += 1
    assert ahead > 0
    assert len(committed) == run.stats.new_tokens


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_seeded_sampling_does_not_depend_on_rounds_in_flight(lagged, driver):
    sampled = {**LOOSE, "temperature": 0.9, "seed": 7}
    piped, _ = lagged(rounds_in_flight=4, **sampled)
    single, _ = lagged(rounds_in_flight=1, **sampled)

    def text(llm):
        if driver == "sync":
            return llm.invoke(PROMPTS[1], private_context=CONTEXT)
        return asyncio.run(llm.ainvoke(PROMPTS[1], private_context=CONTEXT))

    assert text(piped) == text(single) == text(piped)
    other, _ = lagged(rounds_in_flight=4, **{**sampled, "seed": 8})
    assert text(other) != text(piped)


def test_an_unseeded_sampled_call_leaves_torchs_global_generator_alone(lagged):
    llm, _ = lagged(temperature=0.9, **LOOSE)
    torch.manual_seed(0)
    llm.invoke(PROMPTS[0], private_context=CONTEXT)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_the_generalist_lost_with_rounds_in_flight_keeps_what_was_verified(lagged, driver):
    """The lagged generalist fails from its fifth request on, with rounds in flight: they are
    void, the verified text stays, nothing is committed twice or lost, and the specialist
    finishes it (its own greedy continuation of what was committed)."""
    llm, remote = lagged(rounds_in_flight=4, fail_after=4, max_new_tokens=30, **LOOSE)
    reference, _ = lagged(rounds_in_flight=1, max_new_tokens=30, **LOOSE)
    run = llm.rounds(PROMPTS[0], private_context=CONTEXT)

    async def drive():
        return [r async for r in run]

    rounds = list(run) if driver == "sync" else asyncio.run(drive())
    ids = [t for r in rounds for t in r.tokens]
    assert run.stats.degraded and len(remote.sent) > 4
    assert len(ids) == run.stats.new_tokens == 30 or run.stats.finish_reason == "eos"
    full = [t for r in reference.rounds(PROMPTS[0], private_context=CONTEXT) for t in r.tokens]
    pairs = zip([*ids, -1], [*full, -2], strict=False)
    common = next(i for i, (a, b) in enumerate(pairs) if a != b)
    assert common > 0  # the rounds verified before the failure
    private = llm.render_prompts(PROMPTS[0], CONTEXT).private
    rest = llm.specialist.model.generate(
        torch.tensor([private + ids[:common]]), do_sample=False, max_new_tokens=len(ids) - common
    )[0, len(private) + common :].tolist()
    assert ids[common:] == rest


def test_rounds_in_flight_is_validated_and_in_process_stays_one_at_a_time(make_llm):
    with pytest.raises(ValueError, match="rounds_in_flight"):
        make_llm(rounds_in_flight=0)
    llm = make_llm(rounds_in_flight=4, **LOOSE)
    _, info = generate(llm, PROMPTS[0])
    assert info["voided_rounds"] == 0 and info["generalist_calls"] == info["rounds"]


# ---------------------------------------------------------------- over HTTP


@pytest.mark.parametrize("client", ["session", "openai"])
@pytest.mark.parametrize("api", ["sync", "async"])
def test_rounds_in_flight_over_http_write_the_in_process_text(
    make_llm, make_remote_llm, verifier, client, api
):
    expected, _ = generate(make_llm(**LOOSE), PROMPTS[0])
    llm = make_remote_llm(client, rounds_in_flight=4, **LOOSE)
    if api == "sync":
        text, info = generate(llm, PROMPTS[0])
    else:
        result = asyncio.run(llm.agenerate([PROMPTS[0]], private_context=CONTEXT))
        text, info = result.generations[0][0].text, result.generations[0][0].generation_info
    assert text == expected
    assert info["voided_rounds"] > 0 and not info["degraded"]


def test_a_session_lost_with_rounds_in_flight_is_reopened(make_llm, make_remote_llm, verifier):
    """The service forgets every session after the second round: the rounds in flight find
    it gone, one reopens it under a new name with every generated token, and the text is
    the in-process one."""
    expected, _ = generate(make_llm(max_new_tokens=32, **LOOSE), PROMPTS[0])
    llm = make_remote_llm(rounds_in_flight=4, max_new_tokens=32, **LOOSE)
    run = llm.rounds(PROMPTS[0], private_context=CONTEXT)
    ids = []
    for i, round_ in enumerate(run):
        ids += round_.tokens
        if i == 1:
            with verifier.service._sessions_lock:
                verifier.service.sessions.clear()
    assert llm.specialist.tokenizer.decode(ids, skip_special_tokens=True) == expected
    assert llm.generalist.stats.reopened >= 1 and not run.stats.degraded


def test_a_service_failing_with_rounds_in_flight_degrades_keeping_the_verified_text(
    make_llm, make_remote_llm, verifier
):
    from tests.langchain_specsteer.test_remote import Flaky

    reference = make_llm(max_new_tokens=32, **LOOSE)
    full = [t for r in reference.rounds(PROMPTS[0], private_context=CONTEXT) for t in r.tokens]
    flaky = Flaky(create_app(verifier.service), fail=set(range(3, 1000)))
    with BackgroundServer(flaky) as server:
        llm = make_remote_llm(
            url=server.url,
            rounds_in_flight=4,
            max_new_tokens=32,
            client_options={"max_retries": 1, "backoff_s": 0.01},
            **LOOSE,
        )
        run = llm.rounds(PROMPTS[0], private_context=CONTEXT)
        ids = [t for r in run for t in r.tokens]
    assert run.stats.degraded and "503" in run.stats.degraded_reason
    assert len(ids) == 32 == run.stats.new_tokens
    pairs = zip([*ids, -1], [*full, -2], strict=False)
    common = next(i for i, (a, b) in enumerate(pairs) if a != b)
    assert common > 0  # the rounds verified before the failure open the text ...
    private = reference.render_prompts(PROMPTS[0], CONTEXT).private
    rest = llm.specialist.model.generate(
        torch.tensor([private + ids[:common]]), do_sample=False, max_new_tokens=32 - common
    )[0, len(private) + common :].tolist()
    assert ids[common:] == rest  # ... and the specialist writes the rest after them


def test_auto_keeps_one_round_in_flight_where_the_wait_is_the_services_work(lagged):
    """`rounds_in_flight="auto"` sends ahead when the wait is mostly the round trip; when
    verdicts say the generalist side worked the whole wait (v = 1: a voided round would delay
    the next by all of it), one round at a time (`algorithms.send_ahead`)."""
    fields = {**LOOSE, "rounds_in_flight": "auto", "max_new_tokens": 32}
    llm, remote = lagged(delay=0.03, **fields)
    text, _ = generate(llm, PROMPTS[0])
    assert remote.most_in_flight > 1  # a round trip and no word of the service's work
    llm, busy = lagged(delay=0.03, **fields)
    busy.verify_seconds = 1.0  # more than any wait: the share is 1
    assert generate(llm, PROMPTS[0])[0] == text
    assert busy.most_in_flight == 1 and busy.commits > 1


def test_every_round_sent_is_counted_when_the_budget_ends_the_text(lagged):
    """A round is never sent past the token budget, and one still in flight when the budget
    ends the text counts as voided: `generalist_calls` = `rounds` + `voided_rounds`."""
    ended = 0
    for budget in range(3, 15):
        llm, _ = lagged(rounds_in_flight=4, max_new_tokens=budget, **LOOSE)
        for prompt in PROMPTS:
            _, info = generate(llm, prompt)
            assert info["generalist_calls"] == info["rounds"] + info["voided_rounds"], budget
            ended += info["finish_reason"] == "length"
    assert ended > 0
