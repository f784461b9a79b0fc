"""One generation in progress, whatever the alignment: the loop, its drivers and its counters.

A round is draft → verify → accept → recover → commit. `Run` holds what every round shares:
the budget, opening the generalist session, the specialist's cached steps and drafting, the
bonus step, rounds in flight, the fallback to the specialist when the generalist stays
unreachable, the commit and the statistics, and the two drivers (`for` and `async for`). Its
subclasses say only how they draft (and align), accept and recover: `engine.DecodeRun` on one
shared vocabulary, `byte_engine.ByteDecodeRun` on text the two models spell in their own
tokens.

Rounds in flight (docs/concepts.md): over a network session that takes them
(`GeneralistSession.max_in_flight` > 1), the device does not wait for a verdict before it
drafts on. It guesses the round's last token (its own draft at the bonus position), drafts the
next round after it and sends that too. A verdict that rejects a draft, or recovers another
last token, voids every round sent after it: they commit nothing and count as voided, and the
device goes on from the recovered token, as a run without rounds in flight would. With one
draft length the text is therefore the same with and without rounds in flight.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.methods import METHOD_SPECS
from langchain_specsteer.verification import (
    Generalist,
    GeneralistError,
    GeneralistSession,
    PromptTurns,
    Rule,
    Verdict,
    VerifyCall,
)

if TYPE_CHECKING:
    from langchain_specsteer.models import ModelSequence, Specialist
    from langchain_specsteer.params import DecodingParams

__all__ = [
    "Accepted",
    "Await",
    "Calibration",
    "DecodeStats",
    "Discard",
    "Draft",
    "Flight",
    "Poll",
    "Prompts",
    "Round",
    "RoundCosts",
    "Run",
]


@dataclass(frozen=True)
class Await:
    """Yielded by a run's steps for the oldest started call's verdict (the driver sends it
    back, or throws its `GeneralistError` in)."""


@dataclass(frozen=True)
class Poll:
    """Yielded by a run's steps to ask, without waiting, whether the oldest started call has
    its answer (the driver sends back True or False)."""


@dataclass(frozen=True)
class Discard:
    """Yielded by a run's steps to void the `count` calls started last: the driver lets them
    finish and drops their answers."""

    count: int


Steps = Generator["Round | VerifyCall | Await | Poll | Discard", Any, None]
"""A run's loop: it yields `Round`s, `VerifyCall`s for its driver to start, and `Await`,
`Poll` and `Discard` about the calls started (`Run.__iter__` and `Run.__aiter__` answer)."""


@dataclass(frozen=True)
class Prompts:
    """Token ids of the three prompts of one request.

    Attributes:
        private: the specialist's prompt with the private context (c ⊕ x). Device only.
        public_specialist: the specialist's prompt without it (x), for q_gen.
        public_generalist: the generalist's prompt (x): its ids, or the turns a remote
            generalist renders with its first round (`verification.PromptTurns`); None when it
            could not be encoded (a remote generalist unreachable), which a method using the
            generalist treats like any other generalist failure.
    """

    private: list[int]
    public_specialist: list[int]
    public_generalist: list[int] | PromptTurns | None
    generalist_error: str | None = None
    """Why `public_generalist` is None (the generalist could not be reached to encode it)."""


@dataclass(frozen=True)
class Round:
    """Tokens one round committed; the first `accepted` are the specialist's accepted drafts.

    On the byte-level path (`alignment="byte"`) `tokens` are the generalist's (the
    specialist's for method "specialist") and `data` holds the bytes they spell.
    """

    tokens: list[int]
    accepted: int
    data: bytes | None = None


@dataclass
class DecodeStats:
    """Counters of one generation; `as_dict()` is what `generation_info` reports."""

    method: str
    new_tokens: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    voided_rounds: int = 0
    """Rounds sent ahead that a verdict voided (not in `rounds`, `drafted` or `accepted`)."""
    waited_seconds: float = 0.0
    """Time the device spent waiting on the generalist's verdicts, with nothing else to do."""
    generalist_calls: int = 0
    """Requests to the generalist side: one a round, voided rounds included."""
    specialist_calls: int = 0
    finish_reason: str | None = None
    degraded: bool = False
    degraded_reason: str | None = None
    seconds: float = 0.0
    _start: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def tokens_per_second(self) -> float | None:
        return self.new_tokens / self.seconds if self.seconds > 0 else None

    def as_dict(self) -> dict:
        info = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        info["acceptance_rate"] = self.acceptance_rate
        info["tokens_per_second"] = self.tokens_per_second
        return info


