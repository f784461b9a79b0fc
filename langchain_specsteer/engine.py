"""One decoding loop for every method: draft → verify → accept → recover → roll back → emit.

Each method of DESIGN.md §1 is a row of `METHOD_SPECS`: whether the specialist drafts, how
drafts are verified, and how the round's last token is recovered. The loop reads that row;
the math lives in `algorithms`, the models behind `TokenSequence`.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.models import LocalSpecialist, TokenSequence
from langchain_specsteer.params import DecodingParams
from langchain_specsteer.verification import (
    Generalist,
    GeneralistError,
    GeneralistSession,
    Verdict,
    VerifyCall,
)

__all__ = [
    "METHOD_SPECS",
    "DecodeRun",
    "DecodeStats",
    "MethodSpec",
    "Prompts",
    "Round",
    "SpecSteerEngine",
]


@dataclass(frozen=True)
class MethodSpec:
    """What a method does in a round.

    Attributes:
        drafts: the specialist drafts up to K tokens from q_ctx.
        verify: "ratio" (SpecSteer's p_G/q_gen ≥ γ), "match" (standard speculative), or "none".
        recover: the round's last token comes from "generalist" (p_G), "specialist" (q_ctx),
            "steer" (p_G + α δ) or "costeer" (CoSteer's iterative fusion).
    """

    drafts: bool
    verify: Literal["none", "ratio", "match"]
    recover: Literal["generalist", "specialist", "steer", "costeer"]

    @property
    def uses_generalist(self) -> bool:
        return self.recover != "specialist" or self.verify != "none"

    @property
    def uses_q_gen(self) -> bool:
        return self.verify == "ratio" or self.recover in ("steer", "costeer")

    @property
    def recovers_with_q_ctx(self) -> bool:
        return self.recover in ("specialist", "steer", "costeer")


METHOD_SPECS: dict[str, MethodSpec] = {
    "generalist": MethodSpec(drafts=False, verify="none", recover="generalist"),
    "specialist": MethodSpec(drafts=False, verify="none", recover="specialist"),
    "speculative": MethodSpec(drafts=True, verify="match", recover="generalist"),
    "light_costeer": MethodSpec(drafts=False, verify="none", recover="steer"),
    "costeer": MethodSpec(drafts=False, verify="none", recover="costeer"),
    "specsteer": MethodSpec(drafts=True, verify="ratio", recover="steer"),
}


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


class SpecSteerEngine:
    """Runs any method of DESIGN.md §1 on a specialist and a generalist (one vocabulary, or
    different tokenizers on the byte-level path).

    Args:
        specialist: the on-device model (q_ctx, and q_gen in-process).
        generalist: the model that verifies (p_G).
        batch_specialist: compute q_ctx and q_gen in one batch-of-2 specialist forward per
            step (the two prompts left-padded), instead of drafting on q_ctx and then scoring
            the draft on q_gen in a second forward. None (default): batch on CUDA, where a
            batch of two costs about one step; not on CPU, where the padded batch measured
            1.0–1.2× slower than the two passes apart (docs/index.md).
        alignment: "token" (one shared vocabulary), "byte" (the two models share only text;
            `byte_engine.py`), or "auto" (default): "token" when the vocabularies match.
    """

    def __init__(
        self,
        specialist: LocalSpecialist,
        generalist: Generalist,
        *,
        batch_specialist: bool | None = None,
        alignment: Literal["auto", "token", "byte"] = "auto",
    ):
        self.specialist = specialist
        self.generalist = generalist
        if batch_specialist is None:
            batch_specialist = specialist.device.type == "cuda"
        self.batch_specialist = batch_specialist
        if alignment == "auto":
            shared = generalist.vocab_signature in (None, specialist.vocab_signature)
            alignment = "token" if shared else "byte"
        self.alignment = alignment
        if alignment == "token":
            self.vocab_size = _shared_vocab_size(specialist, generalist)
        elif alignment == "byte":
            from langchain_specsteer.byte_engine import ByteVocabularies

            self.vocab_size = specialist.vocab_size
            self.bytes = ByteVocabularies.of(specialist, generalist)
        else:
            msg = f"alignment must be 'auto', 'token' or 'byte', got {alignment!r}"
            raise ValueError(msg)

    def run(self, prompts: Prompts, params: DecodingParams) -> DecodeRun:
        """A lazy generation: `for` (or `async for`) over it gives `Round`s; its `stats` fill
        in as it goes."""
        if self.alignment == "byte":
            from langchain_specsteer.byte_engine import ByteDecodeRun

            return ByteDecodeRun(self, prompts, params)
        return DecodeRun(self, prompts, params)


class DecodeRun:
    """One generation in progress: `for` or `async for` yields each round's committed tokens.

    The loop itself is `_steps`, a generator that yields `Round`s and, when the generalist
    must answer, `VerifyCall`s; the two drivers differ only in how they perform those.
    """

    def __init__(self, engine: SpecSteerEngine, prompts: Prompts, params: DecodingParams):
        self.engine = engine
        self.prompts = prompts
        self.params = params
        self.spec = METHOD_SPECS[params.method]
        self.stats = DecodeStats(method=params.method)
        self.device = engine.specialist.device
        self.rng: torch.Generator | None = None
        self.committed: list[int] = []
        self.sessions: list[GeneralistSession] = []  # opened by the steps, closed by the driver
        self._stepping = threading.Lock()  # one step at a time, then closing
        if not params.greedy:
            self.rng = torch.Generator(device=self.device)
            self.rng.manual_seed(params.seed if params.seed is not None else torch.seed())

    def _sequences(
        self,
    ) -> tuple[TokenSequence | None, TokenSequence | None, GeneralistSession | None]:
        """(specialist with context [+ without, batched], specialist without, generalist)."""
        spec, eng, prompts, V = self.spec, self.engine, self.prompts, self.engine.vocab_size
        ctx = gen = target = None
        if spec.uses_generalist:
            if prompts.public_generalist is None:
                raise GeneralistError(prompts.generalist_error or "no generalist prompt")
            target = self._open_session(
                prompts.public_generalist,
                vocab_size=V,
                temperature=self.params.temperature,
                q_gen_prompt=prompts.public_specialist if spec.uses_q_gen else None,
            )
        q_gen_on_device = spec.uses_q_gen and not (target is not None and target.hosts_q_gen)
        needs_q_ctx = spec.drafts or spec.recovers_with_q_ctx
        # ctx is the only sequence that sees the private context; it never leaves the device.
        if needs_q_ctx and q_gen_on_device and eng.batch_specialist:
            ctx = eng.specialist.sequence(prompts.private, prompts.public_specialist, vocab_size=V)
        else:
            if needs_q_ctx:
                ctx = eng.specialist.sequence(prompts.private, vocab_size=V)
            if q_gen_on_device:
                gen = eng.specialist.sequence(prompts.public_specialist, vocab_size=V)
        return ctx, gen, target

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
        steps: Generator[Round | VerifyCall, Verdict | None, None],
        reply: Verdict | None = None,
        error: GeneralistError | None = None,
    ) -> tuple[bool, Round | VerifyCall | None]:
        """Resume the steps with a verdict (or the generalist's failure): (done, next item)."""
        with self._stepping:
            try:
                return False, steps.throw(error) if error is not None else steps.send(reply)
            except StopIteration:
                return True, None

    def _finish(self, steps: Generator) -> None:
        """Close the steps (stops the clock; frees the specialist's caches)."""
        with self._stepping:
            steps.close()

    def _open_session(self, prompt: list[int], **options: Any) -> GeneralistSession:
        """A generalist session for this run (the driver closes it at the end)."""
        session = self.engine.generalist.open_session(prompt, **options)
        self.sessions.append(session)
        return session

    def _steps(self) -> Generator[Round | VerifyCall, Verdict | None, None]:
        """The loop: yields each `Round`, and a `VerifyCall` whenever the generalist must
        answer (the driver sends the `Verdict` back, or throws `GeneralistError` in)."""
        p = self.params
        self.stats._start = time.perf_counter()
        try:
            ctx, gen, target = self._sequences()
        except GeneralistError as err:
            if p.on_generalist_error == "raise":
                raise
            ctx, gen, target = self._degrade(None, 0, err)
        eos = self.engine.generalist.eos_token_ids | self.engine.specialist.eos_token_ids
        try:
            while self.stats.new_tokens < p.max_new_tokens:
                spec = self.spec
                remaining = p.max_new_tokens - self.stats.new_tokens
                k = min(p.draft_tokens, remaining - 1) if spec.drafts else 0
                # Draft (device): up to k tokens from q_ctx, ending early at EOS.
                draft, q_ctx, q_gen = self._draft(ctx, k, eos)
                # Verify (generalist side): one forward of each public model over the pending
                # token + draft. If it stays unreachable, the specialist finishes alone.
                uniforms = self._uniforms(len(draft))
                try:
                    verdict = yield from self._verify(target, draft, uniforms)
                except GeneralistError as err:
                    if p.on_generalist_error == "raise":
                        raise
                    ctx, gen, target = self._degrade(ctx, len(draft), err)
                    continue
                log_p_G = verdict.log_p_G if verdict is not None else None
                if gen is not None:
                    q_gen = list(self._score(gen, draft))
                elif verdict is not None and verdict.log_q_gen is not None:
                    q_gen = list(verdict.log_q_gen)
                n = verdict.accepted if verdict is not None else None
                if n is None:
                    n = self._accept(draft, q_ctx, log_p_G, q_gen, uniforms)
                # Recover: the token at the first rejected position (or the bonus position).
                if spec.recovers_with_q_ctx and n == len(q_ctx):
                    self._step(ctx, q_ctx, q_gen)
                token = self._recover(n, len(draft), q_ctx, log_p_G, q_gen)
                # Roll back every cache to the committed length, then commit.
                for seq in (ctx, gen):
                    if seq is not None:
                        seq.rollback(seq.length - len(draft) + n)
                        seq.append([token])
                if target is not None:
                    target.commit(n, token)
                tokens = self._cut_at_eos([*draft[:n], token], eos)
                self.committed.extend(tokens)
                self._count(len(draft), min(n, len(tokens)), len(tokens))
                yield Round(tokens=tokens, accepted=min(n, len(tokens)))
                if self.stats.finish_reason == "eos":
                    return
            self.stats.finish_reason = "length"
        finally:
            self.stats.seconds = time.perf_counter() - self.stats._start

    def _cut_at_eos(self, tokens: list[int], eos: frozenset[int]) -> list[int]:
        """The tokens up to and including the first end-of-text one (which ends the run)."""
        for i, t in enumerate(tokens):
            if t in eos:
                self.stats.finish_reason = "eos"
                return tokens[: i + 1]
        return tokens

    def _uniforms(self, k: int) -> list[float] | None:
        """The sampled ratio test's draws: made on the device, applied wherever it is verified."""
        if k and self.spec.verify == "ratio" and not self.params.greedy:
            return torch.rand(k, generator=self.rng, device=self.device).tolist()
        return None

    def _verify(
        self, target: GeneralistSession | None, draft: list[int], uniforms: list[float] | None
    ) -> Generator[VerifyCall, Verdict, Verdict | None]:
        """Ask the generalist side to score the draft (None: the method does not use it)."""
        if target is None:
            return None
        p, rule = self.params, self.spec.verify
        if rule == "match" and not p.greedy:  # needs q_ctx(d_i): only the device may decide
            rule = "device"
        verdict = yield VerifyCall(target, draft, rule, p.gamma, uniforms)
        self.stats.generalist_calls += 1
        verdict.log_p_G = verdict.log_p_G.to(self.device)
        if verdict.log_q_gen is not None:
            verdict.log_q_gen = verdict.log_q_gen.to(self.device)
        return verdict

    def _degrade(
        self, ctx: TokenSequence | None, n_draft: int, err: GeneralistError
    ) -> tuple[TokenSequence, None, None]:
        """Finish with the specialist alone: drop the unverified draft, keep what is committed.

        The failed session is still closed by the driver at the end (its service may return).
        """
        self.stats.degraded = True
        self.stats.degraded_reason = str(err)
        self.spec = METHOD_SPECS["specialist"]
        if ctx is None:
            ctx = self.engine.specialist.sequence(
                self.prompts.private, vocab_size=self.engine.vocab_size
            )
            ctx.append(self.committed)
        else:
            ctx.rollback(ctx.length - n_draft)
        return ctx, None, None

    def _step(self, ctx: TokenSequence, q_ctx: list, q_gen: list) -> None:
        """One cached specialist step: q_ctx (and q_gen, when batched) at the next position."""
        rows = alg.temper(ctx.forward()[:, 0], self.params.temperature)  # (B, V)
        q_ctx.append(rows[0])
        if len(rows) > 1:
            q_gen.append(rows[1])
        self.stats.specialist_calls += 1

    def _draft(
        self, ctx: TokenSequence | None, k: int, eos: frozenset[int]
    ) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
        """Specialist proposes up to k tokens; returns them and q_ctx (and q_gen) before each."""
        draft: list[int] = []
        q_ctx: list[torch.Tensor] = []
        q_gen: list[torch.Tensor] = []
        for _ in range(k):
            self._step(ctx, q_ctx, q_gen)
            token = alg.pick(
                self._sampling(q_ctx[-1]), greedy=self.params.greedy, generator=self.rng
            )
            draft.append(token)
            ctx.append([token])
            if token in eos:
                break
        return draft, q_ctx, q_gen

    def _score(self, seq: TokenSequence, draft: list[int]) -> torch.Tensor:
        """(len(draft)+1, V) q_gen log-probs at the draft positions and after (on the device)."""
        seq.append(draft)
        rows = seq.forward(len(draft) + 1)[0].to(self.device)
        self.stats.specialist_calls += 1
        return alg.temper(rows, self.params.temperature)

    def _accept(
        self,
        draft: list[int],
        q_ctx: list[torch.Tensor],
        log_p_G: torch.Tensor | None,
        q_gen: list[torch.Tensor],
        uniforms: list[float] | None,
    ) -> int:
        if not draft or self.spec.verify == "none":
            return 0
        p = self.params
        ids = torch.tensor(draft, device=self.device)
        if self.spec.verify == "ratio":  # only the drafted tokens' values are needed
            return alg.ratio_accept(
                log_p_G[:-1].gather(-1, ids.unsqueeze(-1)).squeeze(-1),
                torch.stack([row[d] for row, d in zip(q_gen, draft, strict=False)]),
                p.gamma,
                greedy=p.greedy,
                uniforms=None if uniforms is None else torch.tensor(uniforms),
            )
        # greedy matching reads only p's argmax; the proposal matters when sampling
        proposal = log_p_G[:-1] if p.greedy else self._sampling(torch.stack(q_ctx))
        return alg.speculative_accept(
            ids,
            self._sampling(log_p_G[:-1]),
            proposal,
            greedy=p.greedy,
            generator=self.rng,
        )

    def _recover(
        self,
        n: int,
        n_draft: int,
        q_ctx: list[torch.Tensor],
        log_p_G: torch.Tensor | None,
        q_gen: list[torch.Tensor],
    ) -> int:
        p, how = self.params, self.spec.recover
        if how == "generalist":
            scores = log_p_G[n]
            if self.spec.verify == "match" and not p.greedy and n < n_draft:
                scores = alg.residual(self._sampling(scores), self._sampling(q_ctx[n]))
        elif how == "specialist":
            scores = q_ctx[n]
        elif how == "steer":
            scores = alg.steer(log_p_G[n], q_ctx[n], q_gen[n], p.alpha)
        else:
            scores = alg.costeer_policy(
                log_p_G[n],
                q_ctx[n] - q_gen[n],
                steps=p.costeer_steps,
                a=p.costeer_a,
                b=p.costeer_b,
                lam=p.costeer_lambda,
                eta=p.costeer_eta,
            )
        if not p.greedy:
            scores = self._sampling(torch.log_softmax(scores, dim=-1))
        return alg.pick(scores, greedy=p.greedy, generator=self.rng)

    def _sampling(self, logp: torch.Tensor) -> torch.Tensor:
        """The distribution a sample is drawn from (top-p in sampling mode)."""
        return logp if self.params.greedy else alg.top_p_filter(logp, self.params.top_p)

    def _count(self, drafted: int, accepted: int, new_tokens: int) -> None:
        s = self.stats
        s.rounds += 1
        s.new_tokens += new_tokens
        if self.spec.drafts:
            s.drafted += drafted
            s.accepted += accepted


def _shared_vocab_size(specialist: LocalSpecialist, generalist: Generalist) -> int:
    """The common vocabulary width, or a clear error when the tokenizers differ."""
    signature = generalist.vocab_signature
    if signature is not None and signature != specialist.vocab_signature:
        g_tokenizer = generalist.tokenizer
        detail = ""
        if g_tokenizer is not None:
            s_vocab, g_vocab = specialist.tokenizer.get_vocab(), g_tokenizer.get_vocab()
            detail = (
                f" ({len(s_vocab)} vs {len(g_vocab)} tokens, "
                f"{len(s_vocab.items() ^ g_vocab.items())} entries differ)"
            )
        msg = (
            f"The specialist and generalist tokenizers have different vocabularies{detail}. "
            "The token-level path needs one shared vocabulary; use alignment='byte' (or "
            "'auto') for models with different tokenizers."
        )
        raise ValueError(msg)
    width = specialist.vocab_size
    if generalist.vocab_size is not None:  # None: unknown (an OpenAI server, no tokenizer)
        width = min(width, generalist.vocab_size)
    tokens = len(specialist.tokenizer.get_vocab())
    if width < tokens:
        msg = f"model output width {width} is smaller than the tokenizer's {tokens} tokens"
        raise ValueError(msg)
    return width
