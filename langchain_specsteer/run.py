"""One generation in progress, whatever the alignment: the loop, its drivers and its counters.

A round is draft → verify → accept → recover → commit. `Run` holds what every round shares:
the budget, opening the generalist session, the specialist's cached steps and drafting, the
bonus step, the fallback to the specialist when the generalist stays unreachable, the commit
and the statistics, and the two drivers (`for` and `async for`). Its subclasses say only how
they draft (and align), accept and recover: `engine.DecodeRun` on one shared vocabulary,
`byte_engine.ByteDecodeRun` on text the two models spell in their own tokens.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.methods import METHOD_SPECS
from langchain_specsteer.verification import (
    Generalist,
    GeneralistError,
    GeneralistSession,
    Rule,
    Verdict,
    VerifyCall,
)

if TYPE_CHECKING:
    from langchain_specsteer.models import LocalSpecialist, TokenSequence
    from langchain_specsteer.params import DecodingParams

__all__ = ["DecodeStats", "Draft", "Prompts", "Round", "Run"]

Steps = Generator["Round | VerifyCall", "Verdict | None", None]
"""A run's loop: it yields `Round`s, and `VerifyCall`s that its driver answers."""


@dataclass(frozen=True)
class Prompts:
    """Token ids of the three prompts of one request.

    Attributes:
        private: the specialist's prompt with the private context (c ⊕ x). Device only.
        public_specialist: the specialist's prompt without it (x), for q_gen.
        public_generalist: the generalist's prompt (x); None when it could not be encoded
            (a remote generalist unreachable), which a method using the generalist treats
            like any other generalist failure.
    """

    private: list[int]
    public_specialist: list[int]
    public_generalist: list[int] | None
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
    generalist_calls: int = 0
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
        confidences: q_ctx(d_i) of the specialist's drafted tokens (`draft_tokens="auto"`).
    """

    ids: list[int] = field(default_factory=list)
    q_ctx: list[torch.Tensor] = field(default_factory=list)
    q_gen: list[torch.Tensor] = field(default_factory=list)
    uniforms: list[float] | None = None
    confidences: list[float] = field(default_factory=list)


class Run(ABC):
    """One generation in progress: `for` or `async for` yields each round's committed tokens.

    The loop itself is `_steps`, a generator that yields `Round`s and, when the generalist
    must answer, `VerifyCall`s; the two drivers differ only in how they perform those.

    Attributes:
        ctx: the specialist after the private prompt (q_ctx); it never leaves the device.
        gen: the specialist after the public prompt (q_gen), when the device computes it.
        target: the generalist's session, when the method uses the generalist.
    """

    def __init__(
        self,
        specialist: LocalSpecialist,
        generalist: Generalist,
        prompts: Prompts,
        params: DecodingParams,
    ):
        self.specialist = specialist
        self.generalist = generalist
        self.prompts = prompts
        self.params = params
        self.spec = METHOD_SPECS[params.method]
        self.knobs = alg.RecoveryParams(
            alpha=params.alpha,
            top_p=params.top_p,
            costeer_steps=params.costeer_steps,
            costeer_a=params.costeer_a,
            costeer_b=params.costeer_b,
            costeer_lambda=params.costeer_lambda,
            costeer_eta=params.costeer_eta,
        )
        self.stats = DecodeStats(method=params.method)
        self.device = specialist.device
        self.rng: torch.Generator | None = None
        self.ctx: TokenSequence | None = None
        self.gen: TokenSequence | None = None
        self.target: GeneralistSession | None = None
        self.sessions: list[GeneralistSession] = []  # opened by the steps, closed by the driver
        self._stepping = threading.Lock()  # one step at a time, then closing
        self.adaptive = params.draft_tokens == "auto"
        self.verified = [0.0, 0.0]  # past verdicts: drafts accepted, Σ q_ctx of those judged
        if not params.greedy:
            self.rng = torch.Generator(device=self.device)
            self.rng.manual_seed(params.seed if params.seed is not None else torch.seed())

    # ------------------------------------------------------------------ what subclasses say

    @abstractmethod
    def _open(self) -> None:
        """Start the specialist's sequences and the generalist's session (`_open_target`)."""

    @abstractmethod
    def _draft(self, remaining: int) -> Draft:
        """Align the specialist to the committed output and draft (`_draft_tokens`)."""

    @abstractmethod
    def _rule(self, draft: Draft) -> Rule:
        """How the generalist side is asked to verify `draft`."""

    @abstractmethod
    def _accept(self, draft: Draft, verdict: Verdict | None) -> tuple[int, int]:
        """(the verified vocabulary's, the specialist's) drafted tokens accepted."""

    @abstractmethod
    def _recover(self, draft: Draft, verdict: Verdict | None, n: int, s: int) -> int:
        """The round's last token, after `n` (`s` specialist) accepted drafts."""

    @abstractmethod
    def _roll_back(self, draft: Draft, n: int, token: int) -> None:
        """Bring the specialist's caches to the committed output."""

    @abstractmethod
    def _specialist_alone(self, draft: Draft | None) -> TokenSequence:
        """The specialist's sequence to finish alone with, the unverified draft dropped."""

    @property
    @abstractmethod
    def _eos(self) -> frozenset[int]:
        """Token ids that end the text when committed."""

    def _spell(self, tokens: list[int], draft: Draft) -> bytes | None:
        """The bytes a round's tokens add to the text (None: the token path keeps ids)."""
        return None

    # ------------------------------------------------------------------ the drivers

    def __iter__(self) -> Iterator[Round]:
        """Run the steps here, blocking on the generalist's answers."""
        steps = self._steps()
        try:
            done, item = self._advance(steps)
            while not done:
                if isinstance(item, VerifyCall):
                    try:
                        verdict = item.perform()
                    except GeneralistError as err:
                        done, item = self._advance(steps, error=err)
                        continue
                    done, item = self._advance(steps, verdict)
                else:
                    yield item
                    done, item = self._advance(steps)
        finally:
            self._finish(steps)
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
        try:
            done, item = await on_worker(self._advance, steps)
            while not done:
                if isinstance(item, VerifyCall):
                    try:
                        if item.session.awaits_io:
                            verdict = await item.aperform()
                        else:  # a model in this process: its forward runs on the worker too
                            verdict = await on_worker(item.perform)
                    except GeneralistError as err:
                        done, item = await on_worker(self._advance, steps, None, err)
                        continue
                    done, item = await on_worker(self._advance, steps, verdict)
                else:
                    yield item
                    done, item = await on_worker(self._advance, steps)
        finally:
            # A cancelled caller may leave a step running on the worker: finish after it.
            await on_worker(self._finish, steps)
            worker.shutdown(wait=False)
            for session in self.sessions:
                await session.aclose()

    def _advance(
        self,
        steps: Steps,
        reply: Verdict | None = None,
        error: GeneralistError | None = None,
    ) -> tuple[bool, Round | VerifyCall | None]:
        """Resume the steps with a verdict (or the generalist's failure): (done, next item)."""
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
        """The loop: yields each `Round`, and a `VerifyCall` whenever the generalist must
        answer (the driver sends the `Verdict` back, or throws `GeneralistError` in)."""
        p = self.params
        self.stats._start = time.perf_counter()
        try:
            try:
                self._open()
            except GeneralistError as err:
                self._fall_back(err, None)
            while self.stats.new_tokens < p.max_new_tokens:
                # Draft (device): up to K tokens from q_ctx, ending early at EOS.
                draft = self._draft(p.max_new_tokens - self.stats.new_tokens)
                # Verify (generalist side). If it stays unreachable, the specialist finishes.
                try:
                    verdict = yield from self._verify(draft)
                except GeneralistError as err:
                    self._fall_back(err, draft)
                    continue
                n, s = self._accept(draft, verdict)
                if verdict is not None:
                    self._observe(draft, s)
                # Recover: the token at the first rejected position (or the bonus position).
                if self.spec.recovers_with_q_ctx and s == len(draft.q_ctx):
                    self._step(self.ctx, draft.q_ctx, draft.q_gen)
                token = self._recover(draft, verdict, n, s)
                # Roll back every cache to the committed length, then commit.
                yield self._commit(draft, n, token)
                if self.stats.finish_reason == "eos":
                    return
            self.stats.finish_reason = "length"
        finally:
            self.stats.seconds = time.perf_counter() - self.stats._start

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

    def _verify(self, draft: Draft) -> Generator[VerifyCall, Verdict, Verdict | None]:
        """Ask the generalist side to score the draft (None: the method does not use it)."""
        if self.target is None:
            return None
        rule, gamma = self._rule(draft), self.params.gamma
        verdict = yield VerifyCall(self.target, draft.ids, rule, gamma, draft.uniforms)
        self.stats.generalist_calls += 1
        verdict.log_p_G = verdict.log_p_G.to(self.device)
        if verdict.log_q_gen is not None:
            verdict.log_q_gen = verdict.log_q_gen.to(self.device)
        return verdict

    def _decide(
        self,
        rule: Rule,
        draft: list[int],
        verdict: Verdict,
        q_gen: list[torch.Tensor] | None = None,
        proposal: list[torch.Tensor] | None = None,
        uniforms: list[float] | None = None,
        gamma: float | torch.Tensor | None = None,
    ) -> int:
        """Drafts accepted: the generalist side's count, else the device decides with its own
        rows (`algorithms.accept`; `proposal`: sampled matching's q_ctx rows; `gamma`: the
        gate per position, default γ)."""
        if verdict.accepted is not None:
            return verdict.accepted
        return alg.accept(
            rule,
            draft,
            verdict.log_p_G,
            torch.stack(q_gen) if q_gen else None,
            self.params.gamma if gamma is None else gamma,
            uniforms,
            proposal=torch.stack(proposal) if proposal else None,
            top_p=self.params.top_p,
            generator=self.rng,
        )

    def _fall_back(self, err: GeneralistError, draft: Draft | None) -> None:
        """Finish with the specialist alone, keeping what is committed (or raise, if asked).

        The failed session is still closed by the driver at the end (its service may return).
        """
        if self.params.on_generalist_error == "raise":
            raise err
        self.stats.degraded = True
        self.stats.degraded_reason = str(err)
        self.spec = METHOD_SPECS["specialist"]
        self.ctx = self._specialist_alone(draft)
        self.gen = self.target = None

    def _commit(self, draft: Draft, n: int, token: int) -> Round:
        """Keep the first `n` drafts and `token` everywhere; count and return the round."""
        self._roll_back(draft, n, token)
        if self.target is not None:
            self.target.commit(n, token)
        tokens = self._cut_at_eos([*draft.ids[:n], token])
        accepted = min(n, len(tokens))
        self._count(len(draft.ids), accepted, len(tokens))
        return Round(tokens, accepted, self._spell(tokens, draft))

    # ------------------------------------------------------------------ the specialist's steps

    def _step(self, seq: TokenSequence, q_ctx: list, q_gen: list) -> None:
        """One cached specialist step: q_ctx (and q_gen, when batched) at the next position."""
        rows = alg.temper(seq.forward()[:, 0], self.params.temperature)  # (B, V)
        q_ctx.append(rows[0])
        if len(rows) > 1:
            q_gen.append(rows[1])
        self.stats.specialist_calls += 1

    def _draft_length(self, remaining: int) -> int:
        """The most tokens this round may draft: K (or `max_draft_tokens` under "auto"), and
        one fewer than the budget left (the round's last token is the recovered one)."""
        p = self.params
        return min(p.max_draft_tokens if self.adaptive else p.draft_tokens, remaining - 1)

    def _draft_tokens(
        self, seq: TokenSequence, k: int, eos: frozenset[int], draft: Draft
    ) -> list[int]:
        """Up to k tokens from q_ctx, each appended to `seq`, ending at the first in `eos`
        (included), or under `draft_tokens="auto"` once `algorithms.keep_drafting` says stop
        (that token included); q_ctx (and batched q_gen) before each go to `draft`."""
        tokens: list[int] = []
        calibration = alg.draft_calibration(*self.verified) if self.adaptive else 1.0
        for _ in range(k):
            self._step(seq, draft.q_ctx, draft.q_gen)
            token = self._choose_draft(draft.q_ctx[-1])
            tokens.append(token)
            seq.append([token])
            if token in eos:
                break
            if self.adaptive:
                draft.confidences.append(float(draft.q_ctx[-1][token].exp()))
                if not alg.keep_drafting(draft.confidences, calibration, self.params.draft_stop):
                    break
        return tokens

    def _observe(self, draft: Draft, accepted: int) -> None:
        """Count a verdict for `draft_tokens="auto"`: the specialist's `accepted` drafts and
        the first rejected one are judged; the rest were never looked at."""
        judged = draft.confidences[: accepted + 1]
        self.verified[0] += min(accepted, len(judged))
        self.verified[1] += sum(judged)

    def _score(self, seq: TokenSequence, tokens: list[int]) -> torch.Tensor:
        """(len(tokens)+1, V) log-probs of `seq` at each token's position and after (on the
        device): q_gen over the draft."""
        seq.append(tokens)
        rows = seq.forward(len(tokens) + 1)[0].to(self.device)
        self.stats.specialist_calls += 1
        return alg.temper(rows, self.params.temperature)

    # ------------------------------------------------------------------ choosing

    def _sampling(self, logp: torch.Tensor) -> torch.Tensor:
        """The distribution a sample is drawn from (top-p in sampling mode)."""
        return logp if self.params.greedy else alg.top_p_filter(logp, self.params.top_p)

    def _choose_draft(self, q_ctx: torch.Tensor) -> int:
        """A drafted token: q_ctx's argmax, or a sample from it."""
        return alg.pick(self._sampling(q_ctx), greedy=self.params.greedy, generator=self.rng)

    def _choose(self, scores: torch.Tensor) -> int:
        """The recovered token: the scores' argmax, or a sample from their softmax."""
        if not self.params.greedy:
            scores = self._sampling(torch.log_softmax(scores, dim=-1))
        return alg.pick(scores, greedy=self.params.greedy, generator=self.rng)

    @property
    def _context_gate(self) -> bool:
        """The ratio test's gate varies per position (`gate="context"`): the device decides."""
        return self.params.gate == "context" and self.spec.verify == "ratio"

    def _gates(self, draft: Draft, k: int) -> torch.Tensor:
        """γ_eff at the first k drafted positions (`algorithms.context_gate`)."""
        q_ctx, q_gen = torch.stack(draft.q_ctx[:k]), torch.stack(draft.q_gen[:k])
        return alg.context_gate(self.params.gamma, q_ctx, q_gen)

    def _draws(self, k: int) -> list[float]:
        """k uniform draws for a sampled ratio test, from this run's RNG."""
        return torch.rand(k, generator=self.rng, device=self.device).tolist()

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
