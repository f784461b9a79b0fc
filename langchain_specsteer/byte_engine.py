"""The byte-level path: a specialist and a generalist that share only text (docs/design.md §2).

The committed output is bytes, always a whole number of the generalist's tokens: the
generalist writes and verifies in its own vocabulary, with the same `GeneralistSession` as
the token path (in process or over the network). The specialist drafts in its own tokens and
is re-synchronised to the committed bytes before each round: its tokens that still spell a
prefix are kept with their KV cache, the rest is re-tokenised, and the last re-tokenised
token is held back as *pending* bytes its next token must start with (so a text cut inside
one of its tokens does not distort its next distribution: one-token healing).

A round (the loop is `run.Run`'s; this module says how to align, accept and recover):

1. **Draft**: the specialist proposes up to K tokens (the first one extending the pending
   bytes); their new bytes are the draft.
2. **Verify**: the generalist scores the draft in its own tokenization. Greedy `speculative`
   accepts generalist tokens while each is the generalist's argmax, so its output equals the
   generalist's greedy output exactly. `specsteer` runs the ratio test per *aligned chunk*
   (spans whose ends are token boundaries in both tokenizations), summed log p_G against
   summed log q_gen (`algorithms.chunk_accept`).
3. **Recover**: one generalist token. Greedy `generalist`/`speculative` take p_G's argmax.
   The steered methods fuse the two models' next-byte distributions one byte at a time until
   the generalist's token ends (`bytelevel.recover_bytewise`, the default), or score the
   generalist's top tokens by how likely the specialist is to spell them
   (`byte_recovery="token"`, `bytelevel.recover_token`); either way the method's own
   recovery function fuses (log p_G, δ).

Without the generalist (method `specialist`, or after it failed) the specialist writes one
token of its own per round.

What is approximate, and why (docs/bytelevel.md): byte distributions look one token ahead
(the tokens that start with the bytes so far), where Hayase et al. (2025) are exact with a
covering tree at the cost of extra forwards; and the first drafted token's q values are
renormalised over the tokens that extend the pending bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.bytelevel import (
    TokenBytes,
    aligned_boundaries,
    recover_bytewise,
    recover_token,
)
from langchain_specsteer.methods import METHOD_SPECS
from langchain_specsteer.run import Accepted, Draft, Prompts, Round, Run
from langchain_specsteer.verification import Generalist, Rule, Verdict

if TYPE_CHECKING:
    from langchain_specsteer.models import ModelSequence, Specialist
    from langchain_specsteer.params import DecodingParams

__all__ = ["ByteDecodeRun", "ByteVocabularies"]


@dataclass(frozen=True)
class ByteVocabularies:
    """Both models' `TokenBytes` and the generalist's output width."""

    specialist: TokenBytes
    generalist: TokenBytes
    generalist_width: int

    @classmethod
    def of(cls, specialist: Specialist, generalist: Generalist) -> ByteVocabularies:
        tokenizer = generalist.tokenizer
        if tokenizer is None:
            msg = (
                "the byte-level path needs the generalist's tokenizer on the device: pass "
                "tokenizer=AutoTokenizer.from_pretrained(<generalist>) to the generalist client"
            )
            raise ValueError(msg)
        width = generalist.vocab_size or len(tokenizer)
        return cls(TokenBytes.of(specialist.tokenizer), TokenBytes.of(tokenizer), width)


@dataclass
class ByteDraft(Draft):
    """A round's proposal on the byte path.

    Attributes:
        pending: bytes the specialist's next token had to start with (already committed).
        drafted: the specialist's drafted tokens, whose new bytes `ids` re-tokenise.
    """

    pending: bytes = b""
    drafted: list[int] = field(default_factory=list)


class ByteDecodeRun(Run):
    """One generation on the byte-level path; iterating yields `Round`s with their bytes."""

    def __init__(
        self,
        specialist: Specialist,
        generalist: Generalist,
        prompts: Prompts,
        params: DecodingParams,
        *,
        vocabularies: ByteVocabularies,
    ):
        if METHOD_SPECS[params.method].verify == "match" and not params.greedy:
            msg = (
                "speculative sampling across tokenizers is not built (its residual needs both "
                "distributions over one vocabulary): use temperature=0, or method='specsteer'"
            )
            raise ValueError(msg)
        super().__init__(specialist, generalist, prompts, params)
        self.vocabularies = vocabularies
        self.text = bytearray()  # the committed output
        self.last_piece = b""  # the bytes of the last committed generalist token
        self.pending = b""  # bytes the specialist's next token must start with

    @property
    def _writer(self) -> TokenBytes:
        """The vocabulary of committed tokens: the generalist's, or the specialist's alone."""
        words = self.vocabularies
        return words.specialist if self.target is None else words.generalist

    @property
    def _eos(self) -> frozenset[int]:
        model = self.specialist if self.target is None else self.generalist
        return model.eos_token_ids

    def _open(self) -> None:
        spec = self.spec
        if spec.drafts or spec.recovers_with_q_ctx:
            self.ctx = self.specialist.sequence(self.prompts.private)
        if spec.uses_q_gen:
            self.gen = self.specialist.sequence(self.prompts.public_specialist)
        self.target = self._open_target(self.vocabularies.generalist_width)

    def _specialist_alone(self) -> ModelSequence:
        """The specialist finishes from the committed bytes (its next `_sync` aligns it)."""
        return self.ctx or self.specialist.sequence(self.prompts.private)

    def _sync(self, seq: ModelSequence) -> bytes:
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

    def _constrained(self, row: torch.Tensor) -> torch.Tensor:
        """Log-probs renormalised over the tokens that extend the pending bytes (as is, if
        none)."""
        if not self.pending:
            return row
        ids = self.vocabularies.specialist.extending(self.pending).to(row.device)
        masked = torch.full_like(row, float("-inf"))
        masked[ids] = row[ids]
        return torch.log_softmax(masked, dim=-1)

    def _step(self, seq: ModelSequence, q_ctx: list, q_gen: list) -> None:
        """A specialist step; a round's first one extends the pending bytes."""
        super()._step(seq, q_ctx, q_gen)
        if len(q_ctx) == 1:
            q_ctx[0] = self._constrained(q_ctx[0])

    def _draft(self, remaining: int, position: int) -> ByteDraft:
        self.pending = self._sync(self.ctx) if self.ctx is not None else b""
        if self.gen is not None:
            self._sync(self.gen)
        draft = ByteDraft(pending=self.pending, position=position)
        if self.spec.drafts:
            k = self._draft_length(remaining)
            eos = self.specialist.eos_token_ids
            draft.drafted = self._draft_tokens(self.ctx, k, eos, draft)
            if draft.drafted and draft.drafted[-1] in eos:  # it spells nothing: not drafted
                draft.drafted.pop()
        data = self.vocabularies.specialist.spell(draft.drafted)[len(self.pending) :]
        draft.ids = self.vocabularies.generalist.encode(data)[: remaining - 1]
        return draft

    def _rule(self, draft: Draft) -> Rule:
        if not draft.ids:
            return "none"
        return "match" if self.spec.verify == "match" else "device"

    def _accept(self, draft: ByteDraft, verdict: Verdict | None) -> Accepted:
        """Generalist tokens of the draft accepted, and the specialist's drafts within them."""
        if self.gen is not None:  # q_gen over the specialist's draft, on the device
            draft.q_gen = list(self._score(self.gen, draft.drafted))
            draft.q_gen[0] = self._constrained(draft.q_gen[0])
        if not draft.ids:
            return Accepted(0, 0)
        s_ends, g_ends = self._ends(draft)
        if self.spec.verify == "match":
            n = self._decide(draft, verdict, "match")
            # the specialist's drafts within the accepted bytes (what "auto" learns from)
            return Accepted(n, sum(end <= (g_ends[n - 1] if n else 0) for end in s_ends))
        boundaries = aligned_boundaries(s_ends, g_ends)
        log_q = [float(draft.q_gen[i][t]) for i, t in enumerate(draft.drafted)]
        log_p = [float(verdict.log_p_G[j][t]) for j, t in enumerate(draft.ids)]
        sampled = not self.params.greedy and boundaries
        uniforms = self._draws(len(boundaries), draft.position) if sampled else None
        gamma = self._chunk_gates(draft, boundaries) if self._context_gate else self.params.gamma
        s, n = alg.chunk_accept(boundaries, log_q, log_p, gamma, uniforms)
        return Accepted(n, s)

    def _ends(self, draft: ByteDraft) -> tuple[list[int], list[int]]:
        """Where each drafted specialist token and each generalist token of the draft ends, in
        bytes of the draft (the pending bytes before it)."""
        words = self.vocabularies
        s_ends, offset = [], -len(draft.pending)
        for token in draft.drafted:
            offset += len(words.specialist.table[token] or b"")
            s_ends.append(offset)
        g_ends, offset = [], 0
        for token in draft.ids:
            offset += len(words.generalist.table[token] or b"")
            g_ends.append(offset)
        return s_ends, g_ends

    def _chunk_gates(self, draft: ByteDraft, boundaries: list[tuple[int, int]]) -> list[float]:
        """γ_eff per aligned chunk: γ · exp(−mean JSD(q_ctx, q_gen)) over its specialist
        tokens (one token per chunk, as with one tokenizer: the token path's gate)."""
        k = len(draft.drafted)
        q_ctx, q_gen = torch.stack(draft.q_ctx[:k]), torch.stack(draft.q_gen[:k])
        jsd = alg.jensen_shannon(q_ctx.double(), q_gen.double())
        gates, start = [], 0
        for end, _ in boundaries:
            mean = float(jsd[start:end].mean()) if end > start else 0.0
            gates.append(self.params.gamma * math.exp(-mean))
            start = end
        return gates

    def _recover(self, draft: ByteDraft, verdict: Verdict | None, accepted: Accepted) -> int:
        """The round's last token: a whole token of the model whose distribution the method
        reads, or a generalist token steered by the specialist's bytes."""
        spec, reads = self.spec, self.spec.reads
        n, s = accepted
        position = draft.position + n
        if not spec.fuses:
            rows = alg.Rows(
                log_p_G=verdict.log_p_G[n] if "p_G" in reads else None,
                log_q_ctx=draft.q_ctx[s] if "q_ctx" in reads else None,
            )
            return self._choose(spec.recover(rows, self.knobs), position)
        p = self.params
        row = verdict.log_p_G[n]
        if not p.greedy:
            row = self._sampling(torch.log_softmax(row, dim=-1))
        pending = draft.pending if s == 0 else b""

        def fuse(P: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
            return spec.recover(alg.Rows(log_p_G=P, delta=delta), self.knobs)

        common = {
            "log_p_G": row,
            "log_q_ctx": draft.q_ctx[s],
            "log_q_gen": draft.q_gen[s],
            "generalist": self.vocabularies.generalist,
            "specialist": self.vocabularies.specialist,
            "pending": pending,
            "fuse": fuse,
            "greedy": p.greedy,
            "generator": None if p.greedy else self._generator(position, "recover"),
            "specialist_eos": sorted(self.specialist.eos_token_ids) if not pending else (),
        }
        if p.byte_recovery == "byte":
            eos = sorted(self.generalist.eos_token_ids)
            return recover_bytewise(**common, generalist_eos=eos)
        return recover_token(**common)

    def _roll_back(self, draft: Draft, accepted: Accepted, token: int) -> None:
        """The generalist writes: the next `_sync` aligns the specialist. The specialist
        writes: its token joins its cache."""
        if self.target is None:
            self.ctx.append([token])

    def _spell(self, tokens: list[int], draft: ByteDraft) -> bytes:
        pending = draft.pending if self.target is None else b""
        return self._writer.spell(tokens)[len(pending) :]

    def _commit(self, draft: Draft, accepted: Accepted, token: int, *, rolled: bool) -> Round:
        round_ = super()._commit(draft, accepted, token, rolled=rolled)
        self.text.extend(round_.data)
        if round_.tokens and self.target is not None:
            self.last_piece = self.vocabularies.generalist.spell(round_.tokens[-1:])
        return round_