@dataclass
class Draft:
    """One round's proposal, as the device made it.

    Attributes:
        ids: the drafted token ids the generalist side verifies (in its vocabulary).
        q_ctx: (V,) q_ctx rows of the specialist before each of its drafted tokens (one more
            once the bonus step ran).
        q_gen: (V,) q_gen rows at the same positions, once known.
        uniforms: the device's draws for a sampled ratio test on the generalist side.
        confidences: q_ctx(d_i) of the specialist's drafted tokens (not the EOS that ends a
            draft): what `draft_tokens="auto"` and rounds in flight weigh.
        position: how many generated tokens precede the draft (committed and in flight).
    """

    ids: list[int] = field(default_factory=list)
    q_ctx: list[torch.Tensor] = field(default_factory=list)
    q_gen: list[torch.Tensor] = field(default_factory=list)
    uniforms: list[float] | None = None
    confidences: list[float] = field(default_factory=list)
    position: int = 0


@dataclass
class Flight:
    """A round sent to the generalist side whose verdict has not been used yet.

    Attributes:
        draft: what was sent.
        predicted: the token the next round was drafted after: the device's guess of this
            round's last token (None while no round follows it).
        sent_at: when it was sent (`time.perf_counter`).
        alone: whether it was sent with no other round in flight (its wait queued behind
            none, so it measures the round trip).
    """

    draft: Draft
    predicted: int | None = None
    sent_at: float | None = None
    alone: bool = False

    @property
    def tentative(self) -> int:
        """Generated tokens this round adds ahead of the committed ones (drafts, guess)."""
        return len(self.draft.ids) + (self.predicted is not None)


class Accepted(NamedTuple):
    """How much of a draft a verdict accepted, counted in both vocabularies."""

    verified: int
    """Tokens of the verified vocabulary (the generalist's on the byte path)."""
    drafted: int
    """The specialist's drafted tokens within them (what `draft_tokens="auto"` learns from)."""


@dataclass
class Calibration:
    """Past verdicts of a run, for `draft_tokens="auto"` (`algorithms.draft_calibration`).

    Attributes:
        accepted: drafts accepted.
        confidence: Σ q_ctx(d_i) over the drafts whose verdict is known (the accepted ones
            and the first rejected one).
        judged: how many drafts those are.
        guessed: guesses of a round's last token (rounds in flight) that proved right.
        guesses: how many guesses were judged (their round accepted its whole draft).
    """

    accepted: float = 0.0
    confidence: float = 0.0
    judged: int = 0
    guessed: int = 0
    guesses: int = 0

    PRIOR = 4.0
    """Pseudo-verdicts behind `acceptance`, at 90 % accepted."""

    @property
    def rho(self) -> float:
        return alg.draft_calibration(self.accepted, self.confidence)

    @property
    def acceptance(self) -> float:
        """The chance that a draft is accepted when those before it were: accepted over
        judged drafts, with `PRIOR` pseudo-verdicts at 90 %."""
        return (self.accepted + 0.9 * self.PRIOR) / (self.judged + self.PRIOR)

    @property
    def guess_rate(self) -> float:
        """The chance that a guess of a round's last token is right: right over judged
        guesses, with `PRIOR` pseudo-guesses at 90 %."""
        return (self.guessed + 0.9 * self.PRIOR) / (self.guesses + self.PRIOR)

    def count(self, confidences: Sequence[float], accepted: int) -> None:
        """Count a verdict: the `accepted` drafts and the first rejected one are judged (the
        rest of `confidences`, q_ctx of each draft, were never looked at)."""
        judged = confidences[: accepted + 1]
        self.accepted += min(accepted, len(judged))
        self.confidence += sum(judged)
        self.judged += len(judged)

    def standing(self, flights: Iterable[Flight]) -> Calibration:
        """This calibration once every round in `flights` stands (all its drafts accepted):
        what a round drafted after them sees one round at a time. A round sent ahead is
        sized on it, so `draft_tokens="auto"` writes the same text with and without rounds
        in flight (if one does not stand, the round is voided and drafted again)."""
        assumed = replace(self)
        for flight in flights:
            assumed.count(flight.draft.confidences, len(flight.draft.confidences))
        return assumed

    def chance(self, drafts: int, guesses: int) -> float:
        """The chance that rounds in flight holding `drafts` drafts and `guesses` guessed
        last tokens all stand."""
        return self.acceptance**drafts * self.guess_rate**guesses


