"""The byte-level path: a specialist and a generalist that share only text (DESIGN.md §2).

The committed output is bytes. The generalist writes and verifies in its own tokens; the
specialist drafts in its own tokens and is re-synchronised to the committed bytes before
each draft (its tokens that still spell a prefix of them are kept with their KV cache; the
rest is re-tokenised). A draft becomes bytes, the bytes become the generalist's tokens (its
own tokenizer's split; an unfinished UTF-8 character as single-byte tokens), and the
generalist verifies those with the same `GeneralistSession` as the token path, in process or
over the network.

Methods so far: `generalist`, `specialist`, and greedy `speculative`, whose output equals
the generalist's greedy output token for token (each accepted token is the generalist's
argmax, the recovered one too). The ratio test per aligned chunk and byte-level steering for
`specsteer`, `light_costeer` and `costeer` are not built yet: those methods refuse
`alignment="byte"` with a clear error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.bytelevel import TokenBytes
from langchain_specsteer.engine import METHOD_SPECS, DecodeRun, Round
from langchain_specsteer.verification import GeneralistError, GeneralistSession

if TYPE_CHECKING:
    from langchain_specsteer.engine import Prompts, SpecSteerEngine
    from langchain_specsteer.models import LocalSpecialist, TokenSequence
    from langchain_specsteer.params import DecodingParams
    from langchain_specsteer.verification import Generalist

__all__ = ["BYTE_METHODS", "ByteDecodeRun", "ByteVocabularies"]

BYTE_METHODS = ("generalist", "specialist", "speculative")


@dataclass(frozen=True)
class ByteVocabularies:
    """Both models' `TokenBytes` and output widths."""

    specialist: TokenBytes
    generalist: TokenBytes
    generalist_width: int

    @classmethod
    def of(cls, specialist: LocalSpecialist, generalist: Generalist) -> ByteVocabularies:
        tokenizer = getattr(generalist, "tokenizer", None)
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
        if params.method not in BYTE_METHODS:
            msg = (
                f"method {params.method!r} does not run on the byte-level path yet (models with "
                f"different tokenizers): use one of {BYTE_METHODS}, or a pair sharing a "
                "vocabulary (alignment='token')"
            )
            raise ValueError(msg)
        if params.method == "speculative" and not params.greedy:
            msg = "speculative sampling across tokenizers is not built yet: use temperature=0"
            raise ValueError(msg)
        super().__init__(engine, prompts, params)
        self.vocabularies: ByteVocabularies = engine.bytes
        self.text = bytearray()  # the committed output

    def __iter__(self) -> Iterator[Round]:
        p, engine = self.params, self.engine
        self.stats._start = time.perf_counter()
        ctx = target = None
        try:
            if self.spec.drafts or self.spec.recovers_with_q_ctx:
                ctx = engine.specialist.sequence(self.prompts.private)
            try:
                target = self._open()
            except GeneralistError as err:
                ctx, target = self._fall_back(ctx, err)
            while self.stats.new_tokens < p.max_new_tokens:
                remaining = p.max_new_tokens - self.stats.new_tokens
                if target is None:  # the specialist writes
                    round_ = self._specialist_round(ctx)
                else:
                    try:
                        round_ = self._generalist_round(ctx, target, remaining)
                    except GeneralistError as err:
                        ctx, target = self._fall_back(ctx, err)
                        continue
                self.text.extend(round_.data)
                yield round_
                if self.stats.finish_reason == "eos":
                    return
            self.stats.finish_reason = "length"
        finally:
            self.stats.seconds = time.perf_counter() - self.stats._start
            if target is not None:
                target.close()

    def _open(self) -> GeneralistSession | None:
        if not self.spec.uses_generalist:
            return None
        if self.prompts.public_generalist is None:
            raise GeneralistError(self.prompts.generalist_error or "no generalist prompt")
        return self.engine.generalist.open_session(
            self.prompts.public_generalist,
            vocab_size=self.vocabularies.generalist_width,
            temperature=self.params.temperature,
        )

    def _fall_back(
        self, ctx: TokenSequence | None, err: GeneralistError
    ) -> tuple[TokenSequence, None]:
        """The generalist is unreachable: the specialist finishes from the committed bytes."""
        if self.params.on_generalist_error == "raise":
            raise err
        self.stats.degraded = True
        self.stats.degraded_reason = str(err)
        self.spec = METHOD_SPECS["specialist"]
        return ctx or self.engine.specialist.sequence(self.prompts.private), None

    def _sync(self, ctx: TokenSequence) -> None:
        """Make the specialist's tokens spell the committed bytes: keep the longest run of its
        tokens that still spells a prefix of them (and their cache), re-tokenise the rest."""
        spell, kept, covered = self.vocabularies.specialist.table, 0, 0
        for token in ctx.suffix:
            piece = spell[token] or b""
            if self.text[covered : covered + len(piece)] != piece:
                break
            covered += len(piece)
            kept += 1
        ctx.rollback(ctx.prompt_length + kept)
        ctx.append(self.vocabularies.specialist.encode(bytes(self.text[covered:])))

    def _specialist_round(self, ctx: TokenSequence) -> Round:
        self._sync(ctx)
        q_ctx: list[torch.Tensor] = []
        self._step(ctx, q_ctx, [])
        token = self._recover(0, 0, q_ctx, None, [])
        ctx.append([token])
        if token in self.engine.specialist.eos_token_ids:
            self.stats.finish_reason = "eos"
        self._count(0, 0, 1)
        return Round([token], 0, self.vocabularies.specialist.spell([token]))

    def _generalist_round(
        self, ctx: TokenSequence | None, target: GeneralistSession, remaining: int
    ) -> Round:
        p, words = self.params, self.vocabularies
        draft: list[int] = []
        if self.spec.drafts:
            self._sync(ctx)
            k = min(p.draft_tokens, remaining - 1)
            drafted, _, _ = self._draft(ctx, k, self.engine.specialist.eos_token_ids)
            draft = words.generalist.encode(words.specialist.spell(drafted))[: remaining - 1]
        verdict = target.verify(draft, "match" if draft else "none", p.gamma)
        self.stats.generalist_calls += 1
        log_p_G = verdict.log_p_G.to(self.device)
        n = verdict.accepted
        if n is None:  # the device decides (an OpenAI-compatible server)
            ids = torch.tensor(draft, dtype=torch.long, device=self.device)
            n = alg.speculative_accept(ids, log_p_G[:-1], log_p_G[:-1]) if draft else 0
        token = self._recover(n, len(draft), [], log_p_G, [])
        target.commit(n, token)
        tokens = [*draft[:n], token]
        eos = self.engine.generalist.eos_token_ids
        for i, t in enumerate(tokens):
            if t in eos:
                tokens = tokens[: i + 1]
                self.stats.finish_reason = "eos"
                break
        self._count(len(draft), min(n, len(tokens)), len(tokens))
        return Round(tokens, min(n, len(tokens)), words.generalist.spell(tokens))
