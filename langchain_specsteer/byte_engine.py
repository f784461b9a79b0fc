"""The byte-level path: a specialist and a generalist that share only text (DESIGN.md §2).

The committed output is bytes, always a whole number of the generalist's tokens: the
generalist writes and verifies in its own vocabulary, with the same `GeneralistSession` as
the token path (in process or over the network). The specialist drafts in its own tokens and
is re-synchronised to the committed bytes before each round: its tokens that still spell a
prefix are kept with their KV cache, the rest is re-tokenised, and the last re-tokenised
token is held back as *pending* bytes its next token must start with (so a text cut inside
one of its tokens does not distort its next distribution: one-token healing).

A round:

1. **Draft**: the specialist proposes up to K tokens (the first one extending the pending
   bytes); their new bytes are the draft.
2. **Verify**: the generalist scores the draft in its own tokenization. Greedy `speculative`
   accepts generalist tokens while each is the generalist's argmax, so its output equals the
   generalist's greedy output exactly. `specsteer` runs the ratio test per *aligned chunk*
   (spans whose ends are token boundaries in both tokenizations), summed log p_G against
   summed log q_gen.
3. **Recover**: one generalist token. Greedy `generalist`/`speculative` take p_G's argmax.
   The steered methods fuse the two models' next-byte distributions one byte at a time until
   the generalist's token ends (`bytelevel.recover_bytewise`, the default), or score the
   generalist's top tokens by how likely the specialist is to spell them
   (`byte_recovery="token"`, `bytelevel.recover_token`).

What is approximate, and why (docs/bytelevel.md): byte distributions look one token ahead
(the tokens that start with the bytes so far), where Hayase et al. (2025) are exact with a
covering tree at the cost of extra forwards; and the first drafted token's q values are
renormalised over the tokens that extend the pending bytes.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.bytelevel import (
    TokenBytes,
    aligned_boundaries,
    chunk_accept,
    recover_bytewise,
)
from langchain_specsteer.bytelevel import recover_token as recover_bytes
from langchain_specsteer.engine import METHOD_SPECS, DecodeRun, Round
from langchain_specsteer.verification import (
    GeneralistError,
    GeneralistSession,
    Verdict,
    VerifyCall,
)

if TYPE_CHECKING:
    from langchain_specsteer.engine import Prompts, SpecSteerEngine
    from langchain_specsteer.models import LocalSpecialist, TokenSequence
    from langchain_specsteer.params import DecodingParams
    from langchain_specsteer.verification import Generalist

__all__ = ["ByteDecodeRun", "ByteVocabularies"]


@dataclass(frozen=True)
class ByteVocabularies:
    """Both models' `TokenBytes` and the generalist's output width."""

    specialist: TokenBytes
    generalist: TokenBytes
    generalist_width: int

    @classmethod
    def of(cls, specialist: LocalSpecialist, generalist: Generalist) -> ByteVocabularies:
        tokenizer = generalist.tokenizer
        if tokenizer is None:
            msg = (
                "the byte-level path needs the generalist's tokenizer on the device: pass "
                "tokenizer=AutoTokenizer.from_pretrained(<generalist>) to the generalist client"
            )
            raise ValueError(msg)
        width = generalist.vocab_size or len(tokenizer)
        return cls(TokenBytes(specialist.tokenizer), TokenBytes(tokenizer), width)


class ByteDecodeRun(DecodeRun):
    """One generation on the byte-level path; iterating yields `Round`s with their bytes."""

    def __init__(self, engine: SpecSteerEngine, prompts: Prompts, params: DecodingParams):
        if params.method == "speculative" and not params.greedy:
            msg = (
                "speculative sampling across tokenizers is not built (its residual needs both "
                "distributions over one vocabulary): use temperature=0, or method='specsteer'"
            )
            raise ValueError(msg)
        super().__init__(engine, prompts, params)
        self.vocabularies: ByteVocabularies = engine.bytes
        self.text = bytearray()  # the committed output
        self.last_piece = b""  # the bytes of the last committed generalist token

    def _steps(self) -> Generator[Round | VerifyCall, Verdict | None, None]:
        p, spec, engine = self.params, self.spec, self.engine
        self.stats._start = time.perf_counter()
        ctx = gen = target = None
        try:
            if spec.drafts or spec.recovers_with_q_ctx:
                ctx = engine.specialist.sequence(self.prompts.private)
            if spec.uses_q_gen:
                gen = engine.specialist.sequence(self.prompts.public_specialist)
            try:
                target = self._open()
            except GeneralistError as err:
                ctx, gen, target = self._fall_back(ctx, err)
            while self.stats.new_tokens < p.max_new_tokens:
                remaining = p.max_new_tokens - self.stats.new_tokens
                try:
                    if target is None:  # the specialist writes
                        round_ = self._specialist_round(ctx)
                    else:
                        round_ = yield from self._generalist_round(ctx, gen, target, remaining)
                except GeneralistError as err:
                    ctx, gen, target = self._fall_back(ctx, err)
                    continue
                self.text.extend(round_.data)
                if round_.tokens and target is not None:
                    self.last_piece = self.vocabularies.generalist.spell(round_.tokens[-1:])
                yield round_
                if self.stats.finish_reason == "eos":
                    return
            self.stats.finish_reason = "length"
        finally:
            self.stats.seconds = time.perf_counter() - self.stats._start

    def _open(self) -> GeneralistSession | None:
        if not self.spec.uses_generalist:
            return None
        if self.prompts.public_generalist is None:
            raise GeneralistError(self.prompts.generalist_error or "no generalist prompt")
        return self._open_session(
            self.prompts.public_generalist,
            vocab_size=self.vocabularies.generalist_width,
            temperature=self.params.temperature,
        )

    def _fall_back(
        self, ctx: TokenSequence | None, err: GeneralistError
    ) -> tuple[TokenSequence, None, None]:
        """The generalist is unreachable: the specialist finishes from the committed bytes."""
        if self.params.on_generalist_error == "raise":
            raise err
        self.stats.degraded = True
        self.stats.degraded_reason = str(err)
        self.spec = METHOD_SPECS["specialist"]
        return ctx or self.engine.specialist.sequence(self.prompts.private), None, None

    def _sync(self, seq: TokenSequence) -> bytes:
        """Make the specialist's tokens spell the committed bytes; return the pending bytes.

        Its tokens that still spell a prefix stay (with their cache); the rest is
        re-tokenised. The last re-tokenised token is held back as pending bytes that the next
        token must start with, unless it spells exactly the generalist's last token (then
        both tokenizations end there the same way, and the cut is as natural as the
        generalist's).
        """
        spell, kept, covered = self.vocabularies.specialist.table, 0, 0
        for token in seq.suffix:
            piece = spell[token] if token < len(spell) else None
            if not piece or self.text[covered : covered + len(piece)] != piece:
                break
            covered += len(piece)
            kept += 1
        seq.rollback(seq.prompt_length + kept)
        rest = self.vocabularies.specialist.encode(bytes(self.text[covered:]))
        if rest and spell[rest[-1]] != self.last_piece:
            seq.append(rest[:-1])
            return spell[rest[-1]]
        seq.append(rest)
        return b""

    def _constrained(self, row: torch.Tensor, pending: bytes) -> torch.Tensor:
        """Log-probs renormalised over the tokens that extend `pending` (as is, if none)."""
        if not pending:
            return row
        ids = self.vocabularies.specialist.extending(pending).to(row.device)
        masked = torch.full_like(row, float("-inf"))
        masked[ids] = row[ids]
        return torch.log_softmax(masked, dim=-1)

    def _specialist_round(self, ctx: TokenSequence) -> Round:
        pending = self._sync(ctx)
        q_ctx: list[torch.Tensor] = []
        self._step(ctx, q_ctx, [])
        q_ctx[0] = self._constrained(q_ctx[0], pending)
        token = self._recover(0, 0, q_ctx, None, [])
        ctx.append([token])
        if token in self.engine.specialist.eos_token_ids:
            self.stats.finish_reason = "eos"
        self._count(0, 0, 1)
        data = self.vocabularies.specialist.spell([token])[len(pending) :]
        return Round([token], 0, data)

    def _draft_tokens(
        self, ctx: TokenSequence, k: int, pending: bytes
    ) -> tuple[list[int], list[torch.Tensor]]:
        """Up to k specialist tokens from q_ctx (the first extends `pending`); stops at EOS,
        which is not kept. Returns the tokens and q_ctx before each (and after, if k ran)."""
        eos = self.engine.specialist.eos_token_ids
        draft: list[int] = []
        q_ctx: list[torch.Tensor] = []
        for i in range(k):
            self._step(ctx, q_ctx, [])
            if i == 0:
                q_ctx[0] = self._constrained(q_ctx[0], pending)
            token = alg.pick(
                self._sampling(q_ctx[-1]), greedy=self.params.greedy, generator=self.rng
            )
            ctx.append([token])
            if token in eos:
                break
            draft.append(token)
        return draft, q_ctx

    def _generalist_round(
        self,
        ctx: TokenSequence | None,
        gen: TokenSequence | None,
        target: GeneralistSession,
        remaining: int,
    ) -> Generator[VerifyCall, Verdict, Round]:
        p, spec, words = self.params, self.spec, self.vocabularies
        pending = self._sync(ctx) if ctx is not None else b""
        if gen is not None:
            self._sync(gen)
        drafted: list[int] = []
        q_ctx: list[torch.Tensor] = []
        if spec.drafts:
            drafted, q_ctx = self._draft_tokens(ctx, min(p.draft_tokens, remaining - 1), pending)
        draft_bytes = words.specialist.spell(drafted)[len(pending) :]
        draft = words.generalist.encode(draft_bytes)[: remaining - 1]
        rule = "none" if not draft else "match" if spec.verify == "match" else "device"
        verdict = yield VerifyCall(target, draft, rule, p.gamma)
        self.stats.generalist_calls += 1
        log_p_G = verdict.log_p_G.to(self.device)
        q_gen: list[torch.Tensor] = []
        if gen is not None:  # q_gen over the specialist's draft, on the device
            q_gen = list(self._score(gen, drafted))
            q_gen[0] = self._constrained(q_gen[0], pending)
        n, s = self._accept_bytes(verdict.accepted, draft, log_p_G, drafted, q_gen, pending)
        if spec.recovers_with_q_ctx and s == len(q_ctx):  # every drafted token accepted
            self._step(ctx, q_ctx, [])
            if s == 0:
                q_ctx[0] = self._constrained(q_ctx[0], pending)
        if spec.recover == "generalist":  # p_G's own argmax (or sample): a whole token
            token = self._recover(n, len(draft), [], log_p_G, [])
        else:
            token = self._recover_bytes(n, s, log_p_G, q_ctx, q_gen, pending if s == 0 else b"")
        target.commit(n, token)
        tokens = self._cut_at_eos([*draft[:n], token], self.engine.generalist.eos_token_ids)
        self._count(len(draft), min(n, len(tokens)), len(tokens))
        return Round(tokens, min(n, len(tokens)), words.generalist.spell(tokens))

    def _accept_bytes(
        self,
        decided: int | None,
        draft: list[int],
        log_p_G: torch.Tensor,
        drafted: list[int],
        q_gen: list[torch.Tensor],
        pending: bytes,
    ) -> tuple[int, int]:
        """(generalist tokens, specialist tokens) of the draft that are accepted."""
        if not draft:
            return 0, 0
        if self.spec.verify == "match":
            if decided is None:  # the device decides (an OpenAI-compatible server)
                ids = torch.tensor(draft, dtype=torch.long, device=log_p_G.device)
                decided = alg.speculative_accept(ids, log_p_G[:-1], log_p_G[:-1])
            return decided, 0
        words = self.vocabularies
        s_ends, offset = [], -len(pending)
        for token in drafted:
            offset += len(words.specialist.table[token] or b"")
            s_ends.append(offset)
        g_ends, offset = [], 0
        for token in draft:
            offset += len(words.generalist.table[token] or b"")
            g_ends.append(offset)
        boundaries = aligned_boundaries(s_ends, g_ends)
        log_q = [float(q_gen[i][t]) for i, t in enumerate(drafted)]
        log_p = [float(log_p_G[j][t]) for j, t in enumerate(draft)]
        uniforms = None
        if not self.params.greedy and boundaries:
            uniforms = torch.rand(len(boundaries), generator=self.rng, device=self.device).tolist()
        s, n = chunk_accept(boundaries, log_q, log_p, self.params.gamma, uniforms)
        return n, s

    def _recover_bytes(
        self,
        n: int,
        s: int,
        log_p_G: torch.Tensor,
        q_ctx: list[torch.Tensor],
        q_gen: list[torch.Tensor],
        pending: bytes,
    ) -> int:
        """The round's last token: a generalist token, steered by the specialist's bytes."""
        p, how = self.params, self.spec.recover
        if how == "steer":

            def fuse(P: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
                return alg.steer(P, delta, torch.zeros_like(delta), p.alpha)

        elif how == "costeer":

            def fuse(P: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
                return alg.costeer_policy(
                    P,
                    delta,
                    steps=p.costeer_steps,
                    a=p.costeer_a,
                    b=p.costeer_b,
                    lam=p.costeer_lambda,
                    eta=p.costeer_eta,
                )

        else:
            msg = f"no byte-level recovery for {how!r}"
            raise ValueError(msg)
        row = log_p_G[n]
        if not p.greedy:
            row = self._sampling(torch.log_softmax(row, dim=-1))
        common = {
            "log_p_G": row,
            "log_q_ctx": q_ctx[s],
            "log_q_gen": q_gen[s],
            "generalist": self.vocabularies.generalist,
            "specialist": self.vocabularies.specialist,
            "pending": pending,
            "fuse": fuse,
            "greedy": p.greedy,
            "generator": self.rng,
            "specialist_eos": sorted(self.engine.specialist.eos_token_ids) if not pending else (),
        }
        if p.byte_recovery == "byte":
            eos = sorted(self.engine.generalist.eos_token_ids)
            return recover_bytewise(**common, generalist_eos=eos)
        return recover_bytes(**common)