@dataclass
class RoundCosts:
    """What a round costs on this run, measured as it goes (moving averages, seconds).

    Attributes:
        step: one specialist step while drafting.
        wait: from a round's request to its verdict (the round trip and the generalist side's
            work; the device's own work after the verdict is in `finish`).
        finish: the device's work on a verdict (scoring, recovering, committing).
        verify: the generalist side's work on a round, where its verdicts say (`Verdict.
            verify_seconds`).
        trip: the rest of the wait for a round sent with none in flight (queued behind
            none): the round trip.
    """

    step: float | None = None
    wait: float | None = None
    finish: float | None = None
    verify: float | None = None
    trip: float | None = None

    SMOOTHING = 0.3

    def add(self, name: str, seconds: float) -> None:
        old = getattr(self, name)
        setattr(self, name, seconds if old is None else old + self.SMOOTHING * (seconds - old))

    def round_steps(self) -> float | None:
        """A round's fixed cost (waiting on the verdict, then finishing) in specialist steps;
        None until both are measured."""
        if self.step is None or self.wait is None or self.step <= 0:
            return None
        return (self.wait + (self.finish or 0.0)) / self.step

    def verify_share(self) -> float | None:
        """The generalist side's share of a verdict's wait when nothing queues (the rest is
        the round trip); None where verdicts do not say."""
        if self.verify is None or self.trip is None or self.verify + self.trip <= 0:
            return None
        return self.verify / (self.verify + self.trip)


class Run(ABC):
    """One generation in progress: `for` or `async for` yields each round's committed tokens.

    The loop itself is `_steps`, a generator that yields `Round`s, the `VerifyCall`s the
    generalist side must answer, and `Await`/`Poll`/`Discard` about them; the two drivers
    differ only in how they perform those.

    Attributes:
        ctx: the specialist after the private prompt (q_ctx); it never leaves the device.
        gen: the specialist after the public prompt (q_gen), when the device computes it.
        target: the generalist's session, when the method uses the generalist.
    """

    pipelines = False
    """Whether this kind of run may keep rounds in flight (the byte path does not)."""

    def __init__(
        self,
        specialist: Specialist,
        generalist: Generalist,
        prompts: Prompts,
        params: DecodingParams,
    ):
        self.specialist = specialist
        self.generalist = generalist
        self.prompts = prompts
        self.params = params
        self.spec = METHOD_SPECS[params.method]
        self.knobs = params.recovery
        self.stats = DecodeStats(method=params.method)
        self.device = specialist.device
        self.ctx: ModelSequence | None = None
        self.gen: ModelSequence | None = None
        self.target: GeneralistSession | None = None
        self.sessions: list[GeneralistSession] = []  # opened by the steps, closed by the driver
        self._stepping = threading.Lock()  # one step at a time, then closing
        self.adaptive = params.draft_tokens == "auto"
        self.calibration = Calibration()
        self.flights: deque[Flight] = deque()
        """Rounds sent whose verdicts are not used yet, oldest first."""
        self.costs = RoundCosts()
        self.watchers: list[Callable[[Draft, Verdict | None, Accepted], None]] = []
        """Called with each round's draft, verdict and acceptance, before its recovery (for
        analyses such as eval/replay.py's recording; they must not change what they get)."""
        # Every random choice is a function of (seed, position, purpose) (`_generator`), so a
        # seeded text does not depend on how rounds were scheduled; an unseeded run draws a
        # fresh seed and leaves torch's global generator alone.
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)

    # ------------------------------------------------------------------ what subclasses say

    @abstractmethod
    def _open(self) -> None:
        """Start the specialist's sequences and the generalist's session (`_open_target`)."""

    @abstractmethod
    def _draft(self, remaining: int, position: int) -> Draft:
        """Align the specialist to the committed output (and the rounds in flight) and draft
        (`_draft_tokens`) at most `remaining` − 1 tokens after `position` generated ones."""

    @abstractmethod
    def _rule(self, draft: Draft) -> Rule:
        """How the generalist side is asked to verify `draft`."""

    def _prepare(self, flight: Flight, before: Flight | None) -> None:  # noqa: B027
        """Device work on a draft while it is verified (`before`: the round sent before it,
        still in flight): e.g. q_gen over it."""

    @abstractmethod
    def _accept(self, draft: Draft, verdict: Verdict | None) -> Accepted:
        """How much of the draft the verdict accepts."""

    @abstractmethod
    def _recover(self, draft: Draft, verdict: Verdict | None, accepted: Accepted) -> int:
        """The round's last token, after the accepted drafts."""

    @abstractmethod
    def _roll_back(self, draft: Draft, accepted: Accepted, token: int) -> None:
        """Bring the specialist's caches to the committed output (nothing in flight)."""

    @abstractmethod
    def _specialist_alone(self) -> ModelSequence:
        """The specialist's sequence to finish alone with, every unverified draft dropped."""

    @property
    @abstractmethod
    def _eos(self) -> frozenset[int]:
        """Token ids that end the text when committed."""

    def _spell(self, tokens: list[int], draft: Draft) -> bytes | None:
        """The bytes a round's tokens add to the text (None: the token path keeps ids)."""
        return None

    # ------------------------------------------------------------------ the drivers

    def __iter__(self) -> Iterator[Round]:
        """Run the steps here, blocking on the generalist's answers (a round in flight over the
        network waits on a thread of its own)."""
        steps = self._steps()
        calls: deque[tuple[VerifyCall, Future | None]] = deque()
        try:
            done, item = self._advance(steps)
            while not done:
                reply, error = None, None
                if isinstance(item, VerifyCall):
                    future = None
                    if item.awaits_io and self._depth_cap() > 1:
                        future = _round_pool().submit(item.perform)
                    calls.append((item, future))
                elif isinstance(item, Poll):
                    future = calls[0][1]
                    reply = future is None or future.done()
                elif isinstance(item, Discard):
                    for _ in range(item.count):
                        calls.pop()
                elif isinstance(item, Await):
                    call, future = calls.popleft()
                    start = time.perf_counter()
                    try:
                        reply = call.perform() if future is None else future.result()
                    except GeneralistError as err:
                        error = err
                    self.stats.waited_seconds += time.perf_counter() - start
                else:
                    yield item
                done, item = self._advance(steps, reply, error)
        finally:
            self._finish(steps)
            for _, future in calls:  # rounds left in flight: not waited for
                if future is not None:
                    future.cancel()
            for session in self.sessions:
                session.close()

    async def __aiter__(self) -> AsyncIterator[Round]:
        """Run the steps without blocking the event loop: model work on this run's own worker
        thread (as a thread-per-request server would: torch keeps per-thread state), the
        generalist's answers awaited on the loop (asynchronous HTTP for network generalists)."""
        loop = asyncio.get_running_loop()
        worker = ThreadPoolExecutor(1, thread_name_prefix="specsteer-run")

        def on_worker(fn: Callable[..., Any], *args: Any) -> asyncio.Future:
            return loop.run_in_executor(worker, functools.partial(fn, *args))

        steps = self._steps()
        calls: deque[tuple[VerifyCall, asyncio.Future | None]] = deque()
        try:
            done, item = await on_worker(self._advance, steps)
            while not done:
                reply, error = None, None
                if isinstance(item, VerifyCall):
                    task = asyncio.ensure_future(item.aperform()) if item.awaits_io else None
                    calls.append((item, task))
                elif isinstance(item, Poll):
                    task = calls[0][1]
                    reply = task is None or task.done()
                elif isinstance(item, Discard):
                    for _ in range(item.count):
                        _, task = calls.pop()
                        if task is not None:  # left to finish; its answer is not used
                            task.add_done_callback(_consume)
                elif isinstance(item, Await):
                    call, task = calls.popleft()
                    start = time.perf_counter()
                    try:
                        if task is not None:
                            reply = await task
                        else:  # a model in this process: its forward runs on the worker too
                            reply = await on_worker(call.perform)
                    except GeneralistError as err:
                        error = err
                    self.stats.waited_seconds += time.perf_counter() - start
                else:
                    yield item
                done, item = await on_worker(self._advance, steps, reply, error)
        finally:
            # A cancelled caller may leave a step running on the worker: finish after it.
            await on_worker(self._finish, steps)
            worker.shutdown(wait=False)
            for _, task in calls:
                if task is not None:
                    task.add_done_callback(_consume)
            for session in self.sessions:
                await session.aclose()

    def _advance(
        self,
        steps: Steps,
        reply: Any = None,
        error: GeneralistError | None = None,
    ) -> tuple[bool, Any]:
        """Resume the steps with a reply (or the generalist's failure): (done, next item)."""
        with self._stepping:
            try:
                return False, steps.throw(error) if error is not None else steps.send(reply)
            except StopIteration:
                return True, None

    def _finish(self, steps: Steps) -> None:
        """Close the steps (stops the clock; frees the specialist's caches)."""
        with self._stepping:
            steps.close()

    # ------------------------------------------------------------------ the loop

    def _steps(self) -> Steps:
        """The loop: draft and send rounds (several in flight where the session takes them),
        then take the oldest one's verdict: accept, recover, commit, and void the rounds sent
        after it unless they built on exactly what it committed."""
        p = self.params
        self.stats._start = time.perf_counter()
        flights = self.flights
        try:
            try:
                self._open()
            except GeneralistError as err:
                self._fall_back(err)
            while self.stats.new_tokens < p.max_new_tokens:
                # Draft (device) and send, while the schedule wants more rounds in flight.
                while (flight := self._draft_ahead(flights)) is not None:
                    if self.target is not None:
                        flight.sent_at, flight.alone = time.perf_counter(), not flights
                        self.stats.generalist_calls += 1
                        yield self._call(flight.draft, flights)
                    self._prepare(flight, flights[-1] if flights else None)
                    flights.append(flight)
                    if not self._send_another(flights) or (yield Poll()):
                        break
                flight = flights.popleft()
                # Verify: the oldest round's verdict. If the generalist stays unreachable, the
                # specialist finishes.
                try:
                    verdict = (yield Await()) if self.target is not None else None
                except GeneralistError as err:
                    if flights:
                        yield Discard(len(flights))
                    self._void(flights)
                    self._fall_back(err)
                    continue
                finish = time.perf_counter()
                if verdict is not None:
                    self._count_call(flight, verdict)
                accepted = self._accept(flight.draft, verdict)
                if verdict is not None:
                    self._observe(flight.draft, accepted.drafted)
                for watch in self.watchers:
                    watch(flight.draft, verdict, accepted)
                # Recover: the token at the first rejected position (or the bonus position,
                # whose rows a round sent after this one computed already).
                draft = flight.draft
                if self.spec.recovers_with_q_ctx and accepted.drafted == len(draft.q_ctx):
                    self._step(self.ctx, draft.q_ctx, draft.q_gen)
                token = self._recover(draft, verdict, accepted)
                # Commit: the rounds in flight stand if they built on exactly these tokens;
                # else they are void and every cache rolls back to the committed length.
                whole = accepted.verified == len(draft.ids)
                kept = whole and token == flight.predicted
                if whole and flight.predicted is not None:  # the guess of its end is judged
                    self.calibration.guesses += 1
                    self.calibration.guessed += kept
                if flights and not kept:
                    yield Discard(len(flights))
                round_ = self._commit(draft, accepted, token, rolled=bool(flights) and kept)
                if not kept:
                    self._void(flights)
                self.costs.add("finish", time.perf_counter() - finish)
                yield round_
                if self.stats.finish_reason == "eos":
                    if flights:
                        yield Discard(len(flights))
                    self._void(flights)
                    return
            if flights:  # the budget ended the text before their verdicts were used
                yield Discard(len(flights))
                self._void(flights)
            self.stats.finish_reason = "length"
        finally:
            self.stats.seconds = time.perf_counter() - self.stats._start

    def _draft_ahead(self, flights: deque[Flight]) -> Flight | None:
        """The next round: drafted after the committed output or, with rounds in flight, after
        the last one's drafts and a guess of its last token, drafted at its bonus position
        (whose rows that round keeps for its recovery). None: the guess ends the text, or
        leaves no room in the token budget for a round after it."""
        position = self.stats.new_tokens + sum(f.tentative for f in flights)
        if flights:
            if self.params.max_new_tokens - position < 2:  # no room after the guess
                return None
            last = flights[-1]
            self._step(self.ctx, last.draft.q_ctx, last.draft.q_gen)
            row = last.draft.q_ctx[-1]
            last.predicted = self._choose_draft(row, position)
            self.ctx.append([last.predicted])
            position += 1
            if last.predicted in self._eos:
                return None
        return Flight(self._draft(self.params.max_new_tokens - position, position))

    def _call(self, draft: Draft, flights: deque[Flight]) -> VerifyCall:
        """The request that verifies `draft` after the committed tokens and the rounds in
        flight (their drafts and guessed last tokens)."""
        after = [t for f in flights for t in [*f.draft.ids, f.predicted]]
        return self.target.start(
            draft.ids,
            self._rule(draft),
            self.params.gamma,
            draft.uniforms,
            after=after,
        )

    def _send_another(self, flights: deque[Flight]) -> bool:
        """Whether the device drafts and sends one more round before it takes a verdict: the
        method drafts, the session takes another round in flight, the budget has room, the
        text did not end, and `algorithms.send_ahead` says it pays."""
        last = flights[-1].draft
        if not (self.pipelines and self.spec.drafts and self.target is not None):
            return False
        if len(flights) >= self._depth_cap() or not last.ids or last.ids[-1] in self._eos:
            return False
        tentative = sum(f.tentative for f in flights) + 1  # and the guess of the last one's end
        if self.params.max_new_tokens - self.stats.new_tokens - tentative < 2:
            return False
        if self.params.rounds_in_flight != "auto":  # a fixed depth: always that many
            return True
        ahead = sum(f.tentative for f in flights)
        drafts = sum(len(f.draft.ids) for f in flights)
        chance = self.calibration.chance(drafts, ahead - drafts + 1)  # and the next guess
        costs = self.costs
        return alg.send_ahead(chance, ahead, costs.round_steps(), costs.verify_share())

    def _depth_cap(self) -> int:
        """The most rounds in flight: the session's limit, or `rounds_in_flight`."""
        limit = self.target.max_in_flight if self.target is not None else 1
        asked = self.params.rounds_in_flight
        return limit if asked == "auto" else min(limit, asked)

    def _void(self, flights: deque[Flight]) -> None:
        """Drop the rounds in flight: nothing they drafted is committed or counted accepted."""
        self.stats.voided_rounds += len(flights)
        flights.clear()
        if self.target is not None:
            self.target.drop()

    def _count_call(self, flight: Flight, verdict: Verdict) -> None:
        """What waiting for a verdict cost; its rows on the device."""
        if flight.sent_at is not None:
            wait = time.perf_counter() - flight.sent_at
            self.costs.add("wait", wait)
            if verdict.verify_seconds is not None:
                self.costs.add("verify", verdict.verify_seconds)
                if flight.alone:
                    self.costs.add("trip", max(0.0, wait - verdict.verify_seconds))
        verdict.log_p_G = verdict.log_p_G.to(self.device)
        if verdict.log_q_gen is not None:
            verdict.log_q_gen = verdict.log_q_gen.to(self.device)

    def _open_session(self, prompt: list[int], **options: Any) -> GeneralistSession:
        """A generalist session for this run (the driver closes it at the end)."""
        session = self.generalist.open_session(prompt, **options)
        self.sessions.append(session)
        return session

    def _open_target(self, vocab_size: int, **options: Any) -> GeneralistSession | None:
        """The generalist's session on the public prompt (None: the method does not use it)."""
        if not self.spec.uses_generalist:
            return None
        if self.prompts.public_generalist is None:
            raise GeneralistError(self.prompts.generalist_error or "no generalist prompt")
        return self._open_session(
            self.prompts.public_generalist,
            vocab_size=vocab_size,
            temperature=self.params.temperature,
            **options,
        )

    def _decide(self, draft: Draft, verdict: Verdict, rule: Rule, gamma: Any = None) -> int:
        """Drafts accepted: the generalist side's count, else the device decides with its own
        rows (`algorithms.accept`; sampled matching reads the q_ctx rows it sampled from;
        `gamma`: the gate per position, default γ)."""
        if verdict.accepted is not None:
            return verdict.accepted
        k = len(draft.ids)
        sampled_match = rule == "match" and not self.params.greedy
        return alg.accept(
            rule,
            draft.ids,
            verdict.log_p_G,
            torch.stack(draft.q_gen) if draft.q_gen else None,
            self.params.gamma if gamma is None else gamma,
            draft.uniforms,
            proposal=torch.stack(draft.q_ctx[:k]) if sampled_match else None,
            top_p=self.params.top_p,
            generator=self._generator(draft.position, "accept") if sampled_match else None,
        )

    def _fall_back(self, err: GeneralistError) -> None:
        """Finish with the specialist alone, keeping what is committed (or raise, if asked).

        The failed session is still closed by the driver at the end (its service may return).
        """
        if self.params.on_generalist_error == "raise":
            raise err
        self.stats.degraded = True
        self.stats.degraded_reason = str(err)
        self.spec = METHOD_SPECS["specialist"]
        self.ctx = self._specialist_alone()
        self.gen = self.target = None

    def _commit(self, draft: Draft, accepted: Accepted, token: int, *, rolled: bool) -> Round:
        """Keep the accepted drafts and `token` everywhere; count and return the round.
        `rolled`: rounds in flight hold them already (no rollback)."""
        if not rolled:
            self._roll_back(draft, accepted, token)
        n = accepted.verified
        if self.target is not None:
            self.target.commit(n, token)
        tokens = self._cut_at_eos([*draft.ids[:n], token])
        self._count(len(draft.ids), min(n, len(tokens)), len(tokens))
        return Round(tokens, min(n, len(tokens)), self._spell(tokens, draft))

    # ------------------------------------------------------------------ the specialist's steps

    def _step(self, seq: ModelSequence, q_ctx: list, q_gen: list) -> None:
        """One cached specialist step: q_ctx (and q_gen, when batched) at the next position."""
        start = time.perf_counter()
        rows = alg.temper(seq.forward()[:, 0], self.params.temperature)  # (B, V)
        q_ctx.append(rows[0])
        if len(rows) > 1:
            q_gen.append(rows[1])
        self.stats.specialist_calls += 1
        self.costs.add("step", time.perf_counter() - start)

    def _draft_length(self, remaining: int) -> int:
        """The most tokens this round may draft: K (or `max_draft_tokens` under "auto"), and
        one fewer than the budget left (the round's last token is the recovered one)."""
        p = self.params
        return min(p.max_draft_tokens if self.adaptive else p.draft_tokens, remaining - 1)

    def _draft_tokens(
        self, seq: ModelSequence, k: int, eos: frozenset[int], draft: Draft
    ) -> list[int]:
        """Up to k tokens from q_ctx, each appended to `seq`, ending at the first in `eos`
        (included); under `draft_tokens="auto"`, with `draft_stop` once
        `algorithms.keep_drafting` says stop (that token included), else before a token
        `algorithms.worth_drafting` says does not pay. q_ctx (and batched q_gen) before each
        go to `draft`."""
        tokens: list[int] = []
        # as one round at a time (fixed K reads none of it)
        calibration = self.calibration.standing(self.flights) if self.adaptive else None
        rho = calibration.rho if calibration is not None else 1.0
        stop = self.params.draft_stop if self.adaptive else None  # by confidence
        by_cost = self.adaptive and self.params.draft_stop is None
        acceptance = calibration.acceptance if calibration is not None else 1.0
        round_steps = self.costs.round_steps()
        for _ in range(k):
            if by_cost and not alg.worth_drafting(len(tokens) + 1, acceptance, round_steps):
                break
            self._step(seq, draft.q_ctx, draft.q_gen)
            token = self._choose_draft(draft.q_ctx[-1], draft.position + len(tokens))
            tokens.append(token)
            seq.append([token])
            if token in eos:
                break
            draft.confidences.append(float(draft.q_ctx[-1][token].exp()))
            if stop is not None and not alg.keep_drafting(draft.confidences, rho, stop):
                break
        return tokens

    def _observe(self, draft: Draft, accepted: int) -> None:
        """Count a verdict for `draft_tokens="auto"`: the specialist's `accepted` drafts and
        the first rejected one are judged; the rest were never looked at."""
        self.calibration.count(draft.confidences, accepted)

    def _score(self, seq: ModelSequence, tokens: list[int]) -> torch.Tensor:
        """(len(tokens)+1, V) log-probs of `seq` at each token's position and after (on the
        device): q_gen over the draft."""
        seq.append(tokens)
        rows = seq.forward(len(tokens) + 1)[0].to(self.device)
        self.stats.specialist_calls += 1
        return alg.temper(rows, self.params.temperature)

    # ------------------------------------------------------------------ choosing

    def _generator(self, position: int, purpose: str) -> torch.Generator:
        """The random generator of one choice: seeded by (seed, position, purpose) alone."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(alg.choice_seed(self.seed, position, purpose))
        return generator

    def _sampling(self, logp: torch.Tensor) -> torch.Tensor:
        """The distribution a sample is drawn from (top-p in sampling mode)."""
        return logp if self.params.greedy else alg.top_p_filter(logp, self.params.top_p)

    def _choose_draft(self, q_ctx: torch.Tensor, position: int) -> int:
        """A drafted token: q_ctx's argmax, or a sample from it."""
        greedy = self.params.greedy
        generator = None if greedy else self._generator(position, "draft")
        return alg.pick(self._sampling(q_ctx), greedy=greedy, generator=generator)

    def _choose(self, scores: torch.Tensor, position: int) -> int:
        """The recovered token: the scores' argmax, or a sample from their softmax."""
        greedy = self.params.greedy
        if greedy:
            return alg.pick(scores, greedy=True)
        scores = self._sampling(torch.log_softmax(scores, dim=-1))
        return alg.pick(scores, greedy=False, generator=self._generator(position, "recover"))

    @property
    def _context_gate(self) -> bool:
        """The ratio test's gate varies per position (`gate="context"`): the device decides."""
        return self.params.gate == "context" and self.spec.verify == "ratio"

    def _gates(self, draft: Draft, k: int) -> torch.Tensor:
        """γ_eff at the first k drafted positions (`algorithms.context_gate`)."""
        q_ctx, q_gen = torch.stack(draft.q_ctx[:k]), torch.stack(draft.q_gen[:k])
        return alg.context_gate(self.params.gamma, q_ctx, q_gen)

    def _draws(self, k: int, position: int) -> list[float]:
        """k uniform draws for a sampled ratio test at the k positions from `position`."""
        generator = self._generator(position, "verify")
        return torch.rand(k, generator=generator, device=self.device).tolist()

    # ------------------------------------------------------------------ counting

    def _cut_at_eos(self, tokens: list[int]) -> list[int]:
        """The tokens up to and including the first end-of-text one (which ends the run)."""
        eos = self._eos
        for i, t in enumerate(tokens):
            if t in eos:
                self.stats.finish_reason = "eos"
                return tokens[: i + 1]
        return tokens

    def _count(self, drafted: int, accepted: int, new_tokens: int) -> None:
        s = self.stats
        s.rounds += 1
        s.new_tokens += new_tokens
        if self.spec.drafts:
            s.drafted += drafted
            s.accepted += accepted


_ROUNDS: ThreadPoolExecutor | None = None
_ROUNDS_LOCK = threading.Lock()


def _round_pool() -> ThreadPoolExecutor:
    """The threads blocking runs wait on their rounds in flight with, shared by every run of
    the process (started with the first such round)."""
    global _ROUNDS
    with _ROUNDS_LOCK:
        if _ROUNDS is None:
            _ROUNDS = ThreadPoolExecutor(64, thread_name_prefix="specsteer-round")
        return _ROUNDS


def _consume(task: asyncio.Future) -> None:
    """Retrieve a dropped task's outcome, so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()
